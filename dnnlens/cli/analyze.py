"""``dnnlens analyze [MODEL] [--input N,C,H,W] [--batch B] [--dtype D] [--depth K]
[--json | --csv FILE] [--train [--optimizer O] [--amp] [--checkpoint-activations K]]``:
the per-layer table of any network; with ``--train`` its training step (backward MACs, memory).

MODEL is ``seed`` (the course's MNIST network, the default), a torchvision model name
(``resnet18``, ``vit_b_16``, ...; built with ``weights=None`` on the meta device, nothing is
downloaded or allocated) or ``package.module:factory`` (a function returning an ``nn.Module``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

from dnnlens.cli.common import (add_model_options, check_output_file, resolve_device,
                                roofline_extras, validate_model_options)
from dnnlens.errors import ModelError, UsageError

#: Input shapes for models that do not take the usual (1, 3, 224, 224).
_TORCHVISION_INPUTS = {"inception_v3": (1, 3, 299, 299)}
SEED_INPUT = (1, 1, 28, 28)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "analyze", help="per-layer shapes, weights, MACs, memory traffic and intensity",
        description="Trace a network on the meta device (no weights allocated) and print, per "
                    "layer, its shapes, weights, MACs, values moved and compute intensity.")
    add_model_options(parser, batch_default=None, device_default=None)
    parser.add_argument("--depth", type=int, default=None, metavar="K",
                        help="merge rows by the first K parts of their module name")
    parser.add_argument("--buffer", metavar="SIZE", nargs="?", const="device", default=None,
                        help="add each conv/fc/matmul layer's least traffic through an "
                             "on-chip buffer of SIZE (16kB, 4MB, 2MiB; alone: the --device "
                             "spec's on-chip buffer); with --device the roofline places each "
                             "layer by that traffic (docs/dataflow.md)")
    parser.add_argument("--scalesim", metavar="FILE",
                        help="also write the conv and fc layers as a SCALE-Sim topology CSV")
    parser.add_argument("--netron", metavar="FILE",
                        help="ONNX models: also write a Netron attachment (.json) or an "
                             "annotated copy of the model (.onnx)")
    train = parser.add_argument_group("training step (issue 15)")
    train.add_argument("--train", action="store_true",
                       help="add backward MACs per layer (input and weight gradients) and the "
                            "memory of a training step")
    train.add_argument("--optimizer", default="adam",
                       choices=("adam", "adamw", "sgd", "sgd-momentum"),
                       help="optimizer whose state is counted (default adam)")
    train.add_argument("--amp", action="store_true",
                       help="mixed precision: --dtype fp16/bf16 compute (fp16 if fp32 is given) "
                            "with fp32 master weights and optimizer state")
    train.add_argument("--checkpoint-activations", type=int, default=None, metavar="DEPTH",
                       help="checkpoint every module DEPTH levels down: less kept, forward "
                            "recomputed in backward")
    train.add_argument("--workspace", default=None, choices=("onednn",),
                       help="add the transient buffers of a backend's kernels to the peak "
                            "(onednn: PyTorch's CPU convolutions on x86)")
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
    """The ``nn.Module`` named by ``spec`` and its usual input shape (None if unknown).

    Raises ModelError for an unknown name or a factory that fails.
    """
    import torch

    if spec == "seed":
        from dnnlens.models import Net

        with torch.device("meta"):
            return Net(), SEED_INPUT
    if ":" in spec:
        return _from_factory(spec), None
    import torchvision

    if spec not in torchvision.models.list_models():
        from dnnlens.formatting import did_you_mean

        hint = did_you_mean(spec, ["seed", *torchvision.models.list_models()])
        raise ModelError(f"unknown model {spec!r}{hint}: use seed, a torchvision model name "
                         "such as resnet18, or package.module:factory")
    try:
        with torch.device("meta"):
            model = torchvision.models.get_model(spec, weights=None)
    except Exception as exc:  # noqa: BLE001 - report any build failure as one line
        raise ModelError(f"torchvision cannot build {spec!r}: {exc}") from None
    return model, _TORCHVISION_INPUTS.get(spec, (1, 3, 224, 224))


def _from_factory(spec: str) -> Any:
    import torch
    from torch import nn

    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot find factory {spec!r}: {exc}") from None
    try:
        with torch.device("meta"):  # build without allocating weights where the factory can
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


def resolve_source(source: str, input_text: str | None, batch: int | None
                   ) -> tuple[Any, Any, tuple[int, ...] | None]:
    """``(graph, None, None)`` for a model file, ``(None, nn.Module, input shape)`` for a
    model name or factory: the one resolution of a MODEL argument."""
    shape = parse_shape(input_text) if input_text is not None else None
    if batch is not None and batch < 1:
        raise UsageError(f"--batch must be a positive integer, got {batch}")
    from dnnlens.importers.spec import graph_from_file  # issue 6: ONNX, spec, topology files

    graph = graph_from_file(source, shape, batch)
    if graph is not None:
        return graph, None, None
    model, default = resolve_model(source)
    shape = shape or default
    if shape is None:
        raise UsageError(f"give --input N,C,H,W for {source!r}")
    return None, model, shape


def load_analysis(source: str, input_text: str | None, batch: int | None,
                  dtype: str) -> tuple[Any, Any]:
    """``(Analysis, nn.Module or None)`` of a MODEL argument (a file gives no module): what
    every sub-command that takes a MODEL analyses."""
    from dnnlens.analysis import analyze

    graph, model, shape = resolve_source(source, input_text, batch)
    if graph is not None:
        result = analyze(graph, dtype=dtype)  # a file: nothing for PyTorch to time
    else:
        result = analyze(model, shape, batch=batch, dtype=dtype)
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


def run(args: argparse.Namespace) -> int:
    validate(args)
    if getattr(args, "train", False):
        graph, model, shape = resolve_source(args.model, args.input, args.batch)
        if graph is not None:
            raise UsageError("--train traces a PyTorch model's backward pass; give a model "
                             "name or package.module:factory instead of a file")
        return _run_training(args, model, shape)
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


def _run_training(args: argparse.Namespace, model: Any, shape: tuple[int, ...]) -> int:
    """``--train``: the training-step table (or JSON) of dnnlens.training_step."""
    from dnnlens.training_step import analyze_training

    if getattr(args, "measure", False):
        raise UsageError("--measure times inference layers; drop it with --train (use "
                         "--device for the roofline of a training step)")
    step = analyze_training(model, shape, batch=args.batch, dtype=args.dtype,
                            optimizer=args.optimizer, amp=args.amp,
                            checkpoint_depth=args.checkpoint_activations,
                            workspace=args.workspace)
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
