"""Convolution, 1-d to 3-d, grouped, dilated, and transposed.

Shape contract (2-d shown; 1-d and 3-d drop or add a spatial dimension):

* input ``(N, Cin, H, W)``; weight ``(Cout, Cin/groups, Kh, Kw)``
  (transposed: ``(Cin, Cout/groups, Kh, Kw)``); bias ``(Cout,)``;
* output ``(N, Cout, Ho, Wo)`` with, per spatial dimension,
  ``Ho = (H + pad_begin + pad_end - dilation*(Kh-1) - 1) // stride + 1``,
  transposed: ``Ho = (H-1)*stride - pad_begin - pad_end + dilation*(Kh-1) + output_padding + 1``.

MACs, padding zeros counted: ``N * Cout * Ho*Wo * (Cin/groups) * Kh*Kw``; a transposed
convolution scatters every input value through its kernel:
``N * Cin * H*W * (Cout/groups) * Kh*Kw``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from math import prod
from typing import Any, ClassVar

import numpy as np

from dnnlens.errors import ShapeError
from dnnlens.ops.base import (
    PARALLEL_MIN_WORK,
    Launch,
    Names,
    Op,
    as_pair,
    as_triple,
    check_fits,
    compiled_kernel,
    contiguous,
    expect_rank,
    generated_kernel,
    generated_source,
    output_array,
    pack_output_blocks,
    register,
    slp_vectorizer,
    torch_tensors,
)

Pads = tuple[tuple[int, int], ...]

prange = range  # numba.prange once the loop nests are compiled (see base.compiled_kernel)


def symmetric_padding(padding: tuple[int, ...]) -> Pads:
    """``(1, 2)`` -> ``((1, 1), (2, 2))``: PyTorch's per-dimension padding as (begin, end)."""
    return tuple((int(p), int(p)) for p in padding)


def same_padding(
    sizes: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    extra_at_end: bool = True,
) -> Pads:
    """ "Same" padding, the one definition every importer uses: the (begin, end) pairs that
    make the output ``ceil(size / stride)`` long; an odd total puts the extra zero at the end
    (PyTorch's ``padding="same"``, ONNX ``SAME_UPPER``) or at the beginning (``SAME_LOWER``).
    ``total = max((ceil(size / stride) - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)``.
    """
    pairs = []
    for size, k, s, d in zip(sizes, kernel, stride, dilation):
        total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
        small = total // 2
        pairs.append((small, total - small) if extra_at_end else (total - small, small))
    return tuple(pairs)


@register
@dataclass(frozen=True)
class Conv(Op):
    KIND: ClassVar[str] = "conv"
    NAMES: ClassVar[Names] = Names(
        aten={"convolution": None},
        modules={
            name: None
            for name in (
                "Conv1d",
                "Conv2d",
                "Conv3d",
                "ConvTranspose1d",
                "ConvTranspose2d",
                "ConvTranspose3d",
            )
        },
        onnx={"Conv": None, "ConvTranspose": None},
        spec={"conv": None, "convtranspose": None},
    )

    stride: tuple[int, ...] = (1, 1)
    padding: Pads = ((0, 0), (0, 0))  # (begin, end) per spatial dimension
    dilation: tuple[int, ...] = (1, 1)
    groups: int = 1
    transposed: bool = False
    output_padding: tuple[int, ...] = (0, 0)

    @property
    def kind(self) -> str:
        return "convtranspose" if self.transposed else "conv"

    @property
    def spatial_dims(self) -> int:
        return len(self.stride)

    @property
    def extra_padding(self) -> tuple[int, ...]:
        """``output_padding`` per spatial dimension (the default's two zeros fit any rank)."""
        return (*self.output_padding, *(0,) * (self.spatial_dims - len(self.output_padding)))

    def _channels(self, input_shape, weight):
        """(Cin, Cout, kernel) checked against each other."""
        d = self.spatial_dims
        expect_rank(input_shape, d + 2, "conv input")
        expect_rank(weight, d + 2, "conv weight")
        cin = input_shape[1]
        kernel = tuple(weight[2:])
        if self.transposed:
            if weight[0] != cin:
                raise ShapeError(
                    f"input has {cin} channels but the weight {tuple(weight)} expects {weight[0]}"
                )
            cout = weight[1] * self.groups
        else:
            if weight[1] * self.groups != cin:
                raise ShapeError(
                    f"input {tuple(input_shape)} has {cin} channels but the weight "
                    f"{tuple(weight)} with groups={self.groups} expects {weight[1] * self.groups}"
                )
            cout = weight[0]
        if cin % self.groups or cout % self.groups:
            raise ShapeError(
                f"channels in={cin} out={cout} are not divisible by groups={self.groups}"
            )
        return cin, cout, kernel

    def output_shape(self, input_shapes, params):
        (x,) = input_shapes[:1]
        cin, cout, kernel = self._channels(x, params["weight"])
        if "bias" in params and tuple(params["bias"]) != (cout,):
            raise ShapeError(
                f"bias shape {tuple(params['bias'])} does not match {cout} output channels"
            )
        spatial = []
        for size, k, s, (pb, pe), dil, op in zip(
            x[2:], kernel, self.stride, self.padding, self.dilation, self.extra_padding
        ):
            reach = dil * (k - 1) + 1
            if self.transposed:
                out = (size - 1) * s - pb - pe + reach + op
            else:
                if size + pb + pe < reach:
                    raise ShapeError(
                        f"kernel {tuple(kernel)} (dilation {self.dilation}) is larger than the "
                        f"padded input {tuple(x)}"
                    )
                out = (size + pb + pe - reach) // s + 1
            if out < 1:
                raise ShapeError(f"input {tuple(x)} gives an empty output")
            spatial.append(out)
        return (x[0], cout, *spatial)

    def macs(self, input_shapes, output_shape, params):
        x = input_shapes[0]
        weight = params["weight"]
        kernel = prod(weight[2:])
        if self.transposed:
            cout_per_group = weight[1]
            return prod(x) * cout_per_group * kernel  # N*Cin*H*W * Cout/g * K
        cin_per_group = weight[1]
        return prod(output_shape) * cin_per_group * kernel  # N*Cout*Ho*Wo * Cin/g * K

    def descriptor(self, input_shapes, params):
        """(Kw, Kh, Cin, Cout) for 2-d; kernel sizes innermost-first for 1-d/3-d."""
        x = input_shapes[0]
        cin, cout, kernel = self._channels(x, params["weight"])
        return (*reversed(kernel), cin, cout)

    # --- kernels ----------------------------------------------------------------------
    def kernel_args(
        self, inputs, weights
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, Conv2dAttrs]:
        """Checked ``(x, weight, bias, attrs)`` as a 2-d convolution: a 1-d one runs over a
        height of 1. ShapeError (naming both shapes) if the input does not fit the weight."""
        if self.transposed or self.spatial_dims not in (1, 2):
            raise NotImplementedError(
                f"no kernel for {self.spatial_dims}-d {self.kind} (only 1-d/2-d convolution)"
            )
        x, weight = np.asarray(inputs[0]), np.asarray(weights["weight"])
        bias = weights.get("bias")
        check_fits(self, x, weights)
        attrs = Conv2dAttrs(
            as_pair(self.stride),
            ((0, 0),) * (2 - len(self.padding)) + tuple(self.padding),
            as_pair(self.dilation),
            self.groups,
        )
        if self.spatial_dims == 1:  # (N, C, L) -> (N, C, 1, L)
            x, weight = x[:, :, None, :], weight[:, :, None, :]
        return x, weight, bias, attrs

    def _finish(self, out: np.ndarray) -> np.ndarray:
        return out[:, :, 0, :] if self.spatial_dims == 1 else out

    def kernel_gap(self, input_shapes, params):
        if self.spatial_dims not in (1, 2, 3):
            return f"no kernel for {self.spatial_dims}-d {self.kind}"
        return None

    @property
    def general(self) -> bool:
        """Whether the kernels are the 3-d loop nests (3-d or transposed convolution); 1-d and
        2-d convolution keep their own 2-d kernels (the course network's speed)."""
        return self.transposed or self.spatial_dims == 3

    def reference(self, inputs, weights):
        if self.general:
            return self._run_3d(inputs, weights, compiled=False)
        x, weight, bias, attrs = self.kernel_args(inputs, weights)
        return self._finish(conv2d_reference(x, weight, bias, attrs))

    def compiled(self, inputs, weights):
        if self.general:
            return self._run_3d(inputs, weights, compiled=True)
        x, weight, bias, attrs = self.kernel_args(inputs, weights)
        return self._finish(conv2d_compiled(x, weight, bias, attrs))

    def _run_3d(self, inputs, weights, compiled: bool) -> np.ndarray:
        """Any convolution as a 3-d one: a 1-d/2-d input gets unit depth (and height)."""
        gap = self.kernel_gap([], {})
        if gap:
            raise NotImplementedError(gap)
        x, weight = np.asarray(inputs[0]), np.asarray(weights["weight"])
        bias = weights.get("bias")
        out_shape = self.output_shape([x.shape], {r: np.shape(w) for r, w in weights.items()})
        missing = 3 - self.spatial_dims
        unit = (1,) * missing
        x = x.reshape(*x.shape[:2], *unit, *x.shape[2:])
        weight = weight.reshape(*weight.shape[:2], *unit, *weight.shape[2:])
        attrs = Conv3dAttrs(
            as_triple(self.stride),
            (((0, 0),) * missing) + tuple(self.padding),
            as_triple(self.dilation),
            self.groups,
            as_triple(self.extra_padding, fill=0),
        )
        dtype = np.result_type(x, weight)
        bias = np.zeros(out_shape[1], dtype) if bias is None else np.asarray(bias, dtype)
        if self.transposed:
            run = conv_transpose3d_compiled if compiled else conv_transpose3d_reference
        else:
            run = conv3d_compiled if compiled else conv3d_reference
        return run(
            x.astype(dtype, copy=False), weight.astype(dtype, copy=False), bias, attrs
        ).reshape(out_shape)

    def torch_oracle(self, inputs, weights):
        import torch.nn.functional as F

        x, weight, bias = torch_tensors(inputs[0], weights["weight"], weights.get("bias"))
        d = self.spatial_dims
        if self.transposed:
            begin = tuple(b for b, _ in self.padding)
            if begin != tuple(e for _, e in self.padding):
                raise NotImplementedError("PyTorch's transposed convolution pads evenly")
            transposed = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[d - 1]
            return transposed(
                x, weight, bias, self.stride, begin, self.extra_padding, self.groups, self.dilation
            )
        pads = [p for pair in reversed(self.padding) for p in pair]  # F.pad: last dim first
        conv = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
        return conv(F.pad(x, pads), weight, bias, self.stride, 0, self.dilation, self.groups)


@dataclass(frozen=True)
class Conv3dAttrs:
    """A 3-d (or transposed) convolution's attributes as the kernels take them (triples:
    depth, height, width)."""

    stride: tuple[int, int, int]
    padding: Pads  # (begin, end) per spatial dimension
    dilation: tuple[int, int, int]
    groups: int
    output_padding: tuple[int, int, int]


def _taps(k: int, d: int, s: int, count: int) -> slice:
    """Positions ``k*d + s*o`` for ``o = 0..count-1``, as a slice."""
    return slice(k * d, k * d + s * (count - 1) + 1, s)


def conv3d_reference(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, attrs: Conv3dAttrs
) -> np.ndarray:
    """x ``(N, Cin, D, H, W)``, weight ``(Cout, Cin/groups, Kd, Kh, Kw)``, bias ``(Cout,)`` ->
    ``(N, Cout, Do, Ho, Wo)``: ``out[n, co, od, oh, ow] = bias[co] + sum over ci, kd, kh, kw
    of weight[co, ci, kd, kh, kw] * x_padded[n, group(co) + ci, od*sd + kd*dd, ...]``; the
    loops run over the output channel and the reduction indices, each step one
    multiply-accumulate for every image and output position at once."""
    xp = np.pad(x, ((0, 0), (0, 0), *attrs.padding))
    cout, cin_per_group, *kernel = weight.shape
    size = [
        (xp.shape[2 + i] - attrs.dilation[i] * (kernel[i] - 1) - 1) // attrs.stride[i] + 1
        for i in range(3)
    ]
    out = np.zeros((x.shape[0], cout, *size), dtype=x.dtype)
    cout_per_group = cout // attrs.groups
    (sd, sh, sw), (dd, dh, dw) = attrs.stride, attrs.dilation
    for co in range(cout):
        first = (co // cout_per_group) * cin_per_group
        for ci in range(cin_per_group):
            for kd in range(kernel[0]):
                for kh in range(kernel[1]):
                    for kw in range(kernel[2]):
                        window = xp[
                            :,
                            first + ci,
                            _taps(kd, dd, sd, size[0]),
                            _taps(kh, dh, sh, size[1]),
                            _taps(kw, dw, sw, size[2]),
                        ]
                        out[:, co] += weight[co, ci, kd, kh, kw] * window
        out[:, co] += bias[co]
    return out


def conv3d_loops(xp, weight, bias, out, sd, sh, sw, dd, dh, dw, groups):  # pragma: no cover
    """The same loop nest, scalar, for Numba: (image, output channel) pairs over the cores;
    the innermost loop runs along an output row."""
    n_images, cout, do, ho, wo = out.shape
    cin_per_group, kd_size, kh_size, kw_size = weight.shape[1:]
    cout_per_group = cout // groups
    for job in prange(n_images * cout):
        n, co = job // cout, job % cout
        first = (co // cout_per_group) * cin_per_group
        for od in range(do):
            for oh in range(ho):
                for ow in range(wo):
                    out[n, co, od, oh, ow] = bias[co]
        for ci in range(cin_per_group):
            for kd in range(kd_size):
                for kh in range(kh_size):
                    for kw in range(kw_size):
                        w = weight[co, ci, kd, kh, kw]
                        for od in range(do):
                            for oh in range(ho):
                                row = xp[n, first + ci, od * sd + kd * dd, oh * sh + kh * dh]
                                for ow in range(wo):
                                    out[n, co, od, oh, ow] += w * row[ow * sw + kw * dw]


def conv3d_compiled(x, weight, bias, attrs: Conv3dAttrs) -> np.ndarray:
    """:func:`conv3d_loops` compiled with Numba; same contract as :func:`conv3d_reference`."""
    xp = contiguous(np.pad(x, ((0, 0), (0, 0), *attrs.padding)))
    cout, _, *kernel = weight.shape
    size = [
        (xp.shape[2 + i] - attrs.dilation[i] * (kernel[i] - 1) - 1) // attrs.stride[i] + 1
        for i in range(3)
    ]
    out = np.empty((x.shape[0], cout, *size), dtype=x.dtype)
    macs = out.size * weight[0].size
    kernel_fn = compiled_kernel(conv3d_loops, parallel=macs >= PARALLEL_MIN_WORK)
    kernel_fn(
        xp, contiguous(weight), contiguous(bias), out, *attrs.stride, *attrs.dilation, attrs.groups
    )
    return out


def _transposed_sizes(x_shape, kernel, attrs: Conv3dAttrs) -> tuple[list[int], list[int]]:
    """(output sizes, sizes of the uncropped buffer every input scatters into): per axis
    ``out = (L-1)*s - pad_begin - pad_end + d*(k-1) + output_padding + 1``; the buffer reaches
    ``(L-1)*s + d*(k-1) + 1`` and at least ``pad_begin + out``."""
    out, full = [], []
    for i in range(3):
        length, s, d, k = x_shape[2 + i], attrs.stride[i], attrs.dilation[i], kernel[i]
        (begin, end), extra = attrs.padding[i], attrs.output_padding[i]
        size = (length - 1) * s - begin - end + d * (k - 1) + extra + 1
        out.append(size)
        full.append(max((length - 1) * s + d * (k - 1) + 1, begin + size))
    return out, full


def _crop(
    full: np.ndarray, out_size: list[int], attrs: Conv3dAttrs, bias: np.ndarray
) -> np.ndarray:
    (bd, _), (bh, _), (bw, _) = attrs.padding
    out = full[:, :, bd : bd + out_size[0], bh : bh + out_size[1], bw : bw + out_size[2]]
    return out + bias.reshape(1, -1, 1, 1, 1)


def conv_transpose3d_reference(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, attrs: Conv3dAttrs
) -> np.ndarray:
    """x ``(N, Cin, D, H, W)``, weight ``(Cin, Cout/groups, Kd, Kh, Kw)`` -> ``(N, Cout, Do,
    Ho, Wo)``: every input value scattered through the kernel, ``full[n, co, id*sd + kd*dd,
    ...] += weight[ci, co_in_group, kd, kh, kw] * x[n, ci, id, ...]``, then the padding cropped
    off both ends. The loops run over channels and kernel taps, each step serving every image
    and input position at once."""
    cin, cout_per_group, *kernel = weight.shape
    cin_per_group = cin // attrs.groups
    out_size, full_size = _transposed_sizes(x.shape, kernel, attrs)
    full = np.zeros((x.shape[0], cout_per_group * attrs.groups, *full_size), dtype=x.dtype)
    size = x.shape[2:]
    (sd, sh, sw), (dd, dh, dw) = attrs.stride, attrs.dilation
    for ci in range(cin):
        group = ci // cin_per_group
        for j in range(cout_per_group):
            co = group * cout_per_group + j
            for kd in range(kernel[0]):
                for kh in range(kernel[1]):
                    for kw in range(kernel[2]):
                        full[
                            :,
                            co,
                            _taps(kd, dd, sd, size[0]),
                            _taps(kh, dh, sh, size[1]),
                            _taps(kw, dw, sw, size[2]),
                        ] += weight[ci, j, kd, kh, kw] * x[:, ci]
    return _crop(full, out_size, attrs, bias)


def conv_transpose3d_loops(x, weight, full, groups, sd, sh, sw, dd, dh, dw):  # pragma: no cover
    """The same scatter, scalar, for Numba: (image, output channel) pairs over the cores
    (each writes only its own plane of ``full``, so no two threads add to one value)."""
    n_images, cin, di, hi, wi = x.shape
    cout_per_group, kd_size, kh_size, kw_size = weight.shape[1:]
    cout = full.shape[1]
    cin_per_group = cin // groups
    for job in prange(n_images * cout):
        n, co = job // cout, job % cout
        group, j = co // cout_per_group, co % cout_per_group
        for ci in range(group * cin_per_group, (group + 1) * cin_per_group):
            for kd in range(kd_size):
                for kh in range(kh_size):
                    for kw in range(kw_size):
                        w = weight[ci, j, kd, kh, kw]
                        for i in range(di):
                            for h in range(hi):
                                for k in range(wi):
                                    full[
                                        n, co, i * sd + kd * dd, h * sh + kh * dh, k * sw + kw * dw
                                    ] += w * x[n, ci, i, h, k]


def conv_transpose3d_compiled(x, weight, bias, attrs: Conv3dAttrs) -> np.ndarray:
    """:func:`conv_transpose3d_loops` compiled; contract of :func:`conv_transpose3d_reference`."""
    cin, cout_per_group, *kernel = weight.shape
    out_size, full_size = _transposed_sizes(x.shape, kernel, attrs)
    full = np.zeros((x.shape[0], cout_per_group * attrs.groups, *full_size), dtype=x.dtype)
    macs = x.size * weight[0].size
    kernel_fn = compiled_kernel(conv_transpose3d_loops, parallel=macs >= PARALLEL_MIN_WORK)
    kernel_fn(
        contiguous(x), contiguous(weight), full, attrs.groups, *attrs.stride, *attrs.dilation
    )
    return _crop(full, out_size, attrs, bias)


@dataclass(frozen=True)
class Conv2dAttrs:
    """A 2-d convolution's attributes as the kernels take them (pairs: height, width)."""

    stride: tuple[int, int] = (1, 1)
    padding: Pads = ((0, 0), (0, 0))  # ((top, bottom), (left, right))
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def output_size(self, height: int, width: int, kh: int, kw: int) -> tuple[int, int]:
        """``Ho = (H + top + bottom - dilation*(Kh-1) - 1) // stride + 1``, same for ``Wo``."""
        (top, bottom), (left, right) = self.padding
        ho = (height + top + bottom - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (width + left + right - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        return ho, wo


def pad_input(x: np.ndarray, padding: Pads, value: float = 0.0) -> np.ndarray:
    """``(N, C, H, W)`` -> ``(N, C, top+H+bottom, left+W+right)`` with ``value`` around it."""
    (top, bottom), (left, right) = padding
    n, c, h, w = x.shape
    padded = np.full((n, c, top + h + bottom, left + w + right), value, dtype=x.dtype)
    padded[:, :, top : top + h, left : left + w] = x
    return padded


def conv2d_reference(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, attrs: Conv2dAttrs
) -> np.ndarray:
    """The readable loop nest: x ``(N, Cin, H, W)``, weight ``(Cout, Cin/groups, Kh, Kw)``,
    bias ``(Cout,)`` or None -> ``(N, Cout, Ho, Wo)``.

    ``out[n, co, oh, ow] = bias[co] + sum over ci, kh, kw of
    weight[co, ci, kh, kw] * x_padded[n, group(co)*Cin/groups + ci, oh*sh + kh*dh,
    ow*sw + kw*dw]``.

    The loops run over the output channel and the reduction indices (ci, kh, kw); each step is
    one multiply-accumulate for every image and every output pixel at once, so the Python loop
    runs Cout * Cin/groups * Kh * Kw times whatever the batch and image size.
    """
    n, _, height, width = x.shape
    cout, cin_per_group, kh_size, kw_size = weight.shape
    (sh, sw), (dh, dw) = attrs.stride, attrs.dilation
    ho, wo = attrs.output_size(height, width, kh_size, kw_size)
    x_padded = pad_input(x, attrs.padding)
    cout_per_group = cout // attrs.groups
    out = np.zeros((n, cout, ho, wo), dtype=np.result_type(x, weight))
    for co in range(cout):
        first_input_channel = (co // cout_per_group) * cin_per_group
        for ci in range(cin_per_group):
            for kh in range(kh_size):
                for kw in range(kw_size):
                    # rows oh*sh + kh*dh for oh = 0..Ho-1, columns ow*sw + kw*dw likewise
                    rows = slice(kh * dh, kh * dh + sh * (ho - 1) + 1, sh)
                    cols = slice(kw * dw, kw * dw + sw * (wo - 1) + 1, sw)
                    window = x_padded[:, first_input_channel + ci, rows, cols]  # (N, Ho, Wo)
                    out[:, co] += weight[co, ci, kh, kw] * window
        if bias is not None:
            out[:, co] += bias[co]
    return out


def conv2d_compiled(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, attrs: Conv2dAttrs
) -> np.ndarray:
    """:func:`conv_taps_loops` compiled with Numba (weights packed on every call; the engine
    packs them once, see :func:`bind_conv2d`); same contract as :func:`conv2d_reference`."""
    return bind_conv2d(x.shape, x.dtype, weight, bias, attrs)(x)


# --- general 2-d convolution as a sum over taps (issue 12) --------------------------------
#: Output channels whose accumulators one pass updates (``R``) and taps (input channel, kh,
#: kw) summed into them per pass (``T``): each input value loaded serves ``R`` multiply-adds,
#: each accumulator loaded and stored serves ``T``. 4 x 4 measured best on Zen 4 (AVX-512: the
#: 16 weights, 4 accumulators and 4 inputs fit its 32 vector registers; 4 x 8 spills).
#: (:func:`conv_taps_loops` spells both out: its 16 weights are named scalars.)
TAP_ROWS, TAPS_PER_PASS = 4, 4
#: Output positions per job (accumulators ``TAP_ROWS x TAP_TILE`` stay in the L1 cache).
TAP_TILE = 256
#: A tile's positions are computed in whole blocks of this many (one AVX-512 register of
#: float32), so the vectorised loop has no scalar remainder; the packed input carries slack.
TAP_BLOCK = 16
#: Jobs are shared out over the cores in this many chunks at most, each with accumulators of
#: its own (enough chunks that a core slowed by other work leaves little idle at the end).
TAP_CHUNKS = 256


@dataclass(frozen=True)
class TapGeometry:
    """Where every tap of a 2-d convolution reads, once the padded input is split into its
    stride phases and packed.

    A stride-``s`` convolution is a sum of stride-1 convolutions over the ``sh*sw`` phase
    planes of the padded input: ``x_padded[n, ci, sh*i + a, sw*j + b]`` is ``plane(ci, a,
    b)[n, i, j]``. Each plane holds all the batch's images one after the other (``hq`` rows
    of ``wq`` values each), so output ``(n, oh, ow)`` kept at position ``P = (n*hq + oh)*wq
    + ow`` reads tap ``(ci, kh, kw)`` at ``P + offset``: the tap's plane start plus ``(kh*dh
    // sh)*wq + kw*dw // sw``. One fixed offset per tap, and the loop over output positions
    (all rows of all images) is one contiguous run; positions past a row's ``wo`` or an
    image's ``ho`` are computed and dropped.

    Neighbours share their padding: a row holds its left padding and the image but only as
    much right padding as exceeds the left (a tap reading past the row's end lands in the
    next row's left padding, zeros too), and likewise an image's bottom padding is the next
    one's top. Fewer positions are dropped: a 7x7 plane with padding 1 computes 8x8
    positions per image instead of 9x9. The last image has no next one: ``tail`` zero rows
    follow it in each plane, for its last outputs' reads (not the next plane's values)."""

    phases: tuple[tuple[int, int], ...]  # the (a, b) phases some tap reads
    images: int
    hq: int  # rows of an image in a phase plane
    wq: int  # values per row
    ho: int
    wo: int
    tail: int = 0  # zero rows after the last image

    @property
    def plane(self) -> int:
        """Values from one phase plane of one input channel (all images) to the next:
        rounded up to whole blocks, so that taps of different channels at the same (kh, kw),
        summed in one pass, are equally aligned."""
        return -(-(self.images * self.hq + self.tail) * self.wq // TAP_BLOCK) * TAP_BLOCK

    @property
    def run(self) -> int:
        """Output positions from the first image's first to the last image's last output."""
        return ((self.images - 1) * self.hq + self.ho - 1) * self.wq + self.wo

    @property
    def tiles(self) -> int:
        return -(-self.run // TAP_TILE)

    def buffer(self, cin: int, offsets: np.ndarray) -> int:
        """Values in the packed input: the planes, and slack for the reads of the last
        tile's whole blocks at the farthest tap (``offsets``: :func:`tap_offsets`), past
        the last plane into zeros."""
        reach = int(offsets.max()) + -(-self.run // TAP_BLOCK) * TAP_BLOCK
        return max(cin * len(self.phases) * self.plane, reach)


def tap_geometry(x_shape: tuple[int, ...], kernel: tuple[int, int], attrs: Conv2dAttrs):
    """The :class:`TapGeometry` of a convolution over ``(N, Cin, H, W)`` inputs."""
    n, _, height, width = x_shape
    (kh_size, kw_size), (sh, sw), (dh, dw) = kernel, attrs.stride, attrs.dilation
    (top, bottom), (left, right) = attrs.padding
    ho, wo = attrs.output_size(height, width, kh_size, kw_size)
    # shared padding (see TapGeometry), but room for every output (a kernel shorter than
    # the padding has outputs that read padding only)
    hq = max(-(-(top + height + max(0, bottom - top)) // sh), ho)
    wq = max(-(-(left + width + max(0, right - left)) // sw), wo)
    phases = tuple(
        sorted({(kh * dh % sh, kw * dw % sw) for kh in range(kh_size) for kw in range(kw_size)})
    )
    # the last image's outputs read at most min(top, bottom) padded rows past its rows (its
    # shared bottom padding), and its last row's taps up to a row further
    tail = -(-min(top, bottom) // sh) + 1
    return TapGeometry(phases, n, hq, wq, ho, wo, tail)


def tap_order(cin_per_group: int, kh_size: int, kw_size: int) -> list[tuple[int, int, int]]:
    """The taps ``(ci, kh, kw)`` in the order the kernel sums them: input channels in groups
    of ``TAPS_PER_PASS``, and within a group every (kh, kw) for all its channels, so that a
    pass reads several channels at one kernel position (equally aligned loads) and a group's
    few input rows stay in the L1 cache over its passes."""
    order = []
    for first in range(0, cin_per_group, TAPS_PER_PASS):
        for kh in range(kh_size):
            for kw in range(kw_size):
                last = min(first + TAPS_PER_PASS, cin_per_group)
                order += [(ci, kh, kw) for ci in range(first, last)]
    return order


def tap_offsets(geometry: TapGeometry, weight_shape, attrs: Conv2dAttrs) -> np.ndarray:
    """``offsets[g, k]``: where tap ``k`` (of group ``g``, in :func:`tap_order`) reads in the
    packed input, relative to the output position; padded with zeros (a valid place to
    read) to whole passes of ``TAPS_PER_PASS``."""
    cout, cin_per_group, kh_size, kw_size = weight_shape
    (sh, sw), (dh, dw) = attrs.stride, attrs.dilation
    phase_index = {phase: i for i, phase in enumerate(geometry.phases)}
    taps = cin_per_group * kh_size * kw_size
    offsets = np.zeros((attrs.groups, -(-taps // TAPS_PER_PASS) * TAPS_PER_PASS), np.int64)
    for g in range(attrs.groups):
        for k, (ci, kh, kw) in enumerate(tap_order(cin_per_group, kh_size, kw_size)):
            phase = phase_index[(kh * dh % sh, kw * dw % sw)]
            plane = (g * cin_per_group + ci) * len(geometry.phases) + phase
            row, col = kh * dh // sh, kw * dw // sw
            offsets[g, k] = plane * geometry.plane + row * geometry.wq + col
    return offsets


def pack_tap_weights(weight: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """``weight (Cout, Cin/groups, Kh, Kw)`` in the order :func:`conv_taps_loops` reads it:
    ``packed[block, pass, t*TAP_ROWS + r]`` is output channel ``r`` of the block (blocks of
    ``TAP_ROWS`` channels, none straddling two groups) times tap ``pass*TAPS_PER_PASS + t``
    (in :func:`tap_order`); missing channels and taps are zeros. Also the output channel
    of every block row (-1: none)."""
    cout, cin_per_group, kh_size, kw_size = weight.shape
    taps = cin_per_group * kh_size * kw_size
    passes = -(-taps // TAPS_PER_PASS)
    cout_per_group = cout // groups
    blocks = -(-cout_per_group // TAP_ROWS)
    order = [(ci * kh_size + kh) * kw_size + kw for ci, kh, kw in tap_order(*weight.shape[1:])]
    flat = weight.reshape(groups, cout_per_group, taps)[:, :, order]
    packed = np.zeros((groups, blocks * TAP_ROWS, passes * TAPS_PER_PASS), weight.dtype)
    packed[:, :cout_per_group, :taps] = flat
    packed = packed.reshape(groups, blocks, TAP_ROWS, passes, TAPS_PER_PASS)
    packed = packed.transpose(0, 1, 3, 4, 2).reshape(groups * blocks, passes, -1)
    channel = np.full((groups, blocks * TAP_ROWS), -1, np.int64)
    channel[:, :cout_per_group] = np.arange(cout).reshape(groups, cout_per_group)
    return np.ascontiguousarray(packed), channel.reshape(groups * blocks, TAP_ROWS)


def pack_input_loops(
    x, packed, top, left, sh, sw, phase_rows, phase_cols, hq, wq, plane
):  # pragma: no cover - compiled
    """x ``(N, Cin, H, W)`` -> ``packed[(ci*phases + f)*plane + (n*hq + i)*wq + j] =
    x_padded[n, ci, i*sh + a_f, j*sw + b_f]`` (``packed`` comes zeroed: the padding)."""
    n_images, cin, height, width = x.shape
    phases = phase_rows.shape[0]
    for job in prange(n_images * cin):
        ci, n = job // n_images, job % n_images
        for f in range(phases):
            a, b = phase_rows[f], phase_cols[f]
            start = (ci * phases + f) * plane + n * hq * wq
            # columns j whose padded column j*sw + b - left falls inside the image
            first = max(0, -(-(left - b) // sw))
            last = min(wq, (width - 1 + left - b) // sw + 1)
            for i in range(hq):
                h = i * sh + a - top
                if h < 0 or h >= height:
                    continue
                if last <= first:
                    continue
                # views that start where the copy does, and loops from 0: Numba then knows
                # no index is negative (no wraparound test per value), and strides 1 and 2
                # spelled out as constants let LLVM vectorise the copy (a plain copy, or a
                # de-interleave) instead of gathering
                source = x[n, ci, h, first * sw + b - left :]
                target = packed[start + i * wq + first : start + i * wq + last]
                if sw == 1:
                    for j in range(last - first):
                        target[j] = source[j]
                elif sw == 2:
                    for j in range(last - first):
                        target[j] = source[2 * j]
                else:
                    for j in range(last - first):
                        target[j] = source[j * sw]


def conv_taps_loops(
    packed,
    offsets,
    weights,
    channel,
    bias,
    residual,
    out,
    lower,
    upper,
    hq,
    wq,
    add_residual,
):  # pragma: no cover - compiled
    """Any 2-d convolution as ``out[co, P] = bias[co] + sum over taps k of weight[co, k] *
    packed[offsets[group, k] + P]`` over the output positions ``P`` (see
    :class:`TapGeometry`), then the epilogue: ``+ residual`` (if ``add_residual``; of the
    output's shape) and a clamp to ``[lower, upper]`` (ReLU: ``[0, inf]``).

    Jobs ``(tile of TAP_TILE positions, block of TAP_ROWS output channels)`` are shared out
    over the cores in chunks, tile-major (a tile's input stays in the core's cache for all
    blocks), so one image keeps both busy. A job's accumulators stay in the L1 cache; each
    pass over them adds ``TAPS_PER_PASS`` taps to all four channels: the 16 weights are
    loop-invariant scalars (broadcast registers), the loop over positions vectorises, and
    each value loaded serves four multiply-adds. (A depthwise conv has a kernel of its own:
    :func:`make_depthwise`.)"""
    blocks = channel.shape[0]
    n_images, cout, ho, wo = out.shape
    groups = offsets.shape[0]
    passes = weights.shape[1]
    blocks_per_group = blocks // groups
    run = ((n_images - 1) * hq + ho - 1) * wq + wo
    tiles = -(-run // TAP_TILE)
    jobs = tiles * blocks
    chunks = min(jobs, TAP_CHUNKS)
    for chunk in prange(chunks):
        acc = np.empty((4, TAP_TILE + TAP_BLOCK), dtype=out.dtype)  # (rows not 1 KiB apart)
        a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
        for job in range(chunk * jobs // chunks, (chunk + 1) * jobs // chunks):
            tile, block = job // blocks, job % blocks
            group = block // blocks_per_group
            p0 = tile * TAP_TILE
            m = min(TAP_TILE, run - p0)
            m = -(-m // TAP_BLOCK) * TAP_BLOCK
            for r in range(4):
                co = channel[block, r]
                start = bias[co] if co >= 0 else 0
                for p in range(m):
                    acc[r, p] = start
            x = packed[p0:]
            taps = offsets[group]
            for step in range(passes):
                w = weights[block, step]
                k = step * 4
                w00, w01, w02, w03 = w[0], w[1], w[2], w[3]
                w10, w11, w12, w13 = w[4], w[5], w[6], w[7]
                w20, w21, w22, w23 = w[8], w[9], w[10], w[11]
                w30, w31, w32, w33 = w[12], w[13], w[14], w[15]
                x0, x1 = x[taps[k] :], x[taps[k + 1] :]
                x2, x3 = x[taps[k + 2] :], x[taps[k + 3] :]
                for p in range(m):
                    v0, v1, v2, v3 = x0[p], x1[p], x2[p], x3[p]
                    a0[p] += (w00 * v0 + w10 * v1) + (w20 * v2 + w30 * v3)
                    a1[p] += (w01 * v0 + w11 * v1) + (w21 * v2 + w31 * v3)
                    a2[p] += (w02 * v0 + w12 * v1) + (w22 * v2 + w32 * v3)
                    a3[p] += (w03 * v0 + w13 * v1) + (w23 * v2 + w33 * v3)
            # epilogue: each row (of wq positions) the tile touches back to (n, oh, ow)
            for r in range(4):
                co = channel[block, r]
                if co < 0:
                    continue
                for line in range(p0 // wq, (p0 + m - 1) // wq + 1):
                    n, oh = line // hq, line % hq
                    if oh >= ho or n >= n_images:
                        continue
                    first = max(line * wq, p0)
                    last = min(line * wq + wo, p0 + m)
                    # views from the first position and a loop from 0 (no index Numba must
                    # test for wraparound, so the loop vectorises)
                    column = first - line * wq
                    target = out[n, co, oh, column:]
                    extra = residual[n, co, oh, column:]
                    values = acc[r, first - p0 :]
                    if add_residual:
                        for p in range(last - first):
                            value = values[p] + extra[p]
                            value = lower if value < lower else value
                            target[p] = upper if value > upper else value
                    else:
                        for p in range(last - first):
                            value = values[p]
                            value = lower if value < lower else value
                            target[p] = upper if value > upper else value


# --- deep convolutions as row blocks (issue 12) --------------------------------------------
#: Output positions and output channels the row-block conv sums at once: 8 positions by 16
#: channels, 128 sums in 8 AVX-512 registers (and as many partial sums). 4 positions were
#: 1-11% slower (each weight vector loaded served 4 multiply-adds, not 8), 12 ran out of
#: registers (10x slower).
GEMM_ROWS, GEMM_BLOCK = 8, 16
#: Taps the row-block conv sums into partial sums before adding them to the totals (as the
#: batched fc does, see :data:`dnnlens.ops.linear.SUM_CHUNK`: rounding stays within PyTorch's).
GEMM_CHUNK = 64
#: A conv (one group) from at least this many input channels takes the row-block kernel.
#: Measured on resnet18's shapes, alone, against :func:`conv_taps_loops` (2026-11-30): its 3x3
#: convs from 128 channels on ran at 89-93% of the probed peak, against 69-86%, at batch 1
#: (9-36% faster) and up to 6% faster at batch 32; the 1x1 and 3x3 strided ones from 64-256
#: channels 7-50% faster at batch 1 and level to 29% faster at batch 32; the 3x3 from 64
#: channels at 56x56 level. The stem, 7x7 from 3 channels, ran 10% slower with it. Also
#: mobilenet_v2's pointwise convs from 64 channels or more: the network 1-2% faster.
GEMM_MIN_CHANNELS = 64


def row_blocks_conv_source() -> str:
    """A 2-d convolution (one group) as Python source, summed like a matrix product whose
    rows are output positions and whose columns are output channels.

    The output positions are those of :class:`TapGeometry` (position ``P`` reads tap ``k`` at
    ``packed[P + offsets[k]]``). A job takes ``GEMM_ROWS`` consecutive positions and
    ``GEMM_BLOCK`` output channels, whose weights are packed ``(Cout/16, taps, 16)``: each tap
    adds each position's input value (a broadcast) times the tap's 16 weights (one contiguous
    load) to that position's 16 sums. The sums are scalar variables that the SLP vectorizer
    packs into registers (as :func:`dnnlens.ops.linear.row_blocks_source` does), so they stay
    there over all the taps, and each weight vector loaded serves 8 multiply-adds: where
    :func:`conv_taps_loops` keeps its sums in memory, loading and storing them on every pass.
    Jobs go tile by tile of ``TAP_TILE`` positions, and within a tile channel block by
    channel block: the tile's input and a block's weights stay in the L2 cache while they
    are used (one channel block over all the positions first re-read a batch's input from
    memory for every block: a strided conv at batch 32 ran 35% slower than
    :func:`conv_taps_loops`). The sums then go through the epilogue (residual, clamp) into ``out``:
    positions past a row's ``wo`` or an image's ``ho`` are dropped."""
    rows, block = GEMM_ROWS, GEMM_BLOCK
    sums = [f"s{r}_{o}" for r in range(rows) for o in range(block)]
    parts = [f"p{r}_{o}" for r in range(rows) for o in range(block)]

    def add_tap(indent: str, k: str) -> list[str]:
        """Lines adding tap ``k`` of the job's positions to their partial sums ``p``."""
        return [
            f"{indent}w = weights[{k}]",
            # unsigned: Numba then tests no index for wraparound, and the loads vectorise
            f"{indent}at = np.uint64(offsets[{k}] + p0)",
            *(f"{indent}v{r} = packed[at + np.uint64({r})]" for r in range(rows)),
            *(f"{indent}p{r}_{o} += v{r} * w[{o}]" for r in range(rows) for o in range(block)),
        ]

    lines = [
        "def conv_row_blocks(",
        "    packed, offsets, wpacked, bias, residual, out, lower, upper, hq, wq, add_residual",
        "):  # pragma: no cover - compiled",
        "    n_images, cout, ho, wo = out.shape",
        "    n_blocks, taps, _ = wpacked.shape",
        "    run = ((n_images - 1) * hq + ho - 1) * wq + wo",
        "    position_blocks = -(-run // ROWS)",
        "    tile_jobs = n_blocks * TILE",
        "    jobs = -(-position_blocks // TILE) * tile_jobs",
        "    chunks = min(jobs, CHUNKS)",
        "    zero = np.zeros(1, out.dtype)[0]",
        "    for chunk in prange(chunks):",
        "        done = np.empty((ROWS, BLOCK), out.dtype)",
        "        for job in range(chunk * jobs // chunks, (chunk + 1) * jobs // chunks):",
        "            b = job % tile_jobs // TILE",
        "            position_block = job // tile_jobs * TILE + job % TILE",
        "            if position_block >= position_blocks:",
        "                continue",
        "            p0 = position_block * ROWS",
        "            weights = wpacked[b]",
        "            start = bias[b * BLOCK :]",
        f"            {', '.join(sums)} = "
        + ", ".join(f"start[{o}]" for _ in range(rows) for o in range(block)),
        "            for chunk_at in range(0, taps // TAPS * TAPS, TAPS):",
        f"                {', '.join(parts)} = {', '.join('zero' for _ in parts)}",
        "                for t in range(TAPS):",
        *add_tap("                    ", "chunk_at + t"),
        *(f"                {total} += {part}" for total, part in zip(sums, parts)),
        f"            {', '.join(parts)} = {', '.join('zero' for _ in parts)}",
        "            for k in range(taps // TAPS * TAPS, taps):",
        *add_tap("                ", "k"),
        *(f"            {total} += {part}" for total, part in zip(sums, parts)),
        *(f"            done[{r}, {o}] = s{r}_{o}" for r in range(rows) for o in range(block)),
        "            # the epilogue: each of the job's positions that is an output",
        "            for r in range(ROWS):",
        "                position = p0 + r",
        "                line = position // wq",
        "                n, oh, ow = line // hq, line % hq, position % wq",
        "                if n >= n_images or oh >= ho or ow >= wo:",
        "                    continue",
        "                for o in range(min(BLOCK, cout - b * BLOCK)):",
        "                    co = b * BLOCK + o",
        "                    value = done[r, o]",
        "                    if add_residual:",
        "                        value += residual[n, co, oh, ow]",
        "                    value = lower if value < lower else value",
        "                    out[n, co, oh, ow] = upper if value > upper else value",
    ]
    constants = {
        "ROWS": rows,
        "BLOCK": block,
        "TAPS": GEMM_CHUNK,
        "CHUNKS": TAP_CHUNKS,
        "TILE": TAP_TILE // rows,
    }
    return generated_source("dnnlens.ops.conv.row_blocks_conv_source", constants, lines)


def row_blocks_conv_kernel(parallel: bool):
    """:func:`row_blocks_conv_source` loaded and compiled (see :func:`generated_kernel`)."""
    name = f"dnnlens_conv_row_blocks_{GEMM_ROWS}x{GEMM_BLOCK}"
    return generated_kernel(name, row_blocks_conv_source, "conv_row_blocks", parallel)


# --- depthwise 2-d convolution (issue 12) -------------------------------------------------
#: (image, channel) jobs of a depthwise conv are shared out over the cores in at most this
#: many chunks, each with a padded plane of its own.
DEPTHWISE_CHUNKS = 64


def make_depthwise(kh_size: int, kw_size: int, sh: int, sw: int, dh: int, dw: int):
    """The depthwise loop nest with the kernel size, stride and dilation as closure
    variables, which Numba compiles as constants (see :func:`depthwise_kernel`): the taps'
    loops unroll, and a stride of 2 reads every other value (a de-interleave, which LLVM
    vectorises) instead of a gather."""

    def depthwise_loops(
        x, weight, bias, residual, out, top, left, lower, upper, add_residual
    ):  # pragma: no cover - compiled
        """A depthwise conv (one input channel per output channel) with its epilogue:
        ``out[n, c] = clamp(bias[c] + sum over taps of weight[c, kh*Kw + kw] *
        x_padded[n, c, oh*sh + kh*dh, ow*sw + kw*dw] [+ residual[n, c]], lower, upper)``.

        A depthwise conv does ``Kh*Kw`` multiply-adds per input value: memory-bound, so it
        reads its input once and where it lies. Each (image, channel) job copies its plane,
        padded, into a buffer that stays in the L1/L2 cache (the chunk's jobs all write the
        same places, so the padding, zeroed once, stays zero), then sums the taps for every
        output position: with stride 1 over the whole plane in one run (output ``(oh, ow)``
        at ``oh*wp + ow``, each tap at a fixed offset from it; the ``wp - wo`` positions past
        each row's end are computed and dropped), otherwise a row at a time."""
        n_images, channels, height, width = x.shape
        _, _, ho, wo = out.shape
        hp = (ho - 1) * sh + (kh_size - 1) * dh + 1  # padded rows and columns read
        wp = (wo - 1) * sw + (kw_size - 1) * dw + 1
        h_first, h_last = max(0, -top), min(height, hp - top)
        w_first, w_last = max(0, -left), min(width, wp - left)
        whole = sh == 1 and sw == 1  # (a compile-time constant)
        run = (ho - 1) * wp + wo if whole else wo  # positions summed in one pass
        passes, lines = (1, ho) if whole else (ho, 1)  # and the output rows each covers
        jobs = n_images * channels
        chunks = min(jobs, DEPTHWISE_CHUNKS)
        for chunk in prange(chunks):
            plane = np.zeros(hp * wp, dtype=out.dtype)
            acc = np.empty(run, dtype=out.dtype)
            for job in range(chunk * jobs // chunks, (chunk + 1) * jobs // chunks):
                n, c = job // channels, job % channels
                for h in range(h_first, h_last):
                    # views from the first column and loops from 0: no index Numba must
                    # test for wraparound, so the copies and sums vectorise
                    source = x[n, c, h, w_first:]
                    target = plane[(top + h) * wp + left + w_first :]
                    for w in range(w_last - w_first):
                        target[w] = source[w]
                taps, start = weight[c], bias[c]
                for oh in range(passes):
                    for p in range(run):
                        acc[p] = start
                    for kh in range(kh_size):
                        row = plane[(oh * sh + kh * dh) * wp :]
                        for p in range(run):
                            total = acc[p]
                            for kw in range(kw_size):
                                total += taps[kh * kw_size + kw] * row[p * sw + kw * dw]
                            acc[p] = total
                    for r in range(lines):  # the epilogue, a row at a time
                        line = oh + r
                        values = acc[r * wp :]
                        target, extra = out[n, c, line], residual[n, c, line]
                        for p in range(wo):
                            value = values[p] + extra[p] if add_residual else values[p]
                            value = lower if value < lower else value
                            target[p] = upper if value > upper else value

    return depthwise_loops


_DEPTHWISE: dict[tuple, object] = {}


def depthwise_kernel(kernel: tuple[int, int], attrs: Conv2dAttrs, parallel: bool):
    """:func:`make_depthwise`'s loop nest compiled (once per process and shape)."""
    key = (*kernel, *attrs.stride, *attrs.dilation, parallel)
    if key not in _DEPTHWISE:
        loops = make_depthwise(*kernel, *attrs.stride, *attrs.dilation)
        _DEPTHWISE[key] = compiled_kernel(loops, parallel=parallel)
    return _DEPTHWISE[key]


def bind_depthwise(
    x_shape: tuple[int, ...],
    dtype: np.dtype,
    weight: np.ndarray,
    bias: np.ndarray,
    attrs: Conv2dAttrs,
    lower: float,
    upper: float,
) -> Callable[..., np.ndarray]:
    """:func:`bind_conv2d` for a depthwise conv (``Cout == groups == Cin``)."""
    n, channels, height, width = x_shape
    _, _, kh_size, kw_size = weight.shape
    ho, wo = attrs.output_size(height, width, kh_size, kw_size)
    shape = (n, channels, ho, wo)
    taps = np.ascontiguousarray(weight.reshape(channels, kh_size * kw_size), dtype)
    macs = prod(shape) * kh_size * kw_size
    kernel = depthwise_kernel((kh_size, kw_size), attrs, parallel=macs >= PARALLEL_MIN_WORK)
    (top, _), (left, _) = attrs.padding

    def call(x: np.ndarray, residual: np.ndarray | None = None) -> np.ndarray:
        out = output_array(shape, dtype)
        extra = out if residual is None else np.ascontiguousarray(residual, dtype)
        x = np.ascontiguousarray(x, dtype)
        kernel(x, taps, bias, extra, out, top, left, lower, upper, residual is not None)
        return out

    return call


def bind_conv2d(
    x_shape: tuple[int, ...],
    x_dtype: np.dtype,
    weight: np.ndarray,
    bias: np.ndarray | None,
    attrs: Conv2dAttrs,
    lower: float = -np.inf,
    upper: float = np.inf,
) -> Callable[..., np.ndarray]:
    """:func:`conv_taps_loops` (or, from ``GEMM_MIN_CHANNELS`` input channels on, the row-block
    kernel of :func:`row_blocks_conv_source`; a depthwise conv: :func:`bind_depthwise`) for
    inputs of shape ``x_shape`` ``(N, Cin, H, W)``, with the weights packed and every size
    decided once: ``call(x)`` -> ``clamp(conv(x) + bias)``, ``call(x, residual)`` ->
    ``clamp(conv(x) + bias + residual)`` (residual of the output's shape), clamped to
    ``[lower, upper]`` (``(0, inf)``: ReLU; the default: none)."""
    n, cin, _, _ = x_shape
    cout, cin_per_group, kh_size, kw_size = weight.shape
    dtype = np.result_type(x_dtype, weight)
    bias = np.zeros(cout, dtype) if bias is None else np.ascontiguousarray(bias, dtype)
    lower, upper = float(lower), float(upper)
    if cin_per_group == 1 and cout == attrs.groups == cin:
        return bind_depthwise(x_shape, dtype, weight, bias, attrs, lower, upper)
    geometry = tap_geometry(x_shape, (kh_size, kw_size), attrs)
    offsets = tap_offsets(geometry, weight.shape, attrs)
    phase_rows = np.array([a for a, _ in geometry.phases], np.int64)
    phase_cols = np.array([b for _, b in geometry.phases], np.int64)
    (top, _), (left, _) = attrs.padding
    shape = (n, cout, geometry.ho, geometry.wo)
    macs = prod(shape) * cin_per_group * kh_size * kw_size
    parallel = macs >= PARALLEL_MIN_WORK
    # copying is quick: a parallel region (whose start costs more than the copy on a busy
    # machine) only for large inputs
    pack = compiled_kernel(pack_input_loops, parallel=prod(x_shape) >= 4 * PARALLEL_MIN_WORK)
    taps = cin_per_group * kh_size * kw_size
    row_blocks = attrs.groups == 1 and cin_per_group >= GEMM_MIN_CHANNELS
    if row_blocks:
        order = [
            (ci * kh_size + kh) * kw_size + kw for ci, kh, kw in tap_order(cin, kh_size, kw_size)
        ]
        flat = np.asarray(weight, dtype).reshape(cout, taps)[:, order]
        packed_weights = pack_output_blocks(np.ascontiguousarray(flat), GEMM_BLOCK)
        padded_bias = np.zeros(packed_weights.shape[0] * GEMM_BLOCK, dtype)
        padded_bias[:cout] = bias
        conv = row_blocks_conv_kernel(parallel)
        arrays: tuple[np.ndarray, ...] = (
            np.ascontiguousarray(offsets[0, :taps]),
            packed_weights,
            padded_bias,
        )
    else:
        weights, channel = pack_tap_weights(np.asarray(weight, dtype), attrs.groups)
        conv = compiled_kernel(conv_taps_loops, parallel=parallel)
        arrays = (offsets, weights, channel, bias)
    sizes = (
        top,
        left,
        *attrs.stride,
        phase_rows,
        phase_cols,
        geometry.hq,
        geometry.wq,
        geometry.plane,
    )

    # The packed input is kept from call to call: every call writes the same places, so its
    # padding stays zero, and a large buffer is neither faulted in nor zeroed again. A call
    # that finds it in use (another thread) packs into a buffer of its own.
    length = geometry.buffer(cin, offsets)
    kept = [np.zeros(length, dtype)]
    lock = threading.Lock()
    if row_blocks:  # compiled (or loaded) now, with the vectorizer it needs
        with slp_vectorizer():
            scratch = np.empty(shape, dtype)
            conv(kept[0], *arrays, scratch, scratch, lower, upper, geometry.hq, geometry.wq, False)

    def call(x: np.ndarray, residual: np.ndarray | None = None) -> np.ndarray:
        mine = lock.acquire(blocking=False)
        try:
            packed = kept[0] if mine else np.zeros(length, dtype)
            pack(np.ascontiguousarray(x, dtype), packed, *sizes)
            out = output_array(shape, dtype)
            extra = out if residual is None else np.ascontiguousarray(residual, dtype)
            conv(
                packed,
                *arrays,
                extra,
                out,
                lower,
                upper,
                geometry.hq,
                geometry.wq,
                residual is not None,
            )
        finally:
            if mine:
                lock.release()
        return out

    return call


#: Images side by side in the lanes of one vector register in the fused kernel: 16 float32
#: fill one AVX-512 register, so every multiply-add serves 16 images at once.
LANES = 16


def lanes_in(x_flat, first, lanes, cin, height, width, x_block, top, left, wp):  # pragma: no cover
    """Images ``first`` to ``first + lanes - 1`` of x (``(N, Cin, H, W)``, flattened) into
    the vector lanes, padded: ``x_block[ci, (top + h)*wp*LANES + (left + w)*LANES + lane]``
    (``x_block`` comes zeroed: the padding). By flat unsigned indices: no view made per row
    (each costs more than copying the row's few values), no wraparound test per value."""
    rows_in = x_block.shape[1] // (wp * LANES)
    w_first, w_last = max(0, -left), min(width, wp - left)
    for ci in range(cin):
        block_ci = x_block[ci]
        for h in range(max(0, -top), min(height, rows_in - top)):
            row_at = (top + h) * wp * LANES + (left + w_first) * LANES
            for lane in range(lanes):
                source = np.uint64((((first + lane) * cin + ci) * height + h) * width)
                target = np.uint64(row_at + lane)
                for w in range(w_last - w_first):
                    at = np.uint64(w)
                    block_ci[target + at * np.uint64(LANES)] = x_flat[
                        source + np.uint64(w_first) + at
                    ]


def lanes_out(pooled, out_flat, first, lanes, psw, qo):  # pragma: no cover - compiled
    """The block's pooled maxima (``pooled[co, pr, col*LANES + lane]``, every conv column)
    back to ``(N, Cout, Po, Qo)`` (flattened), every ``psw``-th column, with the ReLU."""
    cout, po, _ = pooled.shape
    for co in range(cout):
        for pr in range(po):
            pooled_row = pooled[co, pr]
            for lane in range(lanes):
                target = np.uint64((((first + lane) * cout + co) * po + pr) * qo)
                for pc in range(qo):
                    at = np.uint64(pc)
                    value = pooled_row[at * np.uint64(psw * LANES) + np.uint64(lane)]
                    out_flat[target + at] = value if value > 0 else 0


def lanes_next(pooled, x_block, top, left, wp, psw, qo):  # pragma: no cover - compiled
    """The block's pooled maxima, with the ReLU, into the next fused conv's padded lanes
    (``x_block``, zeroed: see :func:`lanes_in`), without leaving the lanes: each pooled
    value of all the block's images is one run of ``LANES`` values in both. (Rows and
    columns the next conv never reads are left out, as :func:`lanes_in` does.)"""
    cout, po, _ = pooled.shape
    rows_in = x_block.shape[1] // (wp * LANES)
    qo = min(qo, wp - left)
    for co in range(cout):
        for pr in range(min(po, rows_in - top)):
            source_row = pooled[co, pr]
            target_row = x_block[co, ((top + pr) * wp + left) * LANES :]
            for pc in range(qo):
                source = source_row[pc * psw * LANES :]
                target = target_row[pc * LANES :]
                for lane in range(LANES):
                    value = source[lane]
                    target[lane] = value if value > 0 else 0


def make_lanes_conv_pool(kw_size: int, tap_step: int, pool_kh: int, pool_kw: int):
    """The fused conv's arithmetic on one block of images in the lanes, with ``kw_size``,
    ``tap_step`` and the pool window as closure variables, which Numba compiles as
    constants: the taps' and the window's loops unroll and their loads get fixed offsets
    (Numba's disk cache keys on their values)."""

    def lanes_conv_pool(
        x_block, weight, bias, pooled, wp, sh, dh, pkh, psh, wo, top, height
    ):  # pragma: no cover
        """Conv (width stride 1) -> max-pool of the block in ``x_block`` (see
        :func:`lanes_in`) into ``pooled[co, pr, col*LANES + lane]``: the window's maximum
        at every conv column ``col`` where one can start (the caller picks every
        ``psw``-th; ReLU commutes with max, so it comes after).

        One conv output row of all the block's images is one contiguous run of
        ``wo*LANES`` values: the loop along it (``j``) vectorises with every lane a
        different image. For each ``j`` a kernel row's ``kw_size`` taps (unrolled) are
        summed in registers for four output channels at once: each input vector loaded
        serves four multiply-adds, and the weights stay in registers for the whole run.
        (Channels past the last are computed again as the last one.) Only the ``pkh`` conv
        rows one pooled row needs are kept. ``tap_step`` = width dilation * LANES, the
        distance between taps."""
        cout, cin, kh_size, _ = weight.shape
        _, po, run_pooled = pooled.shape
        row_length = wp * LANES
        run = wo * LANES  # one conv output row of the whole block
        conv = np.empty((4, pkh, run), dtype=pooled.dtype)
        for quad in range((cout + 3) // 4):
            co0 = 4 * quad
            last = cout - 1
            co1, co2, co3 = min(co0 + 1, last), min(co0 + 2, last), min(co0 + 3, last)
            for pr in range(po):
                for i in range(pkh):
                    for j in range(run):
                        conv[0, i, j], conv[1, i, j] = bias[co0], bias[co1]
                        conv[2, i, j], conv[3, i, j] = bias[co2], bias[co3]
                    row = (pr * psh + i) * sh
                    # only the kernel rows that read the image, not its top or bottom padding
                    # (zeros: the course conv2 has 6 of its 70 row taps there)
                    kh_first = max(0, (top - row + dh - 1) // dh)
                    kh_last = min(kh_size, (top + height - row + dh - 1) // dh)
                    for ci in range(cin):
                        for kh in range(kh_first, kh_last):
                            x_row = x_block[ci, (row + kh * dh) * row_length :]
                            w0, w1 = weight[co0, ci, kh], weight[co1, ci, kh]
                            w2, w3 = weight[co2, ci, kh], weight[co3, ci, kh]
                            acc0, acc1 = conv[0, i], conv[1, i]
                            acc2, acc3 = conv[2, i], conv[3, i]
                            for j in range(run):
                                total0, total1 = acc0[j], acc1[j]
                                total2, total3 = acc2[j], acc3[j]
                                for kw in range(kw_size):
                                    value = x_row[j + kw * tap_step]
                                    total0 += w0[kw] * value
                                    total1 += w1[kw] * value
                                    total2 += w2[kw] * value
                                    total3 += w3[kw] * value
                                acc0[j], acc1[j] = total0, total1
                                acc2[j], acc3[j] = total2, total3
                # max over the window for every conv column (not only every psw-th: the
                # loop stays one contiguous, vectorised run): the window's pool_kh*pool_kw
                # (compile-time) loads per vector, one store
                for c in range(4):
                    wide = pooled[min(co0 + c, cout - 1), pr]
                    conv_c = conv[c]
                    for j in range(run_pooled):
                        best = conv_c[0, j]
                        for i in range(pool_kh):
                            for k in range(pool_kw):
                                value = conv_c[i, j + k * LANES]
                                # (a select, not max(): max's NaN branch stays scalar)
                                best = value if value > best else best
                        wide[j] = best

    return lanes_conv_pool


def lanes_block_rows(height: int, wo: int, kh_size: int, kw_size: int, attrs, pool) -> tuple:
    """For a fused conv in the lanes: the padded rows and row width (``wp`` values per
    lane) a block holds, for inputs ``height`` high whose conv output is ``wo`` wide, with
    ``pool`` = ``(pkh, psh, po)``."""
    pkh, psh, po = pool
    sh, dh = attrs.stride[0], attrs.dilation[0]
    rows_in = ((po - 1) * psh + pkh - 1) * sh + dh * (kh_size - 1) + 1
    wp = wo + attrs.dilation[1] * (kw_size - 1)
    return rows_in, wp


@dataclass(frozen=True)
class LanesStep:
    """A fused conv for batches as a kernel stringing several together needs it (see
    :mod:`dnnlens.program`): its arithmetic (:func:`make_lanes_conv_pool`, compiled), its
    input ``(cin, height, width)`` and the block layout and sizes its pieces take."""

    conv_pool: Any
    cin: int
    height: int
    width: int
    top: int
    left: int
    sh: int
    dh: int
    pkh: int
    psh: int
    psw: int
    rows_in: int
    wp: int
    wo: int
    cout: int
    po: int
    qo: int
    run_pooled: int


def make_conv_relu_maxpool(kw_size: int, tap_step: int, pool_kh: int, pool_kw: int):
    """The fused kernel for batches: :func:`lanes_in`, :func:`make_lanes_conv_pool`'s
    arithmetic and :func:`lanes_out` on each block of ``LANES`` images."""
    load, store = lanes_piece(lanes_in), lanes_piece(lanes_out)
    conv_pool = lanes_conv_pool_kernel(kw_size, tap_step, pool_kh, pool_kw)

    def conv_relu_maxpool_loops(
        x, weight, bias, out, top, left, sh, dh, pkh, psh, psw, rows_in, wp, wo
    ):  # pragma: no cover - compiled
        """Fused conv (width stride 1) -> relu -> max-pool for Numba, images in the vector lanes.

        x ``(N, Cin, H, W)``, weight ``(Cout, Cin, Kh, Kw)``, bias ``(Cout,)`` -> out
        ``(N, Cout, Po, Qo)``. Blocks of ``LANES`` images are shared out over the cores: each
        copied, padded, into the lanes, convolved and pooled there, and copied back."""
        n_images, cin, height, width = x.shape
        cout = weight.shape[0]
        _, _, po, qo = out.shape
        run_pooled = (wo - pool_kw + 1) * LANES  # columns where a pooling window can start
        n_blocks = (n_images + LANES - 1) // LANES
        x_flat, out_flat = x.reshape(-1), out.reshape(-1)  # (both C-contiguous: see Launch)
        for block in prange(n_blocks):
            first = block * LANES
            lanes = min(LANES, n_images - first)
            x_block = np.zeros((cin, rows_in * wp * LANES), dtype=out.dtype)
            load(x_flat, first, lanes, cin, height, width, x_block, top, left, wp)
            pooled = np.empty((cout, po, run_pooled), dtype=out.dtype)
            conv_pool(x_block, weight, bias, pooled, wp, sh, dh, pkh, psh, wo, top, height)
            store(pooled, out_flat, first, lanes, psw, qo)

    return conv_relu_maxpool_loops


_LANES_PIECES: dict[object, object] = {}


def lanes_piece(fn):
    """A block-level piece of the lanes kernels compiled (serial: the kernels calling it
    share the blocks out over the cores)."""
    if fn not in _LANES_PIECES:
        _LANES_PIECES[fn] = compiled_kernel(fn, parallel=False)
    return _LANES_PIECES[fn]


def lanes_conv_pool_kernel(kw_size: int, tap_step: int, pool_kh: int, pool_kw: int):
    """:func:`make_lanes_conv_pool` compiled (once per process and shape)."""
    key = ("lanes", kw_size, tap_step, pool_kh, pool_kw)
    if key not in _LANES_PIECES:
        loops = make_lanes_conv_pool(kw_size, tap_step, pool_kh, pool_kw)
        _LANES_PIECES[key] = compiled_kernel(loops, parallel=False)
    return _LANES_PIECES[key]


_FUSED: dict[tuple, object] = {}


def fused_kernel(kw_size: int, tap_step: int, pool_kh: int, pool_kw: int):
    """:func:`make_conv_relu_maxpool`'s loop nest compiled (once per process and shape)."""
    key = (kw_size, tap_step, pool_kh, pool_kw)
    if key not in _FUSED:
        loops = make_conv_relu_maxpool(kw_size, tap_step, pool_kh, pool_kw)
        _FUSED[key] = compiled_kernel(loops, parallel=True)
    return _FUSED[key]


def make_conv_relu_maxpool_planes(kw_size: int, dw: int, pool_kh: int, pool_kw: int, pool_sw: int):
    """The fused loop nest for few images (``(N, C, H, W)`` planes, no lanes to fill), with
    ``kw_size``, the width dilation ``dw``, the pool window and the pool's width stride as
    compile-time constants (see :func:`make_conv_relu_maxpool`). Stride 1 in both
    directions."""

    def conv_relu_maxpool_planes(
        x, weight, bias, out, top, left, dh, psh, ho, wo, wp, cin, cout, kh_size, po, qo
    ):  # pragma: no cover - compiled
        """x ``(N, Cin, H, W)`` -> out ``(N, Cout, Po, Qo)``, one image at a time.

        Each input channel is copied, padded, into a plane of ``hp`` rows of ``wp`` values
        (:func:`planes_row_width`: rows share their padding), and
        conv output ``(oh, ow)`` is kept at ``oh*wp + ow``: then every tap ``(kh, kw)`` reads
        the plane at a fixed offset ``kh*dh*wp + kw*dw`` from it, so the loop over all output
        positions is one contiguous, vectorised run (the ``wp - wo`` columns past each row's
        end are computed and ignored). Four output channels at a time share each load.

        Then each pooled row: the max down the window's rows for every conv column (one
        vectorised pass for all of them), then across ``pool_kw`` columns at every ``pool_sw``-th
        (a constant stride: for 2 a de-interleave, not a gather), with the ReLU. Only the
        conv rows a pooled row reads are compared (a pass over every window position of the
        plane did 3x the work at the course's 2x2 stride 2).

        The sizes come in as arguments, even those the arrays' shapes give (``cin``, ``cout``,
        ``kh_size``, ``po``, ``qo``): a program's call passes them as constants, and Numba
        compiles the loops for those trip counts (the course network 2-3% faster per image).
        """
        n_images, _, height, width = x.shape
        hp = ho + dh * (kh_size - 1)
        # from output (0, 0) to (ho-1, wo-1), rounded up to whole vectors: the loops over it
        # then have no scalar remainder (5% of the course conv2's time for one image); the
        # extra positions read the planes' slack and are never pooled
        run = -(-((ho - 1) * wp + wo) // LANES) * LANES
        for n in prange(n_images):
            planes = np.zeros((cin, hp * wp + wp + LANES), dtype=out.dtype)
            w_first, w_last = max(0, -left), min(width, wp - left)
            for ci in range(cin):
                for h in range(max(0, -top), min(height, hp - top)):
                    # views from the first column and a loop from 0: no index Numba must
                    # test for wraparound, so the copy vectorises
                    source = x[n, ci, h, w_first:]
                    target = planes[ci, (top + h) * wp + left + w_first :]
                    for w in range(w_last - w_first):
                        target[w] = source[w]
            conv = np.empty((4, run), dtype=out.dtype)
            wide = np.empty(wo, dtype=out.dtype)
            last = cout - 1
            for quad in range((cout + 3) // 4):
                co0 = 4 * quad
                co1, co2, co3 = min(co0 + 1, last), min(co0 + 2, last), min(co0 + 3, last)
                acc0, acc1, acc2, acc3 = conv[0], conv[1], conv[2], conv[3]
                for p in range(run):
                    acc0[p], acc1[p], acc2[p], acc3[p] = bias[co0], bias[co1], bias[co2], bias[co3]
                for ci in range(cin):
                    for kh in range(kh_size):
                        x_row = planes[ci, kh * dh * wp :]
                        w0, w1 = weight[co0, ci, kh], weight[co1, ci, kh]
                        w2, w3 = weight[co2, ci, kh], weight[co3, ci, kh]
                        for p in range(run):
                            total0, total1 = acc0[p], acc1[p]
                            total2, total3 = acc2[p], acc3[p]
                            for kw in range(kw_size):
                                value = x_row[p + kw * dw]
                                total0 += w0[kw] * value
                                total1 += w1[kw] * value
                                total2 += w2[kw] * value
                                total3 += w3[kw] * value
                            acc0[p], acc1[p] = total0, total1
                            acc2[p], acc3[p] = total2, total3
                for c in range(min(4, cout - co0)):
                    conv_c, target = conv[c], out[n, co0 + c]
                    for pr in range(po):
                        window = conv_c[pr * psh * wp :]
                        # down all the window's rows in one pass (a copy of the top row
                        # first, then a pass per row below, cost conv2 0.4 us more)
                        for j in range(wo):
                            best = window[j]
                            for i in range(1, pool_kh):
                                value = window[i * wp + j]
                                # (a select, not max(): max's NaN branch stays scalar)
                                best = value if value > best else best
                            wide[j] = best
                        pooled = target[pr]
                        for pc in range(qo):
                            best = wide[pc * pool_sw]
                            for k in range(1, pool_kw):
                                value = wide[pc * pool_sw + k]
                                best = value if value > best else best
                            pooled[pc] = best if best > 0 else 0

    return conv_relu_maxpool_planes


def planes_row_width(width: int, left: int, wo: int, kw_size: int, dw: int) -> int:
    """Values per row of the few-image fused conv's padded planes. Rows share their padding:
    taps past a row's right edge read the next row's left padding, zeros too, so a row needs
    room for its data and for the reach past it beyond the next row's zeros. The course
    conv2 gets 16 values a row, not 18: 12% less work. With no left padding to share it is
    the full padded width. (Passed in, not worked out in the kernel from ``x``'s width: a
    program's call passes it as a constant, and Numba compiles the loops for it.)"""
    return max(left + width, wo + dw * (kw_size - 1) - left, wo)


def planes_kernel(kw_size: int, dw: int, pool: tuple[int, int, int], parallel: bool):
    """:func:`make_conv_relu_maxpool_planes` compiled (once per process and shape); ``pool``:
    the pool window and width stride."""
    key = ("planes", kw_size, dw, *pool, parallel)
    if key not in _FUSED:
        loops = make_conv_relu_maxpool_planes(kw_size, dw, *pool)
        _FUSED[key] = compiled_kernel(loops, parallel=parallel)
    return _FUSED[key]


def conv_relu_maxpool_compiled(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    attrs: Conv2dAttrs,
    pool_kernel: tuple[int, ...],
    pool_stride: tuple[int, ...],
) -> np.ndarray:
    """``maxpool(relu(conv(x)))`` in one pass: x ``(N, Cin, H, W)`` -> ``(N, Cout, Po, Qo)``
    with ``Po = (Ho - pool_kh) // pool_sh + 1`` (an unpadded, floor-mode pool)."""
    return bind_conv_relu_maxpool(x.shape, x.dtype, weight, bias, attrs, pool_kernel, pool_stride)(
        x
    )


def bind_conv_relu_maxpool(
    x_shape: tuple[int, ...],
    x_dtype: np.dtype,
    weight: np.ndarray,
    bias: np.ndarray | None,
    attrs: Conv2dAttrs,
    pool_kernel: tuple[int, ...],
    pool_stride: tuple[int, ...],
) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`conv_relu_maxpool_compiled` for inputs of shape ``x_shape``, with every size and
    kernel choice made once (the engine calls it image after image): the
    :func:`conv_relu_maxpool_launch`, or conv, ReLU and pool one after the other where the
    fused kernels do not apply."""
    launch = conv_relu_maxpool_launch(
        x_shape, x_dtype, weight, bias, attrs, pool_kernel, pool_stride
    )
    if launch is not None:
        return launch
    from dnnlens.ops.pool import Pool

    pool = Pool(kernel=tuple(pool_kernel), stride=tuple(pool_stride))
    # the conv bound once (weights packed now), the ReLU as its clamp, then the pool
    conv_relu = bind_conv2d(tuple(x_shape), x_dtype, weight, bias, attrs, lower=0.0)
    return lambda x: pool.compiled([conv_relu(x)], {})


def conv_relu_maxpool_launch(
    x_shape: tuple[int, ...],
    x_dtype: np.dtype,
    weight: np.ndarray,
    bias: np.ndarray | None,
    attrs: Conv2dAttrs,
    pool_kernel: tuple[int, ...],
    pool_stride: tuple[int, ...],
) -> Launch | None:
    """The fused kernel's call for inputs of shape ``x_shape`` (None where it does not apply:
    grouped convolution, a width stride, a height stride on few images).

    Batches of at least ``LANES`` images run with images side by side in the vector lanes;
    smaller ones (a lane per image would leave most of each vector empty) run image by image,
    vectorised along the output positions (stride 1)."""
    n, _, height, width = x_shape
    cout, _, kh_size, kw_size = weight.shape
    ho, wo = attrs.output_size(height, width, kh_size, kw_size)
    (pkh, pkw), (psh, psw) = tuple(pool_kernel), tuple(pool_stride)
    shape = (n, cout, (ho - pkh) // psh + 1, (wo - pkw) // psw + 1)
    dtype = np.result_type(x_dtype, weight)
    bias = np.zeros(cout, dtype) if bias is None else np.ascontiguousarray(bias, dtype)
    weight = np.ascontiguousarray(weight, dtype)
    (top, _), (left, _) = attrs.padding
    if attrs.groups != 1 or attrs.stride[1] != 1 or (n < LANES and attrs.stride[0] != 1):
        return None
    sizes: tuple[int, ...]
    if n < LANES:
        macs = n * cout * ho * wo * weight[0].size
        kernel = planes_kernel(
            kw_size, attrs.dilation[1], (pkh, pkw, psw), macs >= PARALLEL_MIN_WORK
        )
        wp = planes_row_width(width, left, wo, kw_size, attrs.dilation[1])
        sizes = (
            top,
            left,
            attrs.dilation[0],
            psh,
            ho,
            wo,
            wp,
            x_shape[1],
            cout,
            kh_size,
            *shape[2:],
        )
    else:
        tap_step = attrs.dilation[1] * LANES
        kernel = fused_kernel(kw_size, tap_step, pkh, pkw)
        rows_in, wp = lanes_block_rows(height, wo, kh_size, kw_size, attrs, (pkh, psh, shape[2]))
        sizes = (top, left, attrs.stride[0], attrs.dilation[0], pkh, psh, psw, rows_in, wp, wo)
        detail = LanesStep(
            conv_pool=lanes_conv_pool_kernel(kw_size, tap_step, pkh, pkw),
            cin=x_shape[1],
            height=height,
            width=width,
            top=top,
            left=left,
            sh=attrs.stride[0],
            dh=attrs.dilation[0],
            pkh=pkh,
            psh=psh,
            psw=psw,
            rows_in=rows_in,
            wp=wp,
            wo=wo,
            cout=cout,
            po=shape[2],
            qo=shape[3],
            run_pooled=(wo - pkw + 1) * LANES,  # columns where a pooling window can start
        )
        return Launch(kernel, (weight, bias), sizes, shape, np.dtype(dtype), detail)
    return Launch(kernel, (weight, bias), sizes, shape, np.dtype(dtype))
