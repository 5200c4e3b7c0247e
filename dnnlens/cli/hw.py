"""``dnnlens hw``: hardware specs for the roofline.

* ``dnnlens hw probe [--save FILE] [--seconds S] [--threads N]`` measures this machine;
* ``dnnlens hw list`` lists the shipped devices;
* ``dnnlens hw show NAME|FILE`` prints one spec with the source of each figure.
"""

from __future__ import annotations

import argparse

from dnnlens.roofline import HardwareSpec, known_devices, load_spec


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "hw", help="hardware specs: measure this machine, list and show devices",
        description="Hardware specs for the roofline: measure this machine (probe), "
                    "list the shipped devices, show one with the source of every figure.")
    actions = parser.add_subparsers(dest="hw_command", metavar="ACTION", required=True)

    probe = actions.add_parser(
        "probe", help="measure this machine's peak FP32 MACs/s and memory bandwidth",
        description="Measure peak FP32 MACs/s (a compiled FMA loop on all cores) and memory "
                    "bandwidth (a STREAM triad over arrays much larger than the last-level "
                    "cache). Run it on a quiet machine: other work lowers both figures.")
    probe.add_argument("--save", metavar="FILE",
                       help="write the figures as a hardware spec (TOML) usable as --device")
    probe.add_argument("--seconds", type=float, default=2.0, metavar="S",
                       help="measuring time, split between compute and memory (default 2)")
    probe.add_argument("--threads", type=int, default=None, metavar="N",
                       help="threads to use (default: every usable core)")
    probe.add_argument("--name", default=None, help="device name in the saved spec")
    probe.set_defaults(func=run_probe)

    listing = actions.add_parser("list", help="list the shipped devices")
    listing.set_defaults(func=run_list)

    show = actions.add_parser("show", help="print one device spec with its sources")
    show.add_argument("device", metavar="NAME|FILE")
    show.set_defaults(func=run_show)
    parser.set_defaults(func=run_list)


def run(args: argparse.Namespace) -> int:
    return args.func(args)


def run_probe(args: argparse.Namespace) -> int:
    from dnnlens.hwprobe import probe
    from dnnlens.roofline import save_spec

    result = probe(seconds=args.seconds, threads=args.threads)
    theory = result.theoretical
    print(f"CPU:        {result.cpu.model}, {result.cpu.cores} cores, "
          f"{theory.clock_hz / 1e9:.2f} GHz nominal, about {result.clock_hz / 1e9:.2f} GHz "
          "under load")
    print(f"FP32 peak:  {result.fp32_macs_per_s / 1e9:,.1f} GMAC/s measured "
          f"({2 * result.fp32_macs_per_s / 1e9:,.1f} GFLOP/s), theoretical "
          f"{theory.macs_per_s / 1e9:,.1f} GMAC/s = {theory.cores} cores x "
          f"{theory.lanes_per_cycle} FMA/cycle x {theory.clock_hz / 1e9:.2f} GHz "
          f"({theory.reason})")
    print(f"Bandwidth:  {result.bandwidth / 1e9:,.1f} GB/s (STREAM triad)")
    print(f"Ridge:      {result.fp32_macs_per_s / result.bandwidth:.2f} MACs/byte")
    if args.save:
        path = save_spec(result.to_spec(args.name), args.save)
        print(f"saved spec: {path}")
    return 0


def describe(spec: HardwareSpec) -> list[str]:
    """Lines giving every figure of ``spec`` with its source."""
    lines = [f"{spec.name}: {spec.title}"]
    for dtype, fig in spec.peak_macs.items():
        lines.append(f"  peak {dtype:<5} {fig.value / 1e9:>14,.2f} GMAC/s   {fig.source}")
    lines.append(f"  bandwidth  {spec.bandwidth.value / 1e9:>14,.2f} GB/s     "
                 f"{spec.bandwidth.source}")
    for label, fig in (("on-chip", spec.on_chip_memory), ("memory", spec.main_memory),
                       ("buffer", spec.on_chip_buffer)):
        if fig is not None:
            lines.append(f"  {label:<10} {fig.value / 2**20:>14,.2f} MiB      {fig.source}")
    if spec.notes:
        lines.append(f"  note: {spec.notes}")
    return lines


def run_list(args: argparse.Namespace) -> int:
    print(f"{'device':<12} {'fp32 GMAC/s':>12} {'GB/s':>9} {'ridge MAC/B':>12}  title")
    for name in known_devices():
        spec = load_spec(name)
        print(f"{name:<12} {spec.peak('fp32') / 1e9:>12,.2f} {spec.bandwidth.value / 1e9:>9,.2f} "
              f"{spec.ridge('fp32'):>12.2f}  {spec.title}")
    print("use a name with --device, or `dnnlens hw probe --save FILE` for this machine")
    return 0


def run_show(args: argparse.Namespace) -> int:
    print("\n".join(describe(load_spec(args.device))))
    return 0


def analyze_extras(model, analysis, device: str | None, measure: bool,
                   seconds: float = 1.0) -> None:
    """What ``dnnlens analyze --device/--measure`` prints after the table: the roofline on
    ``device`` and, with ``measure``, per-layer timings of our engine and PyTorch on this
    machine next to the roofline of this machine, probed for ``seconds``."""
    from dnnlens.errors import UsageError
    from dnnlens.roofline import memory_footprint, render_roofline, roofline

    if measure and model is None:
        raise UsageError("--measure times a PyTorch model against our engine; give a model "
                         "name or package.module:factory instead of a file")
    foot = memory_footprint(analysis.graph, analysis.dtype)
    if device:
        print()
        print(render_roofline(roofline(analysis, load_spec(device)), foot))
    if measure:
        from dnnlens.hwprobe import measure_layers, probe

        print(f"\nprobing this machine ({seconds:g} s) for its roofline ...")
        here = probe(seconds=seconds).to_spec("this-machine")
        print(render_roofline(roofline(analysis, here), None if device else foot))
        measurement = measure_layers(model, analysis, here)
        print()
        print(f"Measured on this machine, per batch of {analysis.batch} (best of repeats):")
        print(measurement.render())
        if not measurement.engine_covers:
            print("our engine has no kernel for some layer: its timings stop there")
