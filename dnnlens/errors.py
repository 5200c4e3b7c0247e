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
    """A model cannot be built, imported or traced (unknown name, failing factory, bad input shape)."""


class SpecError(DnnlensError):
    """A spec file (network description, hardware description) is malformed."""


class UsageError(DnnlensError):
    """A command-line or API option is out of range or malformed."""
