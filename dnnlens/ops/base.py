"""What every operator provides, and the registry that refuses duplicates.

An operator is a frozen dataclass whose fields are its attributes (stride, padding, ...).
Its methods are the operator's shape rule, its cost formulas and, where dnnlens has them, its
loop-nest kernels. The formulas take *shapes*, never tensors, so they are tested with tuples.

Counting conventions (stated once, here, and in docs/units.md):

* shapes include the batch dimension, ``(N, C, H, W)``;
* ``macs``: multiply-accumulates for the whole batch, multiplications by padding zeros
  included (FLOPs, where shown, are 2 x MACs);
* weights exclude biases: a parameter whose role is ``bias`` is a bias, any other is a weight;
* ``values_moved``: activation values read + values written + weight values read, each once
  from main memory; weights once per batch, activations once per image (biases excluded, as
  in the course notebook); views (reshape, flatten, dropout in eval) move nothing;
* element-wise, normalisation and pooling operators do no MACs; they still move memory.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dnnlens.errors import ShapeError
from dnnlens.shapes import Shape

#: Every operator class by its ``KIND``; filled by :func:`register`.
REGISTRY: dict[str, type[Op]] = {}


def register(cls: type[Op]) -> type[Op]:
    """Class decorator adding an operator to :data:`REGISTRY`; a second ``KIND`` is a bug."""
    kind = cls.KIND
    if not kind:
        raise TypeError(f"{cls.__name__} has no KIND")
    if kind in REGISTRY and REGISTRY[kind] is not cls:
        raise TypeError(
            f"operator kind {kind!r} registered twice ({REGISTRY[kind].__name__}, {cls.__name__})"
        )
    REGISTRY[kind] = cls
    return cls


#: The source formats an operator can be named in, and what a name is in each: an aten
#: operator (overload packet, ``"addmm"``), a ``torch.nn`` module class (``"Conv2d"``), an
#: ONNX op type (``"Gemm"``), a spec file's layer key (``"fc"``).
FORMATS = ("aten", "modules", "onnx", "spec")


@dataclass(frozen=True)
class Names:
    """What an operator stands for in each source format: name -> the variant it means (an
    activation's function, a pool's mode, ``None`` when the operator has one form). The
    importers build their dispatch tables from these (:func:`names_in`), so the operator's
    module is the one place that says which names it covers; an importer only says how it
    reads the arguments of each operator class."""

    aten: Mapping[str, Any] = field(default_factory=dict)
    modules: Mapping[str, Any] = field(default_factory=dict)
    onnx: Mapping[str, Any] = field(default_factory=dict)
    spec: Mapping[str, Any] = field(default_factory=dict)


def names_in(source: str) -> dict[str, tuple[type[Op], Any]]:
    """Every name of ``source`` (one of :data:`FORMATS`) the registered operators claim:
    name -> (operator class, variant). A name claimed twice is a bug (TypeError)."""
    if source not in FORMATS:
        raise ValueError(f"unknown source format {source!r}: use one of {', '.join(FORMATS)}")
    table: dict[str, tuple[type[Op], Any]] = {}
    for cls in REGISTRY.values():
        for name, variant in getattr(cls.NAMES, source).items():
            if name in table and table[name][0] is not cls:
                raise TypeError(
                    f"{source} name {name!r} claimed by {table[name][0].__name__} and "
                    f"{cls.__name__}"
                )
            table[name] = (cls, variant)
    return table


def variants(source: str, cls: type[Op]) -> dict[str, Any]:
    """The names of ``source`` that ``cls`` claims, with their variants."""
    return dict(getattr(cls.NAMES, source))


@dataclass(frozen=True)
class Op:
    """Base operator. Subclasses are frozen dataclasses and set ``KIND``."""

    KIND: ClassVar[str] = ""
    #: The names this operator stands for in each source format (see :class:`Names`).
    NAMES: ClassVar[Names] = Names()
    #: True for operators that only re-label memory (reshape, flatten, eval dropout).
    IS_VIEW: ClassVar[bool] = False

    @property
    def kind(self) -> str:
        """The type shown in tables (``conv``, ``relu``, ``flatten``, ...)."""
        return self.KIND

    # --- shape rule -------------------------------------------------------------------
    def output_shape(self, input_shapes: Sequence[Shape], params: Mapping[str, Shape]) -> Shape:
        """Output shape from input shapes and parameter shapes (by role).

        ShapeError if they do not fit."""
        raise NotImplementedError

    # --- costs ------------------------------------------------------------------------
    def macs(
        self, input_shapes: Sequence[Shape], output_shape: Shape, params: Mapping[str, Shape]
    ) -> int:
        """Multiply-accumulates for the whole batch (an exact Python int)."""
        return 0

    def descriptor(self, input_shapes: Sequence[Shape], params: Mapping[str, Shape]) -> tuple:
        """The course notebook's layer tuple.

        conv (Kw,Kh,Cin,Cout), pool (xw,yw,xs,ys), fc (out,in)."""
        return ()

    def values_moved(
        self, input_shapes: Sequence[Shape], output_shape: Shape, params: Mapping[str, Shape]
    ) -> int:
        """Activation values read + written, plus weight values read (biases excluded)."""
        if self.IS_VIEW:
            return 0
        activations = sum(prod(s) for s in input_shapes) + prod(output_shape)
        return activations + weight_count(params)

    # --- kernels ----------------------------------------------------------------------
    def reference(
        self, inputs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        """The readable loop-nest kernel (plain Python/NumPy)."""
        raise NotImplementedError(f"no kernel for operator {self.kind!r}")

    def compiled(
        self, inputs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        """The same loop nest compiled with Numba; defaults to the reference kernel."""
        return self.reference(inputs, weights)

    @classmethod
    def has_kernel(cls) -> bool:
        """Whether the class has kernels at all; :meth:`kernel_gap` answers per node."""
        return cls.reference is not Op.reference

    def kernel_gap(self, input_shapes: Sequence[Shape], params: Mapping[str, Shape]) -> str | None:
        """Why the kernels cannot run this node (one line, naming what is missing), or None
        when they can. The engine asks every node before it runs anything, so a network the
        kernels do not cover is refused up front rather than half-way through."""
        if not type(self).has_kernel():
            return f"dnnlens has no loop nest for {self.kind!r} yet"
        return None

    def buffers(self) -> dict[str, str]:
        """State the kernels read besides ``node.params``, as role -> state-dict name (batch
        norm's running statistics). The engine passes them in the weights mapping by role."""
        return {}

    # --- the truth ------------------------------------------------------------------------
    def torch_oracle(self, inputs: Sequence[Any], weights: Mapping[str, Any]) -> Any:
        """The same operator computed by PyTorch (``torch.nn.functional`` or ``torch``), for
        tests and the engine's per-layer check: NumPy arrays or tensors in (inputs, then
        weights by role), a tensor out. Torch is imported inside, never by a kernel."""
        raise NotImplementedError(f"no PyTorch oracle for operator {self.kind!r}")


def check_fits(op: Op, x: np.ndarray, weights: Mapping[str, np.ndarray]) -> None:
    """ShapeError (naming both shapes) if the kernel input ``x`` does not fit ``weights``.

    Remembered per shapes (a bounded cache; failures are not cached), because the check costs
    more than a small image's kernel on the one-image-at-a-time path."""
    _output_shape_once(
        op, tuple(x.shape), tuple((role, tuple(np.shape(a))) for role, a in weights.items())
    )


@functools.lru_cache(maxsize=256)
def _output_shape_once(op: Op, input_shape: Shape, weight_shapes: tuple) -> Shape:
    return op.output_shape([input_shape], dict(weight_shapes))


def is_bias(role: str) -> bool:
    """``bias``, or a named bias of an operator with several (an LSTM's ``bias_ih_l0``)."""
    return role == "bias" or role.startswith("bias_")


def is_weight(role: str) -> bool:
    """A parameter counts as a weight unless it is a bias or a ``constant`` (a fixed operand
    an importer kept, such as the 0.5 of ``x * 0.5``: not learned, not counted)."""
    return not is_bias(role) and not role.startswith("constant")


def weight_count(params: Mapping[str, Shape]) -> int:
    """Values in every parameter that :func:`is_weight`."""
    return sum(prod(shape) for role, shape in params.items() if is_weight(role))


def bias_count(params: Mapping[str, Shape]) -> int:
    return sum(prod(shape) for role, shape in params.items() if is_bias(role))


def infer_shape(
    layer: str, op: Op, input_shapes: Sequence[Shape], params: Mapping[str, Shape]
) -> Shape:
    """``op.output_shape`` with the layer's name and operator put in front of any ShapeError."""
    try:
        return tuple(int(d) for d in op.output_shape(input_shapes, params))
    except ShapeError as exc:
        raise ShapeError(f"layer {layer!r} ({op.kind}): {exc}") from None


def expect_rank(shape: Shape, rank: int | tuple[int, ...], what: str) -> None:
    ranks = (rank,) if isinstance(rank, int) else rank
    if len(shape) not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ShapeError(f"{what} must have {want} dimensions, got shape {tuple(shape)}")


@register
@dataclass(frozen=True)
class Unknown(Op):
    """An operator dnnlens has no rule for. It keeps the shapes the importer observed and is
    listed in a warning; its MACs are unknown (reported as 0 *and* flagged, never silently)."""

    KIND: ClassVar[str] = "unknown"
    target: str = ""  # what it was: "aten.foo", "onnx:Bar", "nn.MyLayer"
    observed_shape: Shape = ()

    def output_shape(self, input_shapes, params):
        return self.observed_shape

    def kernel_gap(self, input_shapes, params):
        # The engine's message already names the layer and ``target``: say only why.
        return "dnnlens has no rule for it, so its costs are unknown too"


def as_pair(values: Sequence[int], fill: int = 1) -> tuple[int, int]:
    """A 1-d or 2-d attribute as the 2-d kernels take it, (height, width): a 1-d one gets a
    unit height (``fill``)."""
    if len(values) == 1:
        return (fill, int(values[0]))
    height, width = values
    return (int(height), int(width))


def as_triple(values: Sequence[int], fill: int = 1) -> tuple[int, int, int]:
    """A 1-d, 2-d or 3-d attribute as the 3-d kernels take it, (depth, height, width): the
    missing leading dimensions get ``fill``."""
    depth, height, width = (fill,) * (3 - len(values)) + tuple(values)
    return (int(depth), int(height), int(width))


# --- compiled kernels (added for the loop-nest engine, issue 3) ---------------------------
_COMPILED: dict[object, object] = {}


def compiled_kernel(fn, parallel: bool = False, reassociate: bool = True):
    """``fn`` compiled with Numba on first use (Numba imported only then, machine code cached on
    disk). The loop-nest modules write parallel loops with a module-level ``prange = range``
    so they also run uncompiled; it becomes ``numba.prange`` here, before compilation.

    ``parallel=False`` compiles a copy named ``<name>_serial`` (Numba's disk cache tells
    functions apart by name, not by compile options): for work too small to share out, where
    waking a second thread costs more than it saves.

    ``reassociate=False`` keeps each sum in its written order, for a kernel whose sums must
    stay in registers: with reordering allowed, LLVM vectorises the loop over the terms
    instead, with gathers (a function is only ever compiled one way, so no name for it)."""
    key = (fn, parallel, reassociate)
    kernel = _COMPILED.get(key)
    if kernel is None:
        import types

        import numba

        fn.__globals__["prange"] = numba.prange
        source = fn
        if not parallel:
            source = types.FunctionType(
                fn.__code__,
                fn.__globals__,
                f"{fn.__name__}_serial",
                fn.__defaults__,
                fn.__closure__,
            )
            source.__qualname__ = f"{fn.__qualname__}_serial"
            source.__module__ = fn.__module__
        # reassoc lets LLVM vectorise sums; contract lets it fuse multiply-adds (FMA).
        kernel = numba.njit(
            cache=True,
            parallel=parallel,
            fastmath={"reassoc", "contract"} if reassociate else {"contract"},
            error_model="numpy",
            boundscheck=False,
        )(source)
        _COMPILED[key] = kernel
    return kernel


def generated_folder() -> Path:
    """Where generated source (programs, unrolled kernels) and Numba's cache of it live."""
    from dnnlens.data import default_cache_dir

    return default_cache_dir() / "programs"


def load_generated(module_name: str, source: str) -> Any:
    """Write generated ``source`` (atomically, if it is not there yet) and import it. Numba
    caches machine code only for functions that come from a file, so generated code gets
    one too."""
    from dnnlens.fileio import atomic_write_text

    folder = generated_folder()
    path = folder / f"{module_name}.py"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != source:
            atomic_write_text(path, source)
    except OSError:  # a read-only cache folder: compile from a temporary file each time
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="dnnlens-program-")) / f"{module_name}.py"
        path.write_text(source)
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def generated_source(generator: str, constants: Mapping[str, int], lines: Sequence[str]) -> str:
    """The text of a generated kernel module: a docstring naming ``generator`` (the function
    that wrote it), NumPy, ``prange`` (see :func:`compiled_kernel`), the module-level
    ``constants`` the kernel's loops use, and the kernel's ``lines``."""
    header = [
        f'"""Generated by {generator} (do not edit)."""',
        "import numpy as np",
        "",
        "prange = range",
        *(f"{name} = {value}" for name, value in constants.items()),
        "",
        "",
    ]
    return "\n".join(header + list(lines)) + "\n"


_GENERATED: dict[tuple[str, bool], object] = {}


def generated_kernel(name: str, source: Callable[[], str], function: str, parallel: bool):
    """``function`` of the generated module ``name`` (its text from ``source``), compiled
    without reassociation (see :func:`compiled_kernel`): once per process;
    the source and Numba's machine code are cached on disk."""
    key = (name, parallel)
    if key not in _GENERATED:
        module = load_generated(name, source())
        kernel = getattr(module, function)
        _GENERATED[key] = compiled_kernel(kernel, parallel=parallel, reassociate=False)
    return _GENERATED[key]


def pack_output_blocks(weight: np.ndarray, block: int) -> np.ndarray:
    """``weight (out, in)`` as ``(blocks, in, block)``: block ``b`` holds outputs
    ``b*block ...`` for each input, zero past ``out``."""
    out_features, in_features = weight.shape
    n_blocks = -(-out_features // block)
    packed = np.zeros((n_blocks, in_features, block), weight.dtype)
    for b in range(n_blocks):
        rows = weight[b * block : (b + 1) * block]
        packed[b, :, : rows.shape[0]] = rows.T
    return packed


@contextmanager
def slp_vectorizer() -> Iterator[None]:
    """LLVM's SLP vectorizer on for the kernels compiled in this block. Numba turns it off
    by default (numba PR 8852, for miscompilations it caused elsewhere); a kernel that
    needs it (its sums in scalar variables that only SLP packs into vector registers) is
    compiled in here, at bind time, and tested against PyTorch like every kernel."""
    from numba.core import config

    setting = "SLP_VECTORIZE"  # set from the environment at import: no static attribute
    before = getattr(config, setting)
    setattr(config, setting, 1)
    try:
        yield
    finally:
        setattr(config, setting, before)


@dataclass(frozen=True)
class Launch:
    """One compiled kernel call with everything but its input decided at bind time:
    ``kernel(x, *arrays, out, *scalars)`` writes ``out`` (``out_shape``, ``dtype``) from ``x``
    (C-contiguous, ``dtype``). The engine calls it image after image; :mod:`dnnlens.program`
    strings several together into one compiled call."""

    kernel: Any  # a Numba dispatcher (see compiled_kernel)
    arrays: tuple[np.ndarray, ...]  # weights packed once, C-contiguous, ``dtype``
    scalars: tuple[int | float | bool, ...]
    out_shape: tuple[int, ...]
    dtype: np.dtype
    #: what a program needs to fuse this call with its neighbours (a fused conv for batches:
    #: :class:`dnnlens.ops.conv.LanesStep`), or None
    detail: Any = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = output_array(self.out_shape, self.dtype)
        self.kernel(np.ascontiguousarray(x, self.dtype), *self.arrays, out, *self.scalars)
        return out


# --- output buffers reused between a plan's steps and runs --------------------------------
class Buffers:
    """Arrays a plan's run has freed, handed out again as kernel outputs of the same shape.

    A large array fresh from ``np.empty`` is new memory (glibc maps blocks over 32 MB anew
    on every call), and writing it first pays a page fault every 4 KiB: about a tenth of a
    batch-32 ResNet's time. An array is taken back only when nothing else refers to it (no
    view, not returned, not kept), so reuse never changes a value anyone can still see."""

    #: Arrays smaller than this are left to malloc (quick, and its memory is warm).
    SMALLEST = 1 << 16
    #: Arrays kept per shape and dtype.
    PER_SHAPE = 4

    def __init__(self) -> None:
        self._free: dict[tuple[tuple[int, ...], np.dtype], list[np.ndarray]] = {}

    def take(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        kept = self._free.get((tuple(shape), np.dtype(dtype)))
        if kept:
            try:
                return kept.pop()
            except IndexError:  # another thread took the last one
                pass
        return np.empty(shape, dtype)

    def give(self, array: Any) -> None:
        """Keep ``array`` if it is an unshared buffer of its own. (The caller holds one
        reference, this frame one and getrefcount's argument one: any more is a view, a
        result or a kept value somewhere else.)"""
        if (
            isinstance(array, np.ndarray)
            and array.nbytes >= self.SMALLEST
            and array.base is None
            and array.flags.owndata
            and array.flags.c_contiguous
            and array.flags.writeable
            and sys.getrefcount(array) <= 3
        ):
            kept = self._free.setdefault((array.shape, array.dtype), [])
            if len(kept) < self.PER_SHAPE:
                kept.append(array)

    def clear(self) -> None:
        self._free.clear()


_CURRENT = threading.local()


@contextmanager
def reusing(buffers: Buffers | None) -> Iterator[None]:
    """Kernel outputs made in this block (on this thread) come from ``buffers``."""
    previous = getattr(_CURRENT, "buffers", None)
    _CURRENT.buffers = buffers
    try:
        yield
    finally:
        _CURRENT.buffers = previous


def output_array(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised array for a kernel to write all of: from the running plan's
    :class:`Buffers` (see :func:`reusing`), else new."""
    buffers = getattr(_CURRENT, "buffers", None)
    return buffers.take(shape, dtype) if buffers is not None else np.empty(shape, dtype)


#: Work (multiply-accumulates or values) below which a kernel runs on one core.
PARALLEL_MIN_WORK = 1_000_000


def torch_tensors(*values: Any) -> list[Any]:
    """Arrays (or tensors, or None) as torch tensors for an oracle; torch imported here.
    Arrays are copied (torch takes no negative strides, and a broadcast view is read-only)."""
    import torch

    return [
        None
        if v is None
        else v
        if isinstance(v, torch.Tensor)
        else torch.from_numpy(np.array(v, copy=True))
        for v in values
    ]


def contiguous(x: np.ndarray, dtype: Any = None) -> np.ndarray:
    """``x`` as a C-contiguous array (of ``dtype``) the compiled loops can index flat."""
    return np.ascontiguousarray(x, dtype=dtype if dtype is not None else x.dtype)
