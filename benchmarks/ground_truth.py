"""Wall time of the NEURON ground-truth check on the example's reference cell: serial against parallel workers.

    python benchmarks/ground_truth.py [--trials 200] [--window 400] [--workers 1,2] [--repeats 2] [--quick]

One check = `--trials` control/stimulated pairs (2 x trials simulations) of a `--window` ms pattern at a typical
background (excitatory 0.0125, inhibitory 0.02 spikes/ms per segment), stimulus on 3 segments at the middle,
simulated by examples/neuron_ground_truth/cell.hoc with the example config's settings. The time includes starting the
worker processes and building the cell in each (as a run pays it once), not compiling the mechanisms (cached once
per machine; printed separately). Repetitions alternate between the worker counts, so that a change of load hits
all alike; the ratio is against one worker in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks.common import cpu_description, markdown_table, versions  # noqa: E402
from ground_truth.neuron_backend.config import NeuronBackendConfig  # noqa: E402
from ground_truth.neuron_backend.mechanisms import compiled_mechanisms  # noqa: E402
from ground_truth.neuron_backend.simulator import NeuronSimulator  # noqa: E402
from ground_truth.runner import TrialRunner  # noqa: E402
from ground_truth.trials import MIN_TRIALS, ground_truth_response  # noqa: E402

CELL = REPO / "examples" / "neuron_ground_truth" / "cell.hoc"
SEGMENTS = 32


def one_check(simulator: NeuronSimulator, workers: int, trials: int, window: int) -> tuple[float, dict]:
    rates = np.concatenate([np.full((SEGMENTS, window), 0.0125), np.full((SEGMENTS, window), 0.02)])
    started = time.perf_counter()
    with TrialRunner(simulator, workers=workers) as run:
        result = ground_truth_response(rates, [0, 1, 2], window // 2, 10, run, SEGMENTS, n_trials=trials, seed=0)
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=MIN_TRIALS)
    parser.add_argument("--window", type=int, default=400)
    parser.add_argument("--workers", default=f"1,{os.cpu_count() or 1}")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one repetition of 200 pairs of 60 ms (for CI)")
    args = parser.parse_args(argv)
    if args.quick:
        args.window, args.repeats = 60, 1
    worker_counts = sorted({int(w) for w in args.workers.split(",")} | {1})

    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        compiled_mechanisms(None, Path(cache))
        compile_s = time.perf_counter() - started
        simulator = NeuronSimulator.resolve(
            NeuronBackendConfig(cell=CELL, mechanisms_cache=Path(cache)), SEGMENTS, SEGMENTS
        )
        times: dict[int, list[float]] = {w: [] for w in worker_counts}
        figures: dict[int, dict] = {}
        for _ in range(args.repeats):
            for workers in worker_counts:
                seconds, figures[workers] = one_check(simulator, workers, args.trials, args.window)
                times[workers].append(seconds)
    same = all(figures[w] == figures[1] for w in worker_counts)
    baseline = statistics.median(times[1])
    rows = []
    for workers in worker_counts:
        median = statistics.median(times[workers])
        rows.append(
            [
                workers,
                f"{median:.1f} ({min(times[workers]):.1f}-{max(times[workers]):.1f})",
                f"{1000 * median / (2 * args.trials):.0f}",
                f"{baseline / median:.2f}",
            ]
        )
    print(f"CPU: {cpu_description()}; load average {os.getloadavg()[0]:.1f}; {versions('neuron', 'numpy')}")
    print(f"mechanisms compiled once in {compile_s:.1f} s (not in the times below)")
    print(
        f"one check: {args.trials} control/stimulated pairs ({2 * args.trials} simulations) of {args.window} ms "
        f"on {CELL.name}; median of {args.repeats} (range)\n"
    )
    print(markdown_table(["workers", "wall s", "ms per simulation", "speed-up vs 1 worker"], rows))
    print(
        f"\nfigures identical for every worker count: {same}; P(stim) {figures[1]['p_spike_stim']:.3f}, "
        f"P(control) {figures[1]['p_spike_control']:.3f}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
