"""dnnlens: open a deep neural network up, layer by layer.

The public API is imported lazily (names only; a function never shares its module's name, or
importing the module would shadow it) so that ``import dnnlens`` stays fast (no torch, no numba
until a function that needs them is called).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> module that defines it
_API = {
    "DnnlensError": "dnnlens.errors",
    "DataError": "dnnlens.errors",
    "CheckpointError": "dnnlens.errors",
    "ShapeError": "dnnlens.errors",
    "ModelError": "dnnlens.errors",
    "SpecError": "dnnlens.errors",
    "UsageError": "dnnlens.errors",
    "Graph": "dnnlens.ir",
    "Node": "dnnlens.ir",
    "load_data": "dnnlens.data",
    "Net": "dnnlens.models",
    "load_checkpoint": "dnnlens.models",
    "train": "dnnlens.training",
    "evaluate": "dnnlens.training",
    "import_torch": "dnnlens.importers.torch",
    "import_onnx": "dnnlens.importers.onnx",
    "import_spec": "dnnlens.importers.spec",
    "load_spec": "dnnlens.roofline",
    "memory_footprint": "dnnlens.roofline",
    "write_report": "dnnlens.report",
    "analyze": "dnnlens.analysis",
    "analyze_training": "dnnlens.training_step",
    "TrainingStep": "dnnlens.training_step",
    "run": "dnnlens.engine",
    "verify": "dnnlens.verify",
    "traffic": "dnnlens.dataflow",
    "parse_size": "dnnlens.dataflow",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'dnnlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
