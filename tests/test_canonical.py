"""One IR per model: the same network from PyTorch and from its ONNX export gives the same
node kinds with the same attributes, after dnnlens.canonical."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from dnnlens.importers.torch import import_torch
from dnnlens.ops import AdaptivePool, Softmax


def export(model: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    """The dynamo exporter without its optimizer (which folds batch norms into convs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.zeros(shape),),
            str(path),
            dynamo=True,
            optimize=False,
            verbose=False,
        )
    return path


def layers(graph) -> list[tuple[str, object]]:
    return [(node.kind, node.op) for node in graph]


class GlobalMean(nn.Module):
    def __init__(self, keepdim: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.conv(x).mean((-1, -2), keepdim=self.keepdim), dim=-1)


def _import_both(model: nn.Module, shape: tuple[int, ...], tmp_path: Path):
    pytest.importorskip("onnx")
    from dnnlens.importers.onnx import import_onnx

    graph, _ = import_onnx(export(model, shape, tmp_path / "model.onnx"))
    return import_torch(model, shape), graph


@pytest.mark.slow
@pytest.mark.parametrize("keepdim", [True, False])
def test_a_mean_over_height_and_width_is_one_node_from_either_importer(tmp_path, keepdim):
    from_torch, from_onnx = _import_both(GlobalMean(keepdim), (1, 3, 8, 8), tmp_path)
    assert layers(from_torch) == layers(from_onnx)
    if keepdim:  # x.mean((2, 3), keepdim=True) is nn.AdaptiveAvgPool2d(1)
        assert from_torch.nodes[1].op == AdaptivePool(mode="avg", output_size=(1, 1))
        pool = import_torch(
            nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1)), (1, 3, 8, 8)
        )
        assert pool.nodes[1].op == from_torch.nodes[1].op
    softmax = [node.op for node in from_torch if isinstance(node.op, Softmax)]
    assert softmax and softmax[0].axis >= 0  # dim=-1 and axis=3 are one attribute


@pytest.mark.slow
def test_the_course_network_is_the_same_from_pytorch_and_onnx(tmp_path):
    from dnnlens.models import Net

    from_torch, from_onnx = _import_both(Net(), (1, 1, 28, 28), tmp_path)
    assert layers(from_torch) == layers(from_onnx)


@pytest.mark.slow
def test_resnet18_is_the_same_from_pytorch_and_onnx(tmp_path):
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    from_torch, from_onnx = _import_both(model, (1, 3, 224, 224), tmp_path)
    assert layers(from_torch) == layers(from_onnx)
