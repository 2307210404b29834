"""The `optimization:` section of the configuration: every setting of the activity optimization.

Time is counted in model time steps, which are milliseconds for the neuron TCNs (so rates are spikes/ms).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from config_base import COUNT_END, LONGEST, SEED_END, Section


class InitialRatesConfig(Section):
    """Where the optimization starts: rates read from a file, or a generated uniform background."""

    path: Path | None = Field(
        default=None,
        description="A .npy array (segments x time) of rates in spikes/ms; null generates a uniform background.",
    )
    start_time_ms: int = Field(
        default=0, ge=0, le=LONGEST, description="First time step of the file used; the duration follows it."
    )
    excitatory_range: tuple[float, float] = Field(
        default=(0.005, 0.02),
        description="Generated background: each excitatory rate (per segment and ms) ~ U(low, high).",
    )
    inhibitory_range: tuple[float, float] = Field(
        default=(0.01, 0.03),
        description="Generated background: each inhibitory rate (per segment and ms) ~ U(low, high).",
    )

    @model_validator(mode="after")
    def _ranges_are_rates(self) -> InitialRatesConfig:
        """Each range is `[low, high]` with 0 ≤ low ≤ high ≤ 1 spikes/ms."""
        for name in ("excitatory_range", "inhibitory_range"):
            low, high = getattr(self, name)
            if not 0.0 <= low <= high <= 1.0:
                raise ValueError(f"{name} must satisfy 0 <= low <= high <= 1 spikes/ms, got ({low}, {high})")
        return self


class SamplerConfig(Section):
    """How spike trains are drawn from rates during the optimization (evaluation always draws hard spikes)."""

    kind: Literal["bernoulli", "poisson", "relaxed_bernoulli"] = Field(
        default="bernoulli",
        description="bernoulli: spike with p = rate; poisson: Poisson(rate) clipped to 1, i.e. p = 1 - exp(-rate) "
        "(both straight-through); relaxed_bernoulli: Gumbel-sigmoid relaxation (continuous spikes).",
    )
    temperature: float = Field(
        default=0.5, gt=0, le=1e6, description="Temperature of the relaxed_bernoulli relaxation."
    )
    samples_per_pattern: int = Field(
        default=32,
        ge=1,
        lt=COUNT_END,
        description="Monte-Carlo spike trains (each a control/stimulated pair) per rate pattern and step.",
    )


class StimulusConfig(Section):
    """The fixed stimulus: one spike on each stimulus segment at the stimulus time."""

    segments: list[Annotated[int, Field(ge=0, lt=LONGEST)]] | None = Field(
        default=None, description="Stimulus segment indices; null draws them from candidates."
    )
    candidates: list[Annotated[int, Field(ge=0, lt=LONGEST)]] | None = Field(
        default=None, description="Segments to draw from; null means all excitatory ones."
    )
    count: int = Field(default=3, ge=1, le=LONGEST, description="How many segments are drawn when `segments` is null.")
    selection_seed: int | None = Field(
        default=None, ge=0, lt=SEED_END, description="Seed of the draw; null derives it from the run seed."
    )
    time_ms: int | None = Field(
        default=None, ge=0, lt=LONGEST, description="Stimulus time step; null means duration // 2."
    )
    response_window_ms: int = Field(
        default=10,
        ge=1,
        le=LONGEST,
        description="The response is the max spike probability over [time_ms, time_ms + this).",
    )
    allow_inhibitory: bool = Field(
        default=False,
        description="Accept inhibitory segments (indices after the excitatory ones) as stimulus segments.",
    )


class ObjectiveConfig(Section):
    """Binary cross-entropy on the windowed maximum spike probability, plus optional penalties."""

    target_spike_prob: float = Field(default=0.8, ge=0, le=1, description="Target response of the stimulated copy.")
    control_target: float = Field(default=0.0, ge=0, le=1, description="Target response of the control copy.")
    stimulated_response: Literal["max", "any_spike"] = Field(
        default="max",
        description="The stimulated copy's response during optimization: max (the window maximum, as evaluated) "
        "or any_spike (1 - prod(1 - p) over the window: a spike somewhere in it, not a sharp peak).",
    )
    control_response: Literal["max", "any_spike"] = Field(
        default="max",
        description="The control copy's response during optimization: max (the window maximum, as evaluated) or "
        "any_spike (1 - prod(1 - p) over the window, which also pushes down many moderate probabilities).",
    )
    l1_weight: float = Field(default=0.0, ge=0, description="Weight of mean(rate / max_rate).")
    smoothness_weight: float = Field(
        default=0.0, ge=0, description="Weight of mean(((rate[t+1] - rate[t]) / max_rate)^2)."
    )
    initial_distance_weight: float = Field(
        default=0.0, ge=0, description="Weight of mean(((rate - initial rate) / max_rate)^2)."
    )
    specificity_weight: float = Field(
        default=0.0,
        ge=0,
        description="Weight of the sum over the ms outside the response window of max(0, p - floor), "
        "averaged over both copies: keeps the model neuron quiet outside the window.",
    )
    specificity_floor: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Spike probability tolerated outside the window; null: the highest "
        "trial-mean probability outside the window under the initial rates (measured before the first step).",
    )
    regime_weight: float = Field(
        default=0.0,
        ge=0,
        description="Weight of mean((max(0, population rate - the training regime's p99) / max_rate)^2) "
        "per ms and segment type: keeps the pattern near the inputs the model was trained on (needs the regime).",
    )


class ConstraintsConfig(Section):
    """Which rates move and how they are kept in [0, max_rate]."""

    max_rate: Annotated[float, Field(gt=0, le=1)] | Literal["auto"] = Field(
        default=0.1,
        description="Upper bound of every rate in spikes/ms; auto: the training regime's 99th percentile rate "
        "of the moving segments (needs the regime, see optimization.input_regime).",
    )
    method: Literal["projection", "sigmoid"] = Field(
        default="projection",
        description="projection: optimize rates, clamp into [0, max_rate] after each step; "
        "sigmoid: optimize logits, rate = max_rate * sigmoid(logit).",
    )
    moving_segments: Literal["excitatory", "all", "tied"] = Field(
        default="excitatory",
        description="excitatory: only excitatory rates move, inhibitory stay at their initial values; "
        "all: every rate moves; tied: excitatory rates move and inhibitory rates follow them "
        "(delay and mean rate below).",
    )
    tied_delay_ms: int = Field(
        default=4, ge=0, le=LONGEST, description="tied: inhibition follows excitation after this delay."
    )
    tied_inhibitory_mean_rate: float | None = Field(
        default=None,
        ge=0,
        description="tied: mean inhibitory rate in spikes/ms; null keeps each pattern's initial mean.",
    )

    def resolved_max_rate(self) -> float:
        """max_rate as the number it is once `auto` has been replaced (optimization.run.with_resolved_max_rate)."""
        if self.max_rate == "auto":
            raise ValueError("constraints.max_rate is still 'auto': resolve it from the input regime first")
        return self.max_rate


class LoopConfig(Section):
    """The optimizer loop: Adam, learning-rate schedule, stopping, logging, checkpoints, precision."""

    max_iterations: int = Field(
        default=500, ge=0, lt=COUNT_END, description="Optimizer steps at most (counted across resumes)."
    )
    learning_rate: float = Field(
        default=0.002, gt=0, description="Adam learning rate (rate units, or logits for sigmoid)."
    )
    grad_clip_norm: float | None = Field(
        default=1.0, gt=0, description="Clip the gradient norm to this; null disables."
    )
    lr_factor: float = Field(
        default=0.5, gt=0, lt=1, description="ReduceLROnPlateau: multiply the rate by this on a plateau."
    )
    lr_patience_iterations: int = Field(
        default=50, ge=0, lt=COUNT_END, description="ReduceLROnPlateau patience, rounded up to whole logging intervals."
    )
    min_learning_rate: float = Field(default=1e-6, ge=0, description="ReduceLROnPlateau floor.")
    early_stop_patience_iterations: int | None = Field(
        default=150,
        ge=1,
        lt=COUNT_END,
        description="Stop when the interval loss has not improved for this long; null disables.",
    )
    early_stop_min_delta: float = Field(
        default=1e-4, ge=0, description="Smallest loss decrease that counts as improvement."
    )
    stop_when_target_reached: bool = Field(
        default=True, description="Stop once the interval-mean responses are within target_tolerance of their targets."
    )
    target_tolerance: float = Field(
        default=0.05,
        ge=0,
        description="Stimulated >= target - tol and control <= control_target + tol count as reached.",
    )
    log_every: int = Field(
        default=10, ge=1, lt=COUNT_END, description="Iterations per logging interval (the only host synchronisations)."
    )
    checkpoint_every: int | None = Field(
        default=100,
        ge=1,
        lt=COUNT_END,
        description="Write checkpoint.pt every this many iterations (a multiple of log_every); null: only at the end.",
    )
    resume_from: Path | None = Field(default=None, description="A checkpoint.pt to continue from.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="bf16 autocasts the model during optimization; auto: on CUDA the fastest of fp32 and bf16 "
        "(and of the fast path's first-layer formulations) measured on the first batch, bf16 only if accurate; "
        "fp32 elsewhere. Evaluation is always fp32.",
    )
    fast_path: Literal["auto", "off"] = Field(
        default="auto",
        description="auto: compute the first layer once for both copies when the model allows it (a converted "
        "model whose input feeds one Conv1d), else the plain path; off: always the plain path.",
    )
    cudnn_benchmark: bool = Field(default=True, description="Let cuDNN pick the fastest kernels (CUDA only).")
    micro_batches: int = Field(
        default=1,
        ge=1,
        lt=COUNT_END,
        description="Split each step's samples into this many forward/backward passes; doubles on OOM.",
    )

    @model_validator(mode="after")
    def _checkpoints_on_log_boundaries(self) -> LoopConfig:
        """`checkpoint_every` is a multiple of `log_every`."""
        if self.checkpoint_every is not None and self.checkpoint_every % self.log_every:
            raise ValueError(
                f"checkpoint_every ({self.checkpoint_every}) must be a multiple of log_every ({self.log_every})"
            )
        return self


class EvaluationConfig(Section):
    """Held-out evaluation of the initial and the optimized rates."""

    trials_per_pattern: int = Field(
        default=1000, ge=1, lt=COUNT_END, description="Sampled control/stimulated trial pairs per pattern."
    )
    chunk_size: int = Field(
        default=250, ge=1, lt=COUNT_END, description="Trial pairs per forward pass (halved on OOM)."
    )
    spike_threshold: float = Field(
        default=0.5, gt=0, lt=1, description="A trial spikes when its max probability in the window reaches this."
    )
    confidence: float = Field(default=0.95, gt=0, lt=1, description="Level of the confidence intervals.")
    transfer_models: int = Field(
        default=10,
        ge=0,
        le=1000,
        description="Also evaluate the initial and optimized rates on up to this many other usable "
        "models of the results table (best first; 0: none).",
    )


class ReportConfig(Section):
    """Plots written next to the rates, history and evaluation files."""

    plots: bool = Field(default=True, description="Write the PNG plots.")
    dpi: int = Field(default=120, ge=30, le=600, description="Resolution of the PNG plots.")


class OptimizationConfig(Section):
    """Optimize presynaptic firing rates so that a small stimulus makes the model neuron spike."""

    spike_output_index: int = Field(
        default=0, ge=0, lt=COUNT_END, description="Which model output is the spike probability."
    )
    num_excitatory: int | None = Field(
        default=None,
        ge=1,
        description="Excitatory segments (the first input channels); null: the channels not inhibitory, or half "
        "the model's channels (rounded down) when both counts are null.",
    )
    num_inhibitory: int | None = Field(
        default=None, ge=0, description="Inhibitory segments (the channels after them); null: the remaining channels."
    )
    duration_ms: int | None = Field(
        default=None, ge=1, le=LONGEST, description="Time steps optimized; null: the model's input window."
    )
    num_patterns: int = Field(
        default=1, ge=1, lt=COUNT_END, description="Independent rate patterns optimized together (batch B)."
    )
    initial_rates: InitialRatesConfig = Field(
        default_factory=InitialRatesConfig, description=InitialRatesConfig.__doc__
    )
    sampler: SamplerConfig = Field(default_factory=SamplerConfig, description=SamplerConfig.__doc__)
    stimulus: StimulusConfig = Field(default_factory=StimulusConfig, description=StimulusConfig.__doc__)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig, description=ObjectiveConfig.__doc__)
    constraints: ConstraintsConfig = Field(default_factory=ConstraintsConfig, description=ConstraintsConfig.__doc__)
    loop: LoopConfig = Field(default_factory=LoopConfig, description=LoopConfig.__doc__)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description=EvaluationConfig.__doc__)
    report: ReportConfig = Field(default_factory=ReportConfig, description=ReportConfig.__doc__)
    input_regime: dict[str, Any] | None = Field(
        default=None,
        description="Statistics of the inputs the model was trained on, in the layout of a params pickle's "
        "data_dict['input_regime'] (see demo_models/README.md); null: the pickle's, when it has them.",
    )
    ensemble: list[Annotated[int, Field(ge=1, lt=COUNT_END, strict=True)] | str] | None = Field(
        default=None,
        description="Optimize through several models of the results table (ranks, 1 = best, or stems) besides "
        "the selected model, which is always the first member (naming it, or a model twice, adds nothing): the "
        "loss is the mean of the members' losses on the same sampled spikes, evaluation uses their mean spike "
        "probability; null: the selected model alone.",
    )
