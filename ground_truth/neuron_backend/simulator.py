"""The NEURON backend: the user's cell, one synapse per input channel, spikes delivered as events.

Each worker process builds the cell once, runs the warm-up once (no input) and saves the state; every trial then
restores that state, queues one event per input spike (a spike in bin k arrives at k ms) on the channel's
synapses (AMPA + NMDA for excitatory channels, GABA-A for inhibitory ones), runs the trial's duration at a fixed
step, and reports the soma's upward crossings of the spike threshold and its voltage at the end of each ms.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from errors import ConfigError, SimulatorError
from fileio import file_sha256
from ground_truth.interface import SimulatedTrials, SimulateFunction, Simulator, folder_fingerprint
from ground_truth.neuron_backend import cell as cells
from ground_truth.neuron_backend.config import NeuronBackendConfig
from ground_truth.neuron_backend.mechanisms import compiled_mechanisms
from ground_truth.neuron_backend.synapse_map import read_synapse_map

NMDA_MECHANISM = "NmdaMgSyn"  # nmda_mg.mod's POINT_PROCESS


@dataclass(frozen=True)
class NeuronSimulator(Simulator):
    settings: dict  # NeuronBackendConfig as JSON, paths absolute
    mechanisms_entry: str  # the compiled mechanisms' cache folder
    synapse_map: tuple | None  # checked entries (kind, section, x), or None: one synapse pair per segment
    num_excitatory: int
    num_inhibitory: int
    identity: str  # hash of the cell file, its folder's files, the map, the mechanisms and the settings

    chunk_trials = 10

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"NEURON ({Path(self.settings['cell']).name})"

    @classmethod
    def resolve(cls, config: NeuronBackendConfig, num_excitatory: int, num_inhibitory: int) -> NeuronSimulator:
        """Everything that can be checked in this process: the cell file, the synapse map against the model's
        channels, the mechanisms (compiled now if the cache has not got them)."""
        if config.cell is None:
            raise ConfigError(
                "ground_truth.simulator=neuron needs ground_truth.neuron.cell: a .hoc or .py file that builds the cell."
            )
        cell = config.cell.resolve()
        if not cell.is_file() or cell.suffix not in (".hoc", ".py"):
            raise ConfigError(f"ground_truth.neuron.cell={config.cell}: not a .hoc or .py file.")
        entries = None
        if config.synapse_map is not None:
            entries = tuple(read_synapse_map(config.synapse_map, num_excitatory + num_inhibitory, num_excitatory))
        mechanisms = config.mechanisms.resolve() if config.mechanisms is not None else None
        entry, _ = compiled_mechanisms(mechanisms, config.mechanisms_cache)
        settings = {
            **config.model_dump(mode="json"),
            "cell": str(cell),
            "mechanisms": str(mechanisms) if mechanisms else None,
        }
        digest = hashlib.sha256((file_sha256(cell, ConfigError) + folder_fingerprint(cell.parent)).encode())
        digest.update(json.dumps([settings, entries, entry.name], sort_keys=True, default=str).encode())
        return cls(settings, str(entry), entries, num_excitatory, num_inhibitory, digest.hexdigest())

    def fingerprint(self) -> str:
        return f"neuron:{self.identity}"

    def open(self) -> SimulateFunction:
        return _NeuronCell(self).simulate


class _NeuronCell:
    """The cell, its synapses and the saved post-warm-up state, in this process."""

    def __init__(self, spec: NeuronSimulator):
        settings = spec.settings
        os.chdir(spec.mechanisms_entry)  # NEURON loads the compiled mechanisms it finds here when imported
        os.environ.setdefault("NEURON_MODULE_OPTIONS", "-nogui")  # no "no DISPLAY" warning per worker
        try:
            from neuron import h
        except ImportError:
            raise SimulatorError("ground_truth.simulator=neuron needs NEURON: `pip install neuron==9.0.2`.") from None
        if not hasattr(h, NMDA_MECHANISM):
            raise SimulatorError(
                f"the compiled mechanisms in {spec.mechanisms_entry} did not load into NEURON (its "
                "messages are above); delete that folder to have them compiled again."
            )
        cell_path = Path(settings["cell"])
        os.chdir(cell_path.parent)  # the cell's relative paths (morphologies, other hoc files) work as at home
        h.load_file("stdrun.hoc")
        self.h = h
        self.cell = cells.build_cell(h, cell_path, settings["template"], settings["builder"])
        sections = cells.section_list(h, self.cell, settings["section_lists"])
        soma = cells.soma_of(h, self.cell, settings["soma"])
        if spec.synapse_map is None:
            locations = cells.default_locations(sections)
            if (len(locations), len(locations)) != (spec.num_excitatory, spec.num_inhibitory):
                raise SimulatorError(
                    f"{cell_path}: its section lists {settings['section_lists']} have {len(locations)} segments, "
                    f"so one excitatory and one inhibitory synapse each make {len(locations)} + {len(locations)} "
                    f"synapses, but the model takes {spec.num_excitatory} excitatory + {spec.num_inhibitory} "
                    f"inhibitory input channels; choose ground_truth.neuron.section_lists or give a "
                    "ground_truth.neuron.synapse_map."
                )
            locations = locations + locations
        else:
            locations = cells.mapped_locations(sections, list(spec.synapse_map))
        self._synapse_objects: list[Any] = []  # NEURON deletes a point process nothing refers to
        self.netcons = [
            self._synapses(section, x, channel < spec.num_excitatory, settings)
            for channel, (section, x) in enumerate(locations)
        ]
        self.soma = soma(0.5)
        self.detector = h.NetCon(self.soma._ref_v, None, sec=soma)
        self.detector.threshold = settings["spike_threshold_mv"]
        self.spikes = h.Vector()
        self.detector.record(self.spikes)
        if settings["celsius"] is not None:
            h.celsius = settings["celsius"]
        h.cvode.active(0)
        h.dt = settings["dt_ms"]
        h.steps_per_ms = 1.0 / settings["dt_ms"]
        h.finitialize(settings["v_init_mv"])
        h.continuerun(settings["warmup_ms"])
        self.state = h.SaveState()
        self.state.save()

    def _synapses(self, section: Any, x: float, excitatory: bool, settings: dict) -> list[Any]:
        h = self.h
        kinds = (("ampa", h.Exp2Syn), ("nmda", getattr(h, NMDA_MECHANISM))) if excitatory else (("gaba_a", h.Exp2Syn),)
        netcons = []
        for key, mechanism in kinds:
            kinetics = settings[key]
            synapse = mechanism(section(x))
            synapse.tau1, synapse.tau2, synapse.e = (
                kinetics["tau_rise_ms"],
                kinetics["tau_decay_ms"],
                kinetics["reversal_mv"],
            )
            if key == "nmda":
                synapse.mg = kinetics["magnesium_mm"]
            netcon = h.NetCon(None, synapse)
            netcon.weight[0] = kinetics["weight_us"]
            self._synapse_objects.append(synapse)
            netcons.append(netcon)
        return netcons

    def simulate(self, spikes: np.ndarray) -> SimulatedTrials:
        h = self.h
        trials, channels, duration = spikes.shape
        if channels != len(self.netcons):
            raise SimulatorError(f"the cell has {len(self.netcons)} synapses, got spikes for {channels} channels.")
        voltages = np.empty((trials, duration), dtype=np.float32)
        times = []
        for trial in range(trials):
            self.state.restore(1)
            self.spikes.resize(0)
            start = h.t
            for channel, ms in zip(*np.nonzero(spikes[trial])):
                for netcon in self.netcons[channel]:
                    netcon.event(start + float(ms))
            for ms in range(duration):
                h.continuerun(start + ms + 1)
                voltages[trial, ms] = self.soma.v
            detected = np.asarray(self.spikes, dtype=np.float64) - start
            times.append(detected[detected < duration])  # a crossing at the very end belongs to the next ms
        return SimulatedTrials(tuple(times), voltages)
