"""Hostile HDF5 files through the real converter: deep or wide group trees, hard-link cycles, named datatypes,
soft links that lead to no dataset, thousands of small compressed weights, and attributes or datasets of the
wrong kind. Each is generated from a real saved Keras model (the `keras_files` fixture) and must be refused
with exit 8 and one `error:` paragraph naming the file and the item, quickly, in bounded memory, nothing
written; the legitimate variants must convert.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from errors import OUT_OF_MEMORY_EXIT, failure_report, listed
from tests.reliability import hostile
from tests.reliability.test_hostile import converter_refuses

CONVERTER = "model_converter.py"


def converts(source: Path, env: dict | None = None) -> hostile.Limited:
    result = hostile.run_limited([CONVERTER, str(source), str(source.with_suffix(".pth"))], env_extra=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert source.with_suffix(".pth").is_file()
    return result


def variant(model: Path, tag: str, edit: Callable[[h5py.File], None]) -> Path:
    return hostile.edited(model, model.parent / f"{tag}.h5", edit)


def nested_groups(levels: int) -> Callable[[h5py.File], None]:
    def edit(h5):
        group = h5["model_weights/layer_1"]
        for _ in range(levels):
            group = group.create_group("d")

    return edit


# ---- the walk over the file's tree ---------------------------------------------------------------------------


def test_thousands_of_nested_groups_are_refused_at_the_depth_limit(model):
    """3,000 levels took h5py's visititems minutes (each object reopened by its full path)."""
    source = variant(model, "deep", nested_groups(3000))
    message = converter_refuses(source, "levels", "NEURON_TCN_MAX_HDF5_DEPTH")
    assert "'/model_weights/layer_1/d/d" in message and "characters)" in message  # the long name shortened


def test_the_walk_is_linear_when_the_depth_limit_is_raised(model):
    source = variant(model, "deep_allowed", nested_groups(3000))
    result = converts(source, env={"NEURON_TCN_MAX_HDF5_DEPTH": "1e9"})
    assert result.seconds < 30, f"{result.seconds:.0f} s for 3,000 empty levels"


def test_a_file_of_too_many_objects_is_refused(model):
    def edit(h5):
        group = h5["model_weights/layer_1"]
        for index in range(1200):
            group.create_group(f"g{index}")

    source = variant(model, "wide", edit)
    converter_refuses(
        source,
        "its groups, datasets and links",
        "NEURON_TCN_MAX_HDF5_OBJECTS",
        env={"NEURON_TCN_MAX_HDF5_OBJECTS": "1000"},
    )


@pytest.mark.parametrize(
    "tag, edit, fragment",
    [
        (
            "hard_cycle",
            lambda h5: h5["model_weights/layer_1"].__setitem__("up", h5["model_weights"]),
            "'/model_weights' is an object linked from more than one place",
        ),
        (
            "root_cycle",
            lambda h5: h5["model_weights/spikes"].__setitem__("root", h5["/"]),
            "'/model_weights/spikes/root' is an object linked from more than one place",
        ),
        (
            "hard_twice",
            lambda h5: h5.__setitem__("copy", h5[hostile.weight_path(h5, "layer_1", "bias")]),
            "'/copy' is an object linked from more than one place",
        ),
        (
            "named_type",
            lambda h5: h5["model_weights/layer_1"].__setitem__("type", np.dtype("f4")),
            "'/model_weights/layer_1/type' is a Datatype, neither a group nor a dataset",
        ),
        (
            "soft_to_group",
            lambda h5: h5["model_weights/layer_1"].__setitem__("up", h5py.SoftLink("/model_weights")),
            "is a soft link to '/model_weights', which is a Group, not a dataset",
        ),
        (
            "soft_dangling",
            lambda h5: h5["model_weights/layer_1"].__setitem__("gone", h5py.SoftLink("/nowhere")),
            "is a soft link to '/nowhere', which is nothing",
        ),
        (
            "soft_loop",
            lambda h5: h5["model_weights/layer_1"].__setitem__("me", h5py.SoftLink("/model_weights/layer_1/me")),
            "which is nothing, not a dataset",
        ),
    ],
)
def test_what_is_not_a_tree_of_groups_and_datasets_is_refused(model, tag, edit, fragment):
    converter_refuses(variant(model, tag, edit), "is not a tree of groups and datasets as Keras writes it", fragment)


def test_a_long_list_of_problems_names_five(model):
    def edit(h5):
        for index in range(20):
            h5[f"model_weights/out_{index:02d}"] = h5py.ExternalLink("/etc/passwd", "/x")

    message = converter_refuses(
        variant(model, "many_links", edit), "not stored in the file itself", "out_04", "and 15 more"
    )
    assert "out_05" not in message and message.count("is a link into another file") == 5


# ---- many small compressed weights -------------------------------------------------------------------------


def test_many_small_compressed_weights_are_refused_together(model):
    """Each 1 MB dataset of zeros is under SMALL_DATA_BYTES, so it may be compressed beyond the ratio; 300 of them
    declared 300 MB in a file of about a megabyte. The allowance is one per file: the second is refused."""

    def edit(h5):
        group = h5["model_weights/layer_1"]
        names = _weight_names(h5)
        zeros = np.zeros(250_000, "f4")
        for index in range(300):
            name = f"layer_1/filler_{index}:0"
            group.create_dataset(name, data=zeros, compression="gzip", chunks=zeros.shape)
            names.append(name.encode())
        group.attrs["weight_names"] = np.array(names)

    source = variant(model, "many_small", edit)
    assert source.stat().st_size < 5 << 20
    result_message = converter_refuses(
        source,
        "its weights stored compressed beyond a ratio of 50, together up to 'layer_1/layer_1/filler_1:0'",
        "declares 2 MB",
        "NEURON_TCN_SMALL_DATA_BYTES",
    )
    assert "filler_2" not in result_message


# ---- attributes and datasets of the wrong kind -------------------------------------------------------------


def _set_attr(path: str, name: str, value) -> Callable[[h5py.File], None]:
    def edit(h5):
        h5[path].attrs[name] = value

    return edit


def _kernel(data) -> Callable[[h5py.File], None]:
    def edit(h5):
        hostile.replace_dataset(h5, hostile.weight_path(h5, "layer_1", "kernel"), data=data)

    return edit


def _kernel_as(dtype: str) -> Callable[[h5py.File], None]:
    def edit(h5):
        name = hostile.weight_path(h5, "layer_1", "kernel")
        hostile.replace_dataset(h5, name, data=h5[name][()].astype(dtype))

    return edit


def _names(h5: h5py.File, path: str, attr: str) -> list[bytes]:
    return [n if isinstance(n, bytes) else n.encode() for n in h5[path].attrs[attr]]


def _weight_names(h5: h5py.File) -> list[bytes]:
    return _names(h5, "model_weights/layer_1", "weight_names")


PERTURBATIONS = [
    ("null_dataspace", _kernel(h5py.Empty("f4")), "weight 'layer_1/", "holds no data (an HDF5 null dataspace"),
    (
        "keras_version_int",
        _set_attr("/", "keras_version", 3),
        "attribute 'keras_version' of '/' holds",
        "not text as Keras writes it",
    ),
    (
        "keras_version_list",
        _set_attr("/", "keras_version", np.array([b"3", b"1"])),
        "attribute 'keras_version' of '/' holds a list of 2 texts",
    ),
    ("model_config_float", _set_attr("/", "model_config", 1.5), "attribute 'model_config' of '/' holds"),
    (
        "layer_names_ints",
        _set_attr("model_weights", "layer_names", np.arange(4)),
        "attribute 'layer_names' of '/model_weights' holds an array of int64",
    ),
    (
        "layer_names_one_text",
        _set_attr("model_weights", "layer_names", "layer_1"),
        "attribute 'layer_names' of '/model_weights' holds one text",
    ),
    (
        "layer_names_missing",
        lambda h5: h5["model_weights"].attrs.__setitem__(
            "layer_names", np.array([*_names(h5, "model_weights", "layer_names"), b"no_such_layer"])
        ),
        "'layer_names' of '/model_weights' names 'no_such_layer', which the file does not hold",
    ),
    (
        "layer_names_twice",
        lambda h5: h5["model_weights"].attrs.__setitem__("layer_names", np.array([b"layer_1", b"layer_1"])),
        "names layer_1 more than once",
    ),
    (
        "layer_names_alias",
        lambda h5: h5["model_weights"].attrs.__setitem__("layer_names", np.array([b"layer_1", b"./layer_1"])),
        "names the group '/model_weights/layer_1' twice (again as './layer_1')",
    ),
    (
        "layer_names_dataset",
        lambda h5: (
            h5["model_weights"].create_dataset("plain", data=np.ones(3, "f4")),
            h5["model_weights"].attrs.__setitem__("layer_names", np.array([b"plain"])),
        ),
        "names 'plain', which is a Dataset, not a layer's group",
    ),
    (
        "weight_names_floats",
        _set_attr("model_weights/layer_1", "weight_names", np.ones(2)),
        "attribute 'weight_names' of '/model_weights/layer_1' holds an array of float64",
    ),
    (
        "weight_names_missing",
        lambda h5: h5["model_weights/layer_1"].attrs.__setitem__(
            "weight_names", np.array([*_weight_names(h5), b"layer_1/nothing:0"])
        ),
        "'weight_names' of '/model_weights/layer_1' names 'layer_1/nothing:0', which the file does not hold",
    ),
    (
        "weight_names_group",
        lambda h5: h5["model_weights/layer_1"].attrs.__setitem__(
            "weight_names", np.array([*_weight_names(h5), b"layer_1"])
        ),
        "weight 'layer_1/layer_1' is a Group, not a dataset of numbers",
    ),
]


@pytest.mark.parametrize(
    "tag, edit, fragments", [(p[0], p[1], p[2:]) for p in PERTURBATIONS], ids=[p[0] for p in PERTURBATIONS]
)
def test_items_of_the_wrong_kind_get_a_clean_refusal(model, tag, edit, fragments):
    converter_refuses(variant(model, tag, edit), *fragments)


@pytest.mark.parametrize("dtype", ["float16", "float64", "int32", "uint8", "bool"])
def test_real_weights_of_any_width_convert(model, dtype):
    """Keras writes some weights as integers or booleans (keras-tcn's weight-norm `initialized`): real numbers
    of any kind are read, widened exactly where they fit float32."""
    converts(variant(model, f"kernel_{dtype}", _kernel_as(dtype)))


# ---- memory exhausted, long lists ----------------------------------------------------------------------------


def test_memory_exhausted_is_one_paragraph_and_its_own_exit_code():
    message, code = failure_report(MemoryError(), "converting m.h5")
    assert code == OUT_OF_MEMORY_EXIT and code not in (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 130, 143)
    assert message.startswith("error: out of memory while converting m.h5") and "\n" not in message


def test_a_layer_converter_running_out_of_memory_is_not_a_layer_problem(keras_files, monkeypatch):
    """The per-layer `except Exception` turns a converter's failure into that layer's problem; a MemoryError
    must reach the entry point instead, which gives it exit 12."""
    import conversion.converter as converter
    from conversion.model_file import read_model_file

    def exhausted(layer):
        raise MemoryError("simulated")

    keras_file = read_model_file(keras_files / "tcn.h5")
    monkeypatch.setattr(converter, "find_converter", lambda class_name: exhausted)
    with pytest.raises(MemoryError):
        converter.build_conversion(keras_file, None)


def test_listed_names_a_few_and_counts_the_rest():
    assert listed([]) == ""
    assert listed(["a", "b"]) == "a, b"
    assert listed([str(i) for i in range(17)]) == "0, 1, 2, 3, 4 and 12 more"
    assert listed(iter("abc"), most=2, separator="; ") == "a; b and 1 more"
