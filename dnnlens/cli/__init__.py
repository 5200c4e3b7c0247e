"""The ``dnnlens`` command: one sub-module per sub-command, each with ``add_parser``.

Every :class:`~dnnlens.errors.DnnlensError` becomes one ``error: ...`` line and exit code 2;
Ctrl-C exits 130 without a traceback. Environment variables are read here only.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dnnlens.errors import DnnlensError

#: Sub-commands in the order ``--help`` lists them; each is ``dnnlens.cli.<name>``.
COMMANDS = ("demo", "train", "verify", "analyze", "traffic", "report", "hw")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnnlens",
        description="Open a deep neural network up layer by layer: train the course network, "
                    "run it through our own loop nests, and analyse any model.")
    from dnnlens import __version__

    parser.add_argument("--version", action="version", version=f"dnnlens {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"dnnlens.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"dnnlens.cli.{name}":
                raise
            continue  # a sub-command this build does not have
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DnnlensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
