"""Our engine against the real model: PyTorch for a PyTorch model, onnxruntime for an ONNX
file; end to end and layer by layer.

Pipeline position: importers -> IR -> engine -> **verify** (here) -> reports.

:func:`verify` takes anything ``dnnlens analyze`` takes -- the course checkpoint, a
torchvision name, ``package.module:factory`` (with ``weights=`` a checkpoint of it), an
``nn.Module``, an ONNX file -- runs it through our kernels and through the reference on the
same images (a data set, or ``images`` seeded random inputs of the model's input shape) and
reports one :class:`VerifyResult` whatever the reference:

* prediction agreement: argmax over the last dimension, ours against the reference;
* the largest |logit difference| next to the largest |reference logit| (the scale it is
  small against);
* per layer, the largest difference from the **real model's own intermediate values**:
  forward hooks on the PyTorch modules (an IR node named after a module, ``conv1`` or
  ``relu#2`` for its second call, is compared with that module's output), or onnxruntime's
  values of the node outputs (exposed as extra graph outputs). Nodes the reference computes
  inside a module, without a value of their own (``add``, ``flatten``), show no difference
  rather than one made up by re-translating our IR.

A model with an operator the engine has no kernel for is refused before anything runs
(:func:`dnnlens.engine.prepare`), naming the layer and the operator. Torch and onnxruntime are
imported only inside the functions that need them.
"""

from __future__ import annotations

import os
import sys
import time
import types
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dnnlens.engine import ENGINES, Plan, load_weights, prepare
from dnnlens.errors import CheckpointError, ModelError, UsageError
from dnnlens.ir import Graph

if TYPE_CHECKING:
    import torch

REFERENCES = ("pytorch", "onnxruntime")
CHECKPOINT_FILES = (".pt", ".pth", ".ckpt")
#: Random inputs when no data set is given.
DEFAULT_IMAGES = 8
TORCH_BATCH = 256  # PyTorch eager's best batch size on our 2-core machines (benchmarks/engine.py)
#: Images per pass of the per-layer check: every layer's value of a chunk is held at once.
LAYER_CHUNK = {"compiled": 500, "reference": 500}
#: bytes of intermediate values each side holds at once in the per-layer check
LAYER_BUDGET = 2 << 30
#: Timed passes for each throughput when a data set is given (the best one counts).
THROUGHPUT_REPEATS = 3


# --- the result ---------------------------------------------------------------------------
@dataclass
class LayerDiff:
    """One node: the largest |ours - reference| over every value it produced, and the largest
    |reference| value (the scale); None where the reference has no value of its own."""

    name: str
    kind: str
    shape: tuple[int, ...]
    max_abs_diff: float | None
    max_abs_reference: float | None = None
    note: str = ""  # why there is no difference ("folded into bn1", "inside a module")


@dataclass
class VerifyResult:
    """What :func:`verify` measured; ``to_dict`` is the ``--json`` output."""

    model: str
    reference: str  # "pytorch" or "onnxruntime"
    data: str  # the data set, or "random (seed S)"
    images: int
    engine: str
    mismatches: int  # images whose argmax over the last dimension differs
    max_abs_diff: float
    max_abs_reference: float
    layers: list[LayerDiff]
    accuracy: float | None = None  # with a labelled data set only
    reference_accuracy: float | None = None
    correct: int | None = None
    reference_correct: int | None = None
    images_per_s: float | None = None
    reference_images_per_s: float | None = None
    warmup_seconds: float = 0.0  # the first call: compilation (or loading it from the cache)
    threads: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # The names these figures had when PyTorch was the only reference (notebook, demo).
    @property
    def torch_accuracy(self) -> float | None:
        return self.reference_accuracy

    @property
    def torch_correct(self) -> int | None:
        return self.reference_correct

    @property
    def torch_images_per_s(self) -> float | None:
        return self.reference_images_per_s


# --- what is being verified ---------------------------------------------------------------
@dataclass
class Subject:
    """A model ready for both sides: our graph and weights, and the reference's runner."""

    name: str
    reference: str
    graph: Graph
    weights: dict[str, np.ndarray]
    input_shape: tuple[int, ...]
    module: Any = None  # the nn.Module (reference "pytorch")
    path: Path | None = None  # the ONNX file (reference "onnxruntime")
    onnx_values: dict[str, str] = field(default_factory=dict)  # IR node -> ONNX value

    @property
    def onnx_path(self) -> Path:
        """The ONNX file the onnxruntime reference runs (:func:`onnx_subject` sets it)."""
        if self.path is None:
            raise UsageError(f"{self.name}: the onnxruntime reference needs the ONNX file")
        return self.path


def _torch_module(model: Any, weights: Any, seed: int) -> tuple[Any, tuple[int, ...] | None, str]:
    """``(nn.Module in eval mode, its usual input shape or None, its name)``."""
    import torch

    from dnnlens.importers import build_model
    from dnnlens.models import check_fits, load_checkpoint, load_state_dict_file

    if isinstance(model, torch.nn.Module):
        module, shape, name = model, None, type(model).__name__
    elif str(model).lower().endswith(CHECKPOINT_FILES):  # the course network's checkpoint
        from dnnlens.importers import SEED_INPUT

        if weights is not None:
            raise UsageError(
                f"{model} is already a checkpoint (of the course network); "
                "--weights goes with a model name or package.module:factory"
            )
        return load_checkpoint(model), SEED_INPUT, str(model)
    else:
        module, shape = build_model(str(model), device="cpu", seed=seed)
        name = str(model)
    if weights is not None:
        state = load_state_dict_file(weights)
        check_fits(state, module, source=str(weights))
        module.load_state_dict(state, strict=True)
    return module.eval(), shape, name


def _check_finite(weights: dict[str, np.ndarray]) -> None:
    bad = [name for name, value in weights.items() if not np.isfinite(value).all()]
    if bad:  # NaN weights make every prediction class 0 on both sides: nothing to compare
        raise CheckpointError(
            f"the weights {', '.join(bad[:4])} contain NaN or Inf values "
            "(did training diverge?); retrain or use another checkpoint"
        )


def torch_subject(
    model: Any,
    input_shape: tuple[int, ...] | None,
    weights: Any = None,
    seed: int = 0,
    fallback_shape: tuple[int, ...] | None = None,
) -> Subject:
    from dnnlens.importers.torch import import_torch

    module, default, name = _torch_module(model, weights, seed)
    shape = tuple(input_shape or default or fallback_shape or ())
    if not shape:
        raise UsageError(f"give the input shape of {name} (--input N,C,H,W)")
    graph = import_torch(module, (1, *shape[1:]))
    arrays = load_weights(module)
    _check_finite(arrays)
    return Subject(name, "pytorch", graph, arrays, shape, module=module)


def onnx_subject(path: str | os.PathLike, input_shape: tuple[int, ...] | None) -> Subject:
    from dnnlens.importers.onnx import import_onnx_with_values, onnx_input_dims

    path = Path(path)
    dims = onnx_input_dims(path)
    if input_shape is None:
        static = [d for d in dims[1:] if isinstance(d, int) and d > 0]
        if len(static) != len(dims) - 1:
            shown = ", ".join(str(d) for d in dims)
            raise UsageError(
                f"{path}: input ({shown}) has dynamic dimensions; give its shape "
                "with --input N,C,H,W"
            )
        input_shape = (1, *static)
    fixed = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
    graph, weights, values = import_onnx_with_values(path, (fixed or 1, *input_shape[1:]))
    return Subject(
        path.name, "onnxruntime", graph, weights, tuple(input_shape), path=path, onnx_values=values
    )


def subject_for(
    model: Any,
    input_shape: tuple[int, ...] | None = None,
    weights: Any = None,
    seed: int = 0,
    fallback_shape: tuple[int, ...] | None = None,
) -> Subject:
    """Route a model argument to its reference: an ONNX file to onnxruntime, everything else
    to PyTorch. ``fallback_shape``: the input shape when neither the caller nor the model
    says it (the data's images)."""
    from dnnlens.importers import is_model_file

    if (
        isinstance(model, (str, os.PathLike))
        and is_model_file(str(model))
        and not str(model).lower().endswith(".onnx")
    ):
        raise UsageError(
            f"{model} describes layers without weights: nothing to run; verify "
            "an ONNX file, a checkpoint, a torchvision name or a factory"
        )
    if isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(".onnx"):
        if weights is not None:
            raise UsageError("--weights is for PyTorch models; an ONNX file holds its own")
        return onnx_subject(model, input_shape or fallback_shape)
    return torch_subject(model, input_shape, weights, seed, fallback_shape)


# --- the reference's outputs --------------------------------------------------------------
def _first_tensor(value: Any) -> Any:
    """A module's main output: the tensor itself, or the first tensor of a tuple/list/dict."""
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list, dict)):
        for item in value.values() if isinstance(value, dict) else value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def torch_predict(
    model: torch.nn.Module, images: np.ndarray, batch: int = TORCH_BATCH
) -> np.ndarray:
    """PyTorch eager outputs, ``batch`` images per call (``(N, ...)`` -> ``(N, classes)``)."""
    import torch

    with torch.inference_mode():
        parts = [
            _first_tensor(model(torch.from_numpy(images[i : i + batch]))).numpy()
            for i in range(0, len(images), batch)
        ]
    return np.concatenate(parts)


def _fixed_batch(path: Path) -> int | None:
    from dnnlens.importers.onnx import onnx_input_dims

    first = onnx_input_dims(path)[0]
    return first if isinstance(first, int) and first > 0 else None


def _ort_session(path: Path | bytes):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # no warnings about unused initializers on stderr
    return onnxruntime.InferenceSession(
        path if isinstance(path, bytes) else str(path), options, providers=["CPUExecutionProvider"]
    )


def _ort_run(session, images: np.ndarray, fixed: int | None, batch: int = 256) -> list[np.ndarray]:
    """All of the session's outputs on ``images``, ``fixed`` (the model's own batch, padded)
    or ``batch`` images per call, concatenated along the batch."""
    name = session.get_inputs()[0].name
    step = fixed or batch
    parts: list[list[np.ndarray]] = []
    for start in range(0, len(images), step):
        chunk = images[start : start + step]
        count = len(chunk)
        if fixed and count < fixed:  # pad a last partial batch
            pad = np.zeros((fixed - count, *chunk.shape[1:]), chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        outs = session.run(None, {name: chunk})
        parts.append(
            [
                np.asarray(o)[:count] if np.ndim(o) and len(o) == len(chunk) else np.asarray(o)
                for o in outs
            ]
        )
    return [
        np.concatenate([p[i] for p in parts]) if np.ndim(parts[0][i]) else parts[0][i]
        for i in range(len(parts[0]))
    ]


def reference_predict(subject: Subject, images: np.ndarray) -> np.ndarray:
    if subject.reference == "pytorch":
        return torch_predict(subject.module, images)
    path = subject.onnx_path
    return _ort_run(_ort_session(path), images, _fixed_batch(path))[0]


# --- the reference's intermediate values --------------------------------------------------
_MARK = "_dnnlens_from_input"  # set on every tensor computed from the model's input
_PARAM = "_dnnlens_parameter"  # set on parameters and views of them


def _marked(tensor: Any, mark: str) -> bool:
    return getattr(tensor, mark, False)


def _mark(value: Any, mark: str = _MARK) -> list[Any]:
    """Mark the tensors in ``value``; returns them."""
    import torch
    from torch.utils._pytree import tree_flatten

    tensors = [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]
    for tensor in tensors:
        setattr(tensor, mark, True)
    return tensors


def torch_values(
    model: torch.nn.Module,
    images: np.ndarray,
    wanted: Callable[[str, str, int], bool] | None = None,
) -> tuple[dict[str, list[np.ndarray | None]], dict[str, list[np.ndarray | None]]]:
    """The real model's own intermediate values on ``images``, copied at once (an in-place
    ReLU after them would overwrite them); with ``wanted(table, key, call)`` (``"module"``
    and a module name, or ``"operator"`` and an aten operator's), only those values are
    copied and the others are None, so a large model's values can be taken a group at a
    time:

    * by module name, one entry per call: the output of every module the torch importer
      makes one node of (forward hooks);
    * by aten operator, in call order: the outputs of the operators called outside those
      modules that the importer makes nodes of (the same rule: operators on values computed
      from the input or on parameters, except views of parameters and pass-through ops).
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from dnnlens.importers.torch import PARAM_VIEWS, PASSTHROUGH, leaf_rule

    modules: dict[str, list[np.ndarray | None]] = {}
    operators: dict[str, list[np.ndarray | None]] = {}
    inside = [0]  # depth of leaf modules we are in: their inner operators are not nodes

    def copied(table: str, key: str, tensor: Any) -> None:
        calls = (modules if table == "module" else operators).setdefault(key, [])
        keep = wanted is None or wanted(table, key, len(calls))
        calls.append(tensor.detach().clone().numpy() if keep else None)

    def enter(module: Any, args: Any) -> None:
        inside[0] += 1

    def leave(name: str) -> Callable:
        def record(module: Any, args: Any, out: Any) -> None:
            inside[0] -= 1
            tensor = _first_tensor(out)
            if tensor is not None and inside[0] == 0:
                copied("module", name, tensor)
            _mark(out)

        return record

    class Operators(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if inside[0] == 0:
                record(func.overloadpacket.__name__, args, kwargs or {}, out)
            return out

    def record(name: str, args: tuple, kwargs: dict, out: Any) -> None:
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        first = tensors[0] if tensors else None
        if first is not None and _marked(first, _PARAM) and name in PARAM_VIEWS:
            _mark(out, _PARAM)  # a view of a parameter is the parameter: no node
            return
        if name in PASSTHROUGH and first is not None and _marked(first, _MARK):
            _mark(out)
            return
        if not any(_marked(t, _MARK) or _marked(t, _PARAM) for t in tensors) and name != "expand":
            return  # made from constants only: not a node
        for tensor in _mark(out):
            copied("operator", name, tensor)

    handles = []
    for name, module in model.named_modules():
        if name and leaf_rule(module) is not None:
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave(name)))
    marked = [*model.parameters(), *model.buffers()]
    try:
        with torch.inference_mode():
            _mark(marked, _PARAM)
            x = torch.from_numpy(images).clone()
            _mark(x)
            with Operators():
                model(x)
    finally:
        for handle in handles:
            handle.remove()
        for tensor in marked:
            if hasattr(tensor, _PARAM):
                delattr(tensor, _PARAM)
    return modules, operators


def _torch_sources(subject: Subject) -> dict[str, tuple[str, str, int]]:
    """Where the real model shows each IR node's value: ``("module", name, call)`` for a
    node named after a module (``relu#2``: its second call), ``("operator", aten name, k)``
    for the k-th node the importer made of that operator."""
    sources = {}
    seen: dict[str, int] = {}
    for node in subject.graph:
        if node.source.startswith("nn."):
            base, _, call = node.name.partition("#")
            sources[node.name] = ("module", base, int(call) - 1 if call.isdigit() else 0)
        elif node.source.startswith("aten."):
            name = node.source.removeprefix("aten.")
            index = seen.get(name, 0)
            seen[name] = index + 1
            sources[node.name] = ("operator", name, index)
    return sources


def torch_layer_truth(
    subject: Subject, images: np.ndarray, names: Collection[str] | None = None
) -> dict[str, np.ndarray]:
    """The real model's value for each IR node (or for the nodes in ``names``)."""
    sources = _torch_sources(subject)
    if names is not None:
        sources = {name: sources[name] for name in names if name in sources}
    wanted = set(sources.values())
    modules, operators = torch_values(subject.module, images, lambda *source: source in wanted)
    truth = {}
    for name, (table, key, call) in sources.items():
        values = (modules if table == "module" else operators).get(key, [])
        value = values[call] if call < len(values) else None
        if value is not None:
            truth[name] = value
    return truth


def onnx_layer_truth(
    subject: Subject, images: np.ndarray, names: Collection[str] | None = None
) -> dict[str, np.ndarray]:
    """onnxruntime's value of each IR node's ONNX output (or of the nodes in ``names``), the
    node outputs exposed as extra graph outputs of an in-memory copy of the model."""
    import onnx

    path = subject.onnx_path
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    known = {info.name: info for info in model.graph.value_info}
    present = {out.name for out in model.graph.output}
    wanted = {}
    for node_name, value in subject.onnx_values.items():
        if names is not None and node_name not in names:
            continue
        if value in present:
            wanted[node_name] = value
        elif value in known:
            model.graph.output.append(known[value])
            present.add(value)
            wanted[node_name] = value
    session = _ort_session(model.SerializeToString())
    names = [out.name for out in session.get_outputs()]
    outs = dict(zip(names, _ort_run(session, images, _fixed_batch(path))))
    return {node_name: outs[value] for node_name, value in wanted.items() if value in outs}


def layer_groups(graph: Graph, images: int, budget: int) -> list[list[str]]:
    """The graph's node names in consecutive groups whose values for ``images`` inputs take
    at most ``budget`` bytes each (a node larger than that is a group of its own): one
    group, one run of each side, so a large model is checked without holding all its
    values at once (vit_h_14 makes about 14 GB of them per image)."""
    traced = next(iter(graph.inputs.values()), (1,))[0] or 1  # the batch it was traced at
    groups: list[list[str]] = [[]]
    used = 0
    for node in graph:
        size = 4 * max(1, int(np.prod(node.output_shape))) * images // traced
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(node.name)
        used += size
    return groups


def layer_differences(subject: Subject, images: np.ndarray, engine: str) -> list[LayerDiff]:
    """Each node's largest difference from the reference's own value over ``images`` (in
    chunks, and in groups of nodes whose values fit :data:`LAYER_BUDGET` per side),
    computed in float64."""
    plan = prepare(subject.graph, subject.weights, engine, keep_activations=True)
    folded = {step.folded.name: step.nodes[0].name for step in plan.steps if step.folded}
    into = {conv: norm for norm, conv in folded.items()}
    truth_of = torch_layer_truth if subject.reference == "pytorch" else onnx_layer_truth
    worst: dict[str, list[float]] = {}
    step = LAYER_CHUNK[engine]
    for start in range(0, len(images), step):
        chunk = images[start : start + step]
        for group in layer_groups(subject.graph, len(chunk), LAYER_BUDGET):
            ours = plan.run(chunk, keep=group).activations
            for name, truth in truth_of(subject, chunk, group).items():
                mine = ours.pop(name, None)
                if mine is None or mine.shape != truth.shape:
                    continue
                chunk_diff = float(np.max(np.abs(mine.astype(np.float64) - truth), initial=0.0))
                chunk_scale = float(np.max(np.abs(truth.astype(np.float64)), initial=0.0))
                old = worst.get(name, [0.0, 0.0])
                worst[name] = [max(old[0], chunk_diff), max(old[1], chunk_scale)]
    rows = []
    for node in subject.graph:
        diff, scale = worst.get(node.name, (None, None))
        note = ""
        if node.name in into:
            note = f"folded into {into[node.name]}"
        elif diff is None:
            note = "no value of its own in the reference"
        rows.append(
            LayerDiff(node.name, node.kind, tuple(node.output_shape[1:]), diff, scale, note)
        )
    return rows


# --- verify -------------------------------------------------------------------------------
def _timed(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def _best_of(function: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """The value and the shortest of ``repeats`` timed calls (the least disturbed one)."""
    runs = [_timed(function) for _ in range(repeats)]
    return runs[0][0], min(seconds for _, seconds in runs)


def _dataset(data: Any, split: str) -> Any:
    from dnnlens.data import Dataset, load_data

    return data if isinstance(data, Dataset) else load_data(str(data), split)


def _inputs(
    subject: Subject, dataset: Any, limit: int | None, images: int, seed: int
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """``(images, labels or None, description)``: a data set's, or seeded random ones."""
    if dataset is None:
        if images < 1:
            raise UsageError(f"--images must be at least 1, got {images}")
        rng = np.random.default_rng(seed)
        shape = (images, *subject.input_shape[1:])
        return rng.standard_normal(shape, dtype=np.float32), None, f"random (seed {seed})"
    pixels, labels = dataset.images[:limit], dataset.labels[:limit]
    if tuple(pixels.shape[1:]) != tuple(subject.input_shape[1:]):
        raise UsageError(
            f"{dataset.name} has images of shape {tuple(pixels.shape[1:])} but "
            f"{subject.name} takes {tuple(subject.input_shape[1:])}; verify it "
            "on random inputs (leave out --data)"
        )
    return np.ascontiguousarray(pixels, np.float32), labels, dataset.name


def verify(
    model: Any,
    data: Any = None,
    limit: int | None = None,
    engine: str = "compiled",
    split: str = "test",
    *,
    images: int = DEFAULT_IMAGES,
    seed: int = 0,
    weights: Any = None,
    input_shape: tuple[int, ...] | None = None,
    layers: bool = True,
) -> VerifyResult:
    """Run our engine and the reference on the same inputs and compare them.

    ``model``: the course network's checkpoint (``.pth``), a torchvision name,
    ``package.module:factory``, an ``nn.Module`` (all checked against PyTorch; ``weights``: a
    checkpoint to load into the model, else its seeded initialisation) or an ONNX file
    (checked against onnxruntime). ``data``: a :func:`dnnlens.data.load_data` source or a
    Dataset (``limit``: its first N images), reporting accuracy; without it, ``images``
    random inputs of the model's input shape drawn with ``seed``. ``input_shape``: for models
    whose input shape is not known (factories, ONNX files with dynamic dimensions).

    Throughputs are measured after a warm-up call (whose time, mostly compilation or loading
    it from Numba's disk cache, is reported on its own); with a data set, the best of
    :data:`THROUGHPUT_REPEATS` passes.
    """
    import torch

    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}: use {' or '.join(ENGINES)}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be a positive number of images, got {limit}")
    dataset = _dataset(data, split) if data is not None else None
    fallback = (1, *dataset.images.shape[1:]) if dataset is not None else None
    subject = subject_for(model, input_shape, weights, seed, fallback)
    plan: Plan = prepare(subject.graph, subject.weights, engine)  # refuses missing kernels
    pixels, labels, described = _inputs(subject, dataset, limit, images, seed)

    _, warmup = _timed(lambda: plan.predict(pixels[:1]))  # compiles (once per machine)
    repeats = THROUGHPUT_REPEATS if data is not None else 1
    # Both sides warmed up on the whole set first (PyTorch builds its kernels per batch
    # shape on first use, the last batch is often smaller), then the best of a few passes.
    ours, seconds = _best_of(lambda: plan.predict(pixels), repeats)
    reference_predict(subject, pixels)
    theirs, reference_seconds = _best_of(lambda: reference_predict(subject, pixels), repeats)
    if ours.shape != theirs.shape:
        raise ModelError(
            f"{subject.name}: our output has shape {ours.shape}, the reference's {theirs.shape}"
        )

    predicted, reference_predicted = ours.argmax(axis=-1), theirs.argmax(axis=-1)
    result = VerifyResult(
        model=subject.name,
        reference=subject.reference,
        data=described,
        images=len(pixels),
        engine=engine,
        mismatches=int(np.sum(predicted != reference_predicted)),
        max_abs_diff=float(np.max(np.abs(ours.astype(np.float64) - theirs))),
        max_abs_reference=float(np.max(np.abs(theirs.astype(np.float64)))),
        layers=layer_differences(subject, pixels, engine) if layers else [],
        images_per_s=len(pixels) / seconds,
        reference_images_per_s=len(pixels) / reference_seconds,
        warmup_seconds=warmup,
        threads=torch.get_num_threads(),
    )
    if labels is not None and predicted.ndim == 1:
        result.correct = int(np.sum(predicted == labels))
        result.reference_correct = int(np.sum(reference_predicted == labels))
        result.accuracy = result.correct / len(pixels)
        result.reference_accuracy = result.reference_correct / len(pixels)
    return result


class _CallableModule(types.ModuleType):
    """``dnnlens.verify(...)`` is the public function and ``dnnlens.verify`` this module:
    once the module is imported, Python binds the package attribute to the module, so the
    module itself calls :func:`verify`."""

    def __call__(self, *args: Any, **kwargs: Any) -> VerifyResult:
        return verify(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
