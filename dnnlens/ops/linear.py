"""Fully connected layer (the notebook's ``fc``), on any number of leading dimensions.

Shape contract: input ``(..., in)``, weight ``(out, in)``, bias ``(out,)``
-> output ``(..., out)``.
MACs: ``prod(leading dims) * in * out`` (for a ``(N, in)`` input: ``N * in * out``).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import ClassVar

import numpy as np

from dnnlens.errors import ShapeError
from dnnlens.ops.base import (
    PARALLEL_MIN_WORK,
    Launch,
    Names,
    Op,
    check_fits,
    compiled_kernel,
    load_generated,
    register,
    slp_vectorizer,
    torch_tensors,
)

prange = range  # numba.prange once the loop nests are compiled (see base.compiled_kernel)


@register
@dataclass(frozen=True)
class Linear(Op):
    KIND: ClassVar[str] = "fc"
    NAMES: ClassVar[Names] = Names(
        modules={"Linear": None}, onnx={"Gemm": None}, spec={"fc": None}
    )

    def output_shape(self, input_shapes, params):
        x = input_shapes[0]
        weight = params["weight"]
        if len(x) < 1 or len(weight) != 2:
            raise ShapeError(
                "fc needs an input (..., in) and a weight (out, in), "
                f"got {tuple(x)} and {tuple(weight)}"
            )
        if x[-1] != weight[1]:
            raise ShapeError(
                f"input {tuple(x)} has {x[-1]} features "
                f"but the weight {tuple(weight)} expects {weight[1]}"
            )
        if "bias" in params and tuple(params["bias"]) != (weight[0],):
            raise ShapeError(
                f"bias shape {tuple(params['bias'])} does not match {weight[0]} outputs"
            )
        return (*x[:-1], weight[0])

    def macs(self, input_shapes, output_shape, params):
        out_features, in_features = params["weight"]
        return prod(input_shapes[0][:-1]) * in_features * out_features

    def descriptor(self, input_shapes, params):
        out_features, in_features = params["weight"]
        return (out_features, in_features)

    # --- kernels ----------------------------------------------------------------------
    def kernel_args(self, inputs, weights):
        """``(x as (M, in), weight, bias, leading dims)``; ShapeError naming both shapes."""
        x, weight = np.asarray(inputs[0]), np.asarray(weights["weight"])
        check_fits(self, x, weights)
        return x.reshape(-1, x.shape[-1]), weight, weights.get("bias"), x.shape[:-1]

    def reference(self, inputs, weights):
        x, weight, bias, lead = self.kernel_args(inputs, weights)
        return linear_reference(x, weight, bias).reshape(*lead, weight.shape[0])

    def compiled(self, inputs, weights):
        x, weight, bias, lead = self.kernel_args(inputs, weights)
        return linear_compiled(x, weight, bias).reshape(*lead, weight.shape[0])

    def torch_oracle(self, inputs, weights):
        import torch.nn.functional as F

        x, weight, bias = torch_tensors(inputs[0], weights["weight"], weights.get("bias"))
        return F.linear(x, weight, bias)


def linear_reference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """The readable loop nest: x ``(M, in)``, weight ``(out, in)``, bias ``(out,)`` or None
    -> ``(M, out)`` with ``out[m, o] = bias[o] + sum over i of weight[o, i] * x[m, i]``.

    The loop runs over the reduction index ``i``; each step is one multiply-accumulate for
    every (row, output) pair at once: column ``i`` of x times column ``i`` of the weight.
    """
    rows, in_features = x.shape
    out = np.zeros((rows, weight.shape[0]), dtype=np.result_type(x, weight))
    for i in range(in_features):
        out += x[:, i, None] * weight[None, :, i]  # (M, 1) * (1, out) -> (M, out)
    if bias is not None:
        out += bias
    return out


#: Rows (images) computed together by the compiled kernel: each weight value loaded serves
#: all of them, and their sums run in separate registers.
ROW_BLOCK = 4


def linear_loops(x, weight, bias, out, relu):  # pragma: no cover - compiled
    """The same loop nest, scalar, for Numba: blocks of ``ROW_BLOCK`` rows shared out over
    the cores; for four outputs at a time, the dot products of their weight rows with the
    block's rows (the loop over ``in`` is contiguous in x and in the weights, so it
    vectorises, its partial sums in registers). With ``relu``, a following ReLU is applied
    as each result is stored.

    ``weight`` may be wider than ``in`` (rows padded with zeros: see
    :func:`pad_features`); a block's rows are then copied, zero-padded, to that width, so
    that the vectorised loop has no scalar remainder."""
    rows, in_features = x.shape
    out_features, width = weight.shape
    n_blocks = (rows + ROW_BLOCK - 1) // ROW_BLOCK
    for block in prange(n_blocks):
        first = block * ROW_BLOCK
        if first + ROW_BLOCK <= rows:
            if width == in_features:
                x0, x1, x2, x3 = x[first], x[first + 1], x[first + 2], x[first + 3]
            else:
                padded = np.zeros((ROW_BLOCK, width), dtype=x.dtype)
                for r in range(ROW_BLOCK):
                    source, target = x[first + r], padded[r]
                    for i in range(in_features):
                        target[i] = source[i]
                x0, x1, x2, x3 = padded[0], padded[1], padded[2], padded[3]
            target0, target1 = out[first], out[first + 1]
            target2, target3 = out[first + 2], out[first + 3]
            quads = out_features // 4 * 4
            # four outputs of four rows: 8 loads for 16 multiply-adds, the 16 sums in
            # registers (two outputs at a time took 6 loads for 8: 60% of the peak, now 70%)
            for o in range(0, quads, 4):
                w0, w1, w2, w3 = weight[o], weight[o + 1], weight[o + 2], weight[o + 3]
                a00 = a01 = a02 = a03 = bias[o]
                a10 = a11 = a12 = a13 = bias[o + 1]
                a20 = a21 = a22 = a23 = bias[o + 2]
                a30 = a31 = a32 = a33 = bias[o + 3]
                for i in range(width):
                    v0, v1, v2, v3 = x0[i], x1[i], x2[i], x3[i]
                    u0, u1, u2, u3 = w0[i], w1[i], w2[i], w3[i]
                    a00, a01, a02, a03 = a00 + u0 * v0, a01 + u0 * v1, a02 + u0 * v2, a03 + u0 * v3
                    a10, a11, a12, a13 = a10 + u1 * v0, a11 + u1 * v1, a12 + u1 * v2, a13 + u1 * v3
                    a20, a21, a22, a23 = a20 + u2 * v0, a21 + u2 * v1, a22 + u2 * v2, a23 + u2 * v3
                    a30, a31, a32, a33 = a30 + u3 * v0, a31 + u3 * v1, a32 + u3 * v2, a33 + u3 * v3
                if relu:
                    a00, a01, a02, a03 = max(a00, 0.0), max(a01, 0.0), max(a02, 0.0), max(a03, 0.0)
                    a10, a11, a12, a13 = max(a10, 0.0), max(a11, 0.0), max(a12, 0.0), max(a13, 0.0)
                    a20, a21, a22, a23 = max(a20, 0.0), max(a21, 0.0), max(a22, 0.0), max(a23, 0.0)
                    a30, a31, a32, a33 = max(a30, 0.0), max(a31, 0.0), max(a32, 0.0), max(a33, 0.0)
                target0[o], target0[o + 1], target0[o + 2], target0[o + 3] = a00, a10, a20, a30
                target1[o], target1[o + 1], target1[o + 2], target1[o + 3] = a01, a11, a21, a31
                target2[o], target2[o + 1], target2[o + 2], target2[o + 3] = a02, a12, a22, a32
                target3[o], target3[o + 1], target3[o + 2], target3[o + 3] = a03, a13, a23, a33
            for o in range(quads, out_features):  # the last outputs, one at a time
                w0 = weight[o]
                total0 = total1 = total2 = total3 = bias[o]
                for i in range(width):
                    u0 = w0[i]
                    total0 += u0 * x0[i]
                    total1 += u0 * x1[i]
                    total2 += u0 * x2[i]
                    total3 += u0 * x3[i]
                if relu:
                    total0, total1 = max(total0, 0.0), max(total1, 0.0)
                    total2, total3 = max(total2, 0.0), max(total3, 0.0)
                target0[o], target1[o], target2[o], target3[o] = total0, total1, total2, total3
        else:  # the last, partial block (one image: all of it): a row at a time, four
            # outputs per pass (5 loads for 4 multiply-adds: the weights stream once)
            for m in range(first, rows):
                row, target = x[m], out[m]
                quads = out_features // 4 * 4
                for o in range(0, quads, 4):
                    w0, w1, w2, w3 = weight[o], weight[o + 1], weight[o + 2], weight[o + 3]
                    total0, total1 = bias[o], bias[o + 1]
                    total2, total3 = bias[o + 2], bias[o + 3]
                    for i in range(in_features):
                        value = row[i]
                        total0 += w0[i] * value
                        total1 += w1[i] * value
                        total2 += w2[i] * value
                        total3 += w3[i] * value
                    if relu:
                        total0, total1 = max(total0, 0.0), max(total1, 0.0)
                        total2, total3 = max(total2, 0.0), max(total3, 0.0)
                    target[o], target[o + 1] = total0, total1
                    target[o + 2], target[o + 3] = total2, total3
                for o in range(quads, out_features):
                    w0 = weight[o]
                    total = bias[o]
                    for i in range(in_features):
                        total += w0[i] * row[i]
                    target[o] = max(total, 0.0) if relu else total


#: Input features of a batched fc's weights are padded with zeros to a multiple of this (one
#: AVX-512 register of float32).
FEATURE_BLOCK = 16


def pad_features(weight: np.ndarray) -> np.ndarray:
    """``weight (out, in)`` with zero columns up to a multiple of ``FEATURE_BLOCK``: with
    ``in`` = 392 (the course fc1) the vectorised loop's scalar remainder (8 values, each
    for 16 sums) took 12% of the batched kernel's time. Not for one row at a time, which
    streams the weights once and would read the zeros too."""
    out_features, in_features = weight.shape
    width = -(-in_features // FEATURE_BLOCK) * FEATURE_BLOCK
    if width == in_features:
        return weight
    padded = np.zeros((out_features, width), weight.dtype)
    padded[:, :in_features] = weight
    return padded


#: Outputs the zero-skipping kernel sums at once: 128 float32 sums fill 8 AVX-512 registers,
#: enough independent chains to hide the multiply-add latency (64 and 256 were no faster).
SKIP_BLOCK = 128


def skipping_zeros_source(block: int, relu: bool) -> str:
    """The loop nest for a few rows that skips the zeros in each row (a ReLU before an fc
    leaves 30% of the course fc1's inputs and 63% of fc2's at zero), as Python source.

    Each row's nonzero inputs are listed first (with no branch: every index is written, the
    count moves on only past a nonzero). Then for each block of ``block`` outputs, each
    listed input adds its value times its weight row to ``block`` sums: the weights are
    packed ``(out / block, in, block)``, so each input's row of the block is contiguous and
    a zero input's row is never read. The sums are ``block`` scalar variables (text
    generated here: Numba has no vector type) that the SLP vectorizer packs into registers;
    a sum array in memory cost a load and a store per input (1.5x slower than the dense
    kernel, not 1.4x faster).

    Skipping ``0 * w`` is exact for finite weights (the sum gains a zero); a NaN or Inf
    input is listed like any nonzero one, so it reaches the outputs as in PyTorch.

    With ``relu``, the ReLU after the layer is applied as the sums are stored. It is written
    into the source, not passed: a constant argument in a program's generated call is typed
    as a literal, and Numba would compile a second copy for it there, outside the SLP
    vectorizer's scope."""
    sums = [f"s{o}" for o in range(block)]
    lines = [
        "def linear_skipping_zeros(x, packed, bias, out):  # pragma: no cover - compiled",
        "    rows, in_features = x.shape",
        "    n_blocks = packed.shape[0]",
        "    out_features = out.shape[1]",
        "    nonzero = np.empty(in_features, np.intp)",
        "    values = np.empty(in_features, out.dtype)",
        "    totals = np.empty(n_blocks * BLOCK, out.dtype)",
        "    for m in range(rows):",
        "        row = x[m]",
        "        count = 0",
        "        for i in range(in_features):",
        "            value = row[i]",
        "            nonzero[count] = i",
        "            values[count] = value",
        "            count += value != 0",
        "        for b in prange(n_blocks):",
        "            first = bias[b * BLOCK :]",
        f"            {', '.join(sums)} = {', '.join(f'first[{o}]' for o in range(block))}",
        "            weights = packed[b]",
        "            for j in range(count):",
        "                value = values[j]",
        "                w = weights[nonzero[j]]",
        *(f"                s{o} += value * w[{o}]" for o in range(block)),
        "            done = totals[b * BLOCK :]",
        *(f"            done[{o}] = s{o}" for o in range(block)),
        "        target = out[m]",
        "        for o in range(out_features):",
        f"            target[o] = {'max(totals[o], 0.0)' if relu else 'totals[o]'}",
    ]
    header = [
        '"""Generated by dnnlens.ops.linear.skipping_zeros_source (do not edit)."""',
        "import numpy as np",
        "",
        "prange = range",
        f"BLOCK = {block}",
        "",
        "",
    ]
    return "\n".join(header + lines) + "\n"


_SKIPPING: dict[tuple[int, bool, bool], object] = {}


def skipping_zeros_kernel(relu: bool, parallel: bool):
    """:func:`skipping_zeros_source` loaded and compiled (once per process; the source and
    Numba's machine code are cached on disk)."""
    key = (SKIP_BLOCK, relu, parallel)
    if key not in _SKIPPING:
        source = skipping_zeros_source(SKIP_BLOCK, relu)
        name = f"dnnlens_fc_skipping_zeros_{SKIP_BLOCK}{'_relu' if relu else ''}"
        module = load_generated(name, source)
        _SKIPPING[key] = compiled_kernel(
            module.linear_skipping_zeros, parallel=parallel, reassociate=False
        )
    return _SKIPPING[key]


def pack_output_blocks(weight: np.ndarray, block: int) -> np.ndarray:
    """``weight (out, in)`` as ``(blocks, in, block)``: block ``b`` holds outputs
    ``b*block ...`` for each input, zero past ``out``."""
    out_features, in_features = weight.shape
    n_blocks = -(-out_features // block)
    packed = np.zeros((n_blocks, in_features, block), weight.dtype)
    for b in range(n_blocks):
        rows = weight[b * block : (b + 1) * block]
        packed[b, :, : rows.shape[0]] = rows.T
    return packed


def linear_compiled(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, relu: bool = False
) -> np.ndarray:
    """:func:`linear_loops` compiled with Numba; same contract as :func:`linear_reference`
    (``relu``: the fc layer fused with the ReLU after it)."""
    return bind_linear(x.shape[0], x.dtype, weight, bias, relu)(x)


def bind_linear(
    rows: int, x_dtype: np.dtype, weight: np.ndarray, bias: np.ndarray | None, relu: bool = False
) -> Launch:
    """:func:`linear_compiled` for ``(rows, in)`` inputs with the kernel chosen once (the
    engine calls it image after image)."""
    dtype = np.result_type(x_dtype, weight)
    out_features = weight.shape[0]
    bias = np.zeros(out_features, dtype) if bias is None else np.ascontiguousarray(bias, dtype)
    macs = rows * weight.size  # M*out * in
    weight = np.ascontiguousarray(weight, dtype)
    parallel = macs >= PARALLEL_MIN_WORK
    if rows < ROW_BLOCK and out_features >= SKIP_BLOCK // 2 and np.isfinite(weight).all():
        return _skipping_zeros_launch(rows, weight, bias, relu, parallel)
    if rows >= ROW_BLOCK:
        weight = pad_features(weight)
    kernel = compiled_kernel(linear_loops, parallel=parallel)
    return Launch(kernel, (weight, bias), (relu,), (rows, out_features), np.dtype(dtype))


def _skipping_zeros_launch(
    rows: int, weight: np.ndarray, bias: np.ndarray, relu: bool, parallel: bool
) -> Launch:
    """The zero-skipping kernel for a few rows (see :func:`skipping_zeros_source`), compiled
    here with the SLP vectorizer it needs: 1.4 us instead of 4.2 for the course fc1 on one
    image. (Not for infinite or NaN weights: ``0 * inf`` is NaN, a skipped product is not.
    Not for fewer than half a block of outputs: the course fc2's 10 ran slower.)"""
    out_features, in_features = weight.shape
    packed = pack_output_blocks(weight, SKIP_BLOCK)
    padded_bias = np.zeros(packed.shape[0] * SKIP_BLOCK, weight.dtype)
    padded_bias[:out_features] = bias
    kernel = skipping_zeros_kernel(relu, parallel)
    example = np.zeros((rows, in_features), weight.dtype)
    with slp_vectorizer():  # compiles (or loads) it for these argument types
        kernel(example, packed, padded_bias, np.empty((rows, out_features), weight.dtype))
    return Launch(kernel, (packed, padded_bias), (), (rows, out_features), weight.dtype)
