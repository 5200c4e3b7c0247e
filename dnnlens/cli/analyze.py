"""``dnnlens analyze [MODEL] [--input N,C,H,W] [--batch B] [--dtype D] [--depth K]
[--json | --csv FILE]``: the per-layer table of any network.

MODEL is ``seed`` (the course's MNIST network, the default), a torchvision model name
(``resnet18``, ``vit_b_16``, ...; built with ``weights=None`` on the meta device, nothing is
downloaded or allocated) or ``package.module:factory`` (a function returning an ``nn.Module``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dnnlens.errors import UsageError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "analyze", help="per-layer shapes, weights, MACs, memory traffic and intensity",
        description="Trace a network on the meta device (no weights allocated) and print, per "
                    "layer, its shapes, weights, MACs, values moved and compute intensity.")
    parser.add_argument("model", nargs="?", default="seed", metavar="MODEL",
                        help="seed (default), a torchvision model name, or package.module:factory")
    parser.add_argument("--input", metavar="N,C,H,W", default=None,
                        help="input shape with the batch (default: the model's usual input)")
    parser.add_argument("--batch", type=int, default=None, metavar="B",
                        help="batch size; replaces N of the input shape")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16", "int8"),
                        help="bytes per value for weight bytes and bytes moved (default fp32)")
    parser.add_argument("--depth", type=int, default=None, metavar="K",
                        help="merge rows by the first K parts of their module name")
    parser.add_argument("--device", metavar="NAME|FILE", default=None,
                        help="add roofline columns for a device (dnnlens hw list) or spec file")
    parser.add_argument("--measure", action="store_true",
                        help="time each layer of our engine and PyTorch on this machine next "
                             "to the roofline of this machine (probed for a second)")
    parser.add_argument("--scalesim", metavar="FILE",
                        help="also write the conv and fc layers as a SCALE-Sim topology CSV")
    parser.add_argument("--netron", metavar="FILE",
                        help="ONNX models: also write a Netron attachment (.json) or an "
                             "annotated copy of the model (.onnx)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON instead of a table")
    out.add_argument("--csv", metavar="FILE", help="also write the rows to FILE as CSV")
    parser.set_defaults(func=run)


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` -> ``(1, 3, 224, 224)``; UsageError on anything else."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise UsageError(f"--input must be positive integers separated by commas, like "
                         f"1,3,224,224; got {text!r}")
    return shape


def resolve_model(spec: str) -> tuple[Any, tuple[int, ...] | None]:
    """The ``nn.Module`` named by ``spec`` (built on the meta device) and its usual input
    shape (None if unknown); ModelError for an unknown name or a factory that fails."""
    from dnnlens.importers import build_model

    return build_model(spec, device="meta")


def _write_extras(args: argparse.Namespace, result: Any) -> None:
    """--scalesim and --netron (issue 6): files beside the table, reported on stderr."""
    if getattr(args, "scalesim", None):
        from dnnlens.importers.scalesim import write_topology

        for layer, reason in write_topology(result.graph, args.scalesim):
            print(f"warning: SCALE-Sim topology skips {layer}: {reason}", file=sys.stderr)
        print(f"wrote {args.scalesim}", file=sys.stderr)
    if getattr(args, "netron", None):
        from dnnlens import netron

        if args.netron.lower().endswith(".onnx"):
            netron.write_annotated_copy(args.model, result, args.netron)
        else:
            netron.write_attachment(result, args.netron)
        print(f"wrote {args.netron}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from dnnlens.analysis import analyze

    shape = parse_shape(args.input) if args.input is not None else None
    if args.batch is not None and args.batch < 1:
        raise UsageError(f"--batch must be a positive integer, got {args.batch}")
    from dnnlens.importers import graph_from_file  # ONNX, spec, topology files

    graph = graph_from_file(args.model, shape, args.batch)
    if graph is not None:
        model = None  # a file, not an nn.Module: nothing for PyTorch to time
        result = analyze(graph, dtype=args.dtype)
    else:
        model, default = resolve_model(args.model)
        shape = shape or default
        if shape is None:
            raise UsageError(f"give --input N,C,H,W for {args.model!r}")
        result = analyze(model, shape, batch=args.batch, dtype=args.dtype)
    result.graph.name = args.model
    if args.json:
        print(result.to_json(args.depth))
    else:
        print(result.render(args.depth))
        if args.csv:
            result.to_csv(args.csv, args.depth)
            print(f"wrote {args.csv}")
        if getattr(args, "device", None) or getattr(args, "measure", False):
            from dnnlens.cli.hw import analyze_extras  # roofline and timing (issue 5)

            analyze_extras(None if graph is not None else model, result, args.device,
                           args.measure)
    _write_extras(args, result)
    if args.json:  # the table already lists them; keep stdout pure JSON
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    return 0
