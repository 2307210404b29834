"""Read a Keras `.h5` model file with h5py alone: the model config, the Keras version and every weight by name.

Handles files written by Keras 2 (standalone and tf.keras: `layer/kernel:0` names, `training_config`,
`optimizer_weights`) and Keras 3 (names without `:0`, `top_level_model_weights`). Attributes may be bytes or str;
long lists may be split into numbered attributes (`layer_names0`, `layer_names1`, ...).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import fileio
from conversion.json_config import parse_config_json
from errors import ConversionError, listed
from fileio import regular_file_size
from limits import (
    COMPRESSION_RATIO,
    MAX_HDF5_DEPTH,
    MAX_HDF5_OBJECTS,
    MAX_WEIGHT_BYTES,
    SMALL_DATA_BYTES,
    check_stored_size,
)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a regular model file; a ConversionError for anything else."""
    return fileio.file_sha256(path, ConversionError)


class ItemProblem(ValueError):
    """An item of an HDF5 file that is not what Keras writes (an attribute of the wrong type, a name that leads
    nowhere). Raised where the file's name is not known; each reader reports it as a ConversionError naming
    the file."""


def shown(name: str, most: int = 120) -> str:
    """A name from the file as a message shows it: forged names can be megabytes long."""
    return name if len(name) <= most else f"{name[: most // 2]}…{name[-most // 3 :]} ({len(name):,} characters)"


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _kind(value: Any) -> str:
    if isinstance(value, h5py.Empty):
        return "an empty value (HDF5 null dataspace)"
    if isinstance(value, np.ndarray):
        return f"an array of {value.dtype} with shape {value.shape}"
    if isinstance(value, (int, float, np.number, np.bool_)):
        return f"the number {shown(str(value), 40)} ({type(value).__name__})"
    return f"a value of type {type(value).__name__} ({shown(repr(value), 40)})"


def _attr_text(obj: h5py.HLObject, name: str) -> str | list[str]:
    """One attribute as str or list of str; numbers, nested arrays and empty values are refused, not guessed."""
    value = obj.attrs[name]
    if isinstance(value, (bytes, str)):
        return _text(value)
    if isinstance(value, np.ndarray) and value.size == 0 and value.ndim == 1:
        return []  # Keras writes an empty list as an empty float array
    if isinstance(value, np.ndarray) and value.ndim <= 1 and value.dtype.kind in "SUO":
        items = value.tolist()
        if value.ndim == 0 and isinstance(items, (bytes, str)):
            return _text(items)
        if value.ndim == 1 and all(isinstance(item, (bytes, str)) for item in items):
            return [_text(item) for item in items]
    raise ItemProblem(
        f"attribute '{shown(name)}' of '{shown(obj.name)}' holds {_kind(value)}, not text as Keras writes it"
    )


def read_attr(obj: h5py.HLObject, name: str) -> Any:
    """An attribute as str / list of str, joining Keras's numbered chunks (`name0`, `name1`, ...); None when
    absent. Any other type is an ItemProblem."""
    if name in obj.attrs:
        return _attr_text(obj, name)
    chunks: list[str] = []
    index = 0
    while f"{name}{index}" in obj.attrs:
        chunk = _attr_text(obj, f"{name}{index}")
        if not isinstance(chunk, list):
            raise ItemProblem(
                f"attribute '{name}{index}' of '{shown(obj.name)}' holds one text, not a list of "
                "names as Keras writes it"
            )
        chunks.extend(chunk)
        index += 1
    return chunks if index else None


def read_text(obj: h5py.HLObject, name: str) -> str | None:
    """An attribute that Keras writes as one text (model_config, keras_version, backend)."""
    value = read_attr(obj, name)
    if isinstance(value, list):
        raise ItemProblem(
            f"attribute '{name}' of '{shown(obj.name)}' holds a list of {len(value)} texts, not one "
            "text as Keras writes it"
        )
    return value


def read_names(obj: h5py.HLObject, name: str) -> list[str] | None:
    """An attribute that Keras writes as a list of names (layer_names, weight_names); a name twice is refused,
    so that no list makes the reader visit one item again and again."""
    value = read_attr(obj, name)
    if isinstance(value, str):
        raise ItemProblem(
            f"attribute '{name}' of '{shown(obj.name)}' holds one text, not a list of names as Keras writes it"
        )
    if value is not None and len(set(value)) != len(value):
        twice = sorted(item for item, count in Counter(value).items() if count > 1)
        raise ItemProblem(
            f"attribute '{name}' of '{shown(obj.name)}' names {listed([shown(t) for t in twice])} more than once"
        )
    return value


def check_self_contained(path: Path, root: h5py.Group) -> None:
    """Only the file's own bytes, in a tree of groups and datasets as Keras writes it, may become weights.

    Refused before anything is read: links into other files, datasets whose data lies in other files (external
    raw storage), virtual datasets; objects reached by two hard links (a group linked into itself would make
    every walk endless), named datatypes, soft links that lead to anything but a dataset of this file (a soft
    link to a dataset is an alias and is read as usual; its target is checked where it lies). The walk goes one
    group at a time, opening each child from its parent (h5py's visititems reopens every object by its full
    path, which a 3,000-level file makes quadratic), within MAX_HDF5_OBJECTS and MAX_HDF5_DEPTH."""
    outside: list[str] = []
    layout: list[str] = []
    links = 0
    pending = [(root, root.name.rstrip("/"), 0)]
    while pending:
        group, prefix, depth = pending.pop()
        for key in group:
            name = f"{prefix}/{key}"
            links += 1
            MAX_HDF5_OBJECTS.check(links, f"{path}: its groups, datasets and links", ConversionError)
            link = group.get(key, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                outside.append(f"'{shown(name)}' is a link into another file ({shown(link.filename)})")
                continue
            if isinstance(link, h5py.SoftLink):
                try:
                    target = group.get(key)
                except (KeyError, RuntimeError, OSError):  # a loop of soft links, a path through nothing
                    target = None
                if not isinstance(target, h5py.Dataset):
                    what = "nothing" if target is None else f"a {type(target).__name__}"
                    layout.append(
                        f"'{shown(name)}' is a soft link to '{shown(link.path)}', which is {what}, not a dataset"
                    )
                continue
            if not isinstance(link, h5py.HardLink):
                layout.append(f"'{shown(name)}' is a {type(link).__name__}")
                continue
            child = group[key]
            if h5py.h5o.get_info(child.id).rc > 1:
                layout.append(f"'{shown(name)}' is an object linked from more than one place")
            elif isinstance(child, h5py.Dataset):
                if child.external:
                    outside.append(
                        f"dataset '{shown(name)}' keeps its data in another file ({shown(_text(child.external[0][0]))})"
                    )
                if child.is_virtual:
                    outside.append(f"dataset '{shown(name)}' is a virtual dataset, made of data elsewhere")
            elif isinstance(child, h5py.Group):
                MAX_HDF5_DEPTH.check(depth + 1, f"{path}: group '{shown(name)}'", ConversionError, " levels")
                pending.append((child, name, depth + 1))
            else:
                layout.append(f"'{shown(name)}' is a {type(child).__name__}, neither a group nor a dataset")
    if outside:
        also = f"; it also {_layout_text(layout)}" if layout else ""
        raise ConversionError(
            f"{path}: holds data that is not stored in the file itself: {listed(outside)}{also}. "
            "Only the file's own bytes can become a model's weights. Nothing was written."
        )
    if layout:
        raise ConversionError(
            f"{path}: {_layout_text(layout)}; Keras writes each group and dataset once, under "
            "one name. Nothing was written."
        )


def _layout_text(layout: list[str]) -> str:
    return f"is not a tree of groups and datasets as Keras writes it: {listed(layout)}"


class WeightReader:
    """Reads the weight datasets of one HDF5 file, each only after checking what it declares: an array of
    numbers, data inside the file, a declared size within the compression ratio of what it stores (or small).
    Thousands of small, highly compressed datasets would pass one by one, so the small ones beyond the ratio
    share one SMALL_DATA_BYTES per file, and all weights read so far stay within the compression ratio of the
    whole file; all within MAX_WEIGHT_BYTES, and at most MAX_HDF5_OBJECTS datasets read."""

    def __init__(self, path: Path, file_bytes: int):
        self.path, self.file_bytes = path, file_bytes
        self.total = self.compressed = self.count = self.visited = 0

    def read(self, dataset: Any, name: str) -> np.ndarray:
        subject = f"{self.path}: weight '{shown(name)}'"
        if not isinstance(dataset, h5py.Dataset):
            raise ConversionError(
                f"{subject} is a {type(dataset).__name__}, not a dataset of numbers. Nothing was written."
            )
        if dataset.shape is None:
            raise ConversionError(
                f"{subject} holds no data (an HDF5 null dataspace, h5py.Empty), not an array of "
                "numbers. Nothing was written."
            )
        if dataset.dtype.kind == "V" and dataset.dtype.itemsize == 2:  # how Keras stores bfloat16 variables
            raise ConversionError(
                f"{subject} is stored as bfloat16 (a 2-byte opaque HDF5 type): its layer computes in bfloat16 "
                "in Keras, which a float32 module does not reproduce. Rebuild the model under the float32 policy, "
                "load these weights into it and save that copy. Nothing was written."
            )
        if dataset.dtype.kind not in "fiub":
            raise ConversionError(f"{subject} is stored as {dataset.dtype}, not as real numbers. Nothing was written.")
        self.count += 1
        MAX_HDF5_OBJECTS.check(self.count, f"{self.path}: its weight datasets read", ConversionError)
        declared = math.prod(dataset.shape) * dataset.dtype.itemsize
        offset = dataset.id.get_offset()
        if offset is not None and offset + declared > self.file_bytes:
            raise ConversionError(
                f"{subject}: its data would lie beyond the end of the file ({self.file_bytes} "
                "bytes): the file is truncated or forged. Nothing was written."
            )
        stored = dataset.id.get_storage_size()
        check_stored_size(declared, stored, subject, ConversionError)
        if declared > stored * COMPRESSION_RATIO.value:  # allowed because small: the allowance is one per file
            self.compressed += declared
            SMALL_DATA_BYTES.check(
                self.compressed,
                f"{self.path}: its weights stored compressed beyond a ratio of "
                f"{COMPRESSION_RATIO.value:g}, together up to '{shown(name)}'",
                ConversionError,
                "bytes",
            )
        self.total += declared
        MAX_WEIGHT_BYTES.check(self.total, f"{self.path}: its weights", ConversionError, "bytes")
        check_stored_size(
            self.total,
            self.file_bytes,
            f"{self.path}: its weights up to '{shown(name)}' together, against the size of the file",
            ConversionError,
        )
        return dataset[()]

    def datasets_below(self, group: h5py.Group) -> list[str]:
        """Names (relative to `group`) of the datasets below it by hard links, walked one group at a time; all
        walks of one reader together within MAX_HDF5_OBJECTS, so that nested layer names cannot make the
        reader walk the file again and again."""
        found: list[str] = []
        pending = [(group, "")]
        while pending:
            parent, prefix = pending.pop()
            for key in parent:
                self.visited += 1
                MAX_HDF5_OBJECTS.check(
                    self.visited, f"{self.path}: the groups and datasets below its layers", ConversionError
                )
                if not isinstance(parent.get(key, getlink=True), h5py.HardLink):
                    continue
                child = parent[key]
                if isinstance(child, h5py.Dataset):
                    found.append(prefix + key)
                elif isinstance(child, h5py.Group):
                    pending.append((child, f"{prefix}{key}/"))
        return found


def normalize_weight_name(name: str) -> str:
    """`layer_1/kernel:0` → `layer_1/kernel`: the Keras 2 suffix carries no information."""
    return name[:-2] if name.endswith(":0") else name


@dataclass
class KerasModelFile:
    path: Path
    sha256: str
    keras_version: str
    backend: str
    model_config: dict[str, Any]
    # layer name -> {normalized weight name: array}, in the file's order
    weights: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # layer name -> datasets stored in its group but missing from its `weight_names`
    unlisted: dict[str, list[str]] = field(default_factory=dict)
    # True for `save_weights` files: model_config was built from the params pickle's architecture_dict
    weights_only: bool = False
    # layer name -> how its activation, stored as a Python function, was resolved (conversion.lambdas)
    resolved_activations: dict[str, Any] = field(default_factory=dict)
    # a model given as to_json() text (`path`) and a save_weights file: the latter (conversion.json_model)
    weights_path: Path | None = None
    weights_sha256: str | None = None

    @property
    def keras_major(self) -> int:
        try:
            return int(self.keras_version.split(".")[0])
        except ValueError:
            return 2


def read_keras_h5(path: str | Path) -> KerasModelFile:
    """Parse a full-model `.h5`; every failure is a ConversionError naming the file."""
    path = Path(path)
    regular_file_size(path, ConversionError, "Keras model file")
    try:
        with h5py.File(path, "r") as f:
            check_self_contained(path, f)
            return _read_open_file(path, f)
    except ConversionError:
        raise
    except ItemProblem as exc:
        raise ConversionError(f"{path}: {exc}. Nothing was written.") from None
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:  # h5py's errors on damaged files
        raise ConversionError(
            f"{path}: cannot be read as a Keras HDF5 model file ({type(exc).__name__}: {exc}). "
            "The file may be truncated, empty or of another format."
        ) from exc


def _read_open_file(path: Path, f: h5py.File) -> KerasModelFile:
    config_text = read_text(f, "model_config")
    if config_text is None:
        kind = (
            "a weights-only file (saved with save_weights): it has layer groups but no architecture"
            if read_names(f, "layer_names")
            else "an HDF5 file without a Keras model"
        )
        raise ConversionError(
            f"{path}: no 'model_config' attribute: this is {kind}. Save the whole model with model.save(...)."
        )
    model_config = parse_config_json(config_text, f"{path}: the 'model_config' attribute")
    if not isinstance(model_config, dict):
        raise ConversionError(
            f"{path}: the 'model_config' attribute holds a JSON {type(model_config).__name__}, not a model description."
        )
    weights_root = f["model_weights"] if "model_weights" in f else None
    if not isinstance(weights_root, h5py.Group):
        raise ConversionError(f"{path}: has a model_config but no 'model_weights' group; the file is incomplete.")
    keras_version = read_text(f, "keras_version") or read_text(weights_root, "keras_version") or "unknown"
    backend = read_text(f, "backend") or read_text(weights_root, "backend") or "unknown"
    weights, unlisted = read_layer_groups(weights_root, WeightReader(path, path.stat().st_size))
    return KerasModelFile(
        path=path,
        sha256=file_sha256(path),
        keras_version=keras_version,
        backend=backend,
        model_config=model_config,
        weights=weights,
        unlisted=unlisted,
    )


def read_layer_groups(
    weights_root: h5py.Group, reader: WeightReader
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, list[str]]]:
    """The Keras 2 / legacy layout (`layer_names`, one group per layer with `weight_names`): weights by layer
    name, and the datasets stored in a layer's group but not listed in its `weight_names`. A name that leads to
    no group or dataset, or a group listed twice under two spellings, is an ItemProblem."""
    weights, unlisted = {}, {}
    groups_seen: set[str] = set()
    for layer_name in read_names(weights_root, "layer_names") or []:
        group = _member(weights_root, layer_name, "layer_names")
        if not isinstance(group, h5py.Group):
            raise ItemProblem(
                f"'layer_names' of '{weights_root.name}' names '{shown(layer_name)}', which is a "
                f"{type(group).__name__}, not a layer's group"
            )
        if group.name in groups_seen:  # the file is a tree (check_self_contained): one object, one name
            raise ItemProblem(
                f"'layer_names' of '{weights_root.name}' names the group '{shown(group.name)}' twice "
                f"(again as '{shown(layer_name)}')"
            )
        groups_seen.add(group.name)
        names = read_names(group, "weight_names") or []
        weights[layer_name] = {
            normalize_weight_name(n): reader.read(_member(group, n, "weight_names"), f"{layer_name}/{n}") for n in names
        }
        extra = sorted(set(reader.datasets_below(group)) - set(names))
        if extra:
            unlisted[layer_name] = extra
    return weights, unlisted


def _member(group: h5py.Group, name: str, listed_in: str) -> Any:
    """The object `name` (listed in the attribute `listed_in` of `group`) leads to; a name that leads nowhere
    is an ItemProblem naming both."""
    try:
        found = group.get(name) if name else None
    except (KeyError, ValueError, RuntimeError, OSError):
        found = None
    if found is None:
        raise ItemProblem(f"'{listed_in}' of '{shown(group.name)}' names '{shown(name)}', which the file does not hold")
    return found
