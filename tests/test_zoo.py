"""Every torchvision model by name through ``dnnlens analyze``, against torchvision's published
figures (``get_model_weights(name).DEFAULT.meta``: ``num_params``, and ``_ops``, GMACs at batch
1 printed to 3 decimals).

A model's ``params`` must equal ``num_params`` exactly, and its MACs ``_ops`` at the printed
precision, unless docs/zoo.md lists it with the measured difference and its reason. The CLI
runs in-process, as a user types it, and must never print a traceback.

The ten models the issue names have their own test; the other 111 run in a sweep (detection
models really run on an 800x800 image) that takes about a minute of CPU on this two-core
machine, so it runs in ``make test`` too; it is marked ``slow`` and ``zoo``
(``pytest -m "not zoo"`` skips it).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from dnnlens import zoo
from dnnlens.cli import main

#: The models the issue names; each was failing or wrong before.
NAMED = (
    "swin_t",
    "swin_v2_t",
    "regnet_y_400mf",
    "vit_h_14",
    "inception_v3",
    "maxvit_t",
    "deeplabv3_mobilenet_v3_large",
    "fcos_resnet50_fpn",
    "r3d_18",
    "raft_small",
)

ZOO_DOC = Path(__file__).resolve().parents[1] / "docs" / "zoo.md"


def documented_differences() -> set[str]:
    """Models docs/zoo.md lists under "Differences" (first column of its table)."""
    text = ZOO_DOC.read_text(encoding="utf-8")
    section = text.split("## Differences", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\|\s*`([\w.]+)`\s*\|", section, flags=re.MULTILINE))


def analyze_cli(name: str) -> tuple[int, dict, str]:
    """``dnnlens analyze NAME --json`` in-process: exit code, the JSON document, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["analyze", name, "--json"])
    doc = json.loads(out.getvalue()) if code == 0 else {}
    return code, doc, err.getvalue()


def check_against_published(name: str) -> None:
    code, doc, stderr = analyze_cli(name)
    assert "Traceback" not in stderr, stderr
    assert code == 0, stderr
    assert "default" in stderr  # the CLI says which input it chose
    num_params, gmacs = zoo.published(name)
    totals = doc["totals"]
    assert totals["params"] == num_params, (name, totals["params"], num_params)
    if not totals["unused_modules"]:  # every parameter used, each counted once
        assert totals["weights"] + totals["biases"] == num_params
    if name in documented_differences():
        return
    assert round(totals["macs"] / 1e9, 3) == pytest.approx(gmacs, abs=1e-9), (
        name,
        totals["macs"],
        gmacs,
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMED)
def test_named_models_equal_their_published_figures(name):
    assert name not in documented_differences()  # these are exact, not excused
    check_against_published(name)


def test_inception_lists_its_unused_aux_head():
    # torchvision counts AuxLogits (27,161,264 parameters); the eval forward never runs it:
    # 27,161,264 - 23,834,568 = 3,326,696 parameters unused.
    code, doc, stderr = analyze_cli("inception_v3")
    assert code == 0, stderr
    totals = doc["totals"]
    assert totals["params"] == 27_161_264
    assert totals["weights"] + totals["biases"] == 23_834_568
    assert totals["params_unused"] == 3_326_696
    assert totals["unused_modules"] == ["AuxLogits"]


@pytest.mark.slow
def test_buffers_are_never_weights():
    # maxvit_t's int64 relative_position_index buffers (52,822 values) used to count.
    code, doc, _ = analyze_cli("maxvit_t")
    assert code == 0
    assert doc["totals"]["weights"] + doc["totals"]["biases"] == 30_919_624


def test_documented_differences_are_real_models():
    assert documented_differences() <= set(zoo.names())


@pytest.mark.slow
@pytest.mark.zoo
@pytest.mark.parametrize("name", [n for n in zoo.names() if n not in NAMED])
def test_every_other_model_through_the_cli(name):
    """With the named test above: all of ``list_models()``, each model once."""
    check_against_published(name)
