"""Fully connected layer (the notebook's ``fc``), on any number of leading dimensions.

Shape contract: input ``(..., in)``, weight ``(out, in)``, bias ``(out,)`` -> output ``(..., out)``.
MACs: ``prod(leading dims) * in * out`` (for a ``(N, in)`` input: ``N * in * out``).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import ClassVar

from dnnlens.errors import ShapeError
from dnnlens.ops.base import Op, register


@register
@dataclass(frozen=True)
class Linear(Op):
    KIND: ClassVar[str] = "fc"

    def output_shape(self, input_shapes, params):
        x = input_shapes[0]
        weight = params["weight"]
        if len(x) < 1 or len(weight) != 2:
            raise ShapeError(f"fc needs an input (..., in) and a weight (out, in), got {tuple(x)} and {tuple(weight)}")
        if x[-1] != weight[1]:
            raise ShapeError(f"input {tuple(x)} has {x[-1]} features but the weight {tuple(weight)} expects {weight[1]}")
        if "bias" in params and tuple(params["bias"]) != (weight[0],):
            raise ShapeError(f"bias shape {tuple(params['bias'])} does not match {weight[0]} outputs")
        return (*x[:-1], weight[0])

    def macs(self, input_shapes, output_shape, params):
        out_features, in_features = params["weight"]
        return prod(input_shapes[0][:-1]) * in_features * out_features

    def descriptor(self, input_shapes, params):
        out_features, in_features = params["weight"]
        return (out_features, in_features)
