"""Importers translate a network from somewhere else into the IR (:mod:`dnnlens.ir`), nothing
more: ``torch`` traces any ``nn.Module`` on the meta device, ``onnx`` reads ONNX files, ``spec``
the course notebook's layer lists in TOML, ``scalesim`` SCALE-Sim topology CSVs. Every graph
then goes through :func:`dnnlens.canonical.canonicalise`, so a model gives the same IR
wherever it came from.

Each importer's public function returns the canonical graph. This package's functions are
the one place that routes a model argument (what a user types
after ``dnnlens analyze`` / ``verify`` / ``report``) to its importer:

* :func:`graph_from_file` -- ``model.onnx``, ``net.toml`` or ``spec:PATH``, ``topology.csv``;
* :func:`build_model` -- ``seed`` (the course network), a torchvision model name, or
  ``package.module:factory``, as an ``nn.Module``;
* :func:`load_graph` -- either of the above, as a canonical graph.

The importers themselves are imported inside the functions, so that ``import dnnlens`` stays
light (no torch, no onnx until needed).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dnnlens.errors import ModelError, UsageError

if TYPE_CHECKING:
    from torch import nn

    from dnnlens.ir import Graph

#: File endings :func:`graph_from_file` reads, besides ``spec:PATH``.
FILE_SOURCES = (".onnx", ".toml", ".csv")
SEED_INPUT = (1, 1, 28, 28)


def is_model_file(source: str) -> bool:
    """Whether ``source`` names a model *file* (ONNX, spec, SCALE-Sim topology)."""
    lower = str(source).lower()
    return lower.startswith("spec:") or lower.endswith(FILE_SOURCES)


def graph_from_file(
    source: str, input_shape: tuple[int, ...] | None = None, batch: int | None = None
) -> Graph | None:
    """The canonical graph of a model *file* named on the command line, or None for other
    sources.

    ``model.onnx`` (ONNX; ``input_shape`` fills dynamic dimensions, ``batch`` replaces N),
    ``net.toml`` or ``spec:PATH`` (a spec file), ``topology.csv`` (a SCALE-Sim topology).
    """
    source = str(source)
    lower = source.lower()
    is_spec = source.startswith("spec:") or lower.endswith(".toml")
    if not is_model_file(source):
        return None
    if input_shape is not None and not lower.endswith(".onnx"):
        raise UsageError(
            f"--input does not apply to {source}: its layers fix the input "
            "shape (edit the file's input instead); --batch sets N"
        )
    if is_spec:
        from dnnlens.importers.spec import import_spec

        return import_spec(source.removeprefix("spec:"), batch)
    if lower.endswith(".csv"):
        from dnnlens.importers.scalesim import import_topology

        return import_topology(source, batch)
    from dnnlens.importers.onnx import import_onnx, onnx_input_dims

    shape = input_shape
    if batch is not None:
        base = shape or tuple(
            d if isinstance(d, int) and d > 0 else 1 for d in onnx_input_dims(source)
        )
        shape = (batch, *base[1:])
    graph, _ = import_onnx(source, input_shape=shape)
    return graph


def build_model(
    spec: str, device: str = "meta", seed: int | None = None
) -> tuple[nn.Module, tuple[int, ...] | None]:
    """The ``nn.Module`` named by ``spec`` and its usual input shape (None if unknown, or if
    the model takes several inputs or a list of images).

    ``spec``: ``seed`` (the course network), a torchvision model name (built as its DEFAULT
    weights configure it, ``weights=None``: nothing is downloaded; see :mod:`dnnlens.zoo`) or
    ``package.module:factory`` (found from the current folder, as ``python -m`` does).
    ``device="meta"`` builds without allocating weights (for the analysis); ``"cpu"`` with
    real, initialised ones (for the engine), seeded with ``seed`` when given. ModelError for
    an unknown name or a factory that fails.
    """
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    if spec == "seed":
        from dnnlens.models import Net

        with torch.device(device):
            return Net(), SEED_INPUT
    if ":" in spec:
        return _from_factory(spec, device), None
    from dnnlens import zoo

    zoo.check_known(spec)
    if device == "meta":
        built = zoo.build(spec)
        shapes = built.input_shapes
        return built.module, (
            shapes[0] if len(shapes) == 1 and not built.needs_real_data else None
        )
    import torchvision

    try:
        with torch.device(device):
            model = torchvision.models.get_model(spec, weights=None, **zoo.builder_kwargs(spec))
    except Exception as exc:  # noqa: BLE001 - report any build failure as one line
        raise ModelError(f"torchvision cannot build {spec!r}: {exc}") from None
    inputs, _ = zoo.default_inputs(spec)
    shapes = [tuple(t.shape) for t in inputs if isinstance(t, torch.Tensor)]
    return model.eval(), (shapes[0] if len(shapes) == len(inputs) == 1 else None)


def _from_factory(spec: str, device: str) -> nn.Module:
    import os
    import sys

    import torch
    from torch import nn

    module_name, _, attr = spec.partition(":")
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)  # as `python -m` does: the current folder's packages first
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot find factory {spec!r} (looked from {here}): {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise ModelError(
            f"importing {module_name!r} for {spec!r} raised {type(exc).__name__}: {exc}"
        ) from None
    try:
        with torch.device(device):  # build without allocating weights where the factory can
            model = factory()
    except Exception:  # noqa: BLE001 - some factories need real tensors: try on CPU
        try:
            model = factory()
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"factory {spec!r} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"factory {spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


def load_graph(
    source: Any, input_shape: tuple[int, ...] | None = None, batch: int | None = None
) -> Graph:
    """Any model argument as a canonical graph: a model file, a model name or factory, or an
    ``nn.Module`` (then ``input_shape`` is required)."""
    from dnnlens.importers.torch import import_torch

    if isinstance(source, str):
        graph = graph_from_file(source, input_shape, batch)
        if graph is not None:
            return graph
        source, default = build_model(source, device="meta")
        input_shape = input_shape or default
    if input_shape is None:
        raise UsageError("give the input shape (--input N,C,H,W) for this model")
    if batch is not None:
        input_shape = (batch, *input_shape[1:])
    return import_torch(source, tuple(input_shape))
