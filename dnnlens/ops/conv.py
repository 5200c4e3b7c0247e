"""Convolution, 1-d to 3-d, grouped, dilated, and transposed.

Shape contract (2-d shown; 1-d and 3-d drop or add a spatial dimension):

* input ``(N, Cin, H, W)``; weight ``(Cout, Cin/groups, Kh, Kw)``
  (transposed: ``(Cin, Cout/groups, Kh, Kw)``); bias ``(Cout,)``;
* output ``(N, Cout, Ho, Wo)`` with, per spatial dimension,
  ``Ho = (H + pad_begin + pad_end - dilation*(Kh-1) - 1) // stride + 1``,
  transposed: ``Ho = (H-1)*stride - pad_begin - pad_end + dilation*(Kh-1) + output_padding + 1``.

MACs, padding zeros counted: ``N * Cout * Ho*Wo * (Cin/groups) * Kh*Kw``; a transposed
convolution scatters every input value through its kernel: ``N * Cin * H*W * (Cout/groups) * Kh*Kw``.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import ClassVar

import numpy as np

from dnnlens.errors import ShapeError
from dnnlens.ops.base import Op, compiled_kernel, expect_rank, register

Pads = tuple[tuple[int, int], ...]

prange = range  # numba.prange once the loop nests are compiled (see base.compiled_kernel)


def symmetric_padding(padding: tuple[int, ...]) -> Pads:
    """``(1, 2)`` -> ``((1, 1), (2, 2))``: PyTorch's per-dimension padding as (begin, end) pairs."""
    return tuple((int(p), int(p)) for p in padding)


@register
@dataclass(frozen=True)
class Conv(Op):
    KIND: ClassVar[str] = "conv"

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

    def _channels(self, input_shape, weight):
        """(Cin, Cout, kernel) checked against each other."""
        d = self.spatial_dims
        expect_rank(input_shape, d + 2, "conv input")
        expect_rank(weight, d + 2, "conv weight")
        cin = input_shape[1]
        kernel = tuple(weight[2:])
        if self.transposed:
            if weight[0] != cin:
                raise ShapeError(f"input has {cin} channels but the weight {tuple(weight)} expects {weight[0]}")
            cout = weight[1] * self.groups
        else:
            if weight[1] * self.groups != cin:
                raise ShapeError(
                    f"input {tuple(input_shape)} has {cin} channels but the weight {tuple(weight)} "
                    f"with groups={self.groups} expects {weight[1] * self.groups}")
            cout = weight[0]
        if cin % self.groups or cout % self.groups:
            raise ShapeError(f"channels in={cin} out={cout} are not divisible by groups={self.groups}")
        return cin, cout, kernel

    def output_shape(self, input_shapes, params):
        (x,) = input_shapes[:1]
        cin, cout, kernel = self._channels(x, params["weight"])
        if "bias" in params and tuple(params["bias"]) != (cout,):
            raise ShapeError(f"bias shape {tuple(params['bias'])} does not match {cout} output channels")
        spatial = []
        for size, k, s, (pb, pe), dil, op in zip(x[2:], kernel, self.stride, self.padding,
                                                self.dilation, self.output_padding):
            reach = dil * (k - 1) + 1
            if self.transposed:
                out = (size - 1) * s - pb - pe + reach + op
            else:
                if size + pb + pe < reach:
                    raise ShapeError(
                        f"kernel {tuple(kernel)} (dilation {self.dilation}) is larger than the padded "
                        f"input {tuple(x)}")
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
    def kernel_args(self, inputs, weights) -> tuple[np.ndarray, np.ndarray, np.ndarray | None,
                                                    Conv2dAttrs]:
        """Checked ``(x, weight, bias, attrs)`` as a 2-d convolution: a 1-d one runs over a
        height of 1. ShapeError (naming both shapes) if the input does not fit the weight."""
        if self.transposed or self.spatial_dims not in (1, 2):
            raise NotImplementedError(
                f"no kernel for {self.spatial_dims}-d {self.kind} (only 1-d/2-d convolution)")
        x, weight = np.asarray(inputs[0]), np.asarray(weights["weight"])
        bias = weights.get("bias")
        shapes = {role: tuple(array.shape) for role, array in weights.items()}
        self.output_shape([tuple(x.shape)], shapes)  # raises ShapeError on a mismatch
        attrs = Conv2dAttrs(tuple(self.stride), tuple(self.padding), tuple(self.dilation),
                            self.groups)
        if self.spatial_dims == 1:  # (N, C, L) -> (N, C, 1, L)
            x, weight = x[:, :, None, :], weight[:, :, None, :]
            attrs = Conv2dAttrs((1, *attrs.stride), ((0, 0), *attrs.padding),
                                (1, *attrs.dilation), self.groups)
        return x, weight, bias, attrs

    def _finish(self, out: np.ndarray) -> np.ndarray:
        return out[:, :, 0, :] if self.spatial_dims == 1 else out

    def reference(self, inputs, weights):
        x, weight, bias, attrs = self.kernel_args(inputs, weights)
        return self._finish(conv2d_reference(x, weight, bias, attrs))

    def compiled(self, inputs, weights):
        x, weight, bias, attrs = self.kernel_args(inputs, weights)
        return self._finish(conv2d_compiled(x, weight, bias, attrs))


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
    padded[:, :, top:top + h, left:left + w] = x
    return padded


def conv2d_reference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                     attrs: Conv2dAttrs) -> np.ndarray:
    """The readable loop nest: x ``(N, Cin, H, W)``, weight ``(Cout, Cin/groups, Kh, Kw)``,
    bias ``(Cout,)`` or None -> ``(N, Cout, Ho, Wo)``.

    ``out[n, co, oh, ow] = bias[co] + sum over ci, kh, kw of
    weight[co, ci, kh, kw] * x_padded[n, group(co)*Cin/groups + ci, oh*sh + kh*dh, ow*sw + kw*dw]``.

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


def conv2d_loops(x_padded, weight, bias, out, sh, sw, dh, dw, groups):  # pragma: no cover
    """The same loop nest, scalar, for Numba: (image, output channel) pairs shared out over
    the cores; ``out`` (N, Cout, Ho, Wo) is written; ``bias`` is all zeros when there is none.
    The innermost loop runs along an output row so it vectorises."""
    n_images, cout, ho, wo = out.shape
    cin_per_group, kh_size, kw_size = weight.shape[1], weight.shape[2], weight.shape[3]
    cout_per_group = cout // groups
    for job in prange(n_images * cout):
        n, co = job // cout, job % cout
        first_input_channel = (co // cout_per_group) * cin_per_group
        for oh in range(ho):
            for ow in range(wo):
                out[n, co, oh, ow] = bias[co]
        for ci in range(cin_per_group):
            for kh in range(kh_size):
                for kw in range(kw_size):
                    w = weight[co, ci, kh, kw]
                    for oh in range(ho):
                        row = oh * sh + kh * dh
                        for ow in range(wo):
                            out[n, co, oh, ow] += (
                                w * x_padded[n, first_input_channel + ci, row, ow * sw + kw * dw])


def conv2d_compiled(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                    attrs: Conv2dAttrs) -> np.ndarray:
    """:func:`conv2d_loops` compiled with Numba; same contract as :func:`conv2d_reference`."""
    n, _, height, width = x.shape
    cout, _, kh_size, kw_size = weight.shape
    dtype = np.result_type(x, weight)
    ho, wo = attrs.output_size(height, width, kh_size, kw_size)
    out = np.empty((n, cout, ho, wo), dtype=dtype)
    bias = np.zeros(cout, dtype) if bias is None else np.ascontiguousarray(bias, dtype)
    kernel = compiled_kernel(conv2d_loops, parallel=True)
    kernel(pad_input(x.astype(dtype, copy=False), attrs.padding),
           np.ascontiguousarray(weight, dtype), bias, out, *attrs.stride, *attrs.dilation,
           attrs.groups)
    return out
