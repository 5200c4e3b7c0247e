"""dnnlens.verify: our engine against the real model (PyTorch's own intermediate values,
onnxruntime's), for any model argument; models the engine cannot run are refused first."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dnnlens.cli import main
from dnnlens.errors import ModelError
from dnnlens.verify import verify


class ScaledFc(nn.Module):
    """``fc(x) * 0.5 + 1.0``: scalar constant operands (ONNX once dropped them)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * 0.5 + 1.0


class ConvBnNet(nn.Module):
    """conv -> batch norm -> relu -> pool -> fc, with running statistics far from 0 and 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(6 * 4 * 4, 10)
        self.bn1d = nn.BatchNorm1d(10)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-2, 2)
            self.bn.running_var.uniform_(0.5, 3)
            self.bn.weight.uniform_(0.5, 2)
            self.bn.bias.uniform_(-1, 1)
            self.bn1d.running_mean.uniform_(-1, 1)
            self.bn1d.running_var.uniform_(0.5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn(self.conv(x))))
        return self.bn1d(self.fc(x.flatten(1)))


class Sorting(nn.Module):
    """An operator dnnlens has no kernel for (sort) after a layer it has one for."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.real_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "meta":
            self.real_calls += 1
        return torch.sort(self.fc(x), dim=1).values


def export(model: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), (torch.zeros(shape),), str(path), dynamo=True, verbose=False
        )
    return path


@pytest.mark.parametrize("budget", [None, 1], ids=["all-at-once", "a-node-at-a-time"])
def test_scalar_constants_of_an_onnx_export_are_kept(tmp_path, monkeypatch, budget):
    pytest.importorskip("onnxruntime")
    if budget is not None:  # each node's value taken on a run of its own (large models)
        monkeypatch.setattr("dnnlens.verify.LAYER_BUDGET", budget)
    torch.manual_seed(0)
    path = export(ScaledFc(), (1, 12), tmp_path / "scaled.onnx")
    result = verify(path, images=16)
    assert result.reference == "onnxruntime" and result.images == 16
    assert result.mismatches == 0
    # dropping the 0.5 and the 1.0 gave a max logit error of 1.3 on this kind of model
    assert result.max_abs_diff <= 1e-5 * max(1.0, result.max_abs_reference)
    kinds = [layer.kind for layer in result.layers]
    assert kinds == ["fc", "mul", "add"]
    assert all(
        layer.max_abs_diff is not None and layer.max_abs_diff < 1e-5 for layer in result.layers
    )


@pytest.mark.parametrize("budget", [None, 1], ids=["all-at-once", "a-node-at-a-time"])
@pytest.mark.parametrize("engine_name", ["compiled", "reference"])
def test_batch_norm_is_checked_against_the_modules_own_outputs(engine_name, budget, monkeypatch):
    if budget is not None:  # each node's value taken on a run of its own (large models)
        monkeypatch.setattr("dnnlens.verify.LAYER_BUDGET", budget)
    torch.manual_seed(1)
    model = ConvBnNet().eval()
    result = verify(model, input_shape=(1, 3, 8, 8), images=12, engine=engine_name)
    assert result.reference == "pytorch" and result.mismatches == 0
    assert result.max_abs_diff <= 1e-5 * result.max_abs_reference
    rows = {layer.name: layer for layer in result.layers}
    # The per-layer run keeps every value, so the batch norms run on their own kernel (not
    # folded: the prediction run folds them, tests/test_engine_plan.py) and each layer is
    # compared with its module's own output (a hook), the functional relu with the aten
    # operator's output in the real run.
    for name in ("conv", "bn", "relu", "pool", "fc", "bn1d"):
        assert not rows[name].note, rows[name]
        assert rows[name].max_abs_diff is not None, rows[name]
        assert rows[name].max_abs_diff <= 1e-5 * max(1.0, rows[name].max_abs_reference)


def test_a_large_models_values_are_taken_a_group_at_a_time(monkeypatch):
    """Under a budget each side holds only one group's values: the reference copies only
    the values asked for, and our plan returns only the nodes kept."""
    import dnnlens.verify as verify_module

    copies: list[int] = []
    real = verify_module.torch_values

    def counted(*args, **kwargs):
        modules, operators = real(*args, **kwargs)
        tables = [*modules.values(), *operators.values()]
        copies.append(sum(value is not None for calls in tables for value in calls))
        return modules, operators

    monkeypatch.setattr(verify_module, "torch_values", counted)
    monkeypatch.setattr(verify_module, "LAYER_BUDGET", 1)
    torch.manual_seed(1)
    result = verify(ConvBnNet().eval(), input_shape=(1, 3, 8, 8), images=4)
    compared = [layer for layer in result.layers if layer.max_abs_diff is not None]
    # one run per node, each copying at most that node's value (the flatten has none of
    # its own in the real model: a view)
    assert len(copies) == len(result.layers) == 7 and max(copies) == 1, copies
    assert len(compared) == sum(copies) == 6


def test_a_model_without_a_kernel_is_refused_before_anything_runs():
    model = Sorting()
    with pytest.raises(ModelError, match=r"layer '\w+' \(aten\.sort\) has no kernel") as caught:
        verify(model, input_shape=(1, 4))
    assert model.real_calls == 0
    # one line that names the layer and the operator once, then why and what it means
    message = str(caught.value)
    assert "\n" not in message and message.count("sort") == 1, message
    assert message.endswith(
        "has no kernel: dnnlens has no rule for it, so its costs are unknown too; "
        "the engine cannot run this network"
    ), message


def test_cli_verifies_a_factory_with_a_checkpoint(tmp_path, capsys):
    from dnnlens.models import Net

    torch.manual_seed(3)
    net = Net()
    torch.save(net.state_dict(), tmp_path / "net.pth")
    code = main(
        [
            "verify",
            "dnnlens.models:Net",
            "--weights",
            str(tmp_path / "net.pth"),
            "--input",
            "1,1,28,28",
            "--images",
            "5",
            "--json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {
        "reference",
        "images",
        "mismatches",
        "max_abs_diff",
        "max_abs_reference",
        "layers",
    } <= set(report)
    assert report["reference"] == "pytorch" and report["images"] == 5
    assert report["mismatches"] == 0 and report["accuracy"] is None
    # the checkpoint's weights, not a fresh initialisation: torch's logits on the same inputs
    images = np.random.default_rng(0).standard_normal((5, 1, 28, 28), dtype=np.float32)
    with torch.inference_mode():
        logits = net.eval()(torch.from_numpy(images)).numpy()
    assert report["max_abs_reference"] == pytest.approx(float(np.abs(logits).max()), rel=1e-6)


def test_cli_refuses_an_unknown_model_in_one_line(capsys):
    assert main(["verify", "resnet19"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'resnet19'") and err.count("\n") == 1


def test_cli_refuses_a_spec_file_which_has_no_weights(capsys):
    spec = Path(__file__).resolve().parent.parent / "examples" / "specs" / "analyzing-dnns.toml"
    assert main(["verify", str(spec)]) == 2
    assert "without weights" in capsys.readouterr().err
