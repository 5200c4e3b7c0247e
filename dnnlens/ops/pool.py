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
from math import prod
from typing import ClassVar

import numpy as np

from dnnlens.errors import ShapeError
from dnnlens.ops.base import PARALLEL_MIN_WORK, Op, compiled_kernel, register

Pads = tuple[tuple[int, int], ...]

prange = range  # numba.prange once the loop nests are compiled (see base.compiled_kernel)


def pooled_size(
    size: int, k: int, s: int, pads: tuple[int, int], dilation: int, ceil_mode: bool
) -> int:
    reach = dilation * (k - 1) + 1
    span = size + pads[0] + pads[1] - reach
    if span < 0:
        raise ShapeError(
            f"window {k} (dilation {dilation}) is larger than the padded input size {size + sum(pads)}"
        )
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
            raise ShapeError(
                f"{d}-d pooling needs an input with {d + 2} dimensions, got {tuple(x)}"
            )
        try:
            spatial = [
                pooled_size(size, k, s, p, dil, self.ceil_mode)
                for size, k, s, p, dil in zip(
                    x[2:], self.kernel, self.stride, self.padding, self.dilation
                )
            ]
        except ShapeError as exc:
            raise ShapeError(
                f"pool window {self.kernel} does not fit the input {tuple(x)}: {exc}"
            ) from None
        return (*x[:2], *spatial)

    def descriptor(self, input_shapes, params):
        """(xw, yw, xs, ys): window then stride, width first (the notebook's order)."""
        return (*reversed(self.kernel), *reversed(self.stride))

    # --- kernels ----------------------------------------------------------------------
    def window(self, inputs) -> tuple[np.ndarray, PoolWindow, tuple[int, int]]:
        """Checked ``(x as (N, C, H, W), window, (Ho, Wo))``: 1-d pooling runs over a height
        of 1. ShapeError if the window does not fit the input."""
        if self.mode not in ("max", "avg") or len(self.kernel) not in (1, 2):
            raise NotImplementedError(f"no kernel for {len(self.kernel)}-d {self.kind}")
        x = np.asarray(inputs[0])
        out_shape = self.output_shape([tuple(x.shape)], {})  # raises ShapeError
        window = PoolWindow(
            tuple(self.kernel), tuple(self.stride), tuple(self.padding), tuple(self.dilation)
        )
        if len(self.kernel) == 1:  # (N, C, L) -> (N, C, 1, L)
            x = x[:, :, None, :]
            window = PoolWindow(
                (1, *window.kernel),
                (1, *window.stride),
                ((0, 0), *window.padding),
                (1, *window.dilation),
            )
            return x, window, (1, out_shape[2])
        return x, window, (out_shape[2], out_shape[3])

    def _finish(self, out: np.ndarray) -> np.ndarray:
        return out[:, :, 0, :] if len(self.kernel) == 1 else out

    def reference(self, inputs, weights):
        x, window, out_size = self.window(inputs)
        if self.mode == "max":
            return self._finish(max_pool_reference(x, window, out_size))
        return self._finish(avg_pool_reference(x, window, out_size, self.count_include_pad))

    def compiled(self, inputs, weights):
        x, window, out_size = self.window(inputs)
        if self.mode == "max":
            padded = window.pad(x, out_size, -np.inf)
            divisor = np.ones(out_size, x.dtype)
        else:
            padded = window.pad(x, out_size, 0.0)
            divisor = avg_divisor(x.shape[2:], window, out_size, self.count_include_pad)
            divisor = divisor.astype(x.dtype)
        out = np.empty((*x.shape[:2], *out_size), dtype=x.dtype)
        reads = out.size * prod(window.kernel)  # N*C*Ho*Wo * window
        kernel = compiled_kernel(pool_loops, parallel=reads >= PARALLEL_MIN_WORK)
        kernel(
            padded,
            divisor,
            out,
            self.mode == "max",
            *window.kernel,
            *window.stride,
            *window.dilation,
        )
        return self._finish(out)


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

    # --- kernels ----------------------------------------------------------------------
    def reference(self, inputs, weights):
        """x ``(N, C, H, W)`` -> ``(N, C, Ho, Wo)``; output row ``oh`` pools input rows
        ``floor(oh*H/Ho)`` to ``ceil((oh+1)*H/Ho) - 1`` (PyTorch's rule), columns likewise."""
        if self.mode not in ("max", "avg") or len(self.output_size) not in (1, 2):
            raise NotImplementedError(f"no kernel for {len(self.output_size)}-d {self.kind}")
        x = np.asarray(inputs[0])
        self.output_shape([tuple(x.shape)], {})  # raises ShapeError on a wrong rank
        one_d = len(self.output_size) == 1
        if one_d:
            x = x[:, :, None, :]
        ho, wo = (1, *self.output_size) if one_d else self.output_size
        height, width = x.shape[2:]
        out = np.empty((*x.shape[:2], ho, wo), dtype=x.dtype)
        for oh in range(ho):
            top, bottom = (oh * height) // ho, -(-((oh + 1) * height) // ho)
            for ow in range(wo):
                left, right = (ow * width) // wo, -(-((ow + 1) * width) // wo)
                result = x[:, :, top, left].copy()  # (N, C): the window's first value
                for row in range(top, bottom):
                    for col in range(left, right):
                        if (row, col) == (top, left):
                            continue
                        if self.mode == "max":
                            result = np.maximum(result, x[:, :, row, col])
                        else:
                            result += x[:, :, row, col]
                if self.mode == "avg":
                    result /= (bottom - top) * (right - left)
                out[:, :, oh, ow] = result
        return out[:, :, 0, :] if one_d else out


@dataclass(frozen=True)
class PoolWindow:
    """A 2-d pooling window as the kernels take it (pairs: height, width)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: Pads  # ((top, bottom), (left, right))
    dilation: tuple[int, int]

    def padded_size(self, size: int, axis: int, out: int) -> tuple[int, int]:
        """(begin, end) padding so every window lies inside; with ``ceil_mode`` the last
        window may reach past the declared end padding."""
        begin, end = self.padding[axis]
        reach = (out - 1) * self.stride[axis] + self.dilation[axis] * (self.kernel[axis] - 1) + 1
        return begin, max(end, reach - begin - size)

    def pad(self, x: np.ndarray, out_size: tuple[int, int], value: float) -> np.ndarray:
        """``(N, C, H, W)`` surrounded by ``value`` so every window lies inside it."""
        n, c, height, width = x.shape
        top, bottom = self.padded_size(height, 0, out_size[0])
        left, right = self.padded_size(width, 1, out_size[1])
        padded = np.full((n, c, top + height + bottom, left + width + right), value, x.dtype)
        padded[:, :, top : top + height, left : left + width] = x
        return padded

    def taps(self, out_size: tuple[int, int]):
        """For each window position (kh, kw): the rows and columns it reads for every output."""
        (ho, wo), (sh, sw), (dh, dw) = out_size, self.stride, self.dilation
        for kh in range(self.kernel[0]):
            for kw in range(self.kernel[1]):
                yield (
                    slice(kh * dh, kh * dh + sh * (ho - 1) + 1, sh),
                    slice(kw * dw, kw * dw + sw * (wo - 1) + 1, sw),
                )


def max_pool_reference(x: np.ndarray, window: PoolWindow, out_size: tuple[int, int]) -> np.ndarray:
    """x ``(N, C, H, W)`` -> ``(N, C, Ho, Wo)``: the largest value in each window (padding
    counts as minus infinity, so it never wins). The loop runs over the window positions;
    each step compares every output at once."""
    padded = window.pad(x, out_size, -np.inf)
    out = np.full((*x.shape[:2], *out_size), -np.inf, dtype=x.dtype)
    for rows, cols in window.taps(out_size):
        out = np.maximum(out, padded[:, :, rows, cols])
    return out


def avg_divisor(
    size: tuple[int, int], window: PoolWindow, out_size: tuple[int, int], count_include_pad: bool
) -> np.ndarray:
    """``(Ho, Wo)``: how many values each window averages. PyTorch counts the declared padding
    when ``count_include_pad``, but never the part of a ceil-mode window beyond it."""
    height, width = size
    counted = np.zeros((1, 1, height, width))
    counted = window.pad(counted + 1.0, out_size, 0.0)
    if count_include_pad:
        (top, bottom), (left, right) = window.padding
        counted[:, :, : top + height + bottom, : left + width + right] = 1.0
    total = np.zeros(out_size)
    for rows, cols in window.taps(out_size):
        total += counted[0, 0, rows, cols]
    return total


def avg_pool_reference(
    x: np.ndarray, window: PoolWindow, out_size: tuple[int, int], count_include_pad: bool
) -> np.ndarray:
    """x ``(N, C, H, W)`` -> ``(N, C, Ho, Wo)``: each window's sum over the loop of window
    positions, divided by :func:`avg_divisor` (padding adds zeros)."""
    padded = window.pad(x, out_size, 0.0)
    total = np.zeros((*x.shape[:2], *out_size), dtype=x.dtype)
    for rows, cols in window.taps(out_size):
        total += padded[:, :, rows, cols]
    return total / avg_divisor(x.shape[2:], window, out_size, count_include_pad).astype(x.dtype)


def pool_loops(padded, divisor, out, is_max, kh_size, kw_size, sh, sw, dh, dw):  # pragma: no cover
    """The same loop nest, scalar, for Numba: (image, channel) planes shared out over the cores;
    ``padded`` already holds the padding (minus infinity for max, zeros for average)."""
    n_images, channels, ho, wo = out.shape
    for plane in prange(n_images * channels):
        n, c = plane // channels, plane % channels
        for oh in range(ho):
            for ow in range(wo):
                result = padded[n, c, oh * sh, ow * sw]
                for kh in range(kh_size):
                    for kw in range(kw_size):
                        value = padded[n, c, oh * sh + kh * dh, ow * sw + kw * dw]
                        if kh == 0 and kw == 0:
                            continue
                        if is_max:
                            result = max(result, value)
                        else:
                            result += value
                out[n, c, oh, ow] = result / divisor[oh, ow]
