"""Write docs/configuration.md from the config schema (pipeline.config.AppConfig) and the size budgets of
limits.py, so that the reference lists exactly the keys, types, defaults, limits and rules that `main.py`
accepts. tests/docs/test_docs.py fails when the file in the repository differs from what this script writes.

    python tools/config_reference.py            # rewrite docs/configuration.md
    python tools/config_reference.py --print    # write it to stdout instead

The reference shows the built-in values: NEURON_TCN_* variables set in this shell are ignored.
"""

from __future__ import annotations

import json
import os
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
for _name in [name for name in os.environ if name.startswith("NEURON_TCN_")]:
    del os.environ[_name]  # before the project is imported: its bounds read them at import

import limits  # noqa: E402
from config_base import Section  # noqa: E402
from fileio import write_text_atomic  # noqa: E402
from pipeline.config import AppConfig  # noqa: E402

REFERENCE = REPO_ROOT / "docs" / "configuration.md"

HEADER = """# Configuration reference

Every key `python main.py` accepts, generated from the config schema by `python tools/config_reference.py` (a
test fails when this page differs from what the script writes). Every key is optional; the default is the
built-in value (`config.yaml` shows the same values with comments; its `demo:` section holds the values tuned
for the shipped demo models, applied to them only). Unknown keys and wrong types stop a run before any work
(true/false is never taken as a number; a number written as text, such as YAML's `1e-4`, is read as the number).

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
        return f"`{args[0]}`" if len(args) == 1 else "one of " + ", ".join(f"`{value}`" for value in args)
    if origin in (Union, types.UnionType):
        members = [type_text(arg) for arg in args if arg is not type(None)]
        text = " or ".join(members)
        if type(None) in args:
            return f"{text} or null" if len(members) == 1 and " or " not in text else f"({text}) or null"
        return text
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


def _bound_texts(metadata: list[Any], base: Any) -> list[str]:
    """Bounds of annotated_types items, and of FieldInfo items (a Field inside Annotated) through theirs."""
    texts = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            texts += _bound_texts(item.metadata, base)
            continue
        for kind, symbol in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(item, kind, None) if isinstance(item, annotated_types.BaseMetadata) else None
            if value is not None:
                texts.append(f"{symbol} {_number(value)}")
        unit = "characters" if base is str else "items"
        if isinstance(item, annotated_types.MinLen):
            texts.append(f"at least {item.min_length} {unit}")
        if isinstance(item, annotated_types.MaxLen):
            texts.append(f"at most {item.max_length} {unit}")
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            texts.append(f"matches `{pattern}`")
    return texts


def _plain(annotation: Any) -> Any:
    """The type under Optional: `list[str] | None` -> list[str]."""
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    return args[0] if get_origin(annotation) in (Union, types.UnionType) and len(args) == 1 else annotation


def _inner_bounds(annotation: Any, prefix: str) -> list[str]:
    """Bounds written inside the type: union members as they are, list items as `each ...`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is typing.Annotated:
        return [f"{prefix}{text}" for text in _bound_texts(list(args[1:]), args[0])] + _inner_bounds(args[0], prefix)
    if origin in (Union, types.UnionType):
        return [text for arg in args for text in _inner_bounds(arg, prefix)]
    if origin in (list, tuple):
        each = "each inner item " if prefix.startswith("each") else "each "
        return [text for arg in args if arg is not Ellipsis for text in _inner_bounds(arg, each)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):  # a form such as {first, count}
        return [
            f"{name} {text}"
            for name, field in annotation.model_fields.items()
            for text in _bound_texts(field.metadata, field.annotation)
        ]
    return []


def limits_text(field: FieldInfo) -> str:
    """The field's own bounds and those written inside its type (list items, union members, ranges)."""
    texts = _bound_texts(field.metadata, _plain(field.annotation)) + _inner_bounds(field.annotation, "")
    return "; ".join(dict.fromkeys(texts))


def _number(value: Any) -> str:
    if isinstance(value, int) and abs(value) >= 10**6 and bin(value).count("1") == 1:
        return f"2**{value.bit_length() - 1}"
    if isinstance(value, int) and abs(value) >= 10**6 and str(value).rstrip("0") == "1":
        return f"10**{len(str(value)) - 1}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def default_text(field: FieldInfo, value: Any) -> str:
    if value is PydanticUndefined:
        return "(required)"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, Path):
        value = str(value)
    return f"`{json.dumps(value)}`"


def rules_of(model: type[BaseModel]) -> list[str]:
    """What the section's validators check across its keys, from their docstrings."""
    inherited = set(Section.__pydantic_decorators__.model_validators)  # what every section does
    validators = [v for name, v in model.__pydantic_decorators__.model_validators.items() if name not in inherited]
    return [" ".join(validator.func.__doc__.split()) for validator in validators if validator.func.__doc__]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def section_markdown(model: type[BaseModel], prefix: str, defaults: BaseModel | None) -> list[str]:
    """This section's table, then each subsection's, depth first (their order in the schema). `defaults` is the
    section as its parent builds it by default (a parent may give a subsection values of its own)."""
    doc = " ".join((model.__doc__ or "").split())
    lines = [f"## {prefix or 'Top level'}", ""]
    if doc:
        lines += [doc, ""]
    lines += ["| key | type | default | limits | meaning |", "| --- | --- | --- | --- | --- |"]
    subsections = []
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        value = getattr(defaults, name) if defaults is not None else field.get_default(call_default_factory=True)
        if _is_section(field.annotation):
            lines.append(f"| `{key}` | section | | | see [{key}](#{key.replace('.', '')}) |")
            subsections.append((field.annotation, key, value if isinstance(value, BaseModel) else None))
            continue
        cells = [f"`{key}`", type_text(field.annotation), default_text(field, value), limits_text(field)]
        lines.append("| " + " | ".join(_cell(cell) for cell in [*cells, field.description or ""]) + " |")
    rules = rules_of(model)
    lines += ["", *[f"Also checked: {rule}" for rule in rules]] if rules else []
    lines.append("")
    for submodel, key, value in subsections:
        lines += section_markdown(submodel, key, value)
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
    sections = section_markdown(AppConfig, "", AppConfig()) + limits_markdown()
    return HEADER + "\n" + "\n".join(sections).rstrip() + "\n"


def main() -> None:
    if sys.argv[1:] == ["--print"]:
        sys.stdout.write(reference_markdown())
        return
    write_text_atomic(REFERENCE, reference_markdown())
    print(f"wrote {REFERENCE.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
