"""Typed errors: each one carries a single line that names the problem and what to do.

The CLI prints ``error: <message>`` and exits with code 2 for any ``DnnlensError``;
the Python API lets them propagate so a notebook user can catch them by type.
"""

from __future__ import annotations


class DnnlensError(Exception):
    """Base class for every error dnnlens reports on purpose (bad input, not a bug)."""


class DataError(DnnlensError):
    """A data set is missing, corrupt or inconsistent (IDX files, sample cache, images)."""


class CheckpointError(DnnlensError):
    """A checkpoint cannot be read or does not fit the network."""


class ShapeError(DnnlensError):
    """A layer's input does not fit the layer (shapes named in the message)."""


class ModelError(DnnlensError):
    """A model cannot be built, imported or traced.

    Unknown name, failing factory, bad input shape."""


class SpecError(DnnlensError):
    """A spec file (network description, hardware description) is malformed."""


class UsageError(DnnlensError):
    """A command-line or API option is out of range or malformed."""


# ---------------------------------------------------------------------------------------------
# Where an unexpected exception (a dnnlens bug) happened, for the CLI's one-line report

_WHERE = "_dnnlens_where"


def annotate(exc: BaseException, **where: str) -> None:
    """Attach where an unexpected exception happened (``model``, ``layer``, ``operator``);
    the first place to say it wins, since the innermost knows best."""
    found = dict(getattr(exc, _WHERE, {}) or {})
    for key, value in where.items():
        if value and not found.get(key):
            found[key] = value
    try:
        setattr(exc, _WHERE, found)
    except AttributeError:  # an exception type that refuses attributes: nothing to add
        pass


def annotation(exc: BaseException) -> dict[str, str]:
    """What :func:`annotate` attached (empty if nothing)."""
    return dict(getattr(exc, _WHERE, {}) or {})
