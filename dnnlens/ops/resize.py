"""Resizing (upsampling) with nearest or linear interpolation over the spatial dimensions,
PyTorch's ``F.interpolate`` rules.

Shape contract: ``x (N, C, *spatial)`` -> ``(N, C, *size)``. Per axis, output position ``o``
reads input coordinate ``src``: with ``align_corners``, ``src = o * (L-1)/(Lo-1)``; else
nearest ``src = floor(o * r)`` and linear ``src = max((o + 0.5) * r - 0.5, 0)``, where
``r = 1/scale`` when the source gave a scale factor, else ``L/Lo``. Linear interpolation
blends ``floor(src)`` and the next position (the last one repeats). Counts: no MACs (an
element-wise rule, like pooling); reads the input, writes the output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from dnnlens.errors import ShapeError
from dnnlens.ops.base import Op, register, torch_tensors


@register
@dataclass(frozen=True)
class Resize(Op):
    KIND: ClassVar[str] = "resize"
    mode: str = "nearest"  # "nearest" or "linear" (bilinear, trilinear: linear per axis)
    size: tuple[int, ...] = ()  # output spatial size
    scales: tuple[float, ...] | None = None  # scale factors as given (they set the mapping)
    align_corners: bool = False  # linear only

    def __post_init__(self):
        if self.mode not in ("nearest", "linear"):
            raise ValueError(f"unknown resize mode {self.mode!r}: use nearest or linear")
        if self.align_corners and self.mode == "nearest":
            raise ValueError("align_corners applies to linear resizing only")

    @property
    def kind(self) -> str:
        return "upsample_nearest" if self.mode == "nearest" else "upsample_linear"

    def output_shape(self, input_shapes, params):
        x = tuple(input_shapes[0])
        if len(x) != len(self.size) + 2:
            raise ShapeError(f"a {len(self.size)}-d resize needs an input with "
                             f"{len(self.size) + 2} dimensions, got {x}")
        if self.scales is not None and len(self.scales) != len(self.size):
            raise ShapeError(f"{len(self.scales)} scales for {len(self.size)} dimensions")
        return (*x[:2], *self.size)

    def source(self, axis: int, length: int) -> np.ndarray:
        """Input coordinate of every output position along spatial ``axis`` (see module)."""
        out = self.size[axis]
        o = np.arange(out, dtype=np.float64)
        if self.align_corners:
            return o * ((length - 1) / (out - 1) if out > 1 else 0.0)
        ratio = 1 / self.scales[axis] if self.scales is not None else length / out
        if self.mode == "nearest":
            return np.minimum(np.floor(o * ratio), length - 1)
        return np.maximum((o + 0.5) * ratio - 0.5, 0.0)

    def reference(self, inputs, weights):
        """Axis by axis: nearest copies position ``floor(src)``; linear takes
        ``(1 - t) * x[i] + t * x[min(i + 1, L - 1)]`` with ``i = floor(src)``, ``t = src - i``."""
        x = np.asarray(inputs[0])
        self.output_shape([x.shape], {})
        for axis in range(len(self.size)):
            length = x.shape[2 + axis]
            src = self.source(axis, length)
            low = np.minimum(src.astype(np.int64), length - 1)
            if self.mode == "nearest":
                x = np.take(x, low, axis=2 + axis)
                continue
            high = np.minimum(low + 1, length - 1)
            shape = [1] * x.ndim
            shape[2 + axis] = len(src)
            t = (src - low).reshape(shape).astype(x.dtype)
            x = (1 - t) * np.take(x, low, axis=2 + axis) + t * np.take(x, high, axis=2 + axis)
        return x

    def torch_oracle(self, inputs, weights):
        import torch.nn.functional as F

        (x,) = torch_tensors(inputs[0])
        d = len(self.size)
        mode = "nearest" if self.mode == "nearest" else ("linear", "bilinear", "trilinear")[d - 1]
        corners = self.align_corners if self.mode == "linear" else None
        if self.scales is not None:
            assert all(math.floor(n * s) == o for n, s, o in zip(x.shape[2:], self.scales,
                                                                   self.size))
            return F.interpolate(x, scale_factor=self.scales, mode=mode, align_corners=corners)
        return F.interpolate(x, size=self.size, mode=mode, align_corners=corners)
