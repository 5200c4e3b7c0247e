"""Max and average pooling (windowed and adaptive), 1-d to 3-d.

Shape contract (2-d): input ``(N, C, H, W)`` -> output ``(N, C, Ho, Wo)`` with, per dimension,
``Ho = (H + pad_begin + pad_end - dilation*(k-1) - 1) / stride + 1`` rounded down
(up with ``ceil_mode``, PyTorch's rule: a window may not start in the end padding).
Adaptive pooling gives ``output_size`` directly.

Pooling does no multiplications (the notebook's convention; averaging is a sum and one scale
per output): 0 MACs, but it moves its input and output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dnnlens.errors import ShapeError
from dnnlens.ops.base import Op, register

Pads = tuple[tuple[int, int], ...]


def pooled_size(size: int, k: int, s: int, pads: tuple[int, int], dilation: int, ceil_mode: bool) -> int:
    reach = dilation * (k - 1) + 1
    span = size + pads[0] + pads[1] - reach
    if span < 0:
        raise ShapeError(f"window {k} (dilation {dilation}) is larger than the padded input size {size + sum(pads)}")
    out = -(-span // s) + 1 if ceil_mode else span // s + 1
    if ceil_mode and (out - 1) * s >= size + pads[0]:
        out -= 1  # the last window would start in the end padding
    return out


@register
@dataclass(frozen=True)
class Pool(Op):
    """Windowed pooling; ``mode`` is ``"max"`` or ``"avg"``."""

    KIND: ClassVar[str] = "pool"

    mode: str = "max"
    kernel: tuple[int, ...] = (2, 2)
    stride: tuple[int, ...] = (2, 2)
    padding: Pads = ((0, 0), (0, 0))
    dilation: tuple[int, ...] = (1, 1)
    ceil_mode: bool = False
    count_include_pad: bool = True  # average pooling only

    @property
    def kind(self) -> str:
        return f"{self.mode}pool"

    def output_shape(self, input_shapes, params):
        x = input_shapes[0]
        d = len(self.kernel)
        if len(x) != d + 2:
            raise ShapeError(f"{d}-d pooling needs an input with {d + 2} dimensions, got {tuple(x)}")
        try:
            spatial = [pooled_size(size, k, s, p, dil, self.ceil_mode)
                       for size, k, s, p, dil in zip(x[2:], self.kernel, self.stride, self.padding, self.dilation)]
        except ShapeError as exc:
            raise ShapeError(f"pool window {self.kernel} does not fit the input {tuple(x)}: {exc}") from None
        return (*x[:2], *spatial)

    def descriptor(self, input_shapes, params):
        """(xw, yw, xs, ys): window then stride, width first (the notebook's order)."""
        return (*reversed(self.kernel), *reversed(self.stride))


@register
@dataclass(frozen=True)
class AdaptivePool(Op):
    """PyTorch's adaptive pooling (and ONNX's global pooling, ``output_size`` all ones)."""

    KIND: ClassVar[str] = "adaptivepool"

    mode: str = "avg"
    output_size: tuple[int, ...] = (1, 1)

    @property
    def kind(self) -> str:
        return f"adaptive{self.mode}pool"

    def output_shape(self, input_shapes, params):
        x = input_shapes[0]
        d = len(self.output_size)
        if len(x) != d + 2:
            raise ShapeError(f"{d}-d adaptive pooling needs {d + 2} dimensions, got {tuple(x)}")
        return (*x[:2], *self.output_size)
