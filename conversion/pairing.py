"""Which files make one model: the one rule folder conversion and main.py's results table both follow.

A model is a stem: `<stem>.h5` (full model, or Keras 2 `save_weights`), `<stem>.keras` (Keras 3 archive) or
`<stem>.weights.h5` (Keras 3 `save_weights`), with its training parameters in `<stem>.pickle`, and PyTorch
files `<stem>.pth`, `<stem>.pt` or `<stem>_converted.pth`. Only regular files count (no FIFOs, sockets or
devices), and hidden files never do (our temporaries and locks).
"""

from __future__ import annotations

from pathlib import Path

KERAS_SUFFIXES = (".h5", ".keras")  # `.weights.h5` ends in `.h5`
WEIGHTS_SUFFIX = ".weights"
PARAMS_SUFFIX = ".pickle"
CONVERTED_SUFFIX = "_converted"
CONVERTED_INFO_SUFFIX = "_converted_info"


def model_stem(source: str | Path) -> str:
    """The model's name in a Keras file name: `x.h5`, `x.keras` and `x.weights.h5` are all model `x`."""
    return Path(source).stem.removesuffix(WEIGHTS_SUFFIX)


def is_candidate_file(path: Path) -> bool:
    """A regular, visible file (a FIFO or device is never opened: reading it could block or never end)."""
    return not path.name.startswith(".") and path.is_file()


def _sibling(stem_path: Path, suffix: str) -> Path:
    return stem_path.with_name(stem_path.name + suffix)  # not with_suffix: stems may contain dots


def keras_files_for(stem_path: Path) -> list[Path]:
    """The Keras files of the model `stem_path` (a folder joined with a stem), in the order they are tried."""
    return [
        p
        for p in (
            _sibling(stem_path, ".h5"),
            _sibling(stem_path, ".keras"),
            _sibling(stem_path, WEIGHTS_SUFFIX + ".h5"),
        )
        if is_candidate_file(p)
    ]


def pytorch_candidates(stem_path: Path) -> list[Path]:
    """The PyTorch files that may belong to the model, in the order they are tried."""
    return [
        p
        for p in (
            _sibling(stem_path, ".pth"),
            _sibling(stem_path, ".pt"),
            _sibling(stem_path, CONVERTED_SUFFIX + ".pth"),
        )
        if is_candidate_file(p)
    ]


def params_pickle_for(source: Path) -> Path | None:
    """The training parameters pickle beside a Keras file, when there is one."""
    params = source.with_name(model_stem(source) + PARAMS_SUFFIX)
    return params if is_candidate_file(params) else None


def default_output_path(source: str | Path) -> Path:
    """`<stem>_converted.pth` beside the Keras file (`x.h5`, `x.keras`, `x.weights.h5` → `x_converted.pth`)."""
    return Path(source).with_name(f"{model_stem(source)}{CONVERTED_SUFFIX}.pth")


def info_path_for(pth_path: str | Path) -> Path:
    """The info pickle of a converted `.pth`: `<name>_info.pickle` beside it."""
    pth_path = Path(pth_path)
    return pth_path.with_name(pth_path.stem + "_info" + PARAMS_SUFFIX)


def find_keras_models(folder: Path) -> list[Path]:
    """The Keras model files in `folder`, by name."""
    return sorted(p for p in folder.iterdir() if p.suffix in KERAS_SUFFIXES and is_candidate_file(p))


def find_params_pickles(folder: Path) -> list[Path]:
    """The training parameters pickles in `folder` (converter info pickles excluded), by name."""
    return sorted(
        p
        for p in folder.glob("*" + PARAMS_SUFFIX)
        if not p.stem.endswith(CONVERTED_INFO_SUFFIX) and is_candidate_file(p)
    )
