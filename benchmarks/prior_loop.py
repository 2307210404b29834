"""The prior published optimization loop's algorithm, re-implemented (our code) as the timing baseline.

What it does per step, as the prior loop's algorithm is published:
- rates: one excitatory pattern per batch element (spikes/ms), the only parameters; inhibitory rates are
  recomputed from them without gradient by a Python loop over the batch (4 ms delay, 4 Hz mean);
- gradient accumulation of 2: each half of the batch is a separate forward/backward;
- spikes from torch.poisson, clipped to 1, with a straight-through estimator (rates + (spikes - rates).detach());
- the control/stimulated batch is built by cloning the spikes twice, writing the stimulus into the clones and
  concatenating them; the model runs in fp32 on both copies (the first layer included);
- BCE on the windowed maximum (control -> 0, stimulated -> target), Adam, projection into [0, max_rate],
  ReduceLROnPlateau on the host-side loss;
- two host synchronisations per step (the loss and the stimulated response read as Python floats), a host copy
  of the rates and a CUDA cache clear every 5 steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INHIBITORY_MEAN_RATE = 0.004  # 4 Hz in spikes/ms
INHIBITORY_DELAY_MS = 4


class PriorStyleLoop:
    def __init__(
        self,
        model: nn.Module,
        pairs: int,
        duration_ms: int,
        num_excitatory: int,
        num_inhibitory: int,
        stimulus_segments: list[int],
        stimulus_time_ms: int,
        window_ms: int,
        device: torch.device,
        seed: int = 0,
        target: float = 0.8,
        max_rate: float = 0.1,
    ):
        generator = torch.Generator().manual_seed(seed)
        initial = 0.005 + 0.015 * torch.rand(pairs, duration_ms, num_excitatory, generator=generator)
        self.excitatory = nn.Parameter(initial.to(device))
        self.model = model
        self.num_inhibitory = num_inhibitory
        self.segments = list(stimulus_segments)
        self.time_ms = stimulus_time_ms
        self.window = slice(stimulus_time_ms, stimulus_time_ms + window_ms)
        self.device = device
        self.target = target
        self.max_rate = max_rate
        self.optimizer = torch.optim.Adam([self.excitatory], lr=0.002)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, factor=0.5, patience=50)
        self.steps = 0
        self.rates_on_host = None

    def _inhibitory(self, excitatory: torch.Tensor) -> torch.Tensor:
        """Per batch element: the delayed mean excitatory profile, scaled to the inhibitory mean rate."""
        rates = torch.empty(*excitatory.shape[:2], self.num_inhibitory, device=excitatory.device)
        for index in range(excitatory.shape[0]):
            profile = excitatory[index].mean(dim=1)
            lead_in = profile.mean().expand(INHIBITORY_DELAY_MS)
            delayed = torch.cat([lead_in, profile[: profile.shape[0] - INHIBITORY_DELAY_MS]])
            rates[index] = (INHIBITORY_MEAN_RATE * delayed / delayed.mean())[:, None]
        return rates

    def _half_loss(self, excitatory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            inhibitory = self._inhibitory(excitatory.detach())
        rates = torch.cat([excitatory, inhibitory], dim=-1)
        counts = torch.poisson(rates.detach()).clamp_max(1.0)
        spikes = rates + (counts - rates).detach()
        control, stimulated = spikes.clone(), spikes.clone()
        control[:, self.time_ms, self.segments] = 0.0
        stimulated[:, self.time_ms, self.segments] = 1.0
        outputs = self.model(torch.cat([control, stimulated]))
        probability = outputs[0][..., 0] if isinstance(outputs, (tuple, list)) else outputs[..., 0]
        count = control.shape[0]
        control_max = probability[:count, self.window].amax(dim=1)
        stimulated_max = probability[count:, self.window].amax(dim=1)
        loss = 0.5 * (
            F.binary_cross_entropy(stimulated_max, torch.full_like(stimulated_max, self.target))
            + F.binary_cross_entropy(control_max, torch.zeros_like(control_max))
        )
        return loss, stimulated_max.mean()

    def step(self) -> None:
        self.optimizer.zero_grad()
        halves = self.excitatory.shape[0] // 2
        loss_value = stimulated_value = 0.0
        for part in (slice(0, halves), slice(halves, None)):
            loss, stimulated = self._half_loss(self.excitatory[part])
            (loss / 2).backward()
            loss_value += loss.detach() / 2
            stimulated_value += stimulated.detach() / 2
        self.optimizer.step()
        with torch.no_grad():
            self.excitatory.clamp_(0.0, self.max_rate)
        loss_host = float(loss_value)  # host synchronisation 1
        self.last_response = float(stimulated_value)  # host synchronisation 2
        self.scheduler.step(loss_host)
        self.steps += 1
        if self.steps % 5 == 0:
            self.rates_on_host = self.excitatory.detach().cpu().numpy()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
