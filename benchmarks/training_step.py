"""Time and memory of the training-step analysis itself (issue 15): ``analyze_training`` on
vit_b_16 and on a 7-billion-parameter transformer built on the meta device, next to what a user
would run instead to get the MACs alone: PyTorch's ``FlopCounterMode`` over a forward +
backward of the same model on meta (no per-layer split, no memory).

Each measurement runs in a fresh Python process with one thread; peak memory is the process's
maximum resident set size (``ru_maxrss``) and its growth during the call (peak minus the
resident size just before). Times are the median of ``--repeat`` processes.

    .venv/bin/python benchmarks/training_step.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from common import machine, rss_bytes, run_child

TOOLS = ("dnnlens", "flopcounter")
MODELS = ("vit_b_16", "llm7b")


def build(name: str):
    import torch
    import torchvision

    if name == "llm7b":
        from common import llm_7b

        return llm_7b()
    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None)
    return model, torch.empty(1, 3, 224, 224, device="meta")


def child(tool: str, name: str) -> None:
    """Build ``name`` on meta, time one call of ``tool`` on it, print JSON."""
    import resource

    import torch

    torch.set_num_threads(1)
    model, x = build(name)
    extra: dict = {}
    if tool == "dnnlens":
        from dnnlens.training_step import analyze_training

        def call() -> int:
            # the 7B model as it is usually trained: bf16 with fp32 masters, Adam
            amp = {"amp": True, "dtype": "bf16"} if name == "llm7b" else {}
            step = analyze_training(model, example_inputs=x, optimizer="adam", **amp)
            m = step.memory
            extra.update(
                predicted_peak=m.peak,
                peak_phase=m.peak_phase,
                persistent=m.persistent,
                gradients=m.gradients,
                activations=m.activations,
                rows=len(step.backward),
                warnings=step.warnings,
            )
            return step.forward_macs + step.backward_macs
    else:
        from torch.utils.flop_counter import FlopCounterMode

        def call() -> int:
            model.train()
            with FlopCounterMode(display=False) as counter:
                out = model(x)
                if out.dim() != 2:
                    loss = out.float().mean()
                else:
                    labels = torch.zeros(out.shape[0], dtype=torch.long, device="meta")
                    loss = torch.nn.functional.cross_entropy(out, labels)
                loss.backward()
            return counter.get_total_flops() // 2

    before = rss_bytes()
    start = time.perf_counter()
    macs = call()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak": peak,
                "growth": max(0, peak - before),
                "macs": int(macs),
                **extra,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--child", nargs=2, metavar=("TOOL", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    print(
        f"# {machine()}; {time.strftime('%Y-%m-%d')}; one thread; median of {args.repeat} "
        "fresh processes\n"
    )
    print(
        "| model | tool | time (s) | peak RSS (MB) | RSS growth in call (MB) "
        "| fwd+bwd MACs (G) | time / dnnlens |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    notes = []
    for name in args.models.split(","):
        results = {}
        for tool in TOOLS:
            runs = [run_child(__file__, "--child", tool, name) for _ in range(args.repeat)]
            results[tool] = {
                key: statistics.median(r[key] for r in runs)
                for key in ("seconds", "peak", "growth", "macs")
            }
            if tool == "dnnlens":
                notes.append((name, runs[0]))
        ours = results["dnnlens"]
        for tool, r in results.items():
            print(
                f"| {name} | {tool} | {r['seconds']:.2f} | {r['peak'] / 1e6:.0f} | "
                f"{r['growth'] / 1e6:.0f} | {r['macs'] / 1e9:,.1f} | "
                f"{r['seconds'] / ours['seconds']:.2f}x |"
            )
    print()
    for name, r in notes:
        print(
            f"- {name}: predicted peak of a training step {r['predicted_peak'] / 1e9:.2f} GB "
            f"(during {r['peak_phase']}): weights + optimizer state "
            f"{r['persistent'] / 1e9:.2f} GB, gradients {r['gradients'] / 1e9:.2f} GB, kept "
            f"for backward {r['activations'] / 1e9:.2f} GB; {r['rows']} rows; warnings: "
            f"{'; '.join(r['warnings']) or 'none'}"
        )


if __name__ == "__main__":
    main()
