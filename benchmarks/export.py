#!/usr/bin/env python
"""What a smaller stored model costs: file size, load time, error against the float32 conversion, and the change of
the optimization's result, for each export form (`model_converter.py --dtype/--quantize/--prune`).

    python benchmarks/export.py [--quick] [--no-runs] [--cache DIR]

Models: the three demo neuron TCNs (demo_models/) and a published-size 7×128 TCN (1279 inputs, kernels 54 and 17,
a Keras 2 .h5 with random weights generated once into the cache). Each is converted into every form; the
converter's own record gives the per-output error (max abs diff to the float32 conversion ÷ max(1, largest
|output|), on its fixed binary-spike input set) and the spike output's AUC and verdict changes; the file size is
on disk, the load time the fastest of five `load_converted_model` calls in this process after one untimed
call (float32 is the baseline of the ratios). For the demo models, `main.py` then runs on the demo settings with each form
(`conversion.export.*`, same seed): the optimized rates' P(spike | stim) and P(spike | control) are compared
with the float32 run's. --quick: one small model, three forms, no runs (checks that the script works).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CACHE, PUBLISHED, QUICK, REPO, cpu_description, markdown_table, versions  # noqa: E402
from benchmarks.conversion import generate  # noqa: E402
from conversion.config import ExportConfig  # noqa: E402
from conversion.converter import convert_model  # noqa: E402
from conversion.pairing import params_pickle_for  # noqa: E402
from models.checkpoint import load_converted_model  # noqa: E402

FORMS = {
    "float32": ExportConfig(),
    "float16": ExportConfig(dtype="float16"),
    "int8": ExportConfig(quantize="int8"),
    "pruned 50 %": ExportConfig(prune=0.5),
    "pruned 50 % + int8": ExportConfig(prune=0.5, quantize="int8"),
}
QUICK_FORMS = ("float32", "int8", "pruned 50 % + int8")
RUN_FORMS = ("float32", "int8", "pruned 50 %", "pruned 50 % + int8")
LOADS = 5
DEMO_MODELS = REPO / "demo_models"


def load_seconds(pth: Path) -> float:
    """The fastest of LOADS loads, after one untimed load (the first load in a process also imports code)."""
    load_converted_model(pth)
    timings = []
    for _ in range(LOADS):
        started = time.perf_counter()
        load_converted_model(pth)
        timings.append(time.perf_counter() - started)
    return min(timings)


def measure_forms(name: str, h5: Path, folder: Path, forms: list[str]) -> list[dict]:
    """One row per form: size, load time, the recorded cost."""
    rows = []
    for form in forms:
        pth = folder / f"{h5.stem}.{form.replace(' ', '').replace('%', 'pct').replace('+', '_')}.pth"
        record = convert_model(h5, params_pickle_for(h5), pth, export=FORMS[form]).record
        export = record.export
        spikes = export.spikes if export else None
        rows.append(
            {
                "model": name,
                "form": form,
                "bytes": pth.stat().st_size,
                "load_s": load_seconds(pth),
                "errors": {k: v.error for k, v in export.outputs.items()} if export else {},
                "auc_change": spikes.auc_change if spikes else None,
                "verdicts": f"{spikes.verdicts_changed}/{spikes.trials}" if spikes else "0",
            }
        )
    return rows


def demo_run(h5: Path, form: str, folder: Path) -> dict:
    """main.py on the demo settings with this one model stored as `form`: its summary."""
    models = folder / "models"
    models.mkdir(parents=True)
    for source in (h5, params_pickle_for(h5)):
        shutil.copy(source, models / source.name)
    export = FORMS[form]
    overrides = [
        f"models_dir={models}",
        f"output_dir={folder / 'runs'}",
        "demo.apply=always",
        "conversion.verify=false",
        f"conversion.export.dtype={export.dtype}",
        f"conversion.export.quantize={export.quantize or 'null'}",
        f"conversion.export.prune={export.prune or 'null'}",
        "device=cpu",
    ]
    result = subprocess.run(
        [sys.executable, "main.py", "--quiet", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    if result.returncode:
        raise SystemExit(f"main.py failed for {h5.name} as {form}:\n{result.stderr[-3000:]}")
    (summary,) = (folder / "runs").glob("*/summary.json")
    return json.loads(summary.read_text())


def cells(row: dict, baseline: dict, run: dict | None, float_run: dict | None) -> list[object]:
    errors = ", ".join(f"{k} {v:.1e}" for k, v in row["errors"].items()) or "exact (the reference)"
    auc = f"{row['auc_change']:+.1e}" if row["auc_change"] is not None else "-"
    optimized = "-"
    if run is not None and float_run is not None:
        stim, control = run["evaluation"]["p_spike_stim"], run["evaluation"]["p_spike_control"]
        optimized = (
            f"{stim:.3f} / {control:.3f} ({stim - float_run['evaluation']['p_spike_stim']:+.3f} / "
            f"{control - float_run['evaluation']['p_spike_control']:+.3f})"
        )
    return [
        row["model"],
        row["form"],
        f"{row['bytes'] / 1e6:.3g} MB ({row['bytes'] / baseline['bytes']:.2f})",
        f"{row['load_s'] * 1e3:.3g} ms ({row['load_s'] / baseline['load_s']:.2f})",
        errors,
        auc,
        row["verdicts"],
        optimized,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small model, three forms, no runs")
    parser.add_argument("--no-runs", action="store_true", help="sizes and errors only, no main.py runs")
    parser.add_argument("--cache", type=Path, default=CACHE, help="where generated models are kept")
    args = parser.parse_args(argv)
    if args.quick:
        models, forms, runs = [("3x8 quick", generate(QUICK, args.cache))], list(QUICK_FORMS), False
    else:
        demo = sorted(DEMO_MODELS.glob("*.h5"))
        models = [(h5.stem.split("__")[1].removeprefix("DxWxT_"), h5) for h5 in demo]
        models.append(("7x128 published size", generate(PUBLISHED[0], args.cache)))
        forms, runs = list(FORMS), not args.no_runs
    table = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, h5 in models:
            rows = measure_forms(name, h5, Path(scratch) / name.replace(" ", "_"), forms)
            print(f"{name}: measured {len(rows)} forms", file=sys.stderr, flush=True)
            summaries: dict[str, dict] = {}
            if runs and params_pickle_for(h5) is not None:
                for form in RUN_FORMS:
                    summaries[form] = demo_run(h5, form, Path(scratch) / f"run_{name}_{form.replace(' ', '')}")
                    print(f"{name} {form}: main.py run done", file=sys.stderr, flush=True)
            for row in rows:
                table.append(cells(row, rows[0], summaries.get(row["form"]), summaries.get("float32")))
    print(f"# export cost — {cpu_description()}; {json.dumps(versions('torch', 'numpy'))}")
    print(
        markdown_table(
            [
                "model",
                "stored as",
                "file (× float32)",
                "load (× float32)",
                "error per output",
                "spike AUC change",
                "verdicts changed",
                "optimized P(stim) / P(control) (change)",
            ],
            table,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
