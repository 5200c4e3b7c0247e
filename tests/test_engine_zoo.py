"""The torchvision classification zoo through our own loop nests, checked against PyTorch and,
exported to ONNX, against onnxruntime.

Each model is built with ``weights=None`` and seeded initial weights, and run on 8 seeded random
inputs of its input shape. The bar, for every model: 0 differing predictions (argmax over the
logits) and a largest |logit difference| of at most 1e-3 x the largest |reference logit|.

Two models run in ``make test`` (slow), and one more exported by both ONNX exporters; every
other model is marked ``engine_zoo`` and runs with ``pytest --run-engine-zoo
tests/test_engine_zoo.py`` (minutes per model on two cores: the engine runs every MAC of every
image in our own loop nests). Every named model must pass; in
the rest of the zoo a model with an operator that has no kernel in this build is an expected
failure naming the layer and the operator, and nothing else is. Measured results:
docs/engine-zoo.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torchvision

from dnnlens.analysis import analyze
from dnnlens.errors import ModelError
from dnnlens.importers import graph_from_file
from dnnlens.verify import VerifyResult, verify

IMAGES = 8
RELATIVE_BAR = 1e-3
#: Named by the issue; the first two are quick enough for every test run.
NAMED = [
    "resnet18",
    "mobilenet_v2",
    "resnet50",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "vgg11_bn",
    "alexnet",
    "squeezenet1_0",
    "googlenet",
    "inception_v3",
    "vit_b_16",
]
QUICK = {"resnet18", "mobilenet_v2"}
#: Window attention (relative-position bias lookups, Swin's shifted-window masks, padding and
#: cyclic shifts, Swin V2's arithmetic on parameters), checked against PyTorch; their ONNX
#: exports are not named here yet.
WINDOW_ATTENTION = ["swin_t", "swin_v2_t", "maxvit_t"]
ZOO = sorted(torchvision.models.list_models(module=torchvision.models))


def marks(name: str) -> list[pytest.MarkDecorator]:
    return [pytest.mark.slow] if name in QUICK else [pytest.mark.slow, pytest.mark.engine_zoo]


def verified(model: object, may_lack_kernels: bool = False) -> VerifyResult:
    """:func:`verify` on the zoo's inputs. With ``may_lack_kernels`` (the unnamed zoo), an
    engine refusing the model for an operator without a kernel is an expected failure naming
    the layer; the named models and their exports must run."""
    try:
        return verify(model, images=IMAGES, seed=0, layers=False)
    except ModelError as exc:
        if may_lack_kernels and "has no kernel" in str(exc):
            pytest.xfail(str(exc))
        raise


def assert_meets_the_bar(result: VerifyResult) -> None:
    assert result.images == IMAGES
    assert result.mismatches == 0, result
    assert result.max_abs_diff <= RELATIVE_BAR * result.max_abs_reference, (
        result.max_abs_diff,
        result.max_abs_reference,
    )


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=marks(n)) for n in NAMED + WINDOW_ATTENTION]
)
def test_named_model_runs_in_our_engine_like_pytorch(name):
    result = verified(name)
    assert result.reference == "pytorch"
    assert_meets_the_bar(result)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=[pytest.mark.slow, pytest.mark.engine_zoo])
        for n in ZOO
        if n not in NAMED + WINDOW_ATTENTION
    ],
)
def test_every_classification_model_runs_in_our_engine_like_pytorch(name):
    assert_meets_the_bar(verified(name, may_lack_kernels=True))


# --- the same models exported to ONNX, against onnxruntime --------------------------------
#: Exported and verified in every test run (both exporters, about 15 s of CPU each).
QUICK_EXPORTS = {"squeezenet1_0"}
#: Not named by the issue, but their exports needed importer rules (a Gather of constant
#: indices; Pad, folded masks, views of parameters): docs/engine-zoo.md.
MORE_EXPORTS = ["convnext_tiny", "swin_t"]
EXPORTERS = ["dynamo", "torchscript"]
EXPORT = """
import json, sys, warnings, torch, torchvision
warnings.simplefilter("ignore")
from dnnlens.importers import build_model
model, shape = build_model(sys.argv[1], device="cpu", seed=0)
torch.onnx.export(model.eval(), (torch.zeros(shape),), sys.argv[2], dynamo=sys.argv[3] == "dynamo",
                  verbose=False)
norms = (torch.nn.modules.batchnorm._BatchNorm,)
print(json.dumps({"params": sum(p.numel() for p in model.parameters()),
                  "batch_norms": any(isinstance(m, norms) for m in model.modules())}))
"""


def exported(name: str, exporter: str, folder: Path) -> tuple[Path, dict]:
    """``name`` with its seeded weights exported by ``exporter`` (in a child process: the
    TorchScript exporter leaves global state behind that breaks later tracing), and what
    PyTorch says of the model (``params``: its parameter count, ``batch_norms``: whether it
    has any); a skip naming the exporter's error where it cannot export the model."""
    path = folder / f"{name}-{exporter}.onnx"
    done = subprocess.run(
        [sys.executable, "-c", EXPORT, name, str(path), exporter],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"the {exporter} exporter cannot export {name}: {last[:200]}")
    return path, json.loads(done.stdout.strip().splitlines()[-1])


def export_marks(name: str) -> list[pytest.MarkDecorator]:
    if name in QUICK_EXPORTS:
        return [pytest.mark.slow]
    return [pytest.mark.slow, pytest.mark.engine_zoo]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=export_marks(n)) for n in NAMED + MORE_EXPORTS]
)
def test_named_model_exported_to_onnx_runs_like_onnxruntime(name, exporter, tmp_path):
    pytest.importorskip("onnxruntime")
    path, pytorch = exported(name, exporter, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = verified(path)
    assert result.reference == "onnxruntime"
    assert_meets_the_bar(result)
    if exporter == "torchscript" and not pytorch["batch_norms"] and name != "swin_t":
        # The file holds every parameter (those the exporter merged with an equal one under
        # their own names), so it reads PyTorch's count. Not so where the exporter folds batch
        # norms into the convolutions (both exporters do) or a table lookup into its result
        # (swin_t's relative position bias), nor for the dynamo exporter's default optimiser,
        # which also drops all-zero biases (docs/engine-zoo.md).
        assert analyze(graph_from_file(str(path))).totals.params == pytorch["params"]


def test_onnx_export_of_a_quick_model_runs_like_onnxruntime(tmp_path):
    """One export in every test run: the seed network through the dynamo exporter."""
    pytest.importorskip("onnxruntime")
    result = verified(exported("seed", "dynamo", tmp_path)[0])
    assert result.reference == "onnxruntime"
    assert_meets_the_bar(result)
