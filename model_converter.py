#!/usr/bin/env python
"""Convert Keras neuron TCNs to PyTorch exactly, or refuse with a clear message.

    python model_converter.py model.h5 [model_params.pickle] [out.pth] [--verify] [--dtype float16] [--force]
    python model_converter.py MODELS_DIR [--output-dir DIR] [--jobs N] [--verify] [--dtype ...] [--force]

Writes `<stem>_converted.pth` beside the input (or OUT.pth, or in --output-dir) and
`<stem>_converted_info.pickle` with the conversion record. Without PARAMS.pickle, the `<stem>.pickle` beside the
model is used when there is one. Reading needs neither TensorFlow nor Keras;
`--verify` compares with Keras when installed. A model whose converted file is current (it records the
source's sha256, this format version and the requested dtype) is not converted again unless --force.
A folder: every *.h5 and *.keras in it (with its sibling <stem>.pickle), in parallel processes.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch import nn

from conversion.batch import BatchRow, format_table, plan_jobs, run_batch
from conversion.cache import DEFAULT_LOCK_TIMEOUT_S, ConversionOutcome, convert_once
from conversion.pairing import default_output_path, params_pickle_for
from conversion.converter import convert_keras_file, info_path_for, write_conversion
from conversion.keras_file import file_sha256
from conversion.model_file import read_model_file
from conversion.verify import KerasUnavailable, compare_with_keras, keras_rebuild, worst_output
from errors import ConversionError, failure_report, raise_terminated_on_sigterm
from fileio import load_pickle, outputs_apart_from_inputs
from models.checkpoint import STORAGE_DTYPES, load_converted_model, round_to_storage
from progress import NO_PROGRESS, ProgressStyle

__all__ = ["TCNModelConverter", "convert_or_reuse", "batch_convert", "load_converted_model", "default_output_path"]
log = logging.getLogger("model_converter")


class TCNModelConverter:
    """Convert one Keras model file; `model_params_path` is the training `.pickle` (architecture, history)."""

    def __init__(self, tf_model_path: str | Path, model_params_path: str | Path | None = None,
                 trust_pickles: bool = False):
        self.tf_model_path = Path(tf_model_path)
        self.model_params_path = Path(model_params_path) if model_params_path else None
        self.params = self._read_params(trust_pickles)

    def _read_params(self, trust: bool) -> dict[str, Any] | None:
        if self.model_params_path is None:
            return None
        params = load_pickle(self.model_params_path, trust=trust)
        if not isinstance(params, dict):
            raise ConversionError(f"{self.model_params_path}: the parameters pickle holds a "
                                  f"{type(params).__name__}, expected a dict with 'architecture_dict'.")
        return params

    def convert(self, output_path: str | Path | None = None, verify: bool = False, dtype: str = "float32"
                ) -> nn.Module:
        """Convert, optionally verify against Keras (a failed check refuses), write `.pth` + info; return the model.

        `dtype` float16 / bfloat16 stores the weights in half precision; verification checks the float32
        conversion before the rounding, and the returned module holds the rounded weights (as loaded).
        """
        if dtype not in STORAGE_DTYPES:
            raise ConversionError(f"{self.tf_model_path}: dtype {dtype!r} is not one of {', '.join(STORAGE_DTYPES)}.")
        output = Path(output_path) if output_path else default_output_path(self.tf_model_path)
        outputs_apart_from_inputs([output, info_path_for(output)], [self.tf_model_path, self.model_params_path],
                                  ConversionError)
        conversion = convert_keras_file(self.tf_model_path, self.params, self.model_params_path)
        if verify:
            try:
                report = self.test_conversion(conversion.model)
            except KerasUnavailable as exc:
                log.warning("verification skipped: %s", exc)
                report = {"skipped": str(exc)}
            if not report.get("skipped") and not report["passed"]:
                worst_name, worst_diff = worst_output(report)
                raise ConversionError(f"{self.tf_model_path}: the converted model differs from Keras beyond "
                                      f"the tolerance (output '{worst_name}': max abs diff "
                                      f"{worst_diff:.3g}). Nothing was written.")
            conversion.metadata["verification"] = report
        conversion.metadata["params_pickle"] = str(self.model_params_path) if self.model_params_path else None
        conversion.metadata["params_sha256"] = file_sha256(self.model_params_path) if self.model_params_path else None
        overflowed = round_to_storage(conversion.model, dtype)
        if overflowed:
            raise ConversionError(f"{self.tf_model_path}: weights beyond the range of {dtype} "
                                  f"({', '.join(overflowed)}); store them as bfloat16 or float32. Nothing was written.")
        conversion.metadata["dtype"] = dtype
        write_conversion(conversion, output)
        return conversion.model

    def test_conversion(self, pytorch_model: nn.Module, test_input: Sequence[np.ndarray] | np.ndarray | None = None
                        ) -> dict[str, Any]:
        """Per-output max/mean abs diff against Keras and pass/fail (see conversion.verify for the tolerance)."""
        keras_file = read_model_file(self.tf_model_path, self.params, self.model_params_path)
        architecture = (self.params or {}).get("architecture_dict") or {}
        neuron = bool(architecture) or "spikes" in getattr(pytorch_model, "output_names", [])
        length = int(architecture.get("input_window_size") or 64)
        return compare_with_keras(self.tf_model_path, pytorch_model, keras_file.keras_major, length, neuron,
                                  test_input, keras_rebuild(keras_file))


def convert_or_reuse(tf_model_path: str | Path, model_params_path: str | Path | None = None,
                     output_path: str | Path | None = None, *, verify: bool = False, dtype: str = "float32",
                     force: bool = False, trust_pickles: bool = False,
                     lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> ConversionOutcome:
    """The model converted into `output_path` (default `<stem>_converted.pth`), or the current conversion
    already there: same source sha256, format version and dtype, and a passed verification when `verify`
    (conversion.cache). Under a per-output lock, so concurrent jobs convert it once."""
    source = Path(tf_model_path)
    output = Path(output_path) if output_path else default_output_path(source)
    outputs_apart_from_inputs([output, info_path_for(output)], [source, model_params_path], ConversionError)

    def convert() -> nn.Module:
        return TCNModelConverter(source, model_params_path, trust_pickles).convert(output, verify, dtype)

    return convert_once(source, output, convert, params=model_params_path, dtype=dtype, verified=verify, force=force,
                        lock_timeout_s=lock_timeout_s)


def batch_convert(model_dir: str | Path, output_dir: str | Path | None = None, *, verify: bool = False,
                  dtype: str = "float32", force: bool = False, trust_pickles: bool = False,
                  jobs: int | None = None, progress: ProgressStyle = NO_PROGRESS) -> list[BatchRow]:
    """Convert (or find current) every `.h5`/`.keras` in `model_dir`, with its sibling `<stem>.pickle`,
    into `output_dir` (default: beside each model), in `jobs` processes (default: one per core).

    One failing model does not stop the others; each row says what happened (converted / cached / failed).
    """
    convert = functools.partial(convert_or_reuse, verify=verify, dtype=dtype, force=force,
                                trust_pickles=trust_pickles)
    return run_batch(plan_jobs(model_dir, output_dir), convert, jobs, progress)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="model_converter.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 converted or up to date; non-zero when the file is refused (the message names the "
               "file, the layer(s) and the problem; nothing is written): 8 a refused model, 6 a refused pickle, "
               "10 an output that cannot be written, 130 Ctrl-C, 143 SIGTERM, 1 a fault of the tool; for a "
               "folder 0 when every model succeeded, else 8. Supported layers and the .pth format: README.md.")
    parser.add_argument("model", help="Keras model file (.h5 Keras 2 or 3, .keras) or a folder of them")
    parser.add_argument("extra", nargs="*", metavar="PARAMS.pickle|OUT.pth",
                        help="optional training parameters pickle and/or output path (.pth/.pt), in this order")
    parser.add_argument("--verify", action="store_true",
                        help="compare with the Keras model on a realistic input (needs TensorFlow); a failed "
                             "comparison refuses the conversion")
    parser.add_argument("--dtype", choices=list(STORAGE_DTYPES), default="float32",
                        help="precision of the stored weights (default float32; the loaded model computes in "
                             "float32 either way)")
    parser.add_argument("--force", action="store_true",
                        help="convert even when the converted file is up to date")
    parser.add_argument("--output-dir", type=Path, help="write <stem>_converted.pth here instead of beside the model")
    parser.add_argument("--jobs", type=_positive_int, help="parallel processes for a folder (default: one per core)")
    parser.add_argument("--trust-pickles", action="store_true",
                        help="load the parameters pickle with the unrestricted unpickler (runs code in the "
                             "pickle: only for files you trust)")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks and debug logs")
    args = parser.parse_args(argv)
    args.params, args.output = None, None
    if Path(args.model).is_dir() and args.extra:
        parser.error(f"a folder takes no PARAMS.pickle or OUT.pth (got {' '.join(args.extra)}): each model's "
                     "<stem>.pickle is used, and --output-dir chooses where the outputs go")
    for item in args.extra:
        if Path(item).suffix in (".pth", ".pt") and args.output is None:
            args.output = item
        elif Path(item).suffix in (".pickle", ".pkl") and args.params is None and args.output is None:
            args.params = item
        else:
            parser.error(f"unexpected argument {item!r}: give PARAMS.pickle then OUT.pth")
    if args.output and args.output_dir:
        parser.error("give either OUT.pth or --output-dir, not both")
    return args


def _convert_file(args: argparse.Namespace) -> int:
    source = Path(args.model)
    output = (Path(args.output) if args.output else
              args.output_dir / default_output_path(source).name if args.output_dir else default_output_path(source))
    params = args.params or params_pickle_for(source)  # the pairing rule of folders and main.py
    if params is not None and not args.params:
        print(f"using the parameters pickle beside the model: {params}")
    outcome = convert_or_reuse(source, params, output, verify=args.verify, dtype=args.dtype,
                               force=args.force, trust_pickles=args.trust_pickles)
    metadata = outcome.model.metadata
    if outcome.cached:
        print(f"up to date: {source} -> {output} (cached)")
    else:
        trainable = sum(p.numel() for p in outcome.model.parameters())
        total = trainable + sum(b.numel() for b in outcome.model.buffers())  # as Keras counts: + BN statistics
        stored = f", stored as {args.dtype}" if args.dtype != "float32" else ""
        print(f"converted {source} -> {output} ({len(metadata['layers'])} layers, {total:,} parameters, "
              f"{trainable:,} trainable{stored})")
    verification = metadata.get("verification")
    if verification and "outputs" in verification:
        figures = ", ".join(f"{name} {o['max_abs_diff']:.2g}" for name, o in verification["outputs"].items())
        rebuilt = verification.get("keras_model", "")
        print(f"verified against {verification['keras']}: max abs diff {figures}"
              + (f" (against {rebuilt})" if rebuilt.startswith("a Keras model") else ""))
    elif verification:
        print(f"not verified: {verification['skipped']}")
    return 0


def _convert_folder(args: argparse.Namespace) -> int:
    rows = batch_convert(args.model, args.output_dir, verify=args.verify, dtype=args.dtype, force=args.force,
                         trust_pickles=args.trust_pickles, jobs=args.jobs, progress=ProgressStyle.for_console())
    print(format_table(rows))
    return 0 if all(row.status != "failed" for row in rows) else ConversionError.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """The one error boundary of the converter: whatever stops it becomes one `error:` paragraph and an exit code
    (errors.failure_report); the traceback only with --verbose."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if args.verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")  # TensorFlow's own logging too
    raise_terminated_on_sigterm()
    try:
        return _convert_folder(args) if Path(args.model).is_dir() else _convert_file(args)
    except (Exception, KeyboardInterrupt) as exc:
        message, code = failure_report(exc, f"converting {args.model}")
        if args.verbose:
            log.error("traceback:", exc_info=exc)
        print(message, file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
