"""Run a network's IR through our own loop-nest kernels, and check it against PyTorch.

Pipeline position: importers -> IR -> ops (kernels) -> **engine** (here) -> reports.

:func:`run` walks the graph in execution order and calls each operator's ``reference`` (readable
NumPy loops) or ``compiled`` (Numba) kernel, so any network the importers express and the
kernels cover runs, not only the course's MNIST network. In the compiled engine a
conv -> relu -> max-pool chain whose intermediate values nobody else reads runs as one fused
kernel (found by pattern in the IR), and so does a chain of fc layers with ReLUs between them.

:func:`verify` runs a trained network both ways on the same images and reports accuracy,
differing predictions, the largest logit difference, per-layer activation differences and both
throughputs. Torch is imported only inside the functions that need it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from dnnlens.errors import CheckpointError, DataError, ModelError, ShapeError, UsageError
from dnnlens.ir import Graph, Node
from dnnlens.ops import Activation, Conv, Linear, Pool

if TYPE_CHECKING:
    import torch

ENGINES = ("compiled", "reference")

#: Images per call of the engine in :func:`verify` and :func:`predict`: large enough that the
#: per-call overhead vanishes, small enough that activations stay in the CPU caches.
ENGINE_BATCH = {"compiled": 2048, "reference": 500}
TORCH_BATCH = 256  # PyTorch eager's best batch size on our 2-core machines (benchmarks/engine.py)


@dataclass
class EngineResult:
    """What :func:`run` returns.

    ``outputs`` maps each graph output to its value (``(N, classes)`` logits for a classifier);
    ``activations`` maps every node name to its output, only when asked for.
    """

    outputs: dict[str, np.ndarray]
    activations: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def logits(self) -> np.ndarray:
        """The first graph output."""
        return next(iter(self.outputs.values()))


# --- weights ------------------------------------------------------------------------------
WeightSource = Any  # an nn.Module, a state dict (name -> tensor/array), or a checkpoint path


def load_weights(source: WeightSource) -> dict[str, np.ndarray]:
    """Parameters by state-dict name as float32 NumPy arrays, from a PyTorch module, a state
    dict, or a checkpoint file (read with ``torch.load(..., weights_only=True)``)."""
    if isinstance(source, (str, os.PathLike)):
        from dnnlens.models import load_state_dict_file

        source = load_state_dict_file(Path(source))
    elif hasattr(source, "state_dict") and callable(source.state_dict):
        source = source.state_dict()
    if not isinstance(source, Mapping):
        raise CheckpointError(f"cannot take weights from a {type(source).__name__}: give a "
                              "PyTorch module, a state dict or a checkpoint path")
    weights = {}
    for name, value in source.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        weights[name] = np.ascontiguousarray(value, dtype=np.float32)
    return weights


def node_weights(node: Node, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The node's parameters by role; CheckpointError naming any missing or mis-shaped one."""
    found = {}
    for role, param in node.params.items():
        if param.name not in weights:
            raise CheckpointError(f"layer {node.name!r} needs parameter {param.name!r}, which "
                                  "the weights do not have")
        value = weights[param.name]
        if tuple(value.shape) != tuple(param.shape):
            raise CheckpointError(f"layer {node.name!r}: parameter {param.name!r} has shape "
                                  f"{tuple(value.shape)} but the network expects "
                                  f"{tuple(param.shape)}")
        found[role] = value
    return found


# --- running one node ---------------------------------------------------------------------
def run_node(node: Node, inputs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
             engine: str = "compiled") -> np.ndarray:
    """One node's kernel; a ShapeError or a missing kernel names the layer."""
    kernel = node.op.compiled if engine == "compiled" else node.op.reference
    try:
        return kernel(list(inputs), dict(weights))
    except ShapeError as exc:
        raise ShapeError(f"layer {node.name!r} ({node.kind}): {exc}") from None
    except NotImplementedError as exc:
        raise ModelError(f"layer {node.name!r} ({node.kind}): {exc}; the engine cannot run "
                         "this network") from None


def check_kernels(graph: Graph) -> None:
    """ModelError naming the first node whose operator has no kernel, before anything runs."""
    for node in graph:
        if not type(node.op).has_kernel():
            what = getattr(node.op, "target", "") or node.source or node.kind
            raise ModelError(f"layer {node.name!r} is a {node.kind} ({what}), which has no "
                             "kernel in dnnlens: the engine cannot run this network")


# --- fusion -------------------------------------------------------------------------------
@dataclass
class Step:
    """Nodes run by one kernel call: a single node, or a fused chain (its last node's value
    is the only one kept)."""

    nodes: list[Node]
    kind: str = "single"  # "single", "conv_relu_maxpool", "fc_relu"
    free: list[str] = field(default_factory=list)  # values no later step reads


def _only_consumer(graph: Graph, users: dict[str, list[str]], node: Node) -> Node | None:
    if node.name in graph.outputs or len(users.get(node.name, [])) != 1:
        return None
    return graph.node(users[node.name][0])


def _is_relu(node: Node | None, source: Node) -> bool:
    return (node is not None and isinstance(node.op, Activation) and node.op.function == "relu"
            and node.inputs == [source.name])


def plan(graph: Graph, fuse: bool = True) -> list[Step]:
    """The graph as kernel calls in execution order; with ``fuse``, each
    conv -> relu -> max-pool chain (2-d, ungrouped conv; unpadded, undilated floor-mode pool;
    no other reader of the conv or relu output) becomes one fused step at the conv's place,
    and so does each fc -> relu pair whose fc output nobody else reads."""
    users = graph.consumers()
    fused: set[str] = set()
    steps = []
    for node in graph:
        if node.name in fused:
            continue
        if fuse and isinstance(node.op, Conv):
            relu = _only_consumer(graph, users, node)
            pool = _only_consumer(graph, users, relu) if _is_relu(relu, node) else None
            if (relu is not None and pool is not None and _is_relu(relu, node)
                    and pool.inputs == [relu.name] and fusable_conv_pool(node, pool)):
                steps.append(Step([node, relu, pool], "conv_relu_maxpool"))
                fused.update((relu.name, pool.name))
                continue
        if fuse and isinstance(node.op, Linear):
            relu = _only_consumer(graph, users, node)
            if _is_relu(relu, node):
                steps.append(Step([node, relu], "fc_relu"))
                fused.add(relu.name)
                continue
        steps.append(Step([node]))
    return steps


def fusable_conv_pool(conv: Node, pool: Node) -> bool:
    """Whether the fused conv+relu+max-pool kernel covers this pair of layers."""
    c, p = conv.op, pool.op
    return (isinstance(c, Conv) and not c.transposed and c.spatial_dims == 2 and c.groups == 1
            and isinstance(p, Pool) and p.mode == "max" and len(p.kernel) == 2
            and all(pads == (0, 0) for pads in p.padding) and tuple(p.dilation) == (1, 1)
            and not p.ceil_mode)


def run_step(step: Step, values: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray],
             engine: str) -> np.ndarray:
    first = step.nodes[0]
    inputs = [values[name] for name in first.inputs]
    if step.kind == "conv_relu_maxpool":
        from dnnlens.ops.conv import conv_relu_maxpool_compiled

        conv, _, pool = step.nodes
        try:
            x, weight, bias, attrs = conv.op.kernel_args(inputs, node_weights(conv, weights))
        except ShapeError as exc:
            raise ShapeError(f"layer {conv.name!r} ({conv.kind}): {exc}") from None
        return conv_relu_maxpool_compiled(x, weight, bias, attrs, pool.op.kernel, pool.op.stride)
    if step.kind == "fc_relu":
        from dnnlens.ops.linear import linear_compiled

        try:
            x, weight, bias, lead = first.op.kernel_args(inputs, node_weights(first, weights))
        except ShapeError as exc:
            raise ShapeError(f"layer {first.name!r} ({first.kind}): {exc}") from None
        return linear_compiled(x, weight, bias, relu=True).reshape(*lead, weight.shape[0])
    return run_node(first, inputs, node_weights(first, weights), engine)


#: Bound steps (see :func:`bind_step`) by (graph, input shapes, weight arrays).
_BOUND: dict[tuple, tuple[list[Step], list[Callable | None]]] = {}


def bind_step(step: Step, weights: Mapping[str, np.ndarray], inputs: list[np.ndarray]
              ) -> Callable[[list[np.ndarray]], np.ndarray] | None:
    """For a step that just ran (so its shapes are checked) on ``inputs``: a call that runs it
    again on inputs of the same shapes with every size, kernel and weight decided now, or None
    to keep the general path. One image at a time, the general path's bookkeeping would cost
    more than the kernels."""
    from dnnlens.ops import Reshape
    from dnnlens.ops.conv import bind_conv_relu_maxpool
    from dnnlens.ops.linear import bind_linear

    first = step.nodes[0]
    if step.kind == "conv_relu_maxpool":
        conv, _, pool = step.nodes
        x, weight, bias, attrs = conv.op.kernel_args(inputs, node_weights(conv, weights))
        if x.ndim != 4:
            return None
        kernel = bind_conv_relu_maxpool(x.shape, x.dtype, weight, bias, attrs, pool.op.kernel,
                                        pool.op.stride)
        return lambda xs: kernel(xs[0])
    if isinstance(first.op, Linear) and inputs[0].ndim == 2:
        x, weight, bias, _ = first.op.kernel_args(inputs, node_weights(first, weights))
        kernel = bind_linear(x.shape[0], x.dtype, weight, bias, relu=step.kind == "fc_relu")
        return lambda xs: kernel(xs[0])
    if isinstance(first.op, Reshape):
        shape = first.op.reference(inputs, {}).shape
        return lambda xs: xs[0].reshape(shape)
    return None


# --- the engine ---------------------------------------------------------------------------
def _graph_inputs(graph: Graph, inputs: np.ndarray | Mapping[str, np.ndarray]
                  ) -> dict[str, np.ndarray]:
    """Inputs by name; each must match its traced shape except for the batch dimension."""
    if isinstance(inputs, np.ndarray) and len(graph.inputs) == 1:  # the common case, fast
        (name, shape), = graph.inputs.items()
        if (inputs.shape[1:] == tuple(shape[1:]) and inputs.ndim == len(shape)
                and inputs.dtype.kind == "f" and np.isfinite(inputs.sum())):
            return {name: inputs}  # (a NaN or Inf anywhere makes the sum NaN or Inf)
    if not isinstance(inputs, Mapping):
        if len(graph.inputs) != 1:
            raise UsageError(f"the network has inputs {list(graph.inputs)}: pass a dict")
        inputs = {next(iter(graph.inputs)): inputs}
    values = {}
    for name, shape in graph.inputs.items():
        if name not in inputs:
            raise UsageError(f"missing network input {name!r} (shape {tuple(shape)})")
        value = np.asarray(inputs[name])
        if value.dtype.kind in "fc" and not np.isfinite(value).all():  # would poison accuracy
            bad = int(np.count_nonzero(~np.isfinite(value)))
            raise DataError(f"input {name!r} has {bad} NaN or Inf value(s); clean the data "
                            "first")
        if value.ndim != len(shape) or tuple(value.shape[1:]) != tuple(shape[1:]):
            raise ShapeError(f"input {name!r} has shape {tuple(value.shape)} but the network "
                             f"expects (N, {', '.join(str(d) for d in shape[1:])})")
        values[name] = value
    return values


def run(graph: Graph, weights: WeightSource, inputs: np.ndarray | Mapping[str, np.ndarray],
        engine: str = "compiled", keep_activations: bool = False) -> EngineResult:
    """Run ``graph`` on ``inputs`` (a batch ``(N, ...)`` of any N, or a dict by input name)
    with our kernels: ``engine`` is ``"compiled"`` (Numba, fused) or ``"reference"`` (the
    readable NumPy loop nests). ``weights``: a module, a state dict or a checkpoint path.

    With ``keep_activations`` every node's output is returned by node name (fusion is then
    off, so that each intermediate value exists)."""
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}: use {' or '.join(ENGINES)}")
    arrays = weights if _is_array_dict(weights) else load_weights(weights)
    values: dict[str, np.ndarray] = _graph_inputs(graph, inputs)
    fast = engine == "compiled" and not keep_activations
    steps = _cached_plan(graph, fuse=fast)
    key = (id(graph), *(v.shape for v in values.values()), *map(id, arrays.values()))
    bound = _BOUND.get(key) if fast else None
    if bound is None or bound[0] is not steps:
        bound = (steps, [None] * len(steps))
        if fast:  # bind each step's kernel for these shapes on this first, checked, run
            if len(_BOUND) > 64:
                _BOUND.clear()
            _BOUND[key] = bound
    calls = bound[1]
    for index, step in enumerate(steps):
        call = calls[index]
        if call is None:
            inputs_seen = [values[name] for name in step.nodes[0].inputs]
            values[step.nodes[-1].name] = run_step(step, values, arrays, engine)
            if fast:
                calls[index] = bind_step(step, arrays, inputs_seen)
        else:
            values[step.nodes[-1].name] = call([values[name] for name in step.nodes[0].inputs])
        if not keep_activations:
            for name in step.free:
                del values[name]
    outputs = {name: values[name] for name in graph.outputs}
    activations = {node.name: values[node.name] for node in graph} if keep_activations else {}
    return EngineResult(outputs, activations)


#: Plans by graph identity, with the graph's structure they were made for: running one image
#: at a time, planning would otherwise cost more than the kernels.
_PLANS: dict[tuple[int, bool], tuple[tuple, list[Step], Graph]] = {}


def _cached_plan(graph: Graph, fuse: bool) -> list[Step]:
    """:func:`plan`, checked by :func:`check_kernels`, with each step's values to free, made
    once per graph (again if its nodes or outputs change)."""
    # cheap to compare on every call: the node list, its length and the outputs
    structure = (id(graph.nodes), len(graph.nodes), tuple(graph.outputs))
    cached = _PLANS.get((id(graph), fuse))
    if cached is None or cached[0] != structure:
        check_kernels(graph)
        steps = plan(graph, fuse)
        for name, index in _last_use(graph, steps).items():
            if name not in graph.outputs:
                steps[index].free.append(name)
        cached = (structure, steps, graph)  # holding the graph keeps its id unique
        if len(_PLANS) > 64:
            _PLANS.clear()
        _PLANS[(id(graph), fuse)] = cached
    return cached[1]


def _is_array_dict(weights: object) -> bool:
    return isinstance(weights, Mapping) and all(isinstance(v, np.ndarray)
                                                for v in weights.values())


def _last_use(graph: Graph, steps: list[Step]) -> dict[str, int]:
    """For each value, the index of the last step that reads it."""
    last: dict[str, int] = {}
    for index, step in enumerate(steps):
        for name in step.nodes[0].inputs:
            last[name] = index
    return last


def predict(graph: Graph, weights: WeightSource, images: np.ndarray, engine: str = "compiled",
            batch: int | None = None) -> np.ndarray:
    """Logits for many images, ``batch`` at a time: ``(N, ...)`` -> ``(N, classes)``."""
    if len(images) == 0:
        raise DataError("no images to predict: the data set or --limit selects none")
    arrays = load_weights(weights) if not _is_array_dict(weights) else weights
    batch = batch or ENGINE_BATCH[engine]
    parts = [run(graph, arrays, images[i:i + batch], engine).logits
             for i in range(0, len(images), batch)]
    return np.concatenate(parts)


# --- PyTorch on the same IR: the per-layer truth ------------------------------------------
def torch_node(node: Node, inputs: list["torch.Tensor"], weights: dict[str, "torch.Tensor"]
               ) -> "torch.Tensor | None":
    """The node's operator computed by ``torch.nn.functional`` (None where this function has no
    translation: that layer's difference is then not reported)."""
    import torch
    import torch.nn.functional as F

    from dnnlens.ops import (AdaptivePool, Binary, Concat, Copy, Dropout, Expand, Permute,
                             Reshape, Slice, Softmax)

    op = node.op
    x = inputs[0] if inputs else None
    if isinstance(op, Conv) and not op.transposed:
        pads = [p for pair in reversed(op.padding) for p in pair]  # F.pad: last dim first
        conv = (F.conv1d, F.conv2d, F.conv3d)[op.spatial_dims - 1]
        return conv(F.pad(x, pads), weights["weight"], weights.get("bias"), op.stride, 0,
                    op.dilation, op.groups)
    if isinstance(op, Linear):
        return F.linear(x, weights["weight"], weights.get("bias"))
    if isinstance(op, Pool) and all(b == e for b, e in op.padding) and len(op.kernel) <= 3:
        dims = len(op.kernel)
        padding = tuple(b for b, _ in op.padding)
        if op.mode == "max":
            pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[dims - 1]
            return pool(x, op.kernel, op.stride, padding, op.dilation, ceil_mode=op.ceil_mode)
        pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[dims - 1]
        return pool(x, op.kernel, op.stride, padding, ceil_mode=op.ceil_mode,
                    count_include_pad=op.count_include_pad)
    if isinstance(op, AdaptivePool) and len(op.output_size) <= 3:
        dims = len(op.output_size)
        name = f"adaptive_{op.mode}_pool{dims}d"
        return getattr(F, name)(x, op.output_size)
    if isinstance(op, Activation):
        function = getattr(F, op.function, None) or getattr(torch, op.function, None)
        return function(x) if function is not None else None
    if isinstance(op, Binary) and op.function != "where":
        function = getattr(torch, op.function)
        result = inputs[0] if inputs else None
        for operand in [*inputs[1:], *weights.values()]:
            result = operand if result is None else function(result, operand)
        return result
    if isinstance(op, Softmax):
        return (F.log_softmax if op.log else F.softmax)(x, dim=op.axis)
    if isinstance(op, Reshape):
        target = list(op.shape)
        if op.keeps_batch and target:
            target[0] = x.shape[0]
        return x.reshape(target)
    if isinstance(op, Permute):
        return x.permute(op.dims)
    if isinstance(op, Slice):
        index: list[object] = [slice(None)] * x.dim()
        index[op.axis % x.dim()] = slice(op.start, op.stop, op.step) if op.keep_dim else op.start
        return x[tuple(index)]
    if isinstance(op, (Copy, Dropout)):
        return x.clone()
    if isinstance(op, Expand):
        return (x if x is not None else next(iter(weights.values()))).expand(op.shape)
    if isinstance(op, Concat):
        return torch.cat([*inputs, *weights.values()], dim=op.axis)
    return None


def torch_activations(graph: Graph, weights: Mapping[str, np.ndarray],
                      inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray | None]:
    """Every node's value computed by PyTorch from PyTorch's own earlier values (None for a
    node torch_node cannot translate, and for everything that depends on it)."""
    import torch

    values: dict[str, Any] = {name: torch.from_numpy(np.asarray(v)) for name, v in inputs.items()}
    result: dict[str, np.ndarray | None] = {}
    with torch.inference_mode():
        for node in graph:
            args = [values.get(name) for name in node.inputs]
            params = {role: torch.from_numpy(weights[p.name]) for role, p in node.params.items()}
            value = None if any(a is None for a in args) else torch_node(node, args, params)
            values[node.name] = value
            result[node.name] = None if value is None else value.numpy()
    return result


# --- verify against PyTorch ---------------------------------------------------------------
@dataclass
class LayerDiff:
    """Largest |ours - PyTorch's| over every value a layer produced (None: not compared)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    max_abs_diff: float | None


@dataclass
class VerifyResult:
    """What :func:`verify` measured; ``to_dict`` is the ``--json`` output."""

    images: int
    data: str
    engine: str
    accuracy: float
    torch_accuracy: float
    correct: int
    torch_correct: int
    mismatches: int
    max_abs_diff: float
    layers: list[LayerDiff]
    images_per_s: float
    torch_images_per_s: float
    warmup_seconds: float  # the first call: compilation (or loading it from the disk cache)
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load_model(checkpoint_or_module: Any) -> "torch.nn.Module":
    import torch

    if isinstance(checkpoint_or_module, torch.nn.Module):
        return checkpoint_or_module.eval()
    if isinstance(checkpoint_or_module, (str, os.PathLike)):
        from dnnlens.models import load_checkpoint

        return load_checkpoint(checkpoint_or_module)
    raise UsageError(f"verify needs a checkpoint path or a PyTorch module, not "
                     f"{type(checkpoint_or_module).__name__}")


#: Timed passes over the data for each throughput (the best one counts).
THROUGHPUT_REPEATS = 3


def _timed(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def _best_of(function: Callable[[], Any], repeats: int = THROUGHPUT_REPEATS
             ) -> tuple[Any, float]:
    """The value and the shortest of ``repeats`` timed calls (the least disturbed one)."""
    runs = [_timed(function) for _ in range(repeats)]
    return runs[0][0], min(seconds for _, seconds in runs)


def torch_predict(model: "torch.nn.Module", images: np.ndarray, batch: int = TORCH_BATCH
                  ) -> np.ndarray:
    """PyTorch eager logits, ``batch`` images per call (``(N, ...)`` -> ``(N, classes)``)."""
    import torch

    with torch.inference_mode():
        parts = [model(torch.from_numpy(images[i:i + batch])).numpy()
                 for i in range(0, len(images), batch)]
    return np.concatenate(parts)


def layer_differences(graph: Graph, weights: Mapping[str, np.ndarray], images: np.ndarray,
                      engine: str, batch: int = 500) -> list[LayerDiff]:
    """Each node's largest activation difference from PyTorch over ``images`` (in chunks)."""
    input_name = next(iter(graph.inputs))
    worst: dict[str, float | None] = {node.name: 0.0 for node in graph}
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        ours = run(graph, weights, chunk, engine, keep_activations=True).activations
        theirs = torch_activations(graph, weights, {input_name: chunk})
        for node in graph:
            truth = theirs[node.name]
            if truth is None or worst[node.name] is None:
                worst[node.name] = None
                continue
            diff = float(np.max(np.abs(ours[node.name] - truth), initial=0.0))
            worst[node.name] = max(worst[node.name] or 0.0, diff)
    return [LayerDiff(node.name, node.kind, tuple(node.output_shape[1:]), worst[node.name])
            for node in graph]


def verify(checkpoint_or_module: Any, data: str = "sample", limit: int | None = None,
           engine: str = "compiled", split: str = "test") -> VerifyResult:
    """Run our engine and PyTorch on the same images and compare them.

    ``checkpoint_or_module``: a checkpoint of the reference network, or any PyTorch module
    taking the data's images. ``data``: a :func:`dnnlens.data.load_data` source. ``limit``:
    the first N images only. Throughputs are measured after a warm-up call (whose time,
    mostly compilation or loading it from Numba's disk cache, is reported on its own).
    """
    import torch

    from dnnlens.data import load_data
    from dnnlens.importers.torch import import_torch

    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}: use {' or '.join(ENGINES)}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be a positive number of images, got {limit}")
    model = _load_model(checkpoint_or_module)
    dataset = load_data(data, split)
    images, labels = dataset.images[:limit], dataset.labels[:limit]
    graph = import_torch(model, (1, *images.shape[1:]))
    weights = load_weights(model)
    bad = [name for name, value in weights.items() if not np.isfinite(value).all()]
    if bad:  # NaN weights make every prediction class 0 in both engines: no agreement to test
        raise CheckpointError(f"the weights {', '.join(bad[:4])} contain NaN or Inf values "
                              "(did training diverge?); retrain or use another checkpoint")

    _, warmup = _timed(lambda: predict(graph, weights, images[:2 * 16], engine))
    # Both sides warmed up on the whole set first (PyTorch builds its kernels per batch
    # shape on first use, the last batch is often smaller), then the best of a few passes.
    ours, seconds = _best_of(lambda: predict(graph, weights, images, engine))
    torch_predict(model, images)
    theirs, torch_seconds = _best_of(lambda: torch_predict(model, images))

    predicted, torch_predicted = ours.argmax(axis=1), theirs.argmax(axis=1)
    return VerifyResult(
        images=len(images), data=dataset.name, engine=engine,
        accuracy=float(np.mean(predicted == labels)),
        torch_accuracy=float(np.mean(torch_predicted == labels)),
        correct=int(np.sum(predicted == labels)),
        torch_correct=int(np.sum(torch_predicted == labels)),
        mismatches=int(np.sum(predicted != torch_predicted)),
        max_abs_diff=float(np.max(np.abs(ours - theirs))),
        layers=layer_differences(graph, weights, images, engine),
        images_per_s=len(images) / seconds, torch_images_per_s=len(images) / torch_seconds,
        warmup_seconds=warmup, threads=torch.get_num_threads())
