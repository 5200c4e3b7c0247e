"""The ``dnnlens`` command: one sub-module per sub-command, each with ``add_parser``.

Every :class:`~dnnlens.errors.DnnlensError` (bad input) becomes one ``error: ...`` line and exit
code 2; any other exception is a dnnlens bug and becomes one ``error: internal error ...`` line
naming the model, the layer being traced and the operator, with how to report it, and exit code
1 (``DNNLENS_TRACEBACK=1`` shows the traceback as well). Ctrl-C exits 130 without a traceback.
Environment variables are read here only.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from dnnlens.errors import DnnlensError, annotation

#: Sub-commands in the order ``--help`` lists them; each is ``dnnlens.cli.<name>``.
COMMANDS = ("demo", "train", "verify", "analyze", "traffic", "report", "hw")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnnlens",
        description="Open a deep neural network up layer by layer: train the course network, "
        "run it through our own loop nests, and analyse any model.",
    )
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
    except Exception as exc:  # noqa: BLE001 - a bug of ours: one line, never a traceback
        if os.environ.get("DNNLENS_TRACEBACK"):
            traceback.print_exc()
        print(internal_error_line(exc, args), file=sys.stderr)
        return 1


def internal_error_line(exc: BaseException, args: argparse.Namespace) -> str:
    """``error: internal error ...`` naming the model, layer and operator, and what to do."""
    where = annotation(exc)
    command = getattr(args, "command", "")
    model = getattr(args, "model", None)
    context = [f"while running `dnnlens {command}`" if command else ""]
    if model:
        context.append(f"on model {model!r}")
    if where.get("layer"):
        context.append(f"in layer {where['layer']!r}")
    if where.get("operator"):
        context.append(f"at operator {where['operator']}")
    message = " ".join(str(exc).split())[:240] or "(no message)"
    return (
        f"error: internal error {' '.join(c for c in context if c)}: "
        f"{type(exc).__name__}: {message}. This is a dnnlens bug: please report it with "
        "this line and the command you ran (DNNLENS_TRACEBACK=1 prints the traceback to "
        "attach)"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
