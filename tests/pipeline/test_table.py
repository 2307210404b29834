"""The results table: reductions, unusable rows with reasons, deterministic ties, CSV tables."""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from errors import SelectionError
from selection.config import SelectionConfig
from selection.table import Candidate, best_candidate, rank, reduce_history, table_from_csv, table_from_models_dir


def write_model(folder: Path, stem: str, history, with_h5: bool = True) -> None:
    params = {"training_history_dict": {"val_spikes_loss": history}} if history is not None else {"data_dict": {}}
    (folder / f"{stem}.pickle").write_bytes(pickle.dumps(params, protocol=2))
    if with_h5:
        (folder / f"{stem}.h5").write_bytes(b"placeholder: selection only checks that the file exists")


def test_reductions():
    values = [0.5, 0.2, math.nan, 0.4]
    for reduction, expected in (("min", 0.2), ("max", 0.5), ("last", 0.4), ("mean_last_k", pytest.approx(0.3))):
        reduced = reduce_history(values, "val_spikes_loss", reduction, 2)
        assert (reduced.value, reduced.finite_epochs, reduced.reason) == (expected, 3, None)
        assert reduced.note == "1 non-finite epoch(s) of val_spikes_loss dropped (epoch 3)"
    assert math.isnan(reduce_history([math.nan], "m", "min", 2).value)


@pytest.mark.parametrize(
    "history, reason",
    [
        ([0.1, math.nan], "diverged: m non-finite from epoch 2 of 2"),
        ([0.1, 0.05, math.inf, math.nan], "diverged: m non-finite from epoch 3 of 4"),
        ([math.nan, 0.2, math.nan], "diverged: m non-finite from epoch 3 of 3"),
        ([math.nan, math.nan], "'m' has no finite value (min)"),
        ([], "'m' has no finite value (empty history)"),
    ],
)
def test_a_history_that_ends_non_finite_diverged(history, reason):
    reduced = reduce_history(history, "m", "min", 2)
    assert math.isnan(reduced.value) and reduced.reason == reason


def test_every_position_of_non_finite_epochs():
    """Generated: each pattern of finite/NaN/Inf epochs is unusable exactly when its last epoch is not finite."""
    import itertools

    for pattern in itertools.product([0.3, math.nan, math.inf], repeat=4):
        reduced = reduce_history(list(pattern), "m", "min", 2)
        finite = [v for v in pattern if math.isfinite(v)]
        if math.isfinite(pattern[-1]):
            assert reduced.reason is None and reduced.value == min(finite)
            assert reduced.note == (
                ""
                if len(finite) == 4
                else f"{4 - len(finite)} non-finite epoch(s) of m dropped (epoch "
                + ", ".join(str(i + 1) for i, v in enumerate(pattern) if not math.isfinite(v))
                + ")"
            )
        else:
            assert reduced.reason is not None and math.isnan(reduced.value)


def test_unusable_rows_keep_their_reason(tmp_path):
    write_model(tmp_path, "good", [0.3])
    write_model(tmp_path, "nan", [math.nan, math.nan])
    write_model(tmp_path, "nohistory", None)
    write_model(tmp_path, "nofile", [0.01], with_h5=False)
    (tmp_path / "broken.pickle").write_bytes(b"not a pickle")
    (tmp_path / "good_converted_info.pickle").write_bytes(pickle.dumps({}))  # converter output: not a candidate
    table = table_from_models_dir(tmp_path, SelectionConfig())
    reasons = dict(zip(table["stem"], table["reason"]))
    assert set(reasons) == {"good", "nan", "nohistory", "nofile", "broken"}
    assert "no finite value" in reasons["nan"] and "no training_history_dict" in reasons["nohistory"]
    assert "no model file" in reasons["nofile"] and "unreadable pickle" in reasons["broken"]
    assert best_candidate(table, "x").stem == "good"
    assert table["usable"].tolist() == [True, False, False, False, False]


def test_ties_are_broken_by_stem(tmp_path):
    for stem in ("zeta", "alpha", "mid"):
        write_model(tmp_path, stem, [0.25])
    table = table_from_models_dir(tmp_path, SelectionConfig())
    assert table["stem"].tolist() == ["alpha", "mid", "zeta"] and table["rank"].tolist() == [1, 2, 3]


def test_maximize_and_other_metric(tmp_path):
    write_model(tmp_path, "a", [0.1, 0.9])
    write_model(tmp_path, "b", [0.5, 0.6])
    highest = table_from_models_dir(tmp_path, SelectionConfig(goal="maximize", reduction="max"))
    assert best_candidate(highest, "x").stem == "a"
    assert best_candidate(table_from_models_dir(tmp_path, SelectionConfig(reduction="last")), "x").stem == "b"


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.pickle").write_bytes(pickle.dumps({"training_history_dict": Payload()}, protocol=2))
    (tmp_path / "evil.h5").write_bytes(b"x")
    table = table_from_models_dir(tmp_path, SelectionConfig())
    assert "is not allowed" in table.loc[0, "reason"] and not table.loc[0, "usable"]
    assert not marker.exists()


def test_csv_table(tmp_path):
    write_model(tmp_path, "a", [0.1])
    write_model(tmp_path, "b", [0.1])
    csv = tmp_path / "results.csv"
    csv.write_text("model_path,metric\na.h5,0.7\nb.h5,0.2\nmissing.h5,0.1\nc.h5,\n")
    table = table_from_csv(csv, SelectionConfig())
    assert best_candidate(table, str(csv)).stem == "b"
    assert dict(zip(table["stem"], table["usable"])) == {"b": True, "a": True, "missing": False, "c": False}
    bad = tmp_path / "bad.csv"
    bad.write_text("path,loss\na.h5,1\n")
    with pytest.raises(SelectionError, match="model_path"):
        table_from_csv(bad, SelectionConfig())


def test_empty_folder_and_no_usable_model(tmp_path):
    with pytest.raises(SelectionError, match="no model parameter pickles"):
        table_from_models_dir(tmp_path, SelectionConfig())
    write_model(tmp_path, "nan", [math.nan])
    with pytest.raises(SelectionError, match="no usable model"):
        best_candidate(table_from_models_dir(tmp_path, SelectionConfig()), str(tmp_path))


@pytest.mark.parametrize(
    "history",
    [
        [True, False],
        0.03,
        "0.04",
        b"0.013",
        ["0.07", "0.08"],
        [[0.09, 0.1]],
        np.ones((2, 2)),
        np.float64(0.3),
        {"a": 0.1},
        [0.1, None],
    ],
)
def test_a_history_that_is_not_a_list_of_numbers_is_unusable(history):
    reduced = reduce_history(history, "m", "min", 2)
    assert math.isnan(reduced.value) and reduced.reason == "'m' is not a list of numbers (one per epoch)"


@pytest.mark.parametrize("history", [[0.3, 0.2], (0.3, 0.2), np.array([0.3, 0.2]), [np.float32(0.3), 1]])
def test_lists_tuples_and_arrays_of_numbers_are_histories(history):
    assert reduce_history(history, "m", "min", 2).reason is None


def test_a_candidate_row_reads_back_from_the_saved_table(tmp_path):
    """results_table.csv is the record of the ranking: each row read back from it is the candidate written."""
    written = [
        Candidate(
            stem="b",
            value=0.25,
            reason="",
            stem_path=tmp_path / "b",
            keras_file=tmp_path / "b.h5",
            pth_candidates=(tmp_path / "b.pth", tmp_path / "b_converted.pth"),
            params=tmp_path / "b.pickle",
            finite_epochs=12,
            note="2 epochs not finite",
        ),
        Candidate(stem="a", value=0.5, reason="", stem_path=tmp_path / "a", finite_epochs=None),
        Candidate(stem="c", value=float("nan"), reason="no finite value", stem_path=tmp_path / "c"),
    ]
    table = rank(written, SelectionConfig())
    table.to_csv(tmp_path / "results_table.csv", index=False)
    read = [Candidate.from_row(row) for row in pd.read_csv(tmp_path / "results_table.csv").to_dict("records")]
    assert [c.stem for c in read] == ["b", "a", "c"] and [c.rank for c in read] == [1, 2, None]
    assert read[0] == replace(written[0], rank=1)
    assert read[1] == replace(written[1], rank=2)
    assert read[2].reason == "no finite value" and math.isnan(read[2].value) and not read[2].usable
