"""Matrix products and attention: ``mm``, ``bmm``, ``matmul``/``@`` and scaled dot-product
attention (SDPA, also the core of ``nn.MultiheadAttention``).

Shape contract (NumPy/PyTorch ``matmul`` semantics): ``a (..., M, K) @ b (..., K, N)`` ->
``(..., M, N)`` with the leading dimensions broadcast; a 1-d operand gets a unit dimension
added and removed again. MACs: ``prod(output) * K`` (one multiply-add per term of each dot
product). An operand that is a learned parameter comes as ``params["weight"]`` with its
state-dict shape; ``weight_operand`` says which side it is on and ``weight_transposed`` that the
product uses its transpose (``x @ W.t()``).

Attention: ``q (..., L, E)``, ``k (..., S, E)``, ``v (..., S, Ev)`` -> ``(..., L, Ev)``;
MACs ``prod(...) * L * S * (E + Ev)`` (``q @ k^T`` then ``scores @ v``); softmax and the
scale do no MACs (the element-wise convention). A causal mask does not change the count: the
math path computes every score. The fused kernels never write the ``L x S`` scores, so values
moved are ``q + k + v (+ mask) + output``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import prod
from typing import ClassVar

import numpy as np

from dnnlens.errors import ShapeError
from dnnlens.ops.base import (
    PARALLEL_MIN_WORK,
    Names,
    Op,
    compiled_kernel,
    contiguous,
    register,
    torch_tensors,
)
from dnnlens.ops.elementwise import broadcast
from dnnlens.shapes import Shape

prange = range  # numba.prange once the loop nests are compiled (see base.compiled_kernel)


def matmul_shape(a: Shape, b: Shape) -> Shape:
    """``torch.matmul``'s output shape; ShapeError when the inner dimensions differ."""
    if not a or not b:
        raise ShapeError(f"matmul needs tensors with at least one dimension, got {a} and {b}")
    a2 = (1, *a) if len(a) == 1 else tuple(a)
    b2 = (*b, 1) if len(b) == 1 else tuple(b)
    if a2[-1] != b2[-2]:
        raise ShapeError(
            f"matmul of {tuple(a)} and {tuple(b)}: inner dimensions {a2[-1]} and {b2[-2]} differ"
        )
    lead = broadcast([a2[:-2], b2[:-2]]) if (a2[:-2] or b2[:-2]) else ()
    out = (*lead, a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return tuple(out)


@register
@dataclass(frozen=True)
class MatMul(Op):
    """``a @ b`` (mm, bmm, baddbmm, matmul); either operand may be a parameter."""

    KIND: ClassVar[str] = "matmul"
    #: variant: "mm" (a product), "addmm" (a product plus an addend, aten's first argument)
    NAMES: ClassVar[Names] = Names(
        aten={
            **{name: "mm" for name in ("mm", "bmm", "mv", "dot")},
            **{name: "addmm" for name in ("addmm", "baddbmm", "addmv")},
        },
        onnx={"MatMul": None},
    )
    weight_operand: int | None = None  # 0 or 1 when one operand is params["weight"]
    weight_transposed: bool = False  # the product uses params["weight"] transposed (2-d)

    def operands(self, input_shapes: Sequence[Shape], params: Mapping[str, Shape]) -> list[Shape]:
        """The two operand shapes as multiplied, parameters put in their place."""
        shapes = [tuple(s) for s in input_shapes[:2]]
        if self.weight_operand is not None:
            w = tuple(params["weight"])
            if self.weight_transposed:
                if len(w) != 2:
                    raise ShapeError(f"only a 2-d weight can be transposed, got {w}")
                w = (w[1], w[0])
            shapes.insert(self.weight_operand, w)
        if len(shapes) != 2:
            raise ShapeError(f"matmul needs two operands, got {len(shapes)}")
        return shapes

    def output_shape(self, input_shapes, params):
        a, b = self.operands(input_shapes, params)
        return matmul_shape(a, b)

    def macs(self, input_shapes, output_shape, params):
        a, _ = self.operands(input_shapes, params)
        return prod(output_shape) * a[-1]  # each output is a K-term dot product

    def descriptor(self, input_shapes, params):
        """(M, K, N) of one matrix product."""
        a, b = self.operands(input_shapes, params)
        return (a[-2] if len(a) > 1 else 1, a[-1], b[-1] if len(b) > 1 else 1)

    # --- kernels ----------------------------------------------------------------------
    def arrays(self, inputs, weights) -> tuple[np.ndarray, np.ndarray]:
        """The two operands as multiplied (the parameter in its place, transposed if so)."""
        arrays = [np.asarray(a) for a in inputs[:2]]
        if self.weight_operand is not None:
            w = np.asarray(weights["weight"])
            arrays.insert(self.weight_operand, w.T if self.weight_transposed else w)
        if len(arrays) != 2:
            raise ShapeError(f"matmul needs two operands, got {len(arrays)}")
        return arrays[0], arrays[1]

    def batched(self, inputs, weights):
        """``(A (B, M, K), B (B, K, N), output shape)``: 1-d operands given their unit
        dimension, the leading dimensions broadcast and flattened into one batch B."""
        a, b = self.arrays(inputs, weights)
        out_shape = matmul_shape(a.shape, b.shape)
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        lead = broadcast([a2.shape[:-2], b2.shape[:-2]])
        a3 = np.broadcast_to(a2, (*lead, *a2.shape[-2:])).reshape(-1, *a2.shape[-2:])
        b3 = np.broadcast_to(b2, (*lead, *b2.shape[-2:])).reshape(-1, *b2.shape[-2:])
        return a3, b3, out_shape

    def _add_bias(self, out: np.ndarray, weights) -> np.ndarray:
        bias = weights.get("bias")  # baddbmm/addmm's added term, when it is a parameter
        return out if bias is None else out + bias

    def reference(self, inputs, weights):
        """``out[b, m, n] = sum over k of A[b, m, k] * B[b, k, n]``: the loop runs over the
        reduction index k, each step one multiply-accumulate for every (b, m, n) at once."""
        a, b, out_shape = self.batched(inputs, weights)
        out = np.zeros((a.shape[0], a.shape[1], b.shape[2]), dtype=np.result_type(a, b))
        for k in range(a.shape[2]):
            out += a[:, :, k, None] * b[:, None, k, :]  # (B, M, 1) * (B, 1, N)
        return self._add_bias(out.reshape(out_shape), weights)

    def compiled(self, inputs, weights):
        a, b, out_shape = self.batched(inputs, weights)
        dtype = np.result_type(a, b)
        out = np.empty((a.shape[0], a.shape[1], b.shape[2]), dtype=dtype)
        macs = out.size * a.shape[2]
        kernel = compiled_kernel(matmul_loops, parallel=macs >= PARALLEL_MIN_WORK)
        kernel(contiguous(a, dtype), contiguous(b, dtype), out)
        return self._add_bias(out.reshape(out_shape), weights)

    def torch_oracle(self, inputs, weights):
        import torch

        a, b, bias = torch_tensors(*self.arrays(inputs, weights), weights.get("bias"))
        out = torch.matmul(a, b)
        return out if bias is None else out + bias


def matmul_loops(a, b, out):  # pragma: no cover - compiled
    """a ``(B, M, K)``, b ``(B, K, N)`` -> out ``(B, M, N)``: (batch, row) pairs over the
    cores; for each k, row k of b scaled by ``a[m, k]`` is added to the output row (the loop
    along n is contiguous in b and out, so it vectorises)."""
    batches, rows, depth = a.shape
    cols = b.shape[2]
    for job in prange(batches * rows):
        i, m = job // rows, job % rows
        for n in range(cols):
            out[i, m, n] = 0
        for k in range(depth):
            scale = a[i, m, k]
            for n in range(cols):
                out[i, m, n] += scale * b[i, k, n]


@register
@dataclass(frozen=True)
class Attention(Op):
    """Scaled dot-product attention, ``softmax(q k^T * scale + mask) v``, one fused operator.

    Inputs: ``q, k, v`` and, when given, an additive or boolean ``mask`` (read, no MACs).
    """

    KIND: ClassVar[str] = "attention"
    NAMES: ClassVar[Names] = Names(
        aten={
            name: None
            for name in (
                "_scaled_dot_product_flash_attention_for_cpu",
                "_scaled_dot_product_flash_attention",
                "_scaled_dot_product_efficient_attention",
                "_scaled_dot_product_cudnn_attention",
            )
        },
        onnx={"Attention": None},
    )
    causal: bool = False  # query l sees keys s <= l (PyTorch's lower-left triangle)
    has_mask: bool = False  # a 4th input: boolean (True = attend) or added to the scores
    scale: float | None = None  # None: 1 / sqrt(E)
    enable_gqa: bool = False  # grouped-query: each key/value head serves Hq/Hkv query heads

    def output_shape(self, input_shapes, params):
        if len(input_shapes) < 3:
            raise ShapeError(f"attention needs q, k and v, got {len(input_shapes)} inputs")
        q, k, v = (tuple(s) for s in input_shapes[:3])
        if min(len(q), len(k), len(v)) < 2:
            raise ShapeError(f"attention needs q, k, v of rank >= 2, got {q}, {k}, {v}")
        if q[-1] != k[-1]:
            raise ShapeError(f"query {q} and key {k} have different feature sizes")
        if k[-2] != v[-2]:
            raise ShapeError(f"key {k} and value {v} have different lengths")
        k, v = self.grouped(q, k), self.grouped(q, v)
        lead = broadcast([q[:-2], k[:-2], v[:-2]])
        return (*lead, q[-2], v[-1])

    def grouped(self, q: Shape, kv: Shape) -> Shape:
        """A key/value shape with its heads (dimension -3) repeated to the query's, for
        grouped-query attention; ShapeError when they do not divide."""
        if not self.enable_gqa or len(q) < 3 or len(kv) < 3 or kv[-3] == q[-3]:
            return kv
        if q[-3] % kv[-3]:
            raise ShapeError(f"{q[-3]} query heads are not a multiple of {kv[-3]} key heads")
        return (*kv[:-3], q[-3], *kv[-2:])

    def macs(self, input_shapes, output_shape, params):
        q, k, v = input_shapes[:3]
        lead = prod(output_shape[:-2])
        length, source = q[-2], k[-2]
        return lead * length * source * (q[-1] + v[-1])  # q @ k^T, then scores @ v

    def descriptor(self, input_shapes, params):
        """(L, S, E, Ev): query length, key length, query/key and value feature sizes."""
        q, k, v = input_shapes[:3]
        return (q[-2], k[-2], q[-1], v[-1])

    # --- kernels ----------------------------------------------------------------------
    def batched(self, inputs):
        """``(q (B, L, E), k (B, S, E), v (B, S, Ev), additive mask (B, L, S), scale,
        output shape)`` with the leading dimensions broadcast and flattened into B; a boolean
        mask becomes 0 / minus infinity, the causal mask is added to it."""
        q, k, v = (np.asarray(a) for a in inputs[:3])
        out_shape = self.output_shape([q.shape, k.shape, v.shape], {})
        if self.grouped(q.shape, k.shape) != k.shape:  # head h reads key head h // group
            group = q.shape[-3] // k.shape[-3]
            k, v = np.repeat(k, group, axis=-3), np.repeat(v, group, axis=-3)
        lead = out_shape[:-2]
        length, source = q.shape[-2], k.shape[-2]
        dtype = np.result_type(q, k, v)
        mask = np.zeros((length, source), dtype)
        if self.has_mask:
            given = np.asarray(inputs[3])
            if broadcast([given.shape, (*lead, length, source)]) != (*lead, length, source):
                raise ShapeError(
                    f"mask {given.shape} does not broadcast to the scores "
                    f"{(*lead, length, source)}"
                )
            if given.dtype == bool:
                given = np.where(given, 0.0, -np.inf).astype(dtype)
            mask = mask + given
        if self.causal:
            mask = mask + np.where(np.tri(length, source, dtype=bool), 0.0, -np.inf)
        scale = self.scale if self.scale is not None else 1 / math.sqrt(q.shape[-1])

        def flat(x: np.ndarray) -> np.ndarray:
            return np.broadcast_to(x, (*lead, *x.shape[-2:])).reshape(-1, *x.shape[-2:])

        return (flat(q), flat(k), flat(v), flat(mask.astype(dtype)), scale, out_shape)

    def reference(self, inputs, weights):
        """``out = softmax(q k^T * scale + mask) v`` over the key axis. Loops over the feature
        index e (scores) and the key index s (output), each step serving every (b, l) at once.
        A query that may see no key at all gives zeros (PyTorch's safe softmax)."""
        q, k, v, mask, scale, out_shape = self.batched(inputs)
        scores = np.zeros((q.shape[0], q.shape[1], k.shape[1]), dtype=q.dtype)
        for e in range(q.shape[2]):
            scores += q[:, :, e, None] * k[:, None, :, e]  # (B, L, 1) * (B, 1, S)
        scores = scores * scale + mask
        largest = scores.max(axis=2, keepdims=True)
        largest = np.where(np.isfinite(largest), largest, 0.0)
        weights_ = np.exp(scores - largest)
        total = weights_.sum(axis=2, keepdims=True)
        weights_ = np.divide(weights_, total, out=np.zeros_like(weights_), where=total > 0)
        out = np.zeros((q.shape[0], q.shape[1], v.shape[2]), dtype=q.dtype)
        for s in range(k.shape[1]):
            out += weights_[:, :, s, None] * v[:, None, s, :]  # (B, L, 1) * (B, 1, Ev)
        return out.reshape(out_shape)

    def compiled(self, inputs, weights):
        q, k, v, mask, scale, out_shape = self.batched(inputs)
        dtype = q.dtype
        out = np.empty((q.shape[0], q.shape[1], v.shape[2]), dtype=dtype)
        work = q.shape[0] * q.shape[1] * k.shape[1] * (q.shape[2] + v.shape[2])
        kernel = compiled_kernel(attention_loops, parallel=work >= PARALLEL_MIN_WORK)
        kernel(*(contiguous(a, dtype) for a in (q, k, v, mask)), scale, out)
        return out.reshape(out_shape)

    def torch_oracle(self, inputs, weights):
        import torch
        import torch.nn.functional as F

        q, k, v = torch_tensors(*inputs[:3])
        mask = torch_tensors(inputs[3])[0] if self.has_mask else None
        causal = self.causal
        if causal and mask is not None:  # torch takes one or the other: combine them here
            keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
            extra = torch.zeros(keep.shape, dtype=q.dtype).masked_fill(~keep, float("-inf"))
            mask = (
                extra + torch.zeros_like(extra).masked_fill(~mask, float("-inf"))
                if mask.dtype == torch.bool
                else extra + mask
            )
            causal = False
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, scale=self.scale, enable_gqa=self.enable_gqa
        )


def attention_loops(q, k, v, mask, scale, out):  # pragma: no cover - compiled
    """q ``(B, L, E)``, k ``(B, S, E)``, v ``(B, S, Ev)``, additive mask ``(B, L, S)`` ->
    out ``(B, L, Ev)``: (batch, query) pairs over the cores; per query the S scores are kept
    in a row buffer (max, exponentials, sum), then the value rows are summed with them."""
    batches, length, features = q.shape
    source, values = k.shape[1], v.shape[2]
    for job in prange(batches * length):
        b, row = job // length, job % length
        scores = np.empty(source, dtype=np.float64)
        largest = -np.inf
        for s in range(source):
            total = 0.0
            for e in range(features):
                total += q[b, row, e] * k[b, s, e]
            scores[s] = total * scale + mask[b, row, s]
            largest = max(largest, scores[s])
        if largest == -np.inf:  # no key visible: zeros, as PyTorch's safe softmax
            largest = 0.0
        total = 0.0
        for s in range(source):
            scores[s] = math.exp(scores[s] - largest)
            total += scores[s]
        for j in range(values):
            out[b, row, j] = 0
        if total > 0:
            for s in range(source):
                weight = scores[s] / total
                for j in range(values):
                    out[b, row, j] += weight * v[b, s, j]
