"""Write docs/configuration.md from the config schema (pipeline.config.AppConfig), so that the reference lists
exactly the keys, types, defaults and limits that `main.py` accepts. tests/docs/test_docs.py fails when the file
in the repository differs from what this script writes.

    python tools/config_reference.py            # rewrite docs/configuration.md
"""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import limits  # noqa: E402
from config_base import Section  # noqa: E402
from fileio import write_text_atomic  # noqa: E402
from pipeline.config import AppConfig  # noqa: E402

REFERENCE = REPO_ROOT / "docs" / "configuration.md"

HEADER = """# Configuration reference

Every key `python main.py` accepts, generated from the config schema by `python tools/config_reference.py` (a
test fails when this page differs from what the script writes). Every key is optional; the default is the
built-in value (`config.yaml` shows the same values with comments; its `demo:` section holds the values tuned
for the shipped demo models, applied to them only). Unknown keys and wrong types stop a run before any work.

Set a key in a YAML file (`--config my.yaml`) or on the command line as a dotted key:
`python main.py optimization.loop.max_iterations=200 device=cpu` (values are read as YAML: `200`, `true`, `null`,
`[1, 2]`). Relative paths are relative to the config file's folder.
"""


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Section)


def type_text(annotation: Any) -> str:
    """A Keras-user's reading of a type: `int`, `float or null`, `one of a, b`, `list of int`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in args)
    if origin in (Union, types.UnionType):
        members = [type_text(arg) for arg in args if arg is not type(None)]
        text = " or ".join(members)
        return f"{text} or null" if type(None) in args else text
    if origin is tuple and Ellipsis not in args:
        return "pair (" + ", ".join(type_text(arg) for arg in args) + ")"
    if origin in (list, tuple):
        inner = type_text(args[0]) if args else "values"
        return "list of " + (f"({inner})" if " or " in inner else inner)
    if origin is dict:
        return f"mapping of {type_text(args[0])} to {type_text(args[1])}" if args else "mapping"
    if annotation is Any:
        return "any value"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "{" + ", ".join(annotation.model_fields) + "}"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _bound_texts(metadata: list[Any]) -> list[str]:
    texts = []
    for item in metadata:
        for kind, symbol in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(item, kind, None) if isinstance(item, annotated_types.BaseMetadata) else None
            if value is not None:
                texts.append(f"{symbol} {_number(value)}")
        if isinstance(item, annotated_types.MaxLen):
            texts.append(f"at most {item.max_length} characters")
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            texts.append(f"matches `{pattern}`")
    return texts


def limits_text(field: FieldInfo) -> str:
    """The field's own bounds and those of the values inside it (list items, union members)."""
    texts = _bound_texts(field.metadata)
    inner = [arg for arg in get_args(field.annotation) if get_origin(arg) is typing.Annotated]
    for arg in inner:
        texts += [f"each {text}" for text in _bound_texts(list(get_args(arg)[1:]))]
    return "; ".join(dict.fromkeys(texts))


def _number(value: Any) -> str:
    if isinstance(value, int) and abs(value) >= 10**6 and bin(value).count("1") == 1:
        return f"2**{value.bit_length() - 1}"
    if isinstance(value, int) and abs(value) >= 10**6 and str(value).rstrip("0") == "1":
        return f"10**{len(str(value)) - 1}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def default_text(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "(required)"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, Path):
        value = str(value)
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def section_markdown(model: type[BaseModel], prefix: str) -> list[str]:
    """This section's table, then each subsection's, depth first (their order in the schema)."""
    doc = " ".join((model.__doc__ or "").split())
    title = prefix or "Top level"
    lines = [f"## {title}", ""]
    if doc:
        lines += [doc, ""]
    lines += ["| key | type | default | limits | meaning |", "| --- | --- | --- | --- | --- |"]
    subsections = []
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if _is_section(field.annotation):
            lines.append(f"| `{key}` | section | | | see [{key}](#{key.replace('.', '')}) |")
            subsections.append((field.annotation, key))
            continue
        cells = [
            f"`{key}`",
            type_text(field.annotation),
            default_text(field),
            limits_text(field),
            field.description or "",
        ]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    lines.append("")
    for submodel, key in subsections:
        lines += section_markdown(submodel, key)
    return lines


LIMITS_HEADER = """## Size limits (environment variables)

Every size an input declares is checked against a budget before anything is allocated or run
([reliability.md](reliability.md#size-limits)). The defaults are far above real neuron TCNs; raise one for a
real big model or study with its environment variable (e.g. `NEURON_TCN_MAX_WEIGHT_BYTES=64e9`).

| variable | default | limits |
| --- | --- | --- |"""


def limits_markdown() -> list[str]:
    """One row per budget of limits.py, in the order they are defined there."""
    rows = [LIMITS_HEADER]
    for limit in vars(limits).values():
        if isinstance(limit, limits.Limit):
            default = limits.format_bytes(limit.default) if limit.name.endswith("_bytes") else f"{limit.default:,.0f}"
            rows.append(f"| `{limit.env}` | {default} | {_cell(limit.what)} |")
    return rows


def reference_markdown() -> str:
    sections = section_markdown(AppConfig, "") + limits_markdown()
    return HEADER + "\n" + "\n".join(sections).rstrip() + "\n"


def main() -> None:
    write_text_atomic(REFERENCE, reference_markdown())
    print(f"wrote {REFERENCE.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
