"""A constant: a tensor the model did not compute from its inputs or parameters.

A buffer (Swin V2's ``relative_coords_table``), or something built from buffers and literals
(a shifted-window attention mask), that a layer consumes as an activation: the constant's node
has no inputs and its output is the tensor as traced. Buffers are never weights, whatever
their dtype (docs/units.md): the layer that reads a constant counts it in its values moved,
the constant itself moves nothing and does no MACs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from dnnlens.errors import ShapeError
from dnnlens.ops.base import Op, register, torch_tensors


@register
@dataclass(frozen=True)
class Constant(Op):
    KIND: ClassVar[str] = "constant"
    IS_VIEW: ClassVar[bool] = True  # read by its consumer, which counts it
    shape: tuple[int, ...] = ()
    source: str = ""  # the buffer's state-dict name, or "" for a computed constant

    def output_shape(self, input_shapes, params):
        return tuple(self.shape)

    # --- kernels ----------------------------------------------------------------------
    def buffers(self):
        """A buffer's value, by role ``value``, from the weights (a state dict has it)."""
        return {"value": self.source} if self.source else {}

    def kernel_gap(self, input_shapes, params):
        if not self.source:
            return (
                "a constant computed while tracing (not a buffer) has no value the engine can read"
            )
        return None

    def reference(self, inputs, weights):
        """The buffer as stored (its own dtype), a fresh array: a consumer may write to it."""
        value = np.array(weights["value"], copy=True)
        if tuple(value.shape) != tuple(self.shape):
            raise ShapeError(
                f"constant {self.source!r} has shape {tuple(value.shape)} but the "
                f"network expects {tuple(self.shape)}"
            )
        return value

    def torch_oracle(self, inputs, weights):
        (value,) = torch_tensors(weights["value"])
        return value.clone()
