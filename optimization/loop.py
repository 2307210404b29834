"""The optimizer loop: Adam on the rate parameters, plateau schedule, stopping rules, guards and checkpoints.

Everything per step stays on the device; the host reads numbers once per logging interval (interval means of
the loss terms, responses and gradient norm), and the schedule, stopping rules and NaN/Inf guard act on those.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from errors import OptimizationError, Terminated
from fileio import write_atomically
from models.checkpoint import check_torch_archive
from progress import Progress, ProgressStyle

from .config import OptimizationConfig
from .constraints import RateParameters
from .fast_path import PairedForward
from .network import SpikeProbability
from .objective import PENALTY_TERMS, Objective
from .runtime import MicroBatcher
from .sampler import SpikeSampler, draw_noise
from .stimulus import PairedStimulus

METRICS = ("loss_total", "loss_response", *(f"loss_{name}" for name in PENALTY_TERMS), "p_control", "p_stim",
           "grad_norm")
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class LoopResult:
    iterations_run: int
    stopped_because: str  # max_iterations | target_reached | plateau | interrupted
    final_loss: float


class RateOptimizer:
    """Optimizes `parameters` so that the paired stimulus makes the model spike only in the stimulated copy."""

    def __init__(
        self,
        parameters: RateParameters,
        model: SpikeProbability,
        sampler: SpikeSampler,
        paired: PairedStimulus,
        config: OptimizationConfig,
        generator: torch.Generator,
        checkpoint_path: Path,
        signature: dict[str, Any],
        logger: logging.Logger,
        progress: ProgressStyle,
    ):
        self.parameters = parameters
        self.sampler = sampler
        self.paired = paired
        self.config = config
        self.loop = config.loop
        self.objective = Objective(config.objective, config.constraints.max_rate)
        self.generator = generator
        self.checkpoint_path = checkpoint_path
        self.signature = signature
        self.logger = logger
        self.progress = progress
        self.initial_rates = parameters.rates().detach().clone()
        self.device = self.initial_rates.device
        self.optimizer = torch.optim.Adam(parameters.parameters(), lr=self.loop.learning_rate)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer,
            factor=self.loop.lr_factor,
            patience=math.ceil(self.loop.lr_patience_iterations / self.loop.log_every),
            min_lr=self.loop.min_learning_rate,
        )
        self.micro_batcher = MicroBatcher(self.loop.micro_batches, "the optimization step", logger)
        moving_excitatory_only = config.constraints.moving_segments == "excitatory"
        self.forward_pairs = PairedForward(model, paired, self.loop.fast_path, self.loop.precision,
                                           parameters.num_excitatory if moving_excitatory_only else None, logger)
        samples = config.sampler.samples_per_pattern
        self.pattern_of_sample = torch.arange(self.initial_rates.shape[0] * samples, device=self.device) // samples
        self.iteration = 0
        self.history: list[dict[str, float]] = []
        self.best_loss = math.inf
        self.iterations_since_best = 0
        self.elapsed_before = 0.0
        self.started = time.perf_counter()
        self._reset_interval()
        self.last_good = parameters.free.detach().clone()
        self.healthy = torch.ones((), dtype=torch.bool, device=self.device)
        self.first_bad_iteration = torch.full((), -1, dtype=torch.long, device=self.device)

    # ---- one step -------------------------------------------------------------------------------------------

    def _reset_interval(self) -> None:
        self.interval_sums = torch.zeros(len(METRICS), device=self.device)
        self.interval_steps = 0

    def _response_gradient(self, rates_leaf: torch.Tensor) -> torch.Tensor:
        """Backpropagate the response loss into rates_leaf.grad in micro-batches; return its mean and responses."""
        total, (_, duration, segments) = self.pattern_of_sample.numel(), self.initial_rates.shape
        noise = draw_noise((total, duration, segments), self.generator, self.device)
        window = self.paired.stimulus.response_window()
        sums = torch.zeros(3, device=self.device)

        def work(chunk: slice) -> None:
            spikes = self.sampler.spikes(rates_leaf[self.pattern_of_sample[chunk]], noise[chunk])
            probability = self.forward_pairs(self.paired.control(spikes))
            count = spikes.shape[0]
            control_window, stimulated_window = probability[:count, window], probability[count:, window]
            losses = self.objective.response_losses(control_window, stimulated_window)
            control_max, stimulated_max = control_window.amax(dim=1), stimulated_window.amax(dim=1)
            (losses.sum() / total).backward()
            sums.add_(torch.stack([losses.sum(), control_max.sum(), stimulated_max.sum()]).detach() / total)

        def restart() -> None:
            rates_leaf.grad = None
            sums.zero_()

        self.micro_batcher.run(total, work, restart)
        return sums

    def step(self) -> None:
        """One optimizer step; nothing is read back to the host."""
        self.optimizer.zero_grad(set_to_none=True)
        rates = self.parameters.rates()
        rates_leaf = rates.detach().requires_grad_(True)
        response_loss, control, stimulated = self._response_gradient(rates_leaf)
        penalties = self.objective.weighted_penalties(rates, self.initial_rates)
        penalty = sum(penalties.values())
        # Chain rule through the parametrization: the response gradient w.r.t. rates arrives via rates_leaf.grad.
        ((rates * rates_leaf.grad).sum() + penalty).backward()
        max_norm = self.loop.grad_clip_norm if self.loop.grad_clip_norm is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters.parameters(), max_norm)
        self.optimizer.step()
        self.parameters.project_()
        self.iteration += 1
        total = response_loss + penalty.detach()
        self.interval_sums += torch.stack(
            [total, response_loss, *(term.detach() for term in penalties.values()), control, stimulated, grad_norm]
        )
        self.interval_steps += 1
        finite = torch.isfinite(total) & torch.isfinite(grad_norm)
        self.first_bad_iteration = torch.where(
            self.healthy & ~finite, torch.full_like(self.first_bad_iteration, self.iteration), self.first_bad_iteration
        )
        self.healthy &= finite
        self.last_good = torch.where(self.healthy, self.parameters.free.detach(), self.last_good)

    # ---- interval bookkeeping -------------------------------------------------------------------------------

    def _end_interval(self, bar: Progress) -> Optional[str]:
        """Record the interval's means (the one host synchronisation); return a stop reason or None."""
        steps = self.interval_steps
        *means, first_bad = torch.cat([self.interval_sums / steps, self.first_bad_iteration.float()[None]]).tolist()
        self._reset_interval()
        if first_bad >= 0:
            self._fail_non_finite(int(first_bad))
        row = {"iteration": self.iteration, **dict(zip(METRICS, means))}
        row["learning_rate"] = self.optimizer.param_groups[0]["lr"]
        row["micro_batches"] = self.micro_batcher.chunks
        row["elapsed_s"] = self.elapsed_before + time.perf_counter() - self.started
        self.history.append(row)
        bar.show(loss=f"{row['loss_total']:.4f}", p_control=f"{row['p_control']:.3f}",
                 p_stim=f"{row['p_stim']:.3f}")
        self.logger.debug("iteration %d: %s", self.iteration, row)
        self.scheduler.step(row["loss_total"])
        if row["loss_total"] < self.best_loss - self.loop.early_stop_min_delta:
            self.best_loss = row["loss_total"]
            self.iterations_since_best = 0
        else:
            self.iterations_since_best += steps
        if self.loop.checkpoint_every and self.iteration % self.loop.checkpoint_every == 0:
            self.save_checkpoint()
        objective = self.config.objective
        tolerance = self.loop.target_tolerance
        if (
            self.loop.stop_when_target_reached
            and row["p_stim"] >= objective.target_spike_prob - tolerance
            and row["p_control"] <= objective.control_target + tolerance
        ):
            return "target_reached"
        patience = self.loop.early_stop_patience_iterations
        if patience is not None and self.iterations_since_best >= patience:
            return "plateau"
        return None

    def _fail_non_finite(self, first_bad: int) -> None:
        with torch.no_grad():
            self.parameters.free.copy_(self.last_good)
        raise OptimizationError(
            f"the loss or its gradient became NaN/Inf at iteration {first_bad}; the rates were reset to the last "
            f"finite state (after iteration {first_bad - 1}) and saved; the last periodic checkpoint is kept. "
            "Lower loop.learning_rate, use fp32 precision, or check the model's output for NaN."
        )

    # ---- the loop -------------------------------------------------------------------------------------------

    def run(self) -> LoopResult:
        """Step until max_iterations or a stopping rule; Ctrl-C stops early and keeps what exists."""
        self.started = time.perf_counter()
        stopped_because = "max_iterations"
        with Progress(self.loop.max_iterations, "optimizing rates", "step", self.progress, self.logger,
                      initial=self.iteration) as bar:
            try:
                while self.iteration < self.loop.max_iterations:
                    self.step()
                    reason = None
                    if self.iteration % self.loop.log_every == 0 or self.iteration == self.loop.max_iterations:
                        reason = self._end_interval(bar)
                    bar.advance()
                    if reason is not None:
                        stopped_because = reason
                        break
            except KeyboardInterrupt as interruption:
                self.parameters.project_()
                if self.interval_steps:
                    self._end_interval(bar)
                stopped_because = "interrupted"
                self.logger.warning("interrupted after %d iterations: saving the current state", self.iteration)
                if isinstance(interruption, Terminated):  # the job is ending: save, then stop (resumable later)
                    self.save_checkpoint()
                    raise
        self.save_checkpoint()
        final_loss = self.history[-1]["loss_total"] if self.history else math.nan
        self.logger.info("optimization stopped (%s) after %d iterations, loss %.4g",
                         stopped_because, self.iteration, final_loss)
        return LoopResult(self.iteration, stopped_because, final_loss)

    # ---- checkpoints ----------------------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "signature": self.signature,
            "iteration": self.iteration,
            "parameters": self.parameters.state_dict(),
            "initial_rates": self.initial_rates,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "history": self.history,
            "best_loss": self.best_loss,
            "iterations_since_best": self.iterations_since_best,
            "micro_batches": self.micro_batcher.chunks,
        }
        write_atomically(self.checkpoint_path, lambda handle: torch.save(state, handle))

    def resume(self, path: Path) -> None:
        """Continue from a checkpoint of the same problem (same signature); its initial rates become ours."""
        check_torch_archive(path, OptimizationError)
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as error:  # torch raises many types for damaged files
            raise OptimizationError(f"checkpoint {path} cannot be read: {error}") from error
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise OptimizationError(f"checkpoint {path} is not an activity-optimization checkpoint")
        try:
            self._load_state(path, state)
        except OptimizationError:
            raise
        except Exception as error:  # a damaged or forged checkpoint: missing keys, wrong shapes or types
            raise OptimizationError(f"checkpoint {path} is damaged ({type(error).__name__}: {error})") from error
        self.logger.info("resumed from %s at iteration %d", path, self.iteration)

    def _load_state(self, path: Path, state: dict[str, Any]) -> None:
        """Take over the checkpoint's state, after checking that it belongs to this optimization."""
        differences = {
            key: (state["signature"].get(key), value)
            for key, value in self.signature.items()
            if state["signature"].get(key) != value
        }
        if differences:
            listed = "; ".join(f"{key}: checkpoint {old!r}, now {new!r}" for key, (old, new) in differences.items())
            raise OptimizationError(f"checkpoint {path} belongs to a different optimization ({listed})")
        self.parameters.load_state_dict(state["parameters"])
        self.initial_rates = state["initial_rates"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"].cpu())
        self.iteration = state["iteration"]
        self.history = list(state["history"])
        self.best_loss = state["best_loss"]
        self.iterations_since_best = state["iterations_since_best"]
        self.micro_batcher.chunks = state["micro_batches"]
        self.elapsed_before = self.history[-1]["elapsed_s"] if self.history else 0.0
        self.last_good = self.parameters.free.detach().clone()

