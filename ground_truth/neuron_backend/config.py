"""Settings of the NEURON backend (`ground_truth.neuron` in config.yaml)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from config_base import Section

NAME = r"^[A-Za-z_]\w{0,99}$"  # a hoc template, a Python function, a section list: plain identifiers


class SynapseKinetics(Section):
    """A two-exponential synapse: conductance rises with tau_rise_ms, decays with tau_decay_ms, peaks at weight_us
    after one presynaptic spike."""

    tau_rise_ms: float = Field(gt=0, le=1e4, description="Rise time constant (ms).")
    tau_decay_ms: float = Field(gt=0, le=1e4, description="Decay time constant (ms); longer than the rise.")
    reversal_mv: float = Field(ge=-200, le=200, description="Reversal potential (mV).")
    weight_us: float = Field(ge=0, le=1, description="Peak conductance of one presynaptic spike (uS).")

    @model_validator(mode="after")
    def _rise_before_decay(self) -> SynapseKinetics:
        """`tau_rise_ms` is shorter than `tau_decay_ms`."""
        if self.tau_rise_ms >= self.tau_decay_ms:
            raise ValueError("tau_rise_ms must be shorter than tau_decay_ms")
        return self


class NmdaKinetics(SynapseKinetics):
    """The NMDA synapse shipped with the project (nmda_mg.mod): two exponentials times the Mg2+ block of Jahr &
    Stevens (1990), 1 / (1 + [Mg]/3.57 mM · exp(−0.062/mV · V))."""

    magnesium_mm: float = Field(1.0, ge=0, le=100, description="Extracellular [Mg2+] (mM).")


class NeuronBackendConfig(Section):
    """The user's cell in NEURON: one excitatory (AMPA + NMDA) and one inhibitory (GABA-A) synapse per input
    location, input spikes delivered as events, somatic spikes detected at a threshold."""

    cell: Path | None = Field(
        None,
        description="A hoc file (a template, or code that creates sections) or a "
        "Python file whose function `builder` returns the cell; relative to the working "
        "directory. The cell is built with its own folder as working directory.",
    )
    template: str | None = Field(
        None,
        pattern=NAME,
        description="hoc cell: the template to instantiate; null: "
        "the file's only template, or no template (the sections the file creates).",
    )
    builder: str = Field(
        "build_cell",
        pattern=NAME,
        description="Python cell: the function that builds and returns it (with no arguments).",
    )
    section_lists: list[str] = Field(
        ["all"],
        min_length=1,
        max_length=20,
        description="The cell's section lists "
        "(attributes, e.g. [basal, apical]) whose segments, in order, carry the "
        "synapses; 'all' falls back to every section when the cell has no such list.",
    )
    soma: str | None = Field(
        None,
        max_length=200,
        description="The section whose middle detects spikes, by "
        "name (e.g. soma[0]); null: the cell's soma (attribute soma, else the first "
        "section whose name contains 'soma').",
    )
    synapse_map: Path | None = Field(
        None,
        description="Which section(x) each input channel drives: a CSV "
        "(columns kind, section, x; one row per channel in channel order) or an "
        ".npy (channels x 3: kind 0/1, section index in section_lists order, x); "
        "null: one excitatory and one inhibitory synapse per segment.",
    )
    mechanisms: Path | None = Field(
        None,
        description="A folder of the cell's .mod files, compiled (with the "
        "project's NMDA synapse) by nrnivmodl once into mechanisms_cache.",
    )
    mechanisms_cache: Path | None = Field(
        None,
        description="Where compiled mechanisms are kept, keyed by the "
        "files' hashes; null: $XDG_CACHE_HOME/neuron-tcn/nrnivmodl (or "
        "~/.cache/...).",
    )
    ampa: SynapseKinetics = Field(
        default_factory=lambda: SynapseKinetics(tau_rise_ms=0.3, tau_decay_ms=3.0, reversal_mv=0.0, weight_us=0.0008)
    )
    nmda: NmdaKinetics = Field(
        default_factory=lambda: NmdaKinetics(tau_rise_ms=2.0, tau_decay_ms=70.0, reversal_mv=0.0, weight_us=0.0008)
    )
    gaba_a: SynapseKinetics = Field(
        default_factory=lambda: SynapseKinetics(tau_rise_ms=0.2, tau_decay_ms=8.0, reversal_mv=-80.0, weight_us=0.001)
    )
    dt_ms: float = Field(0.025, ge=1e-3, le=1, description="Integration step (fixed-step, ms).")
    warmup_ms: float = Field(
        200.0,
        ge=0,
        le=1e5,
        description="Simulated without input before every trial (once "
        "per worker: the state after it is saved and restored).",
    )
    v_init_mv: float = Field(-65.0, ge=-200, le=200, description="Initial membrane potential (mV).")
    celsius: float | None = Field(
        None, ge=-10, le=60, description="Temperature; null: what the cell sets (NEURON's default 6.3)."
    )
    spike_threshold_mv: float = Field(
        -20.0, ge=-200, le=200, description="A somatic spike is an upward crossing of this voltage."
    )
