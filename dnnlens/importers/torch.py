"""Import any ``nn.Module`` into the IR by tracing it on the meta device.

How (in pipeline order):

1. **Meta copy.** The model is deep-copied with every parameter and buffer replaced by a meta
   tensor of the same shape (the user's model is never touched, no weight is allocated or
   run), put in eval mode (we analyse inference).
2. **Trace.** The copy runs on meta inputs under a ``TorchDispatchMode`` that sees every aten
   operator, so functional calls, ``@``, ``bmm`` and views are all seen. Forward hooks keep a
   module stack, so each operator is attributed to the qualified name of the module that ran
   it (``layer1.0.conv2``), in execution order.
3. **Leaf modules** whose cost is well known (conv, linear, norms, pooling, activations,
   dropout, flatten, embedding, softmax; :data:`LEAF_RULES`) become one node each, their inner
   aten operators suppressed. A subclass counts only if it keeps the base class's ``forward``
   (so ``class MyConv(nn.Conv2d)`` with its own forward is traced operator by operator).
4. **Aten rules** (:data:`ATEN_RULES`) turn every other operator into one of our ops.
   ``F.scaled_dot_product_attention`` is caught one level up (a ``TorchFunctionMode``) and
   becomes one ``attention`` node: on CPU and GPU it runs as a fused kernel, while on meta
   PyTorch would decompose it into its math path (``bmm``, softmax, ``bmm``); the MACs are the
   same, the memory traffic is not. ``nn.MultiheadAttention`` takes its "slow" path on meta
   (the fast path needs CPU or CUDA tensors); that path does the same products as the fused
   ``_native_multi_head_attention`` (in-projections, attention, out-projection).
5. **Parameters** are recognised by identity: a parameter (or a view of one: ``W.t()``, a slice
   of ``in_proj_weight``) used by an operator becomes that node's ``params`` entry, never a
   graph input. Tied modules name the same parameter: totals count it once. Buffers are never
   parameters, whatever their dtype: a buffer (or a tensor made from buffers and literals)
   that a layer reads as an activation becomes a ``constant`` node. ``nn.RNN``/``LSTM``/
   ``GRU`` and their cells are leaf modules (one ``recurrent`` node, plus ``state`` nodes for
   ``h_n``/``c_n``).
6. **Real data.** ``real=True`` traces a CPU copy on real inputs instead, for forwards whose
   work depends on values (detection proposals and NMS), which meta cannot express.
7. **Checks.** Every node's shape from our operator rule must equal the traced shape (a
   mismatch is a dnnlens bug and raises). Operators without a rule become
   ``Unknown(target, observed_shape)`` and are listed by :func:`unknown_ops`.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from dnnlens.errors import DnnlensError, ModelError, UsageError, annotate, annotation
from dnnlens.ir import Graph, Node, Param, Shape, unique_name
from dnnlens.ops import (
    Activation,
    AdaptivePool,
    Attention,
    Binary,
    Concat,
    Constant,
    Conv,
    Copy,
    Dropout,
    Embedding,
    Expand,
    Gather,
    Linear,
    MatMul,
    Norm,
    Op,
    Pad,
    Permute,
    Pool,
    Recurrent,
    RecurrentState,
    Reduce,
    Reshape,
    Roll,
    Slice,
    Softmax,
    Unknown,
    infer_shape,
)
from dnnlens.ops.base import names_in
from dnnlens.ops.conv import same_padding, symmetric_padding
from dnnlens.ops.elementwise import (
    ACTIVATION_PARAMETERS,
    ACTIVATIONS,
    BINARY,
    TORCH_PARAMETER_NAMES,
    broadcast,
)
from dnnlens.ops.scan import CumSum

__all__ = ["import_torch", "unknown_ops", "LEAF_RULES", "ATEN_RULES"]


# ---------------------------------------------------------------------------------------------
# What a rule returns


@dataclass(frozen=True)
class ParamRef:
    """A parameter, or a view of one, as an operator uses it.

    ``name`` is the state-dict name (``fc.weight``, or ``attn.in_proj_weight[0:768]`` for a
    slice); ``shape`` the shape as used; ``untransposed`` the shape before a 2-d transpose
    (``W.t()``), else None.
    """

    name: str
    shape: Shape
    untransposed: Shape | None = None
    computed: str = ""  # arithmetic the forward did on it ("clamp, exp"; see Param.computed)

    def param(self) -> Param:
        return Param(self.name, self.shape, self.computed)


@dataclass
class Built:
    """A node to add: its operator, its activation inputs (tensors), its parameters by role
    and the traced output tensor."""

    op: Op
    inputs: list[torch.Tensor]
    out: torch.Tensor
    params: dict[str, Param] = field(default_factory=dict)


def shape_of(t: torch.Tensor) -> Shape:
    return tuple(int(d) for d in t.shape)


def _tuple(value: Any, rank: int) -> tuple[int, ...]:
    """PyTorch's int-or-list arguments (``stride=2`` or ``[2, 2]``) as a tuple of ``rank``."""
    if isinstance(value, (list, tuple)):
        if len(value) == 1 and rank > 1:
            return tuple(int(value[0]) for _ in range(rank))
        return tuple(int(v) for v in value)
    return tuple(int(value) for _ in range(rank))


# ---------------------------------------------------------------------------------------------
# Leaf modules: one node each


def _leaf_conv(tr: Tracer, m: Any, x: torch.Tensor, out: torch.Tensor) -> Built:
    # m: Any: any of the conv classes; nn.Module's stub does not know their kernel_size, ...
    rank = len(m.kernel_size)
    if isinstance(m.padding, str):  # 'same' (stride 1 only, in PyTorch) / 'valid'
        sizes = tuple(x.shape[2:])
        padding = (
            same_padding(
                sizes,
                _tuple(m.kernel_size, rank),
                _tuple(m.stride, rank),
                _tuple(m.dilation, rank),
            )
            if m.padding == "same"
            else symmetric_padding((0,) * rank)
        )
    else:
        padding = symmetric_padding(_tuple(m.padding, rank))
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
    op = Conv(
        stride=_tuple(m.stride, rank),
        padding=padding,
        dilation=_tuple(m.dilation, rank),
        groups=int(m.groups),
        transposed=transposed,
        output_padding=_tuple(m.output_padding, rank),
    )
    return Built(op, [x], out, tr.module_params(m, ("weight", "bias")))


def _leaf_linear(tr, m, x, out):
    return Built(Linear(), [x], out, tr.module_params(m, ("weight", "bias")))


def _leaf_norm(function: str):
    def build(tr, m, x, out):
        stats: tuple[str, ...] = ()
        if function == "batchnorm" and m.running_mean is not None and not m.training:
            stats = tuple(tr.names.get(id(b), "") for b in (m.running_mean, m.running_var))
        if function == "instancenorm" and m.track_running_stats and not m.training:
            stats = tuple(tr.names.get(id(b), "") for b in (m.running_mean, m.running_var))
        op = Norm(
            function=function,
            eps=float(m.eps),
            normalized_shape=tuple(getattr(m, "normalized_shape", ())),
            groups=int(getattr(m, "num_groups", 1)),
            stats=stats,
        )
        return Built(op, [x], out, tr.module_params(m, ("weight", "bias")))

    return build


def _leaf_pool(mode: str):
    def build(tr, m, x, out):
        rank = x.dim() - 2
        kernel = _tuple(m.kernel_size, rank)
        stride = _tuple(m.stride if m.stride is not None else m.kernel_size, rank)
        padding = symmetric_padding(_tuple(m.padding, rank))
        dilation = _tuple(getattr(m, "dilation", 1), rank)
        op = Pool(
            mode=mode,
            kernel=kernel,
            stride=stride,
            padding=padding,
            dilation=dilation,
            ceil_mode=bool(m.ceil_mode),
            count_include_pad=bool(getattr(m, "count_include_pad", True)),
        )
        return Built(op, [x], out)

    return build


def _leaf_adaptive(mode: str):
    def build(tr, m, x, out):
        return Built(AdaptivePool(mode=mode, output_size=shape_of(out)[2:]), [x], out)

    return build


def _activation_parameters(function: str, named: Mapping[str, Any]) -> dict[str, Any]:
    """The activation's parameters from PyTorch's names for them (module attributes or aten
    arguments); None where PyTorch gave none."""
    taken = ACTIVATION_PARAMETERS.get(function, {})
    found = {}
    for torch_name, field_name in TORCH_PARAMETER_NAMES.items():
        value = named.get(torch_name)
        if field_name in taken and value is not None:
            found[field_name] = value if isinstance(value, (str, int)) else float(value)
    return found


def _leaf_activation(function: str):
    def build(tr, m, x, out):
        op = Activation(function=function, **_activation_parameters(function, vars(m)))
        return Built(op, [x], out)

    return build


def _leaf_softmax(log: bool):
    def build(tr, m, x, out):
        dim = m.dim if m.dim is not None else (0 if x.dim() in (0, 1, 3) else 1)
        return Built(Softmax(axis=int(dim), log=log), [x], out)

    return build


def _leaf_dropout(tr, m, x, out):
    return Built(Dropout(p=float(m.p)), [x], out)


def _leaf_reshape(tr, m, x, out):
    return Built(Reshape.between(shape_of(x), shape_of(out)), [x], out)


def _leaf_embedding(tr, m, x, out):
    op = Embedding(padding_idx=m.padding_idx)
    return Built(op, [x], out, tr.module_params(m, ("weight",)))


def _recurrent_mode(m: nn.Module) -> str:
    if isinstance(m, nn.RNNCell):
        return f"rnn_{m.nonlinearity}"
    if isinstance(m, nn.LSTMCell):
        return "lstm"
    if isinstance(m, nn.GRUCell):
        return "gru"
    return str(m.mode).lower()  # nn.RNNBase: LSTM, GRU, RNN_TANH, RNN_RELU


def _recurrent_op(m: nn.RNNBase | nn.RNNCellBase, packed_batch: int = 0) -> Recurrent:
    return Recurrent(
        mode=_recurrent_mode(m),
        hidden_size=int(m.hidden_size),
        num_layers=int(getattr(m, "num_layers", 1)),
        bidirectional=bool(getattr(m, "bidirectional", False)),
        batch_first=bool(getattr(m, "batch_first", False)),
        proj_size=int(getattr(m, "proj_size", 0) or 0),
        cell=isinstance(m, nn.RNNCellBase),
        packed_batch=packed_batch,
    )


def _leaf_recurrent(tr: Tracer, m: nn.Module, x: torch.Tensor, out: torch.Tensor) -> list[Built]:
    """One node for the whole module (all layers, both directions) or the cell's step, then a
    ``state`` node for each further output (``h_n``, ``c_n``; a cell's new ``c``)."""
    assert isinstance(m, (nn.RNNBase, nn.RNNCellBase))  # LEAF_RULES gives it these only
    cell = isinstance(m, nn.RNNCellBase)
    given_input = (getattr(m, "_dnnlens_args", ()) or (None,))[0]
    packed = int(given_input.batch_sizes[0]) if isinstance(given_input, PackedSequence) else 0
    op = _recurrent_op(m, packed)
    roles = [name for name, _ in m.named_parameters(recurse=False)]
    given = getattr(m, "_dnnlens_args", ())[1:]
    states = [t for t in tree_flatten(list(given))[0] if tr.known(t)]  # h0 (c0) if traced
    built = [Built(op, [x, *states], out, tr.module_params(m, roles))]
    whole = tr.leaf_output
    extras: list[tuple[str, Any]] = []
    if cell and isinstance(whole, (tuple, list)):  # LSTMCell: (h, c)
        extras = [("c", whole[1])]
    elif not cell and isinstance(whole, (tuple, list)) and len(whole) > 1:
        state = whole[1]
        extras = (
            [("h_n", state[0]), ("c_n", state[1])]
            if isinstance(state, (tuple, list))
            else [("h_n", state)]
        )
    for which, t in extras:
        if isinstance(t, torch.Tensor):
            state = RecurrentState(which=which, shape=shape_of(t), recurrent=op)
            built.append(Built(state, [out], t))
    return built


LeafRule = Callable[["Tracer", nn.Module, torch.Tensor, torch.Tensor], "Built | list[Built]"]

#: How each operator class is read from a leaf module, given the variant its module name
#: means (ops.base.Names: ``Norm.NAMES.modules["LayerNorm"]`` is ``"layernorm"``).
_LEAF_READERS: dict[type[Op], Callable[[Any], LeafRule]] = {
    Conv: lambda _: _leaf_conv,
    Linear: lambda _: _leaf_linear,
    Norm: _leaf_norm,
    Pool: _leaf_pool,
    AdaptivePool: _leaf_adaptive,
    Activation: _leaf_activation,
    Softmax: _leaf_softmax,
    Dropout: lambda _: _leaf_dropout,
    Reshape: lambda _: _leaf_reshape,
    Embedding: lambda _: _leaf_embedding,
    Recurrent: lambda _: _leaf_recurrent,
}

#: Module class -> rule, from the ``torch.nn`` names the operators claim; a module counts as
#: a leaf when its class's ``forward`` is the ``forward`` of one of these classes (so
#: subclasses that only change ``__init__`` count).
LEAF_RULES: dict[type[nn.Module], LeafRule] = {
    getattr(nn, name): _LEAF_READERS[cls](variant)
    for name, (cls, variant) in names_in("modules").items()
}


def leaf_rule(module: nn.Module) -> LeafRule | None:
    """The rule for ``module`` if its ``forward`` is one :data:`LEAF_RULES` knows."""
    if getattr(module, "padding_mode", "zeros") != "zeros":
        return None  # reflect/replicate/circular padding: traced op by op, so the pad shows
    forward = type(module).forward
    for cls in type(module).__mro__:
        rule = LEAF_RULES.get(cls)
        if rule is not None:
            return rule if getattr(cls, "forward", None) is forward else None
    return None


# ---------------------------------------------------------------------------------------------
# Aten operators


class Call:
    """One aten call as a rule sees it: arguments, output, and how each tensor is classified."""

    def __init__(self, tracer: Tracer, func: Any, args: tuple, kwargs: dict, out: Any):
        self.tracer, self.func, self.args, self.kwargs, self.out = tracer, func, args, kwargs, out

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """The argument ``name`` of the aten schema (``index`` is only the fallback for an
        operator without a schema): read by name, never by position alone, because
        overloads differ (``var.correction`` has ``keepdim`` third, ``mean.dim`` second)."""
        if name in self.kwargs:
            return self.kwargs[name]
        position = self.schema_positions().get(name, index)
        if position is not None and position < len(self.args):
            return self.args[position]
        return default

    def schema_positions(self) -> dict[str, int]:
        return _schema_positions(self.func)

    def pref(self, t: Any) -> ParamRef | None:
        return self.tracer.params.get(id(t)) if isinstance(t, torch.Tensor) else None

    @property
    def out0(self) -> torch.Tensor:
        return self.out[0] if isinstance(self.out, (tuple, list)) else self.out

    def generic(self, op: Op, tensors: Iterable[Any], role: str = "weight") -> Built:
        """Activation tensors become inputs, parameters become params (``weight``,
        ``weight2``, ...), anything else (scalars, masks we did not see made) is ignored."""
        inputs: list[Any] = []
        params: dict[str, Param] = {}
        for t in tensors:
            ref = self.pref(t)
            if ref is not None:
                key = role if role not in params else f"{role}{len(params) + 1}"
                params[key] = ref.param()
            elif self.tracer.known(t):
                inputs.append(t)
        return Built(op, inputs, self.out0, params)


AtenRule = Callable[[Call], "Built | list[Built]"]

_POSITIONS: dict[Any, dict[str, int]] = {}


def _schema_positions(func: Any) -> dict[str, int]:
    """Positional argument name -> index in an aten operator's schema (cached per overload)."""
    positions = _POSITIONS.get(func)
    if positions is None:
        schema = getattr(func, "_schema", None)
        positions = (
            {}
            if schema is None
            else {a.name: i for i, a in enumerate(schema.arguments) if not a.kwarg_only}
        )
        _POSITIONS[func] = positions
    return positions


#: Argument names of the torch functions recorded whole (they have no aten schema).
_FUNCTION_ARGUMENTS = {
    "scaled_dot_product_attention": (
        "query",
        "key",
        "value",
        "attn_mask",
        "dropout_p",
        "is_causal",
        "scale",
        "enable_gqa",
    ),
}


def _named(c: Call) -> dict[str, Any]:
    """The call's arguments by their names in the aten schema (positional ones included)."""
    schema = getattr(c.func, "_schema", None)
    if schema is not None:
        names: Sequence[str] = [a.name for a in schema.arguments]
    else:
        names = _FUNCTION_ARGUMENTS.get(getattr(c.func, "__name__", ""), ())
    return {**dict(zip(names, c.args)), **c.kwargs}


def _conv(c: Call) -> Built:
    x, weight, bias = c.arg(0, "input"), c.arg(1, "weight"), c.arg(2, "bias")
    stride, padding, dilation = c.arg(3, "stride"), c.arg(4, "padding"), c.arg(5, "dilation")
    transposed, output_padding = c.arg(6, "transposed"), c.arg(7, "output_padding")
    groups = c.arg(8, "groups")
    rank = x.dim() - 2
    ref = c.pref(weight)
    if ref is None:  # a weight computed at run time: no rule (rare; reported as unknown)
        return _unknown(c)
    op = Conv(
        stride=_tuple(stride, rank),
        padding=symmetric_padding(_tuple(padding, rank)),
        dilation=_tuple(dilation, rank),
        groups=int(groups),
        transposed=bool(transposed),
        output_padding=_tuple(output_padding, rank),
    )
    params = {"weight": ref.param()}
    bias_ref = c.pref(bias)
    if bias_ref is not None:
        params["bias"] = bias_ref.param()
    return Built(op, [x], c.out0, params)


def _matmul_like(c: Call, a: Any, b: Any, addend: Any = None) -> Built | list[Built]:
    """mm/bmm/addmm/baddbmm: ``x @ W.t() (+ b)`` with a parameter W is a ``fc``."""
    ref_a, ref_b, ref_c = c.pref(a), c.pref(b), c.pref(addend)
    if ref_b is not None and ref_b.untransposed is not None and ref_a is None:
        linear_params = {"weight": Param(ref_b.name, ref_b.untransposed, ref_b.computed)}
        if ref_c is not None and len(ref_c.shape) == 1:
            linear_params["bias"] = ref_c.param()
        elif addend is not None and c.tracer.known(addend):
            # a bias the forward computed (Swin V2's qkv bias with its key third zeroed):
            # the product, then the addition of that value
            product = torch.empty_like(c.out0)
            return [
                Built(Linear(), [a], product, linear_params),
                Built(Binary(function="add"), [product, addend], c.out0),
            ]
        return Built(Linear(), [a], c.out0, linear_params)
    inputs = [t for t in (a, b) if c.pref(t) is None]  # a constant operand is read too
    params: dict[str, Param] = {}
    operand = None
    transposed = False
    for index, ref in ((0, ref_a), (1, ref_b)):
        if ref is not None:
            operand = index
            if ref.untransposed is not None:
                transposed = True
                params["weight"] = Param(ref.name, ref.untransposed, ref.computed)
            else:
                params["weight"] = ref.param()
    if ref_a is not None and ref_b is not None:
        return _unknown(c)  # a product of two parameters: constant folding, not a layer
    if ref_c is not None:
        params["bias"] = ref_c.param()
    return Built(
        MatMul(weight_operand=operand, weight_transposed=transposed), inputs, c.out0, params
    )


def _mm(c):
    return _matmul_like(c, c.args[0], c.args[1])


def _addmm(c):
    return _matmul_like(c, c.args[1], c.args[2], addend=c.args[0])


def _attention(c: Call) -> Built:
    q, k, v = c.args[:3]
    named = _named(c)
    mask = named.get("attn_mask", named.get("attn_bias"))
    scale = named.get("scale")
    op = Attention(
        causal=bool(named.get("is_causal", False)),
        has_mask=mask is not None,
        scale=None if scale is None else float(scale),
        enable_gqa=bool(named.get("enable_gqa", False)),
    )
    inputs = [q, k, v] + ([mask] if mask is not None and c.tracer.known(mask) else [])
    return Built(op, inputs, c.out0)


def _norm(function: str) -> AtenRule:
    def build(c: Call) -> Built:
        named = _named(c)
        x = c.args[0]
        params = {}
        for role in ("weight", "bias"):
            ref = c.pref(named.get(role))
            if ref is not None:
                params[role] = ref.param()
        stats: tuple[str, ...] = ()
        if function == "batchnorm" and not named.get("training", False):
            # inference: the running statistics are buffers, named, never weights
            found = [named.get("running_mean"), named.get("running_var")]
            stats = tuple(
                c.tracer.names[id(t)]
                for t in found
                if isinstance(t, torch.Tensor) and id(t) in c.tracer.names
            )
        kwargs: dict[str, Any] = {}
        if function == "layernorm":
            kwargs["normalized_shape"] = tuple(int(d) for d in named["normalized_shape"])
        if function == "groupnorm":
            kwargs["groups"] = int(named["group"])
        if named.get("eps") is not None:
            kwargs["eps"] = float(named["eps"])
        op = Norm(function=function, stats=stats, **kwargs)
        return Built(op, [x], c.out0, params)

    return build


def _pool(c: Call, mode: str) -> Built:
    """aten max/avg pooling: (x, kernel, stride, padding, then max: dilation, ceil_mode;
    avg: ceil_mode, count_include_pad)."""
    x = c.args[0]
    rank = x.dim() - 2
    kernel = _tuple(c.arg(1, "kernel_size"), rank)
    stride = c.arg(2, "stride") or kernel
    extra: dict[str, Any]  # Pool's mode-specific fields
    if mode == "max":
        extra = dict(
            dilation=_tuple(c.arg(4, "dilation", 1), rank),
            ceil_mode=bool(c.arg(5, "ceil_mode", False)),
        )
    else:
        extra = dict(
            dilation=(1,) * rank,
            ceil_mode=bool(c.arg(4, "ceil_mode", False)),
            count_include_pad=bool(c.arg(5, "count_include_pad", True)),
        )
    op = Pool(
        mode=mode,
        kernel=kernel,
        stride=_tuple(stride, rank),
        padding=symmetric_padding(_tuple(c.arg(3, "padding", 0), rank)),
        **extra,
    )
    return Built(op, [x], c.out0)


def _max_pool(c: Call) -> Built:
    return _pool(c, "max")


def _avg_pool(c: Call) -> Built:
    return _pool(c, "avg")


def _adaptive(mode: str) -> AtenRule:
    def build(c: Call) -> Built:
        return Built(
            AdaptivePool(mode=mode, output_size=shape_of(c.out0)[2:]), [c.args[0]], c.out0
        )

    return build


def _activation(function: str) -> AtenRule:
    def build(c: Call) -> Built:
        named = _named(c)
        if any(isinstance(v, torch.Tensor) for v in list(named.values())[1:]):
            return _unknown(c)  # a parameter computed at run time (clamp.Tensor)
        op = Activation(function=function, **_activation_parameters(function, named))
        return c.generic(op, [c.args[0]])

    return build


def _binary(function: str, swapped: bool = False, rounding_mode: str | None = None) -> AtenRule:
    """``swapped``: aten's rsub(a, b) is b - a; ``rounding_mode``: floor_divide's."""

    def build(c: Call) -> Built:
        operands = list(c.args[: 3 if function == "where" else 2])
        if swapped:
            operands.reverse()
        tensors = [a for a in operands if isinstance(a, torch.Tensor)]
        # Python numbers keep their place and type: 1 - x, x * 0.5, x // 2
        scalars = tuple(
            (i, a) for i, a in enumerate(operands) if isinstance(a, (bool, int, float))
        )
        mode = c.kwargs.get("rounding_mode", rounding_mode) if function == "div" else None
        # A 1-d parameter added to activations is a bias (MultiheadAttention's in_proj_bias).
        role = (
            "bias"
            if (
                function == "add"
                and any(len(getattr(c.pref(t), "shape", ())) == 1 for t in tensors)
            )
            else "weight"
        )
        # parameters keep their place when one comes before an input (w - x)
        slots = [i for i in range(len(operands)) if i not in dict(scalars)]
        at = tuple(i for i in slots if c.pref(operands[i]) is not None)
        at = () if at == tuple(slots[len(slots) - len(at) :]) else at
        op = Binary(function=function, scalars=scalars, rounding_mode=mode, param_positions=at)
        built = c.generic(op, tensors, role)
        shapes = [shape_of(t) for t in built.inputs] + [p.shape for p in built.params.values()]
        missing = len(shapes) + len(scalars) < len(operands)
        if not shapes or missing or broadcast(shapes) != shape_of(c.out0):
            # A constant (RAFT's coordinate grid, Swin's shifted-window mask) is an operand.
            constants = [t for t in tensors if c.pref(t) is None and not c.tracer.known(t)]
            built.inputs.extend(constants)
        return built

    return build


def _softmax(log: bool) -> AtenRule:
    def build(c: Call) -> Built:
        return Built(Softmax(axis=int(c.arg(1, "dim")), log=log), [c.args[0]], c.out0)

    return build


def _reduce(function: str) -> AtenRule:
    def build(c: Call) -> Built:
        x = c.args[0]
        dims = c.arg(1, "dim")
        dims = () if dims is None else _tuple(dims, 1) if isinstance(dims, int) else tuple(dims)
        named = _named(c)
        extra: dict[str, Any] = {}
        if function in ("var", "std") and named.get("correction") is not None:
            extra["correction"] = int(named["correction"])
        elif function in ("var", "std") and named.get("unbiased") is False:
            extra["correction"] = 0
        op = Reduce(
            function=function,
            dims=tuple(int(d) for d in dims),
            keepdim=bool(named.get("keepdim", False)),
            **extra,
        )
        return Built(op, [x], c.out0)

    return build


def _view(c: Call) -> Built:
    return c.generic(Reshape.between(shape_of(c.args[0]), shape_of(c.out0)), [c.args[0]])


def _permute(c: Call) -> Built:
    rank = c.args[0].dim()
    name = c.func.overloadpacket.__name__
    if name == "t":
        dims: tuple[int, ...] = (1, 0) if rank == 2 else (0,)
    elif name == "permute":
        dims = tuple(int(d) % rank for d in c.arg(1, "dims"))
    else:  # transpose(a, b)
        a, b = int(c.arg(1, "dim0")) % rank, int(c.arg(2, "dim1")) % rank
        order = list(range(rank))
        order[a], order[b] = order[b], order[a]
        dims = tuple(order)
    return c.generic(Permute(dims=dims), [c.args[0]])


def _expand(c: Call) -> Built:
    return c.generic(Expand(shape=shape_of(c.out0)), [c.args[0]])


def _slice(c: Call) -> Built:
    x = c.args[0]
    dim = int(c.arg(1, "dim", 0))
    size = x.shape[dim]
    start = c.arg(2, "start", None)
    end = c.arg(3, "end", None)
    start, stop, step = slice(start, end, int(c.arg(4, "step", 1))).indices(int(size))
    return c.generic(Slice(axis=dim, start=start, stop=stop, step=step), [x])


def _select(c: Call) -> Built:
    x, dim, index = c.args[0], int(c.arg(1, "dim")), int(c.arg(2, "index"))
    index %= int(x.shape[dim])
    return c.generic(Slice(axis=dim, start=index, stop=index + 1, keep_dim=False), [x])


def _split(c: Call) -> list[Built]:
    """split / split_with_sizes / unbind: one slice node per piece."""
    x = c.args[0]
    name = c.func.overloadpacket.__name__
    dim = int(c.arg(1 if name == "unbind" else 2, "dim", 0))
    built, start = [], 0
    for piece in c.out:
        length = 1 if name == "unbind" else int(piece.shape[dim])
        op = Slice(axis=dim, start=start, stop=start + length, keep_dim=name != "unbind")
        built.append(Built(op, [x], piece))
        start += length
    return built


def _cat(c: Call) -> Built:
    tensors = list(c.arg(0, "tensors"))
    dim = int(c.arg(1, "dim", 0))
    pieces = [t for t in tensors if t.numel() or t.dim() > 1] or tensors[:1]
    built = c.generic(Concat(axis=dim), pieces)
    # Constants concatenated with traced values (anchors, a zero row) are read like the rest;
    # they become inputs, in order, so the concatenation's shape adds up.
    built.inputs = [t for t in pieces if c.pref(t) is None]
    return built


def _copy(c: Call) -> Built:
    return c.generic(Copy(), [c.args[0]])


def _embedding(c: Call) -> Built:
    weight, indices = c.arg(0, "weight"), c.arg(1, "indices")
    ref = c.pref(weight)
    if ref is None:
        return _unknown(c)
    return Built(Embedding(), [indices], c.out0, {"weight": ref.param()})


def _cumsum(c: Call) -> Built:
    return c.generic(CumSum(axis=int(_named(c)["dim"])), [c.args[0]])


def _index(c: Call) -> Built:
    """``x[idx]``, ``x[:, idx]``: one integer index tensor is a lookup along its dimension,
    a ``gather`` (ONNX exports it as Gather), or an ``embedding`` when ``x`` is a 2-d
    parameter indexed along its rows (the ONNX importer's reading of a Gather from an
    initializer). Several index tensors or a boolean mask (a data-dependent shape) have no
    rule yet: unknown."""
    named = _named(c)
    x, indices = named["self"], list(named["indices"])
    given = [(axis, t) for axis, t in enumerate(indices) if t is not None]
    if len(given) != 1 or given[0][1].dtype in (torch.bool, torch.uint8):
        return _unknown(c)
    axis, index = given[0]
    ref = c.pref(x)
    if ref is not None:
        if axis != 0 or x.dim() != 2:
            return _unknown(c)
        return Built(Embedding(), [index], c.out0, {"weight": ref.param()})
    return Built(Gather(axis=axis), [x, index], c.out0)


def _constant_pad(c: Call) -> Built:
    """``F.pad(x, pad, value=v)``: ``pad`` lists (begin, end) from the last dimension back."""
    named = _named(c)
    x, flat = named["self"], [int(p) for p in named["pad"]]
    pairs = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
    pads = [(0, 0)] * (x.dim() - len(pairs)) + pairs[::-1]
    value = float(named.get("value", 0) or 0)
    return c.generic(Pad(pads=tuple(pads), mode="constant", value=value), [x])


def _roll(c: Call) -> Built:
    named = _named(c)
    shifts = tuple(int(s) for s in _tuple(named["shifts"], 1))
    given = named.get("dims") or ()  # empty: the flattened tensor rolls
    dims = tuple(int(d) for d in _tuple(given, 1)) if given else ()
    return c.generic(Roll(shifts=shifts, dims=dims), [named["self"]])


def _vector_norm(c: Call) -> Built:
    """``torch.linalg.vector_norm`` (``F.normalize``'s denominator): a p-norm reduction."""
    named = _named(c)
    dims = named.get("dim")
    dims = () if dims is None else _tuple(dims, 1) if isinstance(dims, int) else tuple(dims)
    op = Reduce(
        function="norm",
        dims=tuple(int(d) for d in dims),
        keepdim=bool(named.get("keepdim", False)),
        p=float(named.get("ord", 2)),
    )
    return c.generic(op, [named["self"]])


def _unknown(c: Call) -> Built:
    tensors = [t for t in tree_flatten((c.args, c.kwargs))[0] if isinstance(t, torch.Tensor)]
    built = c.generic(
        Unknown(target=f"aten.{c.func.overloadpacket.__name__}", observed_shape=shape_of(c.out0)),
        tensors,
    )
    return built


def _pool_rule(mode: str) -> AtenRule:
    return _max_pool if mode == "max" else _avg_pool


def _slice_rule(how: str) -> AtenRule:
    rules: dict[str, AtenRule] = {"slice": _slice, "select": _select, "split": _split}
    return rules[how]


#: How each operator class is read from an aten call, given the variant its aten name means
#: (ops.base.Names: ``Binary.NAMES.aten["rsub"]`` is ``("sub", None, True)``).
_ATEN_READERS: dict[type[Op], Callable[[Any], AtenRule]] = {
    Conv: lambda _: _conv,
    MatMul: lambda how: _mm if how == "mm" else _addmm,
    Attention: lambda _: _attention,
    Norm: _norm,
    Reduce: lambda function: _vector_norm if function == "norm" else _reduce(function),
    Pool: _pool_rule,
    AdaptivePool: _adaptive,
    Activation: _activation,
    Binary: lambda v: _binary(v[0], rounding_mode=v[1], swapped=v[2]),
    Softmax: _softmax,
    Reshape: lambda _: _view,
    Permute: lambda _: _permute,
    Expand: lambda _: _expand,
    Slice: _slice_rule,
    Concat: lambda _: _cat,
    Copy: lambda _: _copy,
    Embedding: lambda _: _embedding,
    Gather: lambda _: _index,
    Pad: lambda _: _constant_pad,
    Roll: lambda _: _roll,
    CumSum: lambda _: _cumsum,
}

#: aten operator name (overload packet) -> rule, from the aten names the operators claim.
#: Names absent here become ``unknown``.
ATEN_RULES: dict[str, AtenRule] = {
    name: _ATEN_READERS[cls](variant) for name, (cls, variant) in names_in("aten").items()
}


def _batch_norm_meta(x: torch.Tensor, *rest: Any) -> tuple[torch.Tensor, ...]:
    """Inference batch norm's outputs (y, mean, invstd) on meta, without PyTorch's Python
    decomposition of it (half of a ResNet's tracing time): y has x's shape, the saved
    statistics one value per channel, as PyTorch's meta kernel gives."""
    training = len(rest) > 4 and rest[4] is True  # native_batch_norm(x, w, b, rm, rv, training)
    if training:
        return NotImplemented
    channels = (x.shape[1],) if x.dim() > 1 else (0,)
    return (torch.empty_like(x), x.new_empty(channels), x.new_empty(channels))


#: Operators whose meta result we make directly (same shapes and dtypes as PyTorch's).
_META_SHORTCUTS: dict[str, Callable[..., Any]] = {
    "native_batch_norm": _batch_norm_meta,
}

#: Operators that return their input unchanged (no node: the value keeps its producer).
PASSTHROUGH = frozenset(
    {
        "alias",
        "detach",
        "lift_fresh",
        "dropout",
        "feature_dropout",
        "contiguous",
        "_conj",
        "resolve_conj",
        "resolve_neg",
    }
)

#: Element-wise functions that, applied to one parameter alone, stand for it (no node).
PARAMETER_MATH = (
    ACTIVATIONS
    | BINARY
    | frozenset({"clamp_min", "clamp_max", "log2", "log1p", "sign", "square", "zero", "fill"})
)

#: Operators whose values are random or uninitialised: never computed as literals.
_RANDOM = frozenset(
    {
        "rand",
        "randn",
        "randint",
        "rand_like",
        "randn_like",
        "randint_like",
        "randperm",
        "normal",
        "normal_",
        "uniform_",
        "bernoulli",
        "bernoulli_",
        "exponential_",
        "multinomial",
        "empty",
        "empty_like",
        "new_empty",
        "new_empty_strided",
        "empty_strided",
        "native_dropout",
    }
)

#: The most values a literal tensor may have for the tracer to compute it on CPU.
_LITERAL_LIMIT = 1 << 24

#: Operators whose result does not depend on their input's values (no node: a constant).
CONSTANT_MAKERS = frozenset(
    {
        "new_zeros",
        "new_ones",
        "new_empty",
        "new_full",
        "zeros_like",
        "ones_like",
        "empty_like",
        "full_like",
        "rand_like",
        "randn_like",
        "randint_like",
        "new_empty_strided",
        "scalar_tensor",
    }
)

#: Operators that give their input's values in another shape (a buffer stays the buffer).
_RESHAPES = frozenset(
    {
        "view",
        "_unsafe_view",
        "reshape",
        "unsqueeze",
        "squeeze",
        "flatten",
        "unflatten",
        "alias",
        "detach",
        "clone",
        "contiguous",
        "lift_fresh",
    }
)

#: View operators: applied to a parameter they give a view of it (no node): the reshapes
#: (but ``contiguous``), transposes, slices, splits and ``_to_copy``.
PARAM_VIEWS = (_RESHAPES - {"contiguous"}) | {
    "t",
    "transpose",
    "permute",
    "slice",
    "select",
    "split",
    "split_with_sizes",
    "unbind",
    "_to_copy",
}


# ---------------------------------------------------------------------------------------------
# The tracer


class Tracer(TorchDispatchMode):
    """Records nodes while the meta copy (or, with ``real``, a CPU copy) runs.

    ``values`` maps ``id(tensor)`` to the IR value that holds it (graph input or node name);
    ``params`` maps ``id(tensor)`` to the parameter (or view of one) it is; ``names`` maps the
    copy's parameters *and buffers* to their state-dict names (buffers are never parameters).
    On meta, ``keep`` holds every traced tensor so that ids are not reused while tracing (meta
    tensors cost no memory); on real tensors a finalizer forgets a tensor's id when it dies.
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """No ``torch._dynamo.disable`` wrapper around ``__torch_dispatch__``: nothing here is
        compiled, and the wrapper's first call imports ``torch._dynamo`` (seconds, cold)."""
        return False

    def __init__(self, names: dict[int, str], real: bool = False):
        super().__init__()
        self.names = names
        self.real = real
        self.values: dict[int, str] = {}
        self.params: dict[int, ParamRef] = {}
        self.keep: list[Any] = []
        self.nodes: list[Node] = []
        self.taken: set[str] = set()
        self.stack: list[tuple[str, str]] = []  # (qualified name, class name) of running modules
        self.suppress = 0  # > 0 while inside a leaf module or a fused function
        self.failed_in: str | None = None  # the innermost module whose forward raised
        self.operator = ""  # the operator being recorded (for an internal error's message)
        self.leaf_output: Any = None  # a leaf module's whole output (recurrent states)
        self.recurrent: nn.RNNBase | None = None  # the recurrent leaf running on meta
        # On meta, answer a recurrent leaf's fused call from our shape rule instead of letting
        # PyTorch unroll every gate product of every step (a training trace needs the unrolled
        # products: their backward is what it counts).
        self.shortcut_recurrent = not real
        # id(meta tensor) -> (the tensor, kept alive so its id stays its own; its CPU values)
        self.literals: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    # --- bookkeeping -----------------------------------------------------------------------
    def known(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and id(t) in self.values

    def value_of(self, t: torch.Tensor) -> str:
        return self.values[id(t)]

    def bind(self, t: torch.Tensor, value: str) -> None:
        if self.real:
            if id(t) not in self.values:
                weakref.finalize(t, self.forget, id(t))
        else:
            self.keep.append(t)
        self.values[id(t)] = value
        self.params.pop(id(t), None)  # an in-place op turned a parameter view into a value

    def forget(self, key: int) -> None:
        self.values.pop(key, None)

    def keep_alive(self, t: torch.Tensor) -> None:
        """Parameter views: kept on meta; on real tensors forgotten when they die."""
        if self.real:
            weakref.finalize(t, self.params.pop, id(t), None)
        else:
            self.keep.append(t)

    def constant(self, t: torch.Tensor) -> str:
        """A node for a tensor a layer reads but no traced layer made: a buffer, or something
        computed from buffers and literals (see :mod:`dnnlens.ops.constant`)."""
        source = self.names.get(id(t), "")  # a buffer's state-dict name, if it is one
        module, module_type = self.stack[-1] if self.stack else ("", "")
        base = source or (f"{module}.constant" if module else "constant")
        name = unique_name(base, self.taken)
        self.taken.add(name)
        shape = shape_of(t)
        op = Constant(shape=shape, source=source)
        value = None if source else self.literal_value(t)
        if value is not None:
            op = Constant.of(value)
        self.nodes.append(
            Node(
                name=name,
                op=op,
                inputs=[],
                input_shapes=[],
                output_shape=shape,
                module=module,
                module_type=module_type,
                source="constant",
            )
        )
        self.bind(t, name)
        return name

    # --- constants made of literals ---------------------------------------------------------
    def literal_value(self, t: torch.Tensor) -> np.ndarray | None:
        """The values of a tensor the model made from literals alone (None if unknown or not
        representable in NumPy): on meta, the copy :meth:`evaluate_literals` computed."""
        value = t if self.real else self.literal_of(t)
        if value is None or value.dtype in (torch.bfloat16, torch.complex32):
            return None
        try:
            return value.detach().cpu().numpy()
        except (TypeError, RuntimeError):
            return None

    def literal_of(self, t: Any) -> torch.Tensor | None:
        """A real tensor with ``t``'s values, if ``t`` is made from literals: ``t`` itself
        when it is not on meta (``torch.tensor([...])`` in a forward), else its CPU copy."""
        if not isinstance(t, torch.Tensor):
            return None
        if t.device.type != "meta":
            return t
        entry = self.literals.get(id(t))
        return entry[1] if entry is not None and entry[0] is t else None

    def evaluate_literals(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """On meta, run ``func`` again on CPU when every tensor it reads is made from literals
        (Swin's shifted-window mask: ``x.new_zeros(...)``, slices filled with numbers,
        ``masked_fill``), so a layer reading the result gets a constant with values. Buffers
        and parameters are never read here: a checkpoint may change them."""
        name = func.overloadpacket.__name__
        flat, spec = tree_flatten((args, kwargs))
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        computable = name not in _RANDOM and sum(t.numel() for t in outs) <= _LITERAL_LIMIT
        real: list[Any] = []
        for i, v in enumerate(flat):
            if isinstance(v, torch.Tensor):
                if i == 0 and name in CONSTANT_MAKERS:  # only its shape and dtype matter
                    v = torch.empty(v.shape, dtype=v.dtype)
                else:
                    v = self.literal_of(v)
                computable = computable and v is not None
            elif isinstance(v, torch.device) and v.type == "meta":
                v = torch.device("cpu")
            real.append(v)
        if not computable:
            self.forget_literals(func, flat)
            return
        real_args, real_kwargs = tree_unflatten(real, spec)
        try:
            result = func(*real_args, **real_kwargs)
        except Exception:  # noqa: BLE001 - no value then; the constant stays without one
            self.forget_literals(func, flat)
            return
        for meta, value in zip(tree_flatten(out)[0], tree_flatten(result)[0]):
            if isinstance(meta, torch.Tensor) and isinstance(value, torch.Tensor):
                if meta.device.type == "meta":
                    self.literals[id(meta)] = (meta, value)

    def forget_literals(self, func: Any, flat: list[Any]) -> None:
        """An operator that writes into a literal tensor with values we do not know (an
        activation copied into it) makes it, and the tensor it is a view of, unknown."""
        schema = getattr(func, "_schema", None)
        if schema is None:
            return
        written = [
            v
            for a, v in zip(schema.arguments, flat)
            if a.alias_info is not None and a.alias_info.is_write
        ]
        for t in written:
            if isinstance(t, torch.Tensor):
                for key in (id(t), id(t._base)):
                    self.literals.pop(key, None)

    def module_params(self, m: nn.Module, roles: Sequence[str]) -> dict[str, Param]:
        params = {}
        for role in roles:
            t = getattr(m, role, None)
            if isinstance(t, torch.Tensor) and id(t) in self.params:
                params[role] = self.params[id(t)].param()
        return params

    def add(self, built: Built, source: str, base: str) -> None:
        """Check the operator's shape rule against the traced shape, then append the node."""
        module, module_type = self.stack[-1] if self.stack else ("", "")
        name = unique_name(base, self.taken)
        self.taken.add(name)
        input_shapes = [shape_of(t) for t in built.inputs]
        output_shape = shape_of(built.out)
        param_shapes = {role: p.shape for role, p in built.params.items()}
        inferred = infer_shape(name, built.op, input_shapes, param_shapes)
        if inferred != output_shape:
            raise RuntimeError(
                f"dnnlens bug: layer {name!r} ({built.op.kind}, from {source}): our shape rule "
                f"gives {inferred} but PyTorch traced {output_shape}; please report it"
            )
        inputs = [self.value_of(t) if self.known(t) else self.constant(t) for t in built.inputs]
        self.nodes.append(
            Node(
                name=name,
                op=built.op,
                inputs=inputs,
                input_shapes=input_shapes,
                output_shape=output_shape,
                params=dict(built.params),
                module=module,
                module_type=module_type,
                source=source,
            )
        )
        self.bind(built.out, name)

    # --- aten level ------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        shortcut = None if self.real else _META_SHORTCUTS.get(func.overloadpacket.__name__)
        out = shortcut(*args) if shortcut is not None and not kwargs else NotImplemented
        if out is NotImplemented:
            out = func(*args, **kwargs)
        if self.suppress == 0 and not self.real:
            self.evaluate_literals(func, args, kwargs, out)
        if self.suppress == 0:
            self.operator = f"aten.{func.overloadpacket.__name__}"
            try:
                self.record(func, args, kwargs, out)
            except DnnlensError:
                raise
            except Exception as exc:  # a bug of ours: say where, for the CLI's one line
                annotate(
                    exc, layer=self.stack[-1][0] if self.stack else "", operator=self.operator
                )
                raise
        return out

    def record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        name = func.overloadpacket.__name__
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if not outs:
            return
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        first = tensors[0] if tensors else None
        if first is not None and id(first) in self.params and name in PARAM_VIEWS:
            self.derive(name, first, args, out)
            return
        if (
            name in PASSTHROUGH
            and first is not None
            and self.known(first)
            and isinstance(out, torch.Tensor)
        ):
            self.bind(out, self.value_of(first))
            return
        if first is not None and name in _RESHAPES and self.buffer_view(first, out):
            return
        if name in CONSTANT_MAKERS:
            return  # zeros_like(x), x.new_zeros(...): values that do not depend on x
        if not any(self.known(t) or id(t) in self.params for t in tensors):
            return  # made from constants and buffers only (zeros, arange, a mask): no layer
        if self.parameter_written(func, args, kwargs):
            return
        if name.rstrip("_") in PARAMETER_MATH:
            replaced = self.parameter_arithmetic(func, args, kwargs, tensors, out)
            if replaced is True:
                return  # marked computed: the result stands for the parameter
            if isinstance(replaced, tuple):
                args, kwargs = replaced
        call = Call(self, func, args, kwargs, out)
        rule = ATEN_RULES.get(name, _unknown)
        built = rule(call)
        module = self.stack[-1][0] if self.stack else ""
        for b in built if isinstance(built, list) else [built]:
            base = f"{module}.{b.op.kind}" if module else b.op.kind
            self.add(b, f"aten.{name}", base)

    def buffer_view(self, t: torch.Tensor, out: Any) -> bool:
        """A reshaped buffer (MaxViT's ``relative_position_index.view(-1)``) is the buffer:
        a layer reading it reads a constant with the buffer's name and the view's shape."""
        source = self.names.get(id(t))
        if source is None or id(t) in self.params or self.known(t):
            return False
        if not isinstance(out, torch.Tensor) or out.numel() != t.numel():
            return False
        if self.real:
            weakref.finalize(out, self.names.pop, id(out), None)
        else:
            self.keep.append(out)
        self.names[id(out)] = source
        return True

    def parameter_value(self, t: torch.Tensor, out: torch.Tensor | None = None) -> bool:
        """Make the parameter (or view of one) ``t`` a value of the graph: an ``expand`` node
        reading it, bound to ``out`` (a stand-in tensor), or to ``t`` itself when ``out`` is
        None (a copy of a parameter about to be written into). False when its stored layout
        is not the one used (a transposed view), which a value cannot say."""
        ref = self.params[id(t)]
        if ref.untransposed is not None or ref.computed:
            return False
        leaf = ref.name.rsplit(".", 1)[-1]
        role = "bias" if leaf.startswith("bias") else "weight"
        target = t if out is None else out
        built = Built(Expand(shape=ref.shape), [], target, {role: Param(ref.name, ref.shape)})
        module = self.stack[-1][0] if self.stack else ""
        self.add(built, "parameter", f"{module}.parameter" if module else "parameter")
        return True

    def parameter_arithmetic(
        self, func: Any, args: tuple, kwargs: dict, tensors: list[torch.Tensor], out: Any
    ) -> tuple[tuple, dict] | bool:
        """An element-wise function of one parameter and constants (Swin V2's
        ``clamp(logit_scale).exp()``): the parameter becomes a value (an ``expand`` node
        reading it) and the function a node of its own, so the engine computes what the layer
        reads. Returns the arguments with the parameter replaced by that value; True when no
        value can stand in (a transposed view) and the result, marked computed, stands for
        the parameter (no node); False when this is not arithmetic on one parameter."""
        refs = [(t, self.params[id(t)]) for t in tensors if id(t) in self.params]
        if any(self.known(t) for t in tensors) or len(refs) != 1:
            return False
        if not isinstance(out, torch.Tensor) or shape_of(out) != refs[0][1].shape:
            return False
        t, ref = refs[0]
        if any(out is x for x in tensors):
            return True  # in place, not a copy's part: parameter_written marked it computed
        stand_in = torch.empty(ref.shape, dtype=t.dtype, device=t.device)
        if self.parameter_value(t, stand_in):
            swap = {id(t): stand_in}
            flat, spec = tree_flatten((args, kwargs))
            flat = [swap.get(id(v), v) if isinstance(v, torch.Tensor) else v for v in flat]
            new_args, new_kwargs = tree_unflatten(flat, spec)
            return tuple(new_args), dict(new_kwargs)
        self.keep_alive(out)
        name = func.overloadpacket.__name__
        done = f"{ref.computed}, {name}" if ref.computed else name
        self.params[id(out)] = ParamRef(ref.name, ref.shape, ref.untransposed, done)
        return True

    def parameter_written(self, func: Any, args: tuple, kwargs: dict) -> bool:
        """An operator writing into a parameter's copy in place (Swin V2 zeroes the key third
        of ``qkv.bias.clone()``). ``zero_``/``fill_`` of a part of a copy: the copy becomes a
        value (``expand`` of the parameter) and the write a ``where`` over a mask of the
        written part, so the layers reading the copy read what the model computed; True when
        recorded so. Any other write marks the copy (and the tensor it is a view of) computed,
        which the engine refuses."""
        schema = getattr(func, "_schema", None)
        if schema is None:
            return False
        flat = tree_flatten((args, kwargs))[0]
        name = func.overloadpacket.__name__
        written = [
            v
            for a, v in zip(schema.arguments, flat)
            if a.alias_info is not None and a.alias_info.is_write and isinstance(v, torch.Tensor)
        ]
        written = [v for v in written if id(v) in self.params]
        if not written:
            return False
        if (
            len(written) == 1
            and name in ("zero_", "fill_")
            and self.fill_copy(name, written[0], flat)
        ):
            return True
        for value in written:
            for t in (value, value._base):
                ref = self.params.get(id(t)) if t is not None else None
                if ref is not None:
                    done = f"{ref.computed}, {name}" if ref.computed else name
                    self.params[id(t)] = ParamRef(ref.name, ref.shape, ref.untransposed, done)
        return False

    def fill_copy(self, name: str, view: torch.Tensor, flat: list[Any]) -> bool:
        """``copy[a:b].zero_()`` (or ``fill_(v)``) on a contiguous copy of a parameter, as
        nodes: see :meth:`parameter_written`."""
        value = flat[1] if len(flat) > 1 else 0.0
        if not isinstance(value, (int, float, bool)):
            return False
        base = view if view._base is None else view._base
        if id(base) not in self.params or base is view or not base.is_contiguous():
            return False
        if isinstance(base, nn.Parameter):
            return False  # the parameter itself, not a copy: leave it to the refusal
        if not self.parameter_value(base):
            return False
        mask = torch.zeros(base.numel(), dtype=torch.bool)
        offset = view.storage_offset() - base.storage_offset()
        mask.as_strided(tuple(view.shape), tuple(view.stride()), offset).fill_(True)
        mask = mask.reshape(base.shape)
        op = Binary(function="where", scalars=((1, value),))
        module = self.stack[-1][0] if self.stack else ""
        where = f"{module}.where" if module else "where"
        self.add(Built(op, [mask, base], base), f"aten.{name}", where)
        self.params.pop(id(view), None)
        return True

    def derive(self, name: str, t: torch.Tensor, args: tuple, out: Any) -> None:
        """A view of a parameter is the parameter (sliced: the slice gets its own name)."""
        ref = self.params[id(t)]
        pieces = out if isinstance(out, (tuple, list)) else [out]
        if name in ("slice", "select", "split", "split_with_sizes", "unbind"):
            dim = int(args[1]) if len(args) > 1 and name in ("slice", "select", "unbind") else 0
            if name in ("split", "split_with_sizes") and len(args) > 2:
                dim = int(args[2])
            start = int(args[2]) if name in ("slice", "select") and len(args) > 2 else 0
            for piece in pieces:
                length = 1 if name in ("select", "unbind") else int(piece.shape[dim])
                index = ":, " * (dim % len(ref.shape)) + f"{start}:{start + length}"
                self.keep_alive(piece)
                self.params[id(piece)] = ParamRef(
                    f"{ref.name}[{index}]", shape_of(piece), computed=ref.computed
                )
                start += length
            return
        shape = shape_of(out)
        untransposed = None
        if name in ("t", "transpose", "permute") and len(shape) == 2 and len(ref.shape) == 2:
            untransposed = None if ref.untransposed is not None else ref.shape
        self.keep_alive(out)
        self.params[id(out)] = ParamRef(ref.name, shape, untransposed, ref.computed)

    def fused_attention(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """Run SDPA with its inner operators suppressed and record one attention node."""
        self.suppress += 1
        try:
            out = func(*args, **kwargs)
        finally:
            self.suppress -= 1
        call = Call(self, func, args, kwargs, out)
        module = self.stack[-1][0] if self.stack else ""
        self.add(
            _attention(call),
            "F.scaled_dot_product_attention",
            f"{module}.attention" if module else "attention",
        )
        return out

    # --- module level ----------------------------------------------------------------------
    def pre_hook(self, qualname: str):
        # module: Any, not nn.Module: the hooks keep plain markers on it (_dnnlens_leaf, ...),
        # which nn.Module's stub would type as Tensor | Module.
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            first = args[0] if args else next(iter(kwargs.values()), None)
            packed = isinstance(first, PackedSequence) and isinstance(module, nn.RNNBase)
            leaf = (
                self.suppress == 0
                and leaf_rule(module) is not None
                and (isinstance(first, torch.Tensor) or packed)
            )
            self.stack.append((qualname, type(module).__name__))
            module._dnnlens_leaf = leaf
            if leaf:
                # packed: the rows (sum of lengths, E)
                module._dnnlens_input = first.data if isinstance(first, PackedSequence) else first
                module._dnnlens_args = tuple(args) + tuple(kwargs.values())
                self.suppress += 1
                if isinstance(module, nn.RNNBase) and self.shortcut_recurrent:
                    self.recurrent = module

        return hook

    def post_hook(self, qualname: str):
        def hook(module: Any, args: tuple, kwargs: dict, out: Any) -> None:
            self.stack.pop()
            if out is None and self.failed_in is None and qualname:
                self.failed_in = qualname  # always_call: forward raised inside this module
            if not getattr(module, "_dnnlens_leaf", False):
                return
            self.suppress -= 1
            x = module._dnnlens_input
            module._dnnlens_input = None
            self.leaf_output = out
            if isinstance(out, (tuple, list)) and out:  # MaxPool2d(return_indices=True), LSTM
                out = out[0]
            if isinstance(out, PackedSequence):  # a recurrent layer on a packed sequence
                out = out.data
            if not isinstance(out, torch.Tensor):
                self.failed_in = self.failed_in or qualname
                return  # forward raised (always_call hooks still run): nothing to record
            rule = leaf_rule(module)
            assert rule is not None  # the pre-hook marked it a leaf because it has a rule
            source = f"nn.{type(module).__name__}"
            self.operator = source
            self.stack.append((qualname, type(module).__name__))
            try:
                built = rule(self, module, x, out)
                for b in built if isinstance(built, list) else [built]:
                    base = qualname or b.op.kind
                    if isinstance(b.op, RecurrentState):
                        base = f"{base}.{b.op.which}" if qualname else b.op.which
                    self.add(b, source, base)
            except DnnlensError:
                raise
            except Exception as exc:  # a bug of ours: say where, for the CLI's one line
                annotate(exc, layer=qualname, operator=source)
                raise
            finally:
                self.stack.pop()
                self.leaf_output = None
                module._dnnlens_args = ()

        return hook

    def recurrent_outputs(self, args: tuple) -> tuple[torch.Tensor, ...]:
        """What ``_VF.lstm``/``gru``/``rnn_*`` return, made from our shape rule on meta rather
        than by unrolling every time step: ``(output, h_n[, c_n])``."""
        module = self.recurrent
        assert module is not None
        self.recurrent = None  # once per leaf call
        x = args[0]
        op = _recurrent_op(module)
        params = {name: shape_of(p) for name, p in module.named_parameters(recurse=False)}
        n, _, _ = op.sequence(shape_of(x))
        layers = op.num_layers * op.directions
        batch = (n,) if x.dim() == 3 else ()
        sizes = args[1] if len(args) > 1 else None
        if isinstance(sizes, torch.Tensor) and not sizes.is_floating_point():
            batch = (int(sizes[0]),)  # packed: (data, batch_sizes, hx, ...); N sequences
        shapes = [op.output_shape([shape_of(x)], params), (layers, *batch, op.hidden_out)]
        if op.mode == "lstm":
            shapes.append((layers, *batch, op.hidden_size))
        return tuple(torch.empty(s, dtype=x.dtype, device="meta") for s in shapes)


_SDPA = torch.nn.functional.scaled_dot_product_attention


class _FusedFunctions(TorchFunctionMode):
    """Catches ``F.scaled_dot_product_attention`` before it decomposes (see module docs).

    A function mode is switched off while it handles a call, so it does not see SDPA called
    from inside another handled function (``F.multi_head_attention_forward``, which every
    ``nn.MultiheadAttention`` runs). For those, :func:`_patched_sdpa` replaces the module-level
    name ``torch.nn.functional.scaled_dot_product_attention`` while tracing, and puts it back.
    """

    def __init__(self, tracer: Tracer):
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _VF_RECURRENT and self.tracer.recurrent is not None:
            return self.tracer.recurrent_outputs(args)
        if func is not _SDPA or self.tracer.suppress:
            return func(*args, **kwargs)
        return self.tracer.fused_attention(func, args, kwargs)


#: The fused recurrent kernels ``nn.RNN``/``LSTM``/``GRU`` call; on meta PyTorch would unroll
#: them into every gate product of every time step (seconds for a long sequence).
_VF_RECURRENT = frozenset({torch._VF.lstm, torch._VF.gru, torch._VF.rnn_tanh, torch._VF.rnn_relu})


@contextlib.contextmanager
def _patched_sdpa(tracer: Tracer) -> Iterator[None]:
    """``torch.nn.functional.scaled_dot_product_attention`` recorded as one node while tracing
    (see :class:`_FusedFunctions`); the original is restored on exit."""
    functional = torch.nn.functional

    def sdpa(*args: Any, **kwargs: Any) -> Any:
        if tracer.suppress:
            return _SDPA(*args, **kwargs)
        return tracer.fused_attention(_SDPA, args, kwargs)

    functional.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = _SDPA


# ---------------------------------------------------------------------------------------------
# Public entry point


def meta_copy(model: nn.Module, real: bool = False) -> tuple[nn.Module, dict[int, str]]:
    """A deep copy of ``model`` whose parameters and buffers are meta tensors (``real``: kept
    as they are), in eval mode, and ``id(tensor) -> state-dict name`` for the copy's
    parameters and buffers."""
    memo: dict[int, Any] = {}
    if not real:
        for p in model.parameters():
            memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
        for b in model.buffers():
            memo[id(b)] = torch.empty_like(b, device="meta")
    try:
        copied = copy.deepcopy(model, memo)
    except Exception as exc:  # noqa: BLE001 - any failure to copy is the model's
        raise ModelError(
            f"cannot copy the model to the meta device ({exc}); build it under "
            "`with torch.device('meta'):` and pass that instead"
        ) from None
    copied.eval()
    names: dict[int, str] = {}
    for name, p in copied.named_parameters():
        names.setdefault(id(p), name)
    for name, b in copied.named_buffers():
        names.setdefault(id(b), name)
    return copied, names


def _meta_inputs(
    input_shape: Sequence[int] | None, example_inputs: Any, kwargs: dict | None, real: bool = False
) -> tuple[tuple, dict]:
    """Positional and keyword inputs (on meta; ``real``: as given) from a shape or from
    example tensors (lists and tuples of tensors, as detection models take, are kept)."""
    if input_shape is None and example_inputs is None and not kwargs:
        raise UsageError("give input_shape (e.g. (1, 3, 224, 224)) or example_inputs")
    if input_shape is not None:
        shape = tuple(input_shape)
        if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
            raise UsageError(f"input shape must be positive integers, got {input_shape!r}")
        args: tuple = (torch.rand(shape) if real else torch.empty(shape, device="meta"),)
    elif example_inputs is None:
        args = ()
    else:
        args = (
            tuple(example_inputs)
            if isinstance(example_inputs, (tuple, list))
            else (example_inputs,)
        )

    def to_meta(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return type(v)(to_meta(x) for x in v)
        if isinstance(v, torch.Tensor) and not real:
            return torch.empty_like(v, device="meta")
        return v

    return tuple(to_meta(a) for a in args), {k: to_meta(v) for k, v in (kwargs or {}).items()}


def _input_tensors(args: tuple) -> list[torch.Tensor]:
    """The tensors among positional inputs, looking into lists (detection: a list of images)."""
    return [t for t in tree_flatten(list(args))[0] if isinstance(t, torch.Tensor)]


def bind_inputs(tracer: Tracer, args: tuple, kw: dict[str, Any]) -> dict[str, Shape]:
    """Name the model's input tensors for ``tracer`` (``input``, or ``input0``, ``input1``, ...
    and keyword names) and return the graph's inputs by name with their shapes."""
    graph_inputs: dict[str, Shape] = {}
    tensor_args = _input_tensors(args)
    for i, t in enumerate(tensor_args):
        value = "input" if len(tensor_args) == 1 and not kw else f"input{i}"
        graph_inputs[value] = shape_of(t)
        tracer.bind(t, value)
    for key, t in kw.items():
        if isinstance(t, torch.Tensor):
            graph_inputs[key] = shape_of(t)
            tracer.bind(t, key)
    return graph_inputs


def install_hooks(tracer: Tracer, model: nn.Module) -> list[Any]:
    """The tracer's module-stack hooks on every module of ``model``; remove the returned
    handles after the trace."""
    handles = []
    for qualname, module in model.named_modules():
        handles.append(
            module.register_forward_pre_hook(tracer.pre_hook(qualname), with_kwargs=True)
        )
        handles.append(
            module.register_forward_hook(
                tracer.post_hook(qualname), with_kwargs=True, always_call=True
            )
        )
    return handles


def import_torch(
    model: nn.Module,
    input_shape: tuple[int, ...] | None = None,
    *,
    example_inputs: Any = None,
    kwargs: dict | None = None,
    real: bool = False,
) -> Graph:
    """Trace ``model`` on the meta device into a :class:`~dnnlens.ir.Graph`.

    ``input_shape`` gives one float input ``(N, C, H, W)`` (batch included); or pass
    ``example_inputs`` (a tensor or a tuple of them, any device: only shapes and dtypes are
    used; a list of tensors counts as several inputs) and/or ``kwargs`` (keyword tensors).
    Graph inputs are named ``input`` (one input) or ``input0``, ``input1``, ... and keyword
    inputs by their keyword.

    ``real=True`` traces a CPU copy on the example inputs' real values instead of meta: for
    models whose work depends on the data (detection proposals, NMS), which meta cannot
    express. The model then really runs once.

    The graph's ``declared_params`` lists every parameter of the model once (used or not).
    Buffers are never parameters. Raises ModelError if the model rejects the input.
    """
    # Under torch.inference_mode() PyTorch skips the decomposition of composite operators
    # (linear, matmul, softmax, adaptive_avg_pool2d reach the tracer whole): trace as a
    # caller outside it would, so the graph does not depend on where import_torch is called.
    with torch.inference_mode(False):
        return _import_torch(model, input_shape, example_inputs, kwargs, real)


def _import_torch(
    model: nn.Module,
    input_shape: tuple[int, ...] | None,
    example_inputs: Any,
    kwargs: dict | None,
    real: bool,
) -> Graph:
    if not isinstance(model, nn.Module):
        raise UsageError(f"expected a torch.nn.Module, got {type(model).__name__}")
    args, kw = _meta_inputs(input_shape, example_inputs, kwargs, real)
    copied, names = meta_copy(model, real)
    tracer = Tracer(names, real=real)
    declared: dict[str, Param] = {}
    for name, p in copied.named_parameters():  # each parameter once, tied ones by first name
        tracer.params[id(p)] = ParamRef(name, shape_of(p))
        declared[name] = Param(name, shape_of(p))
    graph_inputs = bind_inputs(tracer, args, kw)
    handles = install_hooks(tracer, copied)
    try:
        with torch.no_grad(), _patched_sdpa(tracer), _FusedFunctions(tracer), tracer:
            out = copied(*args, **kw)
    except DnnlensError:
        raise
    except Exception as exc:  # sorted below: the model's fault, or ours
        if (
            annotation(exc)
            or str(exc).startswith("dnnlens bug")
            or not isinstance(exc, _MODEL_ERRORS)
        ):
            annotate(
                exc,
                model=type(model).__name__,
                layer=tracer.failed_in or "",
                operator=tracer.operator,
            )
            raise  # a dnnlens bug: the CLI turns it into one line, exit code 1
        raise ModelError(_rejected(args, kw, tracer, exc)) from None
    finally:
        for handle in handles:
            handle.remove()
    outputs = [tracer.value_of(t) for t in tree_flatten(out)[0] if tracer.known(t)]
    from dnnlens.canonical import canonicalise

    return canonicalise(
        Graph(
            nodes=tracer.nodes,
            inputs=graph_inputs,
            outputs=outputs,
            name=type(model).__name__,
            declared_params=declared,
        )
    )


#: Exceptions from running the model itself that mean "this input does not fit the model".
_MODEL_ERRORS = (
    RuntimeError,
    TypeError,
    ValueError,
    IndexError,
    AssertionError,
    NotImplementedError,
)


def unknown_ops(graph: Graph) -> list[Node]:
    """Nodes without a rule (their MACs are unknown)."""
    return [node for node in graph if isinstance(node.op, Unknown)]


def _rejected(args: tuple, kwargs: dict, tracer: Tracer, exc: BaseException) -> str:
    where = f" in module {tracer.failed_in!r}" if tracer.failed_in else ""
    if "device meta" in str(exc):
        where += (
            " (it uses a tensor or module that is not registered as a parameter, buffer "
            "or sub-module, so it was not moved to the meta device; register it)"
        )
    return _first_line(
        f"the model rejects input {_describe(args, kwargs)}{where}: {type(exc).__name__}: {exc}"
    )


def _describe(args: tuple, kwargs: dict) -> str:
    parts = [str(shape_of(a)) if isinstance(a, torch.Tensor) else repr(a) for a in args]
    parts += [
        f"{k}={shape_of(v) if isinstance(v, torch.Tensor) else v!r}" for k, v in kwargs.items()
    ]
    return ", ".join(parts)


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line[:300]
