#!/usr/bin/env python
"""Pick the best neuron model, make sure it exists in PyTorch, optimize presynaptic activity, report.

    python main.py [--config config.yaml] [KEY=VALUE ...] [--set KEY=VALUE] [--quiet | --verbose]

Exit status 0 on success; non-zero with a one-line cause otherwise (no usable model, conversion refused,
optimization diverged, bad config). Safe for cron and cluster jobs: no prompts, a lock per converted model.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from errors import ToolError
from fileio import write_text_atomic
from optimization import run_activity_optimization
from pipeline.config import AppConfig, config_to_yaml, load_config
from pipeline.ground_truth import ground_truth_check
from pipeline.run_folder import attach_run_log, create_run_folder, setup_logging
from pipeline.summary import EVALUATION_KEYS, versions, write_report, write_summary
from selection.pytorch_model import ensure_pytorch_model
from selection.table import best_row, format_table, table_from_csv, table_from_models_dir

log = logging.getLogger("main")
DEFAULT_CONFIG = Path(__file__).resolve().parent / "config.yaml"


def select_model(config: AppConfig):
    """The ranked results table and its best usable row."""
    selection = config.selection
    if selection.results_table is not None:
        table, source = table_from_csv(selection.results_table, selection), str(selection.results_table)
    else:
        table = table_from_models_dir(config.models_dir, selection, config.conversion.trust_pickles)
        source = str(config.models_dir)
    log.info("candidate models ranked by %s (%s, %s):\n%s", selection.metric, selection.reduction,
             selection.goal, format_table(table, selection.show_top))
    best = best_row(table, source)
    log.info("selected %s (%s = %.6g)", best["stem"], selection.metric, best["value"])
    return table, best


def run(config: AppConfig, log_buffer, progress: bool) -> Path:
    started = time.monotonic()
    table, best = select_model(config)
    run_dir = create_run_folder(config.output_dir, best["stem"])
    attach_run_log(log_buffer, run_dir / "run.log")
    write_text_atomic(run_dir / "config.yaml", config_to_yaml(config))
    write_text_atomic(run_dir / "results_table.csv", table.to_csv(index=False))

    stem_path = Path(best["stem_path"])
    params = Path(best["params"]) if best["params"] else None
    pytorch = ensure_pytorch_model(stem_path, params, verify=config.conversion.verify,
                                   trust_pickles=config.conversion.trust_pickles,
                                   lock_timeout_s=config.conversion.lock_timeout_s)

    outcome = run_activity_optimization(pytorch.model, config.optimization, run_dir, device=config.device,
                                        seed=config.seed, logger=logging.getLogger("optimization"),
                                        progress=progress)
    optimized = outcome.evaluation["optimized"]
    ground_truth = (ground_truth_check(params, outcome, config.ground_truth.trials, config.seed,
                                       config.conversion.trust_pickles)
                    if config.ground_truth.enabled else {"available": False, "reason": "turned off in the config"})
    summary = {
        "selected_model": best["h5"] or str(stem_path),
        "selection_metric": config.selection.metric,
        "selection_reduction": config.selection.reduction,
        "selection_value": float(best["value"]),
        "pytorch_model": str(pytorch.path),
        "converted": pytorch.converted,
        "device": outcome.device,
        "seed": config.seed,
        "final_loss": outcome.final_loss,
        "iterations_run": outcome.iterations_run,
        "stopped_because": outcome.stopped_because,
        "stimulus_segments": list(outcome.stimulus_segments),
        "stimulus_time_ms": outcome.stimulus_time_ms,
        "evaluation": {**{k: optimized[k] for k in EVALUATION_KEYS}, "details": optimized},
        "evaluation_initial": {k: outcome.evaluation["initial"][k] for k in EVALUATION_KEYS},
        "ground_truth": ground_truth,
        "seconds": round(time.monotonic() - started, 2),
        "versions": versions(),
        "run_dir": str(run_dir),
    }
    files = {**outcome.files, "summary": write_summary(run_dir, summary)}
    return write_report(run_dir, summary, files)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="main.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="override one config key, e.g. optimization.loop.max_iterations=200 device=cpu")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="config file (default: config.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="same as KEY=VALUE")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("--quiet", action="store_true", help="console: warnings and errors only")
    verbosity.add_argument("--verbose", action="store_true", help="console: debug messages and tracebacks")
    return parser.parse_intermixed_args(argv)  # KEY=VALUE may come before or after options


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log_buffer = setup_logging(args.quiet, args.verbose)
    try:
        config = load_config(args.config, [*args.overrides, *args.set])
        report = run(config, log_buffer, progress=not args.quiet and sys.stderr.isatty())
    except ToolError as exc:
        log.error("error: %s", exc, exc_info=args.verbose)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("error: interrupted")
        return 130
    print(f"Report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
