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

from dnnlens.errors import ShapeError
from dnnlens.ops.base import Op, expect_rank, register

Pads = tuple[tuple[int, int], ...]


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
