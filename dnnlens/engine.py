"""Run a network's IR through our own loop-nest kernels.

Pipeline position: importers -> IR -> ops (kernels) -> **engine** (here) -> verify, reports.

:func:`prepare` turns a graph and its weights into a :class:`Plan`: the graph as kernel calls
in execution order, each with its parameters looked up, checked and packed once, the kernels
bound per input shape, and the values each step frees. :meth:`Plan.run` runs it with the
``reference`` (readable NumPy loops) or ``compiled`` (Numba) kernels, so any network the
importers express and the kernels cover runs, not only the course's MNIST network.
:func:`run` and :func:`predict` are the one-call forms (they prepare a plan each call: to run
one image at a time, prepare once and call :meth:`Plan.run`).

The plan is where engine-only rewrites go; the IR, and so the analysis, still shows the model
as written:

* an inference batch norm (running statistics) whose input is a conv's (or an fc's) output
  that nobody else reads is folded into that conv's weights and bias;
* in the compiled engine a conv -> relu -> max-pool chain whose intermediate values nobody
  else reads runs as one fused kernel, and so does an fc followed by a ReLU;
* in the compiled engine a 2-d conv followed by a clamping activation (ReLU, ReLU6, hardtanh,
  clamp) applies it as each output tile is finished, and a conv whose output is added to
  another value of its shape (a residual connection), optionally followed by such an
  activation, adds it there too; such a step runs where the add is, once both operands exist.

In the compiled engine a small batch (up to ``PROGRAM_MAX_BATCH`` images) run again and again
at the same shape becomes a :class:`dnnlens.program.Program`: the steps' bound kernels called
in turn by one generated, compiled function, so one image costs one call into compiled code.
A larger batch does where fused convs follow each other: the program strings them together
with the images kept in the vector lanes between them.

Verification against PyTorch and onnxruntime lives in :mod:`dnnlens.verify`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from dnnlens.errors import CheckpointError, DataError, ModelError, ShapeError, UsageError
from dnnlens.ir import Graph, Node
from dnnlens.ops import (
    Activation,
    Binary,
    Conv,
    Expand,
    Linear,
    Norm,
    Pool,
    Recurrent,
    RecurrentState,
    Reshape,
)
from dnnlens.ops.base import Buffers, reusing
from dnnlens.program import PROGRAM_AFTER_RUNS, Program
from dnnlens.program import build as build_program

ENGINES = ("compiled", "reference")

#: Images per call of the engine in :func:`predict`: large enough that the per-call overhead
#: vanishes, small enough that activations stay in the CPU caches.
ENGINE_BATCH = {"compiled": 2048, "reference": 500}


@dataclass(slots=True)
class EngineResult:
    """What :meth:`Plan.run` returns.

    ``outputs`` maps each graph output to its value (``(N, classes)`` logits for a classifier);
    ``activations`` maps node names to their outputs, only when asked for (a conv whose batch
    norm the plan folded into it has no value of its own: the batch norm's is the folded one).
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
    """Parameters and buffers (batch norm's running statistics, a constant's value) by
    state-dict name as NumPy arrays, from a PyTorch module, a state dict, or a checkpoint file
    (read with ``torch.load(..., weights_only=True)``). Floating-point values become float32;
    integer and boolean buffers (an index table) keep their dtype."""
    if isinstance(source, (str, os.PathLike)):
        from dnnlens.models import load_state_dict_file

        source = load_state_dict_file(Path(source))
    elif hasattr(source, "state_dict") and callable(source.state_dict):
        source = source.state_dict()
    if not isinstance(source, Mapping):
        raise CheckpointError(
            f"cannot take weights from a {type(source).__name__}: give a "
            "PyTorch module, a state dict or a checkpoint path"
        )
    weights = {}
    for name, value in source.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        value = np.asarray(value)
        dtype = value.dtype if value.dtype.kind in "biu" else np.float32
        weights[name] = np.ascontiguousarray(value, dtype=dtype)
    return weights


def node_weights(node: Node, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The node's parameters by role, and the buffers its operator reads (``op.buffers()``:
    batch norm's running statistics) by role too; CheckpointError naming any missing or
    mis-shaped one."""
    found = {}
    for role, param in node.params.items():
        if param.computed:
            raise ModelError(
                f"layer {node.name!r} has no kernel for parameter {param.name!r} as the "
                f"forward changes it ({param.computed}); the engine cannot run this network"
            )
        value = parameter_value(param.name, weights)
        if value is None:
            raise CheckpointError(
                f"layer {node.name!r} needs parameter {param.name!r}, which "
                "the weights do not have"
            )
        if value.shape != tuple(param.shape) and value.size == prod(param.shape):
            value = np.ascontiguousarray(value.reshape(param.shape))  # a select's slice
        if tuple(value.shape) != tuple(param.shape):
            raise CheckpointError(
                f"layer {node.name!r}: parameter {param.name!r} has shape "
                f"{tuple(value.shape)} but the network expects "
                f"{tuple(param.shape)}"
            )
        found[role] = value
    for role, name in node.op.buffers().items():
        if name not in weights:
            raise CheckpointError(
                f"layer {node.name!r} needs buffer {name!r} ({role}), which "
                "the weights do not have: give the whole state dict"
            )
        found[role] = weights[name]
    return found


#: A slice of a parameter as the torch importer names it: ``attn.in_proj_weight[0:768]``,
#: ``w[:, 2:4]`` (a view of a parameter a layer reads, such as MultiheadAttention's query part).
_SLICED = re.compile(r"(?P<base>.+)\[(?P<index>(?::, )*\d+:\d+)\]")


def parameter_value(name: str, weights: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The array a parameter name stands for: a state-dict entry, or a slice of one (as the
    importer names it, possibly a slice of a slice); None if the weights do not have it."""
    if name in weights:
        return weights[name]
    match = _SLICED.fullmatch(name)
    if match is None:
        return None
    base = parameter_value(match["base"], weights)
    if base is None:
        return None
    *whole, last = match["index"].split(", ")
    start, stop = (int(i) for i in last.split(":"))
    return np.ascontiguousarray(base[(slice(None),) * len(whole) + (slice(start, stop),)])


# --- which nodes can run ------------------------------------------------------------------
def kernel_gap(node: Node) -> str | None:
    """Why the engine cannot run this node, or None when it can: the operator answers for
    this node's shapes and parameters (:meth:`dnnlens.ops.base.Op.kernel_gap`)."""
    params = {role: tuple(p.shape) for role, p in node.params.items()}
    return node.op.kernel_gap([tuple(s) for s in node.input_shapes], params)


def run_node(
    node: Node,
    inputs: Sequence[np.ndarray],
    weights: Mapping[str, np.ndarray],
    engine: str = "compiled",
) -> np.ndarray:
    """One node's kernel; a ShapeError or a missing kernel names the layer."""
    kernel = node.op.compiled if engine == "compiled" else node.op.reference
    try:
        return kernel(list(inputs), dict(weights))
    except ShapeError as exc:
        raise ShapeError(f"layer {node.name!r} ({node.kind}): {exc}") from None
    except NotImplementedError as exc:
        raise ModelError(
            f"layer {node.name!r} ({node.kind}): {exc}; the engine cannot run this network"
        ) from None


def _describe(node: Node) -> str:
    """``layer 'bn1' (batchnorm, nn.BatchNorm2d)``; an unknown operator by what it was."""
    target = getattr(node.op, "target", "")
    what = target or ", ".join(dict.fromkeys(p for p in (node.kind, node.source) if p))
    return f"layer {node.name!r} ({what})"


def missing_kernels(graph: Graph, steps: Sequence[Step] | None = None) -> list[tuple[Node, str]]:
    """The nodes the engine would have to run and cannot, each with the reason its operator
    gives (a batch norm the plan folds into its conv needs no kernel of its own)."""
    steps = plan(graph, fuse=False) if steps is None else steps
    missing = []
    for step in steps:
        gap = kernel_gap(step.nodes[0])
        if gap is not None:
            missing.append((step.nodes[0], gap))
    return missing


def check_kernels(graph: Graph, steps: Sequence[Step] | None = None) -> None:
    """ModelError naming the first node the engine cannot run, its operator and why (and how
    many more, of which kinds), before anything runs."""
    missing = missing_kernels(graph, steps)
    if not missing:
        return
    node, gap = missing[0]
    more = ""
    if len(missing) > 1:
        kinds = sorted({n.kind for n, _ in missing})
        more = f" (and {len(missing) - 1} more layer(s) of kind {', '.join(kinds)})"
    raise ModelError(
        f"{_describe(node)} has no kernel: {gap}{more}; the engine cannot run this network"
    )


# --- the plan: steps ----------------------------------------------------------------------
@dataclass
class Step:
    """Nodes run by one kernel call: a single node, or a chain whose first node's kernel
    runs (fused with the rest, or with a batch norm folded into its weights); only the last
    node's value is kept."""

    nodes: list[Node]
    # "single", "conv_relu_maxpool", "fc_relu", "conv_act", "conv_add", "batch_expand", "state"
    kind: str = "single"
    free: list[str] = field(default_factory=list)  # values no later step reads
    folded: Node | None = None  # a batch norm folded into nodes[0]'s weights
    params: dict[str, np.ndarray] = field(default_factory=dict)  # nodes[0]'s, packed
    residual: str | None = None  # conv_add: the value added to the conv's output
    clamp: tuple[float, float] | None = None  # conv_act/conv_add: the activation's bounds

    @property
    def output(self) -> str:
        return self.nodes[-1].name

    @property
    def inputs(self) -> list[str]:
        """The values the step reads: its first node's inputs (and a conv_add's residual)."""
        if self.residual is None:
            return self.nodes[0].inputs
        return [*self.nodes[0].inputs, self.residual]


def _only_consumer(graph: Graph, users: dict[str, list[str]], node: Node | None) -> Node | None:
    if node is None or node.name in graph.outputs or len(users.get(node.name, [])) != 1:
        return None
    return graph.node(users[node.name][0])


def _is_relu(node: Node | None, source: Node) -> bool:
    return (
        node is not None
        and isinstance(node.op, Activation)
        and node.op.function == "relu"
        and node.inputs == [source.name]
    )


#: Activations that are a clamp to ``[lower, upper]`` (None: that side unbounded), which the
#: general conv kernel applies as it writes each output.
_CLAMPS: dict[str, tuple[float | None, float | None]] = {
    "relu": (0.0, None),
    "relu6": (0.0, 6.0),
}


def clamp_bounds(node: Node | None, source: Node) -> tuple[float, float] | None:
    """``(lower, upper)`` if ``node`` is a clamp of ``source``'s output alone (ReLU, ReLU6,
    hardtanh, clamp), else None. (A conv's output is floating-point, so a clamp's integer
    bounds change nothing of its type.)"""
    if node is None or not isinstance(node.op, Activation) or node.inputs != [source.name]:
        return None
    op = node.op
    if op.function in _CLAMPS:
        lower, upper = _CLAMPS[op.function]
    elif op.function in ("hardtanh", "clamp"):
        lower, upper = op.lower, op.upper
    else:
        return None
    return (
        -np.inf if lower is None else float(lower),
        np.inf if upper is None else float(upper),
    )


def _residual_add(node: Node | None, source: Node) -> str | None:
    """The other operand's name if ``node`` adds ``source``'s output to one other value of
    the same shape (a residual connection), else None."""
    if node is None or not isinstance(node.op, Binary) or node.op.function != "add":
        return None
    if node.op.scalars or node.params or len(node.inputs) != 2:
        return None
    if node.inputs.count(source.name) != 1 or len(set(map(tuple, node.input_shapes))) != 1:
        return None
    return next(name for name in node.inputs if name != source.name)


def fusable_general_conv(conv: Node) -> bool:
    """Whether a conv runs on the general 2-d kernel that can apply an epilogue."""
    op = conv.op
    return (
        isinstance(op, Conv)
        and not op.transposed
        and op.spatial_dims == 2
        and all(b >= 0 and e >= 0 for b, e in op.padding)
        and len(conv.output_shape) == 4
    )


def foldable_norm(producer: Node, norm: Node | None) -> bool:
    """Whether ``norm`` is an inference batch norm over ``producer``'s output channels that
    can be folded into ``producer``'s weights: a non-transposed conv, or an fc whose output is
    ``(N, features)``."""
    if norm is None or not isinstance(norm.op, Norm) or norm.op.function != "batchnorm":
        return False
    if len(norm.op.stats) != 2 or norm.inputs != [producer.name]:
        return False
    op = producer.op
    if isinstance(op, Conv):
        return not op.transposed
    return isinstance(op, Linear) and len(producer.output_shape) == 2


def plan(
    graph: Graph, fuse: bool = True, fold: bool | Callable[[Node], bool] = True
) -> list[Step]:
    """The graph as kernel calls in execution order.

    ``fold``: fold each inference batch norm into the conv or fc before it when nobody else
    reads that conv's output (a callable decides per batch-norm node). ``fuse``: each
    conv -> relu -> max-pool chain (2-d, ungrouped conv; unpadded, undilated floor-mode pool;
    no other reader of the conv or relu output) becomes one fused step at the conv's place,
    and so does each fc -> relu pair whose fc output nobody else reads; any other 2-d conv
    takes a clamping activation after it (``conv_act``), or a residual add and optionally a
    clamp after that (``conv_add``, run at the add's place), into its kernel."""
    users = graph.consumers()
    taken: set[str] = set()
    steps = []
    deferred: dict[str, Step] = {}  # conv_add steps by the add they run in place of
    for node in graph:
        if node.name in deferred:
            steps.append(deferred.pop(node.name))
            continue
        if node.name in taken:
            continue
        chain: list[Node] = [node]
        folded: Node | None = None
        norm = _only_consumer(graph, users, node) if isinstance(node.op, (Conv, Linear)) else None
        if (
            norm is not None
            and foldable_norm(node, norm)
            and (fold(norm) if callable(fold) else fold)
        ):
            chain.append(norm)
            folded = norm
        last = chain[-1]
        kind = "single"
        if fuse and isinstance(node.op, Conv):
            relu = _only_consumer(graph, users, last)
            pool = _only_consumer(graph, users, relu) if _is_relu(relu, last) else None
            if (
                relu is not None
                and pool is not None
                and pool.inputs == [relu.name]
                and fusable_conv_pool(node, pool)
            ):
                chain += [relu, pool]
                kind = "conv_relu_maxpool"
            elif fusable_general_conv(node):
                step = _epilogue_step(graph, users, chain, folded, taken)
                if step is not None:
                    taken.update(n.name for n in step.nodes)
                    if step.kind == "conv_add":
                        deferred[step.nodes[-1 if step.clamp is None else -2].name] = step
                    else:
                        steps.append(step)
                    continue
        elif fuse and isinstance(node.op, Linear):
            relu = _only_consumer(graph, users, last)
            if relu is not None and _is_relu(relu, last):
                chain.append(relu)
                kind = "fc_relu"
        taken.update(n.name for n in chain)
        steps.append(Step(chain, kind, folded=folded))
    return steps


def _epilogue_step(
    graph: Graph,
    users: dict[str, list[str]],
    chain: list[Node],
    folded: Node | None,
    taken: set[str],
) -> Step | None:
    """``chain`` (a conv and its folded batch norm) with the clamp, or the residual add (and
    a clamp after it), that only its output feeds, as one step; None if there is none (or
    the add already went to the conv on its other side: a ResNet downsampling shortcut)."""
    last = chain[-1]
    after = _only_consumer(graph, users, last)
    if after is not None and after.name in taken:
        return None
    bounds = clamp_bounds(after, last)
    if after is not None and bounds is not None:
        return Step([*chain, after], "conv_act", folded=folded, clamp=bounds)
    residual = _residual_add(after, last)
    if after is None or residual is None:
        return None
    nodes = [*chain, after]
    clamp_node = _only_consumer(graph, users, after)
    bounds = clamp_bounds(clamp_node, after)
    if clamp_node is not None and bounds is not None:
        nodes.append(clamp_node)
    return Step(nodes, "conv_add", folded=folded, residual=residual, clamp=bounds)


def fusable_conv_pool(conv: Node, pool: Node) -> bool:
    """Whether the fused conv+relu+max-pool kernel covers this pair of layers."""
    c, p = conv.op, pool.op
    return (
        isinstance(c, Conv)
        and not c.transposed
        and c.spatial_dims == 2
        and c.groups == 1
        and isinstance(p, Pool)
        and p.mode == "max"
        and len(p.kernel) == 2
        and all(pads == (0, 0) for pads in p.padding)
        and tuple(p.dilation) == (1, 1)
        and not p.ceil_mode
    )


def fold_batchnorm(
    producer: Node, norm: Node, params: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``producer``'s weight and bias with the batch norm after it folded in (in float64):
    the norm is ``x * scale + shift`` per channel (:meth:`dnnlens.ops.Norm.scale_shift`), so
    ``weight' = weight * scale`` per output channel and ``bias' = bias * scale + shift``."""
    norm_params = node_weights(norm, weights)  # its affine parameters and running statistics
    weight = np.asarray(params["weight"], np.float64)
    channels = weight.shape[0]
    if norm_params["running_mean"].shape != (channels,) or norm_params["running_var"].shape != (
        channels,
    ):
        raise CheckpointError(
            f"layer {norm.name!r}: running statistics of shape "
            f"{norm_params['running_mean'].shape} do not fit {channels} "
            "channels"
        )
    assert isinstance(norm.op, Norm), "only a batch norm folds (see foldable_norm)"
    scale, shift = norm.op.scale_shift(norm_params)
    bias = np.asarray(params.get("bias", np.zeros(channels)), np.float64)
    dtype = np.result_type(params["weight"].dtype, np.float32)
    folded_weight = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    return {
        "weight": np.ascontiguousarray(folded_weight, dtype),
        "bias": np.ascontiguousarray(bias * scale + shift, dtype),
    }


def run_step(
    step: Step,
    values: Mapping[str, np.ndarray],
    weights: Mapping[str, np.ndarray],
    engine: str,
    batch: int | None = None,
) -> np.ndarray:
    """One step on the values computed so far (``weights`` are used only when the step's
    parameters were not packed by :func:`prepare`; ``batch``: the batch being run)."""
    first = step.nodes[0]
    inputs = [values[name] for name in first.inputs]
    params = step.params or _step_params(step, weights)
    if step.kind == "batch_expand" and batch is not None:
        # a parameter broadcast over the batch (a class token): to the batch being run
        assert isinstance(first.op, Expand), "only an expand follows the batch (Plan)"
        x = inputs[0] if inputs else next(iter(params.values()))
        return np.broadcast_to(x, (batch, *first.op.shape[1:]))
    if step.kind == "conv_relu_maxpool":
        from dnnlens.ops.conv import conv_relu_maxpool_compiled

        conv, pool = _conv_and_pool(step)
        try:
            x, weight, bias, attrs = conv.kernel_args(inputs, params)
        except ShapeError as exc:
            raise ShapeError(f"layer {first.name!r} ({first.kind}): {exc}") from None
        return conv_relu_maxpool_compiled(x, weight, bias, attrs, pool.kernel, pool.stride)
    if step.kind in ("conv_act", "conv_add"):
        residual = values[step.residual] if step.residual is not None else None
        return _conv_epilogue_kernel(step, inputs, params)(inputs[0], residual)
    if step.kind == "fc_relu":
        from dnnlens.ops.linear import linear_compiled

        assert isinstance(first.op, Linear), "plan() fuses a ReLU only into an fc"
        try:
            x, weight, bias, lead = first.op.kernel_args(inputs, params)
        except ShapeError as exc:
            raise ShapeError(f"layer {first.name!r} ({first.kind}): {exc}") from None
        return linear_compiled(x, weight, bias, relu=True).reshape(*lead, weight.shape[0])
    return run_node(first, inputs, params, engine)


def _conv_epilogue_kernel(
    step: Step, inputs: list[np.ndarray], params: Mapping[str, np.ndarray]
) -> Callable[..., np.ndarray]:
    """The general conv kernel bound for a conv step's input shape, with its epilogue (the
    step's clamp; the residual, if any, is passed to each call)."""
    from dnnlens.ops.conv import bind_conv2d

    first = step.nodes[0]
    assert isinstance(first.op, Conv), "only a conv takes an epilogue (see plan)"
    try:
        x, weight, bias, attrs = first.op.kernel_args(inputs[:1], params)
    except ShapeError as exc:
        raise ShapeError(f"layer {first.name!r} ({first.kind}): {exc}") from None
    lower, upper = step.clamp if step.clamp is not None else (-np.inf, np.inf)
    return bind_conv2d(x.shape, x.dtype, weight, bias, attrs, lower, upper)


def _conv_and_pool(step: Step) -> tuple[Conv, Pool]:
    """The conv and the max pool of a fused ``conv_relu_maxpool`` step."""
    conv, pool = step.nodes[0].op, step.nodes[-1].op
    assert isinstance(conv, Conv) and isinstance(pool, Pool), "see fusable_conv_pool"
    return conv, pool


def _step_params(step: Step, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    params = node_weights(step.nodes[0], weights)
    if step.folded is not None:
        params = fold_batchnorm(step.nodes[0], step.folded, params, weights)
    return params


def bind_step(
    step: Step, inputs: list[np.ndarray]
) -> Callable[[list[np.ndarray]], np.ndarray] | None:
    """For a step that just ran (so its shapes are checked) on ``inputs``: a call that runs it
    again on inputs of the same shapes with every size, kernel and weight decided now, or None
    to keep the general path. One image at a time, the general path's bookkeeping would cost
    more than the kernels."""
    from dnnlens.ops.conv import bind_conv_relu_maxpool
    from dnnlens.ops.linear import bind_linear

    first = step.nodes[0]
    if step.kind == "conv_relu_maxpool":
        conv, pool = _conv_and_pool(step)
        x, weight, bias, attrs = conv.kernel_args(inputs, step.params)
        if x.ndim != 4:
            return None
        kernel = bind_conv_relu_maxpool(
            x.shape, x.dtype, weight, bias, attrs, pool.kernel, pool.stride
        )
        return lambda xs: kernel(xs[0])
    if step.kind in ("conv_act", "conv_add") or (
        step.kind == "single" and fusable_general_conv(first) and inputs[0].ndim == 4
    ):
        conv_kernel = _conv_epilogue_kernel(step, inputs, step.params)
        if step.residual is None:
            return lambda xs: conv_kernel(xs[0])
        return lambda xs: conv_kernel(xs[0], xs[1])
    if isinstance(first.op, Linear) and inputs[0].ndim == 2:
        x, weight, bias, _ = first.op.kernel_args(inputs, step.params)
        kernel = bind_linear(x.shape[0], x.dtype, weight, bias, relu=step.kind == "fc_relu")
        return lambda xs: kernel(xs[0])
    if isinstance(first.op, Reshape):
        shape = first.op.reference(inputs, {}).shape
        return lambda xs: xs[0].reshape(shape)
    return None


# --- the plan: the object -----------------------------------------------------------------
#: Input shapes a plan keeps bound kernels for (each batch size is one entry).
BOUND_SHAPES = 16


class Plan:
    """A graph prepared to run: its steps, each step's parameters (looked up, checked, batch
    norms folded in), and, in the compiled engine, each step's kernel bound per input shape.
    Made by :func:`prepare`. It holds the weight arrays it was given, uncopied (a folded
    batch norm's conv gets arrays of its own): prepare again after changing them."""

    def __init__(
        self, graph: Graph, weights: Mapping[str, np.ndarray], engine: str, keep_activations: bool
    ) -> None:
        if engine not in ENGINES:
            raise UsageError(f"unknown engine {engine!r}: use {' or '.join(ENGINES)}")
        self.graph = graph
        self.engine = engine
        self.keep_activations = keep_activations
        # Keeping every value means no fusion; a batch norm is then folded only where it
        # cannot run on its own.
        fold: bool | Callable[[Node], bool] = (
            (lambda norm: kernel_gap(norm) is not None) if keep_activations else True
        )
        self.steps = plan(graph, fuse=engine == "compiled" and not keep_activations, fold=fold)
        check_kernels(graph, self.steps)
        traced = next(iter(graph.inputs.values()), (None,))[0]
        for step in self.steps:
            step.params = _step_params(step, weights)
            if _expands_to_the_batch(step.nodes[0], traced):
                step.kind = "batch_expand"
        self._states = _recurrent_states(graph, self.steps)
        self._traced_batch = traced
        self._batch_first = all(
            not node.output_shape or node.output_shape[0] == traced for node in graph
        )
        for name, index in _last_use(self.steps).items():
            if name not in graph.outputs:
                self.steps[index].free.append(name)
        self._bound: dict[tuple, list[Callable | None]] = {}
        # per input shapes: each step's input shapes and dtypes on the run that bound it, and
        # the program built from them (dnnlens.program) on the next run (None: none fits)
        self._seen: dict[tuple, dict[int, list[tuple[tuple[int, ...], np.dtype]]]] = {}
        self._programs: dict[tuple, Program | None] = {}
        self._fast: dict[tuple[int, ...], Program] = {}  # one input's shape -> its program
        self._runs: dict[tuple, int] = {}
        self._buffers = Buffers()  # freed outputs, reused by the next steps and runs

    def _calls(self, values: Mapping[str, np.ndarray]) -> list[Callable | None] | None:
        """The bound kernels for these input shapes (None: do not bind)."""
        if self.engine != "compiled" or self.keep_activations:
            return None
        key = tuple(v.shape for v in values.values())
        calls = self._bound.get(key)
        if calls is None:
            if len(self._bound) >= BOUND_SHAPES:
                self._bound.clear()
                self._seen.clear()
                self._programs.clear()
                self._fast.clear()
                self._runs.clear()
                self._buffers.clear()
            calls = self._bound[key] = [None] * len(self.steps)
            self._seen[key] = {}
        return calls

    def _program(self, key: tuple, batch: int | None) -> Program | None:
        """The one-call program for these input shapes, built on their PROGRAM_AFTER_RUNS-th
        run (the first bound every step): only small batches, where the per-call overhead
        shows."""
        if key in self._programs:
            return self._programs[key]
        runs = self._runs[key] = self._runs.get(key, 1) + 1
        if runs < PROGRAM_AFTER_RUNS:
            return None
        program = None
        if (
            batch is not None
            and key in self._seen
            and not self._states  # a recurrent layer's final states: the general path
        ):
            calls = [
                bound or self._general_call(step, batch)
                for step, bound in zip(self.steps, self._bound[key])
            ]
            program = build_program(
                self.steps,
                self._seen[key],
                calls,
                list(self.graph.inputs),
                self.graph.outputs,
                batch,
            )
        self._programs[key] = program
        if program is not None and program.whole is not None and len(key) == 1:
            self._fast[key[0]] = program
        return program

    def _general_call(self, step: Step, batch: int) -> Callable[[list[np.ndarray]], np.ndarray]:
        """A step with no bound kernel as a call, for a program to run between its segments."""
        engine = self.engine
        return lambda xs: run_step(step, dict(zip(step.inputs, xs)), {}, engine, batch)

    def run(
        self,
        inputs: np.ndarray | Mapping[str, np.ndarray],
        keep: Collection[str] | None = None,
    ) -> EngineResult:
        """The graph on ``inputs``: a batch ``(N, ...)`` of any N, or a dict by input name.
        A plan prepared with ``keep_activations`` returns every node's output, or with
        ``keep`` only those of the nodes named there (the others are freed as usual).

        A graph some of whose values do not keep the batch first (an attention traced at
        batch 1 that moves the batch behind the sequence) runs in chunks of the batch it was
        traced at, since its reshapes name the traced batch; values are then joined along
        the axis where each holds the batch."""
        if isinstance(inputs, np.ndarray):  # a compiled program for this shape: one call
            program = self._fast.get(inputs.shape)
            outputs = program.run_whole(inputs) if program is not None else None
            if outputs is not None:
                return EngineResult(outputs)
        values: dict[str, np.ndarray] = _graph_inputs(self.graph, inputs)
        batch = next(iter(values.values())).shape[0] if values else None
        if (
            batch is not None
            and self._traced_batch
            and batch != self._traced_batch
            and not self._batch_first
        ):
            return self._run_in_chunks(values, batch, self._traced_batch, keep)
        return self._run_values(values, batch, keep)

    def _run_in_chunks(
        self,
        values: dict[str, np.ndarray],
        batch: int,
        size: int,
        keep: Collection[str] | None = None,
    ) -> EngineResult:
        """``batch`` inputs run ``size`` (the traced batch) at a time."""
        if batch % size:
            raise ShapeError(
                f"this network moves the batch dimension and was traced at batch "
                f"{size}: give a multiple of {size} inputs, got {batch}"
            )
        parts = [
            self._run_values({k: v[i : i + size] for k, v in values.items()}, size, keep)
            for i in range(0, batch, size)
        ]
        shapes = {node.name: node.output_shape for node in self.graph}
        outputs = {
            name: _join([p.outputs[name] for p in parts], shapes[name], size)
            for name in self.graph.outputs
        }
        activations = {}
        for name in parts[0].activations:
            axis = _batch_axis(shapes[name], size)
            if axis is not None:
                activations[name] = np.concatenate([p.activations[name] for p in parts], axis)
        return EngineResult(outputs, activations)

    def _run_values(
        self,
        values: dict[str, np.ndarray],
        batch: int | None,
        keep: Collection[str] | None = None,
    ) -> EngineResult:
        calls = self._calls(values)
        shapes_seen = None
        if calls is not None:
            key = tuple(v.shape for v in values.values())
            shapes_seen = self._seen.get(key)
            if shapes_seen:  # bound on an earlier run: run as one program?
                program = self._program(key, batch)
                if program is not None:
                    with reusing(self._buffers):
                        return EngineResult(program.run(values, self._buffers))
        with reusing(self._buffers if calls is not None else None):
            return self._run_steps(values, batch, calls, shapes_seen, keep)

    def _run_steps(
        self,
        values: dict[str, np.ndarray],
        batch: int | None,
        calls: list[Callable | None] | None,
        shapes_seen: dict[int, list[tuple[tuple[int, ...], np.dtype]]] | None,
        keep: Collection[str] | None,
    ) -> EngineResult:
        kept = set(self.graph.outputs) | set(keep or ()) if self.keep_activations else set()
        every = self.keep_activations and keep is None
        for index, step in enumerate(self.steps):
            call = calls[index] if calls is not None else None
            if step.kind == "state":
                pass  # a recurrent layer's final state: its layer's step wrote it
            elif index in self._states:  # a recurrent layer whose final states are read
                layer = step.nodes[0].op
                assert isinstance(layer, Recurrent), "see _recurrent_states"
                out, states = layer.run(
                    [values[name] for name in step.inputs],
                    step.params,
                    compiled=self.engine == "compiled",
                )
                values[step.output] = out
                for name, which in self._states[index]:
                    values[name] = states[which]
            elif call is None:
                seen = [values[name] for name in step.inputs]
                values[step.output] = run_step(step, values, {}, self.engine, batch)
                if calls is not None:  # bind on this first, checked, run
                    calls[index] = bind_step(step, seen)
                    if shapes_seen is not None:
                        shapes_seen[index] = [(a.shape, a.dtype) for a in seen]
            else:
                values[step.output] = call([values[name] for name in step.inputs])
            if not every:
                for name in step.free:
                    if name not in kept:
                        value = values.pop(name)
                        if calls is not None:
                            self._buffers.give(value)
                        del value
        outputs = {name: values[name] for name in self.graph.outputs}
        activations = (
            {node.name: values[node.name] for node in self.graph if node.name in values}
            if every
            else {name: values[name] for name in keep or () if name in values}
        )
        return EngineResult(outputs, activations)

    def predict(self, images: np.ndarray, batch: int | None = None) -> np.ndarray:
        """Logits for many images, ``batch`` at a time: ``(N, ...)`` -> ``(N, classes)``."""
        if len(images) == 0:
            raise DataError("no images to predict: the data set or --limit selects none")
        batch = batch or ENGINE_BATCH[self.engine]
        parts = [self.run(images[i : i + batch]).logits for i in range(0, len(images), batch)]
        return np.concatenate(parts)


def _batch_axis(shape: Sequence[int], traced_batch: int) -> int | None:
    """The axis of a value traced with ``shape`` that holds the batch: the first of the
    traced batch's size (None: the batch is merged into another axis)."""
    return next((axis for axis, size in enumerate(shape) if size == traced_batch), None)


def _join(parts: list[np.ndarray], shape: Sequence[int], traced_batch: int) -> np.ndarray:
    axis = _batch_axis(shape, traced_batch)
    if axis is None:
        raise ShapeError(
            f"an output of shape {tuple(shape)} holds no batch axis: run this "
            f"network {traced_batch} input(s) at a time"
        )
    return np.concatenate(parts, axis)


def _recurrent_states(graph: Graph, steps: list[Step]) -> dict[int, list[tuple[str, str]]]:
    """For each recurrent layer's step, the state nodes (``h_n``, ``c_n``) that read it, as
    (name, which); those nodes' steps become ``state`` steps: the layer's one run computes
    its output and its final states together."""
    index_of = {step.output: i for i, step in enumerate(steps)}
    producers = {node.name: node for node in graph}
    states: dict[int, list[tuple[str, str]]] = {}
    for step in steps:
        node = step.nodes[0]
        if not isinstance(node.op, RecurrentState):
            continue
        producer = producers.get(node.inputs[0]) if node.inputs else None
        if producer is None or not isinstance(producer.op, Recurrent):
            raise ModelError(
                f"{_describe(node)}: a recurrent state whose input is not a "
                "recurrent layer cannot be computed"
            )
        step.kind = "state"
        states.setdefault(index_of[producer.name], []).append((node.name, node.op.which))
    return states


def _expands_to_the_batch(node: Node, traced_batch: int | None) -> bool:
    """An expand whose first dimension is the batch the graph was traced at: like a
    reshape's, it follows the batch being run."""
    op = node.op
    return (
        isinstance(op, Expand)
        and bool(op.shape)
        and traced_batch is not None
        and op.shape[0] == traced_batch
        and len(node.output_shape) == len(op.shape)
    )


def prepare(
    graph: Graph, weights: WeightSource, engine: str = "compiled", keep_activations: bool = False
) -> Plan:
    """``graph`` planned for ``engine`` with ``weights`` (a module, a state dict or a
    checkpoint path). ModelError naming the layer if a node has no kernel, CheckpointError
    naming the parameter if the weights do not fit: both before anything runs."""
    arrays = weights if _is_array_dict(weights) else load_weights(weights)
    return Plan(graph, arrays, engine, keep_activations)


# --- the engine ---------------------------------------------------------------------------
def _graph_inputs(
    graph: Graph, inputs: np.ndarray | Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Inputs by name; each must match its traced shape except for the batch dimension."""
    if isinstance(inputs, np.ndarray) and len(graph.inputs) == 1:  # the common case, fast
        ((name, shape),) = graph.inputs.items()
        if (
            inputs.shape[1:] == tuple(shape[1:])
            and inputs.ndim == len(shape)
            and inputs.dtype.kind == "f"
            and np.isfinite(inputs.sum())
        ):
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
            raise DataError(f"input {name!r} has {bad} NaN or Inf value(s); clean the data first")
        if value.ndim != len(shape) or tuple(value.shape[1:]) != tuple(shape[1:]):
            raise ShapeError(
                f"input {name!r} has shape {tuple(value.shape)} but the network "
                f"expects (N, {', '.join(str(d) for d in shape[1:])})"
            )
        values[name] = value
    return values


def run(
    graph: Graph,
    weights: WeightSource,
    inputs: np.ndarray | Mapping[str, np.ndarray],
    engine: str = "compiled",
    keep_activations: bool = False,
) -> EngineResult:
    """Run ``graph`` on ``inputs`` (a batch ``(N, ...)`` of any N, or a dict by input name)
    with our kernels: ``engine`` is ``"compiled"`` (Numba, fused) or ``"reference"`` (the
    readable NumPy loop nests). ``weights``: a module, a state dict or a checkpoint path.

    With ``keep_activations`` every node's output is returned by node name (fusion is then
    off, so that each intermediate value exists). This prepares a :class:`Plan` on every
    call; to run many batches, :func:`prepare` once and call :meth:`Plan.run`."""
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}: use {' or '.join(ENGINES)}")
    return prepare(graph, weights, engine, keep_activations).run(inputs)


def _is_array_dict(weights: object) -> bool:
    return isinstance(weights, Mapping) and all(
        isinstance(v, np.ndarray) for v in weights.values()
    )


def _last_use(steps: list[Step]) -> dict[str, int]:
    """For each value, the index of the last step that reads it."""
    last: dict[str, int] = {}
    for index, step in enumerate(steps):
        for name in step.inputs:
            last[name] = index
    return last


def predict(
    graph: Graph | Plan,
    weights: WeightSource,
    images: np.ndarray,
    engine: str = "compiled",
    batch: int | None = None,
) -> np.ndarray:
    """Logits for many images, ``batch`` at a time: ``(N, ...)`` -> ``(N, classes)``."""
    if len(images) == 0:
        raise DataError("no images to predict: the data set or --limit selects none")
    prepared = graph if isinstance(graph, Plan) else prepare(graph, weights, engine)
    return prepared.predict(images, batch)
