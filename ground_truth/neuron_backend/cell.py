"""Build the user's cell in NEURON and find where its synapses go (runs in a simulator worker process).

A hoc file is loaded and its template instantiated (`template`, else the file's only `begintemplate`), or, without
a template, the sections it creates are the cell. A Python file's `builder` function returns the cell. Synapse
locations are the segments of the cell's section lists (`section_lists`, default `all`), section by section in list
order and segment by segment from 0 to 1 — the order of the published simulations' input channels.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

from errors import SimulatorError

TEMPLATE = re.compile(rb"^\s*begintemplate\s+(\w+)", re.MULTILINE)
COMMENTS = re.compile(rb"/\*.*?\*/|//[^\n]*", re.DOTALL)


def templates_in(path: Path) -> list[str]:
    """The templates a hoc file defines (outside comments)."""
    return [name.decode() for name in TEMPLATE.findall(COMMENTS.sub(b"", path.read_bytes()))]


def build_cell(h: Any, path: Path, template: str | None, builder: str) -> Any:
    """The cell object (None for a hoc file that creates top-level sections)."""
    where = f"ground_truth.neuron.cell={path}"
    if path.suffix == ".py":
        sys.path.insert(0, str(path.parent))
        spec = importlib.util.spec_from_file_location("_ground_truth_cell", path)
        if spec is None or spec.loader is None:
            raise SimulatorError(f"{where}: cannot be imported as a Python module.")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        function = getattr(module, builder, None)
        if not callable(function):
            raise SimulatorError(f"{where}: the module has no function {builder} (ground_truth.neuron.builder).")
        cell = function()
        if cell is None or isinstance(cell, (bool, int, float, str, bytes)):
            raise SimulatorError(
                f"{where}: {builder}() returned {cell!r:.60}; it must return the cell (an object "
                "whose attributes are its sections and section lists)."
            )
        return cell
    names = templates_in(path)
    if template is not None and template not in names:
        raise SimulatorError(f"{where}: defines no template {template} (it defines {names or 'none'}).")
    if template is None and len(names) > 1:
        raise SimulatorError(f"{where}: defines the templates {names}; name one in ground_truth.neuron.template.")
    if not h.load_file(1, str(path)):
        raise SimulatorError(f"{where}: NEURON could not load it (its messages are above).")
    chosen = template or (names[0] if names else None)
    return getattr(h, chosen)() if chosen else None


def _sections(value: Any) -> list[Any]:
    """A section, a section array or list, or a SectionList, as a list of sections."""
    if hasattr(value, "nseg") and hasattr(value, "name"):
        return [value]
    return list(value)


def section_list(h: Any, cell: Any, names: list[str]) -> list[Any]:
    """The sections of the named lists, in order, each once."""
    sections: list[Any] = []
    for name in names:
        source = getattr(cell, name, None) if cell is not None else getattr(h, name, None)
        if source is None and name == "all":
            source = h.allsec()
        if source is None:
            raise SimulatorError(f"the cell has no section list {name} (ground_truth.neuron.section_lists).")
        try:
            sections.extend(_sections(source))
        except TypeError:
            raise SimulatorError(f"the cell's {name} is not a section list.") from None
    unique: dict[str, Any] = {}
    for section in sections:
        unique.setdefault(section.name(), section)
    if not unique:
        raise SimulatorError(f"the cell's section lists {names} hold no sections.")
    return list(unique.values())


def short_name(section: Any) -> str:
    """`dend[3]` for `Cell[0].dend[3]`: the name inside its cell."""
    return section.name().split(".", 1)[-1]


def soma_of(h: Any, cell: Any, name: str | None) -> Any:
    everything = list(h.allsec())
    if name is not None:
        for section in everything:
            if name in (section.name(), short_name(section)):
                return section
        raise SimulatorError(f"ground_truth.neuron.soma={name}: the cell has no such section.")
    soma = getattr(cell, "soma", None) if cell is not None else None
    if soma is not None:
        return _sections(soma)[0]
    named = [section for section in everything if "soma" in short_name(section).lower()]
    if not named:
        raise SimulatorError(
            "the cell has no section named soma; name the spike-detecting section in ground_truth.neuron.soma."
        )
    return named[0]


def default_locations(sections: list[Any]) -> list[tuple[Any, float]]:
    return [(section, segment.x) for section in sections for segment in section]


def mapped_locations(sections: list[Any], entries: list[tuple[int, Any, float]]) -> list[tuple[Any, float]]:
    """The map's (section, x) per channel, sections by index in `sections` or by name."""
    by_name = {**{short_name(s): s for s in sections}, **{s.name(): s for s in sections}}
    locations = []
    for channel, (_, section, x) in enumerate(entries):
        if isinstance(section, int):
            if section >= len(sections):
                raise SimulatorError(
                    f"synapse map, channel {channel}: section index {section}, but the section "
                    f"lists hold {len(sections)} sections."
                )
            locations.append((sections[section], x))
        elif section in by_name:
            locations.append((by_name[section], x))
        else:
            raise SimulatorError(
                f"synapse map, channel {channel}: the cell's section lists have no section "
                f"{section[:80]!r} (names look like {short_name(sections[0])})."
            )
    return locations
