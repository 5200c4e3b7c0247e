"""Max and average pooling (windowed and adaptive), 1-d to 3-d.

Shape contract (2-d): input ``(N, C, H, W)`` -> output ``(N, C, Ho, Wo)`` with, per dimension,
``Ho = (H + pad_begin + pad_end - dilation*(k-1) - 1) / stride + 1`` rounded down
(up with ``ceil_mode``, PyTorch's rule: a window may not start in the end padding).
Adaptive pooling gives ``output_size`` directly.

Pooling does no multiplications (the notebook's convention; averaging is a sum and one scale
per output): 0 MACs, but it moves its input and output.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import prod
from typing import ClassVar

import numpy as np

from dnnlens.errors import ShapeError
from dnnlens.ops.base import (
    PARALLEL_MIN_WORK,
    Names,
    Op,
    as_pair,
    compiled_kernel,
    contiguous,
    output_array,
    register,
    torch_tensors,
)

Pads = tuple[tuple[int, int], ...]

prange = range  # numba.prange once the loop nests are compiled (see base.compiled_kernel)


def pooled_size(
    size: int, k: int, s: int, pads: tuple[int, int], dilation: int, ceil_mode: bool
) -> int:
    reach = dilation * (k - 1) + 1
    span = size + pads[0] + pads[1] - reach
    if span < 0:
        raise ShapeError(
            f"window {k} (dilation {dilation}) is larger than "
            f"the padded input size {size + sum(pads)}"
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
    #: variant: the pooling ``mode`` (spec files: None, the key ``pool`` takes a mode setting)
    NAMES: ClassVar[Names] = Names(
        aten={
            **{
                name: "max"
                for name in (
                    "max_pool2d_with_indices",
                    "max_pool3d_with_indices",
                    "max_pool2d",
                    "max_pool1d",
                )
            },
            "avg_pool2d": "avg",
            "avg_pool3d": "avg",
        },
        modules={
            **{f"MaxPool{d}d": "max" for d in (1, 2, 3)},
            **{f"AvgPool{d}d": "avg" for d in (1, 2, 3)},
        },
        onnx={"MaxPool": "max", "AveragePool": "avg"},
        spec={"pool": None, "maxpool": "max", "avgpool": "avg"},
    )

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
        gap = self.kernel_gap([], {})
        if gap or len(self.kernel) == 3:
            raise NotImplementedError(gap or "3-d pooling runs as two 2-d passes (_pool3d)")
        x = np.asarray(inputs[0])
        out_shape = self.output_shape([tuple(x.shape)], {})  # raises ShapeError
        window = PoolWindow(
            as_pair(self.kernel),
            as_pair(self.stride),
            ((0, 0),) * (2 - len(self.padding)) + tuple(self.padding),
            as_pair(self.dilation),
        )
        if len(self.kernel) == 1:  # (N, C, L) -> (N, C, 1, L)
            return x[:, :, None, :], window, (1, out_shape[2])
        return x, window, (out_shape[2], out_shape[3])

    def _finish(self, out: np.ndarray) -> np.ndarray:
        return out[:, :, 0, :] if len(self.kernel) == 1 else out

    def kernel_gap(self, input_shapes, params):
        if self.mode not in ("max", "avg"):
            return f"no kernel for {self.mode} pooling"
        if len(self.kernel) not in (1, 2, 3):
            return f"no kernel for {len(self.kernel)}-d pooling"
        return None

    def separated(self) -> tuple[Pool, Pool]:
        """A 3-d pool as two 2-d pools: over (H, W) first, then over D with a ``(kd, 1)``
        window. Max and average both separate: the window is a box, so its maximum is the
        maximum of per-plane maxima, and its divisor (with or without the padding counted) is
        the product of the per-axis counts."""
        (kd, kh, kw), (sd, sh, sw) = self.kernel, self.stride
        (pd, ph, pw), (dd, dh, dw) = self.padding, self.dilation
        # replace() keeps mode, ceil_mode and count_include_pad.
        planes = replace(
            self, kernel=(kh, kw), stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw)
        )
        depth = replace(
            self, kernel=(kd, 1), stride=(sd, 1), padding=(pd, (0, 0)), dilation=(dd, 1)
        )
        return planes, depth

    def _pool3d(self, x: np.ndarray, path: str) -> np.ndarray:
        """x ``(N, C, D, H, W)`` -> ``(N, C, Do, Ho, Wo)`` by :meth:`separated`."""
        out_shape = self.output_shape([x.shape], {})
        n, c, d = x.shape[:3]
        planes, depth = self.separated()
        pooled = getattr(planes, path)([x.reshape(n, c * d, *x.shape[3:])], {})
        columns = pooled.reshape(n, c, d, -1)  # (N, C, D, Ho*Wo): pool along D
        return getattr(depth, path)([columns], {}).reshape(out_shape)

    def reference(self, inputs, weights):
        if len(self.kernel) == 3:
            return self._pool3d(np.asarray(inputs[0]), "reference")
        x, window, out_size = self.window(inputs)
        if self.mode == "max":
            return self._finish(max_pool_reference(x, window, out_size))
        return self._finish(avg_pool_reference(x, window, out_size, self.count_include_pad))

    def compiled(self, inputs, weights):
        if len(self.kernel) == 3:
            return self._pool3d(np.asarray(inputs[0]), "compiled")
        x, window, out_size = self.window(inputs)
        if self.mode == "max":
            divisor = np.ones(out_size, x.dtype)
        else:
            divisor = avg_divisor(x.shape[2:], window, out_size, self.count_include_pad)
            divisor = divisor.astype(x.dtype)
        out = output_array((*x.shape[:2], *out_size), x.dtype)
        reads = out.size * prod(window.kernel)  # N*C*Ho*Wo * window
        kernel = compiled_kernel(pool_rows_loops, parallel=reads >= PARALLEL_MIN_WORK)
        (top, _), (left, _) = window.padding
        kernel(
            contiguous(x),
            divisor,
            out,
            self.mode == "max",
            *window.kernel,
            *window.stride,
            *window.dilation,
            top,
            left,
        )
        return self._finish(out)

    def torch_oracle(self, inputs, weights):
        import torch.nn.functional as F

        (x,) = torch_tensors(inputs[0])
        dims = len(self.kernel)
        begin = tuple(b for b, _ in self.padding)
        if begin != tuple(e for _, e in self.padding):
            if self.mode == "avg":
                raise NotImplementedError("PyTorch has no average pooling with uneven padding")
            pads = [p for pair in reversed(self.padding) for p in pair]  # F.pad: last dim first
            x, begin = F.pad(x, pads, value=float("-inf")), (0,) * dims
        if self.mode == "max":
            max_pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[dims - 1]
            return max_pool(
                x, self.kernel, self.stride, begin, self.dilation, ceil_mode=self.ceil_mode
            )
        avg_pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[dims - 1]
        return avg_pool(
            x,
            self.kernel,
            self.stride,
            begin,
            ceil_mode=self.ceil_mode,
            count_include_pad=self.count_include_pad,
        )


@register
@dataclass(frozen=True)
class AdaptivePool(Op):
    """PyTorch's adaptive pooling (and ONNX's global pooling, ``output_size`` all ones)."""

    KIND: ClassVar[str] = "adaptivepool"
    #: variant: the pooling ``mode``
    NAMES: ClassVar[Names] = Names(
        aten={
            "_adaptive_avg_pool2d": "avg",
            "_adaptive_avg_pool3d": "avg",
            "adaptive_max_pool2d": "max",
            "adaptive_max_pool3d": "max",
        },
        modules={
            **{f"AdaptiveAvgPool{d}d": "avg" for d in (1, 2, 3)},
            **{f"AdaptiveMaxPool{d}d": "max" for d in (1, 2, 3)},
        },
        onnx={"GlobalAveragePool": "avg", "GlobalMaxPool": "max"},
        spec={"adaptivepool": None, "globalpool": None},
    )

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
    def kernel_gap(self, input_shapes, params):
        return None if self.mode in ("max", "avg") else f"no kernel for {self.kind}"

    def _passes(self, inputs, one_axis) -> np.ndarray:
        """x ``(N, C, *spatial)`` -> ``(N, C, *output_size)``, one spatial axis at a time:
        adaptive windows are boxes (rows ``floor(o*L/Lo)`` to ``ceil((o+1)*L/Lo) - 1`` per
        axis, PyTorch's rule), so the maximum or mean over a box is the maximum or mean, axis
        after axis, of the per-axis windows."""
        gap = self.kernel_gap([], {})
        if gap:
            raise NotImplementedError(gap)
        x = np.asarray(inputs[0])
        out_shape = self.output_shape([tuple(x.shape)], {})  # a ShapeError on a wrong rank
        if all(size == 1 for size in self.output_size):
            # global pooling: one window, the whole of each (image, channel)'s values, which
            # in a C-contiguous input are one row already (the per-axis passes would copy the
            # input twice to move each axis last: most of their time)
            rows = one_axis(x.reshape(x.shape[0] * x.shape[1], -1), 1, self.mode == "max")
            return rows.reshape(out_shape)
        for axis, size in enumerate(self.output_size, start=2):
            moved = np.moveaxis(x, axis, -1)
            rows = one_axis(moved.reshape(-1, moved.shape[-1]), size, self.mode == "max")
            x = np.moveaxis(rows.reshape(*moved.shape[:-1], size), -1, axis)
        return x

    def reference(self, inputs, weights):
        return self._passes(inputs, adaptive_rows_reference)

    def compiled(self, inputs, weights):
        def one_axis(rows, size, is_max):
            rows = contiguous(rows)
            out = np.empty((rows.shape[0], size), dtype=rows.dtype)
            kernel = compiled_kernel(adaptive_rows_loops, parallel=rows.size >= PARALLEL_MIN_WORK)
            kernel(rows, out, is_max)
            return out

        return self._passes(inputs, one_axis)

    def torch_oracle(self, inputs, weights):
        import torch.nn.functional as F

        (x,) = torch_tensors(inputs[0])
        return getattr(F, f"adaptive_{self.mode}_pool{len(self.output_size)}d")(
            x, self.output_size
        )


def adaptive_rows_reference(rows: np.ndarray, size: int, is_max: bool) -> np.ndarray:
    """rows ``(R, L)`` -> ``(R, size)``: output ``o`` pools columns ``floor(o*L/size)`` to
    ``ceil((o+1)*L/size) - 1``; the loop runs over the window, every row at once."""
    length = rows.shape[1]
    out = np.empty((rows.shape[0], size), dtype=rows.dtype)
    for o in range(size):
        start, end = (o * length) // size, -(-((o + 1) * length) // size)
        result = rows[:, start].copy()
        for j in range(start + 1, end):
            result = np.maximum(result, rows[:, j]) if is_max else result + rows[:, j]
        out[:, o] = result if is_max else result / (end - start)
    return out


def adaptive_rows_loops(rows, out, is_max):  # pragma: no cover - compiled
    """The same, scalar, for Numba: rows over the cores."""
    count, length = rows.shape
    size = out.shape[1]
    for r in prange(count):
        for o in range(size):
            start, end = (o * length) // size, -(-((o + 1) * length) // size)
            result = rows[r, start]
            for j in range(start + 1, end):
                value = rows[r, j]
                if is_max:
                    result = max(result, value)
                else:
                    result += value
            out[r, o] = result if is_max else result / (end - start)


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


def pool_rows_loops(
    x, divisor, out, is_max, kh_size, kw_size, sh, sw, dh, dw, top, left
):  # pragma: no cover - compiled
    """The loop nest for Numba, without a padded copy of the input: (image, channel) planes
    shared out over the cores. For each output row and each window row ``kh`` inside the
    input, the input row is copied into a line with its padding (minus infinity for max,
    zeros for average), reduced over the window's columns at every column (one vectorised
    run per ``kw``, at stride 1), and every ``sw``-th result joins the output row. Padding
    rows are skipped: they never win a max and add nothing to a sum (the divisor counts
    them). A NaN in a window makes its maximum NaN, as in PyTorch."""
    n_images, channels, height, width = x.shape
    _, _, ho, wo = out.shape
    span = (wo - 1) * sw + 1  # columns where a window starts, in the padded line
    reach = span + (kw_size - 1) * dw
    fill = -np.inf if is_max else 0.0
    for plane in prange(n_images * channels):
        n, c = plane // channels, plane % channels
        source, target = x[n, c], out[n, c]
        row = np.empty(wo, dtype=out.dtype)
        line = np.full(reach, fill, dtype=out.dtype)
        wide = np.empty(span, dtype=out.dtype)
        first, last = max(0, left), min(reach, left + width)  # line columns from the input
        for oh in range(ho):
            for ow in range(wo):
                row[ow] = fill
            for kh in range(kh_size):
                h = oh * sh + kh * dh - top
                if h < 0 or h >= height:
                    continue
                # views and loops from 0 (Numba then tests no index for wraparound, and
                # the loops vectorise); the stride-2 pick spelled out as a constant
                values, into = source[h, first - left :], line[first:last]
                for j in range(last - first):
                    into[j] = values[j]
                for j in range(span):
                    wide[j] = line[j]
                for kw in range(1, kw_size):
                    shifted = line[kw * dw :]
                    if is_max:
                        for j in range(span):
                            value, best = shifted[j], wide[j]
                            wide[j] = value if (value > best or value != value) else best
                    else:
                        for j in range(span):
                            wide[j] += shifted[j]
                # every sw-th window start to the front of ``wide`` (in place: ow <= ow*sw)
                if sw == 2:
                    for ow in range(wo):
                        wide[ow] = wide[2 * ow]
                elif sw > 2:
                    for ow in range(wo):
                        wide[ow] = wide[ow * sw]
                if is_max:
                    for ow in range(wo):
                        value, best = wide[ow], row[ow]
                        row[ow] = value if (value > best or value != value) else best
                else:
                    for ow in range(wo):
                        row[ow] += wide[ow]
            for ow in range(wo):  # (a max pool's divisor is 1)
                target[oh, ow] = row[ow] / divisor[oh, ow]
