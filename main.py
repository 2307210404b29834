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
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from errors import quiet_interrupts_while_importing, run_entry_point
from version import VERSION

with quiet_interrupts_while_importing(__name__ == "__main__"):
    from pipeline.config import AppConfig, load_config
    from pipeline.lifecycle import (
        check_run,
        prepare_best_usable_model,
        prepare_related_models,
        rank_candidates,
        run_lifecycle,
    )
    from pipeline.run_folder import check_output_dir, claimed_run_folder, setup_logging
    from pipeline.sweep import run_sweep
    from progress import ProgressStyle

log = logging.getLogger("main")
DEFAULT_CONFIG = Path(__file__).resolve().parent / "config.yaml"


def run(config: AppConfig, log_buffer, progress: ProgressStyle, command: str) -> Path:
    """select → ensure the PyTorch model → check → optimize → evaluate → report; returns report.html."""
    started = time.monotonic()
    check_output_dir(config.output_dir)
    table = rank_candidates(config)
    model, chosen = prepare_best_usable_model(table, config)
    checked = check_run(model, chosen, config)  # refusals before other models are converted or a folder exists
    checked = checked.with_related(prepare_related_models(table, config, chosen, model))  # ensemble, transfer
    with claimed_run_folder(config, chosen.stem, log_buffer) as (files, run_config):
        report, _ = run_lifecycle(files, model, chosen, run_config, checked, progress, started, table, command)
    return report


def sweep(config: AppConfig, log_buffer) -> Path:
    """Rank the models once, then run every combination of the sweep section; returns the sweep's report."""
    check_output_dir(config.output_dir)
    return run_sweep(config, rank_candidates(config), log_buffer)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="main.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="override one config key, e.g. optimization.loop.max_iterations=200 device=cpu",
    )
    parser.add_argument("--version", action="version", version=f"neuron-tcn {VERSION}")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="config file (default: config.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="same as KEY=VALUE")
    parser.add_argument(
        "--sweep", action="store_true", help="run the config's sweep section (exit status non-zero when any run failed)"
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("--quiet", action="store_true", help="console: warnings and errors only")
    verbosity.add_argument("--verbose", action="store_true", help="console: debug messages and tracebacks")
    return parser.parse_intermixed_args(argv)  # KEY=VALUE may come before or after options


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log_buffer = setup_logging(args.quiet, args.verbose)

    def work() -> int:
        config = load_config(args.config, [*args.overrides, *args.set])
        if config.demo.applied:
            why = (
                "demo.apply=always"
                if config.demo.apply == "always"
                else "models_dir is the shipped demo folder; demo.apply=never turns them off"
            )
            log.info(
                "demo settings applied (%s): %s",
                why,
                ", ".join(f"{key}={config.demo.settings[key]}" for key in config.demo.applied),
            )
        progress = ProgressStyle.for_console(args.quiet, config.progress_interval_s)
        command = shlex.join(["python", "main.py", *(sys.argv[1:] if argv is None else argv)])
        report = sweep(config, log_buffer) if args.sweep else run(config, log_buffer, progress, command)
        print(f"Report: {report}")
        return 0

    return run_entry_point(
        work,
        "running main.py",
        args.verbose,
        report=lambda message, traceback_of: log.error("%s", message, exc_info=traceback_of),
    )


if __name__ == "__main__":
    sys.exit(main())
