#!/usr/bin/env python
"""Pick the best neuron model, make sure it exists in PyTorch, optimize presynaptic activity, report.

    python main.py [--config config.yaml] [KEY=VALUE ...] [--set KEY=VALUE] [--sweep] [--quiet | --verbose]

--sweep runs the config's `sweep:` section instead: one run per combination of seeds, stimulus sets, models and
other settings, in output_dir/sweep_<name>/, resumed where it stopped when started again.

Exit status 0 on success; non-zero with a one-line cause otherwise (no usable model, conversion refused,
optimization diverged, bad config). Safe for cron and cluster jobs: no prompts, a lock per converted model.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

from errors import OutputError, failure_report, raise_terminated_on_sigterm
from fileio import write_text_atomic
from pipeline.config import AppConfig, config_to_yaml, load_config
from pipeline.run_folder import (FAILED_MARK, attach_run_log, claim_run_folder, create_run_folder,
                                 find_interrupted_run, setup_logging, working_in)
from pipeline.single_run import check_run, optimize_and_report, prepare_best_usable_model
from pipeline.sweep import run_sweep
from progress import ProgressStyle
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


def run(config: AppConfig, log_buffer, progress: ProgressStyle, command: str) -> Path:
    started = time.monotonic()
    table, _ = select_model(config)
    model, chosen = prepare_best_usable_model(table, config)
    checked = check_run(model, chosen, config)  # refusals before a run folder exists
    interrupted = (find_interrupted_run(config.output_dir, chosen.stem, config.model_dump(mode="json"))
                   if config.resume_interrupted and config.optimization.loop.resume_from is None else None)
    if interrupted is not None:
        run_dir, claim = interrupted
        attach_run_log(log_buffer, run_dir / "run.log")
        log.info("continuing the interrupted run %s from its checkpoint", run_dir)
        config.optimization.loop.resume_from = run_dir / "checkpoint.pt"
    else:
        run_dir = create_run_folder(config.output_dir, chosen.stem)
        claim = claim_run_folder(run_dir)
        attach_run_log(log_buffer, run_dir / "run.log")
    with working_in(run_dir, claim):  # no other job continues this folder meanwhile (released even on SIGKILL)
        write_text_atomic(run_dir / "config.yaml", config_to_yaml(config))
        write_text_atomic(run_dir / "results_table.csv", table.to_csv(index=False))
        try:
            report, _ = optimize_and_report(model, chosen, config, checked, run_dir, progress, started, command)
        except Exception as exc:  # failed means failed: no later start continues this folder
            with contextlib.suppress(OutputError):  # a full disk must not hide the error itself
                write_text_atomic(run_dir / FAILED_MARK, f"{type(exc).__name__}: {exc}\n")
            raise
    return report


def sweep(config: AppConfig, log_buffer) -> Path:
    """Rank the models once, then run every combination of the sweep section; returns the sweep's report."""
    table, _ = select_model(config)
    return run_sweep(config, table, log_buffer)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="main.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="override one config key, e.g. optimization.loop.max_iterations=200 device=cpu")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="config file (default: config.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="same as KEY=VALUE")
    parser.add_argument("--sweep", action="store_true",
                        help="run the config's sweep section (exit status non-zero when any run failed)")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("--quiet", action="store_true", help="console: warnings and errors only")
    verbosity.add_argument("--verbose", action="store_true", help="console: debug messages and tracebacks")
    return parser.parse_intermixed_args(argv)  # KEY=VALUE may come before or after options


def main(argv: Sequence[str] | None = None) -> int:
    """The one error boundary of main.py: whatever stops it becomes one `error:` paragraph and an exit code
    (errors.failure_report); the traceback only with --verbose."""
    args = parse_args(argv)
    log_buffer = setup_logging(args.quiet, args.verbose)
    if args.verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")  # TensorFlow's own logging too
    raise_terminated_on_sigterm()
    try:
        config = load_config(args.config, [*args.overrides, *args.set])
        if config.demo.applied:
            why = ("demo.apply=always" if config.demo.apply == "always" else
                   "models_dir is the shipped demo folder; demo.apply=never turns them off")
            log.info("demo settings applied (%s): %s", why,
                     ", ".join(f"{key}={config.demo.settings[key]}" for key in config.demo.applied))
        progress = ProgressStyle.for_console(args.quiet, config.progress_interval_s)
        command = shlex.join(["python", "main.py", *(sys.argv[1:] if argv is None else argv)])
        report = sweep(config, log_buffer) if args.sweep else run(config, log_buffer, progress, command)
    except (Exception, KeyboardInterrupt) as exc:
        message, code = failure_report(exc, "running main.py")
        log.error("%s", message, exc_info=exc if args.verbose else None)
        return code
    print(f"Report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
