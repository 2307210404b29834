"""One run's lifecycle, the same for main.py's single run and for each run of a sweep: the chosen model made
ready (found or converted), the run checked before it starts, then in its claimed folder: the inputs written,
optimized, evaluated, the ground truth asked, summary.json / report.md / report.html written — or failed.txt
with the error, so that no later start continues a failed run.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from conversion.cache import find_or_convert
from errors import (
    ConfigError,
    ConversionError,
    ModelFileError,
    OptimizationError,
    OutputError,
    PickleFileError,
    SelectionError,
)
from fileio import write_text_atomic
from ground_truth.interface import Simulator
from ground_truth.runner import TrialRunner
from models.checkpoint import load_converted_model
from optimization import run_activity_optimization
from optimization.initial import check_background_ranges
from optimization.network import resolve_layout
from optimization.regime import REGIME_KEY, InputRegime, check_layout
from optimization.run import (
    check_batch_sizes,
    check_ensemble,
    evaluate_on,
    input_mismatch,
    stimulus_of,
    with_resolved_max_rate,
)
from pipeline.config import AppConfig, config_to_yaml
from pipeline.ground_truth_check import check_ground_truth, ground_truth_check
from pipeline.refinement import check_refinement, refine, soma_target_settings
from pipeline.report_page import write_report_page
from pipeline.run_folder import RunFiles
from pipeline.summary import RunSummary, degenerate_warnings, write_report, write_summary
from progress import ProgressStyle
from safe_pickle import load_pickle
from selection.table import (
    Candidate,
    best_candidate,
    mark_unusable,
    ranking_text,
    table_from_csv,
    table_from_models_dir,
    usable_candidates,
)

log = logging.getLogger(__name__)
TRANSFER_KEYS = ("p_spike_stim", "p_spike_control", "difference", "p_outside_stim", "p_outside_control")
# Why a ranked model may turn out unusable only when its files are opened.
UNUSABLE_MODEL_ERRORS = (ConversionError, ModelFileError, PickleFileError, SelectionError)


@dataclass(frozen=True)
class ChosenModel:
    """The selected model as a run records it: plain data, so that sweep workers can receive it."""

    stem: str
    source: str  # the Keras file, or the stem path when only a PyTorch file exists
    selection_value: float
    params: Path | None  # the parameters pickle, when there is one
    pytorch_path: Path
    converted: bool  # True when this run (or sweep) converted the Keras file
    rank: int | None = None  # its rank in the results table
    skipped: tuple[dict[str, Any], ...] = ()  # better-ranked models that could not be used: stem, rank, reason
    candidates: int = 0  # rows of the results table
    usable_candidates: int = 0  # of which usable


def rank_candidates(config: AppConfig) -> pd.DataFrame:
    """The ranked results table (printed: its top rows); a SelectionError when no row is usable."""
    selection = config.selection
    if selection.results_table is not None:
        table, source = table_from_csv(selection.results_table, selection), str(selection.results_table)
    else:
        table = table_from_models_dir(config.models_dir, selection, config.conversion.trust_pickles)
        source = str(config.models_dir)
    log.info(
        "candidate models ranked by %s (%s, %s):\n%s",
        selection.metric,
        selection.reduction,
        selection.goal,
        ranking_text(table, selection.show_top),
    )
    best = best_candidate(table, source)
    log.info("selected %s (%s = %.6g)", best.stem, selection.metric, best.value)
    return table


def prepare_candidate(candidate: Candidate, config: AppConfig, table: pd.DataFrame) -> tuple[nn.Module, ChosenModel]:
    """The PyTorch model of a row of the results `table`, reused or converted now (under the per-model lock)."""
    pytorch = find_or_convert(
        candidate.stem_path,
        candidate.keras_file,
        candidate.params,
        verify=config.conversion.verify,
        trust_pickles=config.conversion.trust_pickles,
        lock_timeout_s=config.conversion.lock_timeout_s,
        export=config.conversion.export,
    )
    chosen = ChosenModel(
        stem=candidate.stem,
        source=str(candidate.keras_file or candidate.stem_path),
        selection_value=candidate.value,
        params=candidate.params,
        pytorch_path=pytorch.path,
        converted=pytorch.converted,
        rank=candidate.rank,
        candidates=len(table),
        usable_candidates=int(table["usable"].sum()),
    )
    return pytorch.model, chosen


def prepare_best_usable_model(table: pd.DataFrame, config: AppConfig) -> tuple[nn.Module, ChosenModel]:
    """The PyTorch model of the best-ranked usable row. When its files turn out unusable (conversion refused,
    unusable .pth), selection.fallback decides: `stop` raises the same error type, naming the model, the cause and
    the next candidate; `next` takes the next usable row (skipped ones are recorded on the result, and marked
    unusable in `table` with their reason)."""
    usable = usable_candidates(table)
    skipped: list[dict[str, Any]] = []
    for position, candidate in enumerate(usable):
        try:
            model, chosen = prepare_candidate(candidate, config, table)
        except UNUSABLE_MODEL_ERRORS as exc:
            following = usable[position + 1] if position + 1 < len(usable) else None
            if config.selection.fallback == "stop":
                then = (
                    f"The next candidate is {following.stem} (rank {following.rank}, "
                    f"{config.selection.metric} {following.value:.6g}); selection.fallback=next tries it "
                    "and the ones after it."
                    if following is not None
                    else "No other candidate is left."
                )
                raise type(exc)(
                    f"the best model {candidate.stem} (rank {candidate.rank}) cannot be used: {exc} {then}"
                ) from exc
            reason = " ".join(str(exc).split())
            log.warning("skipping %s (rank %d): %s", candidate.stem, candidate.rank, reason)
            skipped.append({"stem": candidate.stem, "rank": candidate.rank, "reason": reason})
            mark_unusable(table, candidate.stem, f"skipped: {reason}")
            continue
        if skipped:
            log.info(
                "using %s (rank %d) instead: %d better-ranked model(s) could not be used",
                chosen.stem,
                chosen.rank,
                len(skipped),
            )
        return model, replace(chosen, skipped=tuple(skipped))
    reasons = "; ".join(f"{entry['stem']}: {entry['reason']}" for entry in skipped)
    raise SelectionError(f"none of the {len(usable)} usable-looking models can be used ({reasons}).")


@dataclass(frozen=True)
class RelatedModels:
    """Other rows of the results table a run uses: ensemble members and the models its patterns are evaluated
    on (transfer), made ready as the chosen model is; plain data, so that sweep workers can receive it."""

    ensemble: tuple[ChosenModel, ...] = ()
    transfer: tuple[ChosenModel, ...] = ()
    transfer_skipped: tuple[dict[str, Any], ...] = ()  # stem, rank, reason


def _member_candidate(spec: int | str, usable: list[Candidate]) -> Candidate:
    for candidate in usable:
        if candidate.rank == spec if isinstance(spec, int) else candidate.stem == spec:
            return candidate
    choices = ", ".join(f"{c.rank}: {c.stem}" for c in usable[:10])
    kind = "rank" if isinstance(spec, int) else "stem"
    raise ConfigError(
        f"optimization.ensemble: no usable model of the results table has {kind} {spec!r} (usable: {choices})."
    )


def prepare_related_models(
    table: pd.DataFrame, config: AppConfig, chosen: ChosenModel, model: nn.Module
) -> RelatedModels:
    """The ensemble members named by optimization.ensemble (the chosen `model` itself is always the first; the
    others must take its input shape) and up to evaluation.transfer_models other usable rows, best first. A
    transfer model that cannot be used is recorded and skipped; an ensemble member that cannot be used stops
    the run."""
    usable = usable_candidates(table)
    optimization = config.optimization
    members = [_member_candidate(spec, usable) for spec in optimization.ensemble or ()]
    ensemble = []
    for candidate in dict.fromkeys(members):  # in the order given, each once
        if candidate.stem == chosen.stem:
            continue
        try:
            ensemble.append(prepare_candidate(candidate, config, table)[1])
        except UNUSABLE_MODEL_ERRORS as exc:
            raise type(exc)(
                f"optimization.ensemble: {candidate.stem} (rank {candidate.rank}) cannot be used: {exc}"
            ) from exc
    check_ensemble(
        model,
        [load_converted_model(member.pytorch_path) for member in ensemble],
        [f"{member.stem} (rank {member.rank})" for member in ensemble],
    )
    if ensemble:
        log.info("ensemble: %s and %s", chosen.stem, ", ".join(member.stem for member in ensemble))
    transfer, skipped = [], []
    for candidate in (c for c in usable if c.stem != chosen.stem):
        if len(transfer) == optimization.evaluation.transfer_models:
            break
        try:
            transfer.append(prepare_candidate(candidate, config, table)[1])
        except UNUSABLE_MODEL_ERRORS as exc:  # recorded; the next usable row takes its place
            skipped.append({"stem": candidate.stem, "rank": candidate.rank, "reason": " ".join(str(exc).split())})
    return RelatedModels(ensemble, tuple(transfer), tuple(skipped))


@dataclass(frozen=True)
class RunCheck:
    """What check_run found: the simulator of the ground truth (None when the model's pickle names none), the
    regime of the model's training inputs (None when unknown), the soma target settings of its training, and the
    related models."""

    simulator: Simulator | None
    regime: InputRegime | None = None
    soma_targets: tuple[float, float] | None = None
    related: RelatedModels = RelatedModels()

    def with_related(self, related: RelatedModels) -> RunCheck:
        return replace(self, related=related)


def regime_of(params: Any, params_path: Path | None, config: AppConfig) -> tuple[InputRegime | None, str]:
    """optimization.input_regime when set, else the params pickle's data_dict['input_regime'], else None; with
    where it comes from (or why there is none), for messages."""
    if config.optimization.input_regime is not None:
        where = "config key optimization.input_regime"
        return InputRegime.from_dict(config.optimization.input_regime, where), where
    data = params.get("data_dict") if isinstance(params, dict) else None
    recorded = data.get(REGIME_KEY) if isinstance(data, dict) else None
    if recorded is None:
        why = (
            f"{params_path} has no data_dict['{REGIME_KEY}']"
            if params_path is not None
            else "the model has no params pickle"
        )
        return None, why
    where = f"{params_path}: data_dict['{REGIME_KEY}']"
    return InputRegime.from_dict(recorded, where), where


def check_run(model: nn.Module, chosen: ChosenModel, config: AppConfig) -> RunCheck:
    """Everything a run can refuse before it converts any other model, makes a folder or optimizes anything: the
    input layout, the sizes of its batches, the stimulus, the regime settings, the refinement's needs and the
    ground truth's simulator against the model and the work budget. Its related models come later
    (prepare_related_models, then RunCheck.with_related)."""
    optimization = config.optimization
    params = load_pickle(chosen.params, trust=config.conversion.trust_pickles) if chosen.params else None
    regime, where = regime_of(params, chosen.params, config)
    wants_regime = [
        key
        for key, wanted in (
            ("optimization.constraints.max_rate=auto", optimization.constraints.max_rate == "auto"),
            ("optimization.objective.regime_weight", bool(optimization.objective.regime_weight)),
        )
        if wanted
    ]
    if regime is None and wants_regime:
        raise ConfigError(
            f"{' and '.join(wants_regime)} need the statistics of {chosen.stem}'s training inputs, "
            f"but {where}; add it (see demo_models/README.md) or set optimization.input_regime."
        )
    resolved = with_resolved_max_rate(optimization, regime)
    layout = resolve_layout(model, resolved, log)
    if regime is not None:
        check_layout(regime, layout.num_excitatory, layout.num_inhibitory, where)
    check_batch_sizes(resolved, layout)
    check_background_ranges(resolved.initial_rates, resolved.constraints.max_rate)
    stimulus_of(resolved, layout, config.seed)
    simulator = None
    if config.ground_truth.enabled:
        simulator = check_ground_truth(
            config,
            params,
            chosen.params,
            layout.num_excitatory,
            layout.num_inhibitory,
            layout.duration_ms,
            optimization.num_patterns,
        )
    soma = soma_target_settings(params)
    check_refinement(config, simulator, layout, model, soma)
    return RunCheck(simulator, regime, soma)


def run_lifecycle(
    files: RunFiles,
    model: nn.Module,
    chosen: ChosenModel,
    config: AppConfig,
    checked: RunCheck,
    progress: ProgressStyle,
    started: float,
    table: pd.DataFrame | None = None,
    command: str | None = None,
) -> tuple[Path, RunSummary]:
    """The run in its folder, which the caller holds (run_folder.working_in): its inputs (config.yaml, and the
    ranked `table` when there is one), the optimization, evaluation and ground truth, the summary and reports.
    Any failure leaves failed.txt with its message (a full disk must not hide the error itself) and is raised.
    Returns report.html's path and the summary. `started`: the time.monotonic() at which the run began."""
    try:
        write_text_atomic(files.config, config_to_yaml(config))
        if table is not None:
            write_text_atomic(files.table, table.to_csv(index=False))
        return _optimize_and_report(files, model, chosen, config, checked, progress, started, command)
    except Exception as exc:  # failed means failed: no later start continues this folder
        with contextlib.suppress(OutputError):
            write_text_atomic(files.failed, f"{type(exc).__name__}: {exc}\n")
        raise


def _optimize_and_report(
    files: RunFiles,
    model: nn.Module,
    chosen: ChosenModel,
    config: AppConfig,
    checked: RunCheck,
    progress: ProgressStyle,
    started: float,
    command: str | None,
) -> tuple[Path, RunSummary]:
    members = [load_converted_model(member.pytorch_path) for member in checked.related.ensemble]
    outcome = run_activity_optimization(
        model,
        config.optimization,
        files.folder,
        device=config.device,
        seed=config.seed,
        logger=logging.getLogger("optimization"),
        progress=progress,
        regime=checked.regime,
        members=members,
    )
    optimized, initial = outcome.evaluation["optimized"], outcome.evaluation["initial"]
    with contextlib.ExitStack() as stack:
        run = (
            None
            if checked.simulator is None
            else stack.enter_context(
                TrialRunner(
                    checked.simulator,
                    config.ground_truth.workers,
                    cache_dir=files.simulations,
                    stall_timeout_s=config.ground_truth.stall_timeout_s,
                )
            )
        )
        ground_truth = (
            ground_truth_check(run, outcome, config.ground_truth.trials, config.seed, progress)
            if config.ground_truth.enabled
            else {"available": False, "reason": "turned off in the config"}
        )
        refinement = None
        if config.refine.rounds and run is not None:
            refinement = refine(
                model,
                outcome,
                ground_truth,
                config,
                run,
                checked.regime,
                checked.soma_targets,
                chosen.pytorch_path,
                chosen.stem,
                files.folder,
                progress,
            )
    transfer = transfer_table(model, outcome, checked.related, config, progress)
    summary = RunSummary.of_run(
        chosen,
        config,
        outcome,
        ground_truth,
        getattr(model, "metadata", {}) or {},
        degenerate_warnings(initial, optimized, config.optimization.evaluation),
        command,
        round(time.monotonic() - started, 2),
        files.folder,
        refinement=refinement,
        transfer=transfer,
        ensemble=[member.stem for member in checked.related.ensemble],
    )
    for warning in summary.warnings:
        log.warning("warning: %s", warning)
    written = summary.to_dict()
    refined = {f"refined_r{r['round']}": Path(r["model"]) for r in (refinement or {}).get("rounds", [])[1:]}
    plots = {**outcome.files, **refined, "summary": write_summary(files, written)}
    write_report(files, written, plots)
    return write_report_page(files, written, plots), summary


def transfer_table(
    model: nn.Module, outcome, related: RelatedModels, config: AppConfig, progress: ProgressStyle
) -> list[dict]:
    """The run's initial and optimized rates evaluated on each transfer model: one row per model (or its reason
    for being left out: it cannot be used, or takes another input shape than `model`)."""
    rows: list[dict[str, Any]] = [
        {"stem": entry["stem"], "rank": entry["rank"], "available": False, "reason": entry["reason"]}
        for entry in related.transfer_skipped
    ]
    for other in related.transfer:
        try:
            other_model = load_converted_model(other.pytorch_path)
            if (why := input_mismatch(model, other_model)) is not None:
                raise ConfigError(f"it {why}")
            summaries = evaluate_on(
                other_model, outcome, config.optimization, config.seed, logging.getLogger("optimization"), progress
            )
        except (OptimizationError, ConfigError, ModelFileError) as exc:
            rows.append(
                {"stem": other.stem, "rank": other.rank, "available": False, "reason": " ".join(str(exc).split())}
            )
            continue
        row = {"stem": other.stem, "rank": other.rank, "available": True}
        for name, summary in summaries.items():
            row.update({f"{name}_{key}": summary[key] for key in TRANSFER_KEYS})
        rows.append(row)
        log.info(
            "transfer to %s (rank %s): difference initial %.3f, optimized %.3f",
            other.stem,
            other.rank,
            row["initial_difference"],
            row["optimized_difference"],
        )
    return sorted(rows, key=lambda row: row["rank"] if row["rank"] is not None else 10**9)
