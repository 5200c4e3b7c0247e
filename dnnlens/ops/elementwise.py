"""Element-wise operators: activations (relu, gelu, ...), binary arithmetic with
broadcasting (add, mul, ...) and softmax.

None of them counts MACs (the notebook's ReLU has 0 multiplications); each moves its inputs
and its output, so their compute intensity is 0 and their time on a roofline is memory time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dnnlens.errors import ShapeError
from dnnlens.ops.base import Op, register

#: Unary functions the IR knows by name; anything else comes in as ``unknown``.
ACTIVATIONS = frozenset({
    "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu", "sigmoid", "tanh",
    "hardswish", "hardsigmoid", "hardtanh", "mish", "softplus", "exp", "log", "sqrt",
    "rsqrt", "neg", "abs", "erf", "clamp", "reciprocal",
})

BINARY = frozenset({"add", "sub", "mul", "div", "pow", "maximum", "minimum", "where"})


def broadcast(shapes) -> tuple[int, ...]:
    """NumPy/PyTorch broadcasting of several shapes; ShapeError when they do not broadcast."""
    rank = max(len(s) for s in shapes)
    out = []
    for axis in range(rank):
        sizes = {s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0} - {1}
        if len(sizes) > 1:
            raise ShapeError(f"shapes {', '.join(str(tuple(s)) for s in shapes)} do not broadcast")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


@register
@dataclass(frozen=True)
class Activation(Op):
    """A unary element-wise function; ``function`` names it (``relu``, ``gelu``, ...)."""

    KIND: ClassVar[str] = "activation"
    function: str = "relu"

    def __post_init__(self):
        if self.function not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.function!r}")

    @property
    def kind(self) -> str:
        return self.function

    def output_shape(self, input_shapes, params):
        return tuple(input_shapes[0])


@register
@dataclass(frozen=True)
class Binary(Op):
    """Element-wise arithmetic between tensors (and/or parameters) with broadcasting.

    Inputs that are parameters (a learned scale, a position embedding) come as ``params`` and
    count as weights.
    """

    KIND: ClassVar[str] = "binary"
    function: str = "add"

    def __post_init__(self):
        if self.function not in BINARY:
            raise ValueError(f"unknown binary operator {self.function!r}")

    @property
    def kind(self) -> str:
        return self.function

    def output_shape(self, input_shapes, params):
        return broadcast([*input_shapes, *params.values()])


@register
@dataclass(frozen=True)
class Softmax(Op):
    KIND: ClassVar[str] = "softmax"
    axis: int = -1
    log: bool = False

    @property
    def kind(self) -> str:
        return "logsoftmax" if self.log else "softmax"

    def output_shape(self, input_shapes, params):
        x = input_shapes[0]
        if not -len(x) <= self.axis < len(x):
            raise ShapeError(f"softmax axis {self.axis} is out of range for shape {tuple(x)}")
        return tuple(x)
