"""keras-tcn's `TCN` layer (`TCN` in Keras 2 files, `Custom>TCN` in Keras 3 files) → models.keras_tcn.KerasTCN.

The file holds only the TCN's own config; its inner layers (convs, norms) are rebuilt from it as keras-tcn
builds them, and every weight is found by name inside `residual_block_<b>/`:

- convs: `conv1D_0`, `conv1D_1` and, where the block changes the channel count, `matching_conv1D`;
- norms: Keras 2 files name them by keras-tcn's name scopes (`norm_0`, `norm_1`); Keras 3 files by Keras's
  global counter (`batch_normalization_6`, `layer_normalization_7`, ...) — the lower number is the first stage;
- weight normalization (keras-tcn ≤ 3.4, tensorflow_addons' WeightNormalization around each dilated conv):
  `conv1D_k/g`, `conv1D_k/kernel` (the direction v), `conv1D_k/bias`, `conv1D_k/initialized` and the unused
  copy `conv1D_k/data_dep_init/{kernel,bias}`. It is folded into a plain kernel g · v / ||v|| (norm over the
  kernel's positions and input channels, per output channel, as tf.nn.l2_normalize computes it).

- tf_keras's `.weights.h5` layout stores no sublayer names: blocks are `residual_block`, `residual_block_1`, ...
  and their convs `conv1d`, `conv1d_1`, `shape_match_conv` (named by class and attribute); they are read as the
  names above.

Anything else — a missing, ambiguous or unexpected weight, a wrong shape, an option keras-tcn does not have —
is a LayerProblem, so the conversion stops instead of guessing.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from conversion.families.activations import layer_activation
from conversion.families.common import refuse_unknown_options, single
from conversion.registry import ConvertedLayer, KerasLayer, LayerProblem, WeightBag, register_layer_converter

# tf.nn.l2_normalize's floor on the squared norm, used by WeightNormalization.
L2_NORMALIZE_EPSILON = 1e-12
# The config keys keras-tcn (3.5.7 and the older versions with use_weight_norm) writes, and Keras's own.
TCN_CONFIG_KEYS = {
    "nb_filters",
    "kernel_size",
    "nb_stacks",
    "dilations",
    "padding",
    "use_skip_connections",
    "dropout_rate",
    "return_sequences",
    "activation",
    "kernel_initializer",
    "use_batch_norm",
    "use_layer_norm",
    "use_weight_norm",
    "go_backwards",
    "return_state",
}
STAGE_SCOPE = re.compile(r"norm_(\d+)")  # Keras 2: keras-tcn's name scope
NORM_LAYER_NAME = re.compile(r"(?:batch|layer)_normalization(?:_(\d+))?")  # Keras 3: Keras's own layer names
# tf_keras's .weights.h5 layout: sublayers named by class (per-list counters) and attribute
OBJECT_LAYOUT_BLOCK = re.compile(r"(^|/)residual_block(?:_(\d+))?/")
OBJECT_LAYOUT_CONV = re.compile(r"/conv1d(?:_(\d+))?/")


@register_layer_converter("TCN")
def convert_keras_tcn(layer: KerasLayer) -> ConvertedLayer:
    c = layer.config
    refuse_unknown_options(c, TCN_CONFIG_KEYS, "keras-tcn")
    padding = str(c.get("padding", "causal"))
    if padding not in ("causal", "same"):
        raise LayerProblem(f"padding {padding!r} is not one keras-tcn supports ('causal', 'same')")
    dilations = [int(d) for d in c.get("dilations", (1, 2, 4, 8, 16, 32))]
    nb_filters = _filters_per_dilation(c.get("nb_filters", 64), len(dilations))
    use_skip_connections = bool(c.get("use_skip_connections", True))
    if use_skip_connections and len(set(nb_filters)) > 1:
        raise LayerProblem(f"skip connections need equal filter counts, got nb_filters={nb_filters}")
    norm = _norm_kind(c)
    kernel_size = single(c.get("kernel_size", 3), "kernel_size")
    nb_stacks = int(c.get("nb_stacks", 1))
    if nb_stacks < 1 or not dilations:
        raise LayerProblem(f"no residual blocks (nb_stacks={nb_stacks}, dilations={dilations})")

    params: dict[str, np.ndarray] = {}
    channels = None
    bag = layer.weights
    if any(OBJECT_LAYOUT_BLOCK.search(name) and "/residual_block/" in f"/{name}" for name in bag.leftovers()):
        bag = bag.renamed(_block_layout_name)
    for block in range(nb_stacks * len(dilations)):
        filters = nb_filters[block % len(dilations)]
        channels = _take_block(
            bag, block, channels, filters, kernel_size, norm, bool(c.get("use_weight_norm", False)), params
        )
    in_channels = int(params["blocks.0.convs.0.weight"].shape[1])
    return ConvertedLayer(
        "keras_tcn",
        {
            "in_channels": in_channels,
            "nb_filters": nb_filters,
            "kernel_size": kernel_size,
            "nb_stacks": nb_stacks,
            "dilations": dilations,
            "padding": padding,
            "use_skip_connections": use_skip_connections,
            "return_sequences": bool(c.get("return_sequences", False)),
            "activation": layer_activation(layer, default="relu"),
            "norm": norm,
            "go_backwards": bool(c.get("go_backwards", False)),
        },
        params,
    )


def _block_layout_name(name: str) -> str:
    """A weight name of tf_keras's `.weights.h5` layout as the `.h5` layouts name it."""
    name = OBJECT_LAYOUT_BLOCK.sub(lambda m: f"{m.group(1)}residual_block_{m.group(2) or 0}/", name)
    name = OBJECT_LAYOUT_CONV.sub(lambda m: f"/conv1D_{m.group(1) or 0}/", name)
    return name.replace("/shape_match_conv/", "/matching_conv1D/")


def _filters_per_dilation(value: Any, n_dilations: int) -> list[int]:
    if isinstance(value, (list, tuple)):
        if len(value) != n_dilations:
            raise LayerProblem(f"nb_filters {list(value)} does not give one count per dilation ({n_dilations})")
        return [int(v) for v in value]
    return [int(value)] * n_dilations


def _norm_kind(c: dict[str, Any]) -> str | None:
    chosen = [
        name
        for key, name in (("use_batch_norm", "batch"), ("use_layer_norm", "layer"), ("use_weight_norm", "weight"))
        if c.get(key)
    ]
    if len(chosen) > 1:
        raise LayerProblem(f"more than one normalization is switched on ({', '.join(chosen)}); keras-tcn allows one")
    return chosen[0] if chosen and chosen[0] != "weight" else None


def _take_block(
    bag: WeightBag,
    block: int,
    channels: int | None,
    filters: int,
    kernel_size: int,
    norm: str | None,
    weight_norm: bool,
    params: dict[str, np.ndarray],
) -> int:
    """Take one residual block's weights into `params` (`channels`: its input width, None for the first
    block); returns the block's output width."""
    scope, key = f"residual_block_{block}", f"blocks.{block}"
    for stage in range(2):
        conv = f"{scope}/conv1D_{stage}"
        stage_in = channels if stage == 0 else filters  # None: the TCN's input width, read from the kernel
        kernel = (
            _folded_kernel(bag, conv, kernel_size, stage_in, filters)
            if weight_norm
            else bag.take(f"{conv}/kernel", (kernel_size, stage_in, filters))
        )
        if stage == 0:
            channels = kernel.shape[1]
        params[f"{key}.convs.{stage}.weight"] = kernel.transpose(2, 1, 0).copy()
        params[f"{key}.convs.{stage}.bias"] = bag.take(f"{conv}/bias", (filters,))
    if channels != filters:
        params[f"{key}.matching.weight"] = (
            bag.take(f"{scope}/matching_conv1D/kernel", (1, channels, filters)).transpose(2, 1, 0).copy()
        )
        params[f"{key}.matching.bias"] = bag.take(f"{scope}/matching_conv1D/bias", (filters,))
    if norm is not None:
        for stage, sublayer in enumerate(_norm_sublayers(bag, scope)):
            _take_norm(bag, f"{scope}/{sublayer}", norm, filters, f"{key}.norms.{stage}", params)
    return filters


def _folded_kernel(bag: WeightBag, conv: str, kernel_size: int, channels: int | None, filters: int) -> np.ndarray:
    """tensorflow_addons' WeightNormalization: kernel = g · v / ||v||, refused if never initialized."""
    initialized = bag.take(f"{conv}/initialized", ())
    if not initialized:
        raise LayerProblem(
            f"the weight normalization of '{conv}' was never initialized: Keras would set its "
            "g and bias from the first batch it sees, so the file alone does not fix the model"
        )
    direction = bag.take(f"{conv}/kernel", (kernel_size, channels, filters)).astype(np.float64)
    scale = bag.take(f"{conv}/g", (filters,)).astype(np.float64)
    for unused in ("kernel", "bias"):  # the wrapper's data-init clone: a stale copy, not used at inference
        if bag.has(f"{conv}/data_dep_init/{unused}"):
            bag.take(f"{conv}/data_dep_init/{unused}")
    squared_norm = np.maximum(np.sum(direction**2, axis=(0, 1)), L2_NORMALIZE_EPSILON)
    return (direction / np.sqrt(squared_norm) * scale).astype(np.float32)


def _norm_sublayers(bag: WeightBag, scope: str) -> list[str]:
    """The two norm sublayers of a block (paths inside it), first stage first."""
    prefix = f"{scope}/"
    sublayers = set()
    for name in bag.leftovers():
        start = name.find(prefix)
        if start >= 0 and (start == 0 or name[start - 1] == "/"):
            sublayers.add(name[start + len(prefix) :].rsplit("/", 1)[0])
    order: dict[str, int] = {}
    for sublayer in sublayers:
        parts = sublayer.split("/")
        stage = next((int(m.group(1)) for p in parts if (m := STAGE_SCOPE.fullmatch(p))), None)
        numbered = next((int(m.group(1) or 0) for p in parts if (m := NORM_LAYER_NAME.fullmatch(p))), None)
        rank = stage if stage is not None else numbered
        if rank is None:
            raise LayerProblem(f"'{scope}' holds weights of an unexpected sublayer '{sublayer}'")
        order[sublayer] = rank
    if len(order) != 2 or len(set(order.values())) != 2:
        raise LayerProblem(f"'{scope}' should hold two normalization sublayers, found {sorted(order) or 'none'}")
    return sorted(order, key=order.__getitem__)


def _take_norm(bag: WeightBag, path: str, norm: str, size: int, key: str, params: dict[str, np.ndarray]) -> None:
    params[f"{key}.weight"] = bag.take(f"{path}/gamma", (size,))
    params[f"{key}.bias"] = bag.take(f"{path}/beta", (size,))
    if norm == "batch":
        params[f"{key}.running_mean"] = bag.take(f"{path}/moving_mean", (size,))
        params[f"{key}.running_var"] = bag.take(f"{path}/moving_variance", (size,))
