"""Every loop-nest kernel, both ways (readable reference and Numba-compiled), against
``torch.nn.functional`` computed in float64 (the better truth when summation orders differ).

Hypothesis draws shapes, strides, paddings, dilations, groups and batch sizes; the awkward
cases (1x1 kernels, kernel as large as the padded input, stride larger than the kernel, odd
sizes, a single channel, batch 1) are also pinned as explicit examples.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from dnnlens.errors import ShapeError
from dnnlens.ops import Activation, AdaptivePool, Binary, Conv, Linear, Pool, Reshape, Softmax
from dnnlens.ops.base import Op

PATHS = ("reference", "compiled")
FAST = settings(max_examples=30, deadline=None)


def run(op: Op, path: str, inputs: list[np.ndarray], weights: dict | None = None) -> np.ndarray:
    return getattr(op, path)(inputs, weights or {})


def assert_matches(
    op: Op, inputs: list[np.ndarray], weights: dict, truth: torch.Tensor, atol: float = 1e-10
) -> None:
    """The oracle: both kernel paths on the same float64 arrays equal torch's result."""
    expected = truth.detach().numpy()
    for path in PATHS:
        got = run(op, path, inputs, weights)
        assert got.shape == expected.shape, (path, got.shape, expected.shape)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=atol, err_msg=path)


def random(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


# --- convolution --------------------------------------------------------------------------
@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = groups * draw(st.integers(1, 3))
    depthwise = groups > 1 and draw(st.booleans())
    if depthwise:  # one input channel per group
        cin = groups
    cout = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(2))
    sizes = []
    for k, d, (pb, pe) in zip((kh, kw), dilation, padding):
        reach = d * (k - 1) + 1
        sizes.append(draw(st.integers(max(1, reach - pb - pe), max(1, reach - pb - pe) + 6)))
    batch = draw(st.integers(1, 3))
    return dict(
        batch=batch,
        cin=cin,
        cout=cout,
        kernel=(kh, kw),
        size=tuple(sizes),
        stride=stride,
        dilation=dilation,
        padding=padding,
        groups=groups,
        bias=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def check_conv(case: dict) -> None:
    rng = np.random.default_rng(case["seed"])
    x = random(rng, case["batch"], case["cin"], *case["size"])
    weight = random(rng, case["cout"], case["cin"] // case["groups"], *case["kernel"])
    weights = {"weight": weight}
    if case["bias"]:
        weights["bias"] = random(rng, case["cout"])
    op = Conv(
        stride=case["stride"],
        padding=case["padding"],
        dilation=case["dilation"],
        groups=case["groups"],
    )
    (top, bottom), (left, right) = case["padding"]
    padded = F.pad(torch.from_numpy(x), (left, right, top, bottom))  # F.pad: last dim first
    bias = torch.from_numpy(weights["bias"]) if case["bias"] else None
    truth = F.conv2d(
        padded,
        torch.from_numpy(weight),
        bias,
        stride=case["stride"],
        dilation=case["dilation"],
        groups=case["groups"],
    )
    assert_matches(op, [x], weights, truth)


def conv_case(**overrides) -> dict:
    case = dict(
        batch=1,
        cin=1,
        cout=1,
        kernel=(3, 3),
        size=(5, 5),
        stride=(1, 1),
        dilation=(1, 1),
        padding=((0, 0), (0, 0)),
        groups=1,
        bias=True,
        seed=0,
    )
    case.update(overrides)
    return case


@FAST
@given(conv_cases())
@example(conv_case(kernel=(1, 1), cin=3, cout=2, size=(4, 7)))  # 1x1 kernel
@example(conv_case(kernel=(5, 3), size=(3, 1), padding=((1, 1), (1, 1))))  # kernel = padded input
@example(conv_case(kernel=(2, 2), stride=(3, 4), size=(9, 11)))  # stride larger than the kernel
@example(conv_case(kernel=(5, 5), padding=((2, 2), (2, 2)), size=(28, 28), cout=4))  # conv1
@example(conv_case(cin=4, cout=4, groups=4, size=(7, 6), stride=(2, 2)))  # depthwise, strided
@example(conv_case(batch=3, kernel=(3, 2), dilation=(2, 3), size=(9, 8), bias=False))
def test_conv2d_matches_torch(case):
    check_conv(case)


def test_conv1d_matches_torch():
    rng = np.random.default_rng(1)
    x, weight, bias = random(rng, 2, 4, 13), random(rng, 6, 2, 3), random(rng, 6)
    op = Conv(stride=(2,), padding=((1, 1),), dilation=(2,), groups=2)
    truth = F.conv1d(
        torch.from_numpy(x),
        torch.from_numpy(weight),
        torch.from_numpy(bias),
        stride=2,
        padding=1,
        dilation=2,
        groups=2,
    )
    assert_matches(op, [x], {"weight": weight, "bias": bias}, truth)


def test_conv_float32_stays_float32_and_close():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3, 12, 12)).astype(np.float32)
    weight = rng.standard_normal((5, 3, 5, 5)).astype(np.float32)
    op = Conv(padding=((2, 2), (2, 2)))
    truth = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(weight).double(), padding=2)
    for path in PATHS:
        got = run(op, path, [x], {"weight": weight})
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, truth.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("path", PATHS)
def test_conv_channel_mismatch_names_both_shapes(path):
    op = Conv(padding=((1, 1), (1, 1)))
    with pytest.raises(ShapeError, match=r"\(2, 3, 8, 8\).*\(4, 2, 3, 3\)"):
        run(op, path, [np.zeros((2, 3, 8, 8))], {"weight": np.zeros((4, 2, 3, 3))})


def test_four_dimensional_conv_has_no_kernel():
    """Transposed and 3-d convolutions have kernels now (tests/test_op_oracles.py); a 4-d
    one does not, and both the per-node check and the kernel say so."""
    op = Conv(stride=(1,) * 4, padding=((0, 0),) * 4, dilation=(1,) * 4, output_padding=(0,) * 4)
    x, w = np.zeros((1, 2, 3, 3, 3, 3)), np.zeros((2, 2, 1, 1, 1, 1))
    assert "4-d conv" in op.kernel_gap([x.shape], {"weight": w.shape})
    with pytest.raises(NotImplementedError, match="4-d conv"):
        op.reference([x], {"weight": w})


# --- linear -------------------------------------------------------------------------------
@FAST
@given(
    lead=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    batch=st.integers(1, 20),
    features=st.tuples(st.integers(1, 40), st.integers(1, 12)),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
@example(lead=[], batch=1, features=(1, 1), bias=True, seed=0)
@example(lead=[], batch=17, features=(392, 10), bias=True, seed=0)  # more rows than a block
def test_linear_matches_torch(lead, batch, features, bias, seed):
    rng = np.random.default_rng(seed)
    in_features, out_features = features
    x = random(rng, batch, *lead, in_features)
    weights = {"weight": random(rng, out_features, in_features)}
    if bias:
        weights["bias"] = random(rng, out_features)
    truth = F.linear(
        torch.from_numpy(x),
        torch.from_numpy(weights["weight"]),
        torch.from_numpy(weights["bias"]) if bias else None,
    )
    assert_matches(Linear(), [x], weights, truth)


def _fc_truth(x, weight, bias, relu):
    """PyTorch's fc (and ReLU) in float64."""
    t = F.linear(*(torch.from_numpy(np.asarray(a, np.float64)) for a in (x, weight, bias)))
    return (t.relu() if relu else t).numpy()


def _assert_fc_kernel_matches_torch(kernel_name, x, weight, bias, relu):
    """The fc bound for ``x``'s rows takes the kernel ``kernel_name`` and matches PyTorch
    (float64) in float64 and float32."""
    from dnnlens.ops.linear import bind_linear

    truth = _fc_truth(x, weight, bias, relu)
    for dtype, tolerance in ((np.float64, 1e-9), (np.float32, 1e-4)):
        w, b = weight.astype(dtype), bias.astype(dtype)
        launch = bind_linear(x.shape[0], np.dtype(dtype), w, b, relu)
        assert launch.kernel.py_func.__name__.startswith(kernel_name)
        got = launch(x.astype(dtype))
        np.testing.assert_allclose(got, truth, rtol=tolerance, atol=tolerance, err_msg=dtype)


@FAST
@given(
    rows=st.integers(1, 3),
    in_features=st.integers(1, 300),
    out_features=st.integers(64, 300),
    zeros=st.floats(0.0, 1.0),
    relu=st.booleans(),
    seed=st.integers(0, 2**16),
)
@example(rows=1, in_features=392, out_features=256, zeros=0.3, relu=True, seed=0)  # course fc1
@example(rows=1, in_features=392, out_features=256, zeros=1.0, relu=False, seed=0)  # all zero
@example(rows=2, in_features=17, out_features=129, zeros=0.0, relu=False, seed=1)  # no zero
@example(rows=3, in_features=1, out_features=64, zeros=0.5, relu=True, seed=2)
def test_fc_skipping_zero_inputs_matches_torch(rows, in_features, out_features, zeros, relu, seed):
    """A few rows with zeros in them (as after a ReLU) take the kernel that skips the zero
    inputs' weights; whole output blocks of 128, a part block and one past it included."""
    rng = np.random.default_rng(seed)
    x = np.abs(random(rng, rows, in_features)) * (rng.random((rows, in_features)) >= zeros)
    weight, bias = random(rng, out_features, in_features), random(rng, out_features)
    _assert_fc_kernel_matches_torch("linear_skipping_zeros", x, weight, bias, relu)


@FAST
@given(
    rows=st.integers(4, 41),
    in_features=st.integers(1, 100),
    out_features=st.integers(1, 70),
    relu=st.booleans(),
    seed=st.integers(0, 2**16),
)
@example(rows=1000, in_features=392, out_features=256, relu=True, seed=0)  # course fc1, batched
@example(rows=7, in_features=3, out_features=33, relu=False, seed=1)  # a part block of each
@example(rows=8, in_features=16, out_features=16, relu=False, seed=2)  # whole blocks only
def test_fc_row_blocks_match_torch(rows, in_features, out_features, relu, seed):
    """Four rows or more take the batched kernel (jobs of 4 rows by 16 outputs): rows past
    the last whole block of 4 and outputs past the last whole block of 16 included."""
    rng = np.random.default_rng(seed)
    x = random(rng, rows, in_features)
    weight, bias = random(rng, out_features, in_features), random(rng, out_features)
    _assert_fc_kernel_matches_torch("linear_row_blocks", x, weight, bias, relu)


def test_fc_skipping_zeros_shares_blocks_out_over_cores():
    """One image through an fc large enough to run on both cores (2048 -> 1000, resnet-like
    after its ReLU): each core takes whole blocks of outputs."""
    from dnnlens.ops.linear import bind_linear

    rng = np.random.default_rng(3)
    x = np.maximum(random(rng, 1, 2048), 0)
    weight, bias = random(rng, 1000, 2048), random(rng, 1000)
    launch = bind_linear(1, np.dtype(np.float64), weight, bias)
    assert launch.kernel.py_func.__name__ == "linear_skipping_zeros"  # the parallel one
    np.testing.assert_allclose(launch(x), _fc_truth(x, weight, bias, False), rtol=1e-9)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_fc_skipping_zeros_keeps_nan_and_inf_as_torch_does(bad):
    """A NaN or Inf input is not skipped; an Inf or NaN weight facing a zero input makes
    PyTorch's sum NaN (0 * inf), so such weights take the kernel that skips nothing."""
    from dnnlens.ops.linear import bind_linear

    rng = np.random.default_rng(4)
    x = np.maximum(random(rng, 1, 50), 0)
    x[0, 3], x[0, 7] = bad, 0.0
    weight, bias = random(rng, 100, 50), random(rng, 100)
    got = bind_linear(1, np.dtype(np.float64), weight, bias)(x)
    np.testing.assert_allclose(got, _fc_truth(x, weight, bias, False), rtol=1e-9)
    x[0, 3] = 1.0
    weight[:, 7] = bad
    launch = bind_linear(1, np.dtype(np.float64), weight, bias)
    assert launch.kernel.py_func.__name__.startswith("linear_loops")
    truth = _fc_truth(x, weight, bias, False)
    assert np.isnan(truth).all()
    np.testing.assert_allclose(launch(x), truth, rtol=1e-9)


@pytest.mark.parametrize("path", PATHS)
def test_linear_length_mismatch_names_both_shapes(path):
    with pytest.raises(ShapeError, match=r"\(3, 391\).*\(256, 392\)"):
        run(Linear(), path, [np.zeros((3, 391))], {"weight": np.zeros((256, 392))})


# --- pooling ------------------------------------------------------------------------------
@st.composite
def pool_cases(draw):
    mode = draw(st.sampled_from(["max", "avg"]))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)  # PyTorch: pad <= k/2
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if mode == "max" else (1, 1)
    sizes = tuple(
        draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), 11))
        for k, d, p in zip(kernel, dilation, padding)
    )
    return dict(
        mode=mode,
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        size=sizes,
        batch=draw(st.integers(1, 3)),
        channels=draw(st.integers(1, 3)),
        ceil_mode=draw(st.booleans()),
        count_include_pad=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


@FAST
@given(pool_cases())
@example(
    dict(
        mode="max",
        kernel=(2, 2),
        stride=(2, 2),
        padding=(0, 0),
        dilation=(1, 1),
        size=(28, 28),
        batch=2,
        channels=4,
        ceil_mode=False,
        count_include_pad=True,
        seed=0,
    )
)  # the reference network's pooling
@example(
    dict(
        mode="avg",
        kernel=(3, 3),
        stride=(2, 2),
        padding=(1, 1),
        dilation=(1, 1),
        size=(6, 5),
        batch=1,
        channels=1,
        ceil_mode=True,
        count_include_pad=False,
        seed=0,
    )
)  # a ceil-mode window past the end padding
@example(
    dict(
        mode="max",
        kernel=(1, 1),
        stride=(3, 3),
        padding=(0, 0),
        dilation=(1, 1),
        size=(7, 7),
        batch=1,
        channels=1,
        ceil_mode=True,
        count_include_pad=True,
        seed=0,
    )
)  # stride larger than the window
def test_pool2d_matches_torch(case):
    rng = np.random.default_rng(case["seed"])
    x = random(rng, case["batch"], case["channels"], *case["size"])
    op = Pool(
        mode=case["mode"],
        kernel=case["kernel"],
        stride=case["stride"],
        padding=tuple((p, p) for p in case["padding"]),
        dilation=case["dilation"],
        ceil_mode=case["ceil_mode"],
        count_include_pad=case["count_include_pad"],
    )
    tx = torch.from_numpy(x)
    if case["mode"] == "max":
        truth = F.max_pool2d(
            tx,
            case["kernel"],
            case["stride"],
            case["padding"],
            case["dilation"],
            ceil_mode=case["ceil_mode"],
        )
    else:
        truth = F.avg_pool2d(
            tx,
            case["kernel"],
            case["stride"],
            case["padding"],
            ceil_mode=case["ceil_mode"],
            count_include_pad=case["count_include_pad"],
        )
    assert_matches(op, [x], {}, truth)


def test_max_pool_propagates_nan_like_torch():
    """A NaN anywhere in a window makes that window's maximum NaN (a padded border too)."""
    x = np.arange(2 * 3 * 7 * 6, dtype=np.float32).reshape(2, 3, 7, 6)
    x[0, 1, 0, 0] = x[1, 2, 4, 3] = np.nan
    op = Pool(kernel=(3, 3), stride=(2, 2), padding=((1, 1), (1, 1)))
    truth = F.max_pool2d(torch.from_numpy(x), 3, 2, 1).numpy()
    assert np.isnan(truth).sum() == 3  # one window over the corner, two over (4, 3)
    for path in PATHS:
        np.testing.assert_array_equal(getattr(op, path)([x], {}), truth)


def test_pool1d_matches_torch():
    x = random(np.random.default_rng(3), 2, 3, 10)
    op = Pool(mode="avg", kernel=(3,), stride=(2,), padding=((1, 1),), dilation=(1,))
    assert_matches(op, [x], {}, F.avg_pool1d(torch.from_numpy(x), 3, 2, 1))


@pytest.mark.parametrize("path", PATHS)
def test_pool_window_larger_than_input_names_shapes(path):
    with pytest.raises(ShapeError, match=r"\(3, 3\).*\(1, 2, 2, 2\)"):
        run(Pool(kernel=(3, 3), stride=(1, 1)), path, [np.zeros((1, 2, 2, 2))])


@FAST
@given(
    size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    out=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    mode=st.sampled_from(["avg", "max"]),
    seed=st.integers(0, 2**16),
)
@example(size=(7, 7), out=(1, 1), mode="avg", seed=0)  # global pooling: one pass over the plane
@example(size=(3, 5), out=(1, 1), mode="max", seed=1)
def test_adaptive_pool_matches_torch(size, out, mode, seed):
    x = random(np.random.default_rng(seed), 2, 3, *size)
    function = F.adaptive_avg_pool2d if mode == "avg" else F.adaptive_max_pool2d
    assert_matches(
        AdaptivePool(mode=mode, output_size=out), [x], {}, function(torch.from_numpy(x), out)
    )


# --- element-wise and shape ---------------------------------------------------------------
TORCH_ACTIVATIONS = {
    "relu": F.relu,
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "silu": F.silu,
    "hardsigmoid": F.hardsigmoid,
    "hardswish": F.hardswish,
    "exp": torch.exp,
    "neg": torch.neg,
    "abs": torch.abs,
    # defined only for positive inputs: checked on |x| + 0.5
    "log": torch.log,
    "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt,
    "reciprocal": torch.reciprocal,
}


@pytest.mark.parametrize("function", sorted(TORCH_ACTIVATIONS))
def test_activation_matches_torch(function):
    x = random(np.random.default_rng(4), 3, 4, 5) * 4
    if function in ("log", "sqrt", "rsqrt", "reciprocal"):
        x = np.abs(x) + 0.5
    assert_matches(Activation(function), [x], {}, TORCH_ACTIVATIONS[function](torch.from_numpy(x)))


def test_operator_without_kernel_says_so():
    """Batch norm traced in training mode keeps no running statistics: no inference kernel,
    and both the per-node check and the kernel say why."""
    from dnnlens.ops import Norm

    op = Norm("batchnorm")
    assert "running statistics" in op.kernel_gap([(1, 3, 2, 2)], {})
    with pytest.raises(NotImplementedError, match="running statistics"):
        op.reference([np.zeros((1, 3, 2, 2))], {})


@FAST
@given(
    shapes=st.sampled_from(
        [
            ((2, 3, 4, 4), (2, 3, 4, 4)),
            ((2, 3, 4, 4), (1, 3, 1, 1)),
            ((5,), (3, 1)),
            ((1,), (2, 2)),
        ]
    ),
    function=st.sampled_from(["add", "sub", "mul", "maximum"]),
    seed=st.integers(0, 99),
)
def test_binary_broadcasts_like_torch(shapes, function, seed):
    rng = np.random.default_rng(seed)
    a, b = random(rng, *shapes[0]), random(rng, *shapes[1])
    torch_fn = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "maximum": torch.maximum}
    truth = torch_fn[function](torch.from_numpy(a), torch.from_numpy(b))
    assert_matches(Binary(function), [a, b], {}, truth)


def test_binary_mismatch_names_both_shapes():
    with pytest.raises(ShapeError, match=r"\(2, 3\).*\(4, 3\)"):
        Binary("add").reference([np.zeros((2, 3)), np.zeros((4, 3))], {})


@pytest.mark.parametrize("log", [False, True])
def test_softmax_matches_torch(log):
    x = random(np.random.default_rng(5), 3, 10) * 10
    truth = (F.log_softmax if log else F.softmax)(torch.from_numpy(x), dim=-1)
    assert_matches(Softmax(axis=-1, log=log), [x], {}, truth)


def test_flatten_traced_at_batch_one_runs_at_any_batch():
    x = random(np.random.default_rng(6), 5, 8, 7, 7)
    op = Reshape.between((1, 8, 7, 7), (1, 392))
    assert op.flatten and op.keeps_batch
    assert_matches(op, [x], {}, torch.from_numpy(x).flatten(1))


# --- the fused conv -> relu -> max-pool kernel (compiled engine) ----------------------------
@settings(max_examples=20, deadline=None)
@given(
    batch=st.sampled_from([1, 15, 16, 17, 37]),
    cin=st.integers(1, 3),
    cout=st.integers(1, 9),
    kernel=st.tuples(st.integers(1, 5), st.sampled_from([3, 5])),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    stride_h=st.integers(1, 2),
    pad=st.integers(0, 2),
    pool=st.sampled_from([(2, 2), (3, 2), (2, 1), (1, 1)]),
    seed=st.integers(0, 2**16),
)
def test_fused_conv_relu_maxpool_matches_torch(
    batch, cin, cout, kernel, dilation, stride_h, pad, pool, seed
):
    from dnnlens.ops.conv import Conv2dAttrs, conv_relu_maxpool_compiled

    # the conv output must hold one pool window (PyTorch refuses it otherwise too):
    # out = (size + pads - dilation*(k-1) - 1) // stride + 1
    out_h = (12 + 2 * pad - dilation[0] * (kernel[0] - 1) - 1) // stride_h + 1
    out_w = (11 + 2 * pad + 1 - dilation[1] * (kernel[1] - 1) - 1) + 1
    assume(out_h >= pool[0] and out_w >= pool[0])
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, cin, 12, 11)).astype(np.float32)
    weight = rng.standard_normal((cout, cin, *kernel)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    attrs = Conv2dAttrs((stride_h, 1), ((pad, pad), (pad, pad + 1)), dilation, 1)
    (pool_k, pool_s) = pool
    got = conv_relu_maxpool_compiled(x, weight, bias, attrs, (pool_k, pool_k), (pool_s, pool_s))
    padded = F.pad(torch.from_numpy(x).double(), (pad, pad + 1, pad, pad))
    conv = F.conv2d(
        padded,
        torch.from_numpy(weight).double(),
        torch.from_numpy(bias).double(),
        stride=(stride_h, 1),
        dilation=dilation,
    )
    truth = F.max_pool2d(F.relu(conv), pool_k, pool_s).numpy()
    assert got.shape == truth.shape
    np.testing.assert_allclose(got, truth, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kernel, dilation, padding",
    [
        ((5, 5), (1, 1), ((2, 2), (2, 2))),  # the course's convs: rows 16 and 30 wide, not 18, 32
        ((3, 3), (1, 2), ((1, 1), (2, 2))),  # a dilated tap reaching into the next row's zeros
        ((3, 5), (2, 1), ((2, 2), (3, 1))),  # more left padding than right
        ((3, 5), (1, 1), ((1, 1), (1, 3))),  # more right: the reach past the row sets the width
        ((3, 3), (1, 1), ((1, 1), (0, 2))),  # none on the left: nothing to share
    ],
)
def test_fused_conv_for_few_images_with_rows_sharing_padding_matches_torch(
    kernel, dilation, padding
):
    """The few-image fused conv keeps each row's right padding in the next row's left
    padding (:func:`dnnlens.ops.conv.planes_row_width`): taps past a row's end must read
    zeros there, never the next row's values."""
    from dnnlens.ops.conv import Conv2dAttrs, conv_relu_maxpool_compiled, planes_row_width

    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 14, 13))
    weight, bias = rng.standard_normal((5, 3, *kernel)), rng.standard_normal(5)
    (top, bottom), (left, right) = padding
    attrs = Conv2dAttrs((1, 1), padding, dilation, 1)
    wo = 13 + left + right - dilation[1] * (kernel[1] - 1)
    shared = planes_row_width(13, left, wo, kernel[1], dilation[1])
    assert shared == wo + dilation[1] * (kernel[1] - 1) - min(left, right)
    got = conv_relu_maxpool_compiled(x, weight, bias, attrs, (2, 2), (2, 2))
    padded = F.pad(torch.from_numpy(x), (left, right, top, bottom))
    conv = F.conv2d(padded, torch.from_numpy(weight), torch.from_numpy(bias), dilation=dilation)
    truth = F.max_pool2d(F.relu(conv), 2, 2).numpy()
    np.testing.assert_allclose(got, truth, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "kernel_h, stride_h, dilation_h, top, bottom",
    [
        (5, 1, 1, 2, 2),  # the course's convs
        (5, 1, 1, 0, 3),  # none on top, more below: rows near the bottom sum fewer taps
        (3, 2, 2, 2, 1),  # strided and dilated: the last row in reach is the image's last
        (2, 1, 1, 3, 1),  # the top rows' windows read padding only: the bias alone
    ],
)
def test_fused_conv_in_the_lanes_skips_padding_rows_exactly(
    kernel_h, stride_h, dilation_h, top, bottom
):
    """The batched fused conv sums, for each conv row, only the kernel rows that read the
    image (:func:`dnnlens.ops.conv.make_lanes_conv_pool`): with padding of different heights
    above and below, every row's taps must still be all of the image's."""
    from dnnlens.ops.conv import LANES, Conv2dAttrs, conv_relu_maxpool_compiled

    rng = np.random.default_rng(11)
    x = rng.standard_normal((LANES + 3, 2, 13, 9))
    weight, bias = rng.standard_normal((3, 2, kernel_h, 3)), rng.standard_normal(3)
    attrs = Conv2dAttrs((stride_h, 1), ((top, bottom), (1, 1)), (dilation_h, 1), 1)
    got = conv_relu_maxpool_compiled(x, weight, bias, attrs, (2, 2), (1, 2))
    padded = F.pad(torch.from_numpy(x), (1, 1, top, bottom))
    conv = F.conv2d(
        padded,
        torch.from_numpy(weight),
        torch.from_numpy(bias),
        stride=(stride_h, 1),
        dilation=(dilation_h, 1),
    )
    truth = F.max_pool2d(F.relu(conv), 2, (1, 2)).numpy()
    np.testing.assert_allclose(got, truth, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "batch, cin, cout, kernel, stride, padding, with_residual, size",
    [
        (1, 120, 20, 3, 1, 1, True, (9, 11)),  # 1080 taps: 16 whole chunks of 64 and 56 more
        (2, 70, 18, 1, 2, 0, False, (9, 11)),  # a 1x1 strided: 70 taps, one chunk and 6 more
        (3, 120, 37, 3, 2, 1, False, (9, 11)),  # strided; 37 channels: a part block of 5
        (2, 1100, 17, 1, 1, 0, True, (9, 11)),  # a 1x1 conv from many channels
        (1, 64, 16, 5, (1, 2), 2, False, (9, 11)),  # 5x5, dilated: 1600 taps
        (2, 120, 33, 3, 1, 1, True, (20, 17)),  # 756 positions: three tiles, the last a part
    ],
)
def test_deep_conv_summed_in_row_blocks_matches_torch(
    batch, cin, cout, kernel, stride, padding, with_residual, size
):
    """A conv from at least GEMM_MIN_CHANNELS input channels runs as row blocks
    (:func:`dnnlens.ops.conv.row_blocks_conv_source`): output positions by 16 channels, sums
    in registers. Odd sizes leave part blocks of positions and of channels; the epilogue
    adds the residual and clamps (ReLU6 here)."""
    from dnnlens.ops.conv import GEMM_MIN_CHANNELS, Conv2dAttrs, bind_conv2d

    assert cin >= GEMM_MIN_CHANNELS
    rng = np.random.default_rng(cin + cout)
    x = rng.standard_normal((batch, cin, *size)).astype(np.float32)
    weight = (rng.standard_normal((cout, cin, kernel, kernel)) * 0.05).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    dilation = (1, 1) if isinstance(stride, int) else stride
    stride = stride if isinstance(stride, int) else 1
    attrs = Conv2dAttrs((stride, stride), ((padding, padding),) * 2, dilation, 1)
    truth = F.conv2d(
        *(torch.from_numpy(a).double() for a in (x, weight, bias)),
        stride=stride,
        padding=padding,
        dilation=dilation,
    )
    residual = None
    if with_residual:
        residual = rng.standard_normal(truth.shape).astype(np.float32)
        truth = truth + torch.from_numpy(residual).double()
    got = bind_conv2d(x.shape, x.dtype, weight, bias, attrs, 0.0, 6.0)(x, residual)
    assert got.dtype == np.float32 and got.shape == truth.shape
    np.testing.assert_allclose(got, torch.clamp(truth, 0, 6).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_conv_at_mobilenet_sizes_matches_torch(stride):
    """The depthwise kernel on a MobileNetV2 layer (96 channels of 112x112, ReLU6): over a
    million multiply-adds, so its jobs are shared out over the cores; float32 as in use."""
    from dnnlens.ops.conv import Conv2dAttrs, bind_conv2d

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 96, 112, 112)).astype(np.float32)
    weight = rng.standard_normal((96, 1, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(96).astype(np.float32)
    attrs = Conv2dAttrs((stride, stride), ((1, 1), (1, 1)), (1, 1), 96)
    got = bind_conv2d(x.shape, x.dtype, weight, bias, attrs, 0.0, 6.0)(x)
    truth = F.conv2d(
        *(torch.from_numpy(a).double() for a in (x, weight, bias)),
        stride=stride,
        padding=1,
        groups=96,
    )
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, torch.clamp(truth, 0, 6).numpy(), rtol=1e-5, atol=1e-5)


# --- the general conv kernel's epilogue (issue 12) -----------------------------------------
CLAMPS = [(-np.inf, np.inf), (0.0, np.inf), (0.0, 6.0), (-0.5, 0.25)]


@FAST
@given(conv_cases(), st.sampled_from(CLAMPS), st.booleans())
@example(  # 7x7 stride 2 with asymmetric padding (a ResNet stem, odd size), residual, ReLU
    conv_case(kernel=(7, 7), stride=(2, 2), padding=((3, 2), (3, 3)), size=(15, 13), cout=5),
    (0.0, np.inf),
    True,
)
@example(conv_case(cin=6, cout=6, groups=6, size=(9, 8), padding=((1, 1), (1, 1))), (0, 6), True)
@example(  # depthwise with strides, dilations and padding all unequal, two images
    conv_case(
        batch=2,
        cin=5,
        cout=5,
        groups=5,
        kernel=(3, 5),
        size=(11, 12),
        stride=(2, 3),
        dilation=(2, 1),
        padding=((3, 0), (1, 2)),
    ),
    (-0.5, 0.25),
    True,
)
def test_bound_conv_with_epilogue_matches_torch(case, clamp, with_residual):
    """``bind_conv2d``: clamp(conv + bias [+ residual]) against torch in float64."""
    from dnnlens.ops.conv import Conv2dAttrs, bind_conv2d

    rng = np.random.default_rng(case["seed"])
    x = random(rng, case["batch"], case["cin"], *case["size"])
    weight = random(rng, case["cout"], case["cin"] // case["groups"], *case["kernel"])
    bias = random(rng, case["cout"]) if case["bias"] else None
    (top, bottom), (left, right) = case["padding"]
    conv = F.conv2d(
        F.pad(torch.from_numpy(x), (left, right, top, bottom)),
        torch.from_numpy(weight),
        None if bias is None else torch.from_numpy(bias),
        stride=case["stride"],
        dilation=case["dilation"],
        groups=case["groups"],
    )
    residual = random(rng, *conv.shape) if with_residual else None
    if residual is not None:
        conv = conv + torch.from_numpy(residual)
    truth = torch.clamp(conv, *clamp).numpy()
    attrs = Conv2dAttrs(case["stride"], case["padding"], case["dilation"], case["groups"])
    kernel = bind_conv2d(x.shape, x.dtype, weight, bias, attrs, *clamp)
    for _ in range(2):  # the second call reuses the kept packed buffer
        got = kernel(x, residual)
        assert got.shape == truth.shape
        np.testing.assert_allclose(got, truth, rtol=1e-9, atol=1e-10)
