"""Speed of our loop-nest engine against PyTorch on the reference network (issue 3).

Side by side in one run, same thread count (torch and Numba both on 2 threads):

(a) the compiled engine against PyTorch eager on CPU, each at its best batch size;
(b) one image at a time, against PyTorch's per-image loop (what the course notebook does);
(c) our readable reference path against the notebook's own NumPy loops (copied below as the
    anchor), on a subset since the anchor is slow;

plus Numba's compile time, cold (empty cache) and cached, measured in fresh processes.
Results go to ``BENCHMARKS.md`` under "## Engine (issue 3)" (only that section is rewritten).

Run it on a quiet machine: ``python benchmarks/engine.py`` (``--quick`` for a short check).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from dnnlens import engine
from dnnlens.data import load_data
from dnnlens.importers.torch import import_torch
from dnnlens.models import Net

THREADS = 2
MACS_PER_IMAGE = 338_112  # conv1 78,400 + conv2 156,800 + fc1 100,352 + fc2 2,560
NOMINAL_PEAK = 2 * 16 * 2.6  # GMAC/s: 2 cores x 16 FP32 FMA/cycle x 2.6 GHz (lscpu base)
FASHION = Path("/usr/share/datasets/fashion-mnist")
SECTION = "## Engine (issue 3)"
ROOT = Path(__file__).resolve().parent.parent


# --- the anchor: the course notebook's own loops (copied from its cells) -------------------
def nb_conv(x, W, b):
    # DO NOT USE ANY LIBRARY CONVOLUTION FUNCTIONS. WRITE YOUR OWN LOOP NEST.
    if np.ndim(x) == 2:
        x = np.expand_dims(x, axis=0)
    C_in, M, N = x.shape
    C_out, C_t, Kx, Ky = W.shape
    x_padded = np.pad(x, ((0, 0), (Kx // 2, Kx // 2), (Ky // 2, Ky // 2)))
    out = np.zeros((C_out, M, N))
    for c in range(C_out):
        for i in range(M):
            for j in range(N):
                out[c, i, j] = np.sum(x_padded[:, i : i + Kx, j : j + Ky] * W[c, :, :, :]) + b[c]
    return out


def nb_fc(x, W, b):
    out = np.zeros(W.shape[0])
    for i in range(W.shape[0]):
        sum_val = 0
        for j in range(W.shape[1]):
            sum_val += x[j] * W[i, j]
        out[i] = sum_val + b[i]
    return out


def nb_relu(x):
    return np.maximum(0, x)


def nb_pool2(x, dh, dw):
    C, H, W = x.shape
    H_out, W_out = H // dh, W // dw
    out = np.zeros((C, H_out, W_out))
    for c in range(C):
        for i in range(H_out):
            for j in range(W_out):
                out[c, i, j] = np.max(x[c, i * dh : (i + 1) * dh, j * dw : (j + 1) * dw])
    return out


def nb_run_inference(image, p):
    l3 = nb_pool2(nb_relu(nb_conv(image, p["conv1.weight"], p["conv1.bias"])), 2, 2)
    l6 = nb_pool2(nb_relu(nb_conv(l3, p["conv2.weight"], p["conv2.bias"])), 2, 2)
    l8 = nb_relu(nb_fc(l6.flatten(), p["fc1.weight"], p["fc1.bias"]))
    return np.argmax(nb_fc(l8, p["fc2.weight"], p["fc2.bias"]))


# --- measuring --------------------------------------------------------------------------
def best_rate(run: Callable[[], object], images: int, repeats: int) -> float:
    """Images per second of the fastest of ``repeats`` runs (the least disturbed one)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return images / best


def torch_batched(model: torch.nn.Module, images: torch.Tensor, batch: int) -> None:
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            model(images[i : i + batch])


def torch_per_image(model: torch.nn.Module, images: torch.Tensor) -> None:
    with torch.inference_mode():
        for i in range(len(images)):
            model(images[i : i + 1]).argmax(dim=1).item()


def ours_per_image(plan: engine.Plan, images: np.ndarray) -> None:
    for i in range(len(images)):
        int(plan.run(images[i : i + 1]).logits.argmax())


COMPILE_SNIPPET = """
import time, numpy as np
t = time.perf_counter()
from dnnlens import engine
from dnnlens.importers.torch import import_torch
from dnnlens.models import Net
net = Net().eval(); graph = import_torch(net, (1, 1, 28, 28)); w = engine.load_weights(net)
x = np.zeros((40, 1, 28, 28), np.float32)
t0 = time.perf_counter()
engine.run(graph, w, x); engine.run(graph, w, x[:1])
print(time.perf_counter() - t0)
"""


def compile_seconds(cache_dir: str) -> float:
    """First calls (batch and single image) of the compiled engine in a fresh process."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, NUMBA_NUM_THREADS=str(THREADS))
    done = subprocess.run(
        [sys.executable, "-c", COMPILE_SNIPPET],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def measured_peak() -> float | None:
    """This machine's FP32 FMA rate on all cores (GMAC/s), from dnnlens.hwprobe if present."""
    try:
        from dnnlens import hwprobe
    except ImportError:
        return None
    return hwprobe.measure_fma(1.0, threads=THREADS) / 1e9


# --- the run ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)

    torch.set_num_threads(THREADS)
    import numba

    numba.set_num_threads(THREADS)
    if (FASHION / "t10k-images-idx3-ubyte.gz").is_file():
        data = load_data(f"idx:{FASHION}", "test")
    else:
        sample = load_data("sample", "test")
        data = type(sample)(
            np.tile(sample.images, (10, 1, 1, 1)), np.tile(sample.labels, 10), sample.name + " x10"
        )
    images = data.images if not args.quick else data.images[:2000]
    repeats = 2 if args.quick else 3
    torch.manual_seed(0)
    model = Net().eval()  # speed does not depend on the weights' values
    graph = import_torch(model, (1, 1, 28, 28))
    weights = engine.load_weights(model)
    timages = torch.from_numpy(images)
    n = len(images)

    with tempfile.TemporaryDirectory() as cache:
        cold = compile_seconds(cache)
        cached = compile_seconds(cache)

    # (a) batched, each at its best batch size
    engine.predict(graph, weights, images[:4096])  # warm-up (and compile, if not cached)
    torch_batched(model, timages[:4096], 256)
    torch_rates = {
        b: best_rate(lambda b=b: torch_batched(model, timages, b), n, repeats)
        for b in (32, 64, 128, 256, 512, 1024, n)
    }
    our_rates = {
        b: best_rate(lambda b=b: engine.predict(graph, weights, images, batch=b), n, repeats)
        for b in (256, 1024, 2048, 4096)
    }
    ours_logits = engine.predict(graph, weights, images)
    with torch.inference_mode():
        torch_logits = model(timages).numpy()
    mismatches = int(np.sum(ours_logits.argmax(1) != torch_logits.argmax(1)))
    max_diff = float(np.max(np.abs(ours_logits - torch_logits)))

    # (b) one image at a time
    single = images[: 1000 if args.quick else 3000]
    plan = engine.prepare(graph, weights)  # planned once, as a loop over images should
    ours_per_image(plan, single[:20])
    torch_per_image(model, timages[:20])
    our_single = best_rate(lambda: ours_per_image(plan, single), len(single), repeats)
    torch_single = best_rate(
        lambda: torch_per_image(model, timages[: len(single)]), len(single), repeats
    )

    # (c) the readable reference path against the notebook's loops
    subset = images[: 20 if args.quick else 100]
    params = {k: v.astype(np.float32) for k, v in weights.items()}
    notebook = best_rate(
        lambda: [nb_run_inference(img[0], params) for img in subset], len(subset), 1
    )
    reference_plan = engine.prepare(graph, weights, "reference")
    reference_single = best_rate(
        lambda: [reference_plan.run(subset[i : i + 1]) for i in range(len(subset))], len(subset), 1
    )
    reference_batched = best_rate(
        lambda: engine.predict(graph, weights, images[:2000], "reference"), 2000, 1
    )

    peak = measured_peak()
    results = dict(
        n=n,
        data=data.name,
        torch_rates=torch_rates,
        our_rates=our_rates,
        mismatches=mismatches,
        max_diff=max_diff,
        our_single=our_single,
        torch_single=torch_single,
        single=len(single),
        notebook=notebook,
        reference_single=reference_single,
        reference_batched=reference_batched,
        subset=len(subset),
        cold=cold,
        cached=cached,
        peak=peak,
    )
    text = render(results)
    print(text)
    write_section(args.out, text)
    return 0


def gmacs(rate: float) -> float:
    return rate * MACS_PER_IMAGE / 1e9


def render(r: dict) -> str:
    torch_best = max(r["torch_rates"], key=r["torch_rates"].get)
    ours_best = max(r["our_rates"], key=r["our_rates"].get)
    t_rate, o_rate = r["torch_rates"][torch_best], r["our_rates"][ours_best]
    peak_note = (
        f"; measured FMA peak of this machine (dnnlens.hwprobe, {THREADS} threads): "
        f"{r['peak']:.0f} GMAC/s"
        if r["peak"]
        else ""
    )

    def row(name: str, rate: float) -> str:
        frac = f"{gmacs(rate) / NOMINAL_PEAK:.1%}"
        measured = f"{gmacs(rate) / r['peak']:.1%}" if r["peak"] else "n/a"
        return f"| {name} | {rate:,.0f} | {gmacs(rate):.2f} | {frac} | {measured} |"

    cpu = _cpu_name()
    lines = [
        SECTION,
        "",
        f"`python benchmarks/engine.py`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"torch {torch.__version__} and Numba both on {THREADS} threads. Reference network "
        f"({MACS_PER_IMAGE:,} MACs per image), {r['n']:,} images of {r['data']}. Best of "
        "several passes. The machine is shared; numbers move with its load.",
        "",
        f"Peak used for the fractions: {NOMINAL_PEAK:.1f} GMAC/s (2 cores x 16 FP32 FMA/cycle "
        f"x 2.6 GHz, the brief's figure){peak_note}.",
        "",
        "| run | images/s | GMAC/s | of 83.2 GMAC/s | of measured peak |",
        "|---|---:|---:|---:|---:|",
        row(f"(a) PyTorch eager, best batch ({torch_best})", t_rate),
        row(f"(a) our compiled engine, batch {ours_best}", o_rate),
        row("(b) PyTorch, one image per call", r["torch_single"]),
        row("(b) our compiled engine, one image per call", r["our_single"]),
        row("(c) the notebook's NumPy loops, one image per call", r["notebook"]),
        row("(c) our reference path, one image per call", r["reference_single"]),
        row("(c) our reference path, batches of 500", r["reference_batched"]),
        "",
        f"- (a) compiled engine / PyTorch at their best batch sizes: **{o_rate / t_rate:.2f}x** "
        f"(target >= 2x, aim 3x). PyTorch by batch: "
        + ", ".join(f"{b}: {v:,.0f}" for b, v in r["torch_rates"].items())
        + "; ours by batch: "
        + ", ".join(f"{b}: {v:,.0f}" for b, v in r["our_rates"].items())
        + ".",
        f"- (b) one image at a time ({r['single']:,} images): "
        f"**{r['our_single'] / r['torch_single']:.2f}x** PyTorch's per-image loop "
        "(target >= 5x).",
        f"- (c) reference path vs the notebook's loops ({r['subset']} images): "
        f"**{r['reference_single'] / r['notebook']:.1f}x** one image per call, "
        f"{r['reference_batched'] / r['notebook']:.0f}x batched (target >= 1x).",
        f"- Agreement on all {r['n']:,} images: {r['mismatches']} differing predictions, "
        f"max |logit diff| {r['max_diff']:.2g}.",
        f"- Numba compile time (first batch + first single-image call, fresh process): "
        f"{r['cold']:.1f} s with an empty cache, {r['cached']:.2f} s from the disk cache.",
        "",
    ]
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_section(path: Path, text: str) -> None:
    """Replace (or append) our section of BENCHMARKS.md, leaving the others alone; written to
    a temporary file first, then renamed."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + ("" if end < 0 else old[end:])
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
