"""The course notebook's MNIST network and safe checkpoint files.

A checkpoint is a plain state dict, as the notebook's ``torch.save(net.state_dict(), PATH)``
writes it: the notebook's ``net.load_state_dict(torch.load(PATH))`` reads ours and we read its
``my_mnist_net.pth``. We only ever load with ``torch.load(..., weights_only=True)``: a file that
needs full unpickling is refused with instructions, never loaded unsafely.
"""

from __future__ import annotations

import os
import pickle
import re
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from dnnlens.errors import CheckpointError
from dnnlens.fileio import atomic_open

#: Keys under which other training scripts commonly nest the state dict they save.
_NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model")


class Net(nn.Module):
    """The notebook's network, same layers, same parameter names, same forward.

    ``(N, 1, 28, 28)`` -> conv1 5x5 pad 2 -> ``(N, 4, 28, 28)`` -> ReLU -> pool 2
    -> ``(N, 4, 14, 14)`` -> conv2 5x5 pad 2 -> ``(N, 8, 14, 14)`` -> ReLU -> pool 2
    -> ``(N, 8, 7, 7)`` -> view -> ``(N, 392)`` -> fc1 -> ``(N, 256)`` -> ReLU -> fc2
    -> ``(N, 10)`` logits.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 5, padding=2)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(4, 8, 5, padding=2)
        self.fc1 = nn.Linear(8 * 7 * 7, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 8 * 7 * 7)
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return x


# ---------------------------------------------------------------------------------------------
# Reading


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a ``{name: tensor}`` dict, safely.

    Accepts a plain state dict, or one nested under ``state_dict``, ``model_state_dict`` or
    ``model`` (as many training scripts and our ``.resume`` files save it). Anything else, and
    any file that ``weights_only=True`` refuses, raises :class:`CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    obj = _torch_load_safely(path)
    state = _find_state_dict(obj)
    if state is None:
        raise CheckpointError(
            f"{path}: not a state dict of tensors (found {_summarise(obj)}); "
            "save one with torch.save(net.state_dict(), PATH)"
        )
    return state


def _torch_load_safely(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with its many failure modes made one line each."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before failing
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if refused:
            raise CheckpointError(
                f"{path}: refused to unpickle {refused.group(1)} (only plain tensors load "
                "safely); if you trust the file, convert it once with "
                f"torch.save(torch.load('{path}', weights_only=False).state_dict(), "
                "'net.pth')"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint, or a corrupt one") from None
    except (
        RuntimeError,
        EOFError,
        KeyError,
        ValueError,
        zipfile.BadZipFile,
        IndexError,
        UnicodeDecodeError,
        AttributeError,
        TypeError,
        OverflowError,
        MemoryError,
        struct.error,
    ):  # struct.error: a legacy (non-zip) file cut inside its header
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint, or a corrupt or truncated one"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _find_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """``obj`` as a state dict, looking one level into the usual nesting keys; else None."""
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in _NESTED_STATE_KEYS:
            if key in obj and _is_state_dict(obj[key]):
                return dict(obj[key])
    return None


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _summarise(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)[:5]
        return f"a {type(obj).__name__} with keys {keys}{'...' if len(obj) > 5 else ''}"
    return f"a {type(obj).__name__}"


def load_checkpoint(path: str | os.PathLike[str], model: nn.Module | None = None) -> nn.Module:
    """Load the weights at ``path`` into ``model`` (default: a new :class:`Net`), in eval mode.

    Missing or unexpected keys and mis-shaped tensors raise :class:`CheckpointError` naming
    them, before anything is copied into the model.
    """
    model = Net() if model is None else model
    state = load_state_dict_file(path)
    check_fits(state, model, source=str(path))
    model.load_state_dict(state, strict=True)
    return model.eval()


def check_fits(state: Mapping[str, torch.Tensor], model: nn.Module, source: str) -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly ``model``'s keys and shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    problems = []
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    if missing:
        problems.append(f"missing {_few(missing)}")
    if extra:
        problems.append(f"unexpected {_few(extra)}")
    misshaped = sorted(
        key for key in expected.keys() & found.keys() if expected[key] != found[key]
    )
    if misshaped:
        key = misshaped[0]
        more = (
            f" (and {len(misshaped) - 1} more tensors of another shape)"
            if len(misshaped) > 1
            else ""
        )
        problems.append(
            f"{key} is {found[key]} in the checkpoint but {expected[key]} in "
            f"{type(model).__name__}{more}"
        )
    if problems:
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: " + "; ".join(sorted(problems))
        )


#: Key names a checkpoint misfit names before it counts the rest.
NAMED_KEYS = 3


def _few(keys: Sequence[str]) -> str:
    """``fc2.bias`` or ``120 keys: a, b, c, ...``: a count and a few names, never a wall."""
    if len(keys) <= NAMED_KEYS:
        return ", ".join(keys)
    return f"{len(keys)} keys: {', '.join(keys[:NAMED_KEYS])}, ..."


# ---------------------------------------------------------------------------------------------
# Writing


def save_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> Path:
    """Write ``state_dict`` to ``path`` atomically; returns ``path``.

    The tensors go to a temporary file in the same folder, which is flushed to disk and then
    renamed over ``path``: a crash or Ctrl-C at any moment leaves either the old file or the
    new one, never half of one.
    """
    if not _is_state_dict(state_dict):
        raise CheckpointError(f"{path}: save_checkpoint needs a {{name: tensor}} state dict")
    return save_atomic(dict(state_dict), path)


def check_writable(path: str | os.PathLike[str]) -> None:
    """Raise :class:`CheckpointError` now if a file cannot be written at ``path`` (a file in
    the way of its folder, a read-only folder, a folder at ``path``), rather than after an
    epoch of training. Creates the folder, like :func:`save_atomic` would."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path}: is a folder; give a file name such as {path / 'my_mnist_net.pth'}"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        blocker = next((p for p in path.parents if p.exists()), None)  # a file in the way?
        reason = (
            f"{blocker} is a file, not a folder"
            if blocker and not blocker.is_dir()
            else exc.strerror or exc
        )
        raise CheckpointError(
            f"{path}: cannot write here ({reason}); choose another --out"
        ) from None
    os.close(fd)
    os.unlink(tmp)


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj, path)`` atomically (see :mod:`dnnlens.fileio`)."""
    with atomic_open(path, "wb", error=CheckpointError) as handle:
        torch.save(obj, handle)
    return Path(path)
