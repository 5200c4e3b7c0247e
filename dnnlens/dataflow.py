"""Data movement under a finite on-chip buffer: mappings, their traffic, and the mapper.

The course's compute intensity moves every input, weight and output once between main memory
and the processor (compulsory traffic). Here a buffer of ``B`` bytes sits between the two, and
what really moves depends on the *mapping*: which loops run at the main-memory level (outer
loops, outermost first, each with its trip count) and so which tile of each tensor the buffer
holds. docs/dataflow.md has the model, its formulas and a worked example; in short:

* Loop dimensions (Timeloop's names): ``G`` groups, ``N`` batch, ``M`` output channels and
  ``C`` input channels (both per group), ``P``, ``Q`` output rows and columns, ``R``, ``S``
  kernel rows and columns. A fc layer is ``N x C -> N x M``; a matmul ``A (N x C) @ B (C x M)``
  (batch dimensions of both operands become ``G``). ``weights`` are the conv/fc weights or
  ``B``, ``inputs`` the activation or ``A``.
* A dimension of size ``D`` with outer trip count ``t`` has tile ``D / t`` (``t`` must divide
  ``D``); a dimension the mapping does not name runs whole inside the buffer.
* Which dimensions index which tensor: weights ``G M C R S``, inputs ``G N C P Q R S`` (rows
  and columns through ``P, R`` and ``Q, S``), outputs ``G N M P Q``.
* Reuse rule: a tensor's tile is fetched again whenever an outer loop that indexes it
  advances; it stays in the buffer across the loops that do not index it and sit inside the
  innermost one that does. So a tensor moves ``size x`` (the product of the trips of the loops
  that do not index it and sit outside its innermost indexing loop).
* Outputs leave the buffer whenever their tile changes; when reduction loops (``C, R, S``)
  are outer, they leave as partial sums and are read back: writes ``= outputs x v``, reads
  ``= outputs x (v - 1)`` with ``v`` the reuse factor above.
* The input tile is the rows and columns its outputs and kernel taps reach, clipped to the
  real input (padding zeros are never fetched): ``(P_tile - 1) * stride + (R_tile - 1) *
  dilation + 1`` rows where those windows overlap, fewer where they leave gaps (stride larger
  than the kernel's reach, dilation). With ``halo=True`` (sliding-window reuse), when the
  input's innermost indexing loop is ``P, Q, R`` or ``S`` and it advances, only the rows (or
  columns) not already in the buffer are fetched.
* The tiles of the three tensors must fit ``B`` (twice over with double buffering).

Counts are in values (multiply by bytes per value of the dtype for bytes), like the
analysis's ``values_moved``; ``intensity`` is MACs per value moved.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import lru_cache
from math import prod
from typing import TYPE_CHECKING, Any

from dnnlens.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

    from dnnlens.ir import Graph, Node

#: The loop dimensions, in the order tables and JSON list them.
DIMS = ("G", "N", "M", "C", "P", "Q", "R", "S")
TENSORS = ("weights", "inputs", "outputs")
#: Which loop dimensions index which tensor.
RELEVANT: dict[str, frozenset[str]] = {
    "weights": frozenset("GMCRS"),
    "inputs": frozenset("GNCPQRS"),
    "outputs": frozenset("GNMPQ"),
}
#: The layer kinds the model covers (the error for any other kind lists them).
COVERED = "conv (1-d and 2-d, any stride, dilation, groups, padding), fc, matmul"
#: The named dataflows: which tensor stays in the buffer while the loops that do not index it
#: run innermost.
DATAFLOWS = {
    "weight-stationary": "weights",
    "output-stationary": "outputs",
    "input-stationary": "inputs",
}
#: What a loop order keeps across its innermost loop (:func:`stationary_of`), as codes.
KEEPS = (*TENSORS, "", "all")
ALL = KEEPS.index("all")
#: Above this many tile-size combinations the mapper prunes (see :func:`candidate_trips`).
MAX_COMBINATIONS = 200_000

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]i?)?[bB]?\s*$")
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}


def parse_size(text: str | int, what: str = "--buffer") -> int:
    """Bytes from ``"16kB"``, ``"4MB"``, ``"2MiB"``, ``"512"`` or an int (kB = 1000 B, KiB =
    1024 B); UsageError for anything else, and for zero."""
    if isinstance(text, bool):
        raise UsageError(f"{what} must be a size such as 16kB, 4MB or 2MiB, got {text!r}")
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.match(str(text))
        if not match:
            raise UsageError(f"{what} must be a size such as 16kB, 4MB or 2MiB, got {text!r}")
        number, unit = match.groups()
        value = int(Fraction(number) * _UNITS[(unit or "").lower()])  # exact, any length
    if value < 1:
        raise UsageError(f"{what} must be at least 1 byte, got {text!r}")
    return value


def size_text(nbytes: float) -> str:
    """``16000`` -> ``"16 kB"``, ``16384`` -> ``"16 KiB"``: the unit that states it exactly,
    decimal first; else three significant digits in decimal units."""
    units = (
        ("GB", 10**9),
        ("GiB", 2**30),
        ("MB", 10**6),
        ("MiB", 2**20),
        ("kB", 10**3),
        ("KiB", 2**10),
    )
    for unit, size in units:
        if nbytes >= size and nbytes % size == 0:
            return f"{int(nbytes // size)} {unit}"
    for unit, size in units[::2]:
        if nbytes >= size:
            return f"{nbytes / size:.3g} {unit}"
    return f"{int(nbytes)} B"


# ---------------------------------------------------------------------------------------------
# The layer as a loop nest


@dataclass(frozen=True)
class Problem:
    """One layer as the seven-deep loop nest (plus groups) the model reasons about.

    ``M`` and ``C`` are per group. Rows of the input: ``rows`` values, read by output row
    ``p`` and kernel row ``r`` at ``p * stride[0] + r * dilation[0] - pad[0]``; columns
    likewise with index 1. A fc layer or a matmul has ``P = Q = R = S = 1`` and one row and
    column.
    """

    name: str
    kind: str
    G: int = 1
    N: int = 1
    M: int = 1
    C: int = 1
    P: int = 1
    Q: int = 1
    R: int = 1
    S: int = 1
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    pad: tuple[int, int] = (0, 0)  # padding before the first row / column
    rows: int = 1  # input height
    cols: int = 1  # input width

    def __post_init__(self) -> None:
        for dim in DIMS:
            if not isinstance(self.size(dim), int) or self.size(dim) < 1:
                raise UsageError(
                    f"loop dimension {dim} of {self.name} must be a positive "
                    f"integer, got {self.size(dim)!r}"
                )

    def size(self, dim: str) -> int:
        return int(getattr(self, dim))

    @property
    def sizes(self) -> dict[str, int]:
        return {dim: self.size(dim) for dim in DIMS}

    @property
    def macs(self) -> int:
        return prod(self.sizes.values())

    def tensor_size(self, tensor: str) -> int:
        """Values of the whole tensor (inputs: the real input, padding excluded)."""
        if tensor == "weights":
            return self.G * self.M * self.C * self.R * self.S
        if tensor == "outputs":
            return self.G * self.N * self.M * self.P * self.Q
        return self.G * self.N * self.C * self.rows * self.cols

    def row_axis(self) -> tuple[int, int, int, int, int, int]:
        return (self.P, self.R, self.stride[0], self.dilation[0], self.pad[0], self.rows)

    def col_axis(self) -> tuple[int, int, int, int, int, int]:
        return (self.Q, self.S, self.stride[1], self.dilation[1], self.pad[1], self.cols)

    @staticmethod
    def from_node(node: Node) -> Problem:
        """The loop nest of an IR node; UsageError for a kind the model does not cover."""
        from dnnlens.ops.conv import Conv
        from dnnlens.ops.linear import Linear
        from dnnlens.ops.matmul import MatMul

        op = node.op
        params = {role: p.shape for role, p in node.params.items()}
        if isinstance(op, Conv) and not op.transposed and op.spatial_dims in (1, 2):
            return _conv_problem(node, op, params)
        if isinstance(op, Linear):
            x = node.input_shapes[0]
            out_features, in_features = params["weight"]
            return Problem(
                node.name, "fc", N=prod(x[:-1]), M=int(out_features), C=int(in_features)
            )
        if isinstance(op, MatMul):
            return _matmul_problem(node, op, params)
        what = node.kind
        if isinstance(op, Conv):
            what = f"{op.spatial_dims}-d {op.kind}"
        raise UsageError(f"layer {node.name!r} is a {what}; the data-flow model covers {COVERED}")


def _conv_problem(node: Node, op: Any, params: dict[str, tuple]) -> Problem:
    x, out, weight = node.input_shapes[0], node.output_shape, params["weight"]
    groups = int(op.groups)
    common = {"G": groups, "N": int(x[0]), "M": int(weight[0]) // groups, "C": int(weight[1])}
    if op.spatial_dims == 1:  # a 1-d conv is a 2-d one with a single row
        return Problem(
            node.name,
            "conv",
            **common,
            P=1,
            Q=int(out[2]),
            R=1,
            S=int(weight[2]),
            stride=(1, int(op.stride[0])),
            dilation=(1, int(op.dilation[0])),
            pad=(0, int(op.padding[0][0])),
            rows=1,
            cols=int(x[2]),
        )
    return Problem(
        node.name,
        "conv",
        **common,
        P=int(out[2]),
        Q=int(out[3]),
        R=int(weight[2]),
        S=int(weight[3]),
        stride=(int(op.stride[0]), int(op.stride[1])),
        dilation=(int(op.dilation[0]), int(op.dilation[1])),
        pad=(int(op.padding[0][0]), int(op.padding[1][0])),
        rows=int(x[2]),
        cols=int(x[3]),
    )


def _matmul_problem(node: Node, op: Any, params: dict[str, tuple]) -> Problem:
    """``A (..., Ma, K) @ B (..., K, Nb)``: inputs A, weights B (batch dims as G), or, when
    only B has batch dimensions (a parameter on the left), the transposed product
    ``B^T @ A^T`` so that the operand without batch dimensions plays the weights."""
    a, b = (tuple(s) for s in op.operands(node.input_shapes, params))
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    lead_a, lead_b = a2[:-2], b2[:-2]
    rows_a, k, cols_b = a2[-2], a2[-1], b2[-1]
    if prod(lead_b) == 1:  # B has no batch: fold A's batch into N
        return Problem(node.name, "matmul", N=prod(lead_a) * rows_a, C=k, M=cols_b)
    if prod(lead_a) == 1:  # only B is batched: B^T @ A^T, A (no batch) plays the weights
        return Problem(node.name, "matmul", N=prod(lead_b) * cols_b, C=k, M=rows_a)
    if tuple(lead_a) == tuple(lead_b):
        return Problem(node.name, "matmul", G=prod(lead_a), N=rows_a, C=k, M=cols_b)
    raise UsageError(
        f"layer {node.name!r} is a matmul of {a} and {b} whose batch dimensions "
        f"broadcast; the data-flow model covers matmuls whose operands share "
        f"their batch dimensions or where one has none"
    )


def covered_nodes(graph: Graph) -> list[Node]:
    """The nodes of ``graph`` the data-flow model covers, in execution order."""
    found = []
    for node in graph:
        try:
            Problem.from_node(node)
        except UsageError:
            continue
        found.append(node)
    return found


def problem_of(graph: Graph, layer: str) -> Problem:
    """The loop nest of the node named ``layer``; UsageError naming covered layers if none."""
    try:
        node = graph.node(layer)
    except KeyError:
        names = [n.name for n in covered_nodes(graph)]
        shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
        raise UsageError(
            f"no layer named {layer!r} in {graph.name}; its layers with a "
            f"data-flow model: {shown or 'none'}"
        ) from None
    return Problem.from_node(node)


# ---------------------------------------------------------------------------------------------
# Input rows and columns per tile: one axis (rows: P with R, columns: Q with S)


@dataclass(frozen=True)
class AxisCounts:
    """Input rows (or columns) of one axis for one pair of trip counts ``(t_out, t_kernel)``.

    ``total``: sum over every tile position of the rows it needs; ``slide_out`` /
    ``slide_kernel``: the same when the output (kernel) index slides, counting at each step only
    the rows the previous position did not already hold; ``largest``: the largest tile.
    """

    total: int
    slide_out: int
    slide_kernel: int
    largest: int


@lru_cache(maxsize=4096)
def axis_counts(
    out: int,
    kernel: int,
    stride: int,
    dilation: int,
    pad: int,
    size: int,
    t_out: int,
    t_kernel: int,
) -> AxisCounts:
    """Rows the tile at output-tile ``i`` and kernel-tile ``j`` reads: ``{(i*To + p) * stride +
    (j*Tk + r) * dilation - pad}`` for ``p < To``, ``r < Tk`` (``To = out / t_out``,
    ``Tk = kernel / t_kernel``), inside ``[0, size)``."""
    t_o, t_k = out // t_out, kernel // t_kernel

    def rows(i: int, j: int) -> frozenset[int]:
        return frozenset(
            x
            for p in range(t_o)
            for r in range(t_k)
            if 0 <= (x := (i * t_o + p) * stride + (j * t_k + r) * dilation - pad) < size
        )

    grid = [[rows(i, j) for j in range(t_kernel)] for i in range(t_out)]
    total = sum(len(s) for line in grid for s in line)
    slide_out = sum(
        len(grid[0][j]) + sum(len(grid[i][j] - grid[i - 1][j]) for i in range(1, t_out))
        for j in range(t_kernel)
    )
    slide_kernel = sum(
        len(grid[i][0]) + sum(len(grid[i][j] - grid[i][j - 1]) for j in range(1, t_kernel))
        for i in range(t_out)
    )
    largest = max(len(s) for line in grid for s in line)
    return AxisCounts(total, slide_out, slide_kernel, largest)


# ---------------------------------------------------------------------------------------------
# Mappings


@dataclass(frozen=True)
class Mapping:
    """The main-memory-level loops, outermost first, as ``(dimension, trip count)`` pairs."""

    loops: tuple[tuple[str, int], ...] = ()

    @staticmethod
    def parse(text: str | Mapping | Sequence[tuple[str, int]] | None) -> Mapping:
        """``"P=8,Q=2,M=4"`` (outermost first; ``""`` for none) or pairs -> Mapping."""
        if text is None:
            return Mapping()
        if isinstance(text, Mapping):
            return text
        if isinstance(text, str):
            pairs = []
            for part in filter(None, (p.strip() for p in text.split(","))):
                dim, eq, trip = part.partition("=")
                if not eq or not trip.strip().lstrip("-").isdigit():
                    raise UsageError(
                        f"--outer must be loops like P=8,Q=2,M=4 (dimension=trip "
                        f"count, outermost first), got {text!r}"
                    )
                pairs.append((dim.strip().upper(), int(trip)))
            return Mapping(tuple(pairs))
        return Mapping(tuple((str(d).upper(), int(t)) for d, t in text))

    def check(self, problem: Problem) -> None:
        """UsageError for an unknown or repeated dimension or a trip that does not divide."""
        seen: set[str] = set()
        for dim, trip in self.loops:
            if dim not in DIMS:
                raise UsageError(
                    f"unknown loop dimension {dim!r} in the mapping; use {', '.join(DIMS)}"
                )
            if dim in seen:
                raise UsageError(f"loop dimension {dim} appears twice in the mapping {self}")
            seen.add(dim)
            size = problem.size(dim)
            if trip < 1 or size % trip:
                raise UsageError(
                    f"{dim}={trip} does not divide {dim} = {size} of "
                    f"{problem.name}; use a divisor of {size} "
                    f"({', '.join(map(str, divisors(size)))})"
                )

    def trips(self) -> dict[str, int]:
        found = {dim: 1 for dim in DIMS}
        found.update(dict(self.loops))
        return found

    def active(self) -> list[tuple[str, int]]:
        """The loops that really iterate (trip count above 1)."""
        return [(d, t) for d, t in self.loops if t > 1]

    def __str__(self) -> str:
        return ",".join(f"{d}={t}" for d, t in self.loops)


def divisors(n: int) -> list[int]:
    """Every divisor of ``n``, ascending."""
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]


# ---------------------------------------------------------------------------------------------
# Traffic of one mapping (the closed form)


@dataclass(frozen=True)
class Traffic:
    """Main-memory traffic of one layer under one mapping and buffer (values, not bytes)."""

    layer: str
    kind: str
    macs: int
    dtype: str
    bytes_per_value: int
    buffer_bytes: int
    halo: bool
    double_buffer: bool
    outer: Mapping
    tile: dict[str, int]
    footprint: dict[str, int]  # values of each tensor's largest tile
    reads: dict[str, int]
    writes: dict[str, int]
    compulsory: int
    dataflow: str = ""  # the named dataflow this mapping is, when the mapper found it as one

    @property
    def total(self) -> int:
        return sum(self.reads.values()) + sum(self.writes.values())

    @property
    def footprint_bytes(self) -> dict[str, int]:
        return {t: v * self.bytes_per_value for t, v in self.footprint.items()}

    @property
    def needed_bytes(self) -> int:
        """Buffer bytes the mapping needs: the tiles, twice over with double buffering."""
        return sum(self.footprint_bytes.values()) * (2 if self.double_buffer else 1)

    @property
    def intensity(self) -> float:
        return self.macs / self.total if self.total else 0.0

    @property
    def compulsory_intensity(self) -> float:
        return self.macs / self.compulsory if self.compulsory else 0.0

    def to_dict(self) -> dict[str, Any]:
        fp = self.footprint_bytes
        return {
            "layer": self.layer,
            "kind": self.kind,
            "macs": self.macs,
            "dtype": self.dtype,
            "buffer_bytes": self.buffer_bytes,
            "halo": self.halo,
            "double_buffer": self.double_buffer,
            "outer": [{"dim": d, "trip": t} for d, t in self.outer.loops],
            "tile": dict(self.tile),
            "footprint_bytes": {**fp, "total": sum(fp.values()), "needed": self.needed_bytes},
            "reads": dict(self.reads),
            "writes": dict(self.writes),
            "total": self.total,
            "total_bytes": self.total * self.bytes_per_value,
            "compulsory": self.compulsory,
            "intensity": self.intensity,
            "compulsory_intensity": self.compulsory_intensity,
            **({"dataflow": self.dataflow} if self.dataflow else {}),
        }


def _footprint(problem: Problem, trips: dict[str, int]) -> dict[str, int]:
    t = {d: problem.size(d) // trips[d] for d in DIMS}
    rows = axis_counts(*problem.row_axis(), trips["P"], trips["R"]).largest
    cols = axis_counts(*problem.col_axis(), trips["Q"], trips["S"]).largest
    return {
        "weights": t["G"] * t["M"] * t["C"] * t["R"] * t["S"],
        "inputs": t["G"] * t["N"] * t["C"] * rows * cols,
        "outputs": t["G"] * t["N"] * t["M"] * t["P"] * t["Q"],
    }


def compulsory(problem: Problem) -> dict[str, int]:
    """Each weight read once, each input value the layer needs read once, each output written
    once: the least any mapping moves (equal to the notebook's values moved except for input
    rows or columns no kernel tap ever reads, e.g. every other row of a 1x1 stride-2 conv)."""
    rows = axis_counts(*problem.row_axis(), 1, 1).total
    cols = axis_counts(*problem.col_axis(), 1, 1).total
    return {
        "weights": problem.tensor_size("weights"),
        "inputs": problem.G * problem.N * problem.C * rows * cols,
        "outputs": problem.tensor_size("outputs"),
    }


def no_reuse(problem: Problem) -> dict[str, int]:
    """The no-reuse bound: every MAC reads its weight and its input (padding taps excepted)
    and reads and writes its output, except the first read of each output: the traffic of
    one-value tiles with no tensor ever kept, and more than any mapping moves."""
    rows = axis_counts(*problem.row_axis(), problem.P, problem.R).total  # (p, r) in range
    cols = axis_counts(*problem.col_axis(), problem.Q, problem.S).total
    outputs = problem.tensor_size("outputs")
    return {
        "weights": problem.macs,
        "inputs": problem.G * problem.N * problem.M * problem.C * rows * cols,
        "outputs_read": problem.macs - outputs,
        "outputs_written": problem.macs,
    }


def _reuse_factor(loops: Sequence[tuple[str, int]], relevant: frozenset[str]) -> tuple[int, int]:
    """(position of the innermost loop indexing the tensor or -1, product of the trips of the
    loops outside it that do not index it): how often the tensor is fetched over again."""
    innermost = max((i for i, (d, _) in enumerate(loops) if d in relevant), default=-1)
    factor = prod(t for d, t in loops[: max(innermost, 0)] if d not in relevant)
    return innermost, factor


def evaluate(
    problem: Problem,
    outer: str | Mapping | Sequence[tuple[str, int]] | None,
    buffer_bytes: int | str,
    *,
    dtype: str = "fp32",
    halo: bool = False,
    double_buffer: bool = False,
    check_fit: bool = True,
) -> Traffic:
    """The traffic of ``problem`` under the mapping ``outer`` (the closed form).

    UsageError when a loop does not divide its dimension, or (``check_fit``) when the tiles do
    not fit ``buffer_bytes`` (twice with ``double_buffer``), naming each tensor's footprint.
    """
    from dnnlens.analysis import bytes_per_value

    nbytes = bytes_per_value(dtype)
    buffer = parse_size(buffer_bytes)
    mapping = Mapping.parse(outer)
    mapping.check(problem)
    trips = mapping.trips()
    footprint = _footprint(problem, trips)
    if check_fit:
        _check_fit(problem, mapping, footprint, nbytes, buffer, double_buffer)
    loops = mapping.active()
    _, w_factor = _reuse_factor(loops, RELEVANT["weights"])
    _, o_factor = _reuse_factor(loops, RELEVANT["outputs"])
    i_pos, i_factor = _reuse_factor(loops, RELEVANT["inputs"])
    slide = loops[i_pos][0] if halo and i_pos >= 0 else ""
    row = axis_counts(*problem.row_axis(), trips["P"], trips["R"])
    col = axis_counts(*problem.col_axis(), trips["Q"], trips["S"])
    rows = {"P": row.slide_out, "R": row.slide_kernel}.get(slide, row.total)
    cols = {"Q": col.slide_out, "S": col.slide_kernel}.get(slide, col.total)
    outputs = problem.tensor_size("outputs")
    reads = {
        "weights": problem.tensor_size("weights") * w_factor,
        "inputs": i_factor * problem.G * problem.N * problem.C * rows * cols,
        "outputs": outputs * (o_factor - 1),
    }
    return Traffic(
        layer=problem.name,
        kind=problem.kind,
        macs=problem.macs,
        dtype=dtype,
        bytes_per_value=nbytes,
        buffer_bytes=buffer,
        halo=halo,
        double_buffer=double_buffer,
        outer=mapping,
        tile={d: problem.size(d) // trips[d] for d in DIMS},
        footprint=footprint,
        reads=reads,
        writes={"outputs": outputs * o_factor},
        compulsory=sum(compulsory(problem).values()),
    )


def _check_fit(
    problem: Problem,
    mapping: Mapping,
    footprint: dict[str, int],
    nbytes: int,
    buffer: int,
    double_buffer: bool,
) -> None:
    need = sum(footprint.values()) * nbytes * (2 if double_buffer else 1)
    if need <= buffer:
        return
    parts = " + ".join(f"{t} {v * nbytes:,} B" for t, v in footprint.items())
    twice = " x 2 (double buffering)" if double_buffer else ""
    raise UsageError(
        f"the tiles of {problem.name} under outer loops '{mapping}' do not fit "
        f"the {buffer:,}-byte buffer: {parts}{twice} = {need:,} B; give more "
        f"outer trips or a larger buffer"
    )


# ---------------------------------------------------------------------------------------------
# The mapper


def stationary_of(loops: Sequence[tuple[str, int]]) -> str:
    """The tensor a loop order keeps in the buffer across its innermost loop: the one that
    loop does not index (``""`` for no loop or a G loop innermost, ``"all"`` for no loop at
    all). In this model only that tensor gains from the order; see docs/dataflow.md."""
    active = [d for d, t in loops if t > 1]
    if not active:
        return "all"
    return next((t for t in TENSORS if active[-1] not in RELEVANT[t]), "")


@dataclass(frozen=True)
class Candidate:
    """One loop order (of all eight dimensions; those with one trip drop out) the mapper scores
    for every tile-size choice at once.

    ``stationary``: the tensor whose non-indexing loops all run innermost (so it is read once,
    or, for outputs, written once); ``slide``: the dimension placed as the input's innermost
    indexing loop (halo reuse), or ``""``.
    """

    stationary: str
    slide: str

    @property
    def dims(self) -> list[str]:
        """G outermost (it indexes every tensor, so it costs nothing there), then the other
        loops, then the slide, then the stationary tensor's non-indexing loops."""
        keep = [d for d in DIMS if d not in RELEVANT[self.stationary]]  # N P Q / C R S / M
        if self.stationary == "inputs":
            inner = ([self.slide] if self.slide else []) + keep
        else:
            inner = [d for d in keep if d != self.slide] + ([self.slide] if self.slide else [])
        return [d for d in DIMS if d not in inner] + inner

    def order(self, trips: dict[str, int]) -> Mapping:
        return Mapping(tuple((d, trips[d]) for d in self.dims if trips[d] > 1))


#: The orders the mapper scores: for each stationary tensor, each dimension that can be the
#: input's innermost indexing loop there (the slide), or none. Any loop order moves at least as
#: much as one of these with the same tiles (docs/dataflow.md says why; tests check it).
CANDIDATES = (
    [Candidate("weights", s) for s in ("", "P", "Q")]
    + [Candidate("outputs", s) for s in ("", "R", "S")]
    + [Candidate("inputs", s) for s in ("", "P", "Q", "R", "S")]
)


def candidate_trips(
    problem: Problem, limit: int = MAX_COMBINATIONS
) -> tuple[dict[str, list[int]], str]:
    """Trip counts to try per dimension, and how the list was pruned (``""``: every divisor).

    Every divisor of every dimension while their combinations stay under ``limit``; above it,
    the kernel (R, S) stays whole in the buffer, then the longest lists keep every other
    divisor (always 1 and the dimension itself) until the combinations fit the limit."""
    trips = {d: divisors(problem.size(d)) for d in DIMS}
    notes: list[str] = []
    if prod(map(len, trips.values())) > limit and (problem.R > 1 or problem.S > 1):
        trips["R"], trips["S"] = [1], [1]
        notes.append("kernel R, S kept whole")
    thinned: set[str] = set()
    while prod(map(len, trips.values())) > limit:
        dim = max(DIMS, key=lambda d: len(trips[d]))
        options = trips[dim]
        trips[dim] = sorted({*options[::2], options[-1]})
        thinned.add(dim)
    if thinned:
        notes.append(f"every other divisor of {', '.join(sorted(thinned, key=DIMS.index))}")
    return trips, "; ".join(notes)


@dataclass
class Search:
    """What the mapper found for one layer and buffer."""

    problem: Problem
    best: Traffic
    dataflows: dict[str, Traffic | None]  # None: no mapping of that kind fits
    compulsory: dict[str, int]
    no_reuse: dict[str, int]
    mappings_scored: int
    pruning: str  # "" when the search was exhaustive
    seconds: float

    @property
    def exhaustive(self) -> bool:
        return not self.pruning

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.best.to_dict(),
            "compulsory_by_tensor": dict(self.compulsory),
            "no_reuse": sum(self.no_reuse.values()),
            "no_reuse_by_tensor": dict(self.no_reuse),
            "dataflows": {
                name: (t.to_dict() if t is not None else None)
                for name, t in self.dataflows.items()
            },
            "search": {
                "mappings_scored": self.mappings_scored,
                "exhaustive": self.exhaustive,
                "pruning": self.pruning,
                "seconds": self.seconds,
            },
        }


def search(
    problem: Problem,
    buffer_bytes: int | str,
    *,
    dtype: str = "fp32",
    halo: bool = False,
    double_buffer: bool = False,
    limit: int = MAX_COMBINATIONS,
) -> Search:
    """The mapping of ``problem`` that moves the least data through a ``buffer_bytes`` buffer,
    the best of each named dataflow, and the compulsory and no-reuse bounds.

    Scores every tile-size combination (every divisor of every dimension, pruned above
    ``limit`` combinations) under every :data:`CANDIDATES` order at once with NumPy, then
    evaluates the winners with :func:`evaluate`. A named dataflow is the best mapping that
    keeps its tensor across the innermost loop (:func:`stationary_of`; the mapping without
    outer loops keeps all three). Ties go to fewer outer iterations.
    UsageError when not even one-value tiles fit the buffer.
    """
    import numpy as np

    from dnnlens.analysis import bytes_per_value

    start = time.perf_counter()
    nbytes = bytes_per_value(dtype)
    buffer = parse_size(buffer_bytes)
    options, pruning = candidate_trips(problem, limit)
    grid = _TripGrid(problem, options)
    need = grid.footprint_values() * nbytes * (2 if double_buffer else 1)
    fits = need <= buffer
    if not fits.any():
        raise UsageError(
            f"even the smallest tiles of {problem.name} need {int(need.min()):,} B, "
            f"more than the {buffer:,}-byte buffer; give a larger --buffer"
        )
    iterations = np.prod(np.stack([grid.trips[d] for d in DIMS]), axis=0)
    never = np.iinfo(np.int64).max
    winners: dict[str, tuple[int, int, Candidate, int]] = {}  # kind -> cost, iterations, ...
    families = [f for f in CANDIDATES if halo or not f.slide]
    for family in families:
        cost, kind = grid.cost(family.dims, halo)
        cost = np.where(fits, cost, never)
        for code, tensor in enumerate(KEEPS):
            if code == ALL:
                continue
            mine = np.where((kind == code) | (kind == ALL), cost, never)
            least = mine.min()
            if least == never:
                continue
            index = int(np.flatnonzero(mine == least)[np.argmin(iterations[mine == least])])
            entry = (int(least), int(iterations[index]), family, index)
            if tensor not in winners or entry[:2] < winners[tensor][:2]:
                winners[tensor] = entry
    found: dict[str, Traffic] = {}
    for tensor, (least, _, family, index) in winners.items():
        traffic = evaluate(
            problem,
            family.order(grid.trips_at(index)),
            buffer,
            dtype=dtype,
            halo=halo,
            double_buffer=double_buffer,
        )
        if traffic.total != least:  # the vectorised count must agree with the closed form
            raise AssertionError(
                f"dnnlens bug: mapper count {least} differs from "
                f"{traffic.total} for {traffic.outer} of {problem.name}"
            )
        found[tensor] = traffic
    named = {
        name: (replace(found[tensor], dataflow=name) if tensor in found else None)
        for name, tensor in DATAFLOWS.items()
    }
    best = min(
        [*(t for t in named.values() if t is not None), *found.values()],
        key=lambda t: (t.total, prod(t.outer.trips().values())),
    )
    if not best.outer.active():  # no outer loop: every tensor stays, each moves once
        best = replace(best, dataflow="all-stationary")
    return Search(
        problem=problem,
        best=best,
        dataflows=named,
        compulsory=compulsory(problem),
        no_reuse=no_reuse(problem),
        mappings_scored=int(fits.sum()) * len(families),
        pruning=pruning,
        seconds=time.perf_counter() - start,
    )


class _TripGrid:
    """Every combination of the candidate trip counts, one NumPy array per dimension."""

    def __init__(self, problem: Problem, options: dict[str, list[int]]) -> None:
        import numpy as np

        self.problem = problem
        self.options = options
        index = np.meshgrid(*[np.arange(len(options[d])) for d in DIMS], indexing="ij")
        self.index = {d: i.ravel() for d, i in zip(DIMS, index)}
        self.trips = {d: np.asarray(options[d], dtype=np.int64)[self.index[d]] for d in DIMS}
        self.tile = {d: problem.size(d) // self.trips[d] for d in DIMS}
        self.row = self._axis_table(problem.row_axis(), "P", "R")
        self.col = self._axis_table(problem.col_axis(), "Q", "S")

    def _axis_table(self, axis: tuple, out: str, kernel: str) -> dict[str, np.ndarray]:
        """Each :class:`AxisCounts` field for every combination, looked up per trip pair."""
        import numpy as np

        fields = ("total", "slide_out", "slide_kernel", "largest")
        table = {
            f: np.zeros((len(self.options[out]), len(self.options[kernel])), np.int64)
            for f in fields
        }
        for i, t_out in enumerate(self.options[out]):
            for j, t_kernel in enumerate(self.options[kernel]):
                counts = axis_counts(*axis, t_out, t_kernel)
                for f in fields:
                    table[f][i, j] = getattr(counts, f)
        return {f: table[f][self.index[out], self.index[kernel]] for f in fields}

    def trips_at(self, index: int) -> dict[str, int]:
        return {d: int(self.trips[d][index]) for d in DIMS}

    def footprint_values(self) -> np.ndarray:
        t = self.tile
        weights = t["G"] * t["M"] * t["C"] * t["R"] * t["S"]
        inputs = t["G"] * t["N"] * t["C"] * self.row["largest"] * self.col["largest"]
        outputs = t["G"] * t["N"] * t["M"] * t["P"] * t["Q"]
        return weights + inputs + outputs

    def cost(self, dims: Sequence[str], halo: bool) -> tuple[np.ndarray, np.ndarray]:
        """Values moved by the loop order ``dims`` (outermost first; loops of one trip drop
        out) for every combination -- the closed form of :func:`evaluate`, vectorised -- and
        the tensor each keeps across its innermost loop (:func:`stationary_of`)."""
        import numpy as np

        p, trips = self.problem, self.trips
        moving = [trips[d] > 1 for d in dims]
        factor, innermost = {}, {}
        for tensor, relevant in RELEVANT.items():
            last = np.full(trips["G"].shape, -1)  # position of the innermost indexing loop
            for i, d in enumerate(dims):
                if d in relevant and self.options[d] != [1]:
                    last = np.where(moving[i], i, last)
            product = np.ones_like(last)
            for i, d in enumerate(dims):
                if d not in relevant and self.options[d] != [1]:
                    product = product * np.where(i < last, trips[d], 1)
            factor[tensor], innermost[tensor] = product, last
        rows, cols = self.row["total"], self.col["total"]
        if halo:
            slide = innermost["inputs"]
            for d, axis, field_name in (
                ("P", "row", "slide_out"),
                ("R", "row", "slide_kernel"),
                ("Q", "col", "slide_out"),
                ("S", "col", "slide_kernel"),
            ):
                here = slide == dims.index(d)
                if axis == "row":
                    rows = np.where(here, self.row[field_name], rows)
                else:
                    cols = np.where(here, self.col[field_name], cols)
        outputs = p.tensor_size("outputs")
        cost = (
            p.tensor_size("weights") * factor["weights"]
            + factor["inputs"] * (p.G * p.N * p.C) * rows * cols
            + outputs * (2 * factor["outputs"] - 1)
        )
        kind = np.full(cost.shape, ALL, dtype=np.int8)  # codes into KEEPS
        for i, d in enumerate(dims):  # the innermost moving loop decides
            holder = next((t for t in TENSORS if d not in RELEVANT[t]), "")
            kind = np.where(moving[i], KEEPS.index(holder), kind)
        return cost, kind


# ---------------------------------------------------------------------------------------------
# Whole models


@dataclass
class LayerTraffic:
    """A covered layer of a network under a buffer: its best mapping, or why there is none."""

    index: int
    name: str
    kind: str
    macs: int
    compulsory: int
    search: Search | None
    error: str = ""

    @property
    def total(self) -> int | None:
        return self.search.best.total if self.search else None


def network_traffic(
    graph: Graph,
    buffer_bytes: int | str,
    *,
    dtype: str = "fp32",
    halo: bool = False,
    double_buffer: bool = False,
) -> list[LayerTraffic]:
    """The mapper's best for every covered layer of ``graph`` (execution order)."""
    buffer = parse_size(buffer_bytes)
    found = []
    for index, node in enumerate(graph.nodes, start=1):
        try:
            problem = Problem.from_node(node)
        except UsageError:
            continue
        try:
            result = search(problem, buffer, dtype=dtype, halo=halo, double_buffer=double_buffer)
            error = ""
        except UsageError as exc:  # a buffer too small for even this layer's smallest tiles
            result, error = None, str(exc)
        found.append(
            LayerTraffic(
                index,
                node.name,
                problem.kind,
                problem.macs,
                sum(compulsory(problem).values()),
                result,
                error,
            )
        )
    return found


@dataclass
class BufferView:
    """``dnnlens analyze --buffer``: each covered layer's best traffic next to the notebook's
    values moved (every value once), as text and as JSON added to the analysis document."""

    buffer_bytes: int
    source: str  # "--buffer" or the device spec's figure
    dtype: str
    layers: list[LayerTraffic]
    values_moved: dict[str, int]  # the analysis's (compulsory) values moved, by layer name

    def totals(self) -> tuple[int, int, int]:
        """(MACs, values moved, best traffic) over the layers that fit."""
        fitted = [lt for lt in self.layers if lt.search]
        return (
            sum(lt.macs for lt in fitted),
            sum(self.values_moved[lt.name] for lt in fitted),
            sum(lt.total or 0 for lt in fitted),
        )

    def add_to_json(self, doc: dict[str, Any]) -> None:
        by_name = {lt.name: lt for lt in self.layers}
        for row in doc.get("layers", []):
            lt = by_name.get(row.get("name"))
            if lt is not None and lt.search:
                row["buffer_traffic"] = lt.total
                row["buffer_intensity"] = lt.search.best.intensity
        macs, moved, best = self.totals()
        doc["buffer"] = {
            "buffer_bytes": self.buffer_bytes,
            "source": self.source,
            "layers": [
                {
                    "index": lt.index,
                    "name": lt.name,
                    "type": lt.kind,
                    "macs": lt.macs,
                    "values_moved": self.values_moved[lt.name],
                    "compulsory": lt.compulsory,
                    "traffic": lt.total,
                    "intensity": lt.search.best.intensity if lt.search else None,
                    "outer": (
                        [{"dim": d, "trip": t} for d, t in lt.search.best.outer.loops]
                        if lt.search
                        else None
                    ),
                    "dataflow": lt.search.best.dataflow if lt.search else None,
                    **({"error": lt.error} if lt.error else {}),
                }
                for lt in self.layers
            ],
            "totals": {
                "macs": macs,
                "values_moved": moved,
                "traffic": best,
                "intensity": macs / best if best else 0.0,
            },
            "mapper_seconds": sum(lt.search.seconds for lt in self.layers if lt.search),
        }

    def render(self) -> str:
        header = (
            "#",
            "name",
            "type",
            "values moved",
            "best traffic",
            "x moved",
            "intensity",
            "intensity best",
            "best outer loops",
            "keeps",
        )
        rows = []
        for lt in self.layers:
            moved = self.values_moved[lt.name]
            if lt.search is None:
                rows.append(
                    (
                        str(lt.index),
                        lt.name,
                        lt.kind,
                        f"{moved:,}",
                        "does not fit",
                        "",
                        f"{lt.macs / moved:.4g}",
                        "",
                        "",
                        "",
                    )
                )
                continue
            best = lt.search.best
            rows.append(
                (
                    str(lt.index),
                    lt.name,
                    lt.kind,
                    f"{moved:,}",
                    f"{best.total:,}",
                    f"{best.total / moved:.2f}",
                    f"{lt.macs / moved:.4g}",
                    f"{best.intensity:.4g}",
                    str(best.outer) or "(none)",
                    best.dataflow.replace("-stationary", "") or "-",
                )
            )
        macs, moved, total = self.totals()
        rows.append(
            (
                "",
                "total",
                "",
                f"{moved:,}",
                f"{total:,}",
                f"{total / moved:.2f}" if moved else "",
                f"{macs / moved:.4g}" if moved else "",
                f"{macs / total:.4g}" if total else "",
                "",
                "",
            )
        )
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        left = {1, 2, 8, 9}

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                c.ljust(w) if i in left else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths))
            ).rstrip()

        rule = "  ".join("-" * w for w in widths)
        seconds = sum(lt.search.seconds for lt in self.layers if lt.search)
        lines = [
            (
                f"Traffic through a {size_text(self.buffer_bytes)} ({self.buffer_bytes:,} B) "
                f"on-chip buffer ({self.source}), {self.dtype}: the least any loop order and "
                f"tiling moves (dnnlens traffic MODEL --layer NAME shows one layer)"
            ),
            (
                "values moved: each value once (the table above); best traffic: values "
                "the best mapping moves; intensity: MACs per value"
            ),
            "",
            line(header),
            rule,
            *map(line, rows[:-1]),
            rule,
            line(rows[-1]),
            f"mapper time {seconds:.2f} s for {len(self.layers)} layers",
        ]
        lines += [f"warning: {lt.name}: {lt.error}" for lt in self.layers if lt.error]
        return "\n".join(lines)


def analyze_buffer(
    analysis: Any, buffer: int | str, device: str | None = None, halo: bool = False
) -> tuple[Any, BufferView]:
    """For ``dnnlens analyze --buffer``: the analysis with each covered layer's traffic set to
    its best mapping's (what the roofline then places it by), and the view to print.

    ``buffer`` ``"device"`` takes the on-chip buffer of the ``device`` spec."""
    from dnnlens.analysis import bytes_per_value

    if buffer == "device":
        if not device:
            raise UsageError(
                "--buffer without a size takes the on-chip buffer of --device; "
                "give --device NAME or --buffer SIZE"
            )
        from dnnlens.roofline import load_spec

        spec = load_spec(device)
        buffer_bytes, source = spec.buffer_bytes(), f"on-chip buffer of {spec.name}"
    else:
        buffer_bytes, source = parse_size(buffer), "--buffer"
    layers = network_traffic(analysis.graph, buffer_bytes, dtype=analysis.dtype, halo=halo)
    by_name = {lt.name: lt for lt in layers if lt.search}
    nbytes = bytes_per_value(analysis.dtype)
    rows = []
    for row in analysis.rows:
        lt = by_name.get(row.name)
        if lt is not None and lt.total:
            row = replace(
                row,
                values_moved=lt.total,
                bytes_moved=lt.total * nbytes,
                intensity=row.macs / lt.total,
            )
        rows.append(row)
    moved = {row.name: row.values_moved for row in analysis.rows}
    view = BufferView(buffer_bytes, source, analysis.dtype, layers, moved)
    return replace(analysis, rows=rows), view


# ---------------------------------------------------------------------------------------------
# The public entry point: a model and a layer name, as the command line takes them


@dataclass
class TrafficReport:
    """``dnnlens traffic``'s result: a given mapping's traffic, or the mapper's search."""

    model: str
    problem: Problem
    traffic: Traffic | None = None  # --outer given
    found: Search | None = None  # mapper

    def to_dict(self) -> dict[str, Any]:
        body = self.found.to_dict() if self.found else self.traffic.to_dict()  # type: ignore
        return {
            "model": self.model,
            **body,
            "dims": self.problem.sizes,
            "mode": "mapper" if self.found else "given",
        }


def traffic(
    model: Any,
    layer: str,
    buffer: int | str,
    outer: str | Sequence | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    batch: int | None = None,
    halo: bool = False,
    double_buffer: bool = False,
    dtype: str = "fp32",
) -> TrafficReport:
    """Traffic of one layer of ``model`` (an ``nn.Module``, an IR :class:`Graph` or an
    :class:`~dnnlens.analysis.Analysis`) through a ``buffer``-byte buffer: under the mapping
    ``outer`` (``"P=8,Q=2,M=4"``), or, without it, the mapper's best and the named dataflows.
    ``.to_dict()`` is the JSON of ``dnnlens traffic``."""
    from dnnlens.analysis import Analysis, analyze
    from dnnlens.ir import Graph

    buffer_bytes = parse_size(buffer)
    if isinstance(model, Analysis):
        graph = model.graph
    elif isinstance(model, Graph):
        graph = model
    else:
        graph = analyze(model, input_shape, batch=batch, dtype=dtype).graph
    problem = problem_of(graph, layer)
    report = TrafficReport(model=graph.name, problem=problem)
    if outer is not None:
        report.traffic = evaluate(
            problem, outer, buffer_bytes, dtype=dtype, halo=halo, double_buffer=double_buffer
        )
    else:
        report.found = search(
            problem, buffer_bytes, dtype=dtype, halo=halo, double_buffer=double_buffer
        )
    return report
