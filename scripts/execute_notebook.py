"""Run a notebook top to bottom and store it with its outputs (`make notebook`).

The notebook runs in its own folder (so the files it writes land beside it, in the folder it
names) on the Agg backend, in a fresh kernel; the result replaces the file atomically, so an
error or Ctrl-C leaves the stored notebook as it was. A cell that raises stops the run with
the cell's error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def execute(path: Path, timeout: int = 1200) -> nbformat.NotebookNode:
    """The notebook at ``path`` with every code cell run in order, in ``path``'s folder."""
    notebook = nbformat.read(path, as_version=4)
    os.environ.setdefault("MPLBACKEND", "Agg")  # the kernel inherits it: no display needed
    client = NotebookClient(
        notebook,
        timeout=timeout,
        startup_timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent.resolve())}},
    )
    client.execute()
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    args = parser.parse_args(argv)
    try:
        notebook = execute(args.notebook)
    except CellExecutionError as exc:
        print(f"error: {args.notebook}: a cell failed:\n{exc}", file=sys.stderr)
        return 1
    from dnnlens.fileio import atomic_write_text

    atomic_write_text(args.notebook, nbformat.writes(notebook) + "\n")
    print(f"wrote {args.notebook} with its outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
