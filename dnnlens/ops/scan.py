"""Cumulative sum along one axis (``torch.cumsum``, ONNX ``CumSum``): the worked example of
docs/operators.md.

Shape contract: ``x (...)`` -> the same shape; ``out[..., i, ...] = sum of x[..., j, ...]``
for ``j <= i`` (``j < i`` when ``exclusive``; counted from the end when ``reverse``, ONNX's
two attributes). Counts: additions only, so 0 MACs (the element-wise convention); it reads
its input and writes its output.
"""

from __future__ import annotations

from dataclasses import dataclass
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

prange = range  # numba.prange once the loop nests are compiled (see base.compiled_kernel)


@register
@dataclass(frozen=True)
class CumSum(Op):
    KIND: ClassVar[str] = "cumsum"
    NAMES: ClassVar[Names] = Names(aten={"cumsum": None})
    axis: int = 0
    exclusive: bool = False  # ONNX: the sum of the values strictly before
    reverse: bool = False  # ONNX: sum from the end of the axis

    # --- shape rule (counts and values moved: the Op defaults, 0 MACs) -------------------
    def output_shape(self, input_shapes, params):
        x = tuple(input_shapes[0])
        if not -len(x) <= self.axis < len(x):
            raise ShapeError(f"cumsum axis {self.axis} is out of range for shape {x}")
        return x

    # --- kernels ----------------------------------------------------------------------
    def rows(self, x: np.ndarray) -> np.ndarray:
        """x as ``(rows, L)``: the summed axis last (and reversed when ``reverse``)."""
        self.output_shape([x.shape], {})
        moved = np.moveaxis(x, self.axis, -1)
        moved = moved[..., ::-1] if self.reverse else moved
        return moved.reshape(-1, x.shape[self.axis]) if x.size else moved.reshape(0, 1)

    def restore(self, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`rows`."""
        moved = rows.reshape(np.moveaxis(x, self.axis, -1).shape)
        moved = moved[..., ::-1] if self.reverse else moved
        return np.moveaxis(moved, -1, self.axis)

    def reference(self, inputs, weights):
        """A running total along the row, every row at once per step."""
        x = np.asarray(inputs[0])
        rows = self.rows(x)
        out = np.empty_like(rows)
        total = np.zeros(rows.shape[0], dtype=rows.dtype)
        for i in range(rows.shape[1]):
            if self.exclusive:
                out[:, i] = total
            total = total + rows[:, i]
            if not self.exclusive:
                out[:, i] = total
        return self.restore(out, x)

    def compiled(self, inputs, weights):
        x = np.asarray(inputs[0])
        rows = contiguous(self.rows(x))
        out = np.empty_like(rows)
        kernel = compiled_kernel(cumsum_loops, parallel=rows.size >= PARALLEL_MIN_WORK)
        kernel(rows, out, self.exclusive)
        return self.restore(out, x)

    # --- the truth ----------------------------------------------------------------------
    def torch_oracle(self, inputs, weights):
        import torch

        (x,) = torch_tensors(inputs[0])
        flipped = x.flip(self.axis) if self.reverse else x
        out = torch.cumsum(flipped, self.axis)
        if self.exclusive:
            out = out - flipped
        return out.flip(self.axis) if self.reverse else out


def cumsum_loops(rows, out, exclusive):  # pragma: no cover - compiled
    """The same, scalar, for Numba: rows over the cores, a running total along each."""
    count, length = rows.shape
    for r in prange(count):
        total = rows[r, 0] * 0  # zero of the rows' type
        for i in range(length):
            if exclusive:
                out[r, i] = total
            total += rows[r, i]
            if not exclusive:
                out[r, i] = total
