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

from dnnlens.errors import CheckpointError, ModelError, ShapeError, UsageError
from dnnlens.ir import Graph, Node
from dnnlens.ops import Activation, Conv, Pool

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
    kind: str = "single"  # "single", "conv_relu_maxpool"


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
    no other reader of the conv or relu output) becomes one fused step at the conv's place."""
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
    return run_node(first, inputs, node_weights(first, weights), engine)


# --- the engine ---------------------------------------------------------------------------
def _graph_inputs(graph: Graph, inputs: np.ndarray | Mapping[str, np.ndarray]
                  ) -> dict[str, np.ndarray]:
    """Inputs by name; each must match its traced shape except for the batch dimension."""
    if not isinstance(inputs, Mapping):
        if len(graph.inputs) != 1:
            raise UsageError(f"the network has inputs {list(graph.inputs)}: pass a dict")
        inputs = {next(iter(graph.inputs)): inputs}
    values = {}
    for name, shape in graph.inputs.items():
        if name not in inputs:
            raise UsageError(f"missing network input {name!r} (shape {tuple(shape)})")
        value = np.asarray(inputs[name])
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
    check_kernels(graph)
    arrays = weights if _is_array_dict(weights) else load_weights(weights)
    values: dict[str, np.ndarray] = _graph_inputs(graph, inputs)
    steps = plan(graph, fuse=engine == "compiled" and not keep_activations)
    last_use = _last_use(graph, steps)
    for index, step in enumerate(steps):
        values[step.nodes[-1].name] = run_step(step, values, arrays, engine)
        if not keep_activations:  # free what no later step reads
            for name in [n for n, last in last_use.items() if last == index]:
                if name not in graph.outputs:
                    values.pop(name, None)
    outputs = {name: values[name] for name in graph.outputs}
    activations = {node.name: values[node.name] for node in graph} if keep_activations else {}
    return EngineResult(outputs, activations)


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
    arrays = load_weights(weights) if not _is_array_dict(weights) else weights
    batch = batch or ENGINE_BATCH[engine]
    parts = [run(graph, arrays, images[i:i + batch], engine).logits
             for i in range(0, len(images), batch)]
    return np.concatenate(parts)
