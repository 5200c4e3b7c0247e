"""``dnnlens report [MODEL] -o DIR [--checkpoint PATH] [--device NAME|FILE] [--batch B]``:
one self-contained HTML page (tables, roofline and per-layer charts inlined, memory footprint,
and the verification against PyTorch when a checkpoint is given) plus the charts as PNG/SVG.

MODEL is read as by ``dnnlens analyze``: ``seed``, a torchvision name, ``package.module:factory``,
or a model file (``.onnx``, a ``.toml`` spec, a SCALE-Sim ``.csv`` topology).
``--device probe`` (the default) measures this machine for a second and uses that spec.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dnnlens.cli.common import (
    PROBE,
    add_model_options,
    check_output_folder,
    is_model_file,
    resolve_device,
    validate_model_options,
)
from dnnlens.errors import UsageError

#: Batch sizes of the latency/throughput table (plus the report's own batch).
SWEEP_BATCHES = (1, 16, 256)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report with charts",
        description="Analyse a network, put it on a device's roofline, and write one HTML "
        "page (no server, no network needed) plus the charts as PNG and SVG.",
    )
    add_model_options(parser, batch_default=1, device_default=PROBE)
    parser.add_argument(
        "-o",
        "--out",
        required=True,
        metavar="DIR",
        help="folder for report.html, roofline.{png,svg}, layers.{png,svg}",
    )
    parser.add_argument(
        "--depth",
        type=int,
        default=None,
        metavar="K",
        help="module depth the layer tree opens to and the block chart shows "
        "(default: by model size, at most ~30 rows)",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        default=None,
        help="a trained checkpoint of the seed network: adds the verification "
        "of our engine against PyTorch",
    )
    parser.add_argument(
        "--train",
        action="store_true",
        help="add a training-step section (backward MACs, memory) and the "
        "roofline of forward and backward",
    )
    parser.add_argument(
        "--optimizer",
        default="adam",
        choices=("adam", "adamw", "sgd", "sgd-momentum"),
        help="with --train: the optimizer whose state is counted",
    )
    parser.set_defaults(func=run)


def validate(args: argparse.Namespace) -> None:
    """Every argument checked before anything is probed, traced or written."""
    check_output_folder(args.out, "the report")
    validate_model_options(args)
    if getattr(args, "train", False) and is_model_file(args.model):
        raise UsageError(
            "--train traces a PyTorch model's backward pass; give a model "
            "name or package.module:factory instead of a file"
        )
    if args.checkpoint:
        if args.model != "seed":
            raise UsageError(
                "--checkpoint verification is for the seed network; "
                f"drop --checkpoint to report on {args.model!r}"
            )
        from dnnlens.models import load_checkpoint

        load_checkpoint(args.checkpoint)  # unreadable or misfitting: say so now


def run(args: argparse.Namespace) -> int:
    from dnnlens.analysis import analyze
    from dnnlens.cli.analyze import resolve, trace
    from dnnlens.importers import graph_from_file  # ONNX, spec and topology files
    from dnnlens.report import write_report
    from dnnlens.roofline import roofline

    validate(args)
    given = args.shape
    batches = sorted({*SWEEP_BATCHES, args.batch})
    graph = graph_from_file(args.model, given, args.batch)
    if graph is not None:
        spec = resolve_device(args)
        model = None
        analysis = analyze(graph, dtype=args.dtype)
        sweep = []
        for b in batches:
            at = analyze(graph_from_file(args.model, given, b), dtype=args.dtype)
            if at.batch == b:  # a SCALE-Sim topology has a fixed batch
                sweep.append(roofline(at, spec))
    else:
        # the one resolution analyze uses: a model's default input (a detector's list of
        # images, a video's clip) when --input is not given
        resolved = resolve(args.model, args.input, args.batch)
        analysis, model = trace(args.model, resolved, args.dtype)
        shape = _first_shape(resolved.inputs)
        spec = resolve_device(args)
        sweep = _sweep(args, analysis, model, spec, batches)
    analysis.graph.name = args.model
    verification = None
    if args.checkpoint:
        from dnnlens.verify import verify

        verification = verify(args.checkpoint, data="sample")
    measured, table = None, ""
    if args.measure:  # timings on this machine belong next to this machine's roofline
        from dnnlens.hwprobe import measure_layers, measurement_html, probe

        here = spec if args.device == PROBE else probe(seconds=1.0).to_spec("this-machine")
        measurement = measure_layers(model, analysis, here)
        table = measurement_html(measurement)
        if here is spec:  # measured markers only on the roofline they were measured against
            measured = measurement.measured_rates("ours")
    training = None
    if getattr(args, "train", False):
        from dnnlens.training_step import analyze_training

        assert model is not None  # the checks above refuse --train with a model file
        if shape is None:
            raise UsageError(
                f"--train needs one image tensor: give --input N,C,H,W for {args.model!r}"
            )
        training = analyze_training(
            model, shape, batch=args.batch, dtype=args.dtype, optimizer=args.optimizer
        )
    page = write_report(
        analysis,
        Path(args.out),
        spec,
        verification,
        sweep=sweep,
        measured=measured,
        measurement_html=table,
        depth=args.depth,
        training=training,
    )
    print(f"wrote {page}")
    return 0


def _sweep(
    args: argparse.Namespace, analysis: Any, model: Any, spec: Any, batches: list[int]
) -> list[Any]:
    """The roofline at each batch size of the latency/throughput table; a model traced on
    real values (a detector) only at the report's batch: tracing it at 256 takes minutes."""
    from dnnlens.cli.analyze import resolve, trace
    from dnnlens.roofline import roofline

    if not _on_meta(model):
        return [roofline(analysis, spec)]
    sweep = []
    for b in batches:
        if b != analysis.batch:
            resolved = resolve(args.model, args.input, b)
            resolved.default_note = ""  # said once, for the report's own batch
            sweep.append(roofline(trace(args.model, resolved, args.dtype)[0], spec))
        else:
            sweep.append(roofline(analysis, spec))
    return sweep


def _first_shape(inputs: tuple) -> tuple[int, ...] | None:
    """The first input's shape when it is one tensor (not a detector's list of images)."""
    first = inputs[0] if inputs else None
    return tuple(first.shape) if first is not None and hasattr(first, "shape") else None


def _on_meta(model: Any) -> bool:
    """Whether the model was traced on the meta device (cheap at any batch)."""
    first = next(iter(model.parameters()), None)
    return first is None or first.device.type == "meta"
