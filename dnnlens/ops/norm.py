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

import math
from dataclasses import dataclass
from math import prod
from typing import ClassVar

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

NORMS = frozenset({"batchnorm", "layernorm", "groupnorm", "instancenorm"})
REDUCTIONS = frozenset(
    {
        "mean",
        "sum",
        "amax",
        "amin",
        "prod",
        "var",
        "std",
        "norm",
        "logsumexp",
        "sumsquare",
        "argmax",
        "argmin",
    }
)


@register
@dataclass(frozen=True)
class Norm(Op):
    KIND: ClassVar[str] = "norm"
    #: variant: the normalisation's ``function``
    NAMES: ClassVar[Names] = Names(
        aten={
            "native_batch_norm": "batchnorm",
            "_native_batch_norm_legit_no_training": "batchnorm",
            "native_layer_norm": "layernorm",
            "native_group_norm": "groupnorm",
        },
        modules={
            **{f"BatchNorm{d}d": "batchnorm" for d in (1, 2, 3)},
            "LayerNorm": "layernorm",
            "GroupNorm": "groupnorm",
            **{f"InstanceNorm{d}d": "instancenorm" for d in (1, 2, 3)},
        },
        onnx={"BatchNormalization": "batchnorm", "LayerNormalization": "layernorm"},
        spec={"batchnorm": "batchnorm", "layernorm": "layernorm"},
    )

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
            if tuple(x[len(x) - n :]) != self.normalized_shape:
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

    # --- kernels ----------------------------------------------------------------------
    @property
    def uses_running_stats(self) -> bool:
        return self.function in ("batchnorm", "instancenorm") and len(self.stats) == 2

    def buffers(self):
        """Batch norm (and instance norm tracking statistics) at inference: the running mean
        and variance, by role ``running_mean`` / ``running_var``."""
        if not self.uses_running_stats:
            return {}
        return {"running_mean": self.stats[0], "running_var": self.stats[1]}

    def kernel_gap(self, input_shapes, params):
        if self.function == "batchnorm" and not self.uses_running_stats:
            return (
                "batch norm without running statistics (a model traced in training "
                "mode?) has no inference kernel; call model.eval() first"
            )
        return None

    def rows(self, x: np.ndarray) -> np.ndarray:
        """x as the rows to normalise, for the norms that compute their own statistics: layer
        norm ``(prod(lead), prod(normalized_shape))``; group norm ``(N*G, C/G * spatial)``;
        instance norm ``(N*C, spatial)``."""
        if self.function == "layernorm":
            return x.reshape(-1, prod(self.normalized_shape))
        n, c = x.shape[:2]
        groups = c if self.function == "instancenorm" else self.groups
        return x.reshape(n * groups, -1)

    def _checked(self, inputs, weights) -> np.ndarray:
        x = np.asarray(inputs[0])
        shapes = {role: np.shape(w) for role, w in weights.items() if role in ("weight", "bias")}
        self.output_shape([x.shape], shapes)
        gap = self.kernel_gap([x.shape], shapes)
        if gap:
            raise NotImplementedError(gap)
        missing = set(self.buffers()) - set(weights)
        if missing:  # a caller that passed node.params only
            raise NotImplementedError(
                f"{self.function} needs its running statistics "
                f"({', '.join(sorted(missing))}) among the weights: "
                "pass the operator's buffers() by role"
            )
        return x

    def _affine(self, normalised: np.ndarray, x: np.ndarray, weights) -> np.ndarray:
        """Rows back to ``x``'s shape, times ``weight`` plus ``bias`` (per channel, or per
        normalised element for layer norm)."""
        out = normalised.reshape(x.shape)
        if self.function == "layernorm":
            shape = self.normalized_shape
        else:
            shape = (x.shape[1], *([1] * (x.ndim - 2)))  # broadcast along (N, C, ...)
        if weights.get("weight") is not None:
            out = out * np.asarray(weights["weight"]).reshape(shape)
        if weights.get("bias") is not None:
            out = out + np.asarray(weights["bias"]).reshape(shape)
        return out.astype(x.dtype, copy=False)

    def scale_shift(self, weights) -> tuple[np.ndarray, np.ndarray]:
        """Inference batch norm as one scale and shift per channel (float64):
        ``(x - mean) / sqrt(var + eps) * weight + bias = x * scale + shift``; what folding it
        into the convolution before it multiplies that conv's weights and bias by."""
        c = len(weights["running_mean"])
        mean = np.asarray(weights["running_mean"], dtype=np.float64)
        var = np.asarray(weights["running_var"], dtype=np.float64)
        weight = np.asarray(weights.get("weight", np.ones(c)), dtype=np.float64)
        bias = np.asarray(weights.get("bias", np.zeros(c)), dtype=np.float64)
        scale = weight / np.sqrt(var + self.eps)
        return scale, bias - mean * scale

    def reference(self, inputs, weights):
        """x ``(N, C, ...)`` (layer norm: ``(..., *normalized_shape)``) -> the same shape.

        Running statistics: ``out[n, c, ...] = (x - mean[c]) / sqrt(var[c] + eps) * weight[c]
        + bias[c]``, a loop over channels. Otherwise each row of :meth:`rows` is normalised by
        its own mean and biased variance (:func:`normalize_rows_reference`)."""
        x = self._checked(inputs, weights)
        if self.uses_running_stats:
            out = np.empty_like(x)
            mean, var = weights["running_mean"], weights["running_var"]
            for c in range(x.shape[1]):
                value = (x[:, c] - mean[c]) / np.sqrt(var[c] + self.eps)
                if weights.get("weight") is not None:
                    value = value * weights["weight"][c]
                if weights.get("bias") is not None:
                    value = value + weights["bias"][c]
                out[:, c] = value
            return out
        rows = self.rows(x)
        return self._affine(normalize_rows_reference(rows, self.eps), x, weights)

    def compiled(self, inputs, weights):
        x = self._checked(inputs, weights)
        if self.uses_running_stats:
            n, c = x.shape[:2]
            planes = contiguous(x).reshape(n, c, -1)
            out = np.empty_like(planes)
            scale, shift = self.scale_shift(weights)
            kernel = compiled_kernel(scale_shift_loops, parallel=x.size >= PARALLEL_MIN_WORK)
            kernel(planes, scale.astype(x.dtype), shift.astype(x.dtype), out)
            return out.reshape(x.shape)
        rows = self.rows(contiguous(x))
        out = np.empty_like(rows)
        kernel = compiled_kernel(normalize_rows_loops, parallel=x.size >= PARALLEL_MIN_WORK)
        kernel(rows, out, self.eps)
        return self._affine(out, x, weights)

    def torch_oracle(self, inputs, weights):
        import torch.nn.functional as F

        (x,) = torch_tensors(inputs[0])
        w, b, mean, var = torch_tensors(
            *(weights.get(role) for role in ("weight", "bias", "running_mean", "running_var"))
        )
        if self.uses_running_stats:
            return F.batch_norm(x, mean, var, w, b, training=False, eps=self.eps)
        if self.function == "layernorm":
            return F.layer_norm(x, self.normalized_shape, w, b, self.eps)
        if self.function == "groupnorm":
            return F.group_norm(x, self.groups, w, b, self.eps)
        return F.instance_norm(x, weight=w, bias=b, eps=self.eps)


def normalize_rows_reference(rows: np.ndarray, eps: float) -> np.ndarray:
    """rows ``(R, L)`` -> ``(R, L)``: ``(x - mean) / sqrt(var + eps)`` with each row's mean and
    biased variance (divided by L, as every normalisation does). The loops run along the row,
    each step serving every row at once; the variance is a second pass (exact in float64)."""
    count, length = rows.shape
    total = np.zeros(count)
    for j in range(length):
        total += rows[:, j]
    mean = total / length
    squares = np.zeros(count)
    for j in range(length):
        squares += (rows[:, j] - mean) ** 2
    inv_std = 1 / np.sqrt(squares / length + eps)
    return (rows - mean[:, None]) * inv_std[:, None]


def normalize_rows_loops(rows, out, eps):  # pragma: no cover - compiled
    """The same, scalar, for Numba: rows shared out over the cores, sums in float64."""
    count, length = rows.shape
    for r in prange(count):
        total = 0.0
        for j in range(length):
            total += rows[r, j]
        mean = total / length
        squares = 0.0
        for j in range(length):
            d = rows[r, j] - mean
            squares += d * d
        inv_std = 1 / math.sqrt(squares / length + eps)
        for j in range(length):
            out[r, j] = (rows[r, j] - mean) * inv_std


def scale_shift_loops(planes, scale, shift, out):  # pragma: no cover - compiled
    """planes ``(N, C, S)``: ``out = x * scale[c] + shift[c]`` (inference batch norm folded
    into one multiply-add per value), (image, channel) planes over the cores."""
    n, c, size = planes.shape
    for job in prange(n * c):
        i, ch = job // c, job % c
        for k in range(size):
            out[i, ch, k] = planes[i, ch, k] * scale[ch] + shift[ch]


@register
@dataclass(frozen=True)
class Reduce(Op):
    """A reduction over ``dims`` (``x.mean([2, 3])``: global average pooling written by hand)."""

    KIND: ClassVar[str] = "reduce"
    #: variant: the reduction's ``function``
    NAMES: ClassVar[Names] = Names(
        aten={
            **{name: name for name in ("mean", "sum", "amax", "amin", "var", "std")},
            "linalg_vector_norm": "norm",
        },
        onnx={"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "amax", "ReduceMin": "amin"},
    )
    function: str = "mean"
    dims: tuple[int, ...] = ()  # empty: every dimension
    keepdim: bool = False
    correction: int = 1  # var/std: divide by count - correction (1: unbiased, torch's default)
    p: float = 2.0  # norm: the p of the p-norm
    select_last: bool = False  # argmax/argmin: the last of equal extremes (ONNX's option)

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
        if self.function in ("argmax", "argmin") and len(self.dims) > 1:
            raise ShapeError(f"{self.function} takes one dimension, got {self.dims}")
        axes = self.axes(len(x))
        if self.keepdim:
            return tuple(1 if i in axes else s for i, s in enumerate(x))
        return tuple(s for i, s in enumerate(x) if i not in axes)

    def axes(self, rank: int) -> tuple[int, ...]:
        """The reduced axes, non-negative and sorted (all of them when ``dims`` is empty)."""
        return tuple(sorted({d % rank for d in self.dims})) if self.dims else tuple(range(rank))

    # --- kernels ----------------------------------------------------------------------
    def rows(self, x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        """``(x as (kept values, reduced values), output shape)``: the reduced axes moved
        last and flattened, so each row is one output's operands."""
        out_shape = self.output_shape([x.shape], {})
        axes = self.axes(x.ndim)
        kept = [a for a in range(x.ndim) if a not in axes]
        moved = np.transpose(x, (*kept, *axes))
        return moved.reshape(prod(x.shape[a] for a in kept), -1), out_shape

    def _dtype(self, x: np.ndarray) -> np.dtype:
        if x.dtype.kind in "iub":
            if self.function in ("sum", "prod"):
                return np.dtype(np.int64)  # torch sums integers (and booleans) as int64
            if self.function in ("amax", "amin"):
                return x.dtype
            raise NotImplementedError(f"{self.function} of integers (torch refuses it too)")
        return x.dtype

    def reference(self, inputs, weights):
        """x -> the output shape; each output reduces one row of :meth:`rows`, the loop runs
        along the row (every row at once per step); var/std take a second pass around the
        mean, divided by ``count - correction``."""
        x = np.asarray(inputs[0])
        rows, out_shape = self.rows(x)
        count, length = rows.shape
        f = self.function
        if f in ("argmax", "argmin"):  # the position of the first (or last) extreme
            if length == 0:
                raise ShapeError(f"{f} over an empty dimension of {tuple(x.shape)}")
            best, where = rows[:, 0].copy(), np.zeros(count, dtype=np.int64)
            for j in range(1, length):
                value = rows[:, j]
                better = value > best if f == "argmax" else value < best
                if self.select_last:
                    better |= value == best
                best, where = np.where(better, value, best), np.where(better, j, where)
            return where.reshape(out_shape)
        dtype = self._dtype(x)
        if f in ("amax", "amin"):
            if length == 0:
                raise ShapeError(f"{f} over an empty dimension of {tuple(x.shape)}")
            result = rows[:, 0].copy()
            for j in range(1, length):
                result = (np.maximum if f == "amax" else np.minimum)(result, rows[:, j])
            return result.reshape(out_shape)
        if f == "logsumexp":  # max + log(sum(exp(x - max))): exp never overflows
            largest = rows.max(axis=1) if length else np.full(count, -np.inf)
            shift = np.where(np.isfinite(largest), largest, 0.0)
            total = np.zeros(count)
            for j in range(length):
                total += np.exp(rows[:, j] - shift)
            with np.errstate(divide="ignore"):
                return (shift + np.log(total)).astype(dtype).reshape(out_shape)
        accumulate = np.int64 if dtype.kind == "i" else np.float64
        result = np.full(count, 1 if f == "prod" else 0, dtype=accumulate)
        for j in range(length):
            if f == "sumsquare":
                result += rows[:, j] * rows[:, j]
            elif f == "prod":
                result *= rows[:, j]
            elif f == "norm":
                result += np.abs(rows[:, j]) ** self.p
            else:
                result += rows[:, j]
        if f == "mean":
            result = result / length
        elif f == "norm":
            result = result ** (1 / self.p)
        elif f in ("var", "std"):
            mean = result / length
            squares = np.zeros(count)
            for j in range(length):
                squares += (rows[:, j] - mean) ** 2
            result = squares / max(length - self.correction, 0)
            if f == "std":
                result = np.sqrt(result)
        return np.asarray(result).astype(dtype).reshape(out_shape)

    def compiled(self, inputs, weights):
        x = np.asarray(inputs[0])
        if x.dtype.kind != "f" or self.function == "norm" and self.p != 2:
            return self.reference(inputs, weights)  # integers, rare p-norms
        rows, out_shape = self.rows(x)
        rows = contiguous(rows)
        if self.function in ("argmax", "argmin"):
            if rows.shape[1] == 0:
                raise ShapeError(f"{self.function} over an empty dimension of {x.shape}")
            where = np.empty(rows.shape[0], dtype=np.int64)
            kernel = compiled_kernel(arg_loops, parallel=rows.size >= PARALLEL_MIN_WORK)
            kernel(rows, where, self.function == "argmax", self.select_last)
            return where.reshape(out_shape)
        if rows.shape[1] == 0 and self.function in ("amax", "amin"):
            raise ShapeError(f"{self.function} over an empty dimension of {tuple(x.shape)}")
        out = np.empty(rows.shape[0], dtype=x.dtype)
        kernel = compiled_kernel(reduce_loops, parallel=rows.size >= PARALLEL_MIN_WORK)
        kernel(rows, out, REDUCE_CODES[self.function], float(self.correction))
        return out.reshape(out_shape)

    def torch_oracle(self, inputs, weights):
        import torch

        (x,) = torch_tensors(inputs[0])
        dims = list(self.dims) or list(range(x.dim()))
        if self.function in ("var", "std"):
            return getattr(torch, self.function)(
                x, dims, correction=self.correction, keepdim=self.keepdim
            )
        if self.function == "norm":
            return torch.linalg.vector_norm(x, self.p, dims, keepdim=self.keepdim)
        if self.function == "prod":
            for d in sorted((d % x.dim() for d in dims), reverse=True):
                x = torch.prod(x, d, keepdim=self.keepdim)
            return x
        if self.function == "sumsquare":  # ONNX ReduceSumSquare
            return torch.sum(x * x, dims, keepdim=self.keepdim)
        if self.function in ("argmax", "argmin"):
            dim = self.dims[0] if self.dims else None
            if self.select_last:  # the first extreme of the flipped axis, counted back
                flipped = x.flip(dim if dim is not None else list(range(x.dim())))
                found = getattr(torch, self.function)(flipped, dim, keepdim=self.keepdim)
                size = x.shape[dim] if dim is not None else x.numel()
                return size - 1 - found
            return getattr(torch, self.function)(x, dim, keepdim=self.keepdim)
        return getattr(torch, self.function)(x, dims, keepdim=self.keepdim)


#: Codes of the reductions in the compiled loop (module constants: literals to Numba).
SUM, MEAN, AMAX, AMIN, PROD, VAR, STD, NORM, LOGSUMEXP, SUMSQUARE = range(10)
REDUCE_CODES = {
    "sum": SUM,
    "mean": MEAN,
    "amax": AMAX,
    "amin": AMIN,
    "prod": PROD,
    "var": VAR,
    "std": STD,
    "norm": NORM,
    "logsumexp": LOGSUMEXP,
    "sumsquare": SUMSQUARE,
}


def arg_loops(rows, where, is_max, last):  # pragma: no cover - compiled
    """rows ``(R, K)`` -> where ``(R,)``: the position of each row's largest (smallest)
    value, the first of equal ones or, with ``last``, the last; a NaN wins, as in torch."""
    count, length = rows.shape
    for r in prange(count):
        best, at = rows[r, 0], 0
        for j in range(1, length):
            v = rows[r, j]
            if math.isnan(best):
                break
            better = (v > best) if is_max else (v < best)
            if better or math.isnan(v) or (last and v == best):
                best, at = v, j
        where[r] = at


def reduce_loops(rows, out, code, correction):  # pragma: no cover - compiled
    """rows ``(R, K)`` -> out ``(R,)``, one reduction per row, rows over the cores; sums in
    float64; var/std a second pass around the mean; norm is the 2-norm here."""
    count, length = rows.shape
    for r in prange(count):
        if code == AMAX or code == AMIN:
            best = rows[r, 0]
            for j in range(1, length):
                v = rows[r, j]
                if (code == AMAX and (v > best or math.isnan(v))) or (
                    code == AMIN and (v < best or math.isnan(v))
                ):
                    best = v  # a NaN wins, as in torch
            out[r] = best
        elif code == PROD:
            total = 1.0
            for j in range(length):
                total *= rows[r, j]
            out[r] = total
        elif code == NORM or code == SUMSQUARE:
            total = 0.0
            for j in range(length):
                total += rows[r, j] * rows[r, j]
            out[r] = math.sqrt(total) if code == NORM else total
        elif code == LOGSUMEXP:
            largest = -math.inf
            for j in range(length):
                largest = max(largest, rows[r, j])
            shift = largest if math.isfinite(largest) else 0.0
            total = 0.0
            for j in range(length):
                total += math.exp(rows[r, j] - shift)
            out[r] = shift + math.log(total) if total > 0 else -math.inf
        else:
            total = 0.0
            for j in range(length):
                total += rows[r, j]
            if code == SUM:
                out[r] = total
            elif code == MEAN:
                out[r] = total / length
            else:
                mean = total / length
                squares = 0.0
                for j in range(length):
                    d = rows[r, j] - mean
                    squares += d * d
                var = squares / max(length - correction, 0.0)
                out[r] = math.sqrt(var) if code == STD else var
