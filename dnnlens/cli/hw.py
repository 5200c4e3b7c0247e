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
        "hw",
        help="hardware specs: measure this machine, list and show devices",
        description="Hardware specs for the roofline: measure this machine (probe), "
        "list the shipped devices, show one with the source of every figure.",
    )
    actions = parser.add_subparsers(dest="hw_command", metavar="ACTION", required=True)

    probe = actions.add_parser(
        "probe",
        help="measure this machine's peak FP32 MACs/s and memory bandwidth",
        description="Measure peak FP32 MACs/s (a compiled FMA loop on all cores) and memory "
        "bandwidth (a STREAM triad over arrays much larger than the last-level "
        "cache). Run it on a quiet machine: other work lowers both figures.",
    )
    probe.add_argument(
        "--save",
        metavar="FILE",
        help="write the figures as a hardware spec (TOML) usable as --device",
    )
    probe.add_argument(
        "--seconds",
        type=float,
        default=2.0,
        metavar="S",
        help="measuring time, split between compute and memory (default 2)",
    )
    probe.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="threads to use (default: every usable core)",
    )
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
    from dnnlens.formatting import key_value_table, rate
    from dnnlens.hwprobe import probe
    from dnnlens.roofline import save_spec

    if args.save:  # a path that cannot be written fails now, not after the measurement
        from dnnlens.cli.common import check_output_file

        check_output_file(args.save, "")
    result = probe(seconds=args.seconds, threads=args.threads)
    theory = result.theoretical
    print(
        key_value_table(
            [
                (
                    "CPU",
                    f"{result.cpu.model}, {result.cpu.cores} cores, "
                    f"{theory.clock_hz / 1e9:.2f} GHz nominal, "
                    f"about {result.clock_hz / 1e9:.2f} GHz under load",
                ),
                (
                    "FP32 peak",
                    f"{rate(result.fp32_macs_per_s)} measured "
                    f"({rate(2 * result.fp32_macs_per_s, 'FLOP/s')}), theoretical "
                    f"{rate(theory.macs_per_s)} = {theory.cores} cores x "
                    f"{theory.lanes_per_cycle} FMA/cycle x {theory.clock_hz / 1e9:.2f} GHz "
                    f"({theory.reason})",
                ),
                ("bandwidth", f"{rate(result.bandwidth, 'B/s')} (STREAM triad)"),
                ("ridge", f"{result.fp32_macs_per_s / result.bandwidth:.2f} MACs/byte"),
            ]
        )
    )
    if args.save:
        path = save_spec(result.to_spec(args.name), args.save)
        print(f"saved spec: {path}")
    return 0


def describe(spec: HardwareSpec) -> list[str]:
    """Lines giving every figure of ``spec`` with its source."""
    from dnnlens.formatting import left, rate, right, size_exact, text_table

    rows = [
        [f"peak {dtype}", rate(fig.value), fig.source] for dtype, fig in spec.peak_macs.items()
    ]
    rows.append(["bandwidth", rate(spec.bandwidth.value, "B/s"), spec.bandwidth.source])
    for label, fig in (
        ("on-chip memory", spec.on_chip_memory),
        ("main memory", spec.main_memory),
        ("on-chip buffer", spec.on_chip_buffer),
    ):
        if fig is not None:
            rows.append([label, size_exact(int(fig.value)), fig.source])
    lines = [
        f"{spec.name}: {spec.title}",
        text_table([left("figure"), right("value"), left("source")], rows, indent=2),
    ]
    if spec.notes:
        lines.append(f"  note: {spec.notes}")
    return lines


def run_list(args: argparse.Namespace) -> int:
    from dnnlens.formatting import left, rate, right, text_table

    rows = []
    for name in known_devices():
        spec = load_spec(name)
        rows.append(
            [
                name,
                rate(spec.peak("fp32")),
                rate(spec.bandwidth.value, "B/s"),
                f"{spec.ridge('fp32'):.2f}",
                spec.title,
            ]
        )
    print(
        text_table(
            [
                left("device"),
                right("fp32 peak"),
                right("bandwidth"),
                right("ridge MAC/B"),
                left("title"),
            ],
            rows,
        )
    )
    print("use a name with --device, or `dnnlens hw probe --save FILE` for this machine")
    return 0


def run_show(args: argparse.Namespace) -> int:
    print("\n".join(describe(load_spec(args.device))))
    return 0
