"""A plan's steps strung together into one compiled call per input shape.

Pipeline position: engine (:class:`dnnlens.engine.Plan`) -> **program** (here) -> kernels.

One image at a time, the course network's kernels take a few microseconds; what the general
path adds around them (Python between the steps, a dispatch into Numba per step, an output
array per step, the input checks) took several times that. A :class:`Program` is built once
per plan and input shape from the kernel calls the plan bound for that shape
(:class:`dnnlens.ops.base.Launch`): consecutive steps that have one become one generated Numba
function that calls each kernel in turn, so running them costs one dispatch. Its arguments
are the segment's inputs and one flat array (the *arena*) holding every weight of the
segment, so the dispatcher unboxes two or three arrays, not two per layer; each weight is a
slice of it reshaped at a fixed offset, and the values between the steps are allocated inside
(no Python objects). A step with no such kernel (any operator but the fused conv -> relu ->
max-pool, the fc and a reshape, so far) runs as before (its bound call, or the general path)
between segments.

The generated function is written to a file in the cache folder and compiled with Numba's disk
cache, so a second process with the same network shapes loads it instead of compiling it
(its file name is a hash of its source and of the kernels' code, so a changed kernel is never
linked from a stale cache).

Each call returns new arrays: a caller keeps the logits it gets.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dnnlens.ops import Conv, Linear, Pool, Reshape
from dnnlens.ops.base import Buffers, Launch

#: Batches up to this size get a program: above it the kernels' own time hides the per-call
#: overhead (and the batched kernels, shared out over the cores, take longest to compile).
PROGRAM_MAX_BATCH = 15

#: A program is built on this run of the same input shapes: building one compiles (a second
#: or more, once per machine: it is cached on disk), worth it for a shape run again and again.
PROGRAM_AFTER_RUNS = 3


class NonFiniteInput(ValueError):
    """A graph input holds a NaN or an Inf (raised inside the compiled code; the engine then
    takes its general path, which names the input and counts the values)."""


# --- what one step becomes ----------------------------------------------------------------
@dataclass
class Piece:
    """One step as a program runs it: a kernel ``launch``, a ``view`` (a reshape to a fixed
    shape), or neither (the step's bound ``call`` from the general path, run from Python)."""

    index: int
    inputs: list[str]
    output: str
    launch: Launch | None = None
    view: tuple[int, ...] | None = None
    call: Callable[[list[np.ndarray]], np.ndarray] | None = None

    @property
    def compiled(self) -> bool:
        return self.launch is not None or self.view is not None


def compose(step: Any, index: int, seen: Sequence[tuple[tuple[int, ...], np.dtype]]) -> Piece:
    """The piece for ``step`` (:class:`dnnlens.engine.Step`, the plan's ``index``-th), whose
    inputs had the shapes and dtypes ``seen`` on the run that checked them."""
    from dnnlens.ops.conv import conv_relu_maxpool_launch
    from dnnlens.ops.linear import bind_linear

    piece = Piece(index, list(step.inputs), step.output)
    if len(seen) != 1:
        return piece
    shape, dtype = seen[0]
    x = np.empty(shape, dtype)  # stands in for the input: only its shape and dtype are read
    first, last = step.nodes[0], step.nodes[-1]
    if step.kind == "conv_relu_maxpool" and isinstance(first.op, Conv):
        assert isinstance(last.op, Pool), "a fused conv step ends with its pool"
        x4, weight, bias, attrs = first.op.kernel_args([x], step.params)
        if x4.ndim == 4 and first.op.spatial_dims == 2:
            piece.launch = conv_relu_maxpool_launch(
                x4.shape, x4.dtype, weight, bias, attrs, last.op.kernel, last.op.stride
            )
    elif step.kind in ("single", "fc_relu") and isinstance(first.op, Linear) and len(shape) == 2:
        _, weight, bias, _ = first.op.kernel_args([x], step.params)
        piece.launch = bind_linear(shape[0], x.dtype, weight, bias, step.kind == "fc_relu")
    elif step.kind == "single" and isinstance(first.op, Reshape):
        piece.view = tuple(first.op.reference([x], {}).shape)
    return piece


# --- segments -----------------------------------------------------------------------------
@dataclass
class Segment:
    """Consecutive compiled pieces as one generated function ``fn(*inputs, arena)`` returning
    a tuple of ``outputs``."""

    pieces: list[Piece]
    inputs: list[str]
    outputs: list[str]
    checked: list[str]  # graph inputs whose finiteness the function checks
    dtypes: list[np.dtype]  # each input's
    arena: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    fn: Any = None


def segments_of(
    pieces: list[Piece], needed_after: Callable[[int], set[str]]
) -> list[Segment | Piece]:
    """Runs of compiled pieces as segments, the other pieces as they are."""
    parts: list[Segment | Piece] = []
    run: list[Piece] = []

    def close() -> None:
        if not run:
            return
        made = {p.output for p in run}
        inputs = list(dict.fromkeys(n for p in run for n in p.inputs if n not in made))
        after = needed_after(run[-1].index)
        outputs = [p.output for p in run if p.output in after]
        parts.append(Segment(list(run), inputs, outputs, [], []))
        run.clear()

    for piece in pieces:
        if piece.compiled:
            run.append(piece)
        else:
            close()
            parts.append(piece)
    close()
    return parts


def _arena(segment: Segment, dtype: np.dtype) -> tuple[np.ndarray, dict[int, list[str]]]:
    """Every launch's arrays in one flat array, and for each piece the source expressions of
    its arrays as slices of it (offsets rounded up to 16 values: 64-byte steps)."""
    chunks, slices, offset = [], {}, 0
    for piece in segment.pieces:
        if piece.launch is None:
            continue
        exprs = []
        for array in piece.launch.arrays:
            start = -(-offset // 16) * 16
            chunks.append((start, array))
            exprs.append(f"arena[{start}:{start + array.size}].reshape({tuple(array.shape)!r})")
            offset = start + array.size
        slices[piece.index] = exprs
    arena = np.zeros(max(offset, 1), dtype)
    for start, array in chunks:
        arena[start : start + array.size] = array.ravel()
    return arena, slices


def _literal(value: object) -> str:
    if isinstance(value, (bool, np.bool_)):
        return repr(bool(value))
    if isinstance(value, (int, np.integer)):
        return repr(int(value))
    return repr(float(value))  # type: ignore[arg-type]


def segment_source(segment: Segment, slices: Mapping[int, list[str]], name: str) -> str:
    """The generated function: each piece's kernel called on the value before it."""
    var = {value: f"in{i}" for i, value in enumerate(segment.inputs)}
    lines = [f"def {name}({', '.join(var[v] for v in segment.inputs)}, arena):"]
    for value in segment.checked:  # a NaN or Inf anywhere makes the sum NaN or Inf
        lines.append(f"    if not np.isfinite({var[value]}.sum()):")
        lines.append("        raise NonFiniteInput('a graph input holds a NaN or an Inf')")
    kernels: dict[int, str] = {}
    for piece in segment.pieces:
        x = var[piece.inputs[0]]
        out = var[piece.output] = f"v{piece.index}"
        if piece.view is not None:
            lines.append(f"    {out} = {x}.reshape({piece.view!r})")
            continue
        launch = piece.launch
        assert launch is not None, "a segment holds compiled pieces only"
        kernel = kernels.setdefault(id(launch.kernel), f"k{piece.index}")
        args = [x, *slices[piece.index], out, *(_literal(s) for s in launch.scalars)]
        lines.append(f"    {out} = np.empty({launch.out_shape!r}, np.{launch.dtype.name})")
        lines.append(f"    {kernel}({', '.join(args)})")
    results = "".join(f"{var[v]}, " for v in segment.outputs)
    lines.append(f"    return ({results})")
    return "\n".join(lines) + "\n"


# --- compiling, with a disk cache ---------------------------------------------------------
_LOADED: dict[str, Any] = {}


def cache_folder() -> Path:
    """Where generated programs (and Numba's cache of them) live."""
    from dnnlens.data import default_cache_dir

    return default_cache_dir() / "programs"


def _kernel_identity(kernel: Any) -> str:
    """What a kernel's machine code depends on: its closure constants and the whole module it
    comes from (the constants and helpers it reads there are compiled in too), plus the
    package's own version and Numba's."""
    import numba

    import dnnlens

    fn = kernel.py_func
    cells = tuple(c.cell_contents for c in (fn.__closure__ or ()))
    try:
        source = inspect.getsource(sys.modules[fn.__module__])
    except (OSError, KeyError, TypeError):  # pragma: no cover - kernels live in files
        source = fn.__code__.co_code.hex()
    versions = f"{getattr(dnnlens, '__version__', '')} numba {numba.__version__}"
    return f"{fn.__module__}.{fn.__qualname__}{cells!r} {versions}\n{source}"


def compile_segment(segment: Segment, dtype: np.dtype) -> None:
    """Generate, write and compile the segment's function (or load it, if compiled before)."""
    segment.arena, slices = _arena(segment, dtype)
    body = segment_source(segment, slices, "segment")
    kernels: dict[int, tuple[int, Any]] = {}
    for piece in segment.pieces:
        if piece.launch is not None:
            kernels.setdefault(id(piece.launch.kernel), (piece.index, piece.launch.kernel))
    identity = body + "".join(_kernel_identity(k) for _, k in kernels.values())
    digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
    module_name = f"dnnlens_program_{digest}"
    module = _LOADED.get(module_name)
    if module is None:
        header = [
            f'"""Generated by dnnlens.program (do not edit): {digest}."""',
            "import numba",
            "import numpy as np",
            "from dnnlens.program import NonFiniteInput, _kernel_slot",
            "",
            *(f"k{index} = _kernel_slot({digest!r}, {index})" for index, _ in kernels.values()),
            "",
            "",
        ]
        decorator = (
            "@numba.njit(cache=True, fastmath={'reassoc', 'contract'}, error_model='numpy', "
            "boundscheck=False)"
        )
        source = "\n".join(header) + decorator + "\n" + body
        _SLOTS[digest] = {index: kernel for index, kernel in kernels.values()}
        module = _load(module_name, source)
        _LOADED[module_name] = module
    segment.fn = module.segment


_SLOTS: dict[str, dict[int, Any]] = {}


def _kernel_slot(digest: str, index: int) -> Any:
    """The kernel a generated module names ``k<index>`` (set just before it is imported)."""
    return _SLOTS[digest][index]


def _load(module_name: str, source: str) -> Any:
    """Write ``source`` (atomically, if it is not there yet) and import it."""
    from dnnlens.fileio import atomic_write_text

    folder = cache_folder()
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


# --- the program --------------------------------------------------------------------------
class Program:
    """A plan's steps for one set of input shapes: segments of compiled pieces and the steps
    between them. :meth:`run` takes the graph inputs by name and returns the graph outputs."""

    def __init__(self, parts: list[Segment | Piece], outputs: list[str]) -> None:
        self.parts = parts
        self.outputs = outputs
        # the values each part reads for the last time (not outputs): dropped after it, so
        # a run holds no more than the general path does and their buffers can be reused
        last_reader = {name: i for i, part in enumerate(parts) for name in part.inputs}
        self.free_after: list[list[str]] = [[] for _ in parts]
        for name, index in last_reader.items():
            if name not in outputs:
                self.free_after[index].append(name)
        first = parts[0] if parts else None
        #: The single compiled call that is the whole program, if it is one (the fast path).
        self.whole: Segment | None = (
            first if isinstance(first, Segment) and len(parts) == 1 else None
        )
        # run_whole's checks decided once (one image at a time, each costs a tenth of a us
        # against a network of 15 us): the dtype the whole call takes (None: no such call)
        whole = self.whole
        self._whole_dtype = (
            whole.dtypes[0]
            if whole is not None and whole.outputs == outputs and len(whole.inputs) == 1
            else None
        )

    @property
    def calls(self) -> int:
        """Python-to-compiled-code calls per run."""
        return len(self.parts)

    def run_whole(self, x: np.ndarray) -> dict[str, np.ndarray] | None:
        """The graph outputs from its one input ``x``, when the program is one compiled call
        taking ``x``'s dtype; None to take the general path (also when ``x`` holds a NaN or an
        Inf: the general path's check names the input and counts them)."""
        dtype, whole = self._whole_dtype, self.whole
        if dtype is None or (x.dtype is not dtype and x.dtype != dtype):
            return None
        assert whole is not None
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        try:
            results = whole.fn(x, whole.arena)
        except NonFiniteInput:
            return None
        if len(results) == 1:
            return {self.outputs[0]: results[0]}
        return dict(zip(self.outputs, results))

    def run(
        self, values: dict[str, np.ndarray], buffers: Buffers | None = None
    ) -> dict[str, np.ndarray]:
        """The graph outputs from the graph inputs (``values`` is filled as it goes, and
        values read for the last time leave it, into ``buffers`` if given)."""
        whole = self.whole
        if whole is not None and whole.outputs == self.outputs and len(whole.inputs) == 1:
            x = values[whole.inputs[0]]
            if not x.flags.c_contiguous or x.dtype != whole.dtypes[0]:
                x = np.ascontiguousarray(x, whole.dtypes[0])
            return dict(zip(self.outputs, whole.fn(x, whole.arena)))
        for part, done in zip(self.parts, self.free_after):
            if isinstance(part, Segment):
                args = [
                    np.ascontiguousarray(values[name], dtype)
                    for name, dtype in zip(part.inputs, part.dtypes)
                ]
                values.update(zip(part.outputs, part.fn(*args, part.arena)))
            else:
                assert part.call is not None, "a piece outside a segment has a bound call"
                values[part.output] = part.call([values[name] for name in part.inputs])
            for name in done:
                value = values.pop(name)
                if buffers is not None:
                    buffers.give(value)
                del value
        return {name: values[name] for name in self.outputs}


def build(
    steps: Sequence[Any],
    seen: Mapping[int, Sequence[tuple[tuple[int, ...], np.dtype]]],
    calls: Sequence[Callable[[list[np.ndarray]], np.ndarray] | None],
    graph_inputs: Sequence[str],
    graph_outputs: Sequence[str],
) -> Program | None:
    """The program for a plan's ``steps``, given the input shapes and dtypes each step ``seen``
    on the run that bound ``calls`` (each step's call on the general path, taken where a step
    has no kernel launch). None if a step has neither, or nothing would be compiled."""
    pieces = []
    for index, step in enumerate(steps):
        if index not in seen:
            return None
        piece = compose(step, index, seen[index])
        if not piece.compiled:
            piece.call = calls[index]
            if piece.call is None:
                return None
        pieces.append(piece)
    if not any(p.compiled for p in pieces):
        return None
    readers: dict[str, int] = {}
    for piece in pieces:
        for name in piece.inputs:
            readers[name] = piece.index

    def needed_after(index: int) -> set[str]:
        later = {name for name, last in readers.items() if last > index}
        return later | set(graph_outputs)

    parts = segments_of(pieces, needed_after)
    dtype_of = {p.output: p.launch.dtype for p in pieces if p.launch is not None}
    for index, shapes in seen.items():
        for name, (_, dtype) in zip(steps[index].inputs, shapes):
            dtype_of.setdefault(name, np.dtype(dtype))
    for part in parts:
        if isinstance(part, Segment):
            part.dtypes = [dtype_of[name] for name in part.inputs]
            part.checked = [
                name
                for name, dtype in zip(part.inputs, part.dtypes)
                if name in graph_inputs and dtype.kind in "fc"
            ]
            dtypes = {p.launch.dtype for p in part.pieces if p.launch is not None}
            if len(dtypes) > 1:
                return None  # one arena per program: mixed precisions keep the general path
            compile_segment(part, dtypes.pop() if dtypes else np.dtype(np.float32))
    return Program(parts, list(graph_outputs))
