"""``dnnlens analyze [MODEL] [--input SHAPE[:DTYPE]]... [--batch B] [--dtype D] [--depth K]
[--json | --csv FILE]``: the per-layer table of any network.

MODEL is ``seed`` (the course's MNIST network, the default), a torchvision model name
(``resnet18``, ``swin_t``, ``r3d_18``, ...; built as its DEFAULT weights configure it, with
nothing downloaded and no weight allocated where torchvision allows: see :mod:`dnnlens.zoo`),
a model file (ONNX, spec, SCALE-Sim topology) or ``package.module:factory`` (a function
returning an ``nn.Module``, found from the current folder as ``python -m`` would).

``--input`` may be given several times, one per positional input of the model; each is a
shape with the batch, optionally typed: ``1,3,224,224`` (float32) or ``1,128:int64`` (token
ids, drawn inside the smallest ``nn.Embedding``'s range). Without ``--input`` a torchvision
model gets the input its published figures were measured on, and the command says which.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dnnlens.errors import ModelError, UsageError

SEED_INPUT = (1, 1, 28, 28)

#: ``--input`` dtypes (after the colon) and the torch dtype each means.
INPUT_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8",
                "uint8", "bool")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "analyze", help="per-layer shapes, weights, MACs, memory traffic and intensity",
        description="Trace a network on the meta device (no weights allocated) and print, per "
                    "layer, its shapes, weights, MACs, values moved and compute intensity.")
    parser.add_argument("model", nargs="?", default="seed", metavar="MODEL",
                        help="seed (default), a torchvision model name, or package.module:factory")
    parser.add_argument("--input", metavar="N,C,H,W[:DTYPE]", action="append", default=None,
                        help="an input's shape with the batch, optionally typed (1,128:int64); "
                             "repeat for a model with several inputs (default: the model's "
                             "own input, printed)")
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


def parse_input(text: str) -> tuple[tuple[int, ...], str]:
    """``"1,128:int64"`` -> ``((1, 128), "int64")``; the dtype defaults to float32."""
    shape_text, _, dtype = text.partition(":")
    dtype = dtype.strip().lower() or "float32"
    if dtype not in INPUT_DTYPES:
        raise UsageError(f"--input {text!r}: unknown dtype {dtype!r}; choose one of "
                         f"{', '.join(INPUT_DTYPES)}")
    return parse_shape(shape_text), dtype


@dataclass
class Resolved:
    """A model ready to trace: the module, its inputs and how they were chosen."""

    model: Any
    inputs: tuple  # positional inputs (tensors; a list of images for detection)
    real: bool = False  # trace on real CPU tensors (detection)
    default_note: str = ""  # said on stderr when the input is the model's default
    on_cpu: Callable[[], Resolved] | None = None  # the same, built on CPU with real inputs


#: What PyTorch says when a forward reads tensor values, which meta tensors do not have.
_NEEDS_VALUES = ("meta tensor", "data-dependent", "data dependent")


def needs_real_values(message: str) -> bool:
    """Whether a meta trace failed because the forward reads values (``.item()``, ``if``
    on a tensor, ``nonzero``): then it is traced on real random inputs instead."""
    return any(marker in message for marker in _NEEDS_VALUES)


def resolve_model(spec: str) -> tuple[Any, tuple[int, ...] | None]:
    """The ``nn.Module`` named by ``spec`` and its usual input shape (None if unknown; the
    first input of a model with several).

    Raises ModelError for an unknown name or a factory that fails.
    """
    import torch

    if spec == "seed":
        from dnnlens.models import Net

        with torch.device("meta"):
            return Net(), SEED_INPUT
    if ":" in spec:
        return _from_factory(spec), None
    from dnnlens import zoo

    built = zoo.build(spec)
    shapes = built.input_shapes
    return built.module, (shapes[0] if shapes and not built.needs_real_data else None)


def resolve(spec: str, given: list[str] | None, batch: int | None) -> Resolved:
    """The model named by ``spec`` with the inputs to trace it on: ``--input`` values when
    given (``batch`` replaces their N), else the model's own default."""
    import torch

    parsed = [parse_input(text) for text in given or []]
    if batch is not None:
        parsed = [((batch, *shape[1:]), dtype) for shape, dtype in parsed]
    if spec == "seed" or ":" in spec:
        model, default = resolve_model(spec)
        if not parsed:
            if default is None:
                raise UsageError(f"give --input N,C,H,W (repeat it for several inputs) for "
                                 f"{spec!r}")
            parsed = [((batch or default[0], *default[1:]), "float32")]

        def on_cpu() -> Resolved:
            cpu_model = _from_factory(spec, meta=False) if ":" in spec else _seed_on_cpu()
            return Resolved(cpu_model, make_inputs(cpu_model, parsed, real=True), real=True)

        return Resolved(model, make_inputs(model, parsed), on_cpu=on_cpu)
    from dnnlens import zoo

    if spec not in zoo.names():
        raise ModelError(f"unknown model {spec!r}: use seed, a torchvision model name such as "
                         "resnet18, a model file, or package.module:factory")
    built = zoo.build(spec, batch=batch or 1)
    if not parsed:
        return Resolved(built.module, built.inputs, built.needs_real_data,
                        f"input: {built.input_note} ({spec}'s default; --input to change it)")
    inputs = make_inputs(built.module, parsed, real=built.needs_real_data)
    if zoo.task(spec) == "detection":  # detection models take a list of (3, H, W) images
        if any(t.dim() != 4 or not t.is_floating_point() for t in inputs):
            raise UsageError(f"{spec} takes images: give --input N,3,H,W (float)")
        inputs = (list(torch.cat(inputs).unbind(0)),)
    return Resolved(built.module, inputs, built.needs_real_data)


def make_inputs(model: Any, parsed: list[tuple[tuple[int, ...], str]],
                real: bool = False) -> tuple:
    """Tensors of the given shapes and dtypes (meta unless ``real``); integer inputs hold
    values inside the smallest ``nn.Embedding``'s range, so token ids look up real rows."""
    import torch
    from torch import nn

    high = min((m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)),
               default=2)
    tensors = []
    for shape, name in parsed:
        dtype = getattr(torch, name)
        if dtype.is_floating_point:
            tensors.append(torch.rand(shape, dtype=dtype) if real
                           else torch.empty(shape, dtype=dtype, device="meta"))
        elif dtype == torch.bool:
            tensors.append(torch.ones(shape, dtype=dtype))
        else:
            tensors.append(torch.randint(0, max(1, high), shape, dtype=dtype))
    return tuple(tensors)


def _seed_on_cpu() -> Any:
    from dnnlens.models import Net

    return Net()


def _from_factory(spec: str, meta: bool = True) -> Any:
    import torch
    from torch import nn

    module_name, _, attr = spec.partition(":")
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)  # as `python -m` does: the current folder's packages first
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot find factory {spec!r} (looked from {here}): {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise ModelError(f"importing {module_name!r} for {spec!r} raised "
                         f"{type(exc).__name__}: {exc}") from None
    try:
        with torch.device("meta" if meta else "cpu"):  # no weights allocated if it can
            model = factory()
    except Exception:  # noqa: BLE001 - some factories need real tensors: try on CPU
        try:
            model = factory()
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"factory {spec!r} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"factory {spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


def _write_extras(args: argparse.Namespace, result: Any) -> None:
    """--scalesim and --netron (issue 6): files beside the table, reported on stderr."""
    if getattr(args, "scalesim", None):
        from dnnlens.scalesim import write_topology

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

    given = args.input if isinstance(args.input, list) or args.input is None else [args.input]
    if args.batch is not None and args.batch < 1:
        raise UsageError(f"--batch must be a positive integer, got {args.batch}")
    from dnnlens.importers.spec import graph_from_file  # issue 6: ONNX, spec, topology files

    if given and len(given) > 1 and args.model.lower().endswith(".onnx"):
        raise UsageError("an ONNX file takes one --input (its other inputs have fixed shapes)")
    shape = parse_input(given[0])[0] if given else None
    graph = graph_from_file(args.model, shape, args.batch)
    if graph is not None:
        model = None  # a file, not an nn.Module: nothing for PyTorch to time
        result = analyze(graph, dtype=args.dtype)
    else:
        resolved = resolve(args.model, given, args.batch)
        model = resolved.model
        if resolved.default_note:
            print(resolved.default_note, file=sys.stderr)
        try:
            result = analyze(model, example_inputs=resolved.inputs, dtype=args.dtype,
                             real=resolved.real)
        except ModelError as exc:
            if resolved.real or resolved.on_cpu is None or not needs_real_values(str(exc)):
                raise
            print(f"note: {args.model} reads tensor values in its forward, which the meta "
                  "device does not have; tracing it on the CPU on random inputs instead "
                  "(counts that depend on the data are those of this run)", file=sys.stderr)
            resolved = resolved.on_cpu()
            model = resolved.model
            result = analyze(model, example_inputs=resolved.inputs, dtype=args.dtype,
                             real=True)
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
