"""ONNX import: exported torchvision models give the PyTorch path's totals, the reference
network runs in our engine with onnxruntime's predictions, bad files are one-line errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from dnnlens.analysis import analyze
from dnnlens.cli import main
from dnnlens.errors import ModelError
from dnnlens.importers.onnx import import_onnx
from dnnlens.verify import verify

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

#: Issue 4's cross-check list.
TORCHVISION = [
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "vgg11",
    "alexnet",
    "efficientnet_b0",
    "squeezenet1_0",
    "shufflenet_v2_x1_0",
    "vit_b_16",
]


def export(model, shape, path: Path, dynamo: bool = True) -> Path:
    """torch.onnx.export as the docs describe: the dynamo exporter (torch's default) with
    ``optimize=False`` so batch norms stay batch norms (the optimizer folds them into the
    convolutions, and their parameters with them)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(
                model, (torch.zeros(shape),), str(path), dynamo=True, optimize=False, verbose=False
            )
        else:
            raise ValueError("use export_torchscript_net")
    return path


def export_torchscript_net(path: Path) -> Path:
    """The reference Net through the legacy TorchScript exporter, in a child process: that
    exporter leaves global tracing state behind that breaks later meta-device tracing in the
    same process (the PyTorch-path importer then recurses)."""
    import subprocess
    import sys

    code = (
        "import sys, warnings, torch; warnings.simplefilter('ignore');"
        "from dnnlens.models import Net;"
        "torch.onnx.export(Net().eval(), (torch.zeros(1, 1, 28, 28),), sys.argv[1],"
        " dynamo=False, input_names=['x'], output_names=['logits'])"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=300)
    return path


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_round_trip_gives_the_pytorch_totals(onnx_dir, name):
    import torchvision

    model = torchvision.models.get_model(name, weights=None).eval()
    shape = (1, 3, 224, 224)
    path = export(model, shape, onnx_dir / f"{name}.onnx")
    graph, weights = import_onnx(path)
    ours, theirs = analyze(graph), analyze(model, shape)
    n_params = sum(p.numel() for p in model.parameters())
    assert ours.totals.params == theirs.totals.params == n_params  # exactly
    assert ours.totals.macs == pytest.approx(theirs.totals.macs, rel=0.005)
    assert ours.warnings == []  # every op translated, none unknown
    # Parameters keep their state-dict names and values (constant operands, such as a
    # scale of 0.125, are kept too, under their ONNX names, and are not parameters).
    state = model.state_dict()
    learned = {
        p.name: p
        for node in graph
        for role, p in node.params.items()
        if not role.startswith("constant")
    }
    for param in learned.values():
        assert param.name in state
        assert weights[param.name].size == state[param.name].numel()
    path.unlink()
    for extra in onnx_dir.glob(f"{name}.onnx.data"):
        extra.unlink()


def test_reference_network_matches_onnxruntime_on_the_sample(
    tmp_path, sample_checkpoint, sample_test_data
):
    import torch

    from dnnlens.models import Net

    net = Net()
    net.load_state_dict(torch.load(sample_checkpoint, weights_only=True))
    path = export(net.eval(), (1, 1, 28, 28), tmp_path / "net.onnx")
    check = verify(path, sample_test_data, limit=1000)
    assert check.images == 1000 and check.reference == "onnxruntime"
    assert check.mismatches == 0
    assert check.max_abs_diff < 1e-3
    # onnxruntime's own intermediate values, layer by layer
    compared = [layer for layer in check.layers if layer.max_abs_diff is not None]
    assert {layer.kind for layer in compared} >= {"conv", "relu", "maxpool", "fc"}
    assert all(layer.max_abs_diff < 1e-3 for layer in compared)


def test_cli_verify_takes_an_onnx_file(tmp_path, sample_checkpoint, capsys):
    import json

    import torch

    from dnnlens.cli import main
    from dnnlens.models import Net

    net = Net()
    net.load_state_dict(torch.load(sample_checkpoint, weights_only=True))
    path = export(net.eval(), (1, 1, 28, 28), tmp_path / "net.onnx")
    assert main(["verify", str(path), "--data", "sample", "--limit", "200", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 200 and result["mismatches"] == 0
    assert result["reference"] == "onnxruntime"


def test_torchscript_export_keeps_module_paths_and_the_table(tmp_path):
    """The TorchScript exporter names nodes /fc1/Gemm: same rows as the PyTorch path."""
    from dnnlens.models import Net

    path = export_torchscript_net(tmp_path / "ts.onnx")
    ours = analyze(import_onnx(path)[0])
    theirs = analyze(Net(), (1, 1, 28, 28))

    def pick(a):
        return [
            (r.type, r.macs, r.weights, r.output_shape)
            for r in a.rows
            if r.type in ("conv", "fc", "maxpool")
        ]

    assert pick(ours) == pick(theirs)
    assert [r.module for r in ours.rows if r.type in ("conv", "fc")] == [
        "conv1",
        "conv2",
        "fc1",
        "fc2",
    ]


def _tiny_model(nodes, inputs, outputs, initializers=(), opset=17):
    from onnx import helper

    graph = helper.make_graph(nodes, "tiny", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_gemm_alpha_beta_and_untransposed_weight_run_like_onnxruntime(tmp_path):
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 4)).astype(np.float32)  # (K, N): transB = 0
    b = rng.standard_normal((4,)).astype(np.float32)
    model = _tiny_model(
        [
            helper.make_node("Gemm", ["x", "w", "b"], ["y"], alpha=0.5, beta=2.0),
            helper.make_node("Relu", ["y"], ["z"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    path = tmp_path / "gemm.onnx"
    onnx.save(model, str(path))
    graph, weights = import_onnx(path, input_shape=(3, 6))
    assert [n.kind for n in graph] == ["fc", "relu"]
    from dnnlens.engine import run

    x = rng.standard_normal((3, 6)).astype(np.float32)
    ours = run(graph, weights, x, engine="reference").logits
    theirs = onnxruntime.InferenceSession(str(path)).run(None, {"x": x})[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_unknown_op_keeps_its_shapes_and_is_flagged(tmp_path):
    from onnx import TensorProto, helper

    model = _tiny_model(
        [
            helper.make_node("LpNormalization", ["x"], ["y"], axis=1),
            helper.make_node("Relu", ["y"], ["z"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 5])],
    )
    path = tmp_path / "unknown.onnx"
    onnx.save(model, str(path))
    a = analyze(import_onnx(path)[0])
    assert [r.type for r in a.rows] == ["unknown", "relu"]
    assert a.rows[0].output_shape == (2, 5)
    assert a.warnings and "LpNormalization" in " ".join(a.warnings)


# --- malformed files: one-line ModelErrors, exit code 2 on the CLI ---------------------------


def assert_cli_error(capsys, argv, needle):
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]


def test_truncated_file(tmp_path, capsys):
    from dnnlens.models import Net

    path = export(Net().eval(), (1, 1, 28, 28), tmp_path / "net.onnx")
    data = path.read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        import_onnx(bad)
    assert_cli_error(capsys, ["analyze", str(bad)], "truncated")


def test_dangling_input(tmp_path, capsys):
    from onnx import TensorProto, helper

    model = _tiny_model(
        [helper.make_node("Add", ["x", "ghost"], ["y"], name="add0")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "dangling.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="'ghost'"):
        import_onnx(path)
    assert_cli_error(capsys, ["analyze", str(path)], "ghost")


def test_dynamic_dims_need_input(tmp_path, capsys):
    from onnx import TensorProto, helper

    model = _tiny_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
    )
    path = tmp_path / "dynamic.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="--input"):
        import_onnx(path)
    assert_cli_error(capsys, ["analyze", str(path)], "dynamic dimensions")
    graph, _ = import_onnx(path, input_shape=(2, 3, 8, 8))
    assert graph.nodes[0].output_shape == (2, 3, 8, 8)
    assert main(["analyze", str(path), "--input", "2,3,8,8"]) == 0
    with pytest.raises(ModelError, match="does not fit"):
        import_onnx(path, input_shape=(2, 4, 8, 8))  # the static channel count is 3


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        import_onnx(tmp_path / "absent.onnx")


# --- parameters the TorchScript exporter merges by value --------------------------------------
MERGED_NET = """
import sys, warnings, torch
warnings.simplefilter("ignore")
torch.manual_seed(0)

class Merged(torch.nn.Module):
    # Three zero biases (equal values: the exporter keeps one) and b's weight *tied* to a's.
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (torch.nn.Linear(8, 8) for _ in range(3))
        for layer in (self.a, self.b, self.c):
            torch.nn.init.zeros_(layer.bias)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))

class Folded(torch.nn.Module):
    # Two conv + batch norm pairs: the exporter folds each norm into its conv, whose new
    # biases (beta - mean * gamma / sqrt(var + eps) = 0 for fresh norms) are equal.
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(4)
        self.conv2 = torch.nn.Conv2d(4, 4, 3, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))).flatten(1)

model = {"merged": Merged, "folded": Folded}[sys.argv[2]]().eval()
shape = {"merged": (1, 8), "folded": (1, 3, 8, 8)}[sys.argv[2]]
print(sum(p.numel() for p in model.parameters()))  # a tied weight once, as PyTorch counts
torch.onnx.export(model, (torch.randn(shape),), sys.argv[1], dynamo=False)
"""


def export_merged(path: Path, which: str) -> int:
    """Export MERGED_NET's ``which`` model with the TorchScript exporter in a child process
    (it leaves tracing state behind); returns PyTorch's parameter count of the model."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", MERGED_NET, str(path), which],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return int(done.stdout.split()[-1])


def assert_runs_like_onnxruntime(path: Path, graph, weights) -> None:
    import onnxruntime

    from dnnlens.engine import run

    session = onnxruntime.InferenceSession(str(path))
    first = session.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal(first.shape).astype(np.float32)
    theirs = session.run(None, {first.name: x})[0]
    ours = run(graph, weights, x, engine="reference").logits
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_parameters_the_torchscript_exporter_merged_by_value_count_as_pytorch_counts(tmp_path):
    """The exporter writes the zero biases of b and c as ``Identity`` of a's (their values are
    equal), keeping their names: three parameters, as PyTorch counts, not one; the tied weight
    stays one parameter. Truth: ``sum(p.numel() for p in model.parameters())`` in the
    exporting process."""
    path = tmp_path / "merged.onnx"
    pytorch_params = export_merged(path, "merged")
    assert pytorch_params == 8 * 8 + 3 * 8 + 8 * 8  # two weights (one tied), three biases
    model = onnx.load(str(path))
    assert sum(n.op_type == "Identity" for n in model.graph.node) == 2  # the premise
    graph, weights = import_onnx(path)
    assert analyze(graph).totals.params == pytorch_params
    biases = sorted(p.name for node in graph for role, p in node.params.items() if role == "bias")
    assert biases == ["a.bias", "b.bias", "c.bias"]
    assert_runs_like_onnxruntime(path, graph, weights)


def test_equal_biases_of_folded_batch_norms_are_one_parameter_each(tmp_path):
    """Folded into the convs, the two norms' 2 x 4 parameters each become one zero bias of 4
    per conv, equal, so the exporter keeps one and names the other by an Identity; the file
    holds 3*4*3*3 + 4*4*3*3 weights and 4 + 4 biases."""
    path = tmp_path / "folded.onnx"
    pytorch_params = export_merged(path, "folded")
    assert pytorch_params == 3 * 4 * 3 * 3 + 4 * 4 * 3 * 3 + 2 * (4 + 4)
    model = onnx.load(str(path))
    assert [n.op_type for n in model.graph.node].count("BatchNormalization") == 0  # folded
    assert sum(n.op_type == "Identity" for n in model.graph.node) == 1  # the premise
    graph, weights = import_onnx(path)
    assert analyze(graph).totals.params == 3 * 4 * 3 * 3 + 4 * 4 * 3 * 3 + 4 + 4
    assert_runs_like_onnxruntime(path, graph, weights)


# --- Gather of an activation by constant or computed indices ----------------------------------
def _gather_model(indices: np.ndarray | None):
    """x (2, 3, 4) -> Reshape (2, 12) -> Gather along axis 1 by ``indices`` (an initializer),
    or by a second graph input ``i`` (int64, (2, 2)) when ``indices`` is None."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array([2, 12], np.int64), "shape")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])]
    if indices is None:
        inputs.append(helper.make_tensor_value_info("i", TensorProto.INT64, [2, 2]))
        out_shape = [2, 2, 2]
    else:
        inits.append(numpy_helper.from_array(indices, "i"))
        out_shape = [2, *indices.shape]
    return _tiny_model(
        [
            helper.make_node("Reshape", ["x", "shape"], ["flat"]),
            helper.make_node("Gather", ["flat", "i"], ["y"], axis=1),
            helper.make_node("Relu", ["y"], ["z"]),
        ],
        inputs,
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, out_shape)],
        inits,
    )


@pytest.mark.parametrize(
    "indices",
    [
        np.array([[0, 5, 11], [-1, -12, 3]], np.int64),  # 2-d, negative counts from the end
        np.arange(12, dtype=np.int32).reshape(1, 12, 1),  # every position (dynamo's as_strided)
        None,  # indices computed at run time: a second input
    ],
    ids=["constant-2d", "as-strided", "input"],
)
def test_gather_of_an_activation_runs_like_onnxruntime(tmp_path, indices):
    """The dynamo exporter writes convnext's ``as_strided`` (before its classifier's layer
    norm) as a Gather of every position by a constant (1, 768, 1, 1) index tensor: once an
    unknown op the engine refused."""
    import onnxruntime

    from dnnlens.engine import prepare

    path = tmp_path / "gather.onnx"
    onnx.save(_gather_model(indices), str(path))
    graph, weights = import_onnx(path)
    assert [n.kind for n in graph] == ["flatten", "gather", "relu"]  # (2, 3, 4) -> (2, 12)
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((2, 3, 4)).astype(np.float32)}
    if indices is None:
        feed["i"] = np.array([[11, 0], [-3, 4]], np.int64)
    theirs = onnxruntime.InferenceSession(str(path)).run(None, feed)[0]
    for engine in ("reference", "compiled"):
        ours = prepare(graph, weights, engine).run(feed).logits
        np.testing.assert_array_equal(ours, theirs)  # a copy: exact


def test_a_view_of_a_parameter_is_that_parameter(tmp_path):
    """A learned (4, 6) table reshaped to (2, 2, 6) and permuted to (6, 2, 2) before it is
    added (as the dynamo exporter writes swin's relative position bias): one parameter of 24
    values, and the sum onnxruntime computes. Once a 'used before it is computed' error."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    table = rng.standard_normal((4, 6)).astype(np.float32)
    model = _tiny_model(
        [
            helper.make_node("Reshape", ["table", "shape"], ["view"]),
            helper.make_node("Transpose", ["view"], ["bias"], perm=[2, 0, 1]),
            helper.make_node("Add", ["x", "bias"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 6, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 6, 2, 2])],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.array([2, 2, 6], np.int64), "shape"),
        ],
    )
    path = tmp_path / "view.onnx"
    onnx.save(model, str(path))
    graph, weights = import_onnx(path)
    assert [n.kind for n in graph] == ["add"]
    assert analyze(graph).totals.params == 4 * 6
    assert [p.name for p in graph.params().values()] == ["table"]
    x = rng.standard_normal((3, 6, 2, 2)).astype(np.float32)
    theirs = onnxruntime.InferenceSession(str(path)).run(None, {"x": x})[0]
    from dnnlens.engine import prepare

    for engine in ("reference", "compiled"):
        np.testing.assert_array_equal(prepare(graph, weights, engine).run(x).logits, theirs)


def test_swin_export_patterns_run_like_onnxruntime(tmp_path):
    """What swin_t's exports need, in small: a Pad by amounts computed from constants (ONNX's
    shape inference then gives up, so a later Shape must fold on our shape), a mask built by
    ScatterND from the exporter's float constants (which look like parameters), and a Pow of
    two constants; all folded or run, none a parameter."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    def const(name, values, dtype=np.int64):
        return numpy_helper.from_array(np.array(values, dtype), name)

    model = _tiny_model(
        [
            helper.make_node("Add", ["half_pads", "half_pads"], ["pads"]),  # W: 2 before, 2 after
            helper.make_node("Pad", ["x", "pads"], ["padded"], mode="reflect"),
            helper.make_node("Shape", ["padded"], ["padded_shape"]),
            helper.make_node("ConstantOfShape", ["padded_shape"], ["zeros"]),
            helper.make_node("ScatterND", ["zeros", "where", "updates"], ["mask"]),
            helper.make_node("Pow", ["two", "three"], ["eight"]),
            helper.make_node("Mul", ["mask", "eight"], ["scaled"]),
            helper.make_node("Add", ["padded", "scaled"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 7])],
        [
            const("half_pads", [0, 0, 0, 1, 0, 0, 0, 1]),
            const("where", [[0, 1, 2, 2], [0, 0, 2, 6]]),  # two positions of (1, 2, 3, 7)
            const("updates", [0.5, -1.5], np.float32),
            const("two", 2.0, np.float32),
            const("three", 3.0, np.float32),
        ],
    )
    path = tmp_path / "swin-patterns.onnx"
    onnx.save(model, str(path))
    graph, weights = import_onnx(path)
    assert [n.kind for n in graph] == ["pad_reflect", "add"]
    assert analyze(graph).totals.params == 0 and analyze(graph).warnings == []
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 3)).astype(np.float32)
    theirs = onnxruntime.InferenceSession(str(path)).run(None, {"x": x})[0]
    from dnnlens.engine import prepare

    for engine in ("reference", "compiled"):
        np.testing.assert_array_equal(prepare(graph, weights, engine).run(x).logits, theirs)


def test_a_constant_node_that_cannot_be_computed_is_one_line(tmp_path, capsys):
    """A ScatterND of constants (folded at import) with an index out of range: one
    ModelError line naming the node, not a traceback from onnx's evaluator."""
    from onnx import TensorProto, helper, numpy_helper

    model = _tiny_model(
        [
            helper.make_node("ScatterND", ["zeros", "where", "updates"], ["mask"], name="mask"),
            helper.make_node("Add", ["x", "mask"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [
            numpy_helper.from_array(np.zeros((2, 3), np.float32), "zeros"),
            numpy_helper.from_array(np.array([[5, 0]], np.int64), "where"),  # row 5 of 2
            numpy_helper.from_array(np.array([1.0], np.float32), "updates"),
        ],
    )
    path = tmp_path / "bad-scatter.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="ScatterND node 'mask' cannot be computed"):
        import_onnx(path)
    assert_cli_error(capsys, ["analyze", str(path)], "cannot be computed")
