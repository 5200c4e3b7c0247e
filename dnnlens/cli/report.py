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

from dnnlens.errors import UsageError

#: Batch sizes of the latency/throughput table (plus the report's own batch).
SWEEP_BATCHES = (1, 16, 256)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report", help="write a self-contained HTML report with charts",
        description="Analyse a network, put it on a device's roofline, and write one HTML "
                    "page (no server, no network needed) plus the charts as PNG and SVG.")
    parser.add_argument("model", nargs="?", default="seed", metavar="MODEL",
                        help="seed (default), a torchvision model name, or package.module:factory")
    parser.add_argument("-o", "--out", required=True, metavar="DIR",
                        help="folder for report.html, roofline.{png,svg}, layers.{png,svg}")
    parser.add_argument("--checkpoint", metavar="PATH", default=None,
                        help="a trained checkpoint of the seed network: adds the verification "
                             "of our engine against PyTorch")
    parser.add_argument("--device", metavar="NAME|FILE", default="probe",
                        help="device for the roofline: a name from `dnnlens hw list`, a spec "
                             "file, or probe (default: measure this machine for ~1 s)")
    parser.add_argument("--batch", type=int, default=1, metavar="B", help="batch size (default 1)")
    parser.add_argument("--input", metavar="N,C,H,W", default=None,
                        help="input shape (default: the model's usual input)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16", "int8"))
    parser.add_argument("--measure", action="store_true",
                        help="also time each layer on this machine (our engine and PyTorch) "
                             "against the roofline of this machine, probed")
    parser.set_defaults(func=run)


def resolve_device(name: str):
    """The spec for ``--device``: ``probe`` measures this machine, anything else is loaded."""
    from dnnlens.roofline import load_spec

    if name == "probe":
        from dnnlens.hwprobe import probe

        print("probing this machine (~1 s) for the roofline ...")
        return probe(seconds=1.0).to_spec("this-machine")
    return load_spec(name)


def verification_for(checkpoint: str, model_name: str) -> Any:
    """Our engine against PyTorch on the checkpoint (the seed network on its test data)."""
    if model_name != "seed":
        raise UsageError("--checkpoint verification is for the seed network; "
                         f"drop --checkpoint to report on {model_name!r}")
    from dnnlens.verify import verify

    return verify(checkpoint, data="sample")


def run(args: argparse.Namespace) -> int:
    from dnnlens.analysis import analyze
    from dnnlens.cli.analyze import parse_shape, resolve_model
    from dnnlens.report import write_report
    from dnnlens.roofline import batch_sweep

    if args.batch < 1:
        raise UsageError(f"--batch must be a positive integer, got {args.batch}")
    from dnnlens.importers import graph_from_file  # ONNX, spec and topology files
    from dnnlens.roofline import roofline

    given = parse_shape(args.input) if args.input else None
    batches = sorted({*SWEEP_BATCHES, args.batch})
    graph = graph_from_file(args.model, given, args.batch)
    if graph is not None:
        if args.measure:
            raise UsageError("--measure times a PyTorch model against our engine; give a "
                             "model name or package.module:factory instead of a file")
        spec = resolve_device(args.device)
        model = None
        analysis = analyze(graph, dtype=args.dtype)
        sweep = []
        for b in batches:
            at = analyze(graph_from_file(args.model, given, b), dtype=args.dtype)
            if at.batch == b:  # a SCALE-Sim topology has a fixed batch
                sweep.append(roofline(at, spec))
    else:
        model, default = resolve_model(args.model)
        shape = given or default
        if shape is None:
            raise UsageError(f"give --input N,C,H,W for {args.model!r}")
        spec = resolve_device(args.device)
        analysis = analyze(model, shape, batch=args.batch, dtype=args.dtype)
        sweep = batch_sweep(model, spec, batches, shape, args.dtype)
    analysis.graph.name = args.model
    verification = verification_for(args.checkpoint, args.model) if args.checkpoint else None
    measured, table = None, ""
    if args.measure:  # timings on this machine belong next to this machine's roofline
        from dnnlens.hwprobe import measure_layers, measurement_html

        here = spec if args.device == "probe" else resolve_device("probe")
        measurement = measure_layers(model, analysis, here)
        table = measurement_html(measurement)
        if here is spec:  # measured markers only on the roofline they were measured against
            measured = measurement.measured_rates("ours")
    page = write_report(analysis, Path(args.out), spec, verification, sweep=sweep,
                        measured=measured, measurement_html=table)
    print(f"wrote {page}")
    return 0
