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

from dnnlens.ops.base import Op, register


@register
@dataclass(frozen=True)
class Constant(Op):
    KIND: ClassVar[str] = "constant"
    IS_VIEW: ClassVar[bool] = True  # read by its consumer, which counts it
    shape: tuple[int, ...] = ()
    source: str = ""  # the buffer's state-dict name, or "" for a computed constant

    def output_shape(self, input_shapes, params):
        return tuple(self.shape)
