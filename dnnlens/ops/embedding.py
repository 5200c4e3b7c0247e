"""Embedding: a table lookup, ``weight[indices]``.

Shape contract: indices ``(...)`` (integers), weight ``(num_embeddings, dim)`` -> output
``(..., dim)``. No multiplications: 0 MACs. Values moved: the indices read, the looked-up
rows read (one row per index, not the whole table) and the output written.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import ClassVar

from dnnlens.errors import ShapeError
from dnnlens.ops.base import Op, register


@register
@dataclass(frozen=True)
class Embedding(Op):
    KIND: ClassVar[str] = "embedding"
    padding_idx: int | None = None

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
