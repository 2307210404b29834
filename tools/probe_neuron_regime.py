"""Show how strongly one spike on 3 excitatory segments at t fires the demo neuron under a few background patterns.

    .venv/bin/python tools/probe_neuron_regime.py [--trials 1000] [--seed 0]

Checks the design goal of ground_truth/demo/: the rate optimization must be able to find backgrounds under which the
stimulus fires the neuron while the control stays silent. Prints ground-truth P(spike in [t, t+10) | stim / control)
for a clustered stimulus (segments 0, 1, 2: all on compartment 0) and a spread one (0, 10, 20: three compartments).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ground_truth.demo import DemoSimulator, NeuronConfig, simulate  # noqa: E402
from ground_truth.runner import TrialRunner  # noqa: E402
from ground_truth.trials import ground_truth_response, sample_spike_trains  # noqa: E402

WINDOW_MS = 200
STIMULUS_TIME = 100
RESPONSE_WINDOW = 10
STIMULI = {"clustered 0,1,2": [0, 1, 2], "spread 0,10,20": [0, 10, 20]}


def background(config: NeuronConfig, exc_rate: float, inh_rate: float) -> np.ndarray:
    """Constant rates (segments, WINDOW_MS), excitatory rows first."""
    rates = np.empty((config.num_segments, WINDOW_MS))
    rates[: config.num_excitatory_segments] = exc_rate
    rates[config.num_excitatory_segments :] = inh_rate
    return rates


def scenarios(config: NeuronConfig) -> dict[str, np.ndarray]:
    typical = background(config, 0.0125, 0.02)
    primed_compartment = typical.copy()
    segments_per_compartment = config.num_excitatory_segments // config.num_compartments
    primed_compartment[:segments_per_compartment, STIMULUS_TIME - 60 : STIMULUS_TIME] *= 3.0
    compartment_alone = background(config, 0.0, 0.0)
    compartment_alone[:segments_per_compartment, :STIMULUS_TIME] = 0.02
    nmda_tail = background(config, 0.005, 0.0)
    nmda_tail[: config.num_excitatory_segments, STIMULUS_TIME - 10 : STIMULUS_TIME + RESPONSE_WINDOW] = 0.0
    return {
        "typical background (exc 0.0125, inh 0.02)": typical,
        "stimulated compartment primed (its exc x3 for 60 ms before t)": primed_compartment,
        "stimulated compartment driven alone (its exc 0.02 before t, all else silent)": compartment_alone,
        "NMDA tail (exc 0.005, no inh, all exc silent 10 ms around t)": nmda_tail,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = NeuronConfig()

    rates = background(config, 0.0125, 0.02)
    spikes = sample_spike_trains(np.repeat(rates, 5, axis=1), 200, np.random.default_rng(args.seed))
    fired = simulate(
        spikes[..., : config.num_excitatory_segments], spikes[..., config.num_excitatory_segments :], config
    ).spikes
    print("background firing rate at exc 0.0125 / inh 0.02 spikes/ms: %.1f Hz\n" % (fired[:, 100:].mean() * 1000))

    for title, rates in scenarios(config).items():
        print(title)
        for name, segments in STIMULI.items():
            result = ground_truth_response(
                rates,
                segments,
                STIMULUS_TIME,
                RESPONSE_WINDOW,
                TrialRunner(DemoSimulator(config)),
                config.num_excitatory_segments,
                args.trials,
                args.seed,
            )
            print(
                "  %-16s P(stim) %.3f  P(control) %.3f  difference %+.3f"
                % (name, result["p_spike_stim"], result["p_spike_control"], result["difference"])
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
