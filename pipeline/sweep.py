"""Sweeps: the same optimization for every combination of seeds, stimulus sets, models and other settings.

`python main.py --sweep` expands the config's `sweep:` section into runs (a cartesian product) and checks every
run's configuration before any work; then it selects and converts each model once, creates one ordinary run
folder per run inside output_dir/sweep_<name>/, and hands the runs to a backend (pipeline/sweep_backends.py);
workers only load `.pth` files. manifest.csv lists every run with its parameters, status, figures, error and
folder, and is rewritten (atomically) whenever a run finishes, so a sweep started again resumes: runs done with
the same configuration are skipped, failed and unfinished ones run again (in a new folder).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from errors import ConfigError, OutputError, SelectionError, SweepError
from fileio import write_text_atomic
from limits import MAX_SWEEP_RUNS
from pipeline.config import AppConfig, IntRange, SweepConfig, config_to_yaml, set_dotted, validate_config
from pipeline.lifecycle import prepare_candidate, prepare_related_models
from pipeline.run_folder import RunFiles, attach_run_log, new_folder, short_model_name
from pipeline.sweep_backends import BACKENDS, check_backend
from pipeline.sweep_report import write_sweep_report
from pipeline.sweep_worker import FIGURES, RunTask
from selection.table import Candidate, usable_candidates

log = logging.getLogger("sweep")
MANIFEST = "manifest.csv"
# Settings a sweep may not vary through sweep.overrides, and what to use instead.
RESERVED_OVERRIDES = {
    "seed": "use sweep.seeds",
    "optimization.stimulus.segments": "use sweep.stimulus_sets",
    "optimization.stimulus.selection_seed": "use sweep.stimulus_sets",
    "models_dir": "models are selected once per sweep; use sweep.models",
    "selection": "models are selected once per sweep; use sweep.models",
    "conversion": "models are converted once per sweep",
    "output_dir": "every run of a sweep writes into the sweep's folder",
    "sweep": "a sweep does not contain sweeps",
}

Stimulus = int | list[int] | None  # a selection seed, explicit segments, or the config's own stimulus


@dataclass(frozen=True)
class SweepPoint:
    """One combination of the product, before its model is looked up in the results table."""

    model: int | str
    seed: int
    stimulus: Stimulus
    overrides: tuple[tuple[str, Any], ...]

    @property
    def stimulus_label(self) -> str:
        if self.stimulus is None:
            return "config"
        if isinstance(self.stimulus, int):
            return f"draw{self.stimulus}"
        return "seg" + "-".join(map(str, self.stimulus))


def _listed(values: list | IntRange | None, default: list, key: str) -> list:
    listed = default if values is None else values.values() if isinstance(values, IntRange) else list(values)
    if not listed:
        raise ConfigError(f"sweep.{key} is empty; give at least one value (or null for the default).")
    if len({json.dumps(value) for value in listed}) != len(listed):
        raise ConfigError(f"sweep.{key} {listed} repeats a value; each combination runs once.")
    return listed


def sweep_points(sweep: SweepConfig, base_seed: int) -> list[SweepPoint]:
    """The cartesian product of the sweep's lists, seeds varying fastest."""
    overrides = sweep.overrides or {}
    for key, values in overrides.items():
        reserved = next(
            (reason for prefix, reason in RESERVED_OVERRIDES.items() if key == prefix or key.startswith(prefix + ".")),
            None,
        )
        if reserved:
            raise ConfigError(f"sweep.overrides may not vary '{key}': {reserved}.")
        _listed(values, [], f"overrides '{key}'")
    models = _listed(sweep.models, [1], "models")
    ranks = [m for m in models if isinstance(m, int)]
    if any(rank < 1 for rank in ranks):
        raise ConfigError(f"sweep.models {models}: ranks start at 1 (the best model).")
    stimuli, seeds = _listed(sweep.stimulus_sets, [None], "stimulus_sets"), _listed(sweep.seeds, [base_seed], "seeds")
    runs = len(models) * len(stimuli) * len(seeds) * math.prod(len(values) for values in overrides.values())
    MAX_SWEEP_RUNS.check(runs, "the sweep section", ConfigError, " runs")
    axes = [models, stimuli, list(itertools.product(*overrides.values())), seeds]
    return [
        SweepPoint(model, seed, stimulus, tuple(zip(overrides, values)))
        for model, stimulus, values, seed in itertools.product(*axes)
    ]


def run_config(base: AppConfig, point: SweepPoint) -> AppConfig:
    """The base configuration with the point's seed, stimulus and overrides, validated."""
    data = base.model_dump(mode="json")
    del data["sweep"]
    source = f"sweep run (seed {point.seed}, stimulus {point.stimulus_label}, {dict(point.overrides)})"
    for key, value in point.overrides:
        set_dotted(data, key, value, f"{source}: sweep.overrides '{key}'")
    data["seed"] = point.seed
    if isinstance(point.stimulus, int):
        data["optimization"]["stimulus"].update(segments=None, selection_seed=point.stimulus)
    elif point.stimulus is not None:
        data["optimization"]["stimulus"]["segments"] = point.stimulus
    config = validate_config(data, source)
    overridden = {key for key, _ in point.overrides}
    config.demo._applied = [key for key in base.demo.applied if key not in overridden]
    return config


def resolve_models(table: pd.DataFrame, specs: list[int | str], source: str) -> dict[int | str, Candidate]:
    """Each model of sweep.models (a rank among the usable rows, or a stem) -> its results-table row."""
    usable = usable_candidates(table)
    chosen = {}
    for spec in specs:
        if isinstance(spec, int):
            if spec > len(usable):
                raise SelectionError(
                    f"{source}: sweep.models asks for rank {spec}, but only {len(usable)} model(s) are usable."
                )
            chosen[spec] = usable[spec - 1]
            continue
        named = table[table["stem"] == spec]
        if named.empty:
            raise SelectionError(
                f"{source}: sweep.models names '{spec}', which is not in the results table "
                f"(models: {', '.join(table['stem'])})."
            )
        candidate = Candidate.from_row(named.iloc[0])
        if not candidate.usable:
            raise SelectionError(f"{source}: sweep.models names '{spec}', which is not usable: {candidate.reason}.")
        chosen[spec] = candidate
    stems = [candidate.stem for candidate in chosen.values()]
    if len(set(stems)) != len(stems):
        raise ConfigError(f"sweep.models {specs} names the same model more than once.")
    return chosen


def _digest(content: Any, length: int) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:length]


def sweep_folder(config: AppConfig) -> Path:
    """output_dir/sweep_<name>, or sweep_<hash of the base config and the sweep's lists> when unnamed."""
    sweep = config.sweep
    if sweep.name:
        return config.output_dir / f"sweep_{sweep.name}"
    base = config.model_dump(mode="json", exclude={"sweep"})
    lists = sweep.model_dump(mode="json", include={"seeds", "stimulus_sets", "models", "overrides"})
    return config.output_dir / f"sweep_{_digest([base, lists], 10)}"


def _model_labels(stems: list[str]) -> dict[str, str]:
    """Short names for run folders; a digest of the stem tells apart models whose short names coincide."""
    short = {stem: short_model_name(stem) for stem in stems}
    counts = Counter(short.values())
    return {stem: name if counts[name] == 1 else f"{name}_{_digest(stem, 6)}" for stem, name in short.items()}


class Manifest:
    """manifest.csv: one row per run of the sweep, in the order of the product."""

    def __init__(self, path: Path, override_keys: list[str]):
        self.path = path
        self.columns = [
            "run_id",
            "model",
            "seed",
            "stimulus",
            *override_keys,
            "status",
            *FIGURES,
            "error",
            "failures",
            "folder",
            "config_hash",
        ]

    def previous_rows(self) -> dict[str, dict[str, str]]:
        """The rows an earlier invocation wrote, as text, by run_id (none for a new sweep)."""
        if not self.path.is_file():
            return {}
        try:
            frame = pd.read_csv(self.path, dtype=str, keep_default_na=False)
        except (OSError, ValueError) as exc:
            raise SweepError(
                f"{self.path}: cannot read the sweep's manifest ({exc}); move it away to start the sweep afresh."
            ) from None
        return {row["run_id"]: row for row in frame.to_dict("records")}

    def write(self, rows: list[dict[str, Any]]) -> None:
        frame = pd.DataFrame(rows, columns=self.columns).convert_dtypes()  # counts stay integers beside gaps
        write_text_atomic(self.path, frame.to_csv(index=False))


def _failing_again(row: dict[str, str] | None, config_hash: str) -> bool:
    """A run whose last two attempts, with this configuration, failed with the same error."""
    return (
        row is not None
        and row.get("status") == "failed"
        and row.get("config_hash") == config_hash
        and int(row.get("failures") or 0) >= 2
    )


def _finished_before(row: dict[str, str] | None, config_hash: str, sweep_dir: Path) -> bool:
    return (
        row is not None
        and row.get("status") == "done"
        and row.get("config_hash") == config_hash
        and RunFiles(sweep_dir / row.get("folder", "")).summary.is_file()
    )


def run_sweep(config: AppConfig, table: pd.DataFrame, log_buffer) -> Path:
    """Run (or resume) the sweep of `config` over the ranked `table`; returns the sweep's report.html.

    Raises SweepError after writing the manifest and the report when any run failed.
    """
    sweep = config.sweep
    points = sweep_points(sweep, config.seed)
    configs = [run_config(config, point) for point in points]  # every run checked before any work
    models = resolve_models(table, list(dict.fromkeys(point.model for point in points)), str(config.models_dir))

    check_backend(sweep.backend)
    sweep_dir = sweep_folder(config)
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{sweep_dir}: cannot create the sweep folder ({exc.strerror or exc}).") from None
    attach_run_log(log_buffer, sweep_dir / "sweep.log")
    write_text_atomic(RunFiles(sweep_dir).config, config_to_yaml(config))  # a sweep folder's names, as a run's
    write_text_atomic(RunFiles(sweep_dir).table, table.to_csv(index=False))
    prepared = {spec: prepare_candidate(candidate, config, table) for spec, candidate in models.items()}  # once
    chosen = {spec: model for spec, (_, model) in prepared.items()}
    related = {spec: prepare_related_models(table, config, model, module) for spec, (module, model) in prepared.items()}
    labels = _model_labels([model.stem for model in chosen.values()])

    override_keys = list(sweep.overrides or {})
    manifest = Manifest(sweep_dir / MANIFEST, override_keys)
    previous = manifest.previous_rows()
    rows: dict[str, dict[str, Any]] = {}
    tasks: list[RunTask] = []
    for point, run_cfg in zip(points, configs):
        model = chosen[point.model]
        params = {"model": model.stem, "seed": point.seed, "stimulus": point.stimulus_label, **dict(point.overrides)}
        run_id = "_".join(
            [labels[model.stem], f"seed{point.seed}", point.stimulus_label]
            + ([_digest(point.overrides, 6)] if point.overrides else [])
        )
        config_hash = _digest([model.stem, run_cfg.model_dump(mode="json", exclude={"sweep"})], 12)
        if _finished_before(previous.get(run_id), config_hash, sweep_dir):
            rows[run_id] = previous[run_id]
            continue
        if _failing_again(previous.get(run_id), config_hash) and not sweep.retry_failed:
            rows[run_id] = previous[run_id]
            log.warning(
                "sweep run %s is not retried: it failed twice with the same error (%s); fix the cause, "
                "then rerun with sweep.retry_failed=true",
                run_id,
                previous[run_id]["error"],
            )
            continue
        run_dir = new_folder(sweep_dir, run_id)
        rows[run_id] = {
            "run_id": run_id,
            **params,
            "status": "pending",
            "folder": run_dir.name,
            "config_hash": config_hash,
        }
        tasks.append(RunTask(run_id, run_cfg, model, run_dir, related[point.model]))
    manifest.write(list(rows.values()))
    log.info(
        "sweep %s: %d run(s), %d done before, %d to run on the %s backend",
        sweep_dir.name,
        len(rows),
        len(rows) - len(tasks),
        len(tasks),
        sweep.backend,
    )

    def finished(task: RunTask, result: dict[str, Any]) -> None:
        before = previous.get(task.run_id) or {}
        same = (
            result["status"] == "failed"
            and before.get("status") == "failed"
            and before.get("error") == result["error"]
            and before.get("config_hash") == rows[task.run_id]["config_hash"]
        )
        result = {
            **result,
            "failures": (int(before.get("failures") or 1) + 1 if same else 1 if result["status"] == "failed" else 0),
        }
        rows[task.run_id].update(result)
        manifest.write(list(rows.values()))
        count = sum(row["status"] in ("done", "failed") for row in rows.values())
        outcome = (
            f"difference {result['difference']:.3f}" if result["status"] == "done" else f"failed: {result['error']}"
        )
        log.info("[%d/%d] %s: %s", count, len(rows), task.run_id, outcome)

    BACKENDS[sweep.backend](tasks, config, finished)
    report = write_sweep_report(sweep_dir, manifest.path, ["model", "stimulus", *override_keys], sweep)
    failed = [row for row in rows.values() if row["status"] != "done"]
    if failed:
        raise SweepError(
            f"{sweep_dir}: {len(failed)} of {len(rows)} run(s) failed (first: {failed[0]['run_id']}: "
            f"{failed[0].get('error') or failed[0]['status']}); {MANIFEST} and report.md list them."
        )
    log.info("sweep %s: all %d run(s) done", sweep_dir.name, len(rows))
    return report
