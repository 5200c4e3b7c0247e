"""Element-wise operators: activations (relu, gelu, ...), binary arithmetic with
broadcasting (add, mul, ...) and softmax.

None of them counts MACs (the notebook's ReLU has 0 multiplications); each moves its inputs
and its output, so their compute intensity is 0 and their time on a roofline is memory time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

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


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _hardsigmoid(x: np.ndarray) -> np.ndarray:
    return np.clip(x / 6 + 0.5, 0, 1)


#: Kernels of the activations whose result needs no attribute beyond the function's name
#: (leaky_relu, elu, hardtanh, softplus, clamp carry parameters the IR does not keep).
ACTIVATION_KERNELS = {
    "relu": _relu,
    "relu6": lambda x: np.clip(x, 0, 6),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "silu": lambda x: x * _sigmoid(x),
    "hardsigmoid": _hardsigmoid,
    "hardswish": lambda x: x * _hardsigmoid(x),
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1 / np.sqrt(x),
    "neg": np.negative,
    "abs": np.abs,
    "reciprocal": lambda x: 1 / x,
}

BINARY_KERNELS = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
    "pow": np.power, "maximum": np.maximum, "minimum": np.minimum,
}


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

    def reference(self, inputs, weights):
        """Any shape -> the same shape, the function applied to every value."""
        function = ACTIVATION_KERNELS.get(self.function)
        if function is None:
            raise NotImplementedError(f"no kernel for activation {self.function!r}")
        x = np.asarray(inputs[0])
        return function(x).astype(x.dtype, copy=False)


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

    def reference(self, inputs, weights):
        """Operands (the inputs, then any parameters) broadcast against each other."""
        function = BINARY_KERNELS.get(self.function)
        if function is None:
            raise NotImplementedError(f"no kernel for binary operator {self.function!r}")
        operands = [np.asarray(a) for a in (*inputs, *weights.values())]
        broadcast([a.shape for a in operands])  # ShapeError naming the shapes
        result = operands[0]
        for operand in operands[1:]:
            result = function(result, operand)
        return result


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

    def reference(self, inputs, weights):
        """``exp(x - max) / sum(exp(x - max))`` along ``axis`` (the max keeps exp finite)."""
        x = np.asarray(inputs[0])
        self.output_shape([x.shape], {})
        shifted = x - x.max(axis=self.axis, keepdims=True)
        total = np.exp(shifted).sum(axis=self.axis, keepdims=True)
        return shifted - np.log(total) if self.log else np.exp(shifted) / total
