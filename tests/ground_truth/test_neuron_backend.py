"""The NEURON backend on the example's reference cell (examples/neuron_ground_truth/cell.hoc): a strong synchronous
volley fires it and silence does not, the synapse count is checked against the model, the mechanisms are compiled
once, parallel trials equal serial ones, and cells and maps of every supported kind (and bad ones) are handled."""

from __future__ import annotations

import shutil
from importlib import metadata

import numpy as np
import pytest

from errors import ConfigError, SimulatorError
from ground_truth.neuron_backend import mechanisms
from ground_truth.neuron_backend.config import NeuronBackendConfig
from ground_truth.neuron_backend.simulator import NeuronSimulator
from ground_truth.runner import TrialRunner
from ground_truth.trials import ground_truth_response
from tests.subprocesses import REPO

EXAMPLE = REPO / "examples" / "neuron_ground_truth"
CELL = EXAMPLE / "cell.hoc"
SEGMENTS = 32


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("nrnivmodl")


def simulator(cache, excitatory=SEGMENTS, inhibitory=SEGMENTS, **settings) -> NeuronSimulator:
    config = NeuronBackendConfig(**{"cell": CELL, "mechanisms_cache": cache, **settings})
    return NeuronSimulator.resolve(config, excitatory, inhibitory)


def background(exc: float, inh: float, duration: int = 150) -> np.ndarray:
    return np.concatenate([np.full((SEGMENTS, duration), exc), np.full((SEGMENTS, duration), inh)])


def test_a_strong_volley_fires_the_cell_and_silence_does_not(cache):
    spikes = np.zeros((3, 200, 2 * SEGMENTS), dtype=bool)
    spikes[1, 100, :SEGMENTS] = True  # every excitatory synapse at once
    spikes[2, 100, SEGMENTS:] = True  # every inhibitory one: no spike either
    with TrialRunner(simulator(cache), workers=1) as run:
        answer = run(spikes)
    assert answer.spike_times[0].size == 0 and answer.spike_times[2].size == 0
    assert answer.spike_times[1].size == 1 and 100 < answer.spike_times[1][0] < 106
    assert answer.soma_v.shape == (3, 200)
    assert abs(answer.soma_v[0, -1] - answer.soma_v[0, 0]) < 0.5  # at rest after the warm-up
    assert answer.soma_v[2, 110] < answer.soma_v[0, 110] - 1  # inhibition hyperpolarizes


def test_a_synapse_count_that_differs_from_the_models_channels_is_refused_naming_both(cache):
    with TrialRunner(simulator(cache, 30, 30), workers=1) as run:
        with pytest.raises(
            SimulatorError,
            match=r"32 segments.*make 32 \+ 32 synapses, but the model takes 30 "
            r"excitatory \+ 30 inhibitory input channels",
        ):
            run(np.zeros((1, 10, 60), dtype=bool))


def test_mechanisms_are_compiled_once_per_set_of_files(tmp_path):
    first, compiled = mechanisms.compiled_mechanisms(None, tmp_path)
    assert compiled and (first / mechanisms.DONE).is_file()
    again, compiled_again = mechanisms.compiled_mechanisms(None, tmp_path)
    assert again == first and not compiled_again
    own = tmp_path / "mods"
    own.mkdir()
    (own / "leak.mod").write_text(
        "NEURON { SUFFIX tinyleak NONSPECIFIC_CURRENT i RANGE g }\n"
        "PARAMETER { g = 0.0001 (S/cm2) }\nASSIGNED { v (mV) i (mA/cm2) }\n"
        "BREAKPOINT { i = g * (v + 70) }\n"
    )
    with_own, compiled_own = mechanisms.compiled_mechanisms(own, tmp_path)
    assert compiled_own and with_own != first
    assert not any(path.name.startswith(".building") for path in tmp_path.iterdir())


def test_a_mod_file_that_does_not_compile_is_reported_with_nrnivmodls_output(tmp_path):
    own = tmp_path / "mods"
    own.mkdir()
    (own / "broken.mod").write_text("NEURON { SUFFIX broken }\nBREAKPOINT { this is not nmodl }\n")
    with pytest.raises(SimulatorError, match="nrnivmodl could not compile"):
        mechanisms.compiled_mechanisms(own, tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_missing_neuron_or_compiler_gives_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(mechanisms.Path, "is_file", lambda self: False, raising=False)
    with pytest.raises(SimulatorError, match="nrnivmodl"):
        mechanisms._tools()
    monkeypatch.undo()
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda name: None if name in ("cc", "gcc", "clang", "make") else real_which(name)
    )
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(SimulatorError, match="needs a C compiler and make"):
        mechanisms._tools()
    monkeypatch.undo()

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    with pytest.raises(SimulatorError, match="pip install neuron"):
        mechanisms.neuron_version()


def test_parallel_trials_give_the_same_figures_as_serial_for_the_same_seed(cache):
    rates = background(0.0125, 0.02)
    figures = []
    for workers in (1, 2):
        with TrialRunner(simulator(cache), workers=workers) as run:
            figures.append(ground_truth_response(rates, [0, 1, 2], 100, 10, run, SEGMENTS, n_trials=200, seed=4))
    assert figures[0] == figures[1]
    assert 0 < figures[0]["p_outside_control"] < 1  # background drives the cell: the figures are not trivial


def test_the_explicit_map_of_the_default_placement_gives_the_same_answers(cache, tmp_path):
    spikes = np.random.default_rng(0).random((4, 150, 2 * SEGMENTS)) < background(0.02, 0.01).T
    answers = []
    for settings in ({}, {"synapse_map": EXAMPLE / "synapse_map.csv"}):
        with TrialRunner(simulator(cache, **settings), workers=1) as run:
            answers.append(run(spikes))
    for default, mapped in zip(answers[0].spike_times, answers[1].spike_times):
        np.testing.assert_array_equal(default, mapped)
    np.testing.assert_array_equal(answers[0].soma_v, answers[1].soma_v)
    # the same placement as an .npy of (kind, section index, x), sections in the order of `all`
    lines = (EXAMPLE / "synapse_map.csv").read_text().split()[1:]
    order = ["soma", "basal[0]", "basal[1]", "apical"]
    table = np.array(
        [
            [0 if kind == "excitatory" else 1, order.index(name), float(x)]
            for kind, name, x in (line.split(",") for line in lines)
        ]
    )
    np.save(tmp_path / "map.npy", table)
    with TrialRunner(simulator(cache, synapse_map=tmp_path / "map.npy"), workers=1) as run:
        np.testing.assert_array_equal(run(spikes).soma_v, answers[0].soma_v)


def bad_maps() -> dict[str, tuple[str, str]]:
    """Generated: each is the example map with one thing wrong, and what the error says."""
    good = (EXAMPLE / "synapse_map.csv").read_text().splitlines()
    rows = good[1:]
    return {
        "no_header": ("\n".join(rows), "header kind,section,x"),
        "one_row_short": ("\n".join(good[:-1]), "63 synapses, but the model takes 64"),
        "one_row_more": ("\n".join(good + [rows[0]]), "65 synapses"),
        "kind_unknown": ("\n".join([good[0], "glutamate,soma,0.5"] + rows[1:]), "neither excitatory"),
        "x_not_number": ("\n".join([good[0], "excitatory,soma,half"] + rows[1:]), "not a number"),
        "x_outside": ("\n".join([good[0], "excitatory,soma,1.5"] + rows[1:]), "not in \\[0, 1\\]"),
        "x_nan": ("\n".join([good[0], "excitatory,soma,nan"] + rows[1:]), "not in \\[0, 1\\]"),
        "inhibitory_first": ("\n".join([good[0]] + rows[32:] + rows[:32]), "not in that order"),
        "too_few_excitatory": ("\n".join([good[0]] + rows[:31] + rows[32:] + [rows[40]]), "31 excitatory"),
        "two_fields": ("\n".join([good[0], "excitatory,soma"] + rows[1:]), "2 fields"),
    }


@pytest.mark.parametrize("name", sorted(bad_maps()))
def test_bad_synapse_maps_are_refused_naming_the_file_and_the_problem(cache, tmp_path, name):
    text, message = bad_maps()[name]
    path = tmp_path / "map.csv"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message) as refused:
        simulator(cache, synapse_map=path)
    assert str(path) in str(refused.value)


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        (b"\x93NUMPY garbage", ".npy", "not a numeric .npy"),
        (None, ".npy", "shape \\(channels, 3\\)"),
        (b"kind,section,x\n", ".txt", "a .csv or a .npy"),
    ],
)
def test_bad_map_files_are_refused(cache, tmp_path, content, suffix, message):
    path = tmp_path / f"map{suffix}"
    if content is None:
        np.save(path, np.zeros((64, 2)))
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        simulator(cache, synapse_map=path)


def test_a_map_naming_a_section_the_cell_lacks_is_refused_when_the_cell_is_built(cache, tmp_path):
    text = (EXAMPLE / "synapse_map.csv").read_text().replace("apical,", "oblique,", 1)
    (tmp_path / "map.csv").write_text(text)
    with TrialRunner(simulator(cache, synapse_map=tmp_path / "map.csv"), workers=1) as run:
        with pytest.raises(SimulatorError, match="no section 'oblique'"):
            run(np.zeros((1, 10, 64), dtype=bool))


PYTHON_CELL = """
from neuron import h

h.load_file("soma_size.hoc")  # relative to the cell's own folder

class Cell:
    def __init__(self):
        self.soma = h.Section(name="soma", cell=self)
        self.soma.L = self.soma.diam = h.soma_size
        self.soma.insert("hh")
        self.dend = h.Section(name="dend", cell=self)
        self.dend.L, self.dend.diam, self.dend.nseg = 200, 2, 3
        self.dend.insert("pas")
        self.dend.connect(self.soma(1))
        self.all = [self.soma, self.dend]

def build_cell():
    return Cell()
"""

TWO_TEMPLATES = """
begintemplate First
public soma, all
create soma
objref all
proc init() { create soma  soma { L = 20 diam = 20 insert hh }  all = new SectionList()  soma all.append() }
endtemplate First
begintemplate Second
public soma, dend, all
create soma, dend
objref all
proc init() { create soma, dend  soma { L = 20 diam = 20 insert hh }  dend { L = 100 diam = 1 nseg = 2 }
  connect dend(0), soma(1)  all = new SectionList()  soma all.append()  dend all.append() }
endtemplate Second
"""


def test_a_python_cell_and_a_file_of_two_templates(cache, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # not the cell's folder
    (tmp_path / "cell.py").write_text(PYTHON_CELL)
    (tmp_path / "soma_size.hoc").write_text("soma_size = 20\n")
    spikes = np.zeros((2, 60, 8), dtype=bool)
    spikes[1, 20, :4] = True
    config = NeuronBackendConfig(
        cell=tmp_path / "cell.py",
        mechanisms_cache=cache,
        ampa={"tau_rise_ms": 0.3, "tau_decay_ms": 3, "reversal_mv": 0, "weight_us": 0.01},
    )
    with TrialRunner(NeuronSimulator.resolve(config, 4, 4), workers=1) as run:
        answer = run(spikes)
    assert answer.spike_times[0].size == 0 and answer.spike_times[1].size == 1
    (tmp_path / "two.hoc").write_text(TWO_TEMPLATES)
    with TrialRunner(
        NeuronSimulator.resolve(NeuronBackendConfig(cell=tmp_path / "two.hoc", mechanisms_cache=cache), 3, 3), workers=1
    ) as run:
        with pytest.raises(SimulatorError, match="name one in ground_truth.neuron.template"):
            run(np.zeros((1, 10, 6), dtype=bool))
    chosen = NeuronBackendConfig(cell=tmp_path / "two.hoc", template="Second", mechanisms_cache=cache)
    with TrialRunner(NeuronSimulator.resolve(chosen, 3, 3), workers=1) as run:
        assert run(np.zeros((1, 10, 6), dtype=bool)).spike_times[0].size == 0  # soma + 2 dend segments: 3 + 3


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"cell": None}, "needs ground_truth.neuron.cell"),
        ({"cell": EXAMPLE / "config.yaml"}, "not a .hoc or .py file"),
        ({"cell": EXAMPLE / "missing.hoc"}, "not a .hoc or .py file"),
        ({"mechanisms": EXAMPLE / "cell.hoc"}, "not a folder"),
    ],
)
def test_settings_that_name_no_cell_are_refused_before_any_worker(cache, settings, message):
    with pytest.raises(ConfigError, match=message):
        simulator(cache, **settings)


LEAK = (
    "NEURON {{ SUFFIX {name} NONSPECIFIC_CURRENT i RANGE g }}\nPARAMETER {{ g = 0.0001 (S/cm2) }}\n"
    "ASSIGNED {{ v (mV) i (mA/cm2) }}\nBREAKPOINT {{ i = g * (v + 70) }}\n"
)


@pytest.mark.parametrize(
    "files, message",
    [
        ({"exp2syn.mod": "NEURON { POINT_PROCESS Exp2Syn }\n"}, "defines Exp2Syn, which NEURON already has"),
        ({"other.mod": "NEURON { POINT_PROCESS NmdaMgSyn }\n"}, "defines NmdaMgSyn, which the project already has"),
        ({"a.mod": LEAK.format(name="twice"), "b.mod": LEAK.format(name="twice")}, "a.mod and b.mod both define twice"),
        ({"my leak.mod": LEAK.format(name="spaced")}, "file names of letters"),
        ({"nmda_mg.mod": LEAK.format(name="mine")}, "name of the project's own mechanism file"),
    ],
)
def test_mechanisms_neuron_would_reject_are_refused_before_compiling(tmp_path, files, message):
    own = tmp_path / "mods"
    own.mkdir()
    for name, text in files.items():
        (own / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        mechanisms.compiled_mechanisms(own, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_included_files_are_compiled_with_the_mod_files_and_errors_come_without_nrnivmodls_traceback(tmp_path):
    own = tmp_path / "mods"
    own.mkdir()
    (own / "params.inc").write_text("PARAMETER { g = 0.0001 (S/cm2) }\n")
    (own / "uses.mod").write_text(
        'NEURON { SUFFIX incleak NONSPECIFIC_CURRENT i RANGE g }\nINCLUDE "params.inc"\n'
        "ASSIGNED { v (mV) i (mA/cm2) }\nBREAKPOINT { i = g * (v + 70) }\n"
    )
    entry, compiled = mechanisms.compiled_mechanisms(own, tmp_path / "cache")
    assert compiled and mechanisms.usable_entry(entry)
    (own / "broken.mod").write_text("NEURON { SUFFIX broken }\nBREAKPOINT { this is not nmodl }\n")
    with pytest.raises(SimulatorError) as refused:
        mechanisms.compiled_mechanisms(own, tmp_path / "cache")
    assert "Traceback" not in str(refused.value) and "CalledProcessError" not in str(refused.value)


@pytest.mark.parametrize("damage", ["no_record", "no_library", "garbage_library", "record_not_json"])
def test_a_damaged_cache_entry_is_compiled_again(tmp_path, damage):
    entry, _ = mechanisms.compiled_mechanisms(None, tmp_path)
    library = next(entry.glob("*/libnrnmech.so"), None) or next(entry.glob("*/.libs/libnrnmech.so"))
    if damage == "no_record":
        (entry / mechanisms.DONE).unlink()
    elif damage == "no_library":
        library.unlink()
    elif damage == "garbage_library":
        library.write_bytes(b"not a shared library")
    else:
        (entry / mechanisms.DONE).write_text("{")
    again, compiled = mechanisms.compiled_mechanisms(None, tmp_path)
    assert again == entry and compiled and mechanisms.usable_entry(entry)
    assert [path.name for path in tmp_path.iterdir()] == [entry.name]  # nothing left aside


def test_editing_a_file_the_cell_loads_changes_the_fingerprint(cache, tmp_path):
    (tmp_path / "cell.py").write_text(PYTHON_CELL)
    (tmp_path / "soma_size.hoc").write_text("soma_size = 20\n")
    config = NeuronBackendConfig(cell=tmp_path / "cell.py", mechanisms_cache=cache)
    before = NeuronSimulator.resolve(config, 4, 4).fingerprint()
    assert NeuronSimulator.resolve(config, 4, 4).fingerprint() == before
    (tmp_path / "soma_size.hoc").write_text("soma_size = 25\n")
    assert NeuronSimulator.resolve(config, 4, 4).fingerprint() != before


def test_templates_in_comments_do_not_count_and_a_builder_must_return_a_cell(cache, tmp_path):
    (tmp_path / "commented.hoc").write_text(
        "/* begintemplate Ghost\nendtemplate Ghost */\n// begintemplate Other\n"
        + TWO_TEMPLATES.split("begintemplate Second")[0]
    )
    with TrialRunner(
        NeuronSimulator.resolve(NeuronBackendConfig(cell=tmp_path / "commented.hoc", mechanisms_cache=cache), 1, 1),
        workers=1,
    ) as run:
        assert run(np.zeros((1, 10, 2), dtype=bool)).spike_times[0].size == 0
    (tmp_path / "none.py").write_text("def build_cell():\n    return None\n")
    with TrialRunner(
        NeuronSimulator.resolve(NeuronBackendConfig(cell=tmp_path / "none.py", mechanisms_cache=cache), 1, 1), workers=1
    ) as run:
        with pytest.raises(SimulatorError, match=r"build_cell\(\) returned None; it must return the cell"):
            run(np.zeros((1, 10, 2), dtype=bool))


def test_map_details_a_user_may_write(cache, tmp_path):
    good = (EXAMPLE / "synapse_map.csv").read_text()
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + good.replace("\n", "\r\n").encode())
    assert (
        simulator(cache, synapse_map=tmp_path / "bom.csv").synapse_map
        == simulator(cache, synapse_map=EXAMPLE / "synapse_map.csv").synapse_map
    )
    (tmp_path / "digit.csv").write_text(good.replace("excitatory,soma,", "excitatory,\u00b2,", 1))
    with TrialRunner(simulator(cache, synapse_map=tmp_path / "digit.csv"), workers=1) as run:
        with pytest.raises(SimulatorError, match="no section '\u00b2'"):
            run(np.zeros((1, 10, 64), dtype=bool))
    for name, array in (
        ("complex", np.zeros((64, 3), dtype=complex)),
        ("huge_index", np.array([[0, 10.0**300, 0.5]] * 32 + [[1, 0, 0.5]] * 32)),
    ):
        np.save(tmp_path / f"{name}.npy", array)
        with pytest.raises(ConfigError) as refused:
            simulator(cache, synapse_map=tmp_path / f"{name}.npy")
        assert len(str(refused.value)) < 400
