"""A constant: a tensor the model did not compute from its inputs or parameters.

A buffer (Swin V2's ``relative_coords_table``), or something built from buffers and literals
(a shifted-window attention mask), that a layer consumes as an activation: the constant's node
has no inputs and its output is the tensor as traced. Buffers are never weights, whatever
their dtype (docs/units.md): the layer that reads a constant counts it in its values moved,
the constant itself moves nothing and does no MACs.

Where its value comes from: a buffer's is read from the weights by its state-dict name
(``source``); a constant the model computed from literals alone (Swin's shifted-window mask,
built by filling slices of ``x.new_zeros(...)``) keeps its values in the operator, as raw
bytes of ``dtype`` (the importer computed them while tracing). A constant computed from
buffers keeps no values (a checkpoint may change the buffers): it has no kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
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
    dtype: str = ""  # a computed constant's NumPy dtype ("float32", "bool", ...)
    data: bytes = field(default=b"", repr=False)  # its values, C order; b"": not known

    def __post_init__(self):
        if self.data or self.dtype:
            expected = prod(self.shape) * np.dtype(self.dtype).itemsize
            if self.source or len(self.data) != expected:
                raise ValueError(
                    f"a computed constant of shape {tuple(self.shape)} and dtype {self.dtype} "
                    f"holds {expected} bytes and no source, got {len(self.data)}"
                )

    @classmethod
    def of(cls, value: np.ndarray) -> Constant:
        """A computed constant holding ``value``."""
        value = np.ascontiguousarray(value)
        return cls(shape=tuple(value.shape), dtype=value.dtype.str, data=value.tobytes())

    @property
    def known(self) -> bool:
        """Whether the engine can have its value: a buffer, or values kept here."""
        return bool(self.source or self.dtype)

    def output_shape(self, input_shapes, params):
        return tuple(self.shape)

    # --- kernels ----------------------------------------------------------------------
    def buffers(self):
        """A buffer's value, by role ``value``, from the weights (a state dict has it)."""
        return {"value": self.source} if self.source else {}

    def kernel_gap(self, input_shapes, params):
        if not self.known:
            return (
                "a constant computed from buffers while tracing has no value the engine can "
                "read (only buffers and constants made of literals have one)"
            )
        return None

    def value(self, weights) -> np.ndarray:
        if not self.source and self.dtype:
            return np.frombuffer(self.data, dtype=self.dtype).reshape(self.shape)
        return np.asarray(weights["value"])

    def reference(self, inputs, weights):
        """The buffer as stored (its own dtype), or the values kept here; a fresh array: a
        consumer may write to it."""
        value = np.array(self.value(weights), copy=True)
        if value.shape != tuple(self.shape) and value.size == prod(self.shape):
            value = value.reshape(self.shape)  # a reshaped buffer (``index.view(-1)``)
        if tuple(value.shape) != tuple(self.shape):
            raise ShapeError(
                f"constant {self.source!r} has shape {tuple(value.shape)} but the "
                f"network expects {tuple(self.shape)}"
            )
        return value

    def torch_oracle(self, inputs, weights):
        (value,) = torch_tensors(self.value(weights))
        return value.clone().reshape(self.shape)
