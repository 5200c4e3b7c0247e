"""Fuzzing the three readers of untrusted files: the IDX reader, the spec-file parser and the
checkpoint loader. Whatever bytes or documents come in, the only exceptions allowed out are
typed :class:`~dnnlens.errors.DnnlensError` subclasses with a one-line message: no NumPy, zip,
pickle or TOML traceback, and no hang (each example runs under a wall-clock alarm).

Bounded for CI: a fixed number of examples per target, derandomised so a run is reproducible,
the whole file well under a minute on two cores.
"""

from __future__ import annotations

import gzip
import io
import signal
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnnlens.errors import (
    CheckpointError,
    DataError,
    DnnlensError,
    ModelError,
    ShapeError,
    SpecError,
)

#: One shared profile: deterministic, no per-example deadline (the first torch.load is slow),
#: bounded example counts (set per test).
FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Seconds one example may take before it counts as a hang.
HANG_SECONDS = 10


@contextmanager
def no_hang(seconds: int = HANG_SECONDS) -> Iterator[None]:
    """Fail (instead of waiting forever) if the body runs longer than ``seconds``."""

    def timeout(signum: int, frame: Any) -> None:
        raise AssertionError(f"hang: the reader took more than {seconds} s on one input")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def assert_clear(exc: DnnlensError, *types: type[DnnlensError]) -> None:
    """A typed error of one of ``types`` whose message is one non-empty line."""
    assert isinstance(exc, types), f"{type(exc).__name__} is not one of {types}: {exc}"
    message = str(exc)
    assert message.strip(), "empty error message"
    assert "\n" not in message, f"multi-line error message: {message!r}"
    assert "Traceback" not in message


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """One folder for the whole module: hypothesis re-runs a test body many times, so the
    files are rewritten in place rather than made per example."""
    with tempfile.TemporaryDirectory(prefix="dnnlens-fuzz-") as folder:
        yield Path(folder)


# ---------------------------------------------------------------------------------------------
# IDX reader


def idx_bytes(type_code: int, dims: list[int], payload: bytes) -> bytes:
    """A header as the IDX format writes it (0, 0, type, ndim, big-endian uint32 dims)."""
    return bytes([0, 0, type_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


#: Mostly plausible headers (valid type codes, small dims) with wrong lengths, plus noise.
idx_inputs = st.one_of(
    st.binary(max_size=64),
    st.builds(
        idx_bytes,
        st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0x07, 0xFF]),
        st.lists(st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1)), max_size=4),
        st.binary(max_size=96),
    ),
)


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    """``data`` with bytes overwritten at (position mod length, value) and optionally cut."""
    out = bytearray(data)
    for position, value in edits:
        if out:
            out[position % len(out)] = value
    return bytes(out if cut is None else out[: cut % (len(out) + 1)])


@settings(FUZZ, max_examples=300)
@given(data=idx_inputs, compress=st.booleans())
def test_read_idx_gives_arrays_or_data_errors(scratch: Path, data: bytes, compress: bool) -> None:
    from dnnlens.data import read_idx

    path = scratch / ("fuzz.idx.gz" if compress else "fuzz.idx")
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    with no_hang():
        try:
            array = read_idx(path)
        except DnnlensError as exc:
            assert_clear(exc, DataError)
            return
    # Accepted: then the header must have described exactly these bytes.
    assert data[:2] == b"\0\0" and array.ndim == data[3]
    assert len(data) == 4 + 4 * array.ndim + array.nbytes


@settings(FUZZ, max_examples=150)
@given(
    edits=st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), max_size=4),
    cut=st.none() | st.integers(0, 2**16),
)
def test_read_idx_on_mutated_gzip_gives_data_errors(
    scratch: Path, edits: list[tuple[int, int]], cut: int | None
) -> None:
    """A real, compressed IDX file with bytes flipped or cut off (CRC, deflate stream, size)."""
    from dnnlens.data import read_idx

    good = gzip.compress(idx_bytes(0x08, [3, 4, 4], bytes(range(48))), mtime=0)
    path = scratch / "mutated-idx3-ubyte.gz"
    path.write_bytes(mutate(good, edits, cut))
    with no_hang():
        try:
            read_idx(path)
        except DnnlensError as exc:
            assert_clear(exc, DataError)


# ---------------------------------------------------------------------------------------------
# Spec files

#: The parser's vocabulary, so that examples reach past the first key check.
LAYER_KEYS = [
    "conv",
    "convtranspose",
    "pool",
    "maxpool",
    "avgpool",
    "adaptivepool",
    "globalpool",
    "fc",
    "flatten",
    "reshape",
    "permute",
    "softmax",
    "dropout",
    "concat",
    "add",
    "mul",
    "relu",
    "gelu",
    "batchnorm",
    "layernorm",
    "bogus",
]
OPTION_KEYS = [
    "stride",
    "padding",
    "groups",
    "dilation",
    "bias",
    "output_padding",
    "mode",
    "ceil_mode",
    "count_include_pad",
    "axis",
    "affine",
    "eps",
    "name",
    "from",
]

scalars = st.one_of(
    st.integers(-3, 40),
    st.sampled_from([0, 1, 2**31, 2**63, -(2**40)]),
    st.booleans(),
    st.floats(allow_nan=True),
    st.sampled_from(["same", "valid", "max", "conv1", "input", "", "relu1"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5), max_leaves=8)
layers = st.dictionaries(st.sampled_from(LAYER_KEYS + OPTION_KEYS), values, max_size=4)
documents = st.fixed_dictionaries(
    {},
    optional={
        "input": st.one_of(st.lists(st.integers(-2, 40), max_size=5), values),
        "layers": st.one_of(st.lists(layers, max_size=6), values),
        "name": values,
        "extra": values,
    },
)


@settings(FUZZ, max_examples=400)
@given(doc=documents)
def test_spec_documents_give_graphs_or_spec_errors(doc: dict[str, Any]) -> None:
    """Random documents built from the spec vocabulary (valid and invalid sizes, wrong types,
    references to missing layers, huge numbers): a graph, or a SpecError/ShapeError line."""
    from dnnlens.importers.spec import spec_from_dict

    with no_hang():
        try:
            graph = spec_from_dict(doc, "fuzz.toml")
        except DnnlensError as exc:
            assert_clear(exc, SpecError, ShapeError)
            return
    assert graph.nodes and all(all(d >= 0 for d in n.output_shape) for n in graph.nodes)


#: TOML-looking text: fragments of real specs shuffled with noise.
toml_text = st.lists(
    st.sampled_from(
        [
            "input = [1, 1, 28, 28]\n",
            "input = [0, 1]\n",
            'name = "x"\n',
            "layers = [\n",
            "]\n",
            "{ conv = [5, 5, 1, 4] },\n",
            "{ relu = true },\n",
            "{ pool = [2, 2, 2, 2] },\n",
            "{ fc = [10, 256] },\n",
            "{ flatten = true },\n",
            "[[layer]]\n",
            "conv = [3, 3, 1, 2]\n",
            "= = =\n",
            "\x00\xff",
            "layers = 5\n",
            '"\n',
            "{ fc = [10, -1] },\n",
        ]
    ),
    max_size=12,
).map("".join)


@settings(FUZZ, max_examples=200)
@given(text=st.one_of(toml_text, st.text(max_size=80)), raw=st.binary(max_size=40))
def test_spec_files_give_graphs_or_spec_errors(scratch: Path, text: str, raw: bytes) -> None:
    """Text and raw bytes (invalid UTF-8 too) through :func:`import_spec`."""
    from dnnlens.importers.spec import import_spec

    path = scratch / "fuzz.toml"
    for content in (text.encode("utf-8", "surrogatepass"), raw):
        path.write_bytes(content)
        with no_hang():
            try:
                import_spec(path)
            except DnnlensError as exc:
                assert_clear(exc, SpecError, ShapeError)


# ---------------------------------------------------------------------------------------------
# Checkpoint loader


@pytest.fixture(scope="module")
def checkpoint_bytes() -> bytes:
    """A real checkpoint of the reference network (untrained: only the format matters)."""
    import torch

    from dnnlens.models import Net

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(Net().state_dict(), buffer)
    return buffer.getvalue()


@settings(FUZZ, max_examples=200)
@given(
    edits=st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.none() | st.integers(0, 2**20),
    near_start=st.booleans(),
)
def test_mutated_checkpoints_give_state_dicts_or_checkpoint_errors(
    scratch: Path,
    checkpoint_bytes: bytes,
    edits: list[tuple[int, int]],
    cut: int | None,
    near_start: bool,
) -> None:
    """Bytes flipped (often in the zip headers and the pickle, which sit near the start and
    the end of the file) or cut off: a state dict of tensors, or one CheckpointError line.
    Never unsafe loading: the loader only ever calls torch.load(weights_only=True)."""
    from dnnlens.models import load_state_dict_file

    size = len(checkpoint_bytes)
    if near_start:  # the zip local header and data.pkl come first
        edits = [(position % 600, value) for position, value in edits]
    else:  # the zip central directory comes last
        edits = [(size - 1 - position % 400, value) for position, value in edits]
    path = scratch / "fuzz.pth"
    path.write_bytes(mutate(checkpoint_bytes, edits, cut))
    with no_hang():
        try:
            state = load_state_dict_file(path)
        except DnnlensError as exc:
            assert_clear(exc, CheckpointError)
            return
    import torch

    assert state and all(isinstance(v, torch.Tensor) for v in state.values())


@settings(FUZZ, max_examples=100)
@given(data=st.binary(max_size=200))
def test_random_bytes_are_not_checkpoints(scratch: Path, data: bytes) -> None:
    from dnnlens.models import load_state_dict_file

    path = scratch / "noise.pth"
    path.write_bytes(data)
    with no_hang(), pytest.raises(DnnlensError) as info:
        load_state_dict_file(path)
    assert_clear(info.value, CheckpointError)


# ---------------------------------------------------------------------------------------------
# ONNX and SCALE-Sim files (read the same way: untrusted bytes in, a graph or one error out)


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    """A small real ONNX model: Conv -> Relu -> MaxPool -> Flatten -> Gemm, with weights."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        for name, shape in (("w", (4, 1, 3, 3)), ("b", (4,)), ("fw", (10, 196)), ("fb", (10,)))
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node(
            "MaxPool", ["r"], ["p"], name="pool", kernel_shape=[4, 4], strides=[4, 4]
        ),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "fuzz",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        initializer=weights,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)]
    ).SerializeToString()


@settings(FUZZ, max_examples=300)
@given(
    edits=st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.none() | st.integers(0, 2**16),
    in_graph=st.booleans(),
)
def test_mutated_onnx_files_give_graphs_or_model_errors(
    scratch: Path, onnx_bytes: bytes, edits: list[tuple[int, int]], cut: int | None, in_graph: bool
) -> None:
    """Bytes flipped in the node and attribute records (the start of the file, before the
    weights) or anywhere, or cut off: a graph, or one ModelError/ShapeError line."""
    from dnnlens.importers.onnx import import_onnx

    if in_graph:
        edits = [(position % 200, value) for position, value in edits]
    path = scratch / "fuzz.onnx"
    path.write_bytes(mutate(onnx_bytes, edits, cut))
    with no_hang():
        try:
            import_onnx(path)
        except DnnlensError as exc:
            assert_clear(exc, ModelError, ShapeError, SpecError)


@settings(FUZZ, max_examples=150)
@given(
    rows=st.lists(
        st.lists(
            st.one_of(
                st.integers(-2, 300).map(str), st.sampled_from(["", "x", "1.5", "conv1", " 3"])
            ),
            max_size=10,
        ),
        max_size=4,
    ),
    header=st.booleans(),
)
def test_scalesim_topologies_give_graphs_or_spec_errors(
    scratch: Path, rows: list[list[str]], header: bool
) -> None:
    """SCALE-Sim topology CSVs with short, long, negative and non-numeric rows."""
    from dnnlens.importers.scalesim import import_topology

    head = (
        "Layer name,IFMAP Height,IFMAP Width,Filter Height,Filter Width,Channels,"
        "Num Filter,Strides,\n"
    )
    text = (head if header else "") + "".join(",".join(row) + ",\n" for row in rows)
    path = scratch / "fuzz-topology.csv"
    path.write_text(text)
    with no_hang():
        try:
            import_topology(path)
        except DnnlensError as exc:
            assert_clear(exc, SpecError, ShapeError)
