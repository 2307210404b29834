#!/usr/bin/env python
"""Convert Keras neuron TCNs to PyTorch exactly, or refuse with a clear message.

    python model_converter.py model.h5 [model_params.pickle] [out.pth] [--verify] [--force] [EXPORT OPTIONS]
    python model_converter.py model.json weights.h5 [model_params.pickle] [out.pth] [...]
    python model_converter.py MODELS_DIR [--output-dir DIR] [--jobs N] [--verify] [--force] [EXPORT OPTIONS]
    EXPORT OPTIONS: [--dtype float16|bfloat16] [--quantize int8] [--prune FRACTION [--prune-scope global]]
                    [--max-error BOUND]

Writes `<stem>_converted.pth` beside the input (or OUT.pth, or in --output-dir) and
`<stem>_converted_info.pickle` with the conversion record. A model saved as `model.to_json()` text plus
`save_weights(...)` (Keras 2 `.h5`, Keras 3 `.weights.h5`) is given as both files. Without PARAMS.pickle, the `<stem>.pickle` beside the
model is used when there is one. Reading needs neither TensorFlow nor Keras; `--verify` compares with Keras when
installed. A model whose converted file is current (it records the source's sha256, this format version and the
requested export) is not converted again unless --force. A folder: every *.h5 and *.keras in it (with its
sibling <stem>.pickle), in parallel processes.

The export options store a smaller model: half-precision floats, int8 weights with a scale per output channel,
pruned (sparse) weights. Each is made from the exact float32 conversion (verified first with --verify), and its
cost against it — per output max/mean abs diff, and for a spike output the AUC and the trials crossing 0.5 — is
measured on a fixed input set, printed and recorded in the info pickle; --max-error refuses an export whose
error (max abs diff ÷ max(1, largest |output|)) exceeds the bound.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from errors import ConversionError, quiet_interrupts_while_importing, run_entry_point
from version import VERSION

with quiet_interrupts_while_importing(__name__ == "__main__"):
    import numpy as np
    from pydantic import ValidationError
    from torch import nn

    from conversion.batch import BatchRow, batch_convert, batch_table
    from conversion.cache import ConversionOutcome, convert_or_reuse
    from conversion.config import ExportConfig
    from conversion.converter import DEFAULT_TRACE_LENGTH, convert_model, read_params
    from conversion.json_model import is_model_description
    from conversion.messages import outcome_lines
    from conversion.model_file import read_model_file
    from conversion.pairing import default_output_path, params_pickle_for
    from conversion.verify import verify_model
    from models.checkpoint import STORAGE_DTYPES, load_converted_model
    from progress import ProgressStyle

OUTPUT_OR_PARAMS = (".pickle", ".pkl", ".pth", ".pt")  # the suffixes of the optional arguments

__all__ = [
    "TCNModelConverter",
    "convert_or_reuse",
    "batch_convert",
    "load_converted_model",
    "default_output_path",
    "BatchRow",
    "ConversionOutcome",
    "ExportConfig",
]


class TCNModelConverter:
    """Convert one Keras model file; `model_params_path` is the training `.pickle` (architecture, history);
    `weights_path` the save_weights file of a `.json` model description."""

    def __init__(
        self,
        tf_model_path: str | Path,
        model_params_path: str | Path | None = None,
        trust_pickles: bool = False,
        weights_path: str | Path | None = None,
    ):
        self.tf_model_path = Path(tf_model_path)
        self.model_params_path = Path(model_params_path) if model_params_path else None
        self.weights_path = Path(weights_path) if weights_path else None
        self.params = read_params(self.model_params_path, trust_pickles)

    def convert(self, output_path: str | Path | None = None, verify: bool = False, **export: Any) -> nn.Module:
        """Convert, optionally verify against Keras (a failed check refuses), write `.pth` + info; return the
        model (conversion.converter.convert_model). `export`: the fields of ExportConfig (dtype, quantize,
        prune, prune_scope, max_error)."""
        return convert_model(
            self.tf_model_path,
            self.model_params_path,
            output_path,
            params=self.params,
            verify=verify,
            export=ExportConfig(**export),
            weights=self.weights_path,
        ).model

    def test_conversion(
        self, pytorch_model: nn.Module, test_input: Sequence[np.ndarray] | np.ndarray | None = None
    ) -> dict[str, Any]:
        """Per-output max/mean abs diff against Keras and pass/fail (see conversion.verify for the tolerance)."""
        keras_file = read_model_file(self.tf_model_path, self.params, self.model_params_path, self.weights_path)
        length = pytorch_model.metadata.get("shapes_traced_with_length") or DEFAULT_TRACE_LENGTH
        return verify_model(keras_file, pytorch_model, self.params, length=length, test_input=test_input).to_dict()


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="model_converter.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 converted or up to date; non-zero when the file is refused (the message names the "
        "file, the layer(s) and the problem; nothing is written): 8 a refused model, 6 a refused pickle, "
        "10 an output that cannot be written, 12 out of memory, 130 Ctrl-C, 143 SIGTERM, 1 a fault of the tool; for a "
        "folder 0 when every model succeeded, else 8. Supported layers and the .pth format: docs/converting.md.",
    )
    parser.add_argument("--version", action="version", version=f"neuron-tcn {VERSION}")
    parser.add_argument(
        "model", help="Keras model file (.h5 Keras 2 or 3, .keras; .json from to_json()) or a folder of them"
    )
    parser.add_argument(
        "extra",
        nargs="*",
        metavar="WEIGHTS.h5|PARAMS.pickle|OUT.pth",
        help="the weights file of a .json model, then optional training parameters pickle and/or output "
        "path (.pth/.pt), in this order",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="compare with the Keras model on a realistic input "
        "(needs TensorFlow); a failed comparison refuses the conversion",
    )
    export = parser.add_argument_group("export (a smaller model; its measured cost is printed and recorded)")
    export.add_argument(
        "--dtype",
        choices=list(STORAGE_DTYPES),
        default="float32",
        help="precision of the stored "
        "floating-point weights (default float32; the loaded model computes in float32 either way)",
    )
    export.add_argument(
        "--quantize",
        choices=["int8"],
        help="int8 conv/dense weights, one float32 scale per "
        "output channel (BatchNorm folded first where exact); dequantized once at load",
    )
    export.add_argument(
        "--prune",
        type=float,
        metavar="FRACTION",
        help="zero this fraction of the conv/dense weights (smallest magnitude first, e.g. 0.5) and store them sparse",
    )
    export.add_argument(
        "--prune-scope",
        choices=["layer", "global"],
        default="layer",
        help="with --prune: layer (default): each weight tensor loses the fraction; global: one threshold for all",
    )
    export.add_argument(
        "--max-error",
        type=float,
        metavar="BOUND",
        help="refuse the export when an output's "
        "error against the float32 conversion exceeds BOUND (max abs diff ÷ max(1, largest "
        "|output|); e.g. 0.01)",
    )
    parser.add_argument("--force", action="store_true", help="convert even when the converted file is up to date")
    parser.add_argument("--output-dir", type=Path, help="write <stem>_converted.pth here instead of beside the model")
    parser.add_argument("--jobs", type=_positive_int, help="parallel processes for a folder (default: one per core)")
    parser.add_argument(
        "--trust-pickles",
        action="store_true",
        help="load the parameters pickle with the "
        "unrestricted unpickler (runs code in the pickle: only for files you trust)",
    )
    parser.add_argument("--verbose", action="store_true", help="show tracebacks and debug logs")
    args = parser.parse_args(argv)
    args.params, args.output, args.weights = None, None, None
    if Path(args.model).is_dir() and args.extra:
        parser.error(
            f"a folder takes no PARAMS.pickle or OUT.pth (got {' '.join(args.extra)}): each model's "
            "<stem>.pickle is used, and --output-dir chooses where the outputs go"
        )
    extra = list(args.extra)
    if is_model_description(Path(args.model)):
        if not extra or Path(extra[0]).suffix in OUTPUT_OR_PARAMS:
            parser.error(
                f"{args.model} is a model description (model.to_json()): give its weights file next "
                f"(model_converter.py model.json weights.h5 [PARAMS.pickle] [OUT.pth])"
                + (f", before {extra[0]}" if extra else "")
            )
        args.weights = extra.pop(0)  # any name: the file's content decides how it is read
    elif extra and Path(extra[0]).suffix not in OUTPUT_OR_PARAMS and not Path(args.model).is_file():
        args.weights = extra.pop(0)  # a FIFO, a missing file, a link loop: reading it reports which
    for item in extra:
        if Path(item).suffix in (".pth", ".pt") and args.output is None:
            args.output = item
        elif Path(item).suffix in (".pickle", ".pkl") and args.params is None and args.output is None:
            args.params = item
        else:
            parser.error(
                f"unexpected argument {item!r}: give PARAMS.pickle then OUT.pth"
                + (
                    " (a weights file goes only with a model.to_json() architecture)"
                    if Path(item).suffix == ".h5"
                    else ""
                )
            )
    if args.output and args.output_dir:
        parser.error("give either OUT.pth or --output-dir, not both")
    try:
        args.export = ExportConfig(
            dtype=args.dtype,
            quantize=args.quantize,
            prune=args.prune,
            prune_scope=args.prune_scope,
            max_error=args.max_error,
        )
    except ValidationError as exc:  # the rules of ExportConfig, which the API and main.py's config follow too
        parser.error(
            "; ".join(
                (f"--{e['loc'][0].replace('_', '-')}: " if e["loc"] else "") + e["msg"].removeprefix("Value error, ")
                for e in exc.errors()
            )
        )
    return args


def _convert_file(args: argparse.Namespace) -> int:
    source = Path(args.model)
    output = (
        Path(args.output)
        if args.output
        else args.output_dir / default_output_path(source).name
        if args.output_dir
        else default_output_path(source)
    )
    params = args.params or params_pickle_for(source)  # the pairing rule of folders and main.py
    if params is not None and not args.params:
        print(f"using the parameters pickle beside the model: {params}")
    outcome = convert_or_reuse(
        source,
        params,
        output,
        verify=args.verify,
        export=args.export,
        force=args.force,
        trust_pickles=args.trust_pickles,
        weights=args.weights,
    )
    print("\n".join(outcome_lines(outcome, source)))
    return 0


def _convert_folder(args: argparse.Namespace) -> int:
    rows = batch_convert(
        args.model,
        args.output_dir,
        verify=args.verify,
        export=args.export,
        force=args.force,
        trust_pickles=args.trust_pickles,
        jobs=args.jobs,
        progress=ProgressStyle.for_console(),
    )
    print(batch_table(rows))
    return 0 if all(row.status != "failed" for row in rows) else ConversionError.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    return run_entry_point(
        lambda: _convert_folder(args) if Path(args.model).is_dir() else _convert_file(args),
        f"converting {args.model}",
        args.verbose,
    )


if __name__ == "__main__":
    sys.exit(main())
