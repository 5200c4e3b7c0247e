"""Whole-model truths from elsewhere: torchvision's published parameter counts and GMACs
(``get_model_weights(name).DEFAULT.meta``: ``num_params``, ``_ops`` = GMACs at batch 1, printed
to 3 decimals), and PyTorch's own FlopCounterMode (FLOPs = 2 x MACs) for every module.

Models are built with ``weights=None`` on the meta device: nothing is downloaded or allocated.
"""

from __future__ import annotations

import pytest
import torch

from dnnlens.analysis import analyze

torchvision = pytest.importorskip("torchvision")
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from torchvision.models import get_model, get_model_weights  # noqa: E402

MODELS = [
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
COUNTED = {"conv", "convtranspose", "fc", "matmul", "attention"}

pytestmark = pytest.mark.slow


def build(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return get_model(name, weights=None).eval()


@pytest.mark.parametrize("name", MODELS)
def test_params_and_macs_match_torchvision(name):
    meta = get_model_weights(name).DEFAULT.meta
    result = analyze(build(name), (1, 3, 224, 224))
    assert result.totals.weights + result.totals.biases == meta["num_params"]
    assert round(result.totals.macs / 1e9, 3) == pytest.approx(meta["_ops"], abs=1e-9)
    assert not result.warnings, result.warnings


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vit_b_16"])
def test_every_module_matches_flop_counter(name):
    model = build(name)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, 224, 224, device="meta"))
    root = type(model).__name__
    truth = {
        key: sum(ops.values()) for key, ops in counter.get_flop_counts().items() if key != "Global"
    }
    result = analyze(model, (1, 3, 224, 224))
    checked = 0
    for key, flops in truth.items():
        module = key[len(root) + 1 :] if key != root else ""
        ours = sum(
            r.macs
            for r in result.rows
            if r.type in COUNTED
            and (not module or r.module == module or r.module.startswith(module + "."))
        )
        assert 2 * ours == flops, (key, ours, flops)
        checked += 1
    assert checked > 20
