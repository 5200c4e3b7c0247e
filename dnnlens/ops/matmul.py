"""Matrix products and attention: ``mm``, ``bmm``, ``matmul``/``@`` and scaled dot-product
attention (SDPA, also the core of ``nn.MultiheadAttention``).

Shape contract (NumPy/PyTorch ``matmul`` semantics): ``a (..., M, K) @ b (..., K, N)`` ->
``(..., M, N)`` with the leading dimensions broadcast; a 1-d operand gets a unit dimension
added and removed again. MACs: ``prod(output) * K`` (one multiply-add per term of each dot
product). An operand that is a learned parameter comes as ``params["weight"]`` with its
state-dict shape; ``weight_operand`` says which side it is on and ``weight_transposed`` that the
product uses its transpose (``x @ W.t()``).

Attention: ``q (..., L, E)``, ``k (..., S, E)``, ``v (..., S, Ev)`` -> ``(..., L, Ev)``;
MACs ``prod(...) * L * S * (E + Ev)`` (``q @ k^T`` then ``scores @ v``); softmax and the
scale do no MACs (the element-wise convention). A causal mask does not change the count: the
math path computes every score. The fused kernels never write the ``L x S`` scores, so values
moved are ``q + k + v (+ mask) + output``.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import ClassVar, Mapping, Sequence

from dnnlens.errors import ShapeError
from dnnlens.shapes import Shape
from dnnlens.ops.base import Op, register
from dnnlens.ops.elementwise import broadcast


def matmul_shape(a: Shape, b: Shape) -> Shape:
    """``torch.matmul``'s output shape; ShapeError when the inner dimensions differ."""
    if not a or not b:
        raise ShapeError(f"matmul needs tensors with at least one dimension, got {a} and {b}")
    a2 = (1, *a) if len(a) == 1 else tuple(a)
    b2 = (*b, 1) if len(b) == 1 else tuple(b)
    if a2[-1] != b2[-2]:
        raise ShapeError(f"matmul of {tuple(a)} and {tuple(b)}: inner dimensions "
                         f"{a2[-1]} and {b2[-2]} differ")
    lead = broadcast([a2[:-2], b2[:-2]]) if (a2[:-2] or b2[:-2]) else ()
    out = (*lead, a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return tuple(out)


@register
@dataclass(frozen=True)
class MatMul(Op):
    """``a @ b`` (mm, bmm, baddbmm, matmul); either operand may be a parameter."""

    KIND: ClassVar[str] = "matmul"
    weight_operand: int | None = None  # 0 or 1 when one operand is params["weight"]
    weight_transposed: bool = False  # the product uses params["weight"] transposed (2-d)

    def operands(self, input_shapes: Sequence[Shape], params: Mapping[str, Shape]) -> list[Shape]:
        """The two operand shapes as multiplied, parameters put in their place."""
        shapes = [tuple(s) for s in input_shapes[:2]]
        if self.weight_operand is not None:
            w = tuple(params["weight"])
            if self.weight_transposed:
                if len(w) != 2:
                    raise ShapeError(f"only a 2-d weight can be transposed, got {w}")
                w = (w[1], w[0])
            shapes.insert(self.weight_operand, w)
        if len(shapes) != 2:
            raise ShapeError(f"matmul needs two operands, got {len(shapes)}")
        return shapes

    def output_shape(self, input_shapes, params):
        a, b = self.operands(input_shapes, params)
        return matmul_shape(a, b)

    def macs(self, input_shapes, output_shape, params):
        a, _ = self.operands(input_shapes, params)
        return prod(output_shape) * a[-1]  # each output is a K-term dot product

    def descriptor(self, input_shapes, params):
        """(M, K, N) of one matrix product."""
        a, b = self.operands(input_shapes, params)
        return (a[-2] if len(a) > 1 else 1, a[-1], b[-1] if len(b) > 1 else 1)


@register
@dataclass(frozen=True)
class Attention(Op):
    """Scaled dot-product attention, ``softmax(q k^T * scale + mask) v``, one fused operator.

    Inputs: ``q, k, v`` and, when given, an additive or boolean ``mask`` (read, no MACs).
    """

    KIND: ClassVar[str] = "attention"
    causal: bool = False
    has_mask: bool = False

    def output_shape(self, input_shapes, params):
        if len(input_shapes) < 3:
            raise ShapeError(f"attention needs q, k and v, got {len(input_shapes)} inputs")
        q, k, v = (tuple(s) for s in input_shapes[:3])
        if min(len(q), len(k), len(v)) < 2:
            raise ShapeError(f"attention needs q, k, v of rank >= 2, got {q}, {k}, {v}")
        if q[-1] != k[-1]:
            raise ShapeError(f"query {q} and key {k} have different feature sizes")
        if k[-2] != v[-2]:
            raise ShapeError(f"key {k} and value {v} have different lengths")
        lead = broadcast([q[:-2], k[:-2], v[:-2]])
        return (*lead, q[-2], v[-1])

    def macs(self, input_shapes, output_shape, params):
        q, k, v = input_shapes[:3]
        lead = prod(output_shape[:-2])
        length, source = q[-2], k[-2]
        return lead * length * source * (q[-1] + v[-1])  # q @ k^T, then scores @ v

    def descriptor(self, input_shapes, params):
        """(L, S, E, Ev): query length, key length, query/key and value feature sizes."""
        q, k, v = input_shapes[:3]
        return (q[-2], k[-2], q[-1], v[-1])
