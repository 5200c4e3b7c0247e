"""What the sub-commands share: the model options, defined once, and the checks that run
before any output, probe or training starts.

``analyze`` and ``report`` take the same model, ``--input``, ``--batch``, ``--dtype``,
``--device`` and ``--measure``; :func:`add_model_options` defines them for both and
:func:`validate_model_options` checks every one of them (and the output paths, with
:func:`check_output_file` / :func:`check_output_folder`) so that a bad argument is one
``error:`` line and exit code 2 with nothing printed, probed or traced before it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from dnnlens.errors import UsageError

#: Value types of --dtype (bytes per value: fp32 4, fp16 2, bf16 2, int8 1).
DTYPES = ("fp32", "fp16", "bf16", "int8")
#: ``--device probe``: measure this machine instead of reading a spec.
PROBE = "probe"


def add_model_options(
    parser: argparse.ArgumentParser, *, batch_default: int | None, device_default: str | None
) -> None:
    """MODEL, --input, --batch, --dtype, --device and --measure, as analyze and report take
    them."""
    parser.add_argument(
        "model",
        nargs="?",
        default="seed",
        metavar="MODEL",
        help="seed (default, the course network), a torchvision model name such as resnet18, "
        "package.module:factory, or a model file (.onnx, .toml spec, SCALE-Sim .csv)",
    )
    parser.add_argument(
        "--input",
        metavar="N,C,H,W[:DTYPE]",
        action="append",
        default=None,
        help="an input's shape with the batch, optionally typed (1,128:int64); repeat for a "
        "model with several inputs (default: the model's own input, printed)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=batch_default,
        metavar="B",
        help="batch size; replaces N of the input shape"
        + (f" (default {batch_default})" if batch_default else ""),
    )
    parser.add_argument(
        "--dtype",
        default="fp32",
        choices=DTYPES,
        help="bytes per value for weight bytes and bytes moved (default fp32)",
    )
    probe_help = f"; {PROBE} measures this machine for ~1 s" + (
        " (the default)" if device_default == PROBE else ""
    )
    parser.add_argument(
        "--device",
        metavar="NAME|FILE",
        default=device_default,
        help=f"device for the roofline: a name from `dnnlens hw list` or a spec file{probe_help}",
    )
    parser.add_argument(
        "--measure",
        action="store_true",
        help="also time each layer of our engine and PyTorch on this machine, "
        "next to the roofline of this machine (probed for a second)",
    )


def validate_model_options(args: argparse.Namespace) -> None:
    """Check the shared options; sets ``args.shape`` (the first --input's shape or None) and
    ``args.spec`` (the loaded --device spec, None for none or ``probe``)."""
    from dnnlens.cli.analyze import parse_input

    inputs = [parse_input(text) for text in args.input or []]
    args.shape = inputs[0][0] if inputs else None  # the first input's shape
    if args.batch is not None and args.batch < 1:
        raise UsageError(f"--batch must be a positive integer, got {args.batch}")
    if getattr(args, "depth", None) is not None and args.depth < 0:
        raise UsageError(f"--depth must be 0 or more, got {args.depth}")
    args.spec = None
    if args.device and args.device != PROBE:
        from dnnlens.roofline import load_spec

        args.spec = load_spec(args.device)
        args.spec.peak(args.dtype)  # a spec without a peak for this dtype fails now
    if args.measure and is_model_file(args.model):
        raise UsageError(
            "--measure times a PyTorch model against our engine; give a model "
            "name or package.module:factory instead of a file"
        )


def is_model_file(model: str) -> bool:
    """Whether MODEL names a file (ONNX, spec, topology) rather than a PyTorch model."""
    from dnnlens.importers import is_model_file as names_a_file

    return names_a_file(model)


def check_output_file(path: str | os.PathLike[str], what: str) -> None:
    """UsageError now, before any work, if a file cannot be written at ``path``: a folder in
    its place, a file in the way of its folder, or a folder we may not write. Creates
    nothing (the write itself creates missing folders)."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{target}: is a folder; give a file name for {what}")
    folder = target.parent if str(target.parent) else Path(".")
    _check_folder(
        folder, f"{target}: cannot write {what + ' ' if what else ''}here", "choose another path"
    )


def check_output_folder(path: str | os.PathLike[str], what: str) -> None:
    """UsageError now if ``path`` cannot be (or become) a folder we can write into."""
    folder = Path(path)
    _check_folder(folder, f"{folder}: cannot write {what} here", "choose another -o folder")


def _check_folder(folder: Path, problem: str, remedy: str) -> None:
    """The folder, or the nearest of its parents that exists, must be a writable folder."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise UsageError(f"{problem} ({existing} is a file, not a folder); {remedy}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{problem} ({existing} is not writable); {remedy}")


def resolve_device(args: argparse.Namespace, say: Any = print) -> Any:
    """The spec for --device, after :func:`validate_model_options`: the loaded spec, or this
    machine probed for a second when --device is ``probe``; ``say`` tells the user."""
    if args.device != PROBE:
        return args.spec
    from dnnlens.hwprobe import probe

    say("probing this machine (~1 s) for the roofline ...")
    return probe(seconds=1.0).to_spec("this-machine")


def roofline_extras(
    model: Any, analysis: Any, args: argparse.Namespace, *, as_json: bool
) -> dict[str, Any]:
    """What --device and --measure add to ``analyze``: the roofline on the device, the memory
    footprint and, with --measure, per-layer timings of our engine and PyTorch on this machine
    next to the roofline of this machine (probed for a second).

    Printed as text after the table, or returned as JSON-ready data (nothing printed on
    stdout) when ``as_json``; progress notes go to stderr then.
    """
    import sys

    from dnnlens.roofline import (
        footprint_dict,
        memory_footprint,
        render_roofline,
        roofline,
        roofline_dict,
    )

    def say(text: str = "") -> None:
        print(text, file=sys.stderr if as_json else sys.stdout)

    extras: dict[str, Any] = {}
    if not (args.device or args.measure):
        return extras
    foot = memory_footprint(analysis.graph, analysis.dtype)
    extras["footprint"] = footprint_dict(foot)
    if args.device:
        spec = resolve_device(args, say)
        roof = roofline(analysis, spec)
        extras["roofline"] = roofline_dict(roof, foot)
        if not as_json:
            say()
            say(render_roofline(roof, foot))
    if args.measure:
        from dnnlens.hwprobe import measure_layers, probe

        say(f"{'' if as_json else chr(10)}probing this machine (1 s) for its roofline ...")
        here = probe(seconds=1.0).to_spec("this-machine")
        roof_here = roofline(analysis, here)
        measurement = measure_layers(model, analysis, here)
        extras["measure"] = {"roofline": roofline_dict(roof_here, foot), **measurement.to_dict()}
        if not as_json:
            say(render_roofline(roof_here, None if args.device else foot))
            say()
            say(f"Measured on this machine, per batch of {analysis.batch} (best of repeats):")
            say(measurement.render())
            if not measurement.engine_covers:
                say("our engine has no kernel for some layer: its timings stop there")
    return extras
