"""Shape operators: reshape/flatten/view, transpose/permute, slicing, expand, concat, copies,
and dropout (identity at inference).

Views re-label memory and move nothing (0 values moved); concat and explicit copies read
their inputs and write their output. None does MACs.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import ClassVar

import numpy as np

from dnnlens.errors import ShapeError
from dnnlens.ops.base import Names, Op, register, torch_tensors


def resolve_shape(target: tuple[int, ...], numel: int, source: tuple[int, ...]) -> tuple[int, ...]:
    """Fill a single ``-1`` in a reshape target; ShapeError if the element counts differ."""
    if list(target).count(-1) > 1:
        raise ShapeError(f"reshape target {tuple(target)} has more than one -1")
    known = prod(d for d in target if d != -1)
    if -1 in target:
        if known == 0 or numel % known:
            raise ShapeError(f"cannot reshape {tuple(source)} ({numel} values) to {tuple(target)}")
        return tuple(numel // known if d == -1 else d for d in target)
    if known != numel:
        raise ShapeError(f"cannot reshape {tuple(source)} ({numel} values) to {tuple(target)}")
    return tuple(target)


@register
@dataclass(frozen=True)
class Reshape(Op):
    """A reshape/view. ``flatten`` marks the common ``(N, C, H, W) -> (N, C*H*W)`` case, shown
    as the notebook's ``flatten`` layer. ``shape`` is the target as traced (batch included);
    a kernel running a different batch keeps dimension 0 when ``keeps_batch``."""

    KIND: ClassVar[str] = "reshape"
    NAMES: ClassVar[Names] = Names(
        aten={
            name: None
            for name in (
                "view",
                "_unsafe_view",
                "reshape",
                "unsqueeze",
                "squeeze",
                "flatten",
                "unflatten",
                "view_as",
            )
        },
        modules={"Flatten": None, "Unflatten": None},
        onnx={name: None for name in ("Flatten", "Reshape", "Squeeze", "Unsqueeze")},
        spec={"flatten": "flatten", "reshape": "reshape"},  # variant: the builder's form
    )
    IS_VIEW: ClassVar[bool] = True

    shape: tuple[int, ...] = (-1,)
    flatten: bool = False
    keeps_batch: bool = True

    @property
    def kind(self) -> str:
        return "flatten" if self.flatten else "reshape"

    def output_shape(self, input_shapes, params):
        x = input_shapes[0]
        return resolve_shape(self.shape, prod(x), x)

    def reference(self, inputs, weights):
        """The traced target shape; when ``keeps_batch``, dimension 0 follows the input's
        batch, so a graph traced at batch 1 runs at any batch."""
        x = np.asarray(inputs[0])
        target = self.shape
        if self.keeps_batch and x.ndim and target:
            target = (x.shape[0], *(-1 if d == -1 else d for d in target[1:]))
        return x.reshape(resolve_shape(tuple(target), x.size, x.shape))

    def torch_oracle(self, inputs, weights):
        (x,) = torch_tensors(inputs[0])
        target = list(self.shape)
        if self.keeps_batch and x.dim() and target:
            target[0] = x.shape[0]
        return x.reshape(target)

    @classmethod
    def between(cls, source: tuple[int, ...], target: tuple[int, ...]) -> Reshape:
        """The reshape taking ``source`` to ``target``, recognising a flatten."""
        flatten = len(source) > 2 and len(target) == 2 and target[0] == source[0]
        keeps_batch = bool(source) and bool(target) and source[0] == target[0]
        return cls(shape=tuple(target), flatten=flatten, keeps_batch=keeps_batch)


@register
@dataclass(frozen=True)
class Permute(Op):
    """transpose/permute: a view in PyTorch (the copy, if any, shows as ``copy``)."""

    KIND: ClassVar[str] = "permute"
    NAMES: ClassVar[Names] = Names(
        aten={"permute": None, "transpose": None, "t": None},
        onnx={"Transpose": None},
        spec={"permute": None},
    )
    IS_VIEW: ClassVar[bool] = True
    dims: tuple[int, ...] = (0,)

    def output_shape(self, input_shapes, params):
        x = input_shapes[0]
        return tuple(x[d] for d in self.axes(len(x)))

    def axes(self, rank: int) -> tuple[int, ...]:
        """``dims`` made non-negative (``(0, -1, 1)`` on rank 3 is ``(0, 2, 1)``);
        ShapeError unless they are a permutation of the axes."""
        if any(not -rank <= d < rank for d in self.dims) or sorted(
            d % rank for d in self.dims
        ) != list(range(rank)):
            raise ShapeError(f"permutation {self.dims} does not fit rank {rank}")
        return tuple(d % rank for d in self.dims)

    def reference(self, inputs, weights):
        x = np.asarray(inputs[0])
        return x.transpose(self.axes(x.ndim))

    def torch_oracle(self, inputs, weights):
        (x,) = torch_tensors(inputs[0])
        return x.permute(self.dims)


@register
@dataclass(frozen=True)
class Slice(Op):
    """``x[..., start:stop:step, ...]`` along one axis (a view). ``keep_dim=False`` is a select."""

    KIND: ClassVar[str] = "slice"
    #: variant: how the source slices (one piece, one index, several pieces, a sequence)
    NAMES: ClassVar[Names] = Names(
        aten={
            "slice": "slice",
            "select": "select",
            "split": "split",
            "split_with_sizes": "split",
            "unbind": "split",
        },
        onnx={
            "Slice": "slice",
            "Split": "split",
            "SplitToSequence": "split_to_sequence",
            "SequenceAt": "sequence_at",
        },
    )
    IS_VIEW: ClassVar[bool] = True
    axis: int = 0
    start: int = 0
    stop: int = 1
    step: int = 1
    keep_dim: bool = True

    def output_shape(self, input_shapes, params):
        x = list(input_shapes[0])
        if not -len(x) <= self.axis < len(x):
            raise ShapeError(f"axis {self.axis} out of range for shape {tuple(x)}")
        axis = self.axis % len(x)
        length = len(range(*slice(self.start, self.stop, self.step).indices(x[axis])))
        if self.keep_dim:
            x[axis] = length
        else:
            del x[axis]
        return tuple(x)

    def reference(self, inputs, weights):
        x = np.asarray(inputs[0])
        self.output_shape([x.shape], {})
        index: list[slice | int] = [slice(None)] * x.ndim
        axis = self.axis % x.ndim
        index[axis] = slice(self.start, self.stop, self.step) if self.keep_dim else self.start
        return x[tuple(index)]

    def kernel_gap(self, input_shapes, params):
        return "a slice with step 0 selects nothing" if self.step == 0 else None

    def torch_oracle(self, inputs, weights):
        import torch

        (x,) = torch_tensors(inputs[0])
        axis = self.axis % x.dim()
        if not self.keep_dim:
            return x.select(axis, self.start)
        # torch slices take no negative step: pick the same positions by index instead
        picked = range(*slice(self.start, self.stop, self.step).indices(x.shape[axis]))
        return x.index_select(axis, torch.tensor(list(picked), dtype=torch.long))


@register
@dataclass(frozen=True)
class Expand(Op):
    """Broadcast a tensor to a larger shape without copying (a view)."""

    KIND: ClassVar[str] = "expand"
    NAMES: ClassVar[Names] = Names(aten={"expand": None}, onnx={"Expand": None})
    IS_VIEW: ClassVar[bool] = True
    shape: tuple[int, ...] = ()

    def output_shape(self, input_shapes, params):
        if not input_shapes and not params:  # a constant the importer did not capture:
            return tuple(self.shape)  # the traced shape stands (kernel_gap says why not run)
        x = input_shapes[0] if input_shapes else next(iter(params.values()))
        lead = len(self.shape) - len(x)
        if lead < 0:
            raise ShapeError(f"cannot expand {tuple(x)} to fewer dimensions {self.shape}")
        out = list(self.shape[:lead])
        for size, want in zip(x, self.shape[lead:]):
            if want != -1 and size not in (1, want):
                raise ShapeError(f"cannot expand {tuple(x)} to {self.shape}")
            out.append(size if want == -1 else want)
        return tuple(out)

    def kernel_gap(self, input_shapes, params):
        if not input_shapes and not params:
            return "expand of a value the importer did not capture (a computed constant)"
        return None

    def reference(self, inputs, weights):
        if not inputs and not weights:
            raise NotImplementedError(self.kernel_gap([], {}))
        x = np.asarray(inputs[0] if inputs else next(iter(weights.values())))
        return np.broadcast_to(x, self.output_shape([x.shape], {}))

    def torch_oracle(self, inputs, weights):
        (x,) = torch_tensors(inputs[0] if inputs else next(iter(weights.values())))
        return x.expand(self.shape)


@register
@dataclass(frozen=True)
class Concat(Op):
    """Concatenate along ``axis``; inputs may be activations or parameters (ViT's class token)."""

    KIND: ClassVar[str] = "concat"
    NAMES: ClassVar[Names] = Names(
        aten={"cat": None}, onnx={"Concat": None}, spec={"concat": None}
    )
    axis: int = 1

    def output_shape(self, input_shapes, params):
        shapes = [*input_shapes, *params.values()]
        rank = len(shapes[0])
        if not -rank <= self.axis < rank:
            raise ShapeError(f"concat axis {self.axis} is out of range for rank {rank}")
        axis = self.axis % rank
        for s in shapes:
            if len(s) != rank or any(
                a != b for i, (a, b) in enumerate(zip(s, shapes[0])) if i != axis
            ):
                raise ShapeError(
                    f"cannot concatenate shapes {[tuple(s) for s in shapes]} "
                    f"along axis {self.axis}"
                )
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        return tuple(out)

    def reference(self, inputs, weights):
        operands = [np.asarray(a) for a in (*inputs, *weights.values())]
        self.output_shape([a.shape for a in operands], {})  # ShapeError naming the shapes
        return np.concatenate(operands, axis=self.axis)

    def torch_oracle(self, inputs, weights):
        import torch

        return torch.cat(torch_tensors(*inputs, *weights.values()), dim=self.axis)


@register
@dataclass(frozen=True)
class Copy(Op):
    """An explicit copy (``contiguous`` after a permute, ``clone``): reads, writes every value."""

    KIND: ClassVar[str] = "copy"
    NAMES: ClassVar[Names] = Names(aten={"clone": None, "_to_copy": None})

    def output_shape(self, input_shapes, params):
        return tuple(input_shapes[0])

    def reference(self, inputs, weights):
        return np.array(inputs[0], copy=True)

    def torch_oracle(self, inputs, weights):
        return torch_tensors(inputs[0])[0].clone()


@register
@dataclass(frozen=True)
class Dropout(Op):
    """Dropout: the identity at inference, so a view that moves nothing."""

    KIND: ClassVar[str] = "dropout"
    NAMES: ClassVar[Names] = Names(
        modules={
            name: None
            for name in ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout")
        },
        onnx={"Dropout": None},
        spec={"dropout": None},
    )
    IS_VIEW: ClassVar[bool] = True
    p: float = 0.5

    def output_shape(self, input_shapes, params):
        return tuple(input_shapes[0])

    def reference(self, inputs, weights):
        return np.asarray(inputs[0])  # inference: nothing is dropped

    def torch_oracle(self, inputs, weights):
        import torch.nn.functional as F

        return F.dropout(torch_tensors(inputs[0])[0], self.p, training=False)
