"""``dnnlens demo``: the main job, offline: train the course network on the bundled sample.

Kept as a short sequence of library calls; later steps (verify, analyze, report) append here.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

#: The notebook's NUM_EPOCHS.
DEMO_EPOCHS = 10


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="train and evaluate the course network offline (the main job)",
        description="Train the course notebook's MNIST network for 10 epochs on the bundled "
                    "sample (4,000 train / 1,000 test digits), save the checkpoint and print "
                    "the test accuracy.")
    parser.add_argument("--data", default="sample", metavar="SRC",
                        help="sample (default, offline), idx:PATH, mnist or fashion-mnist")
    parser.add_argument("--out", type=Path, default=Path("dnnlens-demo"), metavar="DIR",
                        help="folder for the checkpoint and later outputs "
                             "(default ./dnnlens-demo)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dnnlens.training import train

    print(f"1. training the course network on {args.data} for {DEMO_EPOCHS} epochs")
    result = train(data=args.data, epochs=DEMO_EPOCHS, out=args.out / "my_mnist_net.pth")
    print(f"   test accuracy {result.final_accuracy:.2%} ({result.wall_time:.1f} s); "
          f"checkpoint {result.checkpoint}")
    return 0
