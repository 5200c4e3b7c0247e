"""Speed and memory of ``dnnlens.analyze`` against torchinfo's ``summary`` and fvcore's
``FlopCountAnalysis`` on the same models, in the same run (issue 4), plus a 7-billion-parameter
transformer built on the meta device.

Each measurement runs in a fresh Python process (so one tool's caches and allocations do not
help or hurt another): the process builds the model on CPU (weights allocated, as a user of
torchinfo or fvcore has them), then times one call of the tool. Peak memory is the process's
maximum resident set size (``ru_maxrss``), and the growth of it during the call (peak minus the
resident size just before the call). Times are the median of ``--repeat`` processes.

    .venv/bin/python benchmarks/analysis.py [--repeat 3] [--models vit_b_16,resnet50,swin_t,lstm]

``lstm`` is a word-level language model (:func:`lstm_model`: embedding, a 2-layer LSTM, a
vocabulary head) on 128 tokens; every other name is a torchvision model at (1, 3, 224, 224).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from common import machine, rss_bytes, run_child

TOOLS = ("dnnlens", "torchinfo", "fvcore")


def lstm_model() -> tuple:
    """A word-level LSTM language model (vocabulary 10,000, embedding 256, 2 layers of 512)
    and 128 token ids: the recurrent model of the comparison."""
    import torch
    from torch import nn

    class LanguageModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10_000, 256)
            self.lstm = nn.LSTM(256, 512, num_layers=2, batch_first=True)
            self.head = nn.Linear(512, 10_000)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            out, _ = self.lstm(self.embed(tokens))  # (N, T, 512)
            return self.head(out)

    torch.manual_seed(0)
    return LanguageModel().eval(), torch.randint(0, 10_000, (1, 128))


def child(tool: str, name: str) -> None:
    """Build ``name`` on CPU, time one call of ``tool`` on it, print JSON."""
    import resource

    import torch
    import torchvision

    torch.set_num_threads(1)  # the machine is shared; same for every tool
    if name == "lstm":
        model, example = lstm_model()
    else:
        model = torchvision.models.get_model(name, weights=None).eval()
        example = torch.zeros(1, 3, 224, 224)
    if tool == "dnnlens":
        from dnnlens.analysis import analyze

        def call() -> float:
            return analyze(model, example_inputs=(example,)).totals.macs
    elif tool == "torchinfo":
        import torchinfo

        def call() -> float:
            return torchinfo.summary(model, input_data=[example], verbose=0).total_mult_adds
    else:
        import logging

        from fvcore.nn import FlopCountAnalysis

        logging.disable(logging.WARNING)  # fvcore warns about every op it skips

        def call() -> float:
            with torch.no_grad():
                return FlopCountAnalysis(model, example).total()

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
                "macs": float(macs),
            }
        )
    )


def llm_7b() -> None:
    """Analyse a LLaMA-7B-shaped transformer built on meta; print JSON."""
    import resource

    from common import llm_7b as build_llm_7b

    from dnnlens.analysis import analyze

    model, tokens = build_llm_7b()
    before = rss_bytes()
    start = time.perf_counter()
    result = analyze(model, example_inputs=tokens)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = result.totals
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak": peak,
                "growth": max(0, peak - before),
                "params": t.weights + t.biases,
                "macs": t.macs,
                "rows": len(result.rows),
                "warnings": result.warnings,
                "weights_fp16_bytes": 2 * (t.weights + t.biases),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models", default="vit_b_16,resnet50,swin_t,lstm")
    parser.add_argument("--child", nargs=2, metavar=("TOOL", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--llm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.llm:
        llm_7b()
        return
    print(
        f"# {machine()}; {time.strftime('%Y-%m-%d')}; one thread per tool; "
        f"median of {args.repeat} fresh processes\n"
    )
    print(
        "| model | tool | time (s) | peak RSS (MB) | RSS growth in call (MB) | MACs (G) "
        "| time / dnnlens | growth / dnnlens |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        results = {}
        for tool in TOOLS:
            runs = [run_child(__file__, "--child", tool, name) for _ in range(args.repeat)]
            results[tool] = {
                key: statistics.median(r[key] for r in runs)
                for key in ("seconds", "peak", "growth", "macs")
            }
        ours = results["dnnlens"]
        for tool, r in results.items():
            print(
                f"| {name} | {tool} | {r['seconds']:.3f} | {r['peak'] / 1e6:.0f} | "
                f"{r['growth'] / 1e6:.1f} | {r['macs'] / 1e9:.3f} | "
                f"{r['seconds'] / ours['seconds']:.1f}x | "
                f"{r['growth'] / max(ours['growth'], 1):.1f}x |"
            )
    llm = run_child(__file__, "--llm")
    print(
        f"\n7B transformer on meta (LLaMA-7B shapes, 2,048 tokens): {llm['params']:,} "
        f"parameters ({llm['weights_fp16_bytes'] / 1e9:.1f} GB in fp16, never allocated), "
        f"{llm['macs'] / 1e12:.2f} TMACs, {llm['rows']} rows in {llm['seconds']:.2f} s, "
        f"peak RSS {llm['peak'] / 1e6:.0f} MB (growth {llm['growth'] / 1e6:.0f} MB), "
        f"warnings: {llm['warnings'] or 'none'}"
    )


if __name__ == "__main__":
    main()
