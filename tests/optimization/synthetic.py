"""A synthetic neuron and small causal-conv models of it, for testing the activity optimization.

The neuron is a leaky integrator of weighted excitatory minus inhibitory input spikes that fires whenever its
voltage reaches a threshold (no reset): output[t] = [v[t] >= threshold], v[t] = decay * v[t-1] + w . x[t].
Inputs and outputs use the converted-model layout: (batch, time, channels), excitatory channels first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NUM_EXCITATORY = 20  # segments of the test neuron
NUM_INHIBITORY = 20
TRAINED_WINDOW_MS = 80  # input window of the trained model


@dataclass(frozen=True)
class SyntheticNeuron:
    excitatory_weights: torch.Tensor
    inhibitory_weights: torch.Tensor
    time_constant_ms: float
    threshold: float

    @classmethod
    def make(cls, num_excitatory: int, num_inhibitory: int, seed: int = 0) -> SyntheticNeuron:
        generator = torch.Generator().manual_seed(seed)
        return cls(
            excitatory_weights=0.5 + 0.5 * torch.rand(num_excitatory, generator=generator),
            inhibitory_weights=0.3 + 0.3 * torch.rand(num_inhibitory, generator=generator),
            time_constant_ms=8.0,
            threshold=4.0,
        )

    @property
    def num_segments(self) -> int:
        return self.excitatory_weights.numel() + self.inhibitory_weights.numel()

    @property
    def decay(self) -> float:
        return math.exp(-1.0 / self.time_constant_ms)

    def synaptic_weights(self) -> torch.Tensor:
        return torch.cat([self.excitatory_weights, -self.inhibitory_weights])

    def voltage(self, spikes: torch.Tensor) -> torch.Tensor:
        """(batch, time, segments) spikes -> (batch, time) voltage."""
        drive = spikes @ self.synaptic_weights()
        voltage = torch.zeros_like(drive[:, 0])
        trace = []
        for step in range(drive.shape[1]):
            voltage = self.decay * voltage + drive[:, step]
            trace.append(voltage)
        return torch.stack(trace, dim=1)

    def output_spikes(self, spikes: torch.Tensor) -> torch.Tensor:
        return (self.voltage(spikes) >= self.threshold).float()


class CausalConvNeuronModel(nn.Module):
    """Synaptic 1x1 conv into a few branches, causal depthwise temporal filters, ELU, spike and voltage heads.

    Returns (spike probability, voltage), each (batch, time, 1), like a converted neuron TCN.
    """

    def __init__(self, num_segments: int, window_ms: int, branches: int = 4, kernel_ms: int = 32):
        super().__init__()
        self.kernel_ms = kernel_ms
        self.synapses = nn.Conv1d(num_segments, branches, 1)
        self.dendrites = nn.Conv1d(branches, branches, kernel_ms, groups=branches)
        self.spikes = nn.Conv1d(branches, 1, 1)
        self.soma = nn.Conv1d(branches, 1, 1)
        self.input_shapes = [(window_ms, num_segments)]

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        synaptic = self.synapses(inputs.transpose(1, 2))
        hidden = F.elu(self.dendrites(F.pad(synaptic, (self.kernel_ms - 1, 0))))
        return torch.sigmoid(self.spikes(hidden)).transpose(1, 2), self.soma(hidden).transpose(1, 2)


class ExactFilterModel(nn.Module):
    """The synthetic neuron written as a causal conv with a sigmoid of finite gain: exact weights, no training.

    Returns (spike probability, voltage), each (batch, time, 1).
    """

    def __init__(self, neuron: SyntheticNeuron, window_ms: int, kernel_ms: int = 32, gain: float = 4.0):
        super().__init__()
        decays = neuron.decay ** torch.arange(kernel_ms - 1, -1, -1, dtype=torch.float32)
        self.register_buffer("kernel", (neuron.synaptic_weights()[:, None] * decays)[None])
        self.threshold = neuron.threshold
        self.gain = gain
        self.input_shapes = [(window_ms, neuron.num_segments)]

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        padded = F.pad(inputs.transpose(1, 2), (self.kernel.shape[-1] - 1, 0))
        voltage = F.conv1d(padded, self.kernel).transpose(1, 2)
        return torch.sigmoid(self.gain * (voltage - self.threshold)), voltage


def training_inputs(
    count: int, window_ms: int, num_excitatory: int, num_inhibitory: int, max_rate: float, generator: torch.Generator
) -> torch.Tensor:
    """Spikes from rates that vary by segment and in blocks of time, excitation and inhibition independently."""
    blocks = 4
    block_ms = -(-window_ms // blocks)
    segment_jitter = 0.5 + torch.rand(count, 1, num_excitatory + num_inhibitory, generator=generator)
    excitatory_level = torch.rand(count, blocks, 1, generator=generator).expand(-1, -1, num_excitatory)
    inhibitory_level = torch.rand(count, blocks, 1, generator=generator).expand(-1, -1, num_inhibitory)
    levels = torch.cat([excitatory_level, inhibitory_level], dim=2).repeat_interleave(block_ms, dim=1)[:, :window_ms]
    rates = (max_rate * levels * segment_jitter).clamp(0, max_rate)
    return (torch.rand(rates.shape, generator=generator) < rates).float()


def train_model(neuron: SyntheticNeuron, window_ms: int, steps: int = 400, batch: int = 64, seed: int = 0):
    """Fit CausalConvNeuronModel to the neuron's output spikes (BCE) and voltage (small MSE weight)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = CausalConvNeuronModel(neuron.num_segments, window_ms)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    num_excitatory, num_inhibitory = neuron.excitatory_weights.numel(), neuron.inhibitory_weights.numel()
    for _ in range(steps):
        inputs = training_inputs(batch, window_ms, num_excitatory, num_inhibitory, 0.1, generator)
        voltage = neuron.voltage(inputs)
        probability, predicted_voltage = model(inputs)
        loss = F.binary_cross_entropy(probability[..., 0], (voltage >= neuron.threshold).float())
        loss = loss + 0.01 * F.mse_loss(predicted_voltage[..., 0], voltage)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
