"""The optimizer loop, assembled from named parts: the paired step (optimization.step), Adam with a plateau
schedule, stopping rules (optimization.stoppers), a guard against NaN/Inf, and the tracker of history and
checkpoints (optimization.tracker).

Everything per step stays on the device; the host reads numbers once per logging interval (the interval means
of the loss terms, responses and gradient norm), and the schedule, stopping rules and guard act on those.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from config_base import COUNT_END
from errors import OptimizationError, Terminated
from optimization.config import OptimizationConfig
from optimization.constraints import RateParameters
from optimization.fast_path import PairedForward
from optimization.network import SpikeProbability
from optimization.objective import Objective
from optimization.runtime import MicroBatcher
from optimization.sampler import SpikeSampler
from optimization.step import NonFiniteGuard, PairedStep
from optimization.stimulus import PairedStimulus
from optimization.stoppers import NonFinite, Plateau, make_stoppers
from optimization.tracker import Tracker
from progress import Progress, ProgressStyle


@dataclass(frozen=True)
class LoopResult:
    iterations_run: int
    stopped_because: str  # max_iterations | target_reached | plateau | interrupted
    final_loss: float


def make_optimizer(
    parameters: RateParameters, config: OptimizationConfig
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.ReduceLROnPlateau]:
    """Adam on the rate parameters and a ReduceLROnPlateau schedule stepped once per logging interval."""
    loop = config.loop
    optimizer = torch.optim.Adam(parameters.parameters(), lr=loop.learning_rate)
    schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        factor=loop.lr_factor,
        patience=math.ceil(loop.lr_patience_iterations / loop.log_every),
        min_lr=loop.min_learning_rate,
    )
    return optimizer, schedule


class RateOptimizer:
    """Optimizes `parameters` so that the paired stimulus makes the model spike only in the stimulated copy."""

    def __init__(
        self,
        parameters: RateParameters,
        models: Sequence[SpikeProbability],
        sampler: SpikeSampler,
        paired: PairedStimulus,
        config: OptimizationConfig,
        generator: torch.Generator,
        checkpoint_path: Path,
        signature: dict[str, Any],
        logger: logging.Logger,
        progress: ProgressStyle,
        objective: Objective | None = None,
    ):
        """`models`: the model, then any further ensemble members; `objective`: the configured one without a
        regime and with a specificity floor of 0 unless given."""
        self.parameters, self.config, self.loop, self.generator = parameters, config, config.loop, generator
        self.logger, self.progress = logger, progress
        self.initial_rates = parameters.rates().detach().clone()
        self.optimizer, self.schedule = make_optimizer(parameters, config)
        self.micro_batcher = MicroBatcher(self.loop.micro_batches, "the optimization step", logger)
        fixed = parameters.moving.inhibitory_fixed  # the fast path then needs no gradient for inhibitory inputs
        self.forwards = [
            PairedForward(
                model,
                paired,
                self.loop.fast_path,
                self.loop.precision,
                parameters.num_excitatory if fixed else None,
                logger,
            )
            for model in models
        ]
        objective = objective or Objective(
            config.objective, config.constraints.resolved_max_rate(), parameters.num_excitatory
        )
        self.step = PairedStep(
            parameters,
            self.forwards,
            sampler,
            paired,
            objective,
            config,
            self.optimizer,
            generator,
            self.micro_batcher,
            self.initial_rates,
        )
        self.guard = NonFiniteGuard(parameters)
        self.non_finite = NonFinite(self.guard.restore)
        self.stoppers = make_stoppers(config)
        self.tracker = Tracker(checkpoint_path, signature, self.initial_rates.device)
        self.iteration = 0

    @property
    def history(self) -> list[dict[str, float]]:
        return self.tracker.history

    @property
    def checkpoint_path(self) -> Path:
        return self.tracker.checkpoint_path

    def take_step(self) -> None:
        metrics = self.step()
        self.iteration += 1
        self.tracker.add(metrics)
        self.guard.record(self.iteration, metrics[0], metrics[-1])

    def run(self) -> LoopResult:
        """Step until a stopping rule says so; Ctrl-C stops early and keeps what exists."""
        stopped_because = "max_iterations"
        with Progress(
            self.loop.max_iterations, "optimizing rates", "step", self.progress, self.logger, initial=self.iteration
        ) as bar:
            try:
                while self.iteration < self.loop.max_iterations:
                    self.take_step()
                    ends = self.iteration % self.loop.log_every == 0 or self.iteration == self.loop.max_iterations
                    reason = self.end_interval(bar) if ends else None
                    bar.advance()
                    if reason is not None:
                        stopped_because = reason
                        break
            except KeyboardInterrupt as interruption:
                self.parameters.project_()
                if self.tracker.steps:
                    self.end_interval(bar)
                stopped_because = "interrupted"
                self.logger.warning("interrupted after %d iterations: saving the current state", self.iteration)
                if isinstance(interruption, Terminated):  # the job is ending: save, then stop (resumable later)
                    self.save_checkpoint()
                    raise
        self.save_checkpoint()
        final_loss = self.history[-1]["loss_total"] if self.history else math.nan
        self.logger.info(
            "optimization stopped (%s) after %d iterations, loss %.4g", stopped_because, self.iteration, final_loss
        )
        return LoopResult(self.iteration, stopped_because, final_loss)

    def end_interval(self, bar: Progress) -> str | None:
        """Record the interval's means (the one host synchronisation); the first stop reason, or None."""
        means, first_bad = self.tracker.interval_means(self.guard.first_bad_iteration)
        row = {"iteration": self.iteration, **means, "first_bad_iteration": first_bad}
        self.non_finite.check(row)
        row = self.tracker.record(
            {key: value for key, value in row.items() if key != "first_bad_iteration"}
            | {"learning_rate": self.optimizer.param_groups[0]["lr"], "micro_batches": self.micro_batcher.chunks}
        )
        bar.show(loss=f"{row['loss_total']:.4f}", p_control=f"{row['p_control']:.3f}", p_stim=f"{row['p_stim']:.3f}")
        self.logger.debug("iteration %d: %s", self.iteration, row)
        self.schedule.step(row["loss_total"])
        reasons = [stopper.check(row) for stopper in self.stoppers]  # every rule sees every interval
        if self.loop.checkpoint_every and self.iteration % self.loop.checkpoint_every == 0:
            self.save_checkpoint()
        return next((reason for reason in reasons if reason is not None), None)

    # ---- checkpoints ----------------------------------------------------------------------------------------

    def _plateau(self) -> Plateau | None:
        return next((stopper for stopper in self.stoppers if isinstance(stopper, Plateau)), None)

    def save_checkpoint(self) -> None:
        plateau = self._plateau()
        self.tracker.save(
            self.iteration,
            {
                "parameters": self.parameters.state_dict(),
                "initial_rates": self.initial_rates,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.schedule.state_dict(),
                "generator": self.generator.get_state(),
                "micro_batches": self.micro_batcher.chunks,
                **(plateau.state_dict() if plateau else {"best_loss": math.inf, "iterations_since_best": 0}),
            },
        )

    def _check_resumable(self, state: dict[str, Any], path: Path) -> None:
        """The numbers a checkpoint sets directly must make sense (a forged or damaged one may say anything):
        an iteration within the run, a micro-batch count the batch can be split into, finite rates."""
        samples = self.step.pattern_of_sample.numel()
        checks = [
            # beyond max_iterations is fine: a run resumed with a smaller budget stops at once
            (
                "iteration",
                state.get("iteration"),
                lambda v: isinstance(v, int) and 0 <= v < COUNT_END,
                f"a whole number from 0 to {COUNT_END:,}",
            ),
            (
                "micro_batches",
                state.get("micro_batches"),
                lambda v: isinstance(v, int) and 1 <= v <= samples,
                f"a whole number from 1 to the samples per step ({samples})",
            ),
            (
                "initial_rates",
                state.get("initial_rates"),
                lambda v: (
                    isinstance(v, torch.Tensor) and v.shape == self.initial_rates.shape and bool(v.isfinite().all())
                ),
                f"finite rates of shape {tuple(self.initial_rates.shape)}",
            ),
            (
                "parameters",
                state.get("parameters"),
                lambda v: (
                    isinstance(v, dict)
                    and all(not isinstance(t, torch.Tensor) or bool(t.isfinite().all()) for t in v.values())
                ),
                "finite values",
            ),
        ]
        for key, value, valid, expected in checks:
            if not valid(value):
                shown = repr(value) if not isinstance(value, (torch.Tensor, dict)) else type(value).__name__
                raise OptimizationError(
                    f"checkpoint {path} is damaged: '{key}' must be {expected}, got "
                    f"{shown[:80]}; start without optimization.loop.resume_from."
                )

    def resume(self, path: Path) -> None:
        """Continue from a checkpoint of the same problem (same signature); its initial rates become ours."""
        state = self.tracker.load(path)
        self._check_resumable(state, path)
        try:
            self.parameters.load_state_dict(state["parameters"])
            self.initial_rates = self.step.initial_rates = state["initial_rates"]
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["scheduler"])
            self.generator.set_state(state["generator"].cpu())
            self.iteration = state["iteration"]
            self.micro_batcher.chunks = state["micro_batches"]
            if (plateau := self._plateau()) is not None:
                plateau.load_state_dict(state, self.iteration)
        except Exception as error:  # a damaged or forged checkpoint: missing keys, wrong shapes or types
            raise OptimizationError(f"checkpoint {path} is damaged ({type(error).__name__}: {error})") from error
        self.guard.reset()
        self.logger.info("resumed from %s at iteration %d", path, self.iteration)
