#!/usr/bin/env python
"""Optimization-iteration benchmark: our loop against a re-implementation of the prior published loop.

    python benchmarks/optimization_loop.py [--device auto|cpu|cuda] [--iterations 7] [--threads N] [--quick]

One iteration = sampling, forward, backward and update of `pairs` control/stimulated pairs. On CUDA both
published sizes run with 200 pairs and 400 ms; on CPU a small shape (the published input width and first
kernel, narrower and shorter). Reported per variant: the median ms/iteration over the timed iterations (after
warm-up iterations, which also hold cuDNN autotuning and the precision measurement), effective TFLOP/s counted
as 2 x the forward convolutions' FLOPs of both copies (weights are frozen: the backward needs input gradients
only), and that rate as a fraction of this device's bf16 matrix-multiply rate measured here. The models are
converted-model modules (KerasGraphModule) with random weights, built from a spec without TensorFlow.
--quick: a tiny shape and 2 timed iterations (checks that the script runs; timings mean nothing).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import CPU_SMALL, PUBLISHED, QUICK, TCNSize, cpu_description, markdown_table, versions  # noqa: E402
from benchmarks.prior_loop import PriorStyleLoop  # noqa: E402
from models.graph import KerasGraphModule  # noqa: E402
from optimization.config import OptimizationConfig  # noqa: E402
from optimization.constraints import RateParameters  # noqa: E402
from optimization.fast_path import synchronize  # noqa: E402
from optimization.initial import initial_rates  # noqa: E402
from optimization.loop import RateOptimizer  # noqa: E402
from optimization.network import prepare_model, resolve_layout  # noqa: E402
from optimization.runtime import cudnn_benchmark, make_generator, resolve_device  # noqa: E402
from optimization.sampler import make_sampler  # noqa: E402
from optimization.stimulus import PairedStimulus, choose_stimulus  # noqa: E402
from progress import NO_PROGRESS  # noqa: E402

LOGGER = logging.getLogger("benchmarks.optimization_loop")
PRIOR_LABEL = "prior loop (fp32)"


def neuron_tcn(size: TCNSize, seed: int = 0) -> KerasGraphModule:
    """The module our converter makes of a neuron TCN (Conv1D causal relu + BN per layer, three heads)."""
    layers, calls, previous, channels = [], [], "input:0:0", size.segments
    for index, (filters, kernel) in enumerate(zip(size.filters, size.kernels), start=1):
        conv, norm = f"layer_{index}", f"layer_{index}_BN"
        layers += [
            _conv(conv, channels, filters, kernel, "causal", "relu"),
            {
                "name": norm,
                "key": norm,
                "type": "batch_norm",
                "config": {"num_features": filters, "axis": 2, "epsilon": 1e-3, "center": True, "scale": True},
            },
        ]
        calls += [
            {"layer": conv, "inputs": [previous], "output": f"{conv}:0:0"},
            {"layer": norm, "inputs": [f"{conv}:0:0"], "output": f"{norm}:0:0"},
        ]
        previous, channels = f"{norm}:0:0", filters
    heads = (("spikes", 1, "sigmoid"), ("somatic", 1, "linear"), ("dendritic", 20, "linear"))
    for name, width, activation in heads:
        layers.append(_conv(name, channels, width, 1, "causal", activation))
        calls.append({"layer": name, "inputs": [previous], "output": f"{name}:0:0"})
    spec = {
        "inputs": [{"name": "input_layer", "tensor": "input:0:0", "shape": [size.window, size.segments]}],
        "layers": layers,
        "calls": calls,
        "outputs": [f"{name}:0:0" for name, _, _ in heads],
        "output_names": [name for name, _, _ in heads],
    }
    module = KerasGraphModule(spec)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5, generator=generator)
            elif name.endswith(".weight") and tensor.ndim == 3:  # conv kernels: unit-variance pre-activations
                tensor.normal_(0.0, (tensor.shape[1] * tensor.shape[2] * 0.02) ** -0.5, generator=generator)
            else:
                tensor.normal_(0.0, 0.1, generator=generator)
        module.layers["spikes"].bias.fill_(-3.0)  # a low background spike probability
    return module


def _conv(name: str, in_channels: int, out_channels: int, kernel: int, padding: str, activation: str) -> dict:
    return {
        "name": name,
        "key": name,
        "type": "conv1d",
        "config": {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "kernel_size": kernel,
            "stride": 1,
            "dilation": 1,
            "groups": 1,
            "padding": padding,
            "bias": True,
            "activation": activation,
        },
    }


def forward_conv_flops(module: KerasGraphModule, sequences: int, duration: int) -> float:
    """FLOPs of the convolutions of one forward pass (stride 1, causal: every output step is computed)."""
    per_step = sum(2 * layer.weight.numel() for layer in module.layers.values() if hasattr(layer, "kernel_size"))
    return float(per_step) * sequences * duration


def matmul_rate(device: torch.device, size: int) -> float:
    """Measured bf16 matrix-multiply rate of the device in TFLOP/s (median of 5 after warm-up)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    times = _timed(lambda: a @ b, device, warmup=2, iterations=5)
    return 2 * size**3 / statistics.median(times) / 1e12


def _timed(step, device: torch.device, warmup: int, iterations: int) -> list[float]:
    """Seconds per call of `step`, each timed alone (the device is synchronised around it)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iterations):
        synchronize(device)
        started = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return times


def our_optimizer(
    model: KerasGraphModule, pairs: int, duration: int, device: torch.device, fast_path: str, precision: str
) -> RateOptimizer:
    """Our loop on the prior's problem: `pairs` patterns of one sample each, Poisson spikes, excitatory moving."""
    config = OptimizationConfig.model_validate(
        {
            "num_patterns": pairs,
            "duration_ms": duration,
            "num_excitatory": model.input_shapes[0][1] // 2,
            "sampler": {"kind": "poisson", "samples_per_pattern": 1},
            "loop": {"fast_path": fast_path, "precision": precision, "checkpoint_every": None},
        }
    )
    layout = resolve_layout(model, config, LOGGER)
    spike_model = prepare_model(model, config, layout, device)
    stimulus = choose_stimulus(config.stimulus, layout, seed=0)
    rates = initial_rates(config.initial_rates, layout, pairs, config.constraints.max_rate, seed=0)
    return RateOptimizer(
        RateParameters(rates, layout.num_excitatory, config.constraints).to(device),
        [spike_model],
        make_sampler(config.sampler),
        PairedStimulus(stimulus, layout, device),
        config,
        make_generator(0, device),
        Path(os.devnull),
        {},
        LOGGER,
        progress=NO_PROGRESS,
    )


def prior_loop(
    model: KerasGraphModule, size: TCNSize, pairs: int, duration: int, device: torch.device
) -> PriorStyleLoop:
    model.to(device).eval().requires_grad_(False)
    excitatory = size.segments // 2
    config = OptimizationConfig(duration_ms=duration, num_excitatory=excitatory)
    stimulus = choose_stimulus(config.stimulus, resolve_layout(model, config, LOGGER), seed=0)
    return PriorStyleLoop(
        model,
        pairs,
        duration,
        excitatory,
        size.segments - excitatory,
        list(stimulus.segments),
        stimulus.time_ms,
        stimulus.window_ms,
        device,
    )


def benchmark_size(
    size: TCNSize, pairs: int, duration: int, device: torch.device, warmup: int, iterations: int, peak: float
) -> list[list[object]]:
    """All variants of one size, their timed iterations interleaved so that load changes hit them alike."""
    model = neuron_tcn(size)
    flops = 2 * forward_conv_flops(model, 2 * pairs, duration)
    variants = [
        ("ours: plain path, fp32", "off", "fp32"),
        ("ours: fast path, fp32", "auto", "fp32"),
        ("ours: fast path, bf16", "auto", "bf16"),
    ]
    if device.type == "cuda":
        variants.append(("ours: default (fast path, precision auto)", "auto", "auto"))
    # The prior loop keeps PyTorch's cuDNN defaults (no autotuning); ours turns autotuning on, as a run does.
    steps = {PRIOR_LABEL: (prior_loop(model, size, pairs, duration, device).step, False)}
    optimizers = {
        label: our_optimizer(model, pairs, duration, device, fast_path, precision)
        for label, fast_path, precision in variants
    }
    steps.update({label: (optimizer.take_step, True) for label, optimizer in optimizers.items()})
    seconds: dict[str, list[float]] = {label: [] for label in steps}
    for round_index in range(warmup + iterations):
        for label, (step, autotune) in steps.items():
            with cudnn_benchmark(device, autotune):
                elapsed = _timed(step, device, warmup=0, iterations=1)
            if round_index >= warmup:
                seconds[label] += elapsed
    prior = statistics.median(seconds[PRIOR_LABEL])
    rows = []
    for label, times in seconds.items():
        median = statistics.median(times)
        tflops = flops / median / 1e12
        chosen = optimizers[label].forwards[0] if label in optimizers else None
        setting = (
            f"{chosen.precision}, first layer as {chosen.first_layer}"
            if chosen and chosen.fast
            else (chosen.precision if chosen else "fp32")
        )
        rows.append(
            [
                size.name,
                pairs,
                duration,
                label,
                setting,
                f"{1e3 * median:.1f}",
                f"{tflops:.3g}",
                f"{tflops / peak:.3f}",
                f"{prior / median:.2f}",
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--iterations", type=int, default=7, help="timed iterations per variant (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations before them")
    parser.add_argument("--quick", action="store_true", help="a tiny shape, 2 timed iterations")
    parser.add_argument("--threads", type=int, help="CPU threads of torch (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    LOGGER.setLevel(logging.INFO)  # the fast path's and the precision choice's reports, on stderr
    device = resolve_device(args.device)
    if args.quick:
        plan, iterations, warmup, matmul_size = [(QUICK, 4, QUICK.window)], 2, 1, 256
    elif device.type == "cuda":
        plan, iterations, warmup, matmul_size = [(s, 200, 400) for s in PUBLISHED], args.iterations, args.warmup, 8192
    else:
        plan, iterations, warmup, matmul_size = [(CPU_SMALL, 16, CPU_SMALL.window)], args.iterations, args.warmup, 2048
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_description()
    peak = matmul_rate(device, matmul_size)
    print(
        f"device: {device} ({name}); torch CPU threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}"
    )
    print(
        "versions: "
        + ", ".join(f"{k} {v}" for k, v in versions("torch", "numpy").items())
        + (
            f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()} (TF32 convolutions "
            f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'} for fp32)"
            if device.type == "cuda"
            else ""
        )
    )
    print(
        f"measured bf16 matmul rate ({matmul_size}^2): {peak:.3g} TFLOP/s; median of {iterations} iterations "
        f"after {warmup} warm-up"
    )
    for size, pairs, duration in plan:  # a table per size, printed as soon as it is measured
        rows = benchmark_size(size, pairs, duration, device, warmup, iterations, peak)
        print(
            markdown_table(
                [
                    "model",
                    "pairs",
                    "ms",
                    "loop",
                    "ran as",
                    "ms/iteration",
                    "effective TFLOP/s",
                    "of bf16 matmul rate",
                    "speed-up vs prior",
                ],
                rows,
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
