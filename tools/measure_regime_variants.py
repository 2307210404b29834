"""Measure which settings make optimized patterns hold in the simulated neuron: the shipped demo, several seeds,
baseline vs max_rate auto vs specificity vs both, with and without any-spike responses, vs closed-loop refinement
vs ensemble.

    .venv/bin/python tools/measure_regime_variants.py [--seeds 0 1 2] [--variants baseline auto ...]
        [--specificity-weight 2] [--rounds 3] [--workers 2] [--out runs/regime_variants]

Each (variant, seed) is one ordinary `python main.py` run on the demo models (demo settings applied, transfer
table off), in its own process. Writes `<out>/runs.json` (every run's figures) and `<out>/table.md`: mean ± s.d.
over seeds of surrogate and ground-truth P(spike | stim), P(spike | control), their difference, firing outside
the response window and the surrogate-truth gap; the surrogate's P(spike) both as threshold crossings (the run's
evaluation) and as its own estimate 1 - prod(1 - p) over the window's ms (comparable with the neuron's P(any
spike)).
The closed-loop variant runs `--rounds` rounds once and reports every round k = 0..rounds from that run (round 0:
its settings without refinement).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def variants(specificity_weight: float, rounds: int) -> dict[str, list[str]]:
    auto = ["optimization.constraints.max_rate=auto"]
    specificity = [f"optimization.objective.specificity_weight={specificity_weight}"]
    any_spike = [
        "optimization.objective.control_response=any_spike",
        "optimization.objective.stimulated_response=any_spike",
    ]
    return {
        "baseline": [],
        "auto": auto,
        "specificity": specificity,
        "both": auto + specificity,
        "closed_loop": auto + specificity + any_spike + [f"refine.rounds={rounds}"],
        "ensemble": ["optimization.ensemble=[1,2,3]"],
        "regime_term": auto + specificity + ["optimization.objective.regime_weight=10"],
    }


def run_one(name: str, overrides: list[str], seed: int, out: Path) -> dict:
    """One main.py run (or the finished one already in its folder: a killed measurement continues); its
    summary's figures."""
    folder = out / f"{name}_seed{seed}"
    finished_before = list(folder.glob("*/summary.json"))
    if finished_before:
        return {"variant": name, "seed": seed, "summary": json.loads(finished_before[0].read_text())}
    if folder.exists():
        shutil.rmtree(folder)  # an unfinished run: start it again
    command = [
        sys.executable,
        str(REPO_ROOT / "main.py"),
        f"output_dir={folder}",
        f"seed={seed}",
        "optimization.evaluation.transfer_models=0",
        "resume_interrupted=false",
        *overrides,
        "--quiet",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, env=environment)
    if finished.returncode:
        raise RuntimeError(f"{name} seed {seed} failed ({finished.returncode}): {finished.stderr[-2000:]}")
    summary = json.loads(next(folder.glob("*/summary.json")).read_text())
    return {"variant": name, "seed": seed, "summary": summary}


def figures_of(surrogate: dict, truth: dict) -> dict:
    """The table's columns from a surrogate evaluation (threshold crossings and the model's own estimates
    1 - prod(1 - p)) and the simulated neuron's figures of the same pattern."""
    row = {
        "surrogate_p_stim": surrogate["p_spike_stim"],
        "surrogate_p_ctrl": surrogate["p_spike_control"],
        "estimate_p_stim": surrogate["expected_spike_stim"],
        "estimate_p_ctrl": surrogate["expected_spike_control"],
        "estimate_outside_ctrl": surrogate["expected_outside_spike_control"],
        "truth_p_stim": truth["p_spike_stim"],
        "truth_p_ctrl": truth["p_spike_control"],
        "truth_difference": truth["difference"],
        "truth_outside_ctrl": truth["p_outside_control"],
        "truth_outside_stim": truth["p_outside_stim"],
    }
    for name in ("p_stim", "p_ctrl"):
        row[f"gap_{name}"] = abs(row[f"surrogate_{name}"] - row[f"truth_{name}"])
        row[f"estimate_gap_{name}"] = abs(row[f"estimate_{name}"] - row[f"truth_{name}"])
    return row


def rows_of(result: dict) -> list[tuple[str, dict]]:
    """(label, figures) of a run; a closed-loop run gives one row per round."""
    summary = result["summary"]
    refinement = summary.get("refinement")
    if not refinement:
        return [(result["variant"], figures_of(summary["evaluation"]["details"], summary["ground_truth"]))]
    return [
        (f"{result['variant']} K={record['round']}", figures_of(record["surrogate"], record["ground_truth"]))
        for record in refinement["rounds"]
    ]


def table(results: list[dict]) -> str:
    grouped: dict[str, list[dict]] = {}
    for result in results:
        for label, row in rows_of(result):
            grouped.setdefault(label, []).append(row)
    columns = list(next(iter(grouped.values()))[0])
    lines = ["| variant | seeds | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for label, rows in grouped.items():
        cells = []
        for column in columns:
            values = [row[column] for row in rows if row[column] is not None]
            if not values:
                cells.append("—")
                continue
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}")
        lines.append(f"| {label} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=None, help="default: all but regime_term")
    parser.add_argument("--specificity-weight", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--extra", nargs="*", default=[], help="KEY=VALUE overrides added to every run")
    parser.add_argument("--out", type=Path, default=Path("runs/regime_variants"))
    args = parser.parse_args(argv)
    known = variants(args.specificity_weight, args.rounds)
    chosen = args.variants or [name for name in known if name != "regime_term"]
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(name, known[name] + args.extra, seed) for name in chosen for seed in args.seeds]
    with ThreadPoolExecutor(args.workers) as pool:
        results = list(pool.map(lambda job: run_one(*job, args.out), jobs))
    (args.out / "runs.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    text = table(results)
    (args.out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
