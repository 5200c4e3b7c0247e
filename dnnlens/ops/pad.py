"""Padding (constant, reflect, replicate, circular) and ``roll``: data movement with the
borders filled or wrapped.

Shape contract: pad: ``x (d0, d1, ...)`` -> ``(d0 + b0 + e0, d1 + b1 + e1, ...)`` with
``pads`` one ``(begin, end)`` pair per dimension, leading dimensions included (ONNX's form;
PyTorch's ``F.pad`` lists the last dimension first); a negative amount crops. Roll keeps the
shape. No multiplications: 0 MACs; they read their input and write their output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from dnnlens.errors import ShapeError
from dnnlens.ops.base import Names, Op, register, torch_tensors

PAD_MODES = ("constant", "reflect", "replicate", "circular")


def source_positions(size: int, begin: int, end: int, mode: str) -> np.ndarray:
    """For each output position along one axis, the input position it copies (``-1``: the
    constant). reflect mirrors without repeating the edge (``3 2 1 | 0 1 2 3 | 2 1``),
    replicate repeats the edge, circular wraps around."""
    positions = np.arange(-begin, size + end)
    if mode == "constant":
        return np.where((positions >= 0) & (positions < size), positions, -1)
    if mode == "replicate":
        return np.clip(positions, 0, size - 1)
    if mode == "circular":
        return positions % size
    period = 2 * (size - 1)  # reflect: a saw-tooth of period 2(size-1)
    if period == 0:
        return np.zeros_like(positions)
    folded = positions % period
    return np.where(folded < size, folded, period - folded)


@register
@dataclass(frozen=True)
class Pad(Op):
    KIND: ClassVar[str] = "pad"
    NAMES: ClassVar[Names] = Names(aten={"constant_pad_nd": None}, onnx={"Pad": None})
    pads: tuple[tuple[int, int], ...] = ()  # (begin, end) per dimension, first to last
    mode: str = "constant"
    value: float = 0.0  # constant mode's fill

    def __post_init__(self):
        if self.mode not in PAD_MODES:
            raise ValueError(f"unknown pad mode {self.mode!r}: use one of {', '.join(PAD_MODES)}")

    @property
    def kind(self) -> str:
        return "pad" if self.mode == "constant" else f"pad_{self.mode}"

    def output_shape(self, input_shapes, params):
        x = tuple(input_shapes[0])
        if len(self.pads) != len(x):
            raise ShapeError(f"{len(self.pads)} (begin, end) pads for a {len(x)}-d input {x}")
        out = []
        for size, (begin, end) in zip(x, self.pads):
            if self.mode == "reflect" and (begin >= size or end >= size) and (begin or end):
                raise ShapeError(
                    f"reflect padding {begin, end} needs a dimension larger than it, got {size}"
                )
            if self.mode != "constant" and min(begin, end) < 0:
                raise ShapeError(f"{self.mode} padding cannot be negative, got {begin, end}")
            if size + begin + end < 0 or (
                size == 0 and (begin or end) and self.mode != "constant"
            ):
                raise ShapeError(f"padding {begin, end} does not fit a dimension of {size}")
            out.append(size + begin + end)
        return tuple(out)

    def reference(self, inputs, weights):
        """Axis by axis: each output position copies the input position
        :func:`source_positions` names, or takes ``value``."""
        x = np.asarray(inputs[0])
        self.output_shape([x.shape], {})
        for axis, (begin, end) in enumerate(self.pads):
            if begin == 0 and end == 0:
                continue
            source = source_positions(x.shape[axis], begin, end, self.mode)
            picked = (
                np.take(x, np.maximum(source, 0), axis=axis)
                if x.shape[axis]
                else np.zeros((*x.shape[:axis], len(source), *x.shape[axis + 1 :]), x.dtype)
            )
            if self.mode == "constant":
                shape = [1] * x.ndim
                shape[axis] = len(source)
                picked = np.where(
                    source.reshape(shape) < 0, np.asarray(self.value, x.dtype), picked
                )
            x = picked
        return x

    def torch_oracle(self, inputs, weights):
        import torch.nn.functional as F

        (x,) = torch_tensors(inputs[0])
        moved = [i for i, pair in enumerate(self.pads) if pair != (0, 0)]
        if not moved:
            return x.clone()
        first = min(moved)
        pads = [p for pair in reversed(self.pads[first:]) for p in pair]  # last dim first
        if self.mode == "constant":
            return F.pad(x, pads, value=self.value)
        # F.pad pads the last 1-3 dims of a batched input in these modes: put the unpadded
        # leading dimensions into one batch dimension, and add a channel one
        lead = x.shape[:first]
        body = x.reshape(1, -1, *x.shape[first:]) if first else x[None, None]
        out = F.pad(body, pads, mode=self.mode)
        return out.reshape(*lead, *out.shape[2:])


@register
@dataclass(frozen=True)
class Roll(Op):
    """``torch.roll``: values shifted along ``dims`` by ``shifts``, wrapping around; without
    ``dims`` the flattened tensor rolls."""

    KIND: ClassVar[str] = "roll"
    NAMES: ClassVar[Names] = Names(aten={"roll": None})
    shifts: tuple[int, ...] = (0,)
    dims: tuple[int, ...] = ()

    def output_shape(self, input_shapes, params):
        x = tuple(input_shapes[0])
        if self.dims and len(self.dims) != len(self.shifts):
            raise ShapeError(
                f"roll takes one shift per dimension, got shifts {self.shifts} "
                f"and dims {self.dims}"
            )
        if not self.dims and len(self.shifts) != 1:
            raise ShapeError("roll without dims takes one shift")
        for d in self.dims:
            if not -len(x) <= d < len(x):
                raise ShapeError(f"roll dimension {d} is out of range for shape {x}")
        return x

    def reference(self, inputs, weights):
        """``out[i] = x[(i - shift) mod size]`` along each rolled axis."""
        x = np.asarray(inputs[0])
        self.output_shape([x.shape], {})
        if not self.dims:
            return Roll(self.shifts, (0,)).reference([x.reshape(-1)], {}).reshape(x.shape)
        for shift, axis in zip(self.shifts, self.dims):
            size = x.shape[axis]
            if size:
                x = np.take(x, (np.arange(size) - shift) % size, axis=axis)
        return x

    def torch_oracle(self, inputs, weights):
        import torch

        (x,) = torch_tensors(inputs[0])
        return torch.roll(x, self.shifts, self.dims)
