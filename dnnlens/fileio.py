"""Atomic file writes: every file dnnlens writes (checkpoints, caches, CSV, specs, charts,
reports, topologies) goes through here, so an interrupted or failing write never leaves half a
file in place of a good one.

The data goes to a temporary file in the destination folder, is flushed and fsynced, gets the
mode ``open()`` would have given it, and is renamed over the destination (atomic on POSIX);
on any exception, Ctrl-C included, the temporary file is removed and the old file is intact.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from dnnlens.errors import DnnlensError, UsageError


@contextmanager
def atomic_open(
    path: str | os.PathLike[str],
    mode: str = "wb",
    *,
    error: type[DnnlensError] = UsageError,
    what: str = "",
    newline: str | None = None,
) -> Iterator[IO]:
    """Open ``path`` for writing through a temporary file, replaced in on success.

    A folder that cannot hold the file (missing and not creatable, read-only, a file in the
    way) raises ``error`` with one line naming the path; ``what`` ("the CSV ") names the
    output in that line.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise error(
            f"{path}: cannot write {what}here ({exc.strerror or exc}); choose another path"
        ) from None
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_file_mode())  # mkstemp makes 0600; these files are no secret
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # disk full, quota, ...: one line, not a traceback
            raise error(f"{path}: cannot write {what}({exc.strerror or exc})") from None
        raise
    _fsync_folder(folder)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, **options) -> Path:
    with atomic_open(path, "wb", **options) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, **options) -> Path:
    with atomic_open(path, "w", **options) as handle:
        handle.write(text)
    return Path(path)


def _default_file_mode() -> int:
    """The mode ``open()`` would give a new file: 0666 minus the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable where the platform allows it (POSIX)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
