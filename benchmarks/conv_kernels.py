"""Per-layer speed of the engine's general 2-d convolution against PyTorch eager, side by side.

For each distinct convolution of a torchvision model (resnet18 by default) at the given batch:
our bound kernel (:func:`dnnlens.ops.conv.bind_conv2d`, weights packed once, as the engine
runs it) and ``torch.nn.functional.conv2d`` on the same float32 input, best of several
alternating passes, both on the same number of threads; GMAC/s and the fraction of this
machine's FP32 peak as probed in the same run (:func:`dnnlens.hwprobe.measure_fma`).

Then whole models through the engine (:func:`dnnlens.engine.prepare`, compiled, plan built
and bound once; compile time excluded) against PyTorch eager, images/s at each batch size.

    python benchmarks/conv_kernels.py [--model resnet18] [--batch 32] [--threads 2]
        [--models resnet18,mobilenet_v2] [--batches 1,32] [--skip-layers]

Numbers move with whatever else the machine runs; compare the columns of one run.
"""

from __future__ import annotations

import argparse
import os
import time


def conv_layers(model_name: str, batch: int) -> list[tuple[str, object, tuple[int, ...]]]:
    """(name, nn.Conv2d, input shape) for each convolution of the model, in forward order,
    repeated shapes dropped."""
    import torch
    import torchvision

    model = torchvision.models.get_model(model_name, weights=None).eval()
    found, seen = [], set()

    def hook(name):
        def record(module, inputs, output):
            key = (tuple(inputs[0].shape), module.weight.shape, module.stride, module.groups)
            if key not in seen:
                seen.add(key)
                found.append((name, module, tuple(inputs[0].shape)))

        return record

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(hook(name))
    with torch.no_grad():
        model(torch.zeros(batch, 3, 224, 224))
    return found


def best_seconds(call, seconds: float) -> float:
    call()
    best, spent = float("inf"), 0.0
    while spent < seconds:
        start = time.perf_counter()
        call()
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return best


def whole_models(names: list[str], batches: list[int], seconds: float, peak: float) -> None:
    """Images/s of our compiled engine and of PyTorch eager, same inputs, alternating."""
    import numpy as np
    import torch

    from dnnlens import engine
    from dnnlens.analysis import analyze
    from dnnlens.importers import build_model
    from dnnlens.importers.torch import import_torch

    print("| model | batch | ours img/s | torch img/s | ours/torch | ours GMAC/s | % peak |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        model, shape = build_model(name, device="cpu", seed=0)
        model = model.eval()
        graph = import_torch(model, shape)
        macs_per_image = analyze(graph).totals.macs / shape[0]
        plan = engine.prepare(graph, model)
        rng = np.random.default_rng(0)
        for batch in batches:
            x = rng.standard_normal((batch, *shape[1:])).astype(np.float32)
            tx = torch.from_numpy(x)

            def ours(plan=plan, x=x):
                return plan.run(x).logits

            def theirs(model=model, tx=tx):
                with torch.no_grad():
                    return model(tx)

            got, truth = ours(), theirs().numpy()
            assert np.allclose(got, truth, rtol=1e-3, atol=1e-3 * np.abs(truth).max()), name
            times = {"ours": float("inf"), "torch": float("inf")}
            for _ in range(3):
                times["ours"] = min(times["ours"], best_seconds(ours, seconds / 3))
                times["torch"] = min(times["torch"], best_seconds(theirs, seconds / 3))
            rate = macs_per_image * batch / times["ours"]
            print(
                f"| {name} | {batch} | {batch / times['ours']:.1f} | "
                f"{batch / times['torch']:.1f} | {times['torch'] / times['ours']:.2f} | "
                f"{rate / 1e9:.1f} | {rate / peak:.0%} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=1.0, help="per layer and contender")
    parser.add_argument("--models", default="resnet18,mobilenet_v2")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--skip-layers", action="store_true")
    parser.add_argument("--skip-models", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import torch

    from dnnlens.hwprobe import measure_fma

    torch.set_num_threads(args.threads)
    peak = measure_fma(threads=args.threads)
    print(f"probed FP32 peak: {peak / 1e9:.1f} GMAC/s on {args.threads} threads")
    if not args.skip_layers:
        layer_table(args, peak)
    if not args.skip_models:
        batches = [int(b) for b in args.batches.split(",")]
        whole_models(args.models.split(","), batches, 3 * args.seconds, peak)


def layer_table(args, peak: float) -> None:
    """Our bound conv + ReLU against torch's, per distinct conv layer of ``args.model``."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from dnnlens.ops.conv import Conv2dAttrs, bind_conv2d

    print(f"{args.model}, batch {args.batch}")
    print(
        "| layer | input | kernel | MMAC | ours GMAC/s | ours % peak | torch GMAC/s "
        "| torch % peak | ours/torch |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    total = {"ours": 0.0, "torch": 0.0}
    for name, conv, shape in conv_layers(args.model, args.batch):
        x = rng.standard_normal(shape).astype(np.float32)
        weight = conv.weight.detach().numpy()
        pads = tuple((p, p) for p in conv.padding)
        attrs = Conv2dAttrs(conv.stride, pads, conv.dilation, conv.groups)
        ours = bind_conv2d(x.shape, x.dtype, weight, None, attrs, 0.0, np.inf)
        out = ours(x)
        macs = out.size * weight[0].size
        tx, tw = torch.from_numpy(x), conv.weight.detach()

        def theirs(tx=tx, tw=tw, c=conv):
            with torch.no_grad():
                return F.relu(F.conv2d(tx, tw, None, c.stride, c.padding, c.dilation, c.groups))

        got, truth = out, theirs().numpy()
        assert np.allclose(got, truth, rtol=1e-3, atol=1e-3), name
        times = {"ours": float("inf"), "torch": float("inf")}
        for _ in range(3):  # alternate, so both see the same machine
            times["ours"] = min(
                times["ours"], best_seconds(lambda o=ours, x=x: o(x), args.seconds / 3)
            )
            times["torch"] = min(times["torch"], best_seconds(theirs, args.seconds / 3))
        for who in total:
            total[who] += times[who]
        rate = {who: macs / t for who, t in times.items()}
        kernel = "x".join(str(k) for k in conv.kernel_size)
        kernel += f"/{conv.stride[0]}" + (f" g{conv.groups}" if conv.groups > 1 else "")
        print(
            f"| {name} | {'x'.join(map(str, shape[1:]))} | {kernel} | {macs / 1e6:.0f} | "
            f"{rate['ours'] / 1e9:.1f} | {rate['ours'] / peak:.0%} | "
            f"{rate['torch'] / 1e9:.1f} | {rate['torch'] / peak:.0%} | "
            f"{times['torch'] / times['ours']:.2f} |",
            flush=True,
        )
    ours_ms, torch_ms = total["ours"] * 1e3, total["torch"] * 1e3
    print(f"sum of distinct layers: ours {ours_ms:.1f} ms, torch {torch_ms:.1f} ms")


if __name__ == "__main__":
    main()
