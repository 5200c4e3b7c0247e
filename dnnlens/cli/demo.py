"""``dnnlens demo``: the main job, offline, as a short sequence of library calls:

1. train the course network on the bundled sample (10 epochs, the notebook's NUM_EPOCHS);
2. verify our loop-nest engine against PyTorch on the sample's 1,000 test images;
3. print the per-layer analysis of the network it trained (the notebook's questions 2.3-2.7);
4. probe this machine, put the network on its roofline, and write the HTML report.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

#: The notebook's NUM_EPOCHS.
DEMO_EPOCHS = 10
#: The notebook's network_input_size.
INPUT_SHAPE = (1, 1, 28, 28)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train, verify, analyse and report on the course network (the main job)",
        description="Train the course notebook's MNIST network for 10 epochs on the bundled "
        "sample (4,000 train / 1,000 test digits), verify our loop-nest engine "
        "against PyTorch on the test images, print the per-layer analysis and "
        "write an HTML report with the roofline of this machine, offline.",
    )
    parser.add_argument(
        "--data",
        default="sample",
        metavar="SRC",
        help="sample (default, offline), idx:PATH, mnist or fashion-mnist",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("dnnlens-demo"),
        metavar="DIR",
        help="folder for the checkpoint and the report (default ./dnnlens-demo)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dnnlens.analysis import analyze
    from dnnlens.cli.verify import render as render_verification
    from dnnlens.hwprobe import probe
    from dnnlens.models import Net
    from dnnlens.report import write_report
    from dnnlens.roofline import memory_footprint, render_roofline, roofline
    from dnnlens.training import train
    from dnnlens.verify import verify

    print(f"1. training the course network on {args.data} for {DEMO_EPOCHS} epochs")
    result = train(data=args.data, epochs=DEMO_EPOCHS, out=args.out / "my_mnist_net.pth")
    print(
        f"   test accuracy {result.final_accuracy:.2%} ({result.wall_time:.1f} s); "
        f"checkpoint {result.checkpoint}"
    )

    print("\n2. our loop-nest engine against PyTorch on the test images")
    check = verify(result.checkpoint, data=args.data)
    print(render_verification(check))

    print("\n3. the network, layer by layer")
    table = analyze(Net(), INPUT_SHAPE)
    print(table)

    print("\n4. this machine's roofline (probed for a second) and the report")
    here = probe(seconds=1.0).to_spec("this-machine")
    print(render_roofline(roofline(table, here), memory_footprint(table.graph, table.dtype)))
    page = write_report(table, args.out, here, check)
    print(f"\nreport: {page}")
    return 0 if check.mismatches == 0 else 1
