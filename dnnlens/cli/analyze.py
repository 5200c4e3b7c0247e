"""``dnnlens analyze [MODEL] [--input SHAPE[:DTYPE]]... [--batch B] [--dtype D] [--depth K]
[--json | --csv FILE] [--buffer SIZE] [--train [--optimizer O] [--amp]
[--checkpoint-activations K]]``: the per-layer table of any network; with ``--train`` its
training step (backward MACs, memory).

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
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dnnlens.cli.common import (
    add_model_options,
    check_output_file,
    is_model_file,
    resolve_device,
    roofline_extras,
    validate_model_options,
)
from dnnlens.errors import ModelError, UsageError

#: ``--input`` dtypes (after the colon) and the torch dtype each means.
INPUT_DTYPES = (
    "float32",
    "float16",
    "bfloat16",
    "float64",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="per-layer shapes, weights, MACs, memory traffic and intensity",
        description="Trace a network on the meta device (no weights allocated) and print, per "
        "layer, its shapes, weights, MACs, values moved and compute intensity.",
    )
    add_model_options(parser, batch_default=None, device_default=None)
    parser.add_argument(
        "--depth",
        type=int,
        default=None,
        metavar="K",
        help="merge rows by the first K parts of their module name",
    )
    parser.add_argument(
        "--buffer",
        metavar="SIZE",
        nargs="?",
        const="device",
        default=None,
        help="add each conv/fc/matmul layer's least traffic through an "
        "on-chip buffer of SIZE (16kB, 4MB, 2MiB; alone: the --device "
        "spec's on-chip buffer); with --device the roofline places each "
        "layer by that traffic (docs/dataflow.md)",
    )
    parser.add_argument(
        "--scalesim",
        metavar="FILE",
        help="also write the conv and fc layers as a SCALE-Sim topology CSV",
    )
    parser.add_argument(
        "--netron",
        metavar="FILE",
        help="ONNX models: also write a Netron attachment (.json) or an "
        "annotated copy of the model (.onnx)",
    )
    train = parser.add_argument_group("training step (issue 15)")
    train.add_argument(
        "--train",
        action="store_true",
        help="add backward MACs per layer (input and weight gradients) and the "
        "memory of a training step",
    )
    train.add_argument(
        "--optimizer",
        default="adam",
        choices=("adam", "adamw", "sgd", "sgd-momentum"),
        help="optimizer whose state is counted (default adam)",
    )
    train.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision: --dtype fp16/bf16 compute (fp16 if fp32 is given) "
        "with fp32 master weights and optimizer state",
    )
    train.add_argument(
        "--checkpoint-activations",
        type=int,
        default=None,
        metavar="DEPTH",
        help="checkpoint every module DEPTH levels down: less kept, forward "
        "recomputed in backward",
    )
    train.add_argument(
        "--workspace",
        default=None,
        choices=("onednn",),
        help="add the transient buffers of a backend's kernels to the peak "
        "(onednn: PyTorch's CPU convolutions on x86)",
    )
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
        raise UsageError(
            f"--input must be positive integers separated by commas, like "
            f"1,3,224,224; got {text!r}"
        )
    return shape


def parse_input(text: str) -> tuple[tuple[int, ...], str]:
    """``"1,128:int64"`` -> ``((1, 128), "int64")``; the dtype defaults to float32."""
    shape_text, _, dtype = text.partition(":")
    dtype = dtype.strip().lower() or "float32"
    if dtype not in INPUT_DTYPES:
        raise UsageError(
            f"--input {text!r}: unknown dtype {dtype!r}; choose one of {', '.join(INPUT_DTYPES)}"
        )
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
    """The ``nn.Module`` named by ``spec`` (built on the meta device) and its usual input
    shape (None if unknown); ModelError for an unknown name or a factory that fails."""
    from dnnlens.importers import build_model

    return build_model(spec, device="meta")


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
                raise UsageError(
                    f"give --input N,C,H,W (repeat it for several inputs) for {spec!r}"
                )
            parsed = [((batch or default[0], *default[1:]), "float32")]

        def on_cpu() -> Resolved:
            from dnnlens.importers import build_model

            cpu_model, _ = build_model(spec, device="cpu")
            return Resolved(cpu_model, make_inputs(cpu_model, parsed, real=True), real=True)

        return Resolved(model, make_inputs(model, parsed), on_cpu=on_cpu)
    from dnnlens import zoo

    zoo.check_known(spec)
    built = zoo.build(spec, batch=batch or 1)
    if not parsed:
        return Resolved(
            built.module,
            built.inputs,
            built.needs_real_data,
            f"input: {built.input_note} ({spec}'s default; --input to change it)",
        )
    inputs = make_inputs(built.module, parsed, real=built.needs_real_data)
    if zoo.task(spec) == "detection":  # detection models take a list of (3, H, W) images
        if any(t.dim() != 4 or not t.is_floating_point() for t in inputs):
            raise UsageError(f"{spec} takes images: give --input N,3,H,W (float)")
        inputs = (list(torch.cat(inputs).unbind(0)),)
    return Resolved(built.module, inputs, built.needs_real_data)


def make_inputs(
    model: Any, parsed: list[tuple[tuple[int, ...], str]], real: bool = False
) -> tuple:
    """Tensors of the given shapes and dtypes (meta unless ``real``); integer inputs hold
    values inside the smallest ``nn.Embedding``'s range, so token ids look up real rows."""
    import torch
    from torch import nn

    high = min(
        (m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)), default=2
    )
    tensors = []
    for shape, name in parsed:
        dtype = getattr(torch, name)
        if dtype.is_floating_point:
            tensors.append(
                torch.rand(shape, dtype=dtype)
                if real
                else torch.empty(shape, dtype=dtype, device="meta")
            )
        elif dtype == torch.bool:
            tensors.append(torch.ones(shape, dtype=dtype))
        else:
            tensors.append(torch.randint(0, max(1, high), shape, dtype=dtype))
    return tuple(tensors)


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


def _as_list(given: str | list[str] | None) -> list[str] | None:
    return [given] if isinstance(given, str) else given


def model_file(source: str, given: list[str] | None, batch: int | None) -> Any:
    """The graph of a model file (ONNX, spec, SCALE-Sim topology), or None for a model name
    or factory."""
    from dnnlens.importers import graph_from_file  # ONNX, spec, topology files

    if batch is not None and batch < 1:
        raise UsageError(f"--batch must be a positive integer, got {batch}")
    if given and len(given) > 1 and source.lower().endswith(".onnx"):
        raise UsageError("an ONNX file takes one --input (its other inputs have fixed shapes)")
    return graph_from_file(source, parse_input(given[0])[0] if given else None, batch)


def trace(source: str, resolved: Resolved, dtype: str) -> tuple[Any, Any]:
    """``(Analysis, the module traced)``: on meta, or on real random inputs on the CPU when
    the forward reads tensor values."""
    from dnnlens.analysis import analyze

    if resolved.default_note:
        print(resolved.default_note, file=sys.stderr)
    try:
        return analyze(
            resolved.model, example_inputs=resolved.inputs, dtype=dtype, real=resolved.real
        ), resolved.model
    except ModelError as exc:
        if resolved.real or resolved.on_cpu is None or not needs_real_values(str(exc)):
            raise
    print(
        f"note: {source} reads tensor values in its forward, which the meta device does "
        "not have; tracing it on the CPU on random inputs instead (counts that depend on "
        "the data are those of this run)",
        file=sys.stderr,
    )
    resolved = resolved.on_cpu()
    return analyze(
        resolved.model, example_inputs=resolved.inputs, dtype=dtype, real=True
    ), resolved.model


def load_analysis(
    source: str, given: str | list[str] | None, batch: int | None, dtype: str
) -> tuple[Any, Any]:
    """``(Analysis, nn.Module or None)`` of a MODEL argument (a file gives no module): the
    one resolution every sub-command that takes a MODEL uses."""
    from dnnlens.analysis import analyze

    given = _as_list(given)
    graph = model_file(source, given, batch)
    if graph is not None:
        result, model = analyze(graph, dtype=dtype), None  # nothing for PyTorch to time
    else:
        result, model = trace(source, resolve(source, given, batch), dtype)
    result.graph.name = source
    return result, model


def validate(args: argparse.Namespace) -> None:
    """Every argument checked before anything is printed, traced, probed or written."""
    validate_model_options(args)
    if args.csv:
        check_output_file(args.csv, "the CSV")
    for option in ("scalesim", "netron"):
        if getattr(args, option, None):
            check_output_file(getattr(args, option), "")
    buffer = getattr(args, "buffer", None)
    if buffer not in (None, "device"):
        from dnnlens.dataflow import parse_size

        parse_size(buffer)
    if getattr(args, "train", False) and is_model_file(args.model):
        raise UsageError(
            "--train traces a PyTorch model's backward pass; give a model "
            "name or package.module:factory instead of a file"
        )
    if getattr(args, "train", False) and args.measure:
        raise UsageError(
            "--measure times inference layers; drop it with --train (use "
            "--device for the roofline of a training step)"
        )


def run(args: argparse.Namespace) -> int:
    validate(args)
    if getattr(args, "train", False):
        return _run_training(args, resolve(args.model, _as_list(args.input), args.batch))
    result, model = load_analysis(args.model, args.input, args.batch, args.dtype)
    buffer = getattr(args, "buffer", None)
    placed = result  # what the roofline places each layer by
    if buffer is not None:  # issue 14: traffic through a finite on-chip buffer
        from dnnlens.dataflow import analyze_buffer

        placed, buffer_view = analyze_buffer(result, buffer, getattr(args, "device", None))
    if args.json:
        document = result.to_json_dict(args.depth)
        if buffer is not None:
            buffer_view.add_to_json(document)
        document.update(roofline_extras(model, placed, args, as_json=True))
        document["warnings"] = list(result.warnings)
        print(json.dumps(document, indent=2))
        for warning in result.warnings:  # stdout stays pure JSON; say them on stderr too
            print(f"warning: {warning}", file=sys.stderr)
    else:
        print(result.render(args.depth))
        if buffer is not None:
            print()
            print(buffer_view.render())
        if args.csv:
            result.to_csv(args.csv, args.depth)
            print(f"wrote {args.csv}")
        roofline_extras(model, placed, args, as_json=False)
    _write_extras(args, result)
    return 0


def _run_training(args: argparse.Namespace, resolved: Resolved) -> int:
    """``--train``: the training-step table (or JSON) of dnnlens.training_step."""
    from dnnlens.training_step import analyze_training

    if resolved.default_note:
        print(resolved.default_note, file=sys.stderr)
    step = analyze_training(
        resolved.model,
        example_inputs=resolved.inputs,
        dtype=args.dtype,
        optimizer=args.optimizer,
        amp=args.amp,
        checkpoint_depth=args.checkpoint_activations,
        workspace=args.workspace,
    )
    step.analysis.graph.name = args.model
    if args.json:
        print(step.to_json(args.depth))
        for warning in step.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    else:
        print(step.render(args.depth))
        if args.csv:
            step.to_csv(args.csv, args.depth)
            print(f"wrote {args.csv}")
        if getattr(args, "device", None):
            from dnnlens.roofline import render_roofline, training_roofline

            device = resolve_device(args)
            print()
            print("Forward and backward of each layer (a training step):")
            print(render_roofline(training_roofline(step, device)))
    return 0
