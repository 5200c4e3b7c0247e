"""Normalisations (batch, layer, group, instance) and the statistics reductions they are made
of (``mean``, ``sum``, ``amax``, ... over some dimensions).

Shape contract: a normalisation keeps the input shape; ``weight``/``bias`` (the learned scale
and shift, when present) have ``C`` values (batch/group/instance norm) or ``normalized_shape``
(layer norm). Batch norm at inference also reads its running mean and variance (``C`` values
each; their state-dict names are kept in ``stats`` so an engine can attach them).

Counts: normalisations do no MACs (the element-wise convention of the notebook); they move
their input, output, scale and shift, plus the running statistics for batch norm. A reduction
reads its input and writes its output, no MACs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dnnlens.errors import ShapeError
from dnnlens.ops.base import Op, register

NORMS = frozenset({"batchnorm", "layernorm", "groupnorm", "instancenorm"})
REDUCTIONS = frozenset({"mean", "sum", "amax", "amin", "var", "std", "norm"})


@register
@dataclass(frozen=True)
class Norm(Op):
    KIND: ClassVar[str] = "norm"

    function: str = "batchnorm"
    normalized_shape: tuple[int, ...] = ()  # layer norm: the trailing dimensions normalised
    groups: int = 1  # group norm
    eps: float = 1e-5
    stats: tuple[str, ...] = ()  # batch norm at inference: running mean and variance names

    def __post_init__(self):
        if self.function not in NORMS:
            raise ValueError(f"unknown normalisation {self.function!r}")

    @property
    def kind(self) -> str:
        return self.function

    def output_shape(self, input_shapes, params):
        x = tuple(input_shapes[0])
        if self.function == "layernorm":
            n = len(self.normalized_shape)
            if tuple(x[len(x) - n:]) != self.normalized_shape:
                raise ShapeError(f"layer norm over {self.normalized_shape} does not fit input {x}")
            expected = self.normalized_shape
        else:
            if len(x) < 2:
                raise ShapeError(f"{self.function} needs an input (N, C, ...), got {x}")
            if self.function == "groupnorm" and x[1] % self.groups:
                raise ShapeError(f"{x[1]} channels are not divisible by {self.groups} groups")
            expected = (x[1],)
        for role, shape in params.items():
            if tuple(shape) != expected:
                raise ShapeError(f"{self.function} {role} {tuple(shape)} does not fit input {x}")
        return x

    def values_moved(self, input_shapes, output_shape, params):
        stats = len(self.stats) * input_shapes[0][1] if self.stats else 0
        return super().values_moved(input_shapes, output_shape, params) + stats


@register
@dataclass(frozen=True)
class Reduce(Op):
    """A reduction over ``dims`` (``x.mean([2, 3])``: global average pooling written by hand)."""

    KIND: ClassVar[str] = "reduce"
    function: str = "mean"
    dims: tuple[int, ...] = ()  # empty: every dimension
    keepdim: bool = False

    def __post_init__(self):
        if self.function not in REDUCTIONS:
            raise ValueError(f"unknown reduction {self.function!r}")

    @property
    def kind(self) -> str:
        return self.function

    def output_shape(self, input_shapes, params):
        x = tuple(input_shapes[0])
        for d in self.dims:
            if not -len(x) <= d < len(x):
                raise ShapeError(f"{self.function} over dimension {d} does not fit shape {x}")
        axes = {d % len(x) for d in self.dims} if self.dims else set(range(len(x)))
        if self.keepdim:
            return tuple(1 if i in axes else s for i, s in enumerate(x))
        return tuple(s for i, s in enumerate(x) if i not in axes)
