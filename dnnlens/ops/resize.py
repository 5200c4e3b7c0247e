"""Resizing (upsampling) with nearest or linear interpolation over the spatial dimensions:
PyTorch's ``F.interpolate`` and ONNX's ``Resize`` rules.

Shape contract: ``x (N, C, *spatial)`` -> ``(N, C, *size)``. Per axis, output position ``o``
reads input coordinate ``src`` (``r = 1/scale`` when the source gave a scale factor, else
``L/Lo``), by ``coordinate_mode`` (ONNX's names):

* ``asymmetric``: ``src = o * r`` (PyTorch's ``nearest``);
* ``half_pixel``: ``src = (o + 0.5) * r - 0.5`` (PyTorch's linear, ``nearest-exact``);
* ``pytorch_half_pixel``: the same, but 0 when ``Lo == 1``;
* ``align_corners``: ``src = o * (L-1)/(Lo-1)`` (0 when ``Lo == 1``).

Nearest takes position ``floor(src)`` (``nearest_mode`` ``floor``, PyTorch), ``ceil``,
``round_prefer_floor`` or ``round_prefer_ceil`` (halves down / up), clamped to the input.
Linear blends ``i = floor(src)`` and ``i + 1`` with weights ``1 - t``, ``t = src - i``, the
coordinate clamped to ``[0, L-1]`` (the edge value repeats). Counts: no MACs (an element-wise
rule, like pooling); reads the input, writes the output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from dnnlens.errors import ShapeError
from dnnlens.ops.base import Op, register, torch_tensors

COORDINATE_MODES = ("asymmetric", "half_pixel", "pytorch_half_pixel", "align_corners")
NEAREST_MODES = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")


@register
@dataclass(frozen=True)
class Resize(Op):
    KIND: ClassVar[str] = "resize"
    mode: str = "nearest"  # "nearest" or "linear" (bilinear, trilinear: linear per axis)
    size: tuple[int, ...] = ()  # output spatial size
    scales: tuple[float, ...] | None = None  # scale factors as given (they set the mapping)
    coordinate_mode: str | None = None  # None: PyTorch's (asymmetric / half_pixel)
    nearest_mode: str = "floor"  # nearest only

    def __post_init__(self):
        if self.mode not in ("nearest", "linear"):
            raise ValueError(f"unknown resize mode {self.mode!r}: use nearest or linear")
        if self.coordinate_mode is None:  # PyTorch's: F.interpolate(mode=...)
            default = "asymmetric" if self.mode == "nearest" else "half_pixel"
            object.__setattr__(self, "coordinate_mode", default)
        if self.coordinate_mode not in COORDINATE_MODES:
            raise ValueError(
                f"unknown coordinate mode {self.coordinate_mode!r}: use one of "
                f"{', '.join(COORDINATE_MODES)}"
            )
        if self.nearest_mode not in NEAREST_MODES:
            raise ValueError(
                f"unknown nearest mode {self.nearest_mode!r}: use one of "
                f"{', '.join(NEAREST_MODES)}"
            )

    @classmethod
    def from_torch(
        cls,
        mode: str,
        size: tuple[int, ...],
        scales: tuple[float, ...] | None,
        align_corners: bool | None,
    ) -> Resize:
        """``F.interpolate``'s arguments: mode ``nearest``, ``nearest-exact``, ``linear``,
        ``bilinear`` or ``trilinear``."""
        if mode == "nearest-exact":
            return cls("nearest", size, scales, "half_pixel", "round_prefer_ceil")
        if mode == "nearest":
            return cls("nearest", size, scales)
        corners = "align_corners" if align_corners else "half_pixel"
        return cls("linear", size, None if align_corners else scales, corners)

    @property
    def kind(self) -> str:
        return "upsample_nearest" if self.mode == "nearest" else "upsample_linear"

    def output_shape(self, input_shapes, params):
        x = tuple(input_shapes[0])
        if len(x) != len(self.size) + 2:
            raise ShapeError(
                f"a {len(self.size)}-d resize needs an input with "
                f"{len(self.size) + 2} dimensions, got {x}"
            )
        if self.scales is not None and len(self.scales) != len(self.size):
            raise ShapeError(f"{len(self.scales)} scales for {len(self.size)} dimensions")
        return (*x[:2], *self.size)

    def source(self, axis: int, length: int) -> np.ndarray:
        """Input coordinate of every output position along spatial ``axis`` (see module)."""
        out = self.size[axis]
        o = np.arange(out, dtype=np.float64)
        if self.coordinate_mode == "align_corners":
            return o * ((length - 1) / (out - 1) if out > 1 else 0.0)
        ratio = 1 / self.scales[axis] if self.scales is not None else length / out
        if self.coordinate_mode == "asymmetric":
            return o * ratio
        if self.coordinate_mode == "pytorch_half_pixel" and out == 1:
            return np.zeros(1)
        return (o + 0.5) * ratio - 0.5

    def nearest(self, src: np.ndarray, length: int) -> np.ndarray:
        """The input position nearest mode picks for each coordinate, clamped to the input."""
        roundings: dict[str, Callable[[np.ndarray], np.ndarray]] = {
            "floor": np.floor,
            "ceil": np.ceil,
            "round_prefer_floor": lambda s: np.ceil(s - 0.5),
            "round_prefer_ceil": lambda s: np.floor(s + 0.5),
        }
        return np.clip(roundings[self.nearest_mode](src), 0, length - 1).astype(np.int64)

    def reference(self, inputs, weights):
        """Axis by axis: nearest copies one position; linear takes
        ``(1 - t) * x[i] + t * x[min(i + 1, L - 1)]`` with ``i = floor(src)``, ``t = src - i``."""
        x = np.asarray(inputs[0])
        self.output_shape([x.shape], {})
        for axis in range(len(self.size)):
            length = x.shape[2 + axis]
            src = self.source(axis, length)
            if self.mode == "nearest":
                x = np.take(x, self.nearest(src, length), axis=2 + axis)
                continue
            src = np.clip(src, 0, length - 1)
            low = np.floor(src).astype(np.int64)
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
        corners = None
        if self.mode == "nearest":
            modes: dict[tuple[str | None, str], str] = {
                ("asymmetric", "floor"): "nearest",
                ("half_pixel", "round_prefer_ceil"): "nearest-exact",
            }
            mode = modes.get((self.coordinate_mode, self.nearest_mode))
        else:
            mode = ("linear", "bilinear", "trilinear")[d - 1]
            aligned: dict[str | None, bool] = {"half_pixel": False, "align_corners": True}
            corners = aligned.get(self.coordinate_mode)
            mode = mode if corners is not None else None
        if mode is None:
            raise NotImplementedError(
                f"PyTorch has no resize with {self.coordinate_mode} "
                f"coordinates and {self.nearest_mode} rounding"
            )
        if self.scales is not None and not corners:
            assert all(
                math.floor(n * s) == o for n, s, o in zip(x.shape[2:], self.scales, self.size)
            )
            return F.interpolate(x, scale_factor=self.scales, mode=mode, align_corners=corners)
        return F.interpolate(x, size=self.size, mode=mode, align_corners=corners)
