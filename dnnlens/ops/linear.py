"""Fully connected layer (the notebook's ``fc``), on any number of leading dimensions.

Shape contract: input ``(..., in)``, weight ``(out, in)``, bias ``(out,)``
-> output ``(..., out)``.
MACs: ``prod(leading dims) * in * out`` (for a ``(N, in)`` input: ``N * in * out``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from math import prod
from typing import Any, ClassVar

import numpy as np

from dnnlens.errors import ShapeError
from dnnlens.ops.base import (
    PARALLEL_MIN_WORK,
    Launch,
    Names,
    Op,
    check_fits,
    compiled_kernel,
    generated_kernel,
    generated_source,
    pack_output_blocks,
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


#: Rows (images) the batched kernel computes together (:func:`row_blocks_source`); fewer rows
#: than this take the kernels for a few rows.
ROW_BLOCK = 4


def linear_loops(x, weight, bias, out, relu):  # pragma: no cover - compiled
    """The same loop nest for Numba, a row at a time (for a few rows whose zero inputs are
    not skipped): for four outputs at a time, the dot products of their weight rows with
    the row (the loop over ``in`` is contiguous in x and in the weights, so it vectorises;
    the weights stream once). With ``relu``, a following ReLU is applied as each result
    is stored."""
    rows, in_features = x.shape
    out_features = weight.shape[0]
    quads = out_features // 4 * 4
    for m in range(rows):
        row, target = x[m], out[m]
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


#: Outputs the batched kernel sums at once for each of its ``ROW_BLOCK`` rows: 16 float32
#: sums, one AVX-512 register per row (32 outputs were no faster and took 3x as long to
#: compile).
OUTPUT_BLOCK = 16
#: Inputs the batched kernel sums into partial sums before adding them to each total.
SUM_CHUNK = 64


def row_blocks_source(relu: bool) -> str:
    """The batched fc loop nest as Python source: jobs of ``ROW_BLOCK`` rows by
    ``OUTPUT_BLOCK`` outputs, shared out over the cores. With the weights packed
    ``(out / 16, in, 16)``, each input ``i`` adds its value in each of the job's rows times
    the 16 weights of ``i`` (one contiguous load) to that row's 16 sums: the sums stay in
    registers for the whole loop over ``in``, and no sum is folded across a vector at the
    end. (The kernel it replaced summed along ``in`` in vectors, four rows by four outputs,
    and folded each of its 16 vector sums at the end: 79% of the probed peak on the course
    fc1 for 1000 rows, against 98%.) Scalar sums packed by the SLP vectorizer, as in
    :func:`skipping_zeros_source`. Rows past the last whole block go through the same
    code from a zero-padded copy; outputs past the last whole block are stored in ``edge``
    and copied out."""
    rows_together, block = ROW_BLOCK, OUTPUT_BLOCK
    sums = [f"s{r}_{o}" for r in range(rows_together) for o in range(block)]
    store = "max({}, 0.0)" if relu else "{}"

    parts = [f"p{r}_{o}" for r in range(rows_together) for o in range(block)]

    def add_input(indent: str, i: str) -> list[str]:
        """Lines adding input ``i`` of the job's rows to their partial sums ``p``."""
        return [
            f"{indent}w = weights[{i}]",
            *(f"{indent}v{r} = row{r}[{i}]" for r in range(rows_together)),
            *(
                f"{indent}p{r}_{o} += v{r} * w[{o}]"
                for r in range(rows_together)
                for o in range(block)
            ),
        ]

    def job(source: str, first: str, target: Callable[[int], str], indent: str) -> list[str]:
        """Lines summing rows ``first``... of ``source`` for output block ``b``: ``CHUNK``
        inputs at a time into partial sums ``p``, each chunk's then added to the totals
        ``s`` (one sum along all the inputs in turn rounded 4-9x worse than PyTorch at
        2048-4096 inputs; in chunks it is within PyTorch's own error). The chunk's loop
        has a constant count: with a variable one the kernel ran 10-25% slower."""
        return [
            f"{indent}start = bias[b * BLOCK :]",
            f"{indent}{', '.join(sums)} = "
            + ", ".join(f"start[{o}]" for _ in range(rows_together) for o in range(block)),
            f"{indent}weights = packed[b]",
            *(f"{indent}row{r} = {source}[{first} + {r}]" for r in range(rows_together)),
            f"{indent}for chunk in range(in_features // CHUNK):",
            f"{indent}    {', '.join(parts)} = {', '.join('zero' for _ in parts)}",
            f"{indent}    for k in range(CHUNK):",
            *add_input(f"{indent}        ", "chunk * CHUNK + k"),
            *(f"{indent}    {total} += {part}" for total, part in zip(sums, parts)),
            f"{indent}{', '.join(parts)} = {', '.join('zero' for _ in parts)}",
            f"{indent}for i in range(in_features // CHUNK * CHUNK, in_features):",
            *add_input(f"{indent}    ", "i"),
            *(f"{indent}{total} += {part}" for total, part in zip(sums, parts)),
            *(f"{indent}t{r} = {target(r)}" for r in range(rows_together)),
            *(
                f"{indent}t{r}[{o}] = {store.format(f's{r}_{o}')}"
                for r in range(rows_together)
                for o in range(block)
            ),
        ]

    def in_out(r: int) -> str:
        return f"out[first + {r}, b * BLOCK :] if b < whole else edge[first + {r}]"

    def in_tail(r: int) -> str:
        return f"tail_out[{r}, b * BLOCK :]"

    lines = [
        "def linear_row_blocks(x, packed, bias, out):  # pragma: no cover - compiled",
        "    rows, in_features = x.shape",
        "    n_blocks = packed.shape[0]",
        "    out_features = out.shape[1]",
        "    whole = out_features // BLOCK  # output blocks that fit in out",
        "    blocks_of_rows = rows // ROWS",
        "    edge = np.empty((rows, BLOCK), out.dtype)",
        "    zero = np.zeros(1, out.dtype)[0]",
        "    for job in prange(blocks_of_rows * n_blocks):",
        "        first = job // n_blocks * ROWS",
        "        b = job % n_blocks",
        *job("x", "first", in_out, "        "),
        "    done = blocks_of_rows * ROWS",
        "    if done < rows:",
        "        tail_in = np.zeros((ROWS, in_features), out.dtype)",
        "        tail_in[: rows - done] = x[done:]",
        "        tail_out = np.empty((ROWS, n_blocks * BLOCK), out.dtype)",
        "        for b in range(n_blocks):",
        *job("tail_in", "0", in_tail, "            "),
        "        out[done:] = tail_out[: rows - done, :out_features]",
        "    if whole < n_blocks:",
        "        out[:done, whole * BLOCK :] = edge[:done, : out_features - whole * BLOCK]",
    ]
    constants = {"ROWS": rows_together, "BLOCK": block, "CHUNK": SUM_CHUNK}
    return generated_source("dnnlens.ops.linear.row_blocks_source", constants, lines)


def row_blocks_kernel(relu: bool, parallel: bool):
    """:func:`row_blocks_source` loaded and compiled (see :func:`generated_kernel`)."""
    name = f"dnnlens_fc_row_blocks_{ROW_BLOCK}x{OUTPUT_BLOCK}{'_relu' if relu else ''}"
    return generated_kernel(name, lambda: row_blocks_source(relu), "linear_row_blocks", parallel)


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
    return generated_source("dnnlens.ops.linear.skipping_zeros_source", {"BLOCK": block}, lines)


def skipping_zeros_kernel(relu: bool, parallel: bool):
    """:func:`skipping_zeros_source` loaded and compiled (see :func:`generated_kernel`)."""
    name = f"dnnlens_fc_skipping_zeros_{SKIP_BLOCK}{'_relu' if relu else ''}"
    source = lambda: skipping_zeros_source(SKIP_BLOCK, relu)  # noqa: E731
    return generated_kernel(name, source, "linear_skipping_zeros", parallel)


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
    if rows >= ROW_BLOCK:
        return _packed_launch(row_blocks_kernel(relu, parallel), OUTPUT_BLOCK, rows, weight, bias)
    # A few rows skip their zero inputs (the course fc1 on one image: about 2.9 us, not
    # 4.2). Not with infinite or NaN weights: 0 * inf is NaN, a skipped product is not. Not
    # for fewer outputs than half a block: the course fc2's 10 ran slower.
    if out_features >= SKIP_BLOCK // 2 and np.isfinite(weight).all():
        kernel = skipping_zeros_kernel(relu, parallel)
        return _packed_launch(kernel, SKIP_BLOCK, rows, weight, bias)
    kernel = compiled_kernel(linear_loops)  # a few rows: too little to share out
    return Launch(kernel, (weight, bias), (relu,), (rows, out_features), np.dtype(dtype))


def _packed_launch(
    kernel: Any, block: int, rows: int, weight: np.ndarray, bias: np.ndarray
) -> Launch:
    """The call of a generated kernel (:func:`row_blocks_source`,
    :func:`skipping_zeros_source`): the weights packed in blocks of ``block`` outputs, the
    bias padded to match, and the kernel compiled here, on zeros of the argument types it
    will get, with the SLP vectorizer it needs."""
    out_features, in_features = weight.shape
    packed = pack_output_blocks(weight, block)
    padded_bias = np.zeros(packed.shape[0] * block, weight.dtype)
    padded_bias[:out_features] = bias
    example = np.zeros((rows, in_features), weight.dtype)
    with slp_vectorizer():  # compiles (or loads) it for these argument types
        kernel(example, packed, padded_bias, np.empty((rows, out_features), weight.dtype))
    return Launch(kernel, (packed, padded_bias), (), (rows, out_features), weight.dtype)
