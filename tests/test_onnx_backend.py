"""onnx's own backend node tests (``onnx.backend.test``), for every operator the ONNX importer
claims, through both of our engines: each case passes or is refused with one clear line,
none gives wrong values.

Each case is one ONNX node with its inputs and the expected outputs (computed by onnx's
reference implementation: the independent truth). As in real models, the weights are
initializers: the first input stays the graph input, the others become constants. Cases are
generated in memory by ``onnx.backend.test.case.node.collect_testcases`` (the wheel ships no
test data files); generating them all takes some seconds, once per session.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from dnnlens.errors import DnnlensError

onnx = pytest.importorskip("onnx")

# After the importorskip on purpose: without onnx the module is skipped, not an import error.
from dnnlens import engine  # noqa: E402
from dnnlens.importers.onnx import RULES, import_onnx  # noqa: E402

pytestmark = pytest.mark.slow  # generating onnx's cases takes some seconds

#: Operators the importer claims (its rules; Identity is an alias, not a layer).
CLAIMED = sorted(RULES)


@pytest.fixture(scope="module")
def cases() -> dict[str, list]:
    """Single-node cases by operator type."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.seterr(all="ignore")
        collected = collect_testcases(None)
    by_op: dict[str, list] = {}
    for case in collected:
        graph = case.model.graph
        if len(graph.node) == 1 and graph.node[0].domain in ("", "ai.onnx"):
            by_op.setdefault(graph.node[0].op_type, []).append(case)
    return by_op


def with_initializers(case) -> tuple[bytes, np.ndarray, list[np.ndarray]] | None:
    """The case's model with every input but the first as an initializer, the first input's
    data and the expected outputs; None for a case that does not fit (no inputs, sequences,
    optional types)."""
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    inputs, expected = case.data_sets[0]
    if not inputs or not all(
        isinstance(v, (np.ndarray, np.generic)) for v in (*inputs, *expected)
    ):
        return None
    graph = model.graph
    values = list(graph.input)
    if not values or not values[0].type.HasField("tensor_type"):
        return None
    for value, array in zip(values[1:], inputs[1:]):
        graph.initializer.append(numpy_helper.from_array(np.asarray(array), value.name))
    del graph.input[1:]
    return model.SerializeToString(), np.asarray(inputs[0]), [np.asarray(e) for e in expected]


def run_case(case, path: Path, engine_name: str) -> str:
    """ "pass", "refused: <line>", or an AssertionError for wrong values."""
    built = with_initializers(case)
    if built is None:
        return "skip"
    model, x, expected = built
    path.write_bytes(model)
    try:
        graph, weights = import_onnx(path, input_shape=x.shape)
        plan = engine.prepare(graph, weights, engine_name)
    except DnnlensError as exc:
        message = str(exc)
        assert message and "\n" not in message, (case.name, message)
        return f"refused: {message}"
    if len(graph.outputs) != len(expected) or x.ndim == 0:
        return "skip"  # constant outputs folded away, or a scalar input (no batch)
    try:
        result = plan.run(x)
    except DnnlensError as exc:
        message = str(exc)
        assert message and "\n" not in message, (case.name, message)
        return f"refused: {message}"
    for name, want in zip(graph.outputs, expected):
        got = np.asarray(result.outputs[name])
        assert got.shape == want.shape, (case.name, engine_name, got.shape, want.shape)
        if want.dtype.kind in "iub":  # integer arithmetic stays integer
            assert got.dtype.kind in "iub", (case.name, engine_name, got.dtype)
        np.testing.assert_allclose(
            got.astype(np.float64),
            want.astype(np.float64),
            rtol=max(case.rtol, 1e-4),
            atol=max(case.atol, 1e-5),
            err_msg=f"{case.name} ({engine_name} engine)",
        )
    return "pass"


@pytest.mark.parametrize("op_type", [op for op in CLAIMED if op != "Identity"])
def test_backend_node_cases_pass_or_are_refused(cases, op_type, tmp_path):
    outcomes = {}
    for case in cases.get(op_type, []):
        for engine_name in engine.ENGINES:
            outcomes[case.name, engine_name] = run_case(case, tmp_path / "case.onnx", engine_name)
    # Both engines agree on which cases they run.
    for (name, engine_name), outcome in outcomes.items():
        other = outcomes[name, "reference" if engine_name == "compiled" else "compiled"]
        assert (outcome == "pass") == (other == "pass"), (name, outcome, other)


def test_most_claimed_operators_really_run(cases, tmp_path):
    """The suite is not passing by refusing everything: the operators the engine has kernels
    for pass at least one of their cases."""
    for op_type in (
        "Conv",
        "Relu",
        "MaxPool",
        "Gemm",
        "Add",
        "Mul",
        "Flatten",
        "Softmax",
        "Concat",
        "Transpose",
        "Slice",
    ):
        results = [
            run_case(case, tmp_path / "case.onnx", "reference") for case in cases.get(op_type, [])
        ]
        assert "pass" in results, (op_type, results)
