"""One optimizer step of the paired objective: sample spike trains from the rates, run both copies through the
model (optimization.fast_path; with an ensemble, through each member on the same spikes), the objective's gradient
into the rates, penalties, clipping, Adam, projection.

Everything stays on the device: the step returns its metrics as one tensor (METRICS order), which the tracker
sums until the end of the logging interval, and keeps the guard's record of the last finite state.
"""

from __future__ import annotations

import math

import torch

from optimization.config import OptimizationConfig
from optimization.constraints import RateParameters
from optimization.fast_path import PairedForward
from optimization.objective import PENALTY_TERMS, Objective, outside_window_mask
from optimization.runtime import MicroBatcher
from optimization.sampler import SpikeSampler, draw_noise
from optimization.stimulus import PairedStimulus

METRICS = (
    "loss_total",
    "loss_response",
    "loss_specificity",
    *(f"loss_{name}" for name in PENALTY_TERMS),
    "p_control",
    "p_stim",
    "grad_norm",
)


class NonFiniteGuard:
    """Remembers the parameters after the last step whose loss and gradient were finite, and the first step
    that was not (-1 while none), without reading anything back to the host."""

    def __init__(self, parameters: RateParameters):
        self.parameters = parameters
        self.last_good = parameters.free.detach().clone()
        device = self.last_good.device
        self.healthy = torch.ones((), dtype=torch.bool, device=device)
        self.first_bad_iteration = torch.full((), -1, dtype=torch.long, device=device)

    def record(self, iteration: int, total: torch.Tensor, grad_norm: torch.Tensor) -> None:
        finite = torch.isfinite(total) & torch.isfinite(grad_norm)
        self.first_bad_iteration = torch.where(
            self.healthy & ~finite, torch.full_like(self.first_bad_iteration, iteration), self.first_bad_iteration
        )
        self.healthy &= finite
        self.last_good = torch.where(self.healthy, self.parameters.free.detach(), self.last_good)

    def restore(self) -> None:
        with torch.no_grad():
            self.parameters.free.copy_(self.last_good)

    def reset(self) -> None:
        self.last_good = self.parameters.free.detach().clone()


class PairedStep:
    def __init__(
        self,
        parameters: RateParameters,
        forwards: list[PairedForward],
        sampler: SpikeSampler,
        paired: PairedStimulus,
        objective: Objective,
        config: OptimizationConfig,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        micro_batcher: MicroBatcher,
        initial_rates: torch.Tensor,
    ):
        self.parameters, self.forwards, self.sampler, self.paired = parameters, forwards, sampler, paired
        self.objective = objective
        self.optimizer, self.generator, self.micro_batcher = optimizer, generator, micro_batcher
        self.initial_rates = initial_rates
        clip = config.loop.grad_clip_norm
        self.max_norm = clip if clip is not None else math.inf
        samples = config.sampler.samples_per_pattern
        self.pattern_of_sample = torch.arange(initial_rates.shape[0] * samples, device=initial_rates.device) // samples

    def _response_gradient(self, rates_leaf: torch.Tensor) -> torch.Tensor:
        """Backpropagate the per-pair terms (response, specificity) into rates_leaf.grad in micro-batches; return
        their means and the mean responses, averaged over the ensemble's members."""
        total, (_, duration, segments) = self.pattern_of_sample.numel(), self.initial_rates.shape
        device = rates_leaf.device
        noise = draw_noise((total, duration, segments), self.generator, device)
        window = self.paired.stimulus.response_window()
        outside = outside_window_mask(duration, window, device)
        specific = bool(self.objective.config.specificity_weight)
        scale = total * len(self.forwards)
        sums = torch.zeros(4, device=device)

        def work(chunk: slice) -> None:
            spikes = self.sampler.spikes(rates_leaf[self.pattern_of_sample[chunk]], noise[chunk])
            control = self.paired.control(spikes)
            count = spikes.shape[0]
            loss = torch.zeros((), device=device)
            for forward in self.forwards:
                probability = forward(control)
                control_window, stimulated_window = probability[:count, window], probability[count:, window]
                response = self.objective.response_losses(control_window, stimulated_window)
                specificity = (
                    self.objective.specificity_losses(probability, outside) if specific else torch.zeros_like(response)
                )
                loss = loss + response.sum() + specificity.sum()
                sums.add_(
                    torch.stack(
                        [
                            response.sum(),
                            specificity.sum(),
                            control_window.amax(dim=1).sum(),
                            stimulated_window.amax(dim=1).sum(),
                        ]
                    ).detach()
                    / scale
                )
            (loss / scale).backward()

        def restart() -> None:
            rates_leaf.grad = None
            sums.zero_()

        self.micro_batcher.run(total, work, restart)
        return sums

    def __call__(self) -> torch.Tensor:
        """One optimizer step; its METRICS as a device tensor (nothing is read back to the host)."""
        self.optimizer.zero_grad(set_to_none=True)
        rates = self.parameters.rates()
        rates_leaf = rates.detach().requires_grad_(True)
        response_loss, specificity, control, stimulated = self._response_gradient(rates_leaf)
        penalties = self.objective.weighted_penalties(rates, self.initial_rates)
        penalty = sum(penalties.values(), rates.new_zeros(()))
        # Chain rule through the parametrization: the response gradient w.r.t. rates arrives via rates_leaf.grad.
        response_gradient = rates_leaf.grad
        assert response_gradient is not None  # set by the backward passes of _response_gradient
        ((rates * response_gradient).sum() + penalty).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters.parameters(), self.max_norm)
        self.optimizer.step()
        self.parameters.project_()
        total = response_loss + specificity + penalty.detach()
        return torch.stack(
            [
                total,
                response_loss,
                specificity,
                *(term.detach() for term in penalties.values()),
                control,
                stimulated,
                grad_norm,
            ]
        )
