"""Table lookups: ``Embedding`` (``weight[indices]``) and ``Gather`` (``np.take`` along an
axis: ONNX Gather, ``index_select``, ``x[:, idx]``).

Shape contract: embedding: indices ``(...)`` (integers), weight ``(num_embeddings, dim)`` ->
``(..., dim)``. Gather along ``axis``: ``x (A..., L, B...)``, indices ``(I...)`` ->
``(A..., I..., B...)``; a negative index counts from the end (ONNX and PyTorch alike).
No multiplications: 0 MACs. Values moved: the indices read, the looked-up rows read (one row
per index, not the whole table) and the output written.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import ClassVar

import numpy as np

from dnnlens.errors import ShapeError
from dnnlens.ops.base import Names, Op, compiled_kernel, contiguous, register, torch_tensors

prange = range  # numba.prange once the loop nests are compiled (see base.compiled_kernel)


def gather_reference(x: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """x ``(A, L, B)``, indices ``(K,)`` -> ``(A, K, B)``: ``out[:, k] = x[:, indices[k]]``,
    one copy per index (an index out of ``[-L, L)`` is a ShapeError)."""
    length = x.shape[1]
    out = np.empty((x.shape[0], len(indices), x.shape[2]), dtype=x.dtype)
    for k, index in enumerate(indices):
        if not -length <= index < length:
            raise ShapeError(f"index {int(index)} is out of range for a dimension of {length}")
        out[:, k] = x[:, index % length]
    return out


def gather_loops(x, indices, out):  # pragma: no cover - compiled
    """The same, scalar, for Numba (indices already checked and made non-negative)."""
    outer, count, after = out.shape
    for a in prange(outer):
        for k in range(count):
            row = indices[k]
            for b in range(after):
                out[a, k, b] = x[a, row, b]


def gather_compiled(x: np.ndarray, indices: np.ndarray) -> np.ndarray:
    length = x.shape[1]
    flat = np.asarray(indices, dtype=np.int64).reshape(-1)
    if flat.size and (flat.min() < -length or flat.max() >= length):
        bad = flat[(flat < -length) | (flat >= length)][0]
        raise ShapeError(f"index {int(bad)} is out of range for a dimension of {length}")
    out = np.empty((x.shape[0], flat.size, x.shape[2]), dtype=x.dtype)
    compiled_kernel(gather_loops)(contiguous(x), flat % max(length, 1), out)
    return out


def _check_indices(indices: np.ndarray) -> np.ndarray:
    indices = np.asarray(indices)
    if indices.dtype.kind not in "iu":
        raise ShapeError(f"indices must be integers, got {indices.dtype}")
    return indices


@register
@dataclass(frozen=True)
class Embedding(Op):
    KIND: ClassVar[str] = "embedding"
    NAMES: ClassVar[Names] = Names(aten={"embedding": None}, modules={"Embedding": None})
    padding_idx: int | None = None  # only changes training (its row gets no gradient)

    def output_shape(self, input_shapes, params):
        weight = tuple(params["weight"])
        if len(weight) != 2:
            raise ShapeError(f"embedding table must be (num_embeddings, dim), got {weight}")
        return (*input_shapes[0], weight[1])

    def values_moved(self, input_shapes, output_shape, params):
        rows = prod(output_shape)  # one table row per index, read once
        return prod(input_shapes[0]) + rows + prod(output_shape)

    def descriptor(self, input_shapes, params):
        """(num_embeddings, dim)."""
        return tuple(params["weight"])

    def _run(self, inputs, weights, gather) -> np.ndarray:
        indices = _check_indices(inputs[0])
        weight = np.asarray(weights["weight"])
        self.output_shape([indices.shape], {"weight": weight.shape})
        if indices.size and indices.min() < 0:
            raise ShapeError("embedding indices must not be negative")
        rows = gather(weight[None], indices.reshape(-1))[0]  # (K, dim)
        return rows.reshape(*indices.shape, weight.shape[1])

    def reference(self, inputs, weights):
        return self._run(inputs, weights, gather_reference)

    def compiled(self, inputs, weights):
        return self._run(inputs, weights, gather_compiled)

    def torch_oracle(self, inputs, weights):
        import torch.nn.functional as F

        indices, weight = torch_tensors(inputs[0], weights["weight"])
        return F.embedding(indices.long(), weight, self.padding_idx)


@register
@dataclass(frozen=True)
class Gather(Op):
    """``np.take(x, indices, axis)``. The indices are the second input, a buffer of the model
    (role ``indices``: a relative-position index), or constants kept in the operator
    (``index_values`` with shape ``index_shape``; ``()``: one scalar index, which removes the
    axis, as ``x[:, 0]``)."""

    KIND: ClassVar[str] = "gather"
    NAMES: ClassVar[Names] = Names(aten={"index": None}, onnx={"Gather": None})
    axis: int = 0
    index_values: tuple[int, ...] | None = None
    index_shape: tuple[int, ...] = ()

    def indices(self, inputs, weights) -> np.ndarray:
        if self.index_values is not None:
            return np.array(self.index_values, dtype=np.int64).reshape(self.index_shape)
        if "indices" in weights:
            return _check_indices(weights["indices"])
        if len(inputs) < 2:
            raise ShapeError("gather needs its indices as a second input")
        return _check_indices(inputs[1])

    def output_shape(self, input_shapes, params):
        x = tuple(input_shapes[0])
        if not -len(x) <= self.axis < len(x):
            raise ShapeError(f"gather axis {self.axis} is out of range for shape {x}")
        if self.index_values is not None:
            index_shape = self.index_shape
            if prod(index_shape) != len(self.index_values):
                raise ShapeError(f"{len(self.index_values)} indices do not fill {index_shape}")
        elif "indices" in params:
            index_shape = tuple(params["indices"])
        elif len(input_shapes) > 1:
            index_shape = tuple(input_shapes[1])
        else:
            raise ShapeError("gather needs its indices as a second input")
        axis = self.axis % len(x)
        return (*x[:axis], *index_shape, *x[axis + 1 :])

    def values_moved(self, input_shapes, output_shape, params):
        index = prod(input_shapes[1]) if len(input_shapes) > 1 else 0
        index += prod(params["indices"]) if "indices" in params else 0
        return index + 2 * prod(output_shape)  # indices, the picked values, the output

    def _run(self, inputs, weights, gather) -> np.ndarray:
        x = np.asarray(inputs[0])
        indices = self.indices(inputs, weights)
        out_shape = self.output_shape([x.shape, indices.shape], {})
        axis = self.axis % x.ndim
        outer, after = prod(x.shape[:axis]), prod(x.shape[axis + 1 :])
        picked = gather(x.reshape(outer, x.shape[axis], after), indices.reshape(-1))
        return picked.reshape(out_shape)

    def reference(self, inputs, weights):
        return self._run(inputs, weights, gather_reference)

    def compiled(self, inputs, weights):
        return self._run(inputs, weights, gather_compiled)

    def torch_oracle(self, inputs, weights):
        import torch

        (x,) = torch_tensors(inputs[0])
        (indices,) = torch_tensors(self.indices(inputs, weights))
        axis = self.axis % x.dim()
        indices = indices.long() % x.shape[axis]
        picked = torch.index_select(x, axis, indices.reshape(-1))
        return picked.reshape((*x.shape[:axis], *indices.shape, *x.shape[axis + 1 :]))
