"""The simulator interface with a toy simulator function of known answers: the check's figures by hand, parallel =
serial, the cache, and every kind of bad answer or failing function refused with a clear error."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from errors import ConfigError, SimulatorError
from ground_truth.interface import SimulatedTrials, checked_output
from ground_truth.python_function import FunctionSimulator
from ground_truth.runner import TrialRunner
from ground_truth.trials import ground_truth_response, paired_trials
from tests.ground_truth import simulators
from tests.subprocesses import REPO

N_EXC, N_INH, T = simulators.NUM_EXCITATORY, 4, 400
STIMULUS, STIMULUS_TIME, WINDOW = [0, 1, 2], 100, 10


def function_simulator(name: str) -> FunctionSimulator:
    return FunctionSimulator.resolve(f"tests.ground_truth.simulators:{name}", REPO)


def by_hand(rates: np.ndarray, trials: int, seed: int) -> dict:
    """The toy neuron's figures computed from the sampled rasters directly."""
    control, stimulated = paired_trials(rates, np.array(STIMULUS), STIMULUS_TIME, WINDOW, trials, seed)
    figures = {}
    for name, raster in (("control", control), ("stim", stimulated)):
        fires = raster[:, :, :N_EXC].sum(axis=2) >= simulators.COINCIDENCE  # (trials, T)
        figures[f"p_spike_{name}"] = fires[:, STIMULUS_TIME : STIMULUS_TIME + WINDOW].any(axis=1).mean()
        outside = np.ones(T, dtype=bool)
        outside[STIMULUS_TIME : STIMULUS_TIME + WINDOW] = False
        figures[f"p_outside_{name}"] = fires[:, outside].any(axis=1).mean()
    return figures


@pytest.fixture(scope="module")
def rates() -> np.ndarray:
    """Silent except: segments 3 and 4 spike with p = 0.5 at 105 ms (5 always), so the toy neuron fires in the
    window when both do; at 300 ms segments 5 and 6 always and 7 with p = 0.3: it fires outside when 7 does."""
    rates = np.zeros((N_EXC + N_INH, T))
    rates[[3, 4], 105] = 0.5
    rates[5, 105] = 1.0
    rates[[5, 6], 300] = 1.0
    rates[7, 300] = 0.3
    return rates


def test_the_checks_figures_are_those_computed_by_hand(rates):
    expected = by_hand(rates, 400, seed=7)
    assert expected["p_spike_stim"] == 1.0 and 0.15 < expected["p_spike_control"] < 0.35
    assert expected["p_outside_stim"] == expected["p_outside_control"] and 0.2 < expected["p_outside_control"] < 0.4
    with TrialRunner(function_simulator("coincidence"), workers=2) as run:
        result = ground_truth_response(rates, STIMULUS, STIMULUS_TIME, WINDOW, run, N_EXC, n_trials=400, seed=7)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-12), key
    assert result["difference"] == pytest.approx(expected["p_spike_stim"] - expected["p_spike_control"])


def test_parallel_trials_give_the_same_figures_as_serial(rates):
    answers = []
    for workers in (1, 2, 3):
        with TrialRunner(function_simulator("coincidence_with_voltage"), workers=workers) as run:
            answers.append(
                ground_truth_response(rates, STIMULUS, STIMULUS_TIME, WINDOW, run, N_EXC, n_trials=200, seed=3)
            )
    assert answers[0] == answers[1] == answers[2]


def test_answers_come_back_in_trial_order_with_voltage():
    spikes = np.zeros((37, 20, N_EXC + N_INH), dtype=bool)
    for trial in range(37):
        spikes[trial, trial % 20, :3] = True  # trial k fires at k % 20 + 0.5
    with TrialRunner(function_simulator("coincidence_with_voltage"), workers=2) as run:
        answer = run(spikes)
    assert [times.tolist() for times in answer.spike_times] == [[k % 20 + 0.5] for k in range(37)]
    assert answer.soma_v.shape == (37, 20) and answer.soma_v[5, 5] == -55.0 and answer.soma_v[5, 6] == -70.0
    assert answer.spike_bins(20)[5].tolist() == [0] * 5 + [1] + [0] * 14


def test_the_cache_answers_a_repeated_run_without_simulating_and_ignores_damaged_files(tmp_path, monkeypatch, rates):
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("GROUND_TRUTH_TEST_CALLS", str(calls))
    cache = tmp_path / "simulations"

    def check() -> dict:
        with TrialRunner(function_simulator("coincidence"), workers=2, cache_dir=cache) as run:
            return ground_truth_response(rates, STIMULUS, STIMULUS_TIME, WINDOW, run, N_EXC, n_trials=200, seed=1)

    first = check()
    simulated = sum(int(line) for line in calls.read_text().split())
    assert simulated == 400 and len(list(cache.glob("*.npz"))) == 400 // 16
    calls.write_text("")
    assert check() == first and calls.read_text() == ""
    damaged = sorted(cache.glob("*.npz"))
    damaged[0].write_bytes(b"not an npz")
    damaged[1].write_bytes(damaged[1].read_bytes()[:50])
    damaged[2].unlink()
    assert check() == first
    assert sum(int(line) for line in calls.read_text().split()) == 3 * 16  # those three chunks only


@pytest.mark.parametrize("name", sorted(simulators.BAD_ANSWERS))
def test_every_kind_of_bad_answer_is_refused_naming_the_function(name):
    with TrialRunner(function_simulator(f"bad_{name}"), workers=1) as run:
        with pytest.raises(SimulatorError, match=f"bad_{name}"):
            run(np.zeros((3, 50, N_EXC + N_INH), dtype=bool))


@pytest.mark.parametrize("name", sorted(simulators.ESCAPES))
def test_a_simulator_that_exits_or_interrupts_itself_is_a_simulator_error(name):
    """SystemExit(0) must not end the run with success, nor a KeyboardInterrupt look like the user's Ctrl-C."""
    with TrialRunner(function_simulator(f"escape_{name}"), workers=1) as run:
        with pytest.raises(SimulatorError, match=f"escape_{name} failed"):
            run(np.zeros((2, 10, 12), dtype=bool))


@pytest.mark.parametrize("name", ["hangs", "hangs_ignoring_sigterm"])
def test_a_hanging_simulator_is_stopped_after_the_stall_timeout_and_its_workers_killed(name):
    run = TrialRunner(function_simulator(name), workers=2, stall_timeout_s=3)
    with pytest.raises(SimulatorError, match="no chunk of 16 trials finished within 3 s"):
        with run:
            run(np.zeros((40, 10, 12), dtype=bool))
    assert run._pool is None
    deadline = time.monotonic() + 5
    while any(child.is_alive() for child in multiprocessing.active_children()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(child.is_alive() for child in multiprocessing.active_children())  # the workers are gone


def test_workers_end_when_their_main_process_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, numpy as np\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from ground_truth.python_function import FunctionSimulator\n"
        "from ground_truth.runner import TrialRunner\n"
        "if __name__ == '__main__':\n"
        f"    run = TrialRunner(FunctionSimulator.resolve('tests.ground_truth.simulators:hangs', {str(REPO)!r}), 2)\n"
        "    pool = run._executor()\n"
        "    futures = [pool.submit(abs, -1) for _ in range(4)]\n"
        "    [f.result() for f in futures]\n"
        "    print(' '.join(str(p.pid) for p in pool._processes.values()), flush=True)\n"
        "    run(np.zeros((40, 10, 12), dtype=bool))\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    workers = [int(pid) for pid in parent.stdout.readline().split()]
    assert workers
    time.sleep(1)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(pid) for pid in workers):
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone, only not yet reaped
        return stat.read().split(") ")[-1][0] != "Z"


def test_a_zip_bomb_in_the_cache_is_refused_before_it_is_unpacked(tmp_path, monkeypatch, caplog):
    cache = tmp_path / "simulations"
    spikes = np.zeros((3, 10, 12), dtype=bool)
    with TrialRunner(function_simulator("coincidence"), workers=1, cache_dir=cache) as run:
        expected = run(spikes)
    (stored,) = cache.glob("*.npz")
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, spike_times=np.zeros(1 << 22), counts=np.array([0, 0, 1 << 22]))
    assert bomb.stat().st_size < 66_000  # small on disk: only its declared size gives it away
    stored.write_bytes(bomb.read_bytes())
    with TrialRunner(function_simulator("coincidence"), workers=1, cache_dir=cache) as run:
        again = run(spikes)
    assert [t.tolist() for t in again.spike_times] == [t.tolist() for t in expected.spike_times]
    assert "declares more data than an answer for this chunk holds" in caplog.text


def test_editing_a_file_beside_the_simulator_changes_its_fingerprint(tmp_path):
    (tmp_path / "sim.py").write_text("from helper import simulate\n")
    (tmp_path / "helper.py").write_text("def simulate(spikes):\n    return [[]] * len(spikes)\n")
    before = FunctionSimulator.resolve("sim.py:simulate", tmp_path).fingerprint()
    (tmp_path / "helper.py").write_text("def simulate(spikes):\n    return [[1.0]] * len(spikes)\n")
    assert FunctionSimulator.resolve("sim.py:simulate", tmp_path).fingerprint() != before


def test_a_raising_function_is_reported_with_its_message_and_a_crashing_one_as_a_dead_worker():
    with TrialRunner(function_simulator("raises"), workers=1) as run:
        with pytest.raises(SimulatorError, match="RuntimeError: the cell exploded.*simulators.py"):
            run(np.zeros((2, 10, 12), dtype=bool))
    with TrialRunner(function_simulator("crashes"), workers=2) as run:
        with pytest.raises(SimulatorError, match="worker process died"):
            run(np.zeros((2, 10, 12), dtype=bool))


@pytest.mark.parametrize(
    "target, message",
    [
        ("no_colon", "expected demo, neuron"),
        ("a b:c", "expected demo, neuron"),
        ("module:not-a-name", "expected demo, neuron"),
        ("missing_module_xyz:simulate", "no module missing_module_xyz"),
        ("nowhere/file.py:simulate", "is not a file"),
    ],
)
def test_targets_that_name_nothing_are_config_errors(target, message):
    with pytest.raises(ConfigError, match=message):
        FunctionSimulator.resolve(target, REPO)


def test_a_file_target_is_imported_from_its_path_and_a_missing_function_is_named(tmp_path):
    (tmp_path / "helper.py").write_text("OFFSET = 0.25\n")
    (tmp_path / "my_cell.py").write_text(
        "import numpy as np\nfrom helper import OFFSET\n\n"
        "def simulate(spikes):\n    return [np.flatnonzero(row.any(axis=0)) + OFFSET for row in spikes]\n"
    )
    spikes = np.zeros((2, 5, 3), dtype=bool)
    spikes[1, 4, 2] = True
    with TrialRunner(FunctionSimulator.resolve("my_cell.py:simulate", tmp_path), workers=1) as run:
        assert [t.tolist() for t in run(spikes).spike_times] == [[], [4.25]]
    with TrialRunner(FunctionSimulator.resolve(f"{tmp_path}/my_cell.py:other", tmp_path), workers=1) as run:
        with pytest.raises(SimulatorError, match="no function other"):
            run(spikes)


def test_an_edited_function_file_changes_the_fingerprint(tmp_path):
    path = tmp_path / "sim.py"
    path.write_text("def simulate(spikes):\n    return [[]] * len(spikes)\n")
    before = FunctionSimulator.resolve("sim.py:simulate", tmp_path).fingerprint()
    path.write_text("def simulate(spikes):\n    return [[1.0]] * len(spikes)\n")
    assert FunctionSimulator.resolve("sim.py:simulate", tmp_path).fingerprint() != before


def test_checked_output_accepts_the_documented_forms():
    times = [np.array([3.0, 1.0]), []]
    plain = checked_output(times, 2, 10, "f")
    assert [t.tolist() for t in plain.spike_times] == [[1.0, 3.0], []] and plain.soma_v is None
    mapped = checked_output({"spike_times": times, "soma_v": np.zeros((2, 10))}, 2, 10, "f")
    assert mapped.soma_v.dtype == np.float32 and mapped.soma_v.shape == (2, 10)
    assert SimulatedTrials.concatenate([plain, plain], "f").soma_v is None
    assert SimulatedTrials.concatenate([mapped, mapped], "f").soma_v.shape == (4, 10)
    with pytest.raises(SimulatorError, match="soma_v for some calls"):
        SimulatedTrials.concatenate([plain, mapped], "f")
    assert plain.fired_between(0, 2).tolist() == [True, False]
