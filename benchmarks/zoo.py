"""The torchvision classification zoo through our engine, one row per model (issue 10).

For each model of ``torchvision.models.list_models(module=torchvision.models)`` (or the names
given): built with ``weights=None`` and seeded weights, run on 8 seeded random inputs through
our compiled engine and through PyTorch (:func:`dnnlens.verify.verify`), against the bar of
tests/test_engine_zoo.py: 0 differing predictions and max |logit diff| <= 1e-3 x max
|PyTorch logit|. A model the engine refuses (an operator without a kernel) gets a row naming
the layer and the operator.

The table goes to ``docs/engine-zoo.md`` (rewritten whole). Every MAC of every image runs in our
own loop nests, so the whole list takes hours on two cores: ``python benchmarks/zoo.py resnet18
mobilenet_v2`` runs some.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torchvision

import dnnlens.verify
from dnnlens.errors import DnnlensError
from dnnlens.fileio import atomic_write_text
from dnnlens.verify import verify

ROOT = Path(__file__).resolve().parent.parent
IMAGES = 8
BAR = 1e-3


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def row(name: str) -> str:
    start = time.perf_counter()
    try:
        result = verify(name, images=IMAGES, seed=0, layers=False)
        if result.max_abs_reference == 0:  # a zero-initialised head: check every layer
            return layer_row(name, start)
    except DnnlensError as exc:
        return f"| {name} | refused | | | | {str(exc).replace('|', '/')} |"
    except Exception as exc:  # noqa: BLE001 - a bug, reported in the table, not a stop
        first = (str(exc).splitlines() or [""])[0].replace("|", "/")
        return f"| {name} | CRASH | | | | {type(exc).__name__}: {first} |"
    seconds = time.perf_counter() - start
    ratio = result.max_abs_diff / result.max_abs_reference
    ok = result.mismatches == 0 and ratio <= BAR
    return (
        f"| {name} | {'pass' if ok else 'FAIL'} | {result.mismatches} | "
        f"{result.max_abs_diff:.3g} | {result.max_abs_reference:.3g} | "
        f"{seconds:.0f} s |"
    )


def layer_row(name: str, start: float) -> str:
    """A model whose logits are all 0 at its initial weights (torchvision zero-initialises
    the ViTs' heads), where the logit bar says nothing: every layer's output against the
    real module's own (forward hooks), on 2 images; pass = each layer within the bar of its
    own largest value. The row shows the worst layer."""
    result = verify(name, images=2, seed=0, layers=True)
    checked = [
        layer
        for layer in result.layers
        if layer.max_abs_diff is not None and layer.max_abs_reference
    ]
    if not checked:
        return f"| {name} | FAIL | {result.mismatches} | | 0 | no layer to compare |"
    worst = max(checked, key=lambda layer: layer.max_abs_diff / layer.max_abs_reference)
    ratio = worst.max_abs_diff / worst.max_abs_reference
    ok = result.mismatches == 0 and ratio <= BAR
    return (
        f"| {name} | {'pass' if ok else 'FAIL'} (per layer: logits all 0) | "
        f"{result.mismatches} | {worst.max_abs_diff:.3g} | {worst.max_abs_reference:.3g} | "
        f"{time.perf_counter() - start:.0f} s; {len(checked)} layers, worst "
        f"{worst.name} |"
    )


def finished_rows(path: Path) -> dict[str, str]:
    """The model rows of an earlier run's table (a stopped run resumes after them)."""
    if not path.exists():
        return {}
    rows = {}
    for line in path.read_text().splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) > 2 and cells[2].split(" ")[0] in {"pass", "FAIL", "refused", "CRASH"}:
            rows[cells[1]] = line
    return rows


def by_macs(names: list[str]) -> list[str]:
    """Cheapest first (MACs per image from our analysis), so that a run stopped early has
    covered the most models; models the analysis cannot read last."""
    from dnnlens.analysis import analyze
    from dnnlens.importers import build_model

    def macs(name: str) -> float:
        try:
            model, shape = build_model(name, device="meta")
            return analyze(model.eval(), shape).totals.macs
        except Exception:  # noqa: BLE001 - ordering only; the row reports the failure
            return float("inf")

    return sorted(names, key=macs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="models (default: the whole list)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "engine-zoo.md")
    parser.add_argument(
        "--resume", action="store_true", help="keep the rows --out already has; run the rest"
    )
    parser.add_argument(
        "--layer-budget-gb",
        type=float,
        default=6.0,
        help="GB of intermediate values each side holds at once in a per-layer check "
        "(fewer: more runs of each side; vit_h_14 makes 14 GB per image)",
    )
    args = parser.parse_args(argv)
    dnnlens.verify.LAYER_BUDGET = int(args.layer_budget_gb * 2**30)
    names = args.names or by_macs(
        sorted(torchvision.models.list_models(module=torchvision.models))
    )
    lines = [
        "# The torchvision zoo through our engine",
        "",
        f"`{' '.join(['python benchmarks/zoo.py', *args.names])}`, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {cpu_name()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads. {IMAGES} seeded random inputs per model, weights=None with seeded "
        f"initialisation; pass = 0 differing predictions and max |diff| <= {BAR:g} x max "
        "|PyTorch logit|. The time includes building the model, tracing it and compiling "
        "the kernels. Several models' initial weights (weights=None) make their logits tiny "
        "(1e-14 for efficientnet, 1e-9 for mobilenet): the relative bar holds, but says less "
        "than for a trained model; `dnnlens verify MODEL` also compares every layer's "
        "output with the real module's.",
        "",
        "| model | result | differing predictions | max abs logit diff | max abs PyTorch logit "
        "| time or reason |",
        "|---|---|---:|---:|---:|---|",
    ]
    done = finished_rows(args.out) if args.resume else {}
    for name in names:
        lines.append(done.get(name) or row(name))
        print(lines[-1], flush=True)
        atomic_write_text(args.out, "\n".join(lines) + "\n")  # a stopped run keeps its rows
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
