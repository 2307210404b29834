"""The per-model conversion lock: a second job waits for the first, then reuses its conversion."""

from __future__ import annotations

import fcntl
import shutil
import threading
import time

import pytest

from conversion.cache import conversion_lock, find_or_convert
from errors import ConversionError
from model_converter import TCNModelConverter


def test_lock_times_out_while_another_job_holds_it(keras_files, tmp_path):
    h5 = tmp_path / "tcn.h5"
    shutil.copy(keras_files / "tcn.h5", h5)
    with open(tmp_path / ".tcn_converted.pth.lock", "a") as other_job:
        fcntl.flock(other_job, fcntl.LOCK_EX)
        with pytest.raises(ConversionError, match="conversion lock"):
            find_or_convert(h5.with_suffix(""), h5, None, verify=False, lock_timeout_s=1.5)
    assert not (tmp_path / "tcn_converted.pth").exists()


def test_waiting_job_reuses_what_the_first_converted(keras_files, tmp_path):
    h5 = tmp_path / "tcn.h5"
    shutil.copy(keras_files / "tcn.h5", h5)
    results = {}

    def second_job():
        results["second"] = find_or_convert(h5.with_suffix(""), h5, None, verify=False, lock_timeout_s=60)

    with conversion_lock(tmp_path / "tcn_converted.pth", timeout_s=5):
        waiting = threading.Thread(target=second_job)
        waiting.start()
        time.sleep(1.5)  # the second job finds no converted file and waits for the lock
        TCNModelConverter(h5).convert()  # meanwhile the first job converts, holding the lock
    waiting.join(timeout=60)
    assert results["second"].converted is False
    assert results["second"].path == tmp_path / "tcn_converted.pth"
