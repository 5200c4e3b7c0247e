"""Every registered operator, both kernel paths (readable reference and Numba-compiled),
against the operator's own PyTorch oracle (``op.torch_oracle``: ``torch.nn.functional`` or
``torch``), in float64 and, where PyTorch computes them, integers.

Hypothesis draws the awkward cases: size-1 dimensions, broadcasting, odd sizes, negative
axes and steps, padding larger than half the kernel, groups, dilation, causal and boolean
masks. :data:`CASES` has one strategy per operator class; an operator added to the registry
without one fails :func:`test_every_operator_has_oracle_cases`. Each strategy keeps to a few
dtypes and ranks, so Numba compiles each kernel a handful of times (cached on disk after).
"""

from __future__ import annotations

import functools
from math import prod

import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from dnnlens.errors import ShapeError
from dnnlens.ops import (
    REGISTRY,
    Activation,
    AdaptivePool,
    Attention,
    Binary,
    Concat,
    Constant,
    Conv,
    Copy,
    CumSum,
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
    Resize,
    Roll,
    Slice,
    Softmax,
    Unknown,
)
from dnnlens.ops.elementwise import ACTIVATION_PARAMETERS, ACTIVATIONS, BINARY, INTEGER_ACTIVATIONS
from dnnlens.ops.norm import REDUCTIONS

PATHS = ("reference", "compiled")
#: Operators without kernels by design: an unknown operator is only listed.
NO_KERNEL = {Unknown}


def strided(a):
    """The same values in a non-contiguous array (every other value of a wider buffer), as
    the engine passes views of permuted or sliced tensors."""
    if not isinstance(a, np.ndarray) or a.ndim == 0:
        return a
    wide = np.empty((*a.shape, 2), dtype=a.dtype)
    wide[..., 0] = a
    return wide[..., 0]


def check(op: Op, inputs: list, weights: dict | None = None) -> None:
    """Both kernel paths equal the oracle: same shape, same dtype kind, values to 1e-9; the
    compiled path also on non-contiguous inputs."""
    weights = weights or {}
    expected = op.torch_oracle(inputs, weights).detach().numpy()
    runs = [(path, list(inputs)) for path in PATHS]
    runs.append(("compiled on views", [strided(a) for a in inputs]))
    for path, arrays in runs:
        got = np.asarray(getattr(op, path.split()[0])(arrays, dict(weights)))
        assert got.shape == expected.shape, (path, op, got.shape, expected.shape)
        assert got.dtype.kind == expected.dtype.kind, (path, op, got.dtype, expected.dtype)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-10, err_msg=f"{path} {op}")


def values(draw, shape, dtype=np.float64, low=-3.0, high=3.0) -> np.ndarray:
    """A seeded array (hypothesis draws the seed, so failures replay)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if np.dtype(dtype).kind in "iu":
        return rng.integers(int(low), int(high) + 1, size=shape).astype(dtype)
    return rng.uniform(low, high, size=shape).astype(dtype)


def shapes(rank_min=0, rank_max=4, size_max=4):
    return st.lists(st.integers(1, size_max), min_size=rank_min, max_size=rank_max).map(tuple)


# --- element-wise -------------------------------------------------------------------------
@st.composite
def activation_cases(draw):
    function = draw(st.sampled_from(sorted(ACTIVATIONS)))
    params: dict[str, object] = {}
    for name in ACTIVATION_PARAMETERS.get(function, {}):
        if function == "relu6":
            continue
        if name == "approximate":
            params[name] = draw(st.sampled_from(["none", "tanh"]))
        elif name in ("lower", "upper"):
            bound = st.floats(-2, 2).map(lambda v: round(v, 2))
            params[name] = draw(st.none() | bound if function == "clamp" else bound)
        elif name == "threshold":
            params[name] = draw(st.sampled_from([20.0, 1.0, 3.5]))
        else:
            params[name] = draw(st.floats(0.05, 2.5).map(lambda v: round(v, 3)))
    if function == "hardtanh" and params["lower"] > params["upper"]:
        params["lower"], params["upper"] = params["upper"], params["lower"]
    integer = function in INTEGER_ACTIVATIONS and draw(st.booleans())
    if integer and function in ("hardtanh", "clamp"):
        as_type = draw(st.sampled_from([int, float]))  # int bounds keep integers integer
        params = {k: (None if v is None else as_type(int(v))) for k, v in params.items()}
    positive = function in ("log", "sqrt", "rsqrt")
    x = values(
        draw, draw(shapes()), np.int64 if integer else np.float64, 0.1 if positive else -6, 6
    )
    return Activation(function, **params), [x], {}


@st.composite
def broadcast_shapes(draw, count):
    """``count`` shapes that broadcast: each drops leading dims of a base and sets some to 1."""
    base = draw(shapes(0, 4))
    out = []
    for _ in range(count):
        cut = draw(st.integers(0, len(base)))
        out.append(tuple(1 if draw(st.booleans()) else d for d in base[cut:]))
    return out


@st.composite
def binary_cases(draw):
    function = draw(st.sampled_from(sorted(BINARY)))
    integer = function not in ("pow",) and draw(st.booleans())
    dtype = np.int64 if integer else np.float64
    count = 3 if function == "where" else 2
    shape_list = draw(broadcast_shapes(count))
    operands: list = []
    for i, shape in enumerate(shape_list):
        if function == "where" and i == 0:
            operands.append(values(draw, shape, np.int64, 0, 1).astype(bool))
        elif function in ("div", "remainder", "fmod") and i == 1:  # no division by zero
            magnitude = values(draw, shape, dtype, 1, 4)
            operands.append(magnitude * np.where(values(draw, shape, np.int64, 0, 1), 1, -1))
        elif function == "pow" and i == 0:
            operands.append(values(draw, shape, dtype, 0.2, 3))
        else:
            operands.append(values(draw, shape, dtype, -5, 5))
    scalars = []
    first = 1 if function == "where" else 0
    for position in range(first, count):  # some operands become Python constants
        if len(operands) > 1 and draw(st.integers(0, 3)) == 0:
            value = operands.pop(position - len(scalars)).flat[0]
            as_int = integer or draw(st.booleans())  # an int constant with float tensors too
            value = int(value) if as_int else float(value)
            if function in ("div", "remainder", "fmod") and position == 1 and value == 0:
                value = 2
            scalars.append((position, value))
    mode = draw(st.sampled_from([None, "trunc", "floor"])) if function == "div" else None
    op = Binary(function, scalars=tuple(scalars), rounding_mode=mode)
    arrays = [i for i in range(count) if i not in dict(scalars)]
    if len(arrays) > 1 and draw(st.booleans()):  # one operand is a parameter, in its place
        at = draw(st.sampled_from(arrays[1:] if function == "where" else arrays))
        weight = operands.pop(arrays.index(at))
        op = Binary(function, scalars=tuple(scalars), rounding_mode=mode, param_positions=(at,))
        return op, operands, {"weight": weight}
    return op, operands, {}


@st.composite
def softmax_cases(draw):
    shape = draw(shapes(1, 4))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return Softmax(axis=axis, log=draw(st.booleans())), [values(draw, shape)], {}


# --- normalisation and reductions ---------------------------------------------------------
@st.composite
def norm_cases(draw):
    function = draw(
        st.sampled_from(sorted(["batchnorm", "layernorm", "groupnorm", "instancenorm"]))
    )
    n, spatial = draw(st.integers(1, 3)), draw(shapes(0 if function == "batchnorm" else 1, 3))
    groups = draw(st.integers(1, 3))
    c = groups * draw(st.integers(1, 3)) if function == "groupnorm" else draw(st.integers(1, 4))
    per_statistic = prod(spatial) * (c // groups if function == "groupnorm" else 1)
    if function in ("groupnorm", "instancenorm") and per_statistic < 2:
        spatial = (*spatial[:-1], 2)  # PyTorch refuses statistics of a single value
    x = values(draw, (n, c, *spatial))
    eps = draw(st.sampled_from([1e-5, 1e-3, 0.1]))
    affine = draw(st.booleans())
    if function == "layernorm":
        normalized = x.shape[len(x.shape) - draw(st.integers(1, min(2, x.ndim))) :]
        weights = {"weight": values(draw, normalized), "bias": values(draw, normalized)}
        op = Norm("layernorm", normalized_shape=tuple(normalized), eps=eps)
        return op, [x], weights if affine else {}
    weights = {"weight": values(draw, (c,)), "bias": values(draw, (c,))} if affine else {}
    stats: tuple[str, ...] = ()
    if function == "batchnorm" or (function == "instancenorm" and draw(st.booleans())):
        stats = ("layer.running_mean", "layer.running_var")
        weights |= {
            "running_mean": values(draw, (c,)),
            "running_var": values(draw, (c,), low=0.01, high=3),
        }
    op = Norm(function, groups=groups if function == "groupnorm" else 1, eps=eps, stats=stats)
    assert set(op.buffers()) <= set(weights)
    return op, [x], weights


@st.composite
def reduce_cases(draw):
    # every reduction the IR knows, so one added later is checked against its oracle too
    function = draw(st.sampled_from(sorted(REDUCTIONS)))
    shape = draw(shapes(1, 4))
    integer = function in ("sum", "amax", "amin", "prod", "argmax") and draw(st.booleans())
    dims = tuple(
        draw(
            st.lists(
                st.integers(-len(shape), len(shape) - 1),
                max_size=1 if function.startswith("arg") else 3,
                unique_by=lambda d: d % len(shape),
            )
        )
    )
    reduced = prod(shape[d] for d in dims) if dims else prod(shape)
    correction = draw(st.sampled_from([0, 1])) if reduced > 1 else 0
    x = values(draw, shape, np.int64 if integer else np.float64, -3, 3)
    if function.startswith("arg") and not integer and draw(st.booleans()):
        x = np.round(x)  # ties, so the first or last of equal extremes matters
    op = Reduce(
        function,
        dims=dims,
        keepdim=draw(st.booleans()),
        correction=correction,
        p=draw(st.sampled_from([1.0, 2.0, 3.0])),
        select_last=function.startswith("arg") and draw(st.booleans()),
    )
    return op, [x], {}


# --- products -----------------------------------------------------------------------------
@st.composite
def matmul_cases(draw):
    m, k, n = (draw(st.integers(1, 5)) for _ in range(3))
    lead_a, lead_b = draw(broadcast_shapes(2))
    lead_a, lead_b = lead_a[-2:], lead_b[-2:]
    a_shape = (k,) if draw(st.integers(0, 4)) == 0 else (*lead_a, m, k)
    b_shape = (k,) if draw(st.integers(0, 4)) == 0 else (*lead_b, k, n)
    dtype = np.int64 if draw(st.integers(0, 3)) == 0 else np.float64
    a, b = values(draw, a_shape, dtype), values(draw, b_shape, dtype)
    form = draw(st.sampled_from(["inputs", "weight", "weight_t"]))
    if form == "inputs" or len(b_shape) != 2:
        return MatMul(), [a, b], {}
    if form == "weight":
        return MatMul(weight_operand=1), [a], {"weight": b}
    return MatMul(weight_operand=1, weight_transposed=True), [a], {"weight": b.T.copy()}


@st.composite
def attention_cases(draw):
    lead = draw(broadcast_shapes(3))
    lead = [s[-2:] for s in lead]  # at most two leading dimensions, still broadcasting
    length, source, e, ev = (draw(st.integers(1, 5)) for _ in range(4))
    q = values(draw, (*lead[0], length, e))
    k = values(draw, (*lead[1], source, e))
    v = values(draw, (*lead[2], source, ev))
    causal = draw(st.booleans())
    mask_kind = draw(st.sampled_from([None, "bool", "float"]))
    inputs = [q, k, v]
    if mask_kind:
        wider = [(1, length, source)] if q.ndim > 2 else []  # never of higher rank than q
        shape = draw(st.sampled_from([(length, source), *wider]))
        mask = (
            values(draw, shape, np.int64, 0, 1).astype(bool)
            if mask_kind == "bool"
            else values(draw, shape)
        )
        inputs.append(mask)
    scale = draw(st.sampled_from([None, 0.25, 1.5]))
    op = Attention(causal=causal, has_mask=mask_kind is not None, scale=scale)
    return op, inputs, {}


@st.composite
def grouped_attention_cases(draw):
    """Grouped-query attention: 2 key/value heads serving 2 or 4 query heads (4-d, as torch)."""
    batch, kv_heads, group = draw(st.integers(1, 2)), 2, draw(st.sampled_from([1, 2]))
    length, source, e = (draw(st.integers(1, 4)) for _ in range(3))
    q = values(draw, (batch, kv_heads * group, length, e))
    k, v = (values(draw, (batch, kv_heads, source, e)) for _ in range(2))
    return Attention(causal=draw(st.booleans()), enable_gqa=True), [q, k, v], {}


@st.composite
def any_attention_cases(draw):
    return draw(attention_cases() | grouped_attention_cases())


@st.composite
def linear_cases(draw):
    x = values(draw, (*draw(shapes(0, 2)), draw(st.integers(1, 6))))
    out = draw(st.integers(1, 5))
    weights = {"weight": values(draw, (out, x.shape[-1]))}
    if draw(st.booleans()):
        weights["bias"] = values(draw, (out,))
    return Linear(), [x], weights


@st.composite
def conv_cases(draw):
    """1-3-d convolutions and transposed convolutions (2-d plain ones are in test_kernels)."""
    dims = draw(st.integers(1, 3))
    transposed = draw(st.booleans())
    groups = draw(st.sampled_from([1, 2]))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    sizes = tuple(draw(st.integers(1, 5)) for _ in range(dims))
    if transposed:  # PyTorch: output_padding < stride or dilation, even padding
        pads = tuple((p, p) for p in (draw(st.integers(0, 2)) for _ in range(dims)))
        extra = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
        weight_shape = (cin, cout // groups, *kernel)
    else:  # padding beyond half the kernel, and uneven
        pads = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(dims))
        extra = (0,) * dims
        sizes = tuple(
            max(s, d * (k - 1) + 1 - b - e)
            for s, d, k, (b, e) in zip(sizes, dilation, kernel, pads)
        )
        weight_shape = (cout, cin // groups, *kernel)
    op = Conv(
        stride=stride,
        padding=pads,
        dilation=dilation,
        groups=groups,
        transposed=transposed,
        output_padding=extra,
    )
    x = values(draw, (draw(st.integers(1, 2)), cin, *sizes))
    weights = {"weight": values(draw, weight_shape)}
    if draw(st.booleans()):
        weights["bias"] = values(draw, (cout,))
    try:
        op.output_shape([x.shape], {r: w.shape for r, w in weights.items()})
    except ShapeError:  # an empty output (transposed, padding larger than the reach)
        reject()
    return op, [x], weights


# --- pooling ------------------------------------------------------------------------------
@st.composite
def pool_cases(draw):
    dims = draw(st.integers(1, 3))
    mode = draw(st.sampled_from(["max", "avg"]))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) if mode == "max" else 1 for _ in range(dims))
    pads = tuple(draw(st.integers(0, k // 2)) for k in kernel)  # PyTorch: at most half
    # PyTorch's 3-d average pooling wants the window inside the unpadded input
    inside = dims == 3 and mode == "avg"
    sizes = tuple(
        max(draw(st.integers(1, 6)), d * (k - 1) + 1 - (0 if inside else 2 * p))
        for k, d, p in zip(kernel, dilation, pads)
    )
    op = Pool(
        mode=mode,
        kernel=kernel,
        stride=stride,
        padding=tuple((p, p) for p in pads),
        dilation=dilation,
        ceil_mode=draw(st.booleans()),
        count_include_pad=draw(st.booleans()),
    )
    return op, [values(draw, (draw(st.integers(1, 2)), draw(st.integers(1, 3)), *sizes))], {}


@st.composite
def adaptive_cases(draw):
    dims = draw(st.integers(1, 3))
    sizes = tuple(draw(st.integers(1, 7)) for _ in range(dims))
    out = tuple(draw(st.integers(1, 8)) for _ in range(dims))
    x = values(draw, (draw(st.integers(1, 2)), draw(st.integers(1, 3)), *sizes))
    return AdaptivePool(mode=draw(st.sampled_from(["max", "avg"])), output_size=out), [x], {}


# --- shapes and data movement -------------------------------------------------------------
@st.composite
def reshape_cases(draw):
    x = values(draw, (draw(st.integers(1, 3)), *draw(shapes(1, 3))))
    rest = prod(x.shape[1:])
    first = draw(st.sampled_from([d for d in range(1, rest + 1) if rest % d == 0]))
    target = draw(
        st.sampled_from(
            [(x.shape[0], -1), (x.shape[0], first, -1), (x.shape[0], first, rest // first)]
        )
    )
    return Reshape(shape=target, flatten=len(target) == 2), [x], {}


@st.composite
def permute_cases(draw):
    x = values(draw, draw(shapes(1, 4)))
    dims = draw(st.permutations(range(x.ndim)))
    dims = tuple(d - x.ndim if draw(st.booleans()) else d for d in dims)  # negative axes
    return Permute(dims=dims), [x], {}


@st.composite
def slice_cases(draw):
    x = values(draw, draw(shapes(1, 3, 6)))
    axis = draw(st.integers(-x.ndim, x.ndim - 1))
    size = x.shape[axis]
    if draw(st.booleans()):  # a select (the axis disappears)
        start = draw(st.integers(-size, size - 1))
        return Slice(axis=axis, start=start, stop=start + 1, keep_dim=False), [x], {}
    step = draw(st.sampled_from([1, 2, 3, -1, -2]))
    start, stop = draw(st.integers(-size - 1, size + 1)), draw(st.integers(-size - 1, size + 1))
    return Slice(axis=axis, start=start, stop=stop, step=step), [x], {}


@st.composite
def expand_cases(draw):
    x = values(draw, draw(shapes(0, 3)))
    target = tuple(
        draw(st.integers(1, 3)) if d == 1 else draw(st.sampled_from([d, -1])) for d in x.shape
    )
    lead = tuple(draw(shapes(0, 2)))
    return Expand(shape=(*lead, *target)), [x], {}


@st.composite
def concat_cases(draw):
    base = draw(shapes(1, 4))
    axis = draw(st.integers(-len(base), len(base) - 1))
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        shape = list(base)
        shape[axis] = draw(st.integers(1, 3))
        parts.append(values(draw, tuple(shape)))
    return Concat(axis=axis), parts, {}


@st.composite
def copy_cases(draw):
    op = draw(st.sampled_from([Copy(), Dropout(p=0.3)]))
    return op, [values(draw, draw(shapes()))], {}


@st.composite
def embedding_cases(draw):
    rows, dim = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    indices = values(draw, draw(shapes(0, 3)), np.int64, 0, rows - 1)
    return Embedding(), [indices], {"weight": values(draw, (rows, dim))}


@st.composite
def gather_cases(draw):
    x = values(draw, draw(shapes(1, 3, 5)))
    axis = draw(st.integers(-x.ndim, x.ndim - 1))
    size = x.shape[axis]
    index_shape = draw(shapes(0, 2))
    indices = values(draw, index_shape, np.int64, -size, size - 1)  # negatives count back
    source = draw(st.sampled_from(["constant", "buffer", "input"]))
    if source == "constant":
        op = Gather(
            axis=axis,
            index_values=tuple(int(i) for i in indices.reshape(-1)),
            index_shape=index_shape,
        )
        return op, [x], {}
    if source == "buffer":
        return Gather(axis=axis), [x], {"indices": indices}
    return Gather(axis=axis), [x, indices], {}


@st.composite
def pad_cases(draw):
    mode = draw(st.sampled_from(["constant", "reflect", "replicate", "circular"]))
    x = values(draw, draw(shapes(1, 4, 4)), np.int64 if draw(st.booleans()) else np.float64)
    pads = []
    for axis, size in enumerate(x.shape):
        if mode != "constant" and axis < x.ndim - 3:  # PyTorch pads the last 3 at most
            pair = (0, 0)
        elif mode == "constant":
            pair = (draw(st.integers(-size + 1, 3)), draw(st.integers(0, 3)))
        elif mode == "reflect":
            pair = (draw(st.integers(0, size - 1)), draw(st.integers(0, size - 1)))
        else:  # replicate, circular: PyTorch pads at most the input size circularly
            pair = (draw(st.integers(0, size)), draw(st.integers(0, size)))
        pads.append(pair)
    value = float(draw(st.integers(-2, 2)))
    return Pad(pads=tuple(pads), mode=mode, value=value), [x], {}


@st.composite
def roll_cases(draw):
    x = values(draw, draw(shapes(1, 3)))
    if draw(st.booleans()):
        return Roll(shifts=(draw(st.integers(-9, 9)),)), [x], {}
    dims = tuple(draw(st.lists(st.integers(-x.ndim, x.ndim - 1), min_size=1, max_size=2)))
    shifts = tuple(draw(st.integers(-9, 9)) for _ in dims)
    return Roll(shifts=shifts, dims=dims), [x], {}


@st.composite
def resize_cases(draw):
    dims = draw(st.integers(1, 3))
    mode = draw(st.sampled_from(["nearest", "linear"]))
    sizes = tuple(draw(st.integers(1, 5)) for _ in range(dims))
    x = values(draw, (1, draw(st.integers(1, 2)), *sizes))
    if draw(st.booleans()):  # a scale factor (it sets the coordinate mapping)
        scales = tuple(draw(st.sampled_from([0.5, 1.5, 2.0, 3.0])) for _ in range(dims))
        out = tuple(int(s * f) for s, f in zip(sizes, scales))
        if min(out) < 1:
            reject()
        torch_mode = "nearest" if mode == "nearest" else "linear"
        return Resize.from_torch(torch_mode, out, scales, False), [x], {}
    out = tuple(draw(st.integers(1, 7)) for _ in range(dims))
    torch_mode = draw(
        st.sampled_from(["nearest", "nearest-exact"] if mode == "nearest" else ["linear"])
    )
    corners = mode == "linear" and draw(st.booleans())
    return Resize.from_torch(torch_mode, out, None, corners), [x], {}


@st.composite
def cumsum_cases(draw):
    x = values(draw, draw(shapes(1, 3, 5)), np.int64 if draw(st.booleans()) else np.float64)
    op = CumSum(
        axis=draw(st.integers(-x.ndim, x.ndim - 1)),
        exclusive=draw(st.booleans()),
        reverse=draw(st.booleans()),
    )
    return op, [x], {}


@st.composite
def recurrent_layers(draw):
    """A recurrent layer or cell, its operands (sequence, then h0 and c0 when drawn) and its
    weights by PyTorch name: 1 or 2 layers, both directions, batch_first, LSTM projections,
    unbatched inputs, bias-free modules."""
    mode = draw(st.sampled_from(["rnn_tanh", "rnn_relu", "gru", "lstm"]))
    cell = draw(st.booleans())
    hidden = draw(st.integers(1, 4))
    features = draw(st.integers(1, 4))
    proj = draw(st.integers(0, hidden - 1)) if mode == "lstm" and not cell else 0
    layers = 1 if cell else draw(st.integers(1, 2))
    op = Recurrent(
        mode=mode,
        hidden_size=hidden,
        num_layers=layers,
        cell=cell,
        bidirectional=not cell and draw(st.booleans()),
        batch_first=not cell and draw(st.booleans()),
        proj_size=proj,
    )
    batched = draw(st.booleans())
    n, t = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    if cell:
        x_shape = (n, features) if batched else (features,)
    else:
        x_shape = (
            ((n, t, features) if op.batch_first else (t, n, features))
            if batched
            else (t, features)
        )
    x = values(draw, x_shape, low=-1.5, high=1.5)
    gates = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}[mode] * hidden
    out = proj or hidden
    bias = draw(st.booleans())
    weights = {}
    for layer in range(layers):
        width = features if layer == 0 else op.directions * out
        for reverse in (False, True)[: op.directions]:
            role = functools.partial(op.role, layer=layer, reverse=reverse)
            weights[role("weight_ih")] = values(draw, (gates, width), low=-1, high=1)
            weights[role("weight_hh")] = values(draw, (gates, out), low=-1, high=1)
            if bias:
                weights[role("bias_ih")] = values(draw, (gates,), low=-1, high=1)
                weights[role("bias_hh")] = values(draw, (gates,), low=-1, high=1)
            if proj:
                weights[role("weight_hr")] = values(draw, (proj, hidden), low=-1, high=1)
    inputs = [x]
    if draw(st.booleans()):
        count = layers * op.directions
        lead = ((n,) if batched else ()) if cell else ((count, n) if batched else (count,))
        inputs.append(values(draw, (*lead, out), low=-1, high=1))
        if mode == "lstm":
            inputs.append(values(draw, (*lead, hidden), low=-1, high=1))
    return op, inputs, weights


@st.composite
def recurrent_cases(draw):
    return draw(recurrent_layers())


@st.composite
def recurrent_state_cases(draw):
    """A final state (h_n, c_n; a cell's h or c) computed from its layer's operands."""
    layer, inputs, weights = draw(recurrent_layers())
    names = ["h", "c"] if layer.cell else ["h_n", "c_n"]
    which = draw(st.sampled_from(names if layer.mode == "lstm" else names[:1]))
    return RecurrentState(which=which, recurrent=layer), inputs, weights


@st.composite
def constant_cases(draw):
    dtype = draw(st.sampled_from([np.float64, np.int64]))
    value = values(draw, draw(shapes(0, 3)), dtype)
    form = draw(st.sampled_from(["buffer", "reshaped buffer", "computed"]))
    if form == "computed":  # values kept in the operator (a mask made of literals)
        return Constant.of(value), [], {}
    if form == "reshaped buffer":  # buffer.view(-1) read by a layer
        return Constant(shape=(value.size,), source="buffer"), [], {"value": value}
    return Constant(shape=value.shape, source="buffer"), [], {"value": value}


def test_a_computed_constant_gives_back_its_values_bit_for_bit():
    mask = np.array([[0.0, -100.0], [np.nan, 1e-30]], dtype=np.float32)
    assert Constant.of(mask).reference([], {}).tobytes() == mask.tobytes()  # NaN kept too
    np.testing.assert_array_equal(Constant.of(mask.T).reference([], {}), mask.T)  # a view
    assert Constant.of(mask) != Constant.of(mask + 1)  # values are part of the operator
    with pytest.raises(ValueError, match="holds 16 bytes"):
        Constant(shape=(2, 2), dtype="<f4", data=b"")


CASES = {
    Activation: activation_cases,
    Binary: binary_cases,
    Softmax: softmax_cases,
    Norm: norm_cases,
    Reduce: reduce_cases,
    MatMul: matmul_cases,
    Attention: any_attention_cases,
    Linear: linear_cases,
    Conv: conv_cases,
    Pool: pool_cases,
    AdaptivePool: adaptive_cases,
    Reshape: reshape_cases,
    Permute: permute_cases,
    Slice: slice_cases,
    Expand: expand_cases,
    Concat: concat_cases,
    Copy: copy_cases,
    Dropout: copy_cases,
    Embedding: embedding_cases,
    Gather: gather_cases,
    Pad: pad_cases,
    Roll: roll_cases,
    Resize: resize_cases,
    CumSum: cumsum_cases,
    Recurrent: recurrent_cases,
    RecurrentState: recurrent_state_cases,
    Constant: constant_cases,
}

#: Examples per operator: enough to meet every branch of the strategies above on a few
#: seeds, few enough that the whole file stays near a minute on two cores.
EXAMPLES = {Activation: 60, Binary: 60, Conv: 30, Norm: 25, Reduce: 30, Attention: 25}


def test_every_operator_has_oracle_cases():
    """A new operator in the registry without a strategy here (or an oracle) fails."""
    registered = set(REGISTRY.values()) - NO_KERNEL
    assert registered <= set(CASES), sorted(c.__name__ for c in registered - set(CASES))
    for cls in registered:
        assert cls.has_kernel(), cls.__name__
        assert cls.torch_oracle is not Op.torch_oracle, f"{cls.__name__} has no oracle"


@pytest.mark.parametrize("cls", sorted(CASES, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_kernels_agree_with_the_oracle(cls):
    @settings(
        max_examples=EXAMPLES.get(cls, 15),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=CASES[cls]())
    def agree(case):
        op, inputs, weights = case
        assert (
            op.kernel_gap(
                [np.shape(a) for a in inputs], {r: np.shape(w) for r, w in weights.items()}
            )
            is None
        )
        check(op, inputs, weights)

    agree()


# --- hand-picked cases the strategies may not reach ---------------------------------------
def test_integer_division_truncates_like_onnx_and_torch():
    # -7 / 2 = -3.5: trunc -3 (C, ONNX Div on integers), floor -4 (Python //), true -3.5
    a, b = np.array([-7, 7, -7, 7]), np.array([2, 2, -2, -2])
    assert Binary("div", rounding_mode="trunc").compiled([a, b], {}).tolist() == [-3, 3, 3, -3]
    assert Binary("div", rounding_mode="floor").compiled([a, b], {}).tolist() == [-4, 3, 3, -4]
    assert Binary("div").compiled([a, b], {}).tolist() == [-3.5, 3.5, 3.5, -3.5]
    check(Binary("div", rounding_mode="trunc"), [a, b])


def test_scalar_constant_keeps_its_place_and_type():
    x = np.array([[1, 2], [3, 4]])
    check(Binary("sub", scalars=((0, 10),)), [x])  # 10 - x, integers stay integers
    check(Binary("mul", scalars=((1, 0.5),)), [x])  # int tensor * 0.5 -> float32 in torch
    check(Binary("where", scalars=((2, 0.0),)), [x > 2, x.astype(float)])


def test_activation_parameters_are_kept_and_defaults_filled():
    assert Activation("leaky_relu") == Activation("leaky_relu", alpha=0.01)
    assert Activation("hardsigmoid").alpha == pytest.approx(1 / 6)
    assert Activation("gelu").approximate == "none"
    with pytest.raises(ValueError, match="takes no parameter"):
        Activation("relu", alpha=0.1)
    onnx_hardsigmoid = Activation("hardsigmoid", alpha=0.2, beta=0.5)  # ONNX's defaults
    check(onnx_hardsigmoid, [np.linspace(-4, 4, 17)])


def test_attention_query_that_sees_no_key_gives_zeros():
    q, k, v = np.ones((1, 2, 3)), np.ones((1, 4, 3)), np.arange(8.0).reshape(1, 4, 2)
    mask = np.array([[True] * 4, [False] * 4])
    check(Attention(has_mask=True), [q, k, v, mask])


def test_gaps_are_reported_per_node():
    assert Binary("mul").kernel_gap([(2, 3)], {}) is not None  # the constant was lost
    assert Binary("mul", scalars=((1, 2.0),)).kernel_gap([(2, 3)], {}) is None
    assert Expand(shape=(2, 3)).kernel_gap([], {}) is not None
    assert Unknown(target="aten.foo").kernel_gap([(1,)], {}) is not None
    assert Norm("batchnorm", stats=("m", "v")).buffers() == {
        "running_mean": "m",
        "running_var": "v",
    }


# --- counts of the new operators, by hand -------------------------------------------------
def test_counts_of_data_movement_operators():
    # gather rows 1 and 3 of a (2, 5, 4) tensor along axis 1: output (2, 2, 4) = 16 values;
    # moved = 2 indices read + 16 picked values read + 16 written = 34; no MACs
    gather = Gather(axis=1)
    assert gather.output_shape([(2, 5, 4), (2,)], {}) == (2, 2, 4)
    assert gather.values_moved([(2, 5, 4), (2,)], (2, 2, 4), {}) == 34
    assert gather.macs([(2, 5, 4), (2,)], (2, 2, 4), {}) == 0
    # pad (1, 3, 4, 4) by 1 on each side of H and W: (1, 3, 6, 6); moved 48 + 108 = 156
    pad = Pad(pads=((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    assert pad.output_shape([(1, 3, 4, 4)], {}) == (1, 3, 6, 6)
    assert pad.values_moved([(1, 3, 4, 4)], (1, 3, 6, 6), {}) == 48 + 108
    # bilinear x2 of (1, 2, 3, 5): (1, 2, 6, 10); moved 30 + 120 = 150
    resize = Resize("linear", (6, 10), scales=(2.0, 2.0))
    assert resize.values_moved([(1, 2, 3, 5)], (1, 2, 6, 10), {}) == 150
    assert Roll(shifts=(1,), dims=(1,)).values_moved([(2, 7)], (2, 7), {}) == 28


def test_counts_of_3d_and_transposed_convolution():
    # conv3d: (1, 4, 5, 6, 7) * weight (6, 2, 3, 2, 3), groups 2, no padding:
    # out (1, 6, 3, 5, 5); MACs = 6*3*5*5 outputs * (2*3*2*3 = 36) = 450 * 36 = 16,200
    conv = Conv(
        stride=(1, 1, 1),
        padding=((0, 0),) * 3,
        dilation=(1, 1, 1),
        groups=2,
        output_padding=(0, 0, 0),
    )
    params = {"weight": (6, 2, 3, 2, 3)}
    out = conv.output_shape([(1, 4, 5, 6, 7)], params)
    assert out == (1, 6, 3, 5, 5)
    assert conv.macs([(1, 4, 5, 6, 7)], out, params) == 16_200
    # transposed 2-d, stride 2: (1, 3, 4, 4) * weight (3, 5, 3, 3): out (1, 5, 9, 9)
    # ((4-1)*2 + 3 = 9); MACs = every input value (3*4*4 = 48) through 5*3*3 taps = 2,160
    up = Conv(stride=(2, 2), padding=((0, 0), (0, 0)), dilation=(1, 1), transposed=True)
    out = up.output_shape([(1, 3, 4, 4)], {"weight": (3, 5, 3, 3)})
    assert out == (1, 5, 9, 9)
    assert up.macs([(1, 3, 4, 4)], out, {"weight": (3, 5, 3, 3)}) == 2_160


def test_counts_of_broadcast_matmul_and_grouped_attention():
    # (2, 1, 3, 4) @ (5, 4, 6): leading dims broadcast to (2, 5) -> out (2, 5, 3, 6),
    # 2*5*3*6 = 180 outputs, each a 4-term dot product: 720 MACs
    mm = MatMul()
    out = mm.output_shape([(2, 1, 3, 4), (5, 4, 6)], {})
    assert out == (2, 5, 3, 6)
    assert mm.macs([(2, 1, 3, 4), (5, 4, 6)], out, {}) == 720
    # grouped-query: 4 query heads on 2 key/value heads, L=3, S=5, E=Ev=8:
    # 4 heads * 3 * 5 * (8 + 8) = 960 MACs (q k^T, then scores v)
    attention = Attention(enable_gqa=True)
    shapes_in = [(1, 4, 3, 8), (1, 2, 5, 8), (1, 2, 5, 8)]
    out = attention.output_shape(shapes_in, {})
    assert out == (1, 4, 3, 8)
    assert attention.macs(shapes_in, out, {}) == 960


def onnxruntime_single(op_type: str, inputs: list[np.ndarray], **attrs) -> np.ndarray:
    """One ONNX node run by onnxruntime (the ONNX side's truth)."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import helper

    names = [f"x{i}" for i in range(len(inputs))]
    types = {
        np.dtype(np.int64): onnx.TensorProto.INT64,
        np.dtype(np.float64): onnx.TensorProto.DOUBLE,
        np.dtype(np.float32): onnx.TensorProto.FLOAT,
    }
    node = helper.make_node(op_type, names, ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "one",
        [helper.make_tensor_value_info(n, types[a.dtype], a.shape) for n, a in zip(names, inputs)],
        [helper.make_tensor_value_info("y", types[inputs[0].dtype], None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString())
    return session.run(None, dict(zip(names, inputs)))[0]


def test_onnx_integer_div_mod_and_hardsigmoid_against_onnxruntime():
    a, b = np.array([-7, 7, -7, 7, 9]), np.array([2, 2, -2, -2, 3])
    # ONNX Div on integers truncates: -7 / 2 = -3
    np.testing.assert_array_equal(
        Binary("div", rounding_mode="trunc").compiled([a, b], {}),
        onnxruntime_single("Div", [a, b]),
    )
    # ONNX Mod (fmod=0) takes the divisor's sign, as Python's %; fmod=1 the dividend's
    np.testing.assert_array_equal(
        Binary("remainder").compiled([a, b], {}), onnxruntime_single("Mod", [a, b])
    )
    np.testing.assert_array_equal(
        Binary("fmod").compiled([a, b], {}), onnxruntime_single("Mod", [a, b], fmod=1)
    )
    x = np.linspace(-5.0, 5.0, 21, dtype=np.float32)  # (onnxruntime has no float64 kernel)
    for alpha, beta in ((0.2, 0.5), (0.3, 0.1)):  # ONNX's default, and another
        np.testing.assert_allclose(
            Activation("hardsigmoid", alpha=alpha, beta=beta).compiled([x], {}),
            onnxruntime_single("HardSigmoid", [x], alpha=alpha, beta=beta),
            rtol=1e-6,
        )


@pytest.mark.parametrize(
    "mode, coordinates, rounding",
    [
        ("nearest", "half_pixel", "round_prefer_floor"),  # ONNX's defaults
        ("nearest", "asymmetric", "ceil"),
        ("nearest", "align_corners", "round_prefer_ceil"),
        ("linear", "pytorch_half_pixel", "floor"),
        ("linear", "asymmetric", "floor"),
    ],
)
def test_onnx_resize_modes_against_onnxruntime(mode, coordinates, rounding):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import helper, numpy_helper

    x = np.random.default_rng(0).standard_normal((1, 2, 3, 5)).astype(np.float32)
    for size in ((7, 2), (1, 9), (3, 5)):
        node = helper.make_node(
            "Resize",
            ["x", "", "", "sizes"],
            ["y"],
            mode=mode,
            coordinate_transformation_mode=coordinates,
            nearest_mode=rounding,
        )
        sizes = numpy_helper.from_array(np.array((1, 2, *size), dtype=np.int64), "sizes")
        graph = helper.make_graph(
            [node],
            "resize",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
            [sizes],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        truth = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
        op = Resize(mode, size, coordinate_mode=coordinates, nearest_mode=rounding)
        for path in PATHS:
            np.testing.assert_allclose(
                getattr(op, path)([x], {}), truth, rtol=1e-5, atol=1e-6, err_msg=f"{path} {size}"
            )
