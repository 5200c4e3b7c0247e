"""The engine against PyTorch: the trained reference network prediction for prediction, other
networks (residual, depthwise/strided) layer by layer, and the errors it reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dnnlens import engine
from dnnlens.cli import main
from dnnlens.errors import CheckpointError, ModelError, ShapeError, UsageError
from dnnlens.importers.torch import import_torch
from dnnlens.ir import Graph, Node, Param
from dnnlens.models import Net, load_checkpoint
from dnnlens.ops import Conv, Linear, Pool, Reshape, Unknown
from dnnlens.verify import verify

ENGINES = ("compiled", "reference")


def torch_logits(model: nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model.eval()(torch.from_numpy(images)).numpy()


# --- the trained reference network ---------------------------------------------------------
@pytest.mark.parametrize("engine_name", ENGINES)
def test_sample_test_set_agrees_with_torch_prediction_for_prediction(
    sample_checkpoint, sample_test_data, engine_name
):
    result = verify(sample_checkpoint, data="sample", engine=engine_name)
    assert result.images == len(sample_test_data) == 1000
    assert result.mismatches == 0
    assert result.max_abs_diff <= 1e-4
    assert result.correct == result.torch_correct
    # independent truth for the accuracy: torch's own predictions on the labels
    model = load_checkpoint(sample_checkpoint)
    expected = torch_logits(model, sample_test_data.images).argmax(axis=1)
    assert result.torch_correct == int(np.sum(expected == sample_test_data.labels))
    assert result.accuracy > 0.8  # a trained network, not a constant guess
    assert [layer.name for layer in result.layers] == [
        "conv1",
        "relu",
        "pool",
        "conv2",
        "relu#2",
        "pool#2",
        "flatten",
        "fc1",
        "relu#3",
        "fc2",
    ]
    for layer in result.layers:
        assert layer.max_abs_diff is not None and layer.max_abs_diff <= 1e-4, layer


@pytest.mark.slow
def test_fashion_mnist_test_set_agrees_with_torch(fashion_dir, tmp_path):
    """A network trained on Fashion-MNIST for one epoch, all 10,000 test images."""
    from dnnlens.data import load_data
    from dnnlens.training import train

    source = f"idx:{fashion_dir}"
    checkpoint = train(
        data=source, epochs=1, out=tmp_path / "fashion.pth", seed=0, progress=False
    ).checkpoint
    model = load_checkpoint(checkpoint)
    test = load_data(source, "test")
    assert len(test) == 10_000
    graph = import_torch(model, (1, 1, 28, 28))
    ours = engine.predict(graph, model, test.images, "compiled")
    theirs = torch_logits(model, test.images)
    assert int(np.sum(ours.argmax(1) != theirs.argmax(1))) == 0
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    assert np.mean(theirs.argmax(1) == test.labels) > 0.7  # it learned something


def test_graph_traced_at_batch_one_runs_any_batch_and_keeps_activations():
    torch.manual_seed(1)
    model = Net().eval()
    graph = import_torch(model, (1, 1, 28, 28))
    images = torch.randn(37, 1, 28, 28).numpy()  # 37: two full blocks of 16 and a partial one
    result = engine.run(graph, model, images, keep_activations=True)
    assert list(result.activations) == [node.name for node in graph]
    np.testing.assert_allclose(result.logits, torch_logits(model, images), atol=1e-5)
    with torch.inference_mode():
        conv1 = model.conv1(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(result.activations["conv1"], conv1, atol=1e-5)


def test_repeated_calls_through_bound_kernels_stay_exact():
    """From the second call with the same shapes on, the engine runs pre-bound kernels."""
    torch.manual_seed(3)
    model = Net().eval()
    graph = import_torch(model, (1, 1, 28, 28))
    weights = engine.load_weights(model)
    images = torch.randn(40, 1, 28, 28).numpy()
    truth = torch_logits(model, images)
    plan = engine.prepare(graph, weights)
    one_by_one = np.concatenate([plan.run(images[i : i + 1]).logits for i in range(len(images))])
    np.testing.assert_allclose(one_by_one, truth, rtol=0, atol=1e-5)
    for _ in range(2):  # batches of 20: the lanes path, bound on the second call
        batched = np.concatenate([plan.run(images[i : i + 20]).logits for i in (0, 20)])
        np.testing.assert_allclose(batched, truth, rtol=0, atol=1e-5)
    other = Net().eval()  # other weights, same graph and shapes: a plan of their own
    np.testing.assert_allclose(
        engine.run(graph, engine.load_weights(other), images[:1]).logits,
        torch_logits(other, images[:1]),
        rtol=0,
        atol=1e-5,
    )


def test_conv_relu_pool_chains_are_fused_only_when_nothing_else_reads_them():
    graph = import_torch(Net(), (1, 1, 28, 28))
    kinds = [(step.kind, [n.name for n in step.nodes]) for step in engine.plan(graph)]
    assert kinds[0] == ("conv_relu_maxpool", ["conv1", "relu", "pool"])
    assert kinds[1] == ("conv_relu_maxpool", ["conv2", "relu#2", "pool#2"])
    assert kinds[3] == ("fc_relu", ["fc1", "relu#3"])
    graph.outputs = ["relu", "fc2"]  # the relu's value is now wanted: no pool fused into conv1
    first = engine.plan(graph)[0]  # (the ReLU still is: its value is the step's output)
    assert (first.kind, [n.name for n in first.nodes]) == ("conv_act", ["conv1", "relu"])


# --- other networks -------------------------------------------------------------------------
class Residual(nn.Module):
    """conv -> relu -> (conv -> relu -> conv) + skip -> relu -> global average -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.a = nn.Conv2d(6, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(x + self.b(F.relu(self.a(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class DepthwiseStrided(nn.Module):
    """Depthwise strided conv, pointwise 1x1, padded/ceil-mode pooling, fused chain, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(1, 8, (3, 5), padding=(1, 2))
        self.depthwise = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.pointwise = nn.Conv2d(8, 12, 1)
        self.avg = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
        self.dilated = nn.Conv2d(12, 6, 3, dilation=2, padding=2)
        self.max = nn.MaxPool2d(2)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.expand(x))
        x = torch.sigmoid(self.pointwise(self.depthwise(x)))
        x = self.max(F.relu(self.dilated(self.avg(x))))
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("model_class", [Residual, DepthwiseStrided])
@pytest.mark.parametrize("engine_name", ENGINES)
def test_other_networks_match_torch(model_class, engine_name):
    torch.manual_seed(2)
    model = model_class().eval()
    graph = import_torch(model, (1, 1, 28, 28))
    images = torch.randn(20, 1, 28, 28).numpy()
    plan = engine.prepare(graph, engine.load_weights(model), engine_name)
    for _ in range(2):  # the second call runs the bound kernels
        result = plan.run(images)
        np.testing.assert_allclose(result.logits, torch_logits(model, images), rtol=0, atol=1e-4)
    checked = verify(model, input_shape=(1, 1, 28, 28), images=20, engine=engine_name)
    assert checked.mismatches == 0 and checked.max_abs_diff < 1e-4
    # every module's own output (hooks), compared layer by layer
    modules = [
        layer
        for layer in checked.layers
        if "." not in layer.name and layer.kind not in ("add", "flatten")
    ]
    assert modules and all(
        layer.max_abs_diff is not None and layer.max_abs_diff < 1e-4 for layer in modules
    ), checked.layers


def test_residual_network_really_adds():
    graph = import_torch(Residual(), (1, 1, 28, 28))
    assert "add" in [node.kind for node in graph]


class InvertedResidual(nn.Module):
    """MobileNetV2's block (1x1 expand, ReLU6; depthwise 3x3, ReLU6; 1x1 project; + input)
    after a ResNet downsampling block (both sides of its add are convs), with hardtanh."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.down_a, self.down_b = nn.Conv2d(8, 8, 3, 2, 1, bias=False), nn.Conv2d(8, 8, 3, 1, 1)
        self.shortcut = nn.Sequential(nn.Conv2d(8, 8, 1, 2, bias=False), nn.BatchNorm2d(8))
        self.expand = nn.Sequential(nn.Conv2d(8, 24, 1, bias=False), nn.BatchNorm2d(24))
        self.depthwise = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.project = nn.Sequential(nn.Conv2d(24, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.hardtanh(self.stem(x), -0.5, 0.5)
        x = F.relu(self.down_b(F.relu(self.down_a(x))) + self.shortcut(x))
        y = F.relu6(self.depthwise(F.relu6(self.expand(x))))
        x = x + self.project(y)
        return self.fc(x.mean((2, 3)))


def test_conv_epilogues_are_planned_and_match_torch():
    torch.manual_seed(3)
    model = InvertedResidual()
    for module in model.modules():  # running statistics that are not the identity
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model = model.eval()
    graph = import_torch(model, (1, 1, 16, 16))
    steps = [(step.kind, step.clamp, step.residual) for step in engine.plan(graph)]
    kinds = [kind for kind, _, _ in steps]
    assert kinds.count("conv_act") == 4  # stem (hardtanh), down_a, expand, depthwise
    assert kinds.count("conv_add") == 2  # down_b + shortcut (then ReLU), x + project
    assert (steps[0][1]) == (-0.5, 0.5)
    assert ("conv_add", (0.0, np.inf)) in [(kind, clamp) for kind, clamp, _ in steps]
    assert ("conv_act", (0.0, 6.0)) in [(kind, clamp) for kind, clamp, _ in steps]
    images = torch.randn(5, 1, 16, 16).numpy()
    plan = engine.prepare(graph, engine.load_weights(model))
    for batch in (images, images[:1]):
        for _ in range(2):  # the second call runs the bound kernels
            np.testing.assert_allclose(
                plan.run(batch).logits, torch_logits(model, batch), rtol=0, atol=1e-4
            )


def test_reused_output_buffers_never_change_a_value_still_in_use():
    """Batches of 64 (outputs over Buffers.SMALLEST, past the one-call program's batch): the
    plan reuses freed outputs on later steps and runs, but never one a view still reads
    (the flatten before the fc is a view of the pool's output), and never one it returned."""
    from dnnlens.ops.base import Buffers

    torch.manual_seed(5)
    model = InvertedResidual()
    model = model.eval()
    graph = import_torch(model, (1, 1, 16, 16))
    plan = engine.prepare(graph, engine.load_weights(model))
    batches = [torch.randn(64, 1, 16, 16).numpy() for _ in range(4)]
    results = [plan.run(batch).logits for batch in batches]  # binds, then bound, reusing
    for batch, logits in zip(batches, results):  # earlier results untouched by later runs
        np.testing.assert_allclose(logits, torch_logits(model, batch), rtol=0, atol=1e-4)
    kept = sum(len(arrays) for arrays in plan._buffers._free.values())
    assert kept > 0, "no output was reused: the test would not see a wrong reuse"

    net = Net().eval()  # conv, pool, flatten (a view of the pool's output), fc
    plan = engine.prepare(import_torch(net, (1, 1, 28, 28)), engine.load_weights(net))
    images = [torch.randn(64, 1, 28, 28).numpy() for _ in range(3)]
    for batch in images:
        np.testing.assert_allclose(plan.run(batch).logits, torch_logits(net, batch), atol=1e-5)

    buffers = Buffers()
    array = np.ones(Buffers.SMALLEST, np.float32)
    view = array[:10]
    buffers.give(array)  # a view still reads it: not taken
    assert buffers.take(array.shape, array.dtype) is not array
    del view
    buffers.give(array)
    assert buffers.take(array.shape, array.dtype) is array


# --- errors -------------------------------------------------------------------------------
def one_layer_graph(op, input_shape, params, output_shape) -> Graph:
    node = Node(
        "layer1",
        op,
        ["input"],
        [input_shape],
        output_shape,
        {role: Param(f"layer1.{role}", shape) for role, shape in params.items()},
    )
    return Graph([node], {"input": input_shape}, ["layer1"])


@pytest.mark.parametrize("engine_name", ENGINES)
def test_conv_channel_mismatch_names_layer_and_shapes(engine_name):
    # traced with 3 channels but the weight expects 2
    graph = one_layer_graph(Conv(), (1, 3, 8, 8), {"weight": (4, 2, 3, 3)}, (1, 4, 6, 6))
    weights = {"layer1.weight": np.zeros((4, 2, 3, 3), np.float32)}
    with pytest.raises(ShapeError, match=r"layer1.*\(2, 3, 8, 8\).*\(4, 2, 3, 3\)"):
        engine.run(graph, weights, np.zeros((2, 3, 8, 8), np.float32), engine_name)


@pytest.mark.parametrize("engine_name", ENGINES)
def test_fc_length_mismatch_names_layer_and_shapes(engine_name):
    graph = one_layer_graph(Linear(), (1, 391), {"weight": (256, 392)}, (1, 256))
    weights = {"layer1.weight": np.zeros((256, 392), np.float32)}
    with pytest.raises(ShapeError, match=r"layer1.*\(5, 391\).*\(256, 392\)"):
        engine.run(graph, weights, np.zeros((5, 391), np.float32), engine_name)


@pytest.mark.parametrize("engine_name", ENGINES)
def test_pool_window_larger_than_input_names_layer_and_shapes(engine_name):
    graph = one_layer_graph(Pool(kernel=(3, 3), stride=(1, 1)), (1, 2, 2, 2), {}, (1, 2, 1, 1))
    with pytest.raises(ShapeError, match=r"layer1.*\(3, 3\).*\(1, 2, 2, 2\)"):
        engine.run(graph, {}, np.zeros((1, 2, 2, 2), np.float32), engine_name)


def test_wrong_input_shape_names_both_shapes():
    graph = import_torch(Net(), (1, 1, 28, 28))
    with pytest.raises(ShapeError, match=r"\(4, 1, 27, 28\).*\(N, 1, 28, 28\)"):
        engine.run(graph, Net(), np.zeros((4, 1, 27, 28), np.float32))


def test_operator_without_kernel_is_a_model_error_naming_it():
    node = Node(
        "mystery", Unknown(target="aten.foo", observed_shape=(1, 4)), ["input"], [(1, 4)], (1, 4)
    )
    graph = Graph([node], {"input": (1, 4)}, ["mystery"])
    with pytest.raises(ModelError, match=r"mystery.*aten\.foo"):
        engine.run(graph, {}, np.zeros((1, 4), np.float32))


def test_missing_or_misshaped_weights_are_checkpoint_errors():
    graph = import_torch(Net(), (1, 1, 28, 28))
    weights = engine.load_weights(Net())
    images = np.zeros((2, 1, 28, 28), np.float32)
    with pytest.raises(CheckpointError, match="fc1.weight"):
        engine.run(graph, {k: v for k, v in weights.items() if k != "fc1.weight"}, images)
    weights["fc2.bias"] = np.zeros(11, np.float32)
    with pytest.raises(CheckpointError, match=r"fc2.bias.*\(11,\).*\(10,\)"):
        engine.run(graph, weights, images)


def test_unknown_engine_is_a_usage_error():
    with pytest.raises(UsageError, match="fast"):
        engine.run(import_torch(Net(), (1, 1, 28, 28)), Net(), np.zeros((1, 1, 28, 28)), "fast")


def test_flatten_keeps_batch_in_a_hand_built_graph():
    node = Node(
        "flatten", Reshape.between((1, 2, 3, 3), (1, 18)), ["input"], [(1, 2, 3, 3)], (1, 18)
    )
    graph = Graph([node], {"input": (1, 2, 3, 3)}, ["flatten"])
    x = np.arange(5 * 18, dtype=np.float32).reshape(5, 2, 3, 3)
    np.testing.assert_array_equal(engine.run(graph, {}, x).logits, x.reshape(5, 18))


# --- the command --------------------------------------------------------------------------
def test_verify_command_json(sample_checkpoint, capsys):
    code = main(["verify", str(sample_checkpoint), "--data", "sample", "--limit", "200", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {
        "reference",
        "images",
        "accuracy",
        "reference_accuracy",
        "mismatches",
        "max_abs_diff",
        "max_abs_reference",
        "layers",
    } <= set(report)
    assert report["reference"] == "pytorch"
    assert report["images"] == 200 and report["mismatches"] == 0
    assert report["max_abs_diff"] <= 1e-4


def test_verify_command_text(sample_checkpoint, capsys):
    code = main(
        [
            "verify",
            str(sample_checkpoint),
            "--data",
            "sample",
            "--limit",
            "50",
            "--engine",
            "reference",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "differing predictions 0" in out and "fc2" in out and "images/s" in out


@pytest.mark.parametrize("args", [["--limit", "0"], ["--limit", "ten"], ["--engine", "fast"]])
def test_verify_command_bad_options(sample_checkpoint, capsys, args):
    assert main(["verify", str(sample_checkpoint), *args]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_predict_on_no_images_is_a_data_error():
    from dnnlens.errors import DataError
    from dnnlens.importers.torch import import_torch
    from dnnlens.models import Net

    net = Net()
    graph = import_torch(net, (1, 1, 28, 28))
    with pytest.raises(DataError, match="no images"):
        engine.predict(graph, net, np.zeros((0, 1, 28, 28), np.float32))


RECURRENT_FACTORY = '''
import torch
from torch import nn


class Tagger(nn.Module):
    """A 2-layer bidirectional LSTM with projections, a GRU over its output (sequence first),
    and a head reading both layers' final states."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, num_layers=2, bidirectional=True, batch_first=True,
                            proj_size=6)
        self.gru = nn.GRU(12, 10)
        self.head = nn.Linear(10 + 6 + 16, 5)

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        _, h_gru = self.gru(out.transpose(0, 1))
        return self.head(torch.cat([h_gru[-1], h[-1], c[0]], dim=1))


def tagger():
    torch.manual_seed(0)
    return Tagger()
'''


def test_cli_verifies_recurrent_layers_with_their_final_states(tmp_path, monkeypatch, capsys):
    """nn.LSTM and nn.GRU through our loop nests, against the PyTorch model itself; the head
    reads h_n and c_n, so the states are checked through the logits."""
    (tmp_path / "recurrent_factory.py").write_text(RECURRENT_FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(
        ["verify", "recurrent_factory:tagger", "--input", "1,7,8", "--images", "6", "--json"]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["reference"] == "pytorch" and report["images"] == 6
    assert report["mismatches"] == 0
    assert report["max_abs_diff"] <= 1e-5 * report["max_abs_reference"]
    layers = {row["name"]: row for row in report["layers"]}
    for name in ("lstm", "gru", "head"):
        assert layers[name]["max_abs_diff"] <= 1e-5 * layers[name]["max_abs_reference"], name


class UnfoldableNorms(nn.Module):
    """Batch norms the plan cannot fold into a conv: before a conv (densenet's order), after
    an add, and a BatchNorm1d over (N, C, L)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn_in = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn_add = nn.BatchNorm2d(4)
        self.bn_seq = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4 * 36, 5)

    def forward(self, x):
        y = self.conv(torch.relu(self.bn_in(x)))
        y = self.bn_add(y + 1.5 * y)
        return self.fc(self.bn_seq(y.flatten(2)).flatten(1))


@pytest.mark.parametrize("engine_name", engine.ENGINES)
def test_batch_norms_that_cannot_be_folded_run_on_their_running_statistics(engine_name):
    torch.manual_seed(5)
    model = UnfoldableNorms()
    for bn in (model.bn_in, model.bn_add, model.bn_seq):  # statistics that are not 0 and 1
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.5, 0.5)
    model.eval()
    result = verify(model, input_shape=(1, 3, 6, 6), images=6, engine=engine_name, layers=False)
    assert result.mismatches == 0
    assert result.max_abs_diff <= 1e-5 * result.max_abs_reference


class CrossAttention(nn.Module):
    """MultiheadAttention with queries other than its keys: its in-projection runs as slices
    of ``in_proj_weight`` (``mha.in_proj_weight[0:8]``), which are not state-dict keys."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(8, 8)
        self.memory = nn.Linear(8, 8)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        memory = self.memory(x)
        out, _ = self.mha(self.query(x), memory, memory)
        return self.head(out.mean(1))


def test_sliced_parameters_are_read_from_the_state_dict():
    torch.manual_seed(0)
    result = verify(CrossAttention().eval(), input_shape=(1, 5, 8), images=6, layers=False)
    assert result.mismatches == 0
    assert result.max_abs_diff <= 1e-5 * result.max_abs_reference
