"""Netron attachments: the JSON Netron's attachment reader expects, each entry on a real ONNX
node, with the figures derived by hand; the annotated copy never touches the user's file."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest

from dnnlens.analysis import analyze
from dnnlens.cli import main
from dnnlens.errors import ModelError
from dnnlens.importers.onnx import import_onnx
from dnnlens.netron import SIGNATURE, attachment, write_annotated_copy, write_attachment

onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def net_onnx(tmp_path_factory) -> Path:
    import torch

    from dnnlens.models import Net

    path = tmp_path_factory.mktemp("netron") / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Net().eval(),
            (torch.zeros(1, 1, 28, 28),),
            str(path),
            dynamo=True,
            optimize=False,
            verbose=False,
        )
    return path


def node_figures(doc: dict) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for entry in doc["metrics"]:
        if entry["kind"] == "node":
            out.setdefault(entry["target"], {})[entry["name"]] = entry["value"]
    return out


def test_attachment_targets_real_nodes_with_hand_derived_figures(net_onnx, tmp_path):
    a = analyze(import_onnx(net_onnx)[0])
    path = write_attachment(a, tmp_path / "net.metrics.json")
    doc = json.loads(path.read_text())
    assert doc["signature"] == SIGNATURE == "netron:attachment"  # what Netron's reader checks
    figures = node_figures(doc)
    model = onnx.load(str(net_onnx))
    names = {n.name for n in model.graph.node}
    assert set(figures) <= names and figures
    by_type = {}
    for node in model.graph.node:
        if node.name in figures:
            by_type.setdefault(node.op_type, []).append(figures[node.name])
    conv1, conv2 = by_type["Conv"]
    assert conv1["dnnlens.macs"] == 28 * 28 * 4 * 5 * 5 * 1  # = 78,400
    assert conv1["dnnlens.values_moved"] == 784 + 100 + 3136  # in + weights + out = 4,020
    assert conv2["dnnlens.macs"] == 14 * 14 * 8 * 5 * 5 * 4  # = 156,800
    fcs = by_type["Gemm"]
    assert [f["dnnlens.weights"] for f in fcs] == [392 * 256, 256 * 10]
    assert fcs[0]["dnnlens.intensity"] == pytest.approx(100352 / 101000, abs=1e-6)
    totals = {e["name"]: e["value"] for e in doc["metrics"] if e["kind"] == "model"}
    assert totals["dnnlens.macs"] == 338112


def test_annotated_copy_leaves_the_model_alone(net_onnx, tmp_path):
    before = hashlib.sha256(net_onnx.read_bytes()).hexdigest()
    a = analyze(import_onnx(net_onnx)[0])
    out = write_annotated_copy(net_onnx, a, tmp_path / "annotated.onnx")
    assert hashlib.sha256(net_onnx.read_bytes()).hexdigest() == before
    copy = onnx.load(str(out))
    onnx.checker.check_model(copy)
    conv = next(n for n in copy.graph.node if n.op_type == "Conv")
    assert "macs: 78,400" in conv.doc_string
    assert {p.key: p.value for p in conv.metadata_props}["dnnlens.macs"] == "78400"
    with pytest.raises(ModelError, match="refusing to overwrite"):
        write_annotated_copy(net_onnx, a, net_onnx)


def test_cli_writes_the_attachment(net_onnx, tmp_path):
    out = tmp_path / "cli.metrics.json"
    assert main(["analyze", str(net_onnx), "--netron", str(out)]) == 0
    assert json.loads(out.read_text())["signature"] == SIGNATURE


def test_attachment_needs_an_onnx_graph():
    from dnnlens.models import Net

    with pytest.raises(ModelError, match="ONNX"):
        attachment(analyze(Net(), (1, 1, 28, 28)))
