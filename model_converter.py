#!/usr/bin/env python
"""Convert Keras neuron TCNs (.h5) to PyTorch exactly, or refuse with a clear message.

    python model_converter.py model.h5 [model_params.pickle] [out.pth] [--verify]

Writes `<stem>_converted.pth` beside the input (or OUT.pth) and `<stem>_converted_info.pickle` with the
conversion record. Reading needs neither TensorFlow nor Keras; `--verify` compares with Keras when installed.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch import nn

from conversion.converter import Conversion, convert_keras_file, write_conversion
from conversion.keras_file import read_keras_h5
from conversion.verify import KerasUnavailable, compare_with_keras
from errors import ConversionError, ToolError
from fileio import load_pickle
from models.checkpoint import load_converted_model

__all__ = ["TCNModelConverter", "batch_convert", "load_converted_model", "default_output_path"]
log = logging.getLogger("model_converter")


def default_output_path(tf_model_path: str | Path) -> Path:
    path = Path(tf_model_path)
    return path.with_name(f"{path.stem}_converted.pth")


class TCNModelConverter:
    """Convert one Keras model file; `model_params_path` is the training `.pickle` (architecture, history)."""

    def __init__(self, tf_model_path: str | Path, model_params_path: str | Path | None = None,
                 trust_pickles: bool = False):
        self.tf_model_path = Path(tf_model_path)
        self.model_params_path = Path(model_params_path) if model_params_path else None
        self.params = self._read_params(trust_pickles)
        self.last_conversion: Conversion | None = None

    def _read_params(self, trust: bool) -> dict[str, Any] | None:
        if self.model_params_path is None:
            return None
        params = load_pickle(self.model_params_path, trust=trust)
        if not isinstance(params, dict):
            raise ConversionError(f"{self.model_params_path}: the parameters pickle holds a "
                                  f"{type(params).__name__}, expected a dict with 'architecture_dict'.")
        return params

    def convert(self, output_path: str | Path | None = None, verify: bool = False) -> nn.Module:
        """Convert, optionally verify against Keras (a failed check refuses), write `.pth` + info; return the model."""
        conversion = convert_keras_file(self.tf_model_path, self.params)
        if verify:
            try:
                report = self.test_conversion(conversion.model)
            except KerasUnavailable as exc:
                log.warning("verification skipped: %s", exc)
                report = {"skipped": str(exc)}
            if not report.get("skipped") and not report["passed"]:
                worst = max(report["outputs"].items(), key=lambda item: item[1]["max_abs_diff"])
                raise ConversionError(f"{self.tf_model_path}: the converted model differs from Keras beyond "
                                      f"the tolerance (output '{worst[0]}': max abs diff "
                                      f"{worst[1]['max_abs_diff']:.3g}). Nothing was written.")
            conversion.metadata["verification"] = report
        conversion.metadata["params_pickle"] = str(self.model_params_path) if self.model_params_path else None
        write_conversion(conversion, output_path or default_output_path(self.tf_model_path))
        self.last_conversion = conversion
        return conversion.model

    def test_conversion(self, pytorch_model: nn.Module, test_input: Sequence[np.ndarray] | np.ndarray | None = None
                        ) -> dict[str, Any]:
        """Per-output max/mean abs diff against Keras and pass/fail (see conversion.verify for the tolerance)."""
        keras_file = read_keras_h5(self.tf_model_path)
        architecture = (self.params or {}).get("architecture_dict") or {}
        neuron = bool(architecture) or "spikes" in getattr(pytorch_model, "output_names", [])
        length = int(architecture.get("input_window_size") or 64)
        return compare_with_keras(self.tf_model_path, pytorch_model, keras_file.keras_major, length, neuron,
                                  test_input)


def batch_convert(model_dir: str | Path, output_dir: str | Path, verify: bool = False) -> list[dict[str, Any]]:
    """Convert every `.h5` in `model_dir` (with its sibling `.pickle` if present) into `output_dir`.

    One failing model does not stop the others; each row says what happened.
    """
    rows = []
    for h5_path in sorted(Path(model_dir).glob("*.h5")):
        params = h5_path.with_suffix(".pickle")
        output = Path(output_dir) / default_output_path(h5_path).name
        try:
            TCNModelConverter(h5_path, params if params.is_file() else None).convert(output, verify=verify)
            rows.append({"model": str(h5_path), "status": "converted", "output": str(output), "error": None})
        except ToolError as exc:
            rows.append({"model": str(h5_path), "status": "failed", "output": None, "error": str(exc)})
    return rows


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="model_converter.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 converted; non-zero when the file is refused (the message names the file, the "
               "layer(s) and the problem; nothing is written). Supported layers and the .pth format: README.md.")
    parser.add_argument("model", help="Keras model file (.h5, Keras 2 or Keras 3)")
    parser.add_argument("extra", nargs="*", metavar="PARAMS.pickle|OUT.pth",
                        help="optional training parameters pickle and/or output path (.pth/.pt), in this order")
    parser.add_argument("--verify", action="store_true",
                        help="compare with the Keras model on a realistic input (needs TensorFlow); a failed "
                             "comparison refuses the conversion")
    parser.add_argument("--trust-pickles", action="store_true",
                        help="load the parameters pickle with the unrestricted unpickler (runs code in the "
                             "pickle: only for files you trust)")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks and debug logs")
    args = parser.parse_args(argv)
    args.params, args.output = None, None
    for item in args.extra:
        if Path(item).suffix in (".pth", ".pt") and args.output is None:
            args.output = item
        elif Path(item).suffix in (".pickle", ".pkl") and args.params is None and args.output is None:
            args.params = item
        else:
            parser.error(f"unexpected argument {item!r}: give PARAMS.pickle then OUT.pth")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        converter = TCNModelConverter(args.model, args.params, trust_pickles=args.trust_pickles)
        output = Path(args.output) if args.output else default_output_path(args.model)
        model = converter.convert(output, verify=args.verify)
    except ToolError as exc:
        if args.verbose:
            log.exception("conversion failed")
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    metadata = converter.last_conversion.metadata
    n_params = sum(p.numel() for p in model.parameters())
    print(f"converted {args.model} -> {output} ({len(metadata['layers'])} layers, {n_params} parameters)")
    verification = metadata.get("verification")
    if verification and "outputs" in verification:
        figures = ", ".join(f"{name} {o['max_abs_diff']:.2g}" for name, o in verification["outputs"].items())
        print(f"verified against {verification['keras']}: max abs diff {figures}")
    elif verification:
        print(f"not verified: {verification['skipped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
