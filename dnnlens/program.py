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
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dnnlens.ops import Conv, Linear, Pool, Reshape
from dnnlens.ops.base import Buffers, Launch, load_generated

#: Batches up to this size get a program: above it the kernels' own time hides the per-call
#: overhead (and the batched kernels, shared out over the cores, take longest to compile).
#: Larger batches get one only where fused convs can be strung together (:func:`lanes_chains`).
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
    #: fused convs for batches strung together, the images kept in the lanes between them
    #: (see :func:`lanes_chains`); their launches, first to last
    chain: list[Launch] | None = None

    @property
    def compiled(self) -> bool:
        return self.launch is not None or self.view is not None or self.chain is not None

    @property
    def launches(self) -> list[Launch]:
        if self.chain is not None:
            return self.chain
        return [self.launch] if self.launch is not None else []

    @property
    def kernels(self) -> list[Any]:
        """The compiled functions its generated code calls."""
        if self.chain is None:
            return [launch.kernel for launch in self.launches]
        from dnnlens.ops.conv import lanes_in, lanes_next, lanes_out, lanes_piece

        pieces = [lanes_piece(lanes_in), lanes_piece(lanes_next), lanes_piece(lanes_out)]
        return pieces + [launch.detail.conv_pool for launch in self.chain]


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


# --- fused convs strung together, the images kept in the lanes ------------------------------
def lanes_chains(
    pieces: list[Piece], readers: Mapping[str, list[int]], graph_outputs: Sequence[str]
) -> list[Piece]:
    """``pieces`` with each run of two or more fused convs for batches (each reading the one
    before it, whose output nothing else reads) as one piece: per block of ``LANES`` images,
    each conv's pooled output goes straight into the next one's padded lanes
    (:func:`dnnlens.ops.conv.lanes_next`) instead of out to ``(N, C, H, W)`` and back in: a
    transpose each way saved, and each block's values stay in the core's caches from the
    first conv to the last."""
    out: list[Piece] = []
    for piece in pieces:
        before = out[-1] if out else None
        joins = (
            before is not None
            and _lanes(piece)
            and (before.chain is not None or _lanes(before))
            and piece.inputs == [before.output]
            and readers.get(before.output) == [piece.index]
            and before.output not in graph_outputs
        )
        if before is not None and joins and piece.launch is not None:
            chain = [*before.launches, piece.launch]
            out[-1] = Piece(piece.index, list(before.inputs), piece.output, chain=chain)
        else:
            out.append(piece)
    return out


def _lanes(piece: Piece) -> bool:
    from dnnlens.ops.conv import LanesStep

    return piece.launch is not None and isinstance(piece.launch.detail, LanesStep)


def _chain_source(piece: Piece, names: Mapping[int, str]) -> str:
    """A chain as a function ``chain<index>(x, w0, b0, w1, b1, ..., out)`` of its own: blocks
    of ``LANES`` images shared out over the cores, each taken into the lanes once, through
    every conv, and out once."""
    from dnnlens.ops.conv import LANES, lanes_in, lanes_next, lanes_out, lanes_piece

    chain = piece.chain
    assert chain is not None
    steps = [launch.detail for launch in chain]
    dtype = f"np.{chain[0].dtype.name}"
    n = chain[0].out_shape[0]
    load, move, store = (names[id(lanes_piece(f))] for f in (lanes_in, lanes_next, lanes_out))
    weights = ", ".join(f"w{i}, b{i}" for i in range(len(chain)))
    first = steps[0]
    lines = [
        f"@{JIT}, parallel=True)",
        f"def chain{piece.index}(x, {weights}, out):",
        "    x_flat, out_flat = x.reshape(-1), out.reshape(-1)",
        f"    for block in numba.prange({-(-n // LANES)}):",
        f"        first = block * {LANES}",
        f"        lanes = min({LANES}, {n} - first)",
        f"        x0 = np.zeros(({first.cin}, {first.rows_in * first.wp * LANES}), {dtype})",
        f"        {load}(x_flat, first, lanes, {first.cin}, {first.height}, {first.width}, x0, "
        f"{first.top}, {first.left}, {first.wp})",
    ]
    for i, step in enumerate(steps):
        lines += [
            f"        p{i} = np.empty(({step.cout}, {step.po}, {step.run_pooled}), {dtype})",
            f"        {names[id(step.conv_pool)]}(x{i}, w{i}, b{i}, p{i}, {step.wp}, {step.sh}, "
            f"{step.dh}, {step.pkh}, {step.psh}, {step.wo}, {step.top}, {step.height})",
        ]
        if i + 1 < len(steps):
            after = steps[i + 1]
            lines += [
                f"        x{i + 1} = np.zeros(({after.cin}, {after.rows_in * after.wp * LANES}), "
                f"{dtype})",
                f"        {move}(p{i}, x{i + 1}, {after.top}, {after.left}, {after.wp}, "
                f"{step.psw}, {step.qo})",
            ]
    last = steps[-1]
    lines.append(
        f"        {store}(p{len(steps) - 1}, out_flat, first, lanes, {last.psw}, {last.qo})"
    )
    return "\n".join(lines) + "\n\n\n"


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
        if not piece.launches:
            continue
        exprs = []
        for array in (a for launch in piece.launches for a in launch.arrays):
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


#: The decorator of every generated function (a chain adds ``parallel=True``: only it, since
#: Numba would also share out a segment's other array expressions, such as the input check's
#: sum, each a parallel region of its own).
JIT = (
    "numba.njit(cache=True, fastmath={'reassoc', 'contract'}, error_model='numpy', "
    "boundscheck=False"
)


def segment_source(
    segment: Segment, slices: Mapping[int, list[str]], name: str, names: Mapping[int, str]
) -> str:
    """The generated functions, decorated: ``name``, each piece's kernel called on the value
    before it (``names``: each kernel's name in the module, by ``id``), after the function of
    each chain it calls."""
    var = {value: f"in{i}" for i, value in enumerate(segment.inputs)}
    helpers: list[str] = []
    lines = [f"@{JIT})", f"def {name}({', '.join(var[v] for v in segment.inputs)}, arena):"]
    # A NaN or Inf anywhere makes the sum NaN or Inf. (The flat view's sum vectorises; the
    # 4-d array's own .sum() walks it index by index: 0.23 ms, not 0.03, for 1000 images.)
    for value in segment.checked:
        lines.append(f"    if not np.isfinite({var[value]}.reshape(-1).sum()):")
        lines.append("        raise NonFiniteInput('a graph input holds a NaN or an Inf')")
    for piece in segment.pieces:
        x = var[piece.inputs[0]]
        out = var[piece.output] = f"v{piece.index}"
        if piece.view is not None:
            lines.append(f"    {out} = {x}.reshape({piece.view!r})")
            continue
        last = piece.launches[-1]
        lines.append(f"    {out} = np.empty({last.out_shape!r}, np.{last.dtype.name})")
        if piece.chain is not None:
            helpers.append(_chain_source(piece, names))
            lines.append(f"    chain{piece.index}({x}, {', '.join(slices[piece.index])}, {out})")
            continue
        args = [x, *slices[piece.index], out, *(_literal(s) for s in last.scalars)]
        lines.append(f"    {names[id(last.kernel)]}({', '.join(args)})")
    results = "".join(f"{var[v]}, " for v in segment.outputs)
    lines.append(f"    return ({results})")
    return "".join(helpers) + "\n".join(lines) + "\n"


# --- compiling, with a disk cache ---------------------------------------------------------
_LOADED: dict[str, Any] = {}


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
    # the compile options too (sets sorted: their order changes from process to process)
    options = sorted(
        (name, sorted(value) if isinstance(value, (set, frozenset)) else value)
        for name, value in kernel.targetoptions.items()
    )
    return f"{fn.__module__}.{fn.__qualname__}{cells!r} {options!r} {versions}\n{source}"


def compile_segment(segment: Segment, dtype: np.dtype) -> None:
    """Generate, write and compile the segment's function (or load it, if compiled before)."""
    segment.arena, slices = _arena(segment, dtype)
    kernels: dict[int, tuple[int, Any]] = {}
    for piece in segment.pieces:
        for kernel in piece.kernels:
            kernels.setdefault(id(kernel), (len(kernels), kernel))
    names = {key: f"k{index}" for key, (index, _) in kernels.items()}
    body = segment_source(segment, slices, "segment", names)
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
        source = "\n".join(header) + body
        _SLOTS[digest] = {index: kernel for index, kernel in kernels.values()}
        module = load_generated(module_name, source)
        _LOADED[module_name] = module
    segment.fn = module.segment


_SLOTS: dict[str, dict[int, Any]] = {}


def _kernel_slot(digest: str, index: int) -> Any:
    """The kernel a generated module names ``k<index>`` (set just before it is imported)."""
    return _SLOTS[digest][index]


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
        # and what run_whole reads, in plain attributes (a third of a us of its overhead)
        self._whole_fn: Any = whole.fn if whole is not None else None
        self._whole_arena = whole.arena if whole is not None else None
        self._single_output = outputs[0] if len(outputs) == 1 else None

    @property
    def calls(self) -> int:
        """Python-to-compiled-code calls per run."""
        return len(self.parts)

    def run_whole(self, x: np.ndarray) -> dict[str, np.ndarray] | None:
        """The graph outputs from its one input ``x``, when the program is one compiled call
        taking ``x``'s dtype; None to take the general path (also when ``x`` holds a NaN or an
        Inf: the general path's check names the input and counts them)."""
        dtype = self._whole_dtype
        if dtype is None or (x.dtype is not dtype and x.dtype != dtype):
            return None
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        try:
            results = self._whole_fn(x, self._whole_arena)
        except NonFiniteInput:
            return None
        if self._single_output is not None:
            return {self._single_output: results[0]}
        return dict(zip(self.outputs, results))

    def run(
        self, values: dict[str, np.ndarray], buffers: Buffers | None = None
    ) -> dict[str, np.ndarray]:
        """The graph outputs from the graph inputs (``values`` is filled as it goes, and
        values read for the last time leave it, into ``buffers`` if given)."""
        whole, dtype = self.whole, self._whole_dtype
        if whole is not None and dtype is not None:
            x = values[whole.inputs[0]]
            if not x.flags.c_contiguous or x.dtype != dtype:
                x = np.ascontiguousarray(x, dtype)
            return dict(zip(self.outputs, self._whole_fn(x, self._whole_arena)))
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
    batch: int,
) -> Program | None:
    """The program for a plan's ``steps`` on ``batch`` images, given the input shapes and
    dtypes each step ``seen`` on the run that bound ``calls`` (each step's call on the general
    path, taken where a step has no kernel launch). None if a step has neither, or nothing
    would be compiled, or the batch is larger than ``PROGRAM_MAX_BATCH`` and no fused convs
    can be strung together (see :func:`lanes_chains`)."""
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
    every_reader: dict[str, list[int]] = {}
    for piece in pieces:
        for name in piece.inputs:
            every_reader.setdefault(name, []).append(piece.index)
    pieces = lanes_chains(pieces, every_reader, graph_outputs)
    if batch > PROGRAM_MAX_BATCH and not any(p.chain is not None for p in pieces):
        return None
    readers: dict[str, int] = {}
    for piece in pieces:
        for name in piece.inputs:
            readers[name] = piece.index

    def needed_after(index: int) -> set[str]:
        later = {name for name, last in readers.items() if last > index}
        return later | set(graph_outputs)

    parts = segments_of(pieces, needed_after)
    dtype_of = {p.output: p.launches[-1].dtype for p in pieces if p.launches}
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
            dtypes = {launch.dtype for p in part.pieces for launch in p.launches}
            if len(dtypes) > 1:
                return None  # one arena per program: mixed precisions keep the general path
            compile_segment(part, dtypes.pop() if dtypes else np.dtype(np.float32))
    return Program(parts, list(graph_outputs))
