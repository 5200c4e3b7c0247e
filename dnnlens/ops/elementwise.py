"""Element-wise operators: activations (relu, gelu, ...) with their parameters, binary
arithmetic and comparisons with broadcasting (add, mul, where, ...) and softmax.

None of them counts MACs (the notebook's ReLU has 0 multiplications); each moves its inputs
and its output, so their compute intensity is 0 and their time on a roofline is memory time.

Activation parameters are attributes of the operator, filled with the function's default when
the source did not say (``Activation("leaky_relu")`` *is* ``Activation("leaky_relu",
alpha=0.01)``), so two importers of one model give equal operators and no parameter the
source carried is dropped. A parameter a function does not take is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from dnnlens.errors import ShapeError
from dnnlens.ops.base import (
    PARALLEL_MIN_WORK,
    Names,
    Op,
    compiled_kernel,
    contiguous,
    register,
    torch_tensors,
)

prange = range  # numba.prange once the loop nests are compiled (see base.compiled_kernel)

#: SELU's constants (Klambauer et al. 2017), as PyTorch and ONNX write them.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

#: Each activation's parameters and their defaults (PyTorch's; ``hardsigmoid`` is written the
#: ONNX way, ``clip(alpha * x + beta, 0, 1)``, where PyTorch's fixed form is alpha = 1/6,
#: beta = 1/2). A parameter absent here is not taken by that function.
ACTIVATION_PARAMETERS: dict[str, dict[str, object]] = {
    "leaky_relu": {"alpha": 0.01},  # negative slope
    "elu": {"alpha": 1.0, "scale": 1.0, "input_scale": 1.0},
    "celu": {"alpha": 1.0},
    "selu": {"alpha": SELU_ALPHA, "scale": SELU_SCALE},
    "gelu": {"approximate": "none"},  # "none" (erf) or "tanh"
    "hardsigmoid": {"alpha": 1 / 6, "beta": 0.5},
    "softplus": {"beta": 1.0, "threshold": 20.0},  # linear where beta * x > threshold
    "hardtanh": {"lower": -1.0, "upper": 1.0},
    "relu6": {"lower": 0.0, "upper": 6.0},
    "clamp": {"lower": None, "upper": None},  # None: unbounded on that side
}

#: Names of the same parameters in PyTorch: aten schema argument names and nn.Module
#: attributes, so importers read them by name (never by position).
TORCH_PARAMETER_NAMES = {
    "negative_slope": "alpha",
    "alpha": "alpha",
    "scale": "scale",
    "input_scale": "input_scale",
    "approximate": "approximate",
    "beta": "beta",
    "threshold": "threshold",
    "min_val": "lower",
    "max_val": "upper",
    "min": "lower",
    "max": "upper",
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))`` without overflow: exp of minus |x| only."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _softplus(x: np.ndarray, beta: float = 1.0, threshold: float = 20.0) -> np.ndarray:
    """``log(1 + exp(beta x)) / beta``, the identity where ``beta x > threshold`` (PyTorch)."""
    bx = beta * x
    smooth = (np.maximum(bx, 0) + np.log1p(np.exp(-np.abs(bx)))) / beta
    return np.where(bx > threshold, x, smooth)


_erf = np.vectorize(math.erf, otypes=[float])


def _clip(x: np.ndarray, lower: float | None, upper: float | None) -> np.ndarray:
    if lower is not None:
        x = np.maximum(x, lower)
    if upper is not None:
        x = np.minimum(x, upper)
    return x


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))  # x * Phi(x)


def _elu(x, alpha, scale, input_scale):
    """``scale * (x if x > 0 else alpha * (exp(input_scale * x) - 1))`` (aten's elu)."""
    return scale * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0) * input_scale))


def relu(x: np.ndarray, attrs: Any = None) -> np.ndarray:
    """The course's ReLU: ``max(x, 0)`` for every value, any shape (``attrs``: the operator,
    unused; every activation kernel takes it)."""
    return np.maximum(x, 0)


#: The reference kernel of each activation: the values and the operator's parameters.
ACTIVATION_KERNELS: dict[str, Callable[..., np.ndarray]] = {
    "relu": relu,
    "relu6": lambda x, a: _clip(x, a.lower, a.upper),
    "hardtanh": lambda x, a: _clip(x, a.lower, a.upper),
    "clamp": lambda x, a: _clip(x, a.lower, a.upper),
    "leaky_relu": lambda x, a: np.where(x > 0, x, a.alpha * x),
    "elu": lambda x, a: _elu(x, a.alpha, a.scale, a.input_scale),
    "celu": lambda x, a: _elu(x, a.alpha, 1.0, 1 / a.alpha),
    "selu": lambda x, a: _elu(x, a.alpha, a.scale, 1.0),
    "gelu": lambda x, a: _gelu(x, a.approximate),
    "silu": lambda x, a: x * _sigmoid(x),
    "mish": lambda x, a: x * np.tanh(_softplus(x)),
    "sigmoid": lambda x, a: _sigmoid(x),
    "tanh": lambda x, a: np.tanh(x),
    "hardsigmoid": lambda x, a: np.clip(a.alpha * x + a.beta, 0, 1),
    "hardswish": lambda x, a: x * np.clip(x / 6 + 0.5, 0, 1),  # x * relu6(x + 3) / 6
    "softplus": lambda x, a: _softplus(x, a.beta, a.threshold),
    "softsign": lambda x, a: x / (1 + np.abs(x)),
    "erf": lambda x, a: _erf(x),
    "exp": lambda x, a: np.exp(x),
    "log": lambda x, a: np.log(x),
    "sqrt": lambda x, a: np.sqrt(x),
    "rsqrt": lambda x, a: 1 / np.sqrt(x),
    "reciprocal": lambda x, a: 1 / x,
    "neg": lambda x, a: np.negative(x),
    "abs": lambda x, a: np.abs(x),
    "sign": lambda x, a: np.sign(x),
    "floor": lambda x, a: np.floor(x),
    "ceil": lambda x, a: np.ceil(x),
    "round": lambda x, a: np.rint(x),  # half to even, as torch.round (np.round's 0 decimals)
    "sin": lambda x, a: np.sin(x),
    "cos": lambda x, a: np.cos(x),
}

#: Unary functions the IR knows by name; anything else comes in as ``unknown``.
ACTIVATIONS = frozenset(ACTIVATION_KERNELS)

#: Functions that keep an integer input integer (the others compute in floating point).
INTEGER_ACTIVATIONS = frozenset({"relu", "relu6", "hardtanh", "clamp", "neg", "abs", "sign"})

#: Codes of the functions in the compiled loop, in :data:`ACTIVATION_KERNELS`' order (module
#: constants, which Numba compiles as literals).
(
    RELU,
    RELU6,
    HARDTANH,
    CLAMP,
    LEAKY_RELU,
    ELU,
    CELU,
    SELU,
    GELU,
    SILU,
    MISH,
    SIGMOID,
    TANH,
    HARDSIGMOID,
    HARDSWISH,
    SOFTPLUS,
    SOFTSIGN,
    ERF,
    EXP,
    LOG,
    SQRT,
    RSQRT,
    RECIPROCAL,
    NEG,
    ABS,
    SIGN,
    FLOOR,
    CEIL,
    ROUND,
    SIN,
    COS,
) = range(31)
ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATION_KERNELS)}
assert len(ACTIVATION_CODES) == 31 and ACTIVATION_CODES["cos"] == COS


@register
@dataclass(frozen=True)
class Activation(Op):
    """A unary element-wise function; ``function`` names it (``relu``, ``gelu``, ...) and is
    the kind shown in tables. The parameters (see :data:`ACTIVATION_PARAMETERS`) are None for
    a function that does not take them."""

    KIND: ClassVar[str] = "activation"
    #: variant: the activation's ``function``
    NAMES: ClassVar[Names] = Names(
        aten={
            **{name: name for name in ACTIVATIONS},
            **{f"{name}_": name for name in ACTIVATIONS},
            **{name: "clamp" for name in ("clamp_min", "clamp_max", "clamp_min_", "clamp_max_")},
        },
        modules={
            "ReLU": "relu",
            "ReLU6": "relu6",
            "LeakyReLU": "leaky_relu",
            "ELU": "elu",
            "SELU": "selu",
            "GELU": "gelu",
            "SiLU": "silu",
            "Sigmoid": "sigmoid",
            "Tanh": "tanh",
            "Hardswish": "hardswish",
            "Hardsigmoid": "hardsigmoid",
            "Hardtanh": "hardtanh",
            "Mish": "mish",
            "Softplus": "softplus",
        },
        onnx={
            "Relu": "relu",
            "Sigmoid": "sigmoid",
            "Tanh": "tanh",
            "Exp": "exp",
            "Log": "log",
            "Sqrt": "sqrt",
            "Neg": "neg",
            "Abs": "abs",
            "Erf": "erf",
            "Reciprocal": "reciprocal",
            "Softplus": "softplus",
            "Elu": "elu",
            "Selu": "selu",
            "LeakyRelu": "leaky_relu",
            "HardSigmoid": "hardsigmoid",
            "HardSwish": "hardswish",
            "Gelu": "gelu",
            "Mish": "mish",
            "Clip": "clamp",
        },
        spec={name: name for name in sorted(ACTIVATIONS)},
    )
    function: str = "relu"
    alpha: float | None = None  # leaky_relu slope; elu/celu/selu alpha; hardsigmoid slope
    beta: float | None = None  # softplus beta; hardsigmoid offset
    scale: float | None = None  # elu/selu output scale
    input_scale: float | None = None  # elu: exp(input_scale * x)
    threshold: float | None = None  # softplus: linear above it
    lower: float | None = None  # clamp/hardtanh/relu6 lower bound
    upper: float | None = None  # clamp/hardtanh/relu6 upper bound
    approximate: str | None = None  # gelu: "none" or "tanh"

    def __post_init__(self):
        if self.function not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.function!r}")
        defaults = ACTIVATION_PARAMETERS.get(self.function, {})
        for field in fields(self):
            if field.name == "function":
                continue
            value = getattr(self, field.name)
            if field.name not in defaults:
                if value is not None:
                    raise ValueError(f"{self.function} takes no parameter {field.name!r}")
            elif value is None:
                object.__setattr__(self, field.name, defaults[field.name])
            elif field.name in ("lower", "upper"):
                # a bound keeps its type: clamp(int tensor, 0.5) is float, clamp(x, 0) is not
                object.__setattr__(
                    self, field.name, value if isinstance(value, int) else float(value)
                )
            elif field.name != "approximate":
                object.__setattr__(self, field.name, float(value))
        if self.function == "gelu" and self.approximate not in ("none", "tanh"):
            raise ValueError(
                f"gelu approximate must be 'none' or 'tanh', not {self.approximate!r}"
            )
        if self.function == "relu6" and (self.lower, self.upper) != (0.0, 6.0):
            raise ValueError("relu6 clamps to [0, 6]; use hardtanh or clamp for other bounds")

    @property
    def kind(self) -> str:
        return self.function

    @property
    def parameters(self) -> dict[str, object]:
        """The function's parameters as set (defaults filled in)."""
        return {name: getattr(self, name) for name in ACTIVATION_PARAMETERS.get(self.function, {})}

    def number(self, name: str) -> float:
        """A numeric parameter this function takes (``__post_init__`` filled its default)."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"{self.function} takes no parameter {name!r}")
        return value

    def output_shape(self, input_shapes, params):
        return tuple(input_shapes[0])

    def _result_dtype(self, x: np.ndarray) -> np.dtype:
        floats = (
            self.function not in INTEGER_ACTIVATIONS
            or self.function == "clamp"
            and any(isinstance(b, float) for b in (self.lower, self.upper))
        )  # (hardtanh keeps ints)
        if x.dtype.kind in "iub" and floats:
            return np.dtype(np.float32)  # torch computes these in the default float type
        return x.dtype

    def reference(self, inputs, weights):
        """Any shape -> the same shape, the function applied to every value."""
        x = np.asarray(inputs[0])
        dtype = self._result_dtype(x)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            result = ACTIVATION_KERNELS[self.function](x.astype(dtype, copy=False), self)
        return np.asarray(result).astype(dtype, copy=False)

    def compiled(self, inputs, weights):
        x = np.asarray(inputs[0])
        if x.dtype.kind != "f":  # integer clamps and signs: NumPy's own loops suffice
            return self.reference(inputs, weights)
        flat = contiguous(x).reshape(-1)
        out = np.empty_like(flat)
        kernel = compiled_kernel(activation_loops, parallel=flat.size >= PARALLEL_MIN_WORK)
        nan = math.nan
        lower = nan if self.lower is None else self.lower
        upper = nan if self.upper is None else self.upper
        kernel(
            flat,
            out,
            ACTIVATION_CODES[self.function],
            *(
                nan if v is None else v
                for v in (self.alpha, self.beta, self.scale, self.input_scale, self.threshold)
            ),
            lower,
            upper,
            self.approximate == "tanh",
        )
        return out.reshape(x.shape)

    def torch_oracle(self, inputs, weights):
        import torch
        import torch.nn.functional as F

        (x,) = torch_tensors(inputs[0])
        f, a = self.function, self
        if f == "leaky_relu":
            return F.leaky_relu(x, a.number("alpha"))
        if f in ("hardtanh", "relu6"):
            return F.hardtanh(x, a.number("lower"), a.number("upper"))
        if f == "clamp":  # ONNX's Clip without bounds is the identity; torch refuses that
            return (
                x.clone()
                if a.lower is None and a.upper is None
                else torch.clamp(x, a.lower, a.upper)
            )
        if f == "elu":
            return torch.ops.aten.elu(x, a.alpha, a.scale, a.input_scale)
        if f == "celu":
            return F.celu(x, a.number("alpha"))
        if f == "selu":
            return torch.ops.aten.elu(x, a.alpha, a.scale, 1.0)
        if f == "gelu":
            return F.gelu(x, approximate=a.approximate or "none")  # None: not gelu
        if f == "softplus":
            return F.softplus(x, a.number("beta"), a.number("threshold"))
        if f == "hardsigmoid":
            return torch.clamp(a.alpha * x + a.beta, 0, 1)
        if f in ("silu", "mish", "hardswish", "softsign"):
            return getattr(F, f)(x)
        if f == "reciprocal":
            return torch.reciprocal(x)
        return getattr(torch, f)(x)


def activation_loops(
    x, out, code, alpha, beta, scale, input_scale, threshold, lower, upper, tanh_gelu
):  # pragma: no cover - compiled
    """Every activation, scalar, for Numba: ``x`` and ``out`` flat; ``code`` picks the function
    (:data:`ACTIVATION_CODES`, the same formulas as :data:`ACTIVATION_KERNELS`); a NaN bound is
    no bound."""
    for i in prange(x.size):
        v = x[i]
        if code == RELU:
            r = v if v > 0 else 0.0 * v
        elif code == RELU6 or code == HARDTANH or code == CLAMP:
            r = v
            if not math.isnan(lower) and r < lower:  # a NaN bound: no bound
                r = lower
            if not math.isnan(upper) and r > upper:
                r = upper
        elif code == LEAKY_RELU:
            r = v if v > 0 else alpha * v
        elif code == ELU:
            r = scale * (v if v > 0 else alpha * math.expm1(input_scale * v))
        elif code == CELU:
            r = v if v > 0 else alpha * math.expm1(v / alpha)
        elif code == SELU:
            r = scale * (v if v > 0 else alpha * math.expm1(v))
        elif code == GELU:
            if tanh_gelu:
                r = 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v * v * v)))
            else:
                r = 0.5 * v * (1 + math.erf(v / math.sqrt(2.0)))
        elif code == SILU or code == SIGMOID:
            e = math.exp(-abs(v))
            s = 1 / (1 + e) if v >= 0 else e / (1 + e)
            r = v * s if code == SILU else s
        elif code == MISH:
            r = v * math.tanh(max(v, 0.0) + math.log1p(math.exp(-abs(v))))
        elif code == SOFTPLUS:
            bx = beta * v
            r = v if bx > threshold else (max(bx, 0.0) + math.log1p(math.exp(-abs(bx)))) / beta
        elif code == TANH:
            r = math.tanh(v)
        elif code == HARDSIGMOID:
            r = min(max(alpha * v + beta, 0.0), 1.0)
        elif code == HARDSWISH:
            r = v * min(max(v / 6 + 0.5, 0.0), 1.0)
        elif code == SOFTSIGN:
            r = v / (1 + abs(v))
        elif code == ERF:
            r = math.erf(v)
        elif code == EXP:
            r = math.exp(v)
        elif code == LOG:
            r = math.log(v) if v > 0 else (-math.inf if v == 0 else math.nan)
        elif code == SQRT:
            r = math.sqrt(v) if v >= 0 else math.nan
        elif code == RSQRT:
            r = 1 / math.sqrt(v) if v > 0 else (math.inf if v == 0 else math.nan)
        elif code == RECIPROCAL:
            r = 1 / v if v != 0 else math.copysign(math.inf, v)
        elif code == NEG:
            r = -v
        elif code == ABS:
            r = abs(v)
        elif code == SIGN:
            r = 1.0 if v > 0 else (-1.0 if v < 0 else 0.0 * v)
        elif code == FLOOR:
            r = math.floor(v)
        elif code == CEIL:
            r = math.ceil(v)
        elif code == ROUND:
            r = np.rint(v)  # half to even
        elif code == SIN:
            r = math.sin(v)
        else:  # cos
            r = math.cos(v)
        out[i] = r


# --- binary operators ---------------------------------------------------------------------
def _divide(a, b, rounding_mode):
    """torch.div: true division (integers give floats), ``trunc`` (C's integer division, also
    ONNX's Div on integers) or ``floor`` (Python's ``//``)."""
    if rounding_mode is None:
        if np.result_type(a, b).kind in "iub":
            return np.true_divide(a, b).astype(np.float32)  # torch: the default float type
        return np.true_divide(a, b)
    integer = np.result_type(a, b).kind in "iub"
    if rounding_mode == "floor":
        return np.floor_divide(a, b) if integer else np.floor(np.true_divide(a, b))
    if integer:  # truncate toward zero: floor of |a| / |b| with the quotient's sign
        magnitude = np.floor_divide(np.abs(a), np.abs(b))
        return np.where((np.asarray(a) < 0) != (np.asarray(b) < 0), -magnitude, magnitude)
    return np.trunc(np.true_divide(a, b))


def _power(a, b):
    """Integer powers stay integer (torch); a float exponent makes floats."""
    return np.power(a, b)


#: Kernels of the binary operators (pure element-wise NumPy, so they also serve as the
#: compiled path); operands broadcast as in NumPy and PyTorch.
BINARY_KERNELS: dict[str, Callable[..., np.ndarray]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "pow": _power,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "remainder": np.mod,
    "fmod": np.fmod,
    "eq": np.equal,
    "ne": np.not_equal,
    "lt": np.less,
    "le": np.less_equal,
    "gt": np.greater,
    "ge": np.greater_equal,
    "logical_and": np.logical_and,
    "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
}

BINARY = frozenset({*BINARY_KERNELS, "div", "where"})


def broadcast(shapes) -> tuple[int, ...]:
    """NumPy/PyTorch broadcasting of several shapes; ShapeError when they do not broadcast."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for axis in range(rank):
        sizes = {s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0} - {1}
        if len(sizes) > 1:
            raise ShapeError(f"shapes {', '.join(str(tuple(s)) for s in shapes)} do not broadcast")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


Scalar = int | float | bool


@register
@dataclass(frozen=True)
class Binary(Op):
    """Element-wise arithmetic, comparison or ``where`` between tensors, parameters and
    constants, with broadcasting.

    Operands in order: each constant of ``scalars`` (``(position, value)`` pairs: ``1 - x``
    is ``sub`` with ``scalars=((0, 1),)``) at its position; the parameters (a learned scale, a
    position embedding; they count as weights), in role order, at ``param_positions`` (empty:
    after the inputs); the inputs fill the remaining places in order (``w - x`` with a
    parameter ``w`` is ``param_positions=(0,)``). A constant keeps its type: integer
    arithmetic stays integer, as in PyTorch. ``where`` takes (condition, a, b). ``div``'s
    ``rounding_mode`` is torch's (None: true division, ``trunc``, ``floor``).
    """

    KIND: ClassVar[str] = "binary"
    #: variant: ``(function, rounding_mode, swapped)``; swapped: ``rsub(a, b)`` is b - a
    NAMES: ClassVar[Names] = Names(
        aten={
            **{name: (name, None, False) for name in BINARY},
            **{f"{name}_": (name, None, False) for name in BINARY},
            "floor_divide": ("div", "floor", False),
            "floor_divide_": ("div", "floor", False),
            "rsub": ("sub", None, True),
        },
        onnx={
            "Add": "add",
            "Sub": "sub",
            "Mul": "mul",
            "Div": "div",
            "Pow": "pow",
            "Max": "maximum",
            "Min": "minimum",
            "Where": "where",
        },
        spec={name: name for name in sorted(BINARY - {"where"})},
    )
    function: str = "add"
    scalars: tuple[tuple[int, Scalar], ...] = ()
    param_positions: tuple[int, ...] = ()
    rounding_mode: str | None = None

    def __post_init__(self):
        if self.function not in BINARY:
            raise ValueError(f"unknown binary operator {self.function!r}")
        if self.rounding_mode not in (None, "trunc", "floor") or (
            self.rounding_mode and self.function != "div"
        ):
            raise ValueError(
                f"rounding mode {self.rounding_mode!r} does not apply to {self.function}"
            )

    @property
    def kind(self) -> str:
        return self.function

    def output_shape(self, input_shapes, params):
        return broadcast([*input_shapes, *params.values()])

    def kernel_gap(self, input_shapes, params):
        needed = 3 if self.function == "where" else 2
        have = len(input_shapes) + len(params) + len(self.scalars)
        if have < needed:  # an operand the importer could not capture (a computed constant)
            return (
                f"{self.function} has {have} of its {needed} operands (one is a value the "
                "importer did not capture), so it cannot be computed"
            )
        if self.function == "where" and have != 3:
            return f"where takes 3 operands, got {have}"
        return None

    def operands(self, inputs, weights) -> list:
        """Constants, parameters and inputs, each in its place (see the class)."""
        params = [np.asarray(a) for a in weights.values()]
        arrays = [np.asarray(a) for a in inputs]
        count = len(arrays) + len(params) + len(self.scalars)
        placed: dict[int, object] = dict(self.scalars)
        if self.param_positions:
            if len(self.param_positions) != len(params):
                raise ShapeError(f"{len(params)} parameters for positions {self.param_positions}")
            placed.update(zip(self.param_positions, params))
        else:
            arrays += params  # after the inputs
        rest = iter(arrays)
        return [placed[i] if i in placed else next(rest) for i in range(count)]

    def reference(self, inputs, weights):
        """Operands broadcast against each other; folded left to right for more than two."""
        gap = self.kernel_gap([np.shape(a) for a in inputs], weights)
        if gap:
            raise NotImplementedError(gap)
        operands = self.operands(inputs, weights)
        broadcast([np.shape(a) for a in operands])  # ShapeError naming the shapes
        arrays = [a for a in operands if isinstance(a, np.ndarray)]
        if (
            self.function != "where"
            and any(isinstance(a, float) for a in operands)
            and all(a.dtype.kind in "iub" for a in arrays)
        ):  # int tensor * 0.5: float32
            operands = [a.astype(np.float32) if isinstance(a, np.ndarray) else a for a in operands]
        if self.function == "where":
            condition, a, b = operands
            result = np.where(np.asarray(condition, dtype=bool), a, b)
            if (
                not isinstance(a, np.ndarray)
                and not isinstance(b, np.ndarray)
                and result.dtype.kind == "f"
            ):  # two constants: torch's default float type
                result = result.astype(np.float32)
            return result
        result = operands[0]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for operand in operands[1:]:
                if self.function == "div":
                    result = _divide(result, operand, self.rounding_mode)
                else:
                    result = BINARY_KERNELS[self.function](result, operand)
        return np.asarray(result)

    def torch_oracle(self, inputs, weights):
        import torch

        operands = [
            v if isinstance(v, (int, float, bool)) else torch_tensors(v)[0]
            for v in self.operands(inputs, weights)
        ]
        if self.function == "where":
            condition, a, b = operands
            a, b = (
                v
                if isinstance(v, torch.Tensor)
                else torch.tensor(
                    v, dtype=torch.result_type(a if isinstance(a, torch.Tensor) else b, v)
                )
                for v in (a, b)
            )
            return torch.where(torch.as_tensor(condition).bool(), a, b)
        tensors = [v for v in operands if isinstance(v, torch.Tensor)]
        # constants as 0-d tensors of the type torch gives a Python scalar with that tensor
        operands = [
            v
            if isinstance(v, torch.Tensor)
            else torch.tensor(v, dtype=torch.result_type(tensors[0], v) if tensors else None)
            for v in operands
        ]
        result = operands[0]
        for operand in operands[1:]:
            if self.function == "div":
                result = torch.div(result, operand, rounding_mode=self.rounding_mode)
            else:
                result = getattr(torch, self.function)(result, operand)
        return result


# --- softmax ------------------------------------------------------------------------------
@register
@dataclass(frozen=True)
class Softmax(Op):
    KIND: ClassVar[str] = "softmax"
    #: variant: ``log`` (log-softmax)
    NAMES: ClassVar[Names] = Names(
        aten={"_softmax": False, "_safe_softmax": False, "_log_softmax": True},
        modules={"Softmax": False, "LogSoftmax": True},
        onnx={"Softmax": False, "LogSoftmax": True},
        spec={"softmax": False, "logsoftmax": True},
    )
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

    def compiled(self, inputs, weights):
        """The axis moved last, rows of it normalised by :func:`softmax_loops`."""
        x = np.asarray(inputs[0])
        self.output_shape([x.shape], {})
        rows = contiguous(np.moveaxis(x, self.axis, -1))
        flat = rows.reshape(-1, rows.shape[-1]) if rows.size else rows.reshape(0, 1)
        out = np.empty_like(flat)
        compiled_kernel(softmax_loops, parallel=flat.size >= PARALLEL_MIN_WORK)(
            flat, out, self.log
        )
        return np.moveaxis(out.reshape(rows.shape), -1, self.axis)

    def torch_oracle(self, inputs, weights):
        import torch.nn.functional as F

        (x,) = torch_tensors(inputs[0])
        return (F.log_softmax if self.log else F.softmax)(x, dim=self.axis)


def softmax_loops(x, out, log):  # pragma: no cover - compiled
    """x, out ``(rows, L)``: each row's softmax (or log-softmax), rows over the cores: a pass
    for the max, one for the sum of exponentials, one to write."""
    rows, length = x.shape
    for r in prange(rows):
        largest = x[r, 0]
        for j in range(1, length):
            largest = max(largest, x[r, j])
        total = 0.0
        for j in range(length):
            total += math.exp(x[r, j] - largest)
        if log:
            shift = largest + math.log(total)
            for j in range(length):
                out[r, j] = x[r, j] - shift
        else:
            for j in range(length):
                out[r, j] = math.exp(x[r, j] - largest) / total
