"""Main-memory traffic per MAC of resnet18 and mobilenet_v2 through on-chip buffers of 16 kB to
4 MB: the mapper's best mapping per layer (dnnlens.dataflow), next to the compulsory traffic
(every value once) and the no-reuse bound, with the time the mapper takes.

Prints the Markdown of the "Data movement under a finite buffer (issue 14)" section of
BENCHMARKS.md: `python benchmarks/dataflow.py [--batch 1] [--dtype fp32]`.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time
from datetime import UTC, datetime

from dnnlens.analysis import analyze
from dnnlens.cli.analyze import resolve_model
from dnnlens.dataflow import Problem, compulsory, covered_nodes, no_reuse, search, size_text

BUFFERS = (
    16_000,
    32_000,
    64_000,
    128_000,
    256_000,
    512_000,
    1_000_000,
    2_000_000,
    4_000_000,
)  # bytes: 16 kB .. 4 MB
MODELS = ("resnet18", "mobilenet_v2")


def markdown_table(headers, rows) -> str:
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(headers))) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in subprocess.run(
                ["lscpu"], capture_output=True, text=True, check=False
            ).stdout.splitlines()
            if line.startswith("Model name")
        ),
        platform.processor(),
    )
    return f"{model}, {platform.machine()}, Python {platform.python_version()}"


def run_model(name: str, batch: int, dtype: str, halo: bool) -> dict:
    model, shape = resolve_model(name)
    graph = analyze(model, (batch, *shape[1:]), dtype=dtype).graph
    problems = [Problem.from_node(node) for node in covered_nodes(graph)]
    per_layer = {p.name: {} for p in problems}
    totals = {}
    for buffer in BUFFERS:
        moved = seconds = 0.0
        slowest = ("", 0.0)
        for p in problems:
            start = time.perf_counter()
            found = search(p, buffer, dtype=dtype, halo=halo)
            took = time.perf_counter() - start
            seconds += took
            slowest = max(slowest, (p.name, took), key=lambda item: item[1])
            per_layer[p.name][buffer] = found.best.total / p.macs
            moved += found.best.total
        totals[buffer] = (moved, seconds, slowest)
    macs = sum(p.macs for p in problems)
    return {
        "problems": problems,
        "per_layer": per_layer,
        "totals": totals,
        "macs": macs,
        "compulsory": sum(sum(compulsory(p).values()) for p in problems),
        "no_reuse": sum(sum(no_reuse(p).values()) for p in problems),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="fp32")
    args = parser.parse_args()
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"`python benchmarks/dataflow.py`, {now}, {machine()}; batch {args.batch}, "
        f"{args.dtype}; buffers {', '.join(size_text(b) for b in BUFFERS)} (kB = 1000 B). "
        "Traffic = values moved between main memory and the buffer by the mapper's best "
        "mapping (reads + writes, partial sums both ways), per MAC; lower is better. "
        "Compulsory: every value once (the least possible); no reuse: every MAC fetches "
        "its operands and its partial sum.\n"
    )
    for name in MODELS:
        results = {halo: run_model(name, args.batch, args.dtype, halo) for halo in (False, True)}
        plain = results[False]
        print(
            f"### {name}: totals over its {len(plain['problems'])} conv and fc layers "
            f"({plain['macs']:,} MACs)\n"
        )
        rows = []
        for halo, result in results.items():
            for buffer in BUFFERS:
                moved, seconds, (slow_name, slow) = result["totals"][buffer]
                rows.append(
                    [
                        size_text(buffer),
                        "on" if halo else "off",
                        f"{moved / result['macs']:.4f}",
                        f"{moved / result['compulsory']:.2f}",
                        f"{result['macs'] / moved:.1f}",
                        f"{seconds:.2f}",
                        f"{slow:.2f} ({slow_name})",
                    ]
                )
        rows.append(
            [
                "compulsory",
                "",
                f"{plain['compulsory'] / plain['macs']:.4f}",
                "1.00",
                f"{plain['macs'] / plain['compulsory']:.1f}",
                "",
                "",
            ]
        )
        rows.append(
            [
                "no reuse",
                "",
                f"{plain['no_reuse'] / plain['macs']:.4f}",
                f"{plain['no_reuse'] / plain['compulsory']:.2f}",
                f"{plain['macs'] / plain['no_reuse']:.3f}",
                "",
                "",
            ]
        )
        print(
            markdown_table(
                [
                    "buffer",
                    "halo",
                    "traffic / MAC",
                    "x compulsory",
                    "MACs / value",
                    "mapper s (all layers)",
                    "slowest layer s",
                ],
                rows,
            )
        )
        print(f"\n{name} per layer, traffic per MAC (halo off):\n")
        rows = []
        for p in plain["problems"]:
            rows.append(
                [
                    p.name,
                    f"{p.macs:,}",
                    f"{sum(compulsory(p).values()) / p.macs:.4f}",
                    *(f"{plain['per_layer'][p.name][b]:.4f}" for b in BUFFERS),
                ]
            )
        print(
            markdown_table(["layer", "MACs", "compulsory", *(size_text(b) for b in BUFFERS)], rows)
        )
        print()


if __name__ == "__main__":
    main()
