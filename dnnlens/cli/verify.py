"""``dnnlens verify CHECKPOINT``: our loop-nest engine against PyTorch on the same images."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dnnlens.errors import UsageError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify", help="run a checkpoint through our engine and PyTorch and compare them",
        description="Run the reference network's checkpoint through our own loop-nest kernels "
                    "and through PyTorch on the same images: accuracy, differing predictions "
                    "(should be 0), largest logit difference, per-layer activation "
                    "differences and both throughputs.")
    parser.add_argument("checkpoint",
                        help="state-dict checkpoint of the reference network, or an ONNX file "
                             "(then compared with onnxruntime instead of PyTorch)")
    parser.add_argument("--data", default="sample",
                        help="sample (default), idx:FOLDER, mnist or fashion-mnist")
    parser.add_argument("--limit", default=None, metavar="N", help="only the first N images")
    parser.add_argument("--engine", default="compiled", metavar="compiled|reference",
                        help="compiled (Numba, default) or reference (readable NumPy loops)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def parse_limit(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        limit = int(text)
    except ValueError:
        raise UsageError(f"--limit must be a whole number of images, got {text!r}") from None
    if limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    return limit


def run(args: argparse.Namespace) -> int:
    from dnnlens.engine import ENGINES, verify

    if args.engine not in ENGINES:
        raise UsageError(f"--engine must be {' or '.join(ENGINES)}, got {args.engine!r}")
    if str(args.checkpoint).endswith(".onnx"):
        return run_onnx(args)
    result = verify(args.checkpoint, data=args.data, limit=parse_limit(args.limit),
                    engine=args.engine)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(render(result))
    return 0 if result.mismatches == 0 else 1


def run_onnx(args: argparse.Namespace) -> int:
    """An ONNX classifier: our engine against onnxruntime on the same images."""
    from dnnlens.importers.onnx import verify_onnx

    check = verify_onnx(args.checkpoint, data=args.data, limit=parse_limit(args.limit),
                        engine=args.engine)
    if args.json:
        print(json.dumps({"images": check.images, "mismatches": check.differing_predictions,
                          "max_abs_diff": check.max_abs_diff, "engine": check.engine,
                          "reference": "onnxruntime"}, indent=2))
    else:
        print(f"verify {args.checkpoint} on {args.data}: {check.summary()}")
    return 0 if check.differing_predictions == 0 else 1


def render(result: Any) -> str:
    """The human-readable report: a summary, then one row per layer."""
    from dnnlens.formatting import key_value_table, text_table
    from dnnlens.report import verification_columns, verification_layer_rows, verification_pairs

    return "\n".join([
        f"verify on {result.data}: {result.images:,} images, {result.engine} engine",
        key_value_table(verification_pairs(result), indent=2), "",
        text_table(verification_columns(), verification_layer_rows(result), indent=2)])
