"""The analysis of one training step: backward MACs per layer and the memory a step needs.

(Not to be confused with :mod:`dnnlens.training`, which trains the course network for real.)

How, in pipeline order (docs/training.md says more):

1. **Trace forward, training mode.** A meta copy of the model (the importer's
   :func:`~dnnlens.importers.torch.meta_copy`, then ``train()``) runs under the importer's own
   :class:`~dnnlens.importers.torch.Tracer` with autograd *on*, so the IR graph and its rows are
   those of :func:`dnnlens.analyze`, in training mode (batch norm uses batch statistics,
   dropout is live), and every traced tensor keeps its ``grad_fn``.
2. **Label the autograd graph.** Autograd numbers its backward nodes in creation order and
   creates an operator's node just before the operator runs. The tracer notes that number
   each time it adds an IR node, so every backward node belongs to the first IR node added
   after it (a linear layer's ``AddmmBackward0`` and the ``TBackward0`` of its weight; a batch
   norm's ``NativeBatchNormBackward0``, even when an in-place ReLU later takes over its output
   tensor). Nodes created after the last IR node (the loss) are labelled ``(loss)``.
3. **Backward on meta.** ``loss.backward()`` runs under a ``TorchDispatchMode`` that sees every
   aten operator autograd runs, asks ``torch._C._current_autograd_node()`` which backward node
   runs it, and so which layer it differentiates. A matrix product or convolution is an
   *input gradient* when one operand is the layer's weight (``dX = dY W``), or per
   ``convolution_backward``'s ``output_mask``; a *weight gradient* when it produces a tensor the
   size of a trainable weight of the layer from activations only (``dW = dY^T X``); a product
   of two activations (attention) is an input gradient. Autograd itself skips what is not
   needed: a frozen weight gets no weight gradient and the first layer (whose input is data)
   no input gradient, so those MACs are zero because they are not run, not by a rule of ours.
4. **Saved for backward.** Before backward, each autograd node's ``_saved_*`` tensors are read
   (the same tensors autograd keeps), de-duplicated by storage (a ReLU done in place saves the
   batch norm's output storage once), parameters and buffers left out, and charged to the
   first layer that saves them.
5. **Memory of a step.** A second meta copy runs whole steps (zero_grad, forward, loss,
   backward, ``optimizer.step()`` with the real ``torch.optim`` optimizer) under an allocation
   tracker: each new storage an aten operator returns is allocated, and it is freed when
   PyTorch frees it (a ``weakref.finalize`` on the storage). That is the liveness of the step as
   PyTorch really runs it, forward then backward then the update, on meta (no memory used); the
   peak of the second step (optimizer state exists, gradients were set to ``None``) is the
   steady-state peak.
6. **Checkpointing.** ``checkpoint_depth=K`` wraps every module ``K`` levels down in
   ``torch.utils.checkpoint`` (non-reentrant); the memory tracker then shows what is kept and
   the backward counter the forward operators run again (``recompute_macs``).

MACs follow docs/units.md: multiply-accumulates per batch of convolutions and matrix products
(element-wise and normalisation operators count none but move memory), FLOPs = 2 x MACs.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import json
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from math import prod
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from dnnlens.analysis import (
    DTYPE_BYTES,
    Analysis,
    LayerRow,
    _csv_cell,
    bytes_per_value,
    layer_rows,
    totals,
    unknown_warnings,
)
from dnnlens.errors import ModelError, UsageError
from dnnlens.importers.torch import (
    ParamRef,
    Tracer,
    _first_line,
    _FusedFunctions,
    _meta_inputs,
    _patched_sdpa,
    _rejected,
    bind_inputs,
    install_hooks,
    meta_copy,
    shape_of,
)
from dnnlens.ir import Graph

if TYPE_CHECKING:
    import pandas

__all__ = ["OPTIMIZERS", "BackwardRow", "TrainingMemory", "TrainingStep", "analyze_training"]

#: Optimizer name -> (torch.optim class name, keyword arguments).
OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    "sgd": ("SGD", {"lr": 0.01}),
    "sgd-momentum": ("SGD", {"lr": 0.01, "momentum": 0.9}),
    "adam": ("Adam", {"lr": 1e-3}),
    "adamw": ("AdamW", {"lr": 1e-3}),
}

_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

LOSS_ROW = "(loss)"


# ---------------------------------------------------------------------------------------------
# Results (plain data)


@dataclass(frozen=True)
class BackwardRow:
    """The training-step columns of one layer (one IR node), or of ``(loss)``.

    ``input_grad_macs``: MACs that compute the gradient w.r.t. the layer's activation inputs;
    ``weight_grad_macs``: w.r.t. its weights; ``recompute_macs``: forward MACs run again in
    backward (activation checkpointing); ``backward_values_moved``: values read and written by
    every backward operator of the layer (views move nothing); ``saved_bytes``: bytes of the
    storages autograd keeps for this layer's backward (parameters and buffers not counted).
    """

    name: str
    module: str
    type: str
    forward_macs: int
    input_grad_macs: int
    weight_grad_macs: int
    recompute_macs: int
    backward_values_moved: int
    saved_bytes: int

    @property
    def backward_macs(self) -> int:
        return self.input_grad_macs + self.weight_grad_macs

    @property
    def step_macs(self) -> int:
        """Forward + backward + recomputation."""
        return self.forward_macs + self.backward_macs + self.recompute_macs


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes of one steady-state training step (the second step: optimizer state exists).

    ``parameters`` includes buffers; ``master_weights`` is the fp32 copy of mixed precision;
    ``activations`` is what the forward pass leaves alive for backward (saved tensors, the
    inputs of checkpointed blocks, the loss); ``peak`` is the most bytes alive at once over the
    step and ``peak_phase`` where it happens; ``first_step_peak`` the same for the first step
    (optimizer state is created in it).
    """

    optimizer: str
    dtype: str
    amp: bool
    parameters: int
    gradients: int
    optimizer_state: int
    master_weights: int
    inputs: int
    activations: int
    peak: int
    peak_phase: str
    first_step_peak: int

    @property
    def persistent(self) -> int:
        """What lives across steps: weights (and fp32 masters) and optimizer state."""
        return self.parameters + self.master_weights + self.optimizer_state


@dataclass
class TrainingStep:
    """The analysis of one training step: forward rows, backward rows, memory."""

    analysis: Analysis
    backward: list[BackwardRow]
    memory: TrainingMemory
    checkpoint_depth: int | None = None
    warnings: list[str] = field(default_factory=list)

    # --- totals ---------------------------------------------------------------------------
    @property
    def forward_macs(self) -> int:
        return sum(r.forward_macs for r in self.backward)

    @property
    def backward_macs(self) -> int:
        return sum(r.backward_macs for r in self.backward)

    @property
    def input_grad_macs(self) -> int:
        return sum(r.input_grad_macs for r in self.backward)

    @property
    def weight_grad_macs(self) -> int:
        return sum(r.weight_grad_macs for r in self.backward)

    @property
    def recompute_macs(self) -> int:
        return sum(r.recompute_macs for r in self.backward)

    @property
    def saved_bytes(self) -> int:
        return sum(r.saved_bytes for r in self.backward)

    @property
    def backward_values_moved(self) -> int:
        return sum(r.backward_values_moved for r in self.backward)

    def row(self, name: str) -> BackwardRow:
        for r in self.backward:
            if r.name == name:
                return r
        raise KeyError(name)

    def by_module(self) -> dict[str, BackwardRow]:
        """Rows summed per module qualified name (a module of several nodes is one entry)."""
        out: dict[str, BackwardRow] = {}
        for r in self.backward:
            out[r.module] = _add(out[r.module], r, r.module) if r.module in out else r
        return out

    def grouped(self, depth: int | None) -> list[BackwardRow]:
        """Rows, or merged by the first ``depth`` parts of the module name (as
        :func:`dnnlens.analysis.group_rows` merges the forward rows)."""
        if depth is None:
            return list(self.backward)
        if depth < 0:
            raise UsageError(f"--depth must be 0 or more, got {depth}")
        merged: list[BackwardRow] = []
        keys: list[str] = []
        for r in self.backward:
            key = ".".join(r.module.split(".")[:depth]) if depth else "(model)"
            if depth and not r.module:
                key = r.name
            if merged and keys[-1] == key:
                merged[-1] = _add(merged[-1], r, key)
            else:
                merged.append(r if key == r.name else _add(_zero(key), r, key))
                keys.append(key)
        return merged

    # --- views ----------------------------------------------------------------------------
    def to_json_dict(self, depth: int | None = None) -> dict[str, Any]:
        """The forward analysis's JSON with backward columns and a ``training`` summary."""
        doc = self.analysis.to_json_dict(depth)
        by_name = {r.name: r for r in self.grouped(depth)}
        for layer in doc["layers"]:
            r = by_name.get(layer["name"])
            if r is not None:
                layer.update(_backward_fields(r))
        loss = by_name.get(LOSS_ROW)
        doc["units"] = {**doc["units"], **TRAINING_UNITS}
        doc["training"] = {
            "optimizer": self.memory.optimizer,
            "amp": self.memory.amp,
            "checkpoint_depth": self.checkpoint_depth,
            "totals": {
                "forward_macs": self.forward_macs,
                "backward_macs": self.backward_macs,
                "input_grad_macs": self.input_grad_macs,
                "weight_grad_macs": self.weight_grad_macs,
                "recompute_macs": self.recompute_macs,
                "backward_values_moved": self.backward_values_moved,
                "saved_bytes": self.saved_bytes,
            },
            "loss": _backward_fields(loss) if loss else None,
            "memory": {**asdict(self.memory), "persistent": self.memory.persistent},
            "rules_of_thumb": self.rules_of_thumb(),
        }
        return doc

    def to_json(self, depth: int | None = None, indent: int | None = 2) -> str:
        return json.dumps(self.to_json_dict(depth), indent=indent)

    def to_dicts(self, depth: int | None = None) -> list[dict[str, Any]]:
        """Every forward row's fields with its backward columns, then the ``(loss)`` row."""
        by_name = {r.name: r for r in self.grouped(depth)}
        rows = [
            {**row, **_backward_fields(by_name[row["name"]])}
            for row in self.analysis.to_dicts(depth)
            if row["name"] in by_name
        ]
        loss = by_name.get(LOSS_ROW)
        if loss is not None:
            rows.append(
                {
                    "index": len(rows) + 1,
                    "name": LOSS_ROW,
                    "type": "loss",
                    **_backward_fields(loss),
                }
            )
        return rows

    def to_dataframe(self, depth: int | None = None) -> pandas.DataFrame:
        import pandas  # lazily: pandas is optional

        return pandas.DataFrame(self.to_dicts(depth)).set_index("index")

    def to_csv(self, path: str, depth: int | None = None) -> None:
        """The rows with their backward columns as CSV, written atomically."""
        import csv

        from dnnlens.fileio import atomic_open

        rows = self.to_dicts(depth)
        fields = list(dict.fromkeys(key for row in rows for key in row))
        with atomic_open(path, "w", newline="", what="the CSV ") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _csv_cell(v) for k, v in row.items()})

    def rules_of_thumb(self) -> dict[str, Any]:
        """The folk rules next to the exact figures (labelled: they are rules of thumb)."""
        m = self.memory
        trainable = m.gradients // max(1, _dtype_bytes(m.dtype))
        return {
            "backward = 2 x forward MACs (rule of thumb)": 2 * self.forward_macs,
            "backward MACs (exact)": self.backward_macs,
            "training step = 3 x forward MACs (rule of thumb)": 3 * self.forward_macs,
            "training step MACs (exact)": self.forward_macs
            + self.backward_macs
            + self.recompute_macs,
            "Adam mixed precision = 16 bytes per parameter (rule of thumb, ZeRO paper)": 16
            * trainable,
            "persistent + gradients (exact)": m.persistent + m.gradients,
        }

    def render(self, depth: int | None = None) -> str:
        return render_training_text(self, depth)

    def __str__(self) -> str:
        return self.render()


TRAINING_UNITS = {
    "backward_macs": "MACs of the backward pass of the layer = input_grad_macs + "
    "weight_grad_macs (what autograd runs: frozen weights and data inputs get "
    "no gradient)",
    "recompute_macs": "forward MACs run again during backward (activation checkpointing)",
    "backward_values_moved": "values read + written by the layer's backward aten operators "
    "(views move nothing)",
    "saved_bytes": "bytes of the storages autograd keeps for the layer's backward, each storage "
    "once, parameters and buffers excluded",
}


def _backward_fields(r: BackwardRow) -> dict[str, int]:
    return {
        "backward_macs": r.backward_macs,
        "input_grad_macs": r.input_grad_macs,
        "weight_grad_macs": r.weight_grad_macs,
        "recompute_macs": r.recompute_macs,
        "backward_values_moved": r.backward_values_moved,
        "saved_bytes": r.saved_bytes,
    }


def _zero(name: str) -> BackwardRow:
    return BackwardRow(name, name, "", 0, 0, 0, 0, 0, 0)


def _add(a: BackwardRow, b: BackwardRow, name: str) -> BackwardRow:
    kinds = {k for k in (a.type, b.type) if k}
    return BackwardRow(
        name=name,
        module=name if a.name != b.name else a.module,
        type=kinds.pop() if len(kinds) == 1 else "ops",
        forward_macs=a.forward_macs + b.forward_macs,
        input_grad_macs=a.input_grad_macs + b.input_grad_macs,
        weight_grad_macs=a.weight_grad_macs + b.weight_grad_macs,
        recompute_macs=a.recompute_macs + b.recompute_macs,
        backward_values_moved=a.backward_values_moved + b.backward_values_moved,
        saved_bytes=a.saved_bytes + b.saved_bytes,
    )


def _dtype_bytes(dtype: str) -> int:
    return DTYPE_BYTES[dtype]


# ---------------------------------------------------------------------------------------------
# MACs of the aten operators that multiply (shapes only, as torch.utils.flop_counter does)


def _conv_forward_macs(
    x: Sequence[int], weight: Sequence[int], out: Sequence[int], transposed: bool
) -> int:
    """N * Cout * out_spatial * Cin/g * K; for a transposed conv N * Cin * in_spatial *
    Cout/g * K (weight ``(Cin, Cout/g, *K)``); both = positions x kernel taps."""
    return prod(x if transposed else out) * prod(weight[1:])


def aten_macs(name: str, args: Sequence[Any], out: Any) -> tuple[int, int]:
    """``(macs producing activation/input gradients or forward outputs, macs producing weight
    gradients)`` of one aten call: only the convolution backward knows the split itself; for
    products the caller decides (see :class:`_BackwardCounter`)."""
    if name in ("mm", "bmm"):
        a, b = args[0].shape, args[1].shape
        return prod(a) * b[-1], 0  # (.., M, K) @ (.., K, N): M*K*N per batch
    if name in ("addmm", "baddbmm"):
        a, b = args[1].shape, args[2].shape
        return prod(a) * b[-1], 0
    if name in ("dot", "vdot"):
        return prod(args[0].shape), 0
    if name in ("mv", "addmv"):
        a = args[0].shape if name == "mv" else args[1].shape
        return prod(a), 0
    if name == "convolution":
        x, w, transposed = args[0].shape, args[1].shape, bool(args[6])
        return _conv_forward_macs(x, w, out.shape, transposed), 0
    if name == "convolution_backward":
        grad_out, x, w = args[0].shape, args[1].shape, args[2].shape
        transposed, mask = bool(args[7]), args[10]
        # dX is the transposed convolution of dY with W, dW the correlation of X with dY:
        # each visits every (output position, kernel tap) pair once, like the forward.
        per = _conv_forward_macs(x, w, grad_out, transposed)
        return per * bool(mask[0]), per * bool(mask[1])
    if name.startswith("_scaled_dot_product") and "attention" in name:
        backward = name.endswith("_backward")  # (grad_out, q, k, v, ...) else (q, k, v, ...)
        q, k, v = (a.shape for a in args[int(backward) : int(backward) + 3])
        lead, length, source = prod(q[:-2]), q[-2], k[-2]
        forward = lead * length * source * (q[-1] + v[-1])  # q k^T, then scores v
        # backward: dS = dO v^T, dV = P^T dO, dQ = dS k, dK = dS^T q: twice the forward
        return (2 * forward if backward else forward), 0
    return 0, 0


# ---------------------------------------------------------------------------------------------
# Step 2: label the autograd graph with IR nodes


class _TrainingTracer(Tracer):
    """The importer's tracer, noting autograd's sequence number as each IR node is added.

    Autograd numbers its backward nodes in the order it creates them, and creates an
    operator's node before the operator runs; so the backward nodes of an IR node are those
    numbered after the previous IR node was added and before this one was (a leaf module's
    inner operators, the ``W.t()`` view a linear layer makes of its weight)."""

    def __init__(self, names: dict[int, str]):
        super().__init__(names)
        self.marks: list[tuple[int, str]] = []  # (sequence number when added, node name)
        self.shortcut_recurrent = False  # a recurrent layer's backward needs its products

    def add(self, built: Any, source: str, base: str) -> None:
        super().add(built, source, base)
        self.marks.append((torch._C._autograd._get_sequence_nr(), self.nodes[-1].name))

    def fused_attention(self, func: Any, args: tuple, kwargs: dict) -> Any:
        # one attention node, as the importer records it, run as the fused kernel
        return super().fused_attention(fused_attention, args, kwargs)


_SDPA = torch.nn.functional.scaled_dot_product_attention


def fused_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` as a fused kernel, also on meta.

    On meta PyTorch runs attention's math path (``bmm``, softmax, ``bmm``), which keeps the
    whole ``L x S`` attention matrix for backward; CPU and GPU run a fused (flash) kernel that
    keeps the output and one log-sum-exp per row. We run the CPU flash kernel's meta version
    so that what autograd saves is what a real step saves (same MACs either way). Arguments
    the fused kernel does not take (``enable_gqa``) fall back to the math path."""
    if kwargs or query.device.type not in ("meta", "cpu"):
        return _SDPA(
            query,
            key,
            value,
            attn_mask=attn_mask,
            dropout_p=dropout_p,
            is_causal=is_causal,
            scale=scale,
            **kwargs,
        )
    try:
        out, _ = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale
        )
    except RuntimeError:  # shapes or a mask the fused kernel does not support
        return _SDPA(
            query,
            key,
            value,
            attn_mask=attn_mask,
            dropout_p=dropout_p,
            is_causal=is_causal,
            scale=scale,
        )
    return out


@contextlib.contextmanager
def _fused_attention_on_meta() -> Iterator[None]:
    """``torch.nn.functional.scaled_dot_product_attention`` is :func:`fused_attention` inside
    (``nn.MultiheadAttention`` looks the name up at each call); restored on exit."""
    functional = torch.nn.functional
    # torch's stub lists enable_gqa as an 8th positional; fused_attention takes it by keyword,
    # as nn.MultiheadAttention passes it
    functional.scaled_dot_product_attention = fused_attention  # type: ignore[assignment]
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = _SDPA


def label_autograd_graph(root: Any, marks: Sequence[tuple[int, str]]) -> dict[Any, str]:
    """Autograd node -> IR node name, for every node reachable from ``root`` (the loss).

    A node belongs to the first IR node added after it was created (see
    :class:`_TrainingTracer`); nodes created after the last IR node (the loss) to
    ``(loss)``. Sequence numbers, not tensors, so an in-place operator (a ReLU on a batch
    norm's output) cannot take the batch norm's backward node. A parameter's
    ``AccumulateGrad`` (it has no sequence number of its own) goes with its first user."""
    numbers = [number for number, _ in marks]
    labels: dict[Any, str] = {}
    nodes = _walk(root)
    for fn in sorted(nodes, key=lambda fn: fn._sequence_nr()):
        if type(fn).__name__ == "AccumulateGrad":
            continue
        at = bisect.bisect_right(numbers, fn._sequence_nr())
        labels[fn] = marks[at][1] if at < len(marks) else LOSS_ROW
        for next_fn, _ in fn.next_functions:
            if next_fn is not None and type(next_fn).__name__ == "AccumulateGrad":
                labels.setdefault(next_fn, labels[fn])
    return labels


def _walk(root: Any) -> list[Any]:
    """Every autograd node reachable from ``root``."""
    seen: dict[Any, None] = {}
    stack = [root]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen[fn] = None
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return list(seen)


def _saved_tensors(fn: Any) -> list[torch.Tensor]:
    """The tensors an autograd node keeps for its backward (its ``_saved_*`` attributes)."""
    tensors = []
    for attr in dir(fn):
        if not attr.startswith("_saved_"):
            continue
        try:
            value = getattr(fn, attr)
        except RuntimeError:  # already freed (not the case before backward)
            continue
        for v in value if isinstance(value, (tuple, list)) else [value]:
            if isinstance(v, torch.Tensor):
                tensors.append(v)
    return tensors


def saved_bytes_by_layer(
    root: Any, labels: dict[Any, str], exclude: Iterable[torch.Tensor]
) -> dict[str, int]:
    """Bytes autograd keeps for each layer: every storage once, charged to the first node (in
    forward order, by ``sequence_nr``) that saves it; storages of ``exclude`` (parameters and
    buffers) left out."""
    seen = {_storage_key(t) for t in exclude}
    out: dict[str, int] = {}
    nodes = sorted(_walk(root), key=lambda fn: fn._sequence_nr())
    for fn in nodes:
        for t in _saved_tensors(fn):
            key = _storage_key(t)
            if key in seen:
                continue
            seen.add(key)
            layer = labels.get(fn, LOSS_ROW)
            out[layer] = out.get(layer, 0) + t.untyped_storage().nbytes()
    return out


def _storage_key(t: torch.Tensor) -> int:
    # A storage's Python object lives as long as the storage (PyTorch preserves it), so its id
    # names the storage on every device, meta included (where data_ptr is always 0).
    return id(t.untyped_storage())


# ---------------------------------------------------------------------------------------------
# Step 3: count the backward operators


class _Recorder:
    """Per-layer sums while backward runs."""

    def __init__(self) -> None:
        self.input_grad: dict[str, int] = {}
        self.weight_grad: dict[str, int] = {}
        self.recompute: dict[str, int] = {}
        self.moved: dict[str, int] = {}

    @staticmethod
    def add(table: dict[str, int], key: str, value: int) -> None:
        if value:
            table[key] = table.get(key, 0) + value


def _multiplying_operators() -> frozenset:
    """Operators PyTorch's own flop counter has a formula for: if one of them runs in
    backward and :func:`aten_macs` gives it nothing, the step says so (never a silent 0)."""
    from torch.utils.flop_counter import flop_registry

    return frozenset(flop_registry)


_MULTIPLYING = _multiplying_operators()


class _BackwardCounter(TorchDispatchMode):
    """Attributes every aten operator run during backward to the layer it differentiates."""

    def __init__(
        self,
        labels: dict[Any, str],
        param_ids: set[int],
        weight_sizes: dict[str, set[int]],
        module_stack: list[str],
        module_rows: Callable[[str], str],
    ):
        super().__init__()
        self.labels = labels
        self.param_ids = set(param_ids)  # parameters and every view of one seen so far
        self.weight_sizes = weight_sizes  # layer -> numels of its trainable weights
        self.module_stack = module_stack  # non-empty while a checkpointed block re-runs
        self.module_rows = module_rows
        self.keep: list[torch.Tensor] = []  # views of parameters: ids must stay unique
        self.sums = _Recorder()
        self.uncounted: set[str] = set()  # operators that multiply but have no formula here

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.record(func, args, kwargs, out)
        return out

    def record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        name = func.overloadpacket.__name__
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if func.is_view:
            if tensors and id(tensors[0]) in self.param_ids:
                self.keep.extend(outs)
                self.param_ids.update(id(t) for t in outs)
            return  # a view moves nothing
        if self.module_stack:  # a checkpointed block running its forward again
            layer = self.module_rows(self.module_stack[-1])
            self.sums.add(self.sums.recompute, layer, sum(aten_macs(name, args, out)))
            self.sums.add(self.sums.moved, layer, sum(t.numel() for t in tensors + outs))
            return
        node = torch._C._current_autograd_node()
        layer = self.labels.get(node, LOSS_ROW) if node is not None else LOSS_ROW
        self.sums.add(self.sums.moved, layer, sum(t.numel() for t in tensors + outs))
        data_grad, weight_grad = aten_macs(name, args, out)
        if not data_grad and not weight_grad and func.overloadpacket in _MULTIPLYING:
            self.uncounted.add(f"aten.{name}")
        if data_grad and name != "convolution_backward":
            if not self.is_weight_gradient(layer, tensors, outs):
                self.sums.add(self.sums.input_grad, layer, data_grad)
                return
            data_grad, weight_grad = 0, data_grad
        self.sums.add(self.sums.input_grad, layer, data_grad)
        self.sums.add(self.sums.weight_grad, layer, weight_grad)

    def is_weight_gradient(
        self, layer: str, tensors: list[torch.Tensor], outs: list[torch.Tensor]
    ) -> bool:
        """A product computes a weight gradient when no operand is a parameter (else it is
        ``dX = dY W``) and its result has the size of one of the layer's trainable weights
        (``dW = dY^T X``); a product of two activations (attention) is an input gradient."""
        if any(id(t) in self.param_ids for t in tensors):
            return False
        sizes = self.weight_sizes.get(layer, set())
        return any(t.numel() in sizes for t in outs)


# ---------------------------------------------------------------------------------------------
# Step 5: the memory of a step


def onednn_workspace(name: str, args: Sequence[Any], out: Any) -> int:
    """Bytes of the transient buffers oneDNN (PyTorch's CPU convolution) allocates inside one
    convolution, a model measured on this project's x86 machine (AVX-512; docs/training.md):
    it computes in a channel-blocked layout, channels padded to a multiple of 16, so a k x k
    convolution (k > 1) holds a blocked copy of its output while it runs forward, and of the
    output gradient (plus the input gradient, when one is computed) in backward. 1 x 1
    convolutions run in the plain layout (no copy)."""
    if name not in ("convolution", "convolution_backward"):
        return 0
    weight = args[1] if name == "convolution" else args[2]
    if all(k == 1 for k in weight.shape[2:]):
        return 0

    def blocked(t: torch.Tensor) -> int:
        channels = -(-int(t.shape[1]) // 16) * 16
        return int(t.shape[0]) * channels * prod(t.shape[2:]) * t.element_size()

    if name == "convolution":
        return blocked(out)
    grad_out, x, mask = args[0], args[1], args[10]
    return blocked(grad_out) + (blocked(x) if mask[0] else 0)


#: Workspace models for :func:`simulate_memory` (``None``: autograd's tensors only).
WORKSPACES: dict[str, Callable[[str, Sequence[Any], Any], int]] = {
    "onednn": onednn_workspace,
}


class _Allocations(TorchDispatchMode):
    """Storages alive while a step runs on meta: allocated when an operator returns a storage
    not seen before, freed when PyTorch frees it. ``workspace(op name, args, out)`` adds the
    bytes a kernel holds only while it runs (counted at its peak, never kept)."""

    def __init__(self, workspace: Callable[[str, Sequence[Any], Any], int] | None = None) -> None:
        super().__init__()
        self.workspace = workspace
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0
        self.phase = "start"
        self.peak_phase = "start"

    def track(self, t: Any) -> None:
        if not isinstance(t, torch.Tensor) or t.is_sparse:
            return
        storage = t.untyped_storage()
        key = id(storage)
        if key in self.live:
            return
        size = storage.nbytes()
        self.live[key] = size
        self.current += size
        weakref.finalize(storage, self._free, key)
        if self.current > self.peak:
            self.peak, self.peak_phase = self.current, self.phase

    def _free(self, key: int) -> None:
        size = self.live.pop(key, None)
        if size is not None:
            self.current -= size

    def reset_peak(self) -> None:
        self.peak, self.peak_phase = self.current, self.phase

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self.track(t)
        if self.workspace is not None:
            extra = self.workspace(func.overloadpacket.__name__, args, out)
            if extra and self.current + extra > self.peak:
                self.peak, self.peak_phase = self.current + extra, self.phase
        return out


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            seen[_storage_key(t)] = t.untyped_storage().nbytes()
    return sum(seen.values())


def default_loss(out: Any) -> torch.Tensor:
    """Cross-entropy against class 0 for ``(N, classes)`` logits, else the mean of the first
    floating-point output (the loss does not change any layer's backward cost)."""
    first = next(
        (t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()),
        None,
    )
    if first is None:
        raise ModelError("the model returns no floating-point tensor to train on; pass loss_fn")
    if first.dim() == 2:
        target = torch.zeros(first.shape[0], dtype=torch.long, device=first.device)
        return nn.functional.cross_entropy(first, target)
    return first.float().mean()


def _optimizer(name: str, params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
    cls_name, kwargs = OPTIMIZERS[name]
    return getattr(torch.optim, cls_name)(params, **kwargs)


def _cast(args: tuple, kw: dict, dtype: torch.dtype) -> tuple[tuple, dict]:
    def cast(v: Any) -> Any:
        return v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v

    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kw.items()}


def simulate_memory(
    model: nn.Module,
    args: tuple,
    kw: dict,
    *,
    optimizer: str = "adam",
    dtype: str = "fp32",
    amp: bool = False,
    checkpoint_depth: int | None = None,
    loss_fn: Callable[[Any], torch.Tensor] = default_loss,
    workspace: str | None = None,
) -> TrainingMemory:
    """Run two training steps of a meta copy of ``model`` under the allocation tracker.

    ``amp``: mixed precision with fp32 master weights (Micikevicius et al. 2018): the model
    and its gradients in ``dtype`` (fp16 or bf16), an fp32 master copy of every trainable
    weight that the optimizer updates (its state in fp32), copied back after each step.
    ``workspace``: a key of :data:`WORKSPACES` to add the transient buffers of a backend's
    kernels (``onednn`` for PyTorch on x86 CPUs), or None for autograd's tensors only.
    """
    if workspace is not None and workspace not in WORKSPACES:
        raise UsageError(
            f"unknown workspace model {workspace!r}; choose one of {', '.join(WORKSPACES)} or none"
        )
    copied, _ = meta_copy(model)
    copied.train()
    compute = _TORCH_DTYPES[dtype]
    copied.to(compute)
    args, kw = _cast(args, kw, compute)
    if checkpoint_depth is not None:
        wrap_checkpoints(copied, checkpoint_depth, [])
    trainable = [p for p in copied.parameters() if p.requires_grad]
    masters = [p.detach().float() for p in trainable] if amp else []
    opt = _optimizer(optimizer, masters if amp else trainable)
    tracker = _Allocations(WORKSPACES[workspace] if workspace else None)
    try:
        return _run_steps(
            copied,
            args,
            kw,
            opt,
            tracker,
            trainable,
            masters,
            loss_fn,
            optimizer=optimizer,
            dtype=dtype,
            amp=amp,
        )
    except RuntimeError as exc:
        raise ModelError(
            _first_line(f"a training step of the model fails on the meta device: {exc}")
        ) from None


def _run_steps(
    copied: nn.Module,
    args: tuple,
    kw: dict,
    opt: torch.optim.Optimizer,
    tracker: _Allocations,
    trainable: Sequence[torch.Tensor],
    masters: Sequence[torch.Tensor],
    loss_fn: Callable[[Any], torch.Tensor],
    *,
    optimizer: str,
    dtype: str,
    amp: bool,
) -> TrainingMemory:
    """Two steps under ``tracker`` (see :func:`simulate_memory`)."""
    for t in [*copied.parameters(), *copied.buffers(), *masters, *tree_flatten((args, kw))[0]]:
        tracker.track(t)
    activations = 0
    first_peak = 0
    with tracker, _fused_attention_on_meta():
        for step in (1, 2):
            tracker.phase = "zero_grad"
            opt.zero_grad(set_to_none=True)
            for p in trainable:
                p.grad = None
            tracker.reset_peak()
            before = tracker.current
            tracker.phase = "forward"
            loss = loss_fn(copied(*args, **kw))
            activations = tracker.current - before
            tracker.phase = "backward"
            loss.backward()
            del loss
            tracker.phase = "optimizer"
            if amp:
                for master, p in zip(masters, trainable):
                    master.grad = p.grad.float() if p.grad is not None else None
            opt.step()
            if amp:
                with torch.no_grad():
                    for master, p in zip(masters, trainable):
                        p.copy_(master)
                        master.grad = None
            if step == 1:
                first_peak = tracker.peak
    state = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    grads = [p.grad for p in trainable if p.grad is not None]
    inputs = _nbytes(tree_flatten((args, kw))[0])
    return TrainingMemory(
        optimizer=optimizer,
        dtype=dtype,
        amp=amp,
        parameters=_nbytes([*copied.parameters(), *copied.buffers()]),
        gradients=_nbytes(grads),
        optimizer_state=_nbytes(state),
        master_weights=_nbytes(masters),
        inputs=inputs,
        activations=activations,
        peak=tracker.peak,
        peak_phase=tracker.peak_phase,
        first_step_peak=first_peak,
    )


# ---------------------------------------------------------------------------------------------
# Step 6: activation checkpointing


def wrap_checkpoints(model: nn.Module, depth: int, stack: list[str]) -> list[str]:
    """Run every module ``depth`` levels below the root through
    ``torch.utils.checkpoint.checkpoint`` (non-reentrant); return their names. While one
    re-runs in backward, its name is on ``stack``."""
    from torch.utils.checkpoint import checkpoint

    if depth < 1:
        raise UsageError(f"--checkpoint-activations must be 1 or more, got {depth}")
    wrapped = []
    for name, module in model.named_modules():
        if not name or name.count(".") != depth - 1:
            continue
        forward = module.forward

        def run(*args: Any, _forward: Callable = forward, _name: str = name, **kwargs: Any) -> Any:
            stack.append(_name)
            try:
                return _forward(*args, **kwargs)
            finally:
                stack.pop()

        def checkpointed(*args: Any, _run: Callable = run, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return _run(*args, **kwargs)
            return checkpoint(_run, *args, use_reentrant=False, preserve_rng_state=False, **kwargs)

        module.forward = checkpointed
        wrapped.append(name)
    if not wrapped:
        raise UsageError(
            f"the model has no module {depth} levels deep to checkpoint; "
            "choose a smaller --checkpoint-activations"
        )
    return wrapped


# ---------------------------------------------------------------------------------------------
# Steps 1-4: trace, label, backward


def _trace_training(
    copied: nn.Module, names: dict[int, str], args: tuple, kw: dict, stack: list[str]
) -> tuple[Graph, _TrainingTracer, Any]:
    """The importer's trace (see dnnlens.importers.torch), in training mode with autograd on.

    ``stack`` receives a module stack of our own (for recomputation during backward)."""
    tracer = _TrainingTracer(names)
    for t in [*copied.parameters(), *copied.buffers()]:
        tracer.params[id(t)] = ParamRef(names[id(t)], shape_of(t))
    graph_inputs = bind_inputs(tracer, args, kw)
    handles = install_hooks(tracer, copied)
    try:
        with torch.enable_grad(), _patched_sdpa(tracer), _FusedFunctions(tracer), tracer:
            out = copied(*args, **kw)
    except RuntimeError as exc:
        if str(exc).startswith("dnnlens bug"):
            raise
        raise ModelError(_rejected(args, kw, tracer, exc)) from None
    except (TypeError, ValueError, IndexError, AssertionError, NotImplementedError) as exc:
        raise ModelError(_rejected(args, kw, tracer, exc)) from None
    finally:
        for handle in handles:
            handle.remove()
    for qualname, module in copied.named_modules():  # our stack, for recomputation
        module.register_forward_pre_hook(functools.partial(_enter, stack, qualname))
        module.register_forward_hook(functools.partial(_leave, stack), always_call=True)
    outputs = [tracer.value_of(t) for t in tree_flatten(out)[0] if tracer.known(t)]
    graph = Graph(
        nodes=tracer.nodes, inputs=graph_inputs, outputs=outputs, name=type(copied).__name__
    )
    return graph, tracer, out


def _enter(stack: list[str], qualname: str, module: nn.Module, args: tuple) -> None:
    stack.append(qualname)


def _leave(stack: list[str], module: nn.Module, args: tuple, out: Any) -> None:
    stack.pop()


def _module_rows(graph: Graph) -> Callable[[str], str]:
    """Module name -> the first IR node of that module (or inside it)."""
    exact: dict[str, str] = {}
    for node in graph:
        exact.setdefault(node.module, node.name)

    @functools.cache
    def row(module: str) -> str:
        if module in exact:
            return exact[module]
        return next((n.name for n in graph if n.module.startswith(module + ".")), LOSS_ROW)

    return row


def analyze_training(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    batch: int | None = None,
    dtype: str = "fp32",
    optimizer: str = "adam",
    amp: bool = False,
    checkpoint_depth: int | None = None,
    example_inputs: Any = None,
    kwargs: dict | None = None,
    loss_fn: Callable[[Any], torch.Tensor] = default_loss,
    workspace: str | None = None,
) -> TrainingStep:
    """Analyse one training step of ``model`` (traced on meta; nothing is allocated or run).

    ``input_shape`` ``(N, C, H, W)`` (``batch`` replaces ``N``) or ``example_inputs``/
    ``kwargs`` as for :func:`dnnlens.analyze`; ``dtype`` the training dtype (fp32, fp16, bf16;
    with ``amp`` the compute dtype of mixed precision, fp16 when fp32 is given);
    ``optimizer`` one of :data:`OPTIMIZERS`; ``checkpoint_depth`` checkpoints every module
    that many levels down; ``loss_fn(output) -> scalar`` (default :func:`default_loss`);
    ``workspace`` adds a backend's kernel buffers to the peak (see :func:`simulate_memory`).
    """
    if not isinstance(model, nn.Module):
        raise UsageError(f"expected a torch.nn.Module, got {type(model).__name__}")
    bytes_per_value(dtype)
    if dtype == "int8":
        raise UsageError("int8 is an inference dtype; train in fp32, fp16 or bf16 (or --amp)")
    if optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise UsageError(f"batch must be a positive integer, got {batch!r}")
    if checkpoint_depth is not None and checkpoint_depth < 1:
        raise UsageError(f"checkpoint depth must be 1 or more, got {checkpoint_depth}")
    compute_dtype = "fp16" if amp and dtype == "fp32" else dtype
    if input_shape is not None and batch is not None:
        input_shape = (batch, *tuple(input_shape)[1:])
    args, kw = _meta_inputs(input_shape, example_inputs, kwargs)

    copied, names = meta_copy(model)
    copied.train()
    if compute_dtype != "fp32":  # saved tensors in the dtype the step runs in
        copied.to(_TORCH_DTYPES[compute_dtype])  # in place: the names by id stay valid
        args, kw = _cast(args, kw, _TORCH_DTYPES[compute_dtype])
    stack: list[str] = []
    if checkpoint_depth is not None:
        wrap_checkpoints(copied, checkpoint_depth, stack)
    graph, tracer, out = _trace_training(copied, names, args, kw, stack)
    loss = loss_fn(out)
    if loss.grad_fn is None:
        raise ModelError(
            "the loss does not depend on any trainable parameter: every "
            "parameter has requires_grad=False"
        )
    labels = label_autograd_graph(loss.grad_fn, tracer.marks)
    state = [*copied.parameters(), *copied.buffers()]
    saved = (
        {} if checkpoint_depth is not None else saved_bytes_by_layer(loss.grad_fn, labels, state)
    )
    trainable = {names[id(p)] for p in copied.parameters() if p.requires_grad}
    weight_sizes = {
        node.name: {p.numel for p in node.params.values() if p.name.split("[")[0] in trainable}
        for node in graph
    }
    param_ids = {key for key, ref in tracer.params.items()}
    counter = _BackwardCounter(labels, param_ids, weight_sizes, stack, _module_rows(graph))
    try:
        with counter, _fused_attention_on_meta():  # checkpointed blocks re-run attention
            loss.backward()
    except RuntimeError as exc:
        raise ModelError(
            _first_line(f"the backward pass of the model fails on the meta device: {exc}")
        ) from None
    rows = layer_rows(graph, compute_dtype)
    analysis = Analysis(
        rows=rows,
        totals=totals(graph, rows, compute_dtype),
        graph=graph,
        batch=int(next(iter(graph.inputs.values()), (1,))[0] or 1),
        dtype=compute_dtype,
        warnings=unknown_warnings(graph),
    )
    memory = simulate_memory(
        model,
        args,
        kw,
        optimizer=optimizer,
        dtype=compute_dtype,
        amp=amp,
        checkpoint_depth=checkpoint_depth,
        loss_fn=loss_fn,
        workspace=workspace,
    )
    backward = _rows(rows, counter.sums, saved)
    warnings = list(analysis.warnings)
    if counter.uncounted:
        warnings.append(
            f"backward operator(s) without a MAC formula here, counted as 0: "
            f"{', '.join(sorted(counter.uncounted))}"
        )
    return TrainingStep(
        analysis=analysis,
        backward=backward,
        memory=memory,
        checkpoint_depth=checkpoint_depth,
        warnings=warnings,
    )


def _rows(rows: Sequence[LayerRow], sums: _Recorder, saved: dict[str, int]) -> list[BackwardRow]:
    def one(name: str, module: str, kind: str, forward: int) -> BackwardRow:
        return BackwardRow(
            name=name,
            module=module,
            type=kind,
            forward_macs=forward,
            input_grad_macs=sums.input_grad.get(name, 0),
            weight_grad_macs=sums.weight_grad.get(name, 0),
            recompute_macs=sums.recompute.get(name, 0),
            backward_values_moved=sums.moved.get(name, 0),
            saved_bytes=saved.get(name, 0),
        )

    out = [one(r.name, r.module, r.type, r.macs) for r in rows]
    out.append(one(LOSS_ROW, "", "loss", 0))
    return out


# ---------------------------------------------------------------------------------------------
# Views


_COLUMNS = (
    "#",
    "name",
    "type",
    "fwd MACs",
    "dX MACs",
    "dW MACs",
    "bwd MACs",
    "recompute",
    "bwd values moved",
    "saved",
)


def _cells(index: int, r: BackwardRow) -> list[str]:
    return [
        str(index),
        r.name,
        r.type,
        f"{r.forward_macs:,}",
        f"{r.input_grad_macs:,}",
        f"{r.weight_grad_macs:,}",
        f"{r.backward_macs:,}",
        f"{r.recompute_macs:,}",
        f"{r.backward_values_moved:,}",
        _bytes_text(r.saved_bytes),
    ]


def _bytes_text(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def memory_lines(step: TrainingStep) -> list[str]:
    m = step.memory
    how = f"{m.optimizer}, {m.dtype}" + (" mixed precision, fp32 master weights" if m.amp else "")
    ckpt = (
        f", activations checkpointed at depth {step.checkpoint_depth}"
        if step.checkpoint_depth is not None
        else ""
    )
    return [
        f"training memory ({how}{ckpt}; a steady-state step, simulated on meta):",
        (
            f"  parameters and buffers {_bytes_text(m.parameters)}, gradients "
            f"{_bytes_text(m.gradients)}, optimizer state {_bytes_text(m.optimizer_state)}"
            + (f", fp32 master weights {_bytes_text(m.master_weights)}" if m.amp else "")
        ),
        (
            f"  kept for backward after forward {_bytes_text(m.activations)} ("
            + (
                f"saved tensors per layer sum to {_bytes_text(step.saved_bytes)}, with the input"
                if step.checkpoint_depth is None
                else "checkpointed: the saved column stays empty, "
                "what is kept is the blocks' inputs"
            )
            + f"), input batch {_bytes_text(m.inputs)}"
        ),
        (
            f"  peak {_bytes_text(m.peak)} (during {m.peak_phase}); first step "
            f"{_bytes_text(m.first_step_peak)}"
        ),
    ]


def render_training_text(step: TrainingStep, depth: int | None = None) -> str:
    """The backward columns per layer, the totals, the memory summary, the rules of thumb."""
    rows = [_cells(i, r) for i, r in enumerate(step.grouped(depth), start=1)]
    total = [
        "",
        "total",
        "",
        f"{step.forward_macs:,}",
        f"{step.input_grad_macs:,}",
        f"{step.weight_grad_macs:,}",
        f"{step.backward_macs:,}",
        f"{step.recompute_macs:,}",
        f"{step.backward_values_moved:,}",
        _bytes_text(step.saved_bytes),
    ]
    widths = [max(len(c[i]) for c in [list(_COLUMNS), *rows, total]) for i in range(len(_COLUMNS))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in (1, 2) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    a = step.analysis
    out = [
        (f"training step of {a.model}: input {tuple(a.input_shape)}, batch {a.batch}, {a.dtype}"),
        (
            "dX: input-gradient MACs, dW: weight-gradient MACs (what autograd runs: none for "
            "frozen weights or data inputs); saved: bytes autograd keeps for the layer."
        ),
        "",
        line(_COLUMNS),
        rule,
        *map(line, rows),
        rule,
        line(total),
    ]
    out += memory_lines(step)
    fwd = step.forward_macs
    ratio = step.backward_macs / fwd if fwd else 0.0
    out.append(
        f"rule of thumb 'backward = 2 x forward': {2 * fwd:,} MACs; exact: "
        f"{step.backward_macs:,} ({ratio:.2f} x forward)"
    )
    out += [f"warning: {w}" for w in step.warnings]
    return "\n".join(out)
