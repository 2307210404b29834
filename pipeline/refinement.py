"""Closed-loop refinement: ask the simulated neuron about the optimized pattern, teach the surrogate its answer,
optimize again through the taught surrogate; `refine.rounds` times.

An optimizer finds the inputs on which the surrogate errs in its favour; the simulator (the ground truth's: the
demo neuron, the user's NEURON cell or simulator function) says where. Round k:
  1. trials sampled from the current pattern (and from perturbations of it: the pattern's neighbourhood),
     each as a control/stimulated pair, plus trials from the training regime (so that the surrogate does not
     forget what it knew), are simulated over the whole window;
  2. a copy of the surrogate (the previous round's, the converted model in round 1) is fine-tuned on them with
     the original training's losses: spike BCE + somatic MSE (soma clipped and shifted as in training; spikes only
     when the simulator reports no somatic voltage);
  3. the rates are optimized again, from the current pattern, through the fine-tuned model;
  4. surrogate and ground-truth figures of the new pattern, and their gap, are recorded.
Fine-tuning learns from every round's trials so far (the surrogate must stay right where it was right), and each
re-optimization is held near its start (refine.trust_weight: an initial-distance penalty), where the simulated
trials have taught the model. Each round writes `refine_r<k>/` (its optimization's files, its simulated trials,
`round.json`) and `<stem>_refined_r<k>.pth` in the run folder; the converted model is never touched. A resumed run
loads finished rounds instead of repeating them.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from conversion.keras_file import file_sha256
from errors import ConfigError, OptimizationError
from fileio import write_atomically, write_text_atomic
from ground_truth.interface import Simulator
from ground_truth.runner import TrialRunner
from ground_truth.trials import sample_spike_trains
from limits import MAX_BATCH_BYTES
from models.checkpoint import checkpoint_payload, load_converted_model
from optimization import OptimizationOutcome, run_activity_optimization
from optimization.network import InputLayout
from optimization.objective import binary_cross_entropy
from optimization.regime import QUANTILE_NAMES, QUANTILES, InputRegime
from pipeline.config import RefineConfig
from pipeline.ground_truth_check import simulated_response
from progress import Progress, ProgressStyle

log = logging.getLogger(__name__)


def check_refinement(
    config, simulator: Simulator | None, layout: InputLayout, model: nn.Module, soma: tuple[float, float] | None
) -> None:
    """Refusals before a run starts: refinement needs the simulator, refines one model that has the somatic
    output it is told of (when the somatic term is used), and its simulations and fine-tuning data fit the
    budgets."""
    refine_config = config.refine
    if not refine_config.rounds:
        return
    if soma is not None and refine_config.somatic_weight:
        with torch.no_grad():
            outputs = model(
                torch.zeros(
                    1, layout.duration_ms, layout.num_segments, device=next(model.parameters(), torch.zeros(0)).device
                )
            )
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        index = refine_config.somatic_output_index
        if index >= len(outputs) or tuple(outputs[index].shape) != (1, layout.duration_ms, 1):
            shapes = [tuple(output.shape) for output in outputs]
            raise ConfigError(
                f"refine.somatic_output_index={index}: the model's outputs have shapes {shapes}; "
                f"the somatic voltage must be one of shape (batch, time, 1); set the index, or "
                f"refine.somatic_weight=0 to fine-tune on spikes only."
            )
    if simulator is None:
        raise ConfigError(
            "refine.rounds needs a simulator of the neuron the model imitates: ground_truth.enabled is "
            "false, or ground_truth.simulator is demo and the model's params pickle names no demo "
            "simulator (data_dict['simulator_config']); set ground_truth.simulator to neuron or a "
            "function."
        )
    if config.optimization.ensemble:
        raise ConfigError("refine.rounds refines one model; it cannot be combined with optimization.ensemble.")
    trials = 2 * refine_config.trials + refine_config.replay_trials
    # bytes per trial and (ms x segment): about 4 while a round's trials are drawn, 3 for every round's trials
    # kept (the arrays, their concatenation, the device copy) through the last fine-tuning
    MAX_BATCH_BYTES.check(
        (4 + 3 * refine_config.rounds) * trials * layout.duration_ms * layout.num_segments,
        f"the simulated trials of refine.rounds={refine_config.rounds} rounds of (2 x "
        f"refine.trials + refine.replay_trials) = {trials} trials of {layout.duration_ms} ms x "
        f"{layout.num_segments} segments, all kept for the fine-tuning",
        ConfigError,
        "bytes",
    )
    gt_trials = 2 * config.ground_truth.trials * config.optimization.num_patterns
    simulator.check_work(
        refine_config.rounds * (trials + gt_trials),
        layout.duration_ms,
        f"the simulations of refine.rounds={refine_config.rounds}",
        ConfigError,
    )


def soma_target_settings(params: dict | None) -> tuple[float, float] | None:
    """(clip, bias) of the somatic target as the pickle records them, or None."""
    data = params.get("data_dict") if isinstance(params, dict) else None
    if not isinstance(data, dict):
        return None
    clip, bias = data.get("y_soma_threshold"), data.get("y_train_soma_bias")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in (clip, bias))
    return (float(clip), float(bias)) if numbers else None


def regime_rates(
    regime: InputRegime | None, fallback: np.ndarray, trials: int, num_excitatory: int, rng: np.random.Generator
) -> np.ndarray:
    """(trials, segments, time) rates from the training regime: per trial and segment a constant rate drawn from
    the regime's per-segment rate quantiles (linear between them); without a regime, the fallback pattern."""
    patterns, segments, duration = fallback.shape
    if regime is None:
        return fallback[np.arange(trials) % patterns]
    levels = (0.0, *QUANTILES, 1.0)
    out = np.empty((trials, segments, 1))
    for group, quantiles in (
        (slice(0, num_excitatory), regime.excitatory_rate),
        (slice(num_excitatory, segments), regime.inhibitory_rate),
    ):
        values = [0.0, *(quantiles[name] for name in QUANTILE_NAMES), quantiles[QUANTILE_NAMES[-1]]]
        count = len(range(segments)[group])
        out[:, group, 0] = np.interp(rng.random((trials, count)), levels, values)
    return np.broadcast_to(out, (trials, segments, duration))


def simulated_trials(
    run: TrialRunner,
    rates: np.ndarray,
    stimulus: dict,
    refine: RefineConfig,
    regime: InputRegime | None,
    initial: np.ndarray,
    num_excitatory: int,
    rng: np.random.Generator,
    progress: ProgressStyle,
) -> dict[str, np.ndarray]:
    """Inputs (n, time, segments) and the simulated neuron's spikes and, when the simulator reports it, soma
    voltage (n, time) for one round."""
    patterns = rates.shape[0]
    perturbed = int(round(refine.trials * refine.perturbed_fraction))
    sources = rates[np.arange(refine.trials) % patterns].astype(np.float64)
    factors = rng.lognormal(0.0, refine.perturbation, size=(perturbed, *rates.shape[1:]))
    sources[refine.trials - perturbed :] *= factors
    spikes = np.stack([sample_spike_trains(pattern, 1, rng)[0] for pattern in sources])
    control = spikes.copy()
    control[:, stimulus["time_ms"], stimulus["segments"]] = False
    stimulated = spikes
    stimulated[:, stimulus["time_ms"], stimulus["segments"]] = True
    replay = (
        np.stack(
            [
                sample_spike_trains(pattern, 1, rng)[0]
                for pattern in regime_rates(regime, initial, refine.replay_trials, num_excitatory, rng)
            ]
        )
        if refine.replay_trials
        else np.zeros((0, *control.shape[1:]), dtype=bool)
    )
    inputs = np.concatenate([control, stimulated, replay])
    with Progress(len(inputs), f"refinement, {run.simulator.name}", "trial", progress, log) as bar:
        answer = run(inputs, bar.advance)
    data = {"inputs": inputs, "spikes": answer.spike_bins(inputs.shape[1])}
    if answer.soma_v is not None:
        data["soma_v"] = answer.soma_v
    return data


def fine_tune(
    model: nn.Module,
    data: dict[str, np.ndarray],
    new: slice,
    refine: RefineConfig,
    spike_index: int,
    soma: tuple[float, float] | None,
    seed: int,
    device: torch.device,
) -> dict[str, float]:
    """Fine-tune `model` in place (eval mode: BatchNorm statistics stay those of training) on simulated trials;
    returns its loss on this round's new trials (`new`) before and after, and the number of trials used."""
    inputs = torch.as_tensor(data["inputs"], dtype=torch.uint8, device=device)  # float32 per batch only
    spikes = torch.as_tensor(data["spikes"], dtype=torch.float32, device=device)
    somatic = None
    if soma is not None and refine.somatic_weight and "soma_v" in data:
        clip, bias = soma
        somatic = torch.as_tensor(np.minimum(data["soma_v"], clip) - bias, dtype=torch.float32, device=device)
    new_trials = torch.arange(len(inputs), device=device)[new]
    model.eval()
    trainable = [parameter for parameter in model.parameters() if parameter.is_floating_point()]
    for parameter in trainable:
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(trainable, lr=refine.learning_rate)
    generator = torch.Generator().manual_seed(seed)

    def loss_of(index: torch.Tensor) -> torch.Tensor:
        outputs = model(inputs[index].float())
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        loss = binary_cross_entropy(outputs[spike_index][..., 0].float(), spikes[index]).mean()
        if somatic is not None:
            loss = (
                loss
                + refine.somatic_weight
                * (outputs[refine.somatic_output_index][..., 0].float() - somatic[index]).square().mean()
            )
        return loss

    def new_loss() -> float:
        with torch.no_grad():
            return float(sum(loss_of(b) * len(b) for b in new_trials.split(256)) / len(new_trials))

    before = new_loss()
    finite = torch.ones((), dtype=torch.bool, device=device)  # checked once at the end: no sync per step
    for _ in range(refine.steps):
        index = torch.randint(len(inputs), (min(refine.batch_size, len(inputs)),), generator=generator).to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(index)
        finite &= torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    model.requires_grad_(False)
    after = new_loss()
    if not (bool(finite) and math.isfinite(after)):
        raise OptimizationError("refinement: the fine-tuning loss became NaN/Inf; lower refine.learning_rate.")
    return {"loss_before": before, "loss_after": after, "new_trials": int(len(new_trials)), "trials": int(len(inputs))}


def save_trials(path: Path, data: dict[str, np.ndarray]) -> None:
    """A round's simulated trials (inputs bit-packed), so that a resumed run fine-tunes on them again."""

    def write(handle) -> None:
        voltage = {"soma_v": data["soma_v"]} if "soma_v" in data else {}
        np.savez_compressed(
            handle,
            inputs=np.packbits(data["inputs"], axis=-1),
            segments=data["inputs"].shape[-1],
            spikes=data["spikes"],
            **voltage,
        )

    write_atomically(path, write)


def load_trials(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as stored:
        segments = int(stored["segments"])
        data = {
            "inputs": np.unpackbits(stored["inputs"], axis=-1, count=segments).astype(bool),
            "spikes": stored["spikes"],
        }
        if "soma_v" in stored.files:
            data["soma_v"] = stored["soma_v"]
        return data


FIGURES = (
    "p_spike_stim",
    "p_spike_control",
    "difference",
    "p_outside_stim",
    "p_outside_control",
    "expected_spike_stim",
    "expected_spike_control",
    "expected_outside_spike_stim",
    "expected_outside_spike_control",
)
# surrogate figure -> the simulated neuron's figure it estimates
GAPS = {
    "p_spike_stim": "p_spike_stim",
    "p_spike_control": "p_spike_control",
    "expected_spike_stim": "p_spike_stim",
    "expected_spike_control": "p_spike_control",
    "expected_outside_spike_control": "p_outside_control",
    "expected_outside_spike_stim": "p_outside_stim",
}


def figures(evaluation: dict[str, Any]) -> dict[str, float]:
    return {key: evaluation[key] for key in FIGURES if key in evaluation}


def gap(surrogate: dict[str, float], truth: dict[str, Any]) -> dict[str, float]:
    """|surrogate - ground truth| for each surrogate figure and the neuron's figure it estimates: the threshold
    crossings and the model's own estimates 1 - prod(1 - p)."""
    return {
        key: abs(surrogate[key] - truth[other]) for key, other in GAPS.items() if key in surrogate and other in truth
    }


ROUND_RECORD, ROUND_RATES = "round.json", "optimized_rates.npy"
MAX_ROUND_RECORD_BYTES = 1 << 20


def finished_round(
    k: int, round_dir: Path, model_path: Path, parent_sha: str, rates_shape: tuple[int, ...], device: torch.device
) -> tuple[dict[str, Any], nn.Module, np.ndarray, dict] | None:
    """Round k's record, refined model, optimized rates and simulated trials when its folder holds what round k
    wrote: round.json (written last) names round k and the sha256 of each file, and each file matches; the model
    is round k's refinement of the model it started from (`parent_sha`: the previous round's file, or the
    converted model's); shapes fit. None otherwise (logged): the round runs again."""
    record_path = round_dir / ROUND_RECORD
    if not record_path.is_file():
        return None
    try:
        if record_path.stat().st_size > MAX_ROUND_RECORD_BYTES:
            raise ValueError(f"{ROUND_RECORD} is larger than {MAX_ROUND_RECORD_BYTES} bytes")
        record = json.loads(record_path.read_text())
        if not isinstance(record, dict) or record.get("round") != k or not isinstance(record.get("files"), dict):
            raise ValueError(f"{ROUND_RECORD} is not round {k}'s record")
        paths = (model_path, round_dir / "simulated_trials.npz", round_dir / ROUND_RATES)
        for path in paths:
            if record["files"].get(path.name) != file_sha256(path):
                raise ValueError(f"{path.name} is not the file round {k} wrote (its sha256 differs)")
        surrogate = load_converted_model(model_path, device)
        refined = (getattr(surrogate, "metadata", {}) or {}).get("refined", {})
        if refined.get("parent_sha256") != parent_sha or refined.get("round") != k:
            raise ValueError(f"{model_path.name} is not round {k}'s refinement of the model round {k - 1} left")
        rates = np.load(paths[2], allow_pickle=False)
        trials = load_trials(paths[1])
        if rates.shape != rates_shape or trials["inputs"].shape[1:] != (rates_shape[2], rates_shape[1]):
            raise ValueError("the rates or simulated trials do not fit the run's patterns")
    except Exception as exc:  # damaged, forged or foreign: never used, the round is simply done again
        log.warning(
            "refinement round %d: the files in %s cannot be used (%s: %s); running the round again",
            k,
            round_dir,
            type(exc).__name__,
            " ".join(str(exc).split())[:300],
        )
        return None
    return record, surrogate, rates, trials


def refine(
    model: nn.Module,
    outcome: OptimizationOutcome,
    ground_truth: dict[str, Any],
    run_config,
    run: TrialRunner,
    regime: InputRegime | None,
    soma: tuple[float, float] | None,
    base_path: Path,
    stem: str,
    folder: Path,
    progress: ProgressStyle,
) -> dict[str, Any]:
    """Run the refinement rounds after the main optimization; returns the record for the summary: the base
    figures (round 0) and one entry per round, and the outcome of the last round."""
    refine_config: RefineConfig = run_config.refine
    base_figures = figures(outcome.evaluation["optimized"])
    rounds = [
        {
            "round": 0,
            "model": str(base_path),
            "surrogate": base_figures,
            "ground_truth": figures(ground_truth),
            "gap": gap(base_figures, ground_truth),
        }
    ]
    optimization = run_config.optimization
    loop = optimization.loop.model_copy(
        update={
            "resume_from": None,
            "max_iterations": (
                refine_config.max_iterations
                if refine_config.max_iterations is not None
                else optimization.loop.max_iterations
            ),
        }
    )
    constraints = optimization.constraints.model_copy(update={"max_rate": outcome.max_rate})
    objective = optimization.objective.model_copy(
        update={"initial_distance_weight": optimization.objective.initial_distance_weight + refine_config.trust_weight}
    )
    round_config = optimization.model_copy(update={"loop": loop, "constraints": constraints, "objective": objective})
    if soma is None and refine_config.somatic_weight:
        log.info("refinement: the params pickle records no soma target settings; fine-tuning on spikes only")
    device = next(model.parameters()).device
    base_sha = parent_sha = file_sha256(base_path)
    current, surrogate = outcome.optimized_rates, model
    simulated: list[dict[str, np.ndarray]] = []  # every round's trials: each fine-tuning learns from all of them
    stimulus = {"segments": list(outcome.stimulus_segments), "time_ms": outcome.stimulus_time_ms}
    for k in range(1, refine_config.rounds + 1):
        round_dir = folder / f"refine_r{k}"
        model_path = folder / f"{stem}_refined_r{k}.pth"
        trials_path = round_dir / "simulated_trials.npz"
        finished = finished_round(k, round_dir, model_path, parent_sha, current.shape, device)
        if finished is not None:  # done before an interruption: its files are those it recorded
            record, surrogate, current, trials = finished
            simulated.append(trials)
            rounds.append(record)
            parent_sha = record["files"][model_path.name]
            log.info("refinement round %d: finished earlier, loaded from %s", k, round_dir)
            continue
        log.info("refinement round %d of %d", k, refine_config.rounds)
        rng = np.random.default_rng([run_config.seed, 16, k])
        simulated.append(
            simulated_trials(
                run,
                current,
                stimulus,
                refine_config,
                regime,
                outcome.initial_rates,
                outcome.num_excitatory,
                rng,
                progress,
            )
        )
        kept = set.intersection(*(set(trials) for trials in simulated))  # soma_v: when every round has it
        data = {key: np.concatenate([trials[key] for trials in simulated]) for key in sorted(kept)}
        new = slice(len(data["inputs"]) - len(simulated[-1]["inputs"]), None)
        if soma is not None and refine_config.somatic_weight and "soma_v" not in data:
            log.info("refinement: %s reports no somatic voltage; fine-tuning on spikes only", run.simulator.name)
        surrogate = copy.deepcopy(surrogate)
        tuning = fine_tune(
            surrogate, data, new, refine_config, optimization.spike_output_index, soma, run_config.seed + k, device
        )
        log.info(
            "refinement round %d: loss on its %d new simulated trials %.4f -> %.4f (fine-tuned on %d)",
            k,
            tuning["new_trials"],
            tuning["loss_before"],
            tuning["loss_after"],
            tuning["trials"],
        )
        metadata = {
            **(getattr(model, "metadata", {}) or {}),
            "refined": {
                "base_model": str(base_path),
                "base_sha256": base_sha,
                "parent_sha256": parent_sha,
                "round": k,
                "rounds": refine_config.rounds,
                "simulated_trials": tuning["trials"],
                "pattern_pairs": refine_config.trials,
                "replay_trials": refine_config.replay_trials,
                "seed": run_config.seed,
            },
        }
        round_outcome = run_activity_optimization(
            surrogate,
            round_config,
            round_dir,
            device=device,
            seed=run_config.seed,
            logger=logging.getLogger("optimization"),
            progress=progress,
            regime=regime,
            start_rates=current,
        )
        current = round_outcome.optimized_rates
        truth = simulated_response(run, round_outcome, run_config.ground_truth.trials, run_config.seed, progress)
        surrogate_figures = figures(round_outcome.evaluation["optimized"])
        record = {
            "round": k,
            "model": str(model_path),
            "fine_tuning": tuning,
            "surrogate": surrogate_figures,
            "ground_truth": figures(truth),
            "gap": gap(surrogate_figures, truth),
            "iterations_run": round_outcome.iterations_run,
            "regime_distance": round_outcome.evaluation.get("regime_distance", {}).get("optimized"),
        }
        save_trials(trials_path, simulated[-1])
        write_atomically(model_path, lambda handle: torch.save(checkpoint_payload(surrogate, metadata), handle))  # noqa: B023 (runs at once)
        record["files"] = {path.name: file_sha256(path) for path in (model_path, trials_path, round_dir / ROUND_RATES)}
        write_text_atomic(round_dir / ROUND_RECORD, json.dumps(record, indent=2) + "\n")  # last: the round is done
        parent_sha = record["files"][model_path.name]
        rounds.append(record)
        log.info(
            "refinement round %d: surrogate P(stim) %.3f P(ctrl) %.3f; ground truth %.3f / %.3f",
            k,
            surrogate_figures["p_spike_stim"],
            surrogate_figures["p_spike_control"],
            truth["p_spike_stim"],
            truth["p_spike_control"],
        )
    return {"rounds": rounds, "final_rates": str(folder / f"refine_r{refine_config.rounds}" / "optimized_rates.npy")}
