"""Probe this machine and time the reference network per layer against its roofline.

Prints the Markdown of the "Hardware probe and roofline (issue 5)" section of BENCHMARKS.md:
the probe's figures next to the theoretical peak, and per layer at batch 1 and 256 the
roofline estimate on the probed spec against our compiled engine and PyTorch.
Run it on a quiet machine: `python benchmarks/roofline.py [--seconds 6]`.
"""

from __future__ import annotations

import argparse
import platform
from datetime import UTC, datetime

from dnnlens.analysis import analyze
from dnnlens.hwprobe import Measurement, measure_layers, probe
from dnnlens.models import Net
from dnnlens.roofline import roofline


def markdown_table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0, help="probe time (default 6)")
    parser.add_argument(
        "--per-layer",
        type=float,
        default=0.3,
        help="timing budget per layer and library, seconds (default 0.3)",
    )
    args = parser.parse_args()

    result = probe(seconds=args.seconds)
    spec = result.to_spec("this-machine")
    theory = result.theoretical
    brief = theory.cores * 16 * theory.clock_hz  # the rule: 16 FP32 FMA per cycle
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"Machine: {result.cpu.model} ({platform.machine()}), {result.cpu.cores} cores, "
        f"{theory.clock_hz / 1e9:.2f} GHz nominal, LLC {result.cpu.llc_bytes / 2**20:.0f} MiB, "
        f"{result.cpu.memory_bytes / 2**30:.1f} GiB RAM; {now}; probe {args.seconds:g} s.\n"
    )
    print(
        markdown_table(
            ["figure", "value"],
            [
                [
                    "FP32 peak, measured (Numba FMA loop, all cores)",
                    f"{result.fp32_macs_per_s / 1e9:,.1f} GMAC/s "
                    f"({2 * result.fp32_macs_per_s / 1e9:,.1f} GFLOP/s)",
                ],
                [
                    "theoretical, issue's rule: cores x 16 FMA/cycle x nominal clock",
                    f"{brief / 1e9:,.1f} GMAC/s (measured / theoretical = "
                    f"{result.fp32_macs_per_s / brief:.2f})",
                ],
                [
                    f"theoretical, this core: cores x {theory.lanes_per_cycle} FMA/cycle"
                    f" x nominal clock ({theory.reason})",
                    f"{theory.macs_per_s / 1e9:,.1f} GMAC/s (measured / theoretical = "
                    f"{result.fp32_macs_per_s / theory.macs_per_s:.2f})",
                ],
                [
                    "core clock under load (dependent FMA chain, 4-cycle latency)",
                    f"{result.clock_hz / 1e9:.2f} GHz",
                ],
                [
                    "memory bandwidth (STREAM triad, 3 x 128 MiB)",
                    f"{result.bandwidth / 1e9:,.1f} GB/s",
                ],
                ["ridge point", f"{spec.ridge():.2f} MACs/byte"],
            ],
        )
    )
    model = Net()
    for batch in (1, 256):
        analysis = analyze(model, (1, 1, 28, 28), batch=batch)
        roof = roofline(analysis, spec)
        measurement: Measurement = measure_layers(model, analysis, spec, args.per_layer)
        print(
            f"\nReference network, batch {batch}, fp32 (times in microseconds per batch; "
            f"estimated latency {roof.latency_s * 1e6:,.1f} us):\n"
        )
        print(markdown_table(Measurement.HEADERS, measurement.rows()))


if __name__ == "__main__":
    main()
