"""``dnnlens train``: train the course network, with safe checkpoints and ``--resume``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the course's MNIST network",
        description="Train the course notebook's MNIST network (seeded, deterministic). A "
        "checkpoint (a plain state dict) is written atomically after every "
        "epoch, with its resume state beside it in PATH.resume.",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="SRC",
        help="sample (default, offline), idx:PATH, mnist or fashion-mnist; "
        "with --resume, the resumed run's data unless given",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        metavar="N",
        help="total epochs, including those already done when resuming "
        "(default 10, the notebook's NUM_EPOCHS; when resuming, the "
        "resumed run's own total)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="PATH",
        help="checkpoint to write (default: the --resume PATH, else "
        "./my_mnist_net.pth as in the notebook)",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="PATH",
        help="continue the run that wrote this checkpoint",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="S",
        help="seed of the initial weights and the shuffles (default 0, or the resumed run's)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dnnlens.training import DEFAULT_CHECKPOINT, train

    out = args.out or args.resume or DEFAULT_CHECKPOINT
    try:
        result = train(
            data=args.data, epochs=args.epochs, out=args.out, resume=args.resume, seed=args.seed
        )
    except KeyboardInterrupt:
        print(interrupted_message(Path(out)), file=sys.stderr)
        return 130
    print(
        f"test accuracy {result.final_accuracy:.2%} after {result.epochs} epochs "
        f"({result.wall_time:.1f} s); checkpoint {result.checkpoint}"
    )
    return 0


def interrupted_message(out: Path) -> str:
    """What Ctrl-C left on disk, and the exact command that continues the run."""
    from dnnlens.training import saved_progress

    progress = saved_progress(out)
    if progress is None:
        return (
            "interrupted before the first epoch finished: nothing saved; run the same "
            "command again to start over"
        )
    done, total = progress
    command = f"dnnlens train --resume {shlex.quote(str(out))}"
    return (
        f"interrupted: {out} holds the weights after epoch {done} of {total} (resume "
        f"state in {out}.resume); continue with: {command}"
    )
