"""``dnnlens verify MODEL``: our loop-nest engine against the real model on the same inputs.

MODEL is anything ``dnnlens analyze`` takes that has weights: the course network's
checkpoint (``my_mnist_net.pth``), a torchvision name or ``package.module:factory`` (seeded
initial weights, or ``--weights CHECKPOINT``), or an ONNX file (checked against
onnxruntime). Exit code 0 when no prediction differs, 1 when some do.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from dnnlens.errors import UsageError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="run a model through our engine and through PyTorch/onnxruntime and compare them",
        description="Run a model through our own loop-nest kernels and through the real model "
        "(PyTorch, or onnxruntime for an ONNX file) on the same inputs: differing "
        "predictions (should be 0), the largest logit difference next to the "
        "largest logit, per-layer differences from the real model's own "
        "intermediate values, both throughputs, and accuracy with --data.",
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="the course network's checkpoint (.pth), a torchvision model "
        "name, package.module:factory, or an ONNX file",
    )
    parser.add_argument(
        "--data",
        default=None,
        help="images to use: sample, idx:FOLDER, mnist or fashion-mnist "
        "(default: --images random inputs)",
    )
    parser.add_argument(
        "--limit", default=None, metavar="N", help="with --data: only the first N images"
    )
    parser.add_argument(
        "--images",
        default="8",
        metavar="N",
        help="without --data: this many seeded random inputs (default 8)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random inputs and of the initial weights (default 0)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        metavar="CHECKPOINT",
        help="a state-dict checkpoint to load into a torchvision or factory model",
    )
    parser.add_argument(
        "--input",
        default=None,
        metavar="N,C,H,W",
        help="input shape, for models that do not say it",
    )
    parser.add_argument(
        "--engine",
        default="compiled",
        metavar="compiled|reference",
        help="compiled (Numba, default) or reference (readable NumPy loops)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def parse_count(text: str | None, option: str) -> int | None:
    if text is None:
        return None
    try:
        count = int(text)
    except ValueError:
        raise UsageError(f"{option} must be a whole number of images, got {text!r}") from None
    if count < 1:
        raise UsageError(f"{option} must be at least 1, got {count}")
    return count


def parse_limit(text: str | None) -> int | None:
    return parse_count(text, "--limit")


def run(args: argparse.Namespace) -> int:
    from dnnlens.cli.analyze import parse_shape
    from dnnlens.engine import ENGINES
    from dnnlens.verify import verify

    if args.engine not in ENGINES:
        raise UsageError(f"--engine must be {' or '.join(ENGINES)}, got {args.engine!r}")
    limit = parse_limit(args.limit)
    images = parse_count(args.images, "--images")
    shape = parse_shape(args.input) if args.input else None
    result = verify(
        args.model,
        data=args.data,
        limit=limit,
        engine=args.engine,
        images=images or 8,
        seed=args.seed,
        weights=args.weights,
        input_shape=shape,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(render(result))
    return 0 if result.mismatches == 0 else 1


def render(result: Any) -> str:
    """The human-readable report: a summary, then one row per layer."""
    from dnnlens.formatting import key_value_table, text_table
    from dnnlens.report import (
        reference_name,
        verification_columns,
        verification_layer_rows,
        verification_pairs,
    )

    return "\n".join(
        [
            f"verify {result.model} on {result.data}: {result.images:,} images, {result.engine} "
            f"engine against {reference_name(result)}",
            key_value_table(verification_pairs(result), indent=2),
            "",
            text_table(verification_columns(), verification_layer_rows(result), indent=2),
        ]
    )
