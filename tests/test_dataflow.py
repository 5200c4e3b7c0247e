"""The two-level data-movement model (dnnlens.dataflow) against independent truths.

* hand-derived counts, the arithmetic in the comments;
* a brute-force simulator written here from the issue's rule alone: a literal loop over the
  outer iterations that enumerates every MAC of the current tile to find the values each
  tensor's tile needs, keeps one tile per tensor in the buffer, fetches a tile again whenever
  an indexing loop moves to another one (only the missing values when halo reuse applies),
  and writes outputs back (reading partial sums back) whenever their tile leaves. hypothesis
  checks the closed form against it on random small layers and mappings;
* an exhaustive mapper (every tile size, every loop order) for the mapper's properties.
"""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnnlens.cli import main
from dnnlens.dataflow import (
    DIMS,
    RELEVANT,
    Mapping,
    Problem,
    compulsory,
    divisors,
    evaluate,
    no_reuse,
    parse_size,
    search,
)
from dnnlens.errors import UsageError

BIG = 1 << 40  # a buffer that holds anything in these tests


# ---------------------------------------------------------------------------------------------
# The brute-force simulator


def tile_values(p: Problem, tile: dict[str, int], at: dict[str, int]) -> dict[str, frozenset]:
    """The values of each tensor the MACs of the tile at outer indices ``at`` touch, found by
    running those MACs: weight (g, m, c, r, s), input (n, channel, row, column) unless it is
    padding, output (n, g, m, p, q)."""
    ranges = {d: range(at[d] * tile[d], (at[d] + 1) * tile[d]) for d in DIMS}
    weights, inputs, outputs = set(), set(), set()
    for g, n, m, c, pp, q, r, s in itertools.product(*(ranges[d] for d in DIMS)):
        weights.add((g, m, c, r, s))
        outputs.add((n, g, m, pp, q))
        row = pp * p.stride[0] + r * p.dilation[0] - p.pad[0]
        col = q * p.stride[1] + s * p.dilation[1] - p.pad[1]
        if 0 <= row < p.rows and 0 <= col < p.cols:
            inputs.add((n, g * p.C + c, row, col))
    return {
        "weights": frozenset(weights),
        "inputs": frozenset(inputs),
        "outputs": frozenset(outputs),
    }


def simulate(p: Problem, mapping: Mapping, halo: bool = False) -> dict[str, int]:
    """Reads per tensor and output writes, by walking the outer iterations one by one."""
    loops = [(d, t) for d, t in mapping.loops if t > 1]  # a loop of one trip never moves
    trips = {d: t for d, t in mapping.loops}
    tile = {d: p.size(d) // trips.get(d, 1) for d in DIMS}
    resident: dict[str, tuple | None] = {t: None for t in RELEVANT}  # which tile, by index
    held: dict[str, frozenset] = {t: frozenset() for t in RELEVANT}  # and its values
    visited_outputs: set[tuple] = set()
    reads = {"weights": 0, "inputs": 0, "outputs": 0}
    writes = 0
    previous: tuple | None = None
    for index in itertools.product(*(range(t) for _, t in loops)):
        at = {d: 0 for d in DIMS}
        at.update({d: i for (d, _), i in zip(loops, index)})
        moved = (
            next((k for k in range(len(loops)) if index[k] != previous[k]), None)
            if previous is not None
            else None
        )
        previous = index
        need = tile_values(p, tile, at)
        for tensor, relevant in RELEVANT.items():
            which = tuple(at[d] for d in DIMS if d in relevant)
            if which == resident[tensor]:
                continue  # only loops that do not index this tensor moved: it stays
            if tensor == "outputs":
                if resident[tensor] is not None:
                    writes += len(held[tensor])  # the tile leaves: (partial) sums go out
                if which in visited_outputs:
                    reads["outputs"] += len(need[tensor])  # partial sums come back in
                visited_outputs.add(which)
            elif tensor == "inputs" and halo and moved is not None and _slides(loops, moved):
                reads["inputs"] += len(need[tensor] - held[tensor])  # only the new rows/cols
            else:
                reads[tensor] += len(need[tensor])
            resident[tensor], held[tensor] = which, need[tensor]
    writes += len(held["outputs"])
    return {**reads, "writes": writes}


def _slides(loops: list[tuple[str, int]], moved: int) -> bool:
    """The loop that advanced slides the input window: it is P, Q, R or S, and every loop
    inside it leaves the input alone (so it is the input's innermost indexing loop)."""
    return loops[moved][0] in "PQRS" and all(
        d not in RELEVANT["inputs"] for d, _ in loops[moved + 1 :]
    )


# ---------------------------------------------------------------------------------------------
# Strategies: small layers and mappings


@st.composite
def problems(draw: st.DrawFn, kernel_max: int = 3) -> Problem:
    """A small conv (or, with a 1x1 kernel on a 1x1 input, a fc layer) obeying PyTorch's output
    size rule ``P = (H + 2 pad - dilation (R - 1) - 1) // stride + 1``."""
    g, n = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    m, c = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    axes = []
    for _ in range(2):
        k = draw(st.integers(1, kernel_max))
        stride, dilation, pad = (
            draw(st.integers(1, 3)),
            draw(st.integers(1, 2)),
            draw(st.integers(0, 2)),
        )
        reach = dilation * (k - 1) + 1
        size = draw(st.integers(max(1, reach - 2 * pad), 7))
        out = (size + 2 * pad - reach) // stride + 1
        axes.append((k, stride, dilation, pad, size, out))
    (r, sr, dr, pr, h, pp), (s, sc, dc, pc, w, q) = axes
    return Problem(
        "layer",
        "conv",
        G=g,
        N=n,
        M=m,
        C=c,
        P=pp,
        Q=q,
        R=r,
        S=s,
        stride=(sr, sc),
        dilation=(dr, dc),
        pad=(pr, pc),
        rows=h,
        cols=w,
    )


@st.composite
def mappings(draw: st.DrawFn, p: Problem) -> Mapping:
    dims = draw(st.permutations(DIMS))
    count = draw(st.integers(0, len(DIMS)))
    return Mapping(tuple((d, draw(st.sampled_from(divisors(p.size(d))))) for d in dims[:count]))


@st.composite
def problem_and_mapping(draw: st.DrawFn) -> tuple[Problem, Mapping]:
    p = draw(problems())
    return p, draw(mappings(p))


# ---------------------------------------------------------------------------------------------
# The closed form against the simulator


@settings(max_examples=150, deadline=None)
@given(problem_and_mapping(), st.booleans())
def test_closed_form_equals_the_simulator(case: tuple[Problem, Mapping], halo: bool) -> None:
    p, mapping = case
    got = evaluate(p, mapping, BIG, halo=halo)
    sim = simulate(p, mapping, halo)
    assert got.reads == {k: sim[k] for k in ("weights", "inputs", "outputs")}
    assert got.writes == {"outputs": sim["writes"]}


@settings(max_examples=60, deadline=None)
@given(problem_and_mapping(), st.booleans())
def test_every_mapping_lies_between_compulsory_and_no_reuse(
    case: tuple[Problem, Mapping], halo: bool
) -> None:
    p, mapping = case
    total = evaluate(p, mapping, BIG, halo=halo).total
    # compulsory from the simulator's own enumeration: every value the layer touches, once
    whole = tile_values(p, {d: p.size(d) for d in DIMS}, {d: 0 for d in DIMS})
    assert sum(compulsory(p).values()) == sum(len(v) for v in whole.values())
    assert sum(compulsory(p).values()) <= total <= sum(no_reuse(p).values())


# ---------------------------------------------------------------------------------------------
# Hand-derived counts


FC = Problem("fc", "fc", N=4, C=6, M=8)  # weights 8*6 = 48, inputs 4*6 = 24, outputs 4*8 = 32


@pytest.mark.parametrize(
    "outer, reads, writes",
    [
        # N outer, M inner: the weights' innermost indexing loop is M, N sits outside it and does
        # not index them: weights 48 * 2 = 96; inputs once (M inside does not index them) 24;
        # outputs once 32. Total 96 + 24 + 32 = 152.
        ("N=2,M=2", {"weights": 96, "inputs": 24, "outputs": 0}, 32),
        # M outer, N inner: weights once 48; inputs again for each M: 24 * 2 = 48; outputs 32.
        ("M=2,N=2", {"weights": 48, "inputs": 48, "outputs": 0}, 32),
        # C outer (a reduction): outputs leave as partial sums after each C step: written 2 * 32 =
        # 64, read back (2 - 1) * 32 = 32; weights 48; inputs 24 (M inside does not index them).
        ("C=2,M=2", {"weights": 48, "inputs": 24, "outputs": 32}, 64),
        # M outer, C inner: outputs stay over C (inside M): written once 32, no read back; inputs
        # again for each M: 48; weights 48.
        ("M=2,C=2", {"weights": 48, "inputs": 48, "outputs": 0}, 32),
        # N outer, C inner: weights again for each N: 96; inputs 24; outputs 32.
        ("N=2,C=2", {"weights": 96, "inputs": 24, "outputs": 0}, 32),
        # C outer, N inner: weights once 48; inputs 24; outputs are left after each N step with C
        # outside: written 2 * 32 = 64, read back 32.
        ("C=2,N=2", {"weights": 48, "inputs": 24, "outputs": 32}, 64),
    ],
)
def test_fc_every_order_of_two_loops(outer: str, reads: dict, writes: int) -> None:
    t = evaluate(FC, outer, BIG)
    assert t.reads == reads and t.writes == {"outputs": writes}
    assert t.total == sum(reads.values()) + writes
    assert t.compulsory == 48 + 24 + 32
    assert simulate(FC, Mapping.parse(outer))["writes"] == writes


# A 3x3 conv, one channel in and out, 6x6 input, no padding: P = Q = 4 output rows and columns;
# weights 9, inputs 36, outputs 16.
CONV = Problem("conv", "conv", M=2, C=1, P=4, Q=4, R=3, S=3, rows=6, cols=6)


def test_conv_halo_reuse_on_and_off() -> None:
    # P=4: one output row per tile, 3 input rows x 6 columns = 18 values each.
    # Off: 4 tiles x 18 = 72. On: 18, then 1 new row (6 values) per step: 18 + 3 * 6 = 36.
    assert evaluate(CONV, "P=4", BIG).reads["inputs"] == 72
    assert evaluate(CONV, "P=4", BIG, halo=True).reads["inputs"] == 36
    # P=2: rows 0-3 then 2-5: off 2 x 4 x 6 = 48; on 24 + rows 4, 5 (12) = 36.
    assert evaluate(CONV, "P=2", BIG).reads["inputs"] == 48
    assert evaluate(CONV, "P=2", BIG, halo=True).reads["inputs"] == 36
    # M (does not index inputs) inside P: still one slide per P step: 36.
    assert evaluate(CONV, "P=4,M=2", BIG, halo=True).reads["inputs"] == 36
    # M outside P: the whole slide again for each of the 2 output channels: 72; off: 144.
    assert evaluate(CONV, "M=2,P=4", BIG, halo=True).reads["inputs"] == 72
    assert evaluate(CONV, "M=2,P=4", BIG).reads["inputs"] == 144
    # Q inside P: Q is the input's innermost indexing loop; it slides columns, P rows do not:
    # 4 x 4 tiles of 3x3 = 144 off; on: per P row, 3x3 then 3 new columns of 3: 9 + 3 * 3 = 18,
    # times 4 rows = 72.
    assert evaluate(CONV, "P=4,Q=4", BIG).reads["inputs"] == 144
    assert evaluate(CONV, "P=4,Q=4", BIG, halo=True).reads["inputs"] == 72


def test_conv_partial_sums_when_c_is_outer() -> None:
    # 2 input channels, 2 x 4 x 4 = 32 outputs, weights 2 x 2 x 9 = 36, inputs 2 x 36 = 72.
    p = Problem("conv", "conv", M=2, C=2, P=4, Q=4, R=3, S=3, rows=6, cols=6)
    # C=2 alone: no outer loop indexes the outputs, so the whole output stays in the buffer
    # while C runs: written once, never read back.
    t = evaluate(p, "C=2", BIG)
    assert t.reads == {"weights": 36, "inputs": 72, "outputs": 0} and t.writes["outputs"] == 32
    # C=2 outside P=2: the output tile changes with P, and C outside it brings each back as a
    # partial sum: written 2 x 32 = 64, read back (2 - 1) x 32 = 32. Inputs: per channel two
    # tiles of rows 0-3 and 2-5, 4 rows x 6 = 24 each: 2 x 2 x 24 = 96. Weights once (P inside
    # C does not index them): 36. Total 36 + 96 + 32 + 64 = 228.
    t = evaluate(p, "C=2,P=2", BIG)
    assert t.reads == {"weights": 36, "inputs": 96, "outputs": 32}
    assert t.writes == {"outputs": 64} and t.total == 228
    # P=2 outside C=2: each output tile stays while C runs inside it: written once, 32.
    assert evaluate(p, "P=2,C=2", BIG).reads["outputs"] == 0
    # R=3 (kernel rows, also a reduction) outside Q=2: written 3 x 32 = 96, read back 64.
    # Inputs: kernel row j reads rows j..j+3 (4 rows), column tiles 0-3 and 2-5 (4 + 4):
    # 2 channels x (3 x 4) x 8 = 192.
    t = evaluate(p, "R=3,Q=2", BIG)
    assert (t.writes["outputs"], t.reads["outputs"], t.reads["inputs"]) == (96, 64, 192)


def test_padding_is_never_fetched() -> None:
    # The course's conv1: 5x5, padding 2, 28x28 -> 28x28, 1 -> 4 channels. P=28 (one output
    # row per tile): output row p reads input rows p-2..p+2 clipped to 0..27:
    # 3 + 4 + 24 * 5 + 4 + 3 = 134 rows x 28 columns = 3,752 values; weights 100 once, outputs
    # 4 x 784 = 3,136 once: 6,988. With halo reuse: 3 rows, then one new row for p = 1..25,
    # none for 26, 27: 28 rows x 28 = 784 = the whole input.
    p = Problem("conv1", "conv", M=4, C=1, P=28, Q=28, R=5, S=5, pad=(2, 2), rows=28, cols=28)
    assert evaluate(p, "P=28", BIG).reads == {"weights": 100, "inputs": 3752, "outputs": 0}
    assert evaluate(p, "P=28", BIG).total == 6988
    assert evaluate(p, "P=28", BIG, halo=True).reads["inputs"] == 784
    assert sum(compulsory(p).values()) == 100 + 784 + 3136  # the notebook's 4,020


def test_strided_1x1_conv_reads_only_the_rows_it_uses() -> None:
    # 1x1 kernel, stride 2, 8x8 input, 3 channels -> 4x4: rows and columns 0, 2, 4, 6 only;
    # compulsory inputs 3 x 4 x 4 = 48 (the notebook's values moved count all 3 x 64 = 192).
    p = Problem("down", "conv", M=2, C=3, P=4, Q=4, stride=(2, 2), rows=8, cols=8)
    assert compulsory(p)["inputs"] == 48
    # the footprint of an un-tiled input is those 48 values, not the 7 x 7 box around them
    assert evaluate(p, "", BIG).footprint["inputs"] == 48


def test_dilated_kernel_rows() -> None:
    # 3 kernel rows at dilation 2 on an output row: input rows p, p+2, p+4 -- 3 rows, not the
    # 5 of the box (P_tile - 1) * stride + (R - 1) * dilation + 1 = 0 + 4 + 1.
    p = Problem("dil", "conv", P=3, Q=1, R=3, S=1, dilation=(2, 1), rows=7, cols=1)
    assert evaluate(p, "P=3", BIG).footprint["inputs"] == 3
    # the whole output (3 rows): rows 0..6 all used, the box formula 2 + 4 + 1 = 7
    assert evaluate(p, "", BIG).footprint["inputs"] == 7


def test_a_tile_that_does_not_fit_names_each_footprint() -> None:
    # No outer loops: weights 18 + inputs 36 + outputs 32 = 86 values = 344 B in fp32.
    with pytest.raises(UsageError) as err:
        evaluate(CONV, "", 300)
    message = str(err.value)
    assert "weights 72 B" in message and "inputs 144 B" in message
    assert "outputs 128 B" in message and "344 B" in message and "300-byte" in message
    evaluate(CONV, "", 344)  # exactly fits
    with pytest.raises(UsageError, match="x 2 \\(double buffering\\) = 688 B"):
        evaluate(CONV, "", 344, double_buffer=True)


@pytest.mark.parametrize(
    "outer, fragment",
    [
        ("P=3", "P=3 does not divide P = 4"),
        ("X=2", "unknown loop dimension 'X'"),
        ("P=2,P=2", "appears twice"),
        ("P=two", "--outer must be loops like"),
        ("P", "--outer must be loops like"),
    ],
)
def test_bad_mappings(outer: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        evaluate(CONV, outer, BIG)


@pytest.mark.parametrize(
    "text, value",
    [
        ("16kB", 16_000),
        ("4MB", 4_000_000),
        ("9" * 400 + "GB", int("9" * 400) * 10**9),
        ("2MiB", 2 * 2**20),
        ("512", 512),
        ("64 KiB", 65536),
        ("1.5kB", 1500),
    ],
)
def test_sizes(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["0", "0kB", "", "lots", "-4kB", "4 parsecs"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(UsageError, match="--buffer must be"):
        parse_size(text)


# ---------------------------------------------------------------------------------------------
# From the IR: the loop nest of real layers


def test_problems_from_the_ir_count_the_ops_macs() -> None:
    """Every conv, fc and matmul of a few networks: the loop nest's MACs equal the operator's
    own count (conv 1-d, grouped, depthwise, dilated, strided; fc on a batch; batched matmul)."""
    import torch
    from torch import nn

    from dnnlens.importers.torch import import_torch

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1d = nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2)
            self.grouped = nn.Conv2d(6, 8, 3, padding=1, groups=2)
            self.depthwise = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
            self.fc = nn.Linear(8 * 2 * 2, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv1d(x)  # (2, 6, 16)
            y = y.reshape(2, 6, 4, 4)
            y = self.depthwise(self.grouped(y))
            z = y.flatten(2) @ y.flatten(2).transpose(1, 2)  # batched matmul (2, 8, 8)
            return self.fc(y.flatten(1)) + z.sum()

    graph = import_torch(Mixed(), (2, 4, 34))
    kinds = {}
    for node in graph:
        params = {role: q.shape for role, q in node.params.items()}
        if node.kind in ("conv", "fc", "matmul"):
            p = Problem.from_node(node)
            assert p.macs == node.op.macs(node.input_shapes, node.output_shape, params)
            kinds[node.name] = p
    dw = kinds["depthwise"]
    assert (dw.G, dw.M, dw.C, dw.P, dw.stride) == (8, 1, 1, 2, (2, 2))
    c1 = kinds["conv1d"]
    assert (c1.P, c1.R, c1.Q, c1.S, c1.cols, c1.stride[1], c1.dilation[1]) == (
        1,
        1,
        16,
        3,
        34,
        2,
        2,
    )
    matmul = next(p for p in kinds.values() if p.kind == "matmul")
    assert (matmul.G, matmul.N, matmul.C, matmul.M) == (2, 8, 4, 8)


def test_a_kind_the_model_does_not_cover_lists_the_covered_ones() -> None:
    from dnnlens.dataflow import problem_of
    from dnnlens.importers.torch import import_torch
    from dnnlens.ir import Graph
    from dnnlens.models import Net

    graph = import_torch(Net(), (1, 1, 28, 28))
    assert isinstance(graph, Graph)
    with pytest.raises(
        UsageError,
        match="layer 'pool' is a maxpool; the data-flow model covers conv \\(1-d and 2-d",
    ):
        problem_of(graph, "pool")
    with pytest.raises(UsageError, match="no layer named 'conv9'.*conv1, conv2, fc1, fc2"):
        problem_of(graph, "conv9")


# ---------------------------------------------------------------------------------------------
# The mapper


def exhaustive_best(p: Problem, buffer: int, halo: bool, only: str | None = None) -> int | None:
    """The least traffic over every tile size and every order of the loops that iterate
    (``only``: orders that keep that tensor across the innermost loop, the named dataflow);
    None when nothing fits."""
    best = None
    for combo in itertools.product(*(divisors(p.size(d)) for d in DIMS)):
        trips = dict(zip(DIMS, combo))
        active = [(d, t) for d, t in trips.items() if t > 1]
        for order in itertools.permutations(active):
            if only and not _keeps(order, only):
                continue
            try:
                total = evaluate(p, order, buffer, halo=halo).total
            except UsageError:
                break  # does not fit: no order of these tiles does
            best = total if best is None else min(best, total)
    return best


def _keeps(order: tuple, tensor: str) -> bool:
    """The innermost loop that iterates does not index ``tensor`` (or no loop iterates)."""
    active = [d for d, t in order if t > 1]
    return not active or active[-1] not in RELEVANT[tensor]


@st.composite
def small_problems(draw: st.DrawFn) -> Problem:
    """Layers with at most five dimensions above 1 (so every order can be tried)."""
    p = draw(problems(kernel_max=2))
    big = [d for d in DIMS if p.size(d) > 1]
    if len(big) > 5:
        keep = draw(st.permutations(big))[:5]
        # the input keeps its size: a smaller P or R just reads fewer of its rows
        p = Problem(
            p.name,
            p.kind,
            **{d: (p.size(d) if d in keep else 1) for d in DIMS},
            stride=p.stride,
            dilation=p.dilation,
            pad=p.pad,
            rows=p.rows,
            cols=p.cols,
        )
    return p


@pytest.mark.slow
@settings(max_examples=80, deadline=None)
@given(small_problems(), st.integers(3, 120), st.booleans())
def test_mapper_equals_exhaustive_search(p: Problem, values: int, halo: bool) -> None:
    """The mapper scores a few order families per tile size; no loop order of any tile size
    does better, and each named dataflow is the best order of its kind."""
    buffer = values * 4
    try:
        found = search(p, buffer, halo=halo)
    except UsageError:
        assert exhaustive_best(p, buffer, halo) is None
        return
    assert found.exhaustive
    assert found.best.total == exhaustive_best(p, buffer, halo)
    for name, tensor in (
        ("weight-stationary", "weights"),
        ("output-stationary", "outputs"),
        ("input-stationary", "inputs"),
    ):
        named = found.dataflows[name]
        truth = exhaustive_best(p, buffer, halo, only=tensor)
        if named is None:
            assert truth is None
        else:
            assert _keeps(named.outer.loops, tensor) and named.total == truth


@settings(max_examples=40, deadline=None)
@given(problem_and_mapping(), st.booleans(), st.booleans())
def test_mapper_bounds(case: tuple[Problem, Mapping], halo: bool, double: bool) -> None:
    """Best <= every named dataflow and every mapping that fits; >= compulsory; = compulsory
    (with no outer loop) once the buffer holds the whole layer."""
    p, mapping = case
    given_one = evaluate(p, mapping, BIG, halo=halo, double_buffer=double)
    buffer = given_one.needed_bytes  # the given mapping just fits
    found = search(p, buffer, halo=halo, double_buffer=double)
    assert found.best.total <= given_one.total
    assert all(found.best.total <= t.total for t in found.dataflows.values() if t)
    assert sum(found.compulsory.values()) <= found.best.total <= sum(found.no_reuse.values())
    whole = evaluate(p, "", BIG, double_buffer=double).needed_bytes
    everything = search(p, whole, halo=halo, double_buffer=double)
    assert everything.best.total == sum(compulsory(p).values())
    assert everything.best.outer.active() == []


def test_mapper_prunes_large_layers_and_stays_within_bounds() -> None:
    # resnet18's layer4 3x3 conv at batch 256: divisors N 9, M 10, C 10, P 2, Q 2, R 2, S 2:
    # 9 * 10 * 10 * 2**4 = 14,400 combinations; above a limit of 5,000 the kernel stays whole
    # (9 * 10 * 10 * 2 * 2 = 3,600).
    p = Problem("l4", "conv", N=256, M=512, C=512, P=7, Q=7, R=3, S=3, pad=(1, 1), rows=7, cols=7)
    found = search(p, "1MiB", limit=5_000)
    assert not found.exhaustive and "kernel R, S kept whole" in found.pruning
    assert sum(found.compulsory.values()) < found.best.total
    assert found.best.needed_bytes <= 2**20
    assert all(found.best.total <= t.total for t in found.dataflows.values() if t)


def test_buffer_too_small_for_any_tile() -> None:
    # the smallest tiles: one weight, one input, one output = 3 values = 12 B in fp32
    with pytest.raises(UsageError, match="even the smallest tiles of conv need 12 B"):
        search(CONV, 11)
    search(CONV, 12)


# ---------------------------------------------------------------------------------------------
# The command line


def test_cli_given_mapping_json(capsys: pytest.CaptureFixture[str]) -> None:
    # conv1 of the course network under P=28 (see test_padding_is_never_fetched): 6,988 values
    assert (
        main(
            [
                "traffic",
                "seed",
                "--layer",
                "conv1",
                "--buffer",
                "16kB",
                "--outer",
                "P=28",
                "--json",
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    for key in (
        "layer",
        "macs",
        "buffer_bytes",
        "outer",
        "tile",
        "footprint_bytes",
        "reads",
        "writes",
        "total",
        "compulsory",
        "intensity",
    ):
        assert key in doc
    assert doc["layer"] == "conv1" and doc["macs"] == 78_400 and doc["buffer_bytes"] == 16_000
    assert doc["outer"] == [{"dim": "P", "trip": 28}]
    assert doc["tile"]["P"] == 1 and doc["tile"]["Q"] == 28
    # tile footprints: weights 4*5*5 = 100 values, inputs 5 rows x 28 = 140, outputs 4 x 28
    assert doc["footprint_bytes"]["weights"] == 400
    assert doc["footprint_bytes"]["inputs"] == 560
    assert doc["footprint_bytes"]["outputs"] == 448
    assert doc["reads"] == {"weights": 100, "inputs": 3752, "outputs": 0}
    assert doc["writes"] == {"outputs": 3136}
    assert doc["total"] == 6988 and doc["compulsory"] == 4020
    assert doc["intensity"] == pytest.approx(78_400 / 6988)


def test_cli_mapper_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["traffic", "seed", "--layer", "fc1", "--buffer", "4kB", "--halo"]) == 0
    out = capsys.readouterr().out
    for word in (
        "best",
        "weight-stationary",
        "output-stationary",
        "input-stationary",
        "compulsory",
        "no reuse",
    ):
        assert word in out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--layer", "conv7", "--buffer", "16kB"], "no layer named 'conv7'"),
        (["--layer", "conv1", "--buffer", "16kB", "--outer", "P=3"], "P=3 does not divide P = 28"),
        (["--layer", "conv1", "--buffer", "0"], "--buffer must be at least 1 byte"),
        (["--layer", "conv1", "--buffer", "16 parsecs"], "--buffer must be a size such as 16kB"),
        (
            ["--layer", "relu", "--buffer", "16kB"],
            ("layer 'relu' is a relu; the data-flow model covers conv (1-d and 2-d"),
        ),
        (["--layer", "conv1", "--buffer", "1kB", "--outer", ""], "do not fit the 1,000-byte"),
    ],
)
def test_cli_bad_input(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["traffic", "seed", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]


# ---------------------------------------------------------------------------------------------
# analyze --buffer, --device, the Python API


def test_analyze_buffer_json_adds_best_traffic(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "seed", "--buffer", "4kB", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["buffer"]["buffer_bytes"] == 4000
    names = [layer["name"] for layer in doc["buffer"]["layers"]]
    assert names == ["conv1", "conv2", "fc1", "fc2"]
    fc1 = next(layer for layer in doc["buffer"]["layers"] if layer["name"] == "fc1")
    # fc1 (392 -> 256, batch 1) moves its 100,352 weights + 392 inputs + 256 outputs = 101,000
    # values once: the 256 outputs stay while C runs outside in small steps (C tile 2: 256
    # outputs + 512 weights + 2 inputs = 770 values = 3,080 B <= 4,000 B).
    assert fc1["values_moved"] == fc1["compulsory"] == fc1["traffic"] == 101_000
    row = next(layer for layer in doc["layers"] if layer["name"] == "conv2")
    best = next(layer for layer in doc["buffer"]["layers"] if layer["name"] == "conv2")
    assert row["buffer_traffic"] == best["traffic"] >= best["compulsory"] == 3152
    assert row["buffer_intensity"] == pytest.approx(156_800 / best["traffic"])


def test_analyze_buffer_of_a_device_places_the_roofline(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dnnlens.analysis import analyze
    from dnnlens.dataflow import analyze_buffer
    from dnnlens.models import Net
    from dnnlens.roofline import load_spec, roofline

    spec = load_spec("stm32h743")
    assert spec.buffer_bytes() == 128 * 1024 and "DTCM" in spec.on_chip_buffer.source
    result = analyze(Net(), (1, 1, 28, 28))
    placed, view = analyze_buffer(result, "2kB")
    conv2 = next(lt for lt in view.layers if lt.name == "conv2")
    roof = {layer.name: layer for layer in roofline(placed, spec).layers}
    # the roofline's bytes for conv2 are its best traffic through the 2 kB buffer, 4 B each
    assert roof["conv2"].bytes_moved == conv2.total * 4 > 3152 * 4
    assert roof["relu"].bytes_moved == result.rows[1].bytes_moved  # not covered: unchanged
    assert main(["analyze", "seed", "--device", "stm32h743", "--buffer"]) == 0
    out = capsys.readouterr().out
    assert "on-chip buffer of stm32h743" in out and "Roofline on stm32h743" in out
    assert main(["analyze", "seed", "--buffer"]) == 2
    assert (
        "--buffer without a size takes the on-chip buffer of --device" in capsys.readouterr().err
    )


def test_python_api_returns_the_json(capsys: pytest.CaptureFixture[str]) -> None:
    import dnnlens
    from dnnlens.models import Net

    report = dnnlens.traffic(Net(), "conv1", "16kB", "P=28", input_shape=(1, 1, 28, 28))
    assert (
        main(
            [
                "traffic",
                "seed",
                "--layer",
                "conv1",
                "--buffer",
                "16kB",
                "--outer",
                "P=28",
                "--json",
            ]
        )
        == 0
    )
    cli = json.loads(capsys.readouterr().out)
    assert (cli.pop("model"), report.to_dict().pop("model")) == ("seed", "Net")
    api = json.loads(json.dumps(report.to_dict()))
    api.pop("model")
    assert cli == api
    found = dnnlens.traffic(Net(), "fc2", 2**20, input_shape=(1, 1, 28, 28)).to_dict()
    # 1 MiB holds all of fc2 (2,560 + 256 + 10 values): compulsory, no outer loop
    assert found["total"] == found["compulsory"] == 2_826 and found["outer"] == []
    assert set(found["dataflows"]) == {
        "weight-stationary",
        "output-stationary",
        "input-stationary",
    }


def test_every_shipped_device_cites_its_on_chip_buffer(tmp_path) -> None:
    from dnnlens.roofline import known_devices, load_spec, save_spec

    for name in known_devices():
        spec = load_spec(name)
        assert spec.on_chip_buffer is not None and len(spec.on_chip_buffer.source) > 20
        assert spec.on_chip_buffer.value <= spec.on_chip_memory.value
        again = load_spec(save_spec(spec, tmp_path / f"{name}.toml"))
        assert again.on_chip_buffer == spec.on_chip_buffer


@pytest.mark.parametrize(
    "a, b, dims",
    [
        # A (8, 16) @ B (2, 16, 4): only B has a batch, so B^T @ A^T: N = 2 * 4, C = 16, M = 8
        ((8, 16), (2, 16, 4), (1, 8, 8, 16)),
        # A (3, 5, 16) @ B (16, 4): A's batch folds into N = 3 * 5
        ((3, 5, 16), (16, 4), (1, 15, 4, 16)),
        # shared batch (2, 3): G = 6
        ((2, 3, 5, 16), (2, 3, 16, 4), (6, 5, 4, 16)),
        # vectors: (16,) @ (16, 4) is one row
        ((16,), (16, 4), (1, 1, 4, 16)),
    ],
)
def test_matmul_operands(a: tuple, b: tuple, dims: tuple) -> None:
    from dnnlens.ir import Node
    from dnnlens.ops.matmul import MatMul

    op = MatMul()
    out = op.output_shape([a, b], {})
    p = Problem.from_node(Node("mm", op, ["a", "b"], [a, b], out))
    assert (p.G, p.N, p.M, p.C) == dims
    assert p.macs == op.macs([a, b], out, {})
    with pytest.raises(UsageError, match="whose batch dimensions broadcast"):
        Problem.from_node(Node("mm", op, ["a", "b"], [(4, 1, 8, 16), (3, 16, 8)], (4, 3, 8, 8)))


def test_whole_layer_in_the_buffer_moves_the_notebooks_values() -> None:
    """Once the buffer holds a whole layer, the mapper's best is the notebook's values moved
    (each input, weight and output once; the analysis counts it from the operator), and one
    byte less forces an outer loop and more traffic than that for these layers."""
    from dnnlens.analysis import analyze
    from dnnlens.dataflow import network_traffic
    from dnnlens.models import Net

    result = analyze(Net(), (2, 1, 28, 28))
    moved = {row.name: row.values_moved for row in result.rows}
    for node in result.graph:
        if node.kind not in ("conv", "fc"):
            continue
        p = Problem.from_node(node)
        whole = evaluate(p, "", BIG).needed_bytes
        found = search(p, whole)
        assert found.best.total == moved[node.name] and found.best.outer.active() == []
        tighter = search(p, whole - 1)
        assert tighter.best.total >= moved[node.name] and tighter.best.outer.active()
    # every layer at once, as analyze --buffer does: a huge buffer gives the notebook's numbers
    for layer in network_traffic(result.graph, BIG):
        assert layer.total == moved[layer.name]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="PQRSMCNGX=,0123456789 -kKMiBb.", max_size=16))
def test_any_outer_or_size_text_is_a_mapping_or_one_usage_error(text: str) -> None:
    """Whatever a user types for --outer or --buffer: a result or a UsageError, nothing else."""
    for call in (lambda: evaluate(CONV, text, BIG), lambda: parse_size(text)):
        try:
            call()
        except UsageError as exc:
            assert "\n" not in str(exc)
