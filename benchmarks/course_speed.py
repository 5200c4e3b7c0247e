"""The course network, ours against what a user would pick instead (issue 12, item 1 and the
course-network line of "What must show"), side by side in one run, 2 threads for everyone.

Contenders: PyTorch eager, ``torch.compile`` (inductor; skipped with the reason if it fails
here), ONNX Runtime (CPU provider, the network exported with ``torch.onnx.export``) and our
compiled engine; each batched at its best batch size, and one image per call (the course
notebook's way: a call per image, its prediction taken). The machine is shared, so every
contender is timed in turn, round after round, and each keeps its best round: the ratios
compare runs from the same minutes.

Predictions are checked on the 10,000 Fashion-MNIST test images: ours against PyTorch's, with
the checkpoint given (``--checkpoint``) or seeded weights.

``python benchmarks/course_speed.py [--checkpoint PATH] [--rounds 5] [--no-compile]``
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
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
FASHION = Path("/usr/share/datasets/fashion-mnist")


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def batched(predict: Callable[[np.ndarray], object], images: np.ndarray, batch: int) -> None:
    for i in range(0, len(images), batch):
        predict(images[i : i + batch])


def one_at_a_time(
    predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, budget: float
) -> float:
    """Images per second, a call and a prediction per image, over ``images`` or until
    ``budget`` seconds have passed (a slow contender is timed on fewer images)."""
    start = time.perf_counter()
    for i in range(len(images)):
        int(np.argmax(predict(images[i : i + 1])))
        took = time.perf_counter() - start
        if took > budget and i >= 50:
            return (i + 1) / took
    return len(images) / (time.perf_counter() - start)


def onnx_session(
    model: torch.nn.Module, folder: str, threads: int = THREADS
) -> Callable[[np.ndarray], np.ndarray]:
    """The model exported to ONNX and run by ONNX Runtime's CPU provider on ``threads``."""
    import onnxruntime as ort

    path = os.path.join(folder, "net.onnx")
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 28, 28),),
        path,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
        dynamo=False,
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})[0]


def contenders(
    model: torch.nn.Module, plan: engine.Plan, folder: str, compiled: bool
) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    def eager(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    found = {
        "PyTorch eager": eager,
        "ONNX Runtime": onnx_session(model, folder),
        # one image is too little work to share out: ONNX Runtime on one thread may be faster
        "ONNX Runtime, 1 thread": onnx_session(model, folder, threads=1),
    }
    if compiled:
        try:
            fast = torch.compile(model)
            with torch.inference_mode():
                fast(torch.zeros(64, 1, 28, 28))

            def inductor(x: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    return fast(torch.from_numpy(x)).numpy()

            found["torch.compile"] = inductor
        except Exception as exc:  # noqa: BLE001 - report why and go on without it
            print(f"torch.compile skipped: {type(exc).__name__}: {str(exc)[:120]}")
    found["dnnlens compiled engine"] = lambda x: plan.run(x).logits
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="trained weights (default: seeded)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--single", type=int, default=5000, help="images, one per call")
    parser.add_argument("--batches", default="64,256,1024,2048,4096")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = parser.parse_args(argv)

    torch.set_num_threads(THREADS)
    import numba

    numba.set_num_threads(THREADS)
    images = load_data(f"idx:{FASHION}", "test").images
    torch.manual_seed(0)
    model = Net().eval()
    if args.checkpoint:
        model.load_state_dict(torch.load(args.checkpoint, weights_only=True))
    graph = import_torch(model, (1, 1, 28, 28))
    start = time.perf_counter()
    plan = engine.prepare(graph, model)
    for n in (1, 1, 1, 2048, len(images) % 2048 or 1):  # bind, build the program, compile
        plan.run(images[:n])
    warm = time.perf_counter() - start
    sizes = [int(b) for b in args.batches.split(",")]
    single = images[: args.single]
    with tempfile.TemporaryDirectory() as folder:
        runs = contenders(model, plan, folder, not args.no_compile)
        for predict in runs.values():  # warm-up every batch size once
            for b in sizes:
                predict(images[:b])
        best_batched = {(name, b): float("inf") for name in runs for b in sizes}
        best_single = dict.fromkeys(runs, 0.0)
        for _ in range(args.rounds):
            for name, predict in runs.items():
                for b in sizes:
                    took = seconds(lambda p=predict, b=b: batched(p, images, b))
                    best_batched[name, b] = min(best_batched[name, b], took)
        # one image per call apart, each after a pause: the thread pools the batched runs
        # woke (PyTorch's, Numba's, ONNX Runtime's) spin a while before they sleep, and on
        # two cores a spinning thread would halve whoever runs next
        for _ in range(args.rounds):
            for name, predict in runs.items():
                time.sleep(1.0)
                rate = one_at_a_time(predict, single, budget=2.0)
                best_single[name] = max(best_single[name], rate)
        reference = runs["PyTorch eager"](images)
    ours = engine.predict(plan, None, images)
    mismatches = int(np.sum(ours.argmax(1) != reference.argmax(1)))

    n = len(images)
    print(f"machine: {_cpu_name()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {THREADS} threads")
    print(f"weights: {args.checkpoint or 'seeded (torch.manual_seed(0))'}")
    print(f"ours: prepare + compile/load for the shapes used {warm:.1f} s (apart from below)")
    print(f"{'':26}{'batched img/s (best batch)':>34}{'one image per call img/s':>28}")
    rates_b, rates_s = {}, {}
    for name in runs:
        b = min(sizes, key=lambda s, name=name: best_batched[name, s])
        rates_b[name] = n / best_batched[name, b]
        rates_s[name] = best_single[name]
        gmacs = rates_b[name] * MACS_PER_IMAGE / 1e9
        print(
            f"{name:26}{rates_b[name]:>14,.0f} (batch {b:>4}, {gmacs:4.1f} GMAC/s)"
            f"{rates_s[name]:>22,.0f}"
        )
    ours_name = "dnnlens compiled engine"
    others = [name for name in runs if name != ours_name]
    best_b = max(others, key=rates_b.__getitem__)
    best_s = max(others, key=rates_s.__getitem__)
    print(
        f"ours / best other: batched {rates_b[ours_name] / rates_b[best_b]:.2f}x ({best_b}), "
        f"one image per call {rates_s[ours_name] / rates_s[best_s]:.2f}x ({best_s})"
    )
    print(
        f"predictions: {mismatches} mismatches with PyTorch on {n:,} Fashion-MNIST test images,"
        f" max |logit difference| {float(np.max(np.abs(ours - reference))):.2e}"
    )
    return 0


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    raise SystemExit(main())
