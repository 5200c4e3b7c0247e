"""``dnnlens traffic MODEL --layer NAME --buffer SIZE [--outer "P=8,Q=2,M=4"] [--halo]
[--double-buffer] [--dtype D] [--json]``: the main-memory traffic of one layer through a
finite on-chip buffer, under a given mapping or the mapper's best (with the named dataflows
and the compulsory and no-reuse bounds). MODEL is anything ``dnnlens analyze`` takes.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from dnnlens.cli.analyze import load_analysis


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "traffic",
        help="data moved by one layer through a finite on-chip buffer",
        description="Main-memory traffic of one conv, fc or matmul layer through an on-chip "
        "buffer of SIZE bytes, for a mapping (the outer loops, outermost first, "
        "with their trip counts) or the best one the mapper finds, next to the "
        "weight-, output- and input-stationary dataflows and the compulsory and "
        "no-reuse bounds. See docs/dataflow.md.",
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="seed, a torchvision model name, package.module:factory, or a "
        ".onnx / .toml / SCALE-Sim .csv file (as dnnlens analyze)",
    )
    parser.add_argument(
        "--layer",
        required=True,
        metavar="NAME",
        help="the layer's name as dnnlens analyze lists it (conv1, fc, ...)",
    )
    parser.add_argument(
        "--buffer",
        required=True,
        metavar="SIZE",
        help="on-chip buffer size: 16kB, 4MB, 2MiB or bytes",
    )
    parser.add_argument(
        "--outer",
        metavar="LOOPS",
        default=None,
        help='main-memory-level loops, outermost first, e.g. "P=8,Q=2,M=4" '
        '(dimensions G N M C P Q R S; "" for none); without it the '
        "mapper searches",
    )
    parser.add_argument(
        "--halo",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="sliding-window reuse: a window that slides fetches only its new "
        "rows or columns (default: off)",
    )
    parser.add_argument(
        "--double-buffer",
        action="store_true",
        help="tiles must fit twice (the next tile loads while one computes)",
    )
    parser.add_argument(
        "--dtype",
        default="fp32",
        choices=("fp32", "fp16", "bf16", "int8"),
        help="bytes per value (default fp32)",
    )
    parser.add_argument(
        "--input",
        metavar="N,C,H,W",
        default=None,
        help="input shape with the batch (default: the model's usual input)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        metavar="B",
        help="batch size; replaces N of the input shape",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dnnlens.dataflow import parse_size, traffic

    buffer = parse_size(args.buffer)  # a bad size fails before any model is traced
    analysis, _ = load_analysis(args.model, args.input, args.batch, args.dtype)
    report = traffic(
        analysis,
        args.layer,
        buffer,
        args.outer,
        halo=args.halo,
        double_buffer=args.double_buffer,
        dtype=args.dtype,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(render(report))
    return 0


# ---------------------------------------------------------------------------------------------
# Text


def render(report: Any) -> str:
    """The report as text: the layer, then one row per mapping, then the bounds."""
    from dnnlens.dataflow import DIMS, size_text

    p = report.problem
    chosen = report.found.best if report.found else report.traffic
    dims = " ".join(f"{d}={p.size(d)}" for d in DIMS)
    lines = [
        f"{p.name} of {report.model}: {p.kind}, {dims}"
        + (
            f" (stride {p.stride[0]}x{p.stride[1]}, dilation {p.dilation[0]}x"
            f"{p.dilation[1]}, padding {p.pad[0]}x{p.pad[1]})"
            if p.kind == "conv"
            else ""
        )
        + f", {p.macs:,} MACs",
        (
            f"buffer {size_text(chosen.buffer_bytes)} ({chosen.buffer_bytes:,} B), "
            f"{chosen.dtype} ({chosen.bytes_per_value} B per value), halo reuse "
            f"{'on' if chosen.halo else 'off'}, "
            f"{'double' if chosen.double_buffer else 'single'} buffering"
        ),
        "values moved from and to main memory; intensity = MACs per value moved",
        "",
    ]
    rows: list[Sequence[str]] = []
    if report.found:
        found = report.found
        rows.append(_row(f"best ({found.best.dataflow or 'no tensor kept'})", found.best))
        for name, t in found.dataflows.items():
            rows.append(_row(name, t) if t else (name, _why_none(p, name)))
    else:
        rows.append(_row("given", report.traffic))
    compulsory = chosen.compulsory
    lines += _table(rows, compulsory)
    lines.append("")
    lines.append(
        f"tile of the {'best' if report.found else 'given'} mapping: "
        + " ".join(f"{d}={chosen.tile[d]}" for d in DIMS)
        + "; footprint "
        + ", ".join(f"{t} {v:,} B" for t, v in chosen.footprint_bytes.items())
        + f" (needs {chosen.needed_bytes:,} B)"
    )
    lines.append(
        f"compulsory {compulsory:,} values (each value once; intensity "
        f"{chosen.compulsory_intensity:.4g})"
    )
    if report.found:
        no_reuse = sum(report.found.no_reuse.values())
        lines.append(
            f"no reuse   {no_reuse:,} values (every MAC fetches its operands and "
            f"its partial sum; intensity {p.macs / no_reuse:.4g})"
        )
        how = "exhaustive" if report.found.exhaustive else f"pruned: {report.found.pruning}"
        lines.append(
            f"mapper: {report.found.mappings_scored:,} mappings scored in "
            f"{report.found.seconds:.3f} s ({how})"
        )
    return "\n".join(lines)


def _why_none(problem: Any, dataflow: str) -> str:
    """Why the mapper found no mapping of a named dataflow."""
    from dnnlens.dataflow import DATAFLOWS, DIMS, RELEVANT

    tensor = DATAFLOWS[dataflow]
    others = [d for d in DIMS if d not in RELEVANT[tensor]]
    if all(problem.size(d) == 1 for d in others):
        return (
            f"none: {' = '.join(others)} = 1, no loop to keep the {tensor} across, and "
            f"the whole layer does not fit"
        )
    return "none: no mapping of this kind fits the buffer"


def _row(label: str, t: Any) -> tuple[str, ...]:
    return (
        label,
        str(t.outer) or "(none)",
        f"{sum(t.footprint_bytes.values()):,}",
        f"{t.reads['weights']:,}",
        f"{t.reads['inputs']:,}",
        f"{t.reads['outputs']:,}",
        f"{t.writes['outputs']:,}",
        f"{t.total:,}",
        f"{t.total / t.compulsory:.2f}",
        f"{t.intensity:.4g}",
    )


def _table(rows: list[Sequence[str]], compulsory: int) -> list[str]:
    header = (
        "mapping",
        "outer loops",
        "tiles B",
        "weights",
        "inputs",
        "psum reads",
        "out writes",
        "total",
        "x compulsory",
        "intensity",
    )
    full = [r for r in rows if len(r) == len(header)]
    widths = [max(len(r[i]) for r in [header, *full]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        if len(cells) != len(header):
            return f"{cells[0].ljust(widths[0])}  {cells[1]}"
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *map(line, rows)]
