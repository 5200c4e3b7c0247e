"""Per-layer figures on the graph in Netron, the model viewer people already use.

What Netron reads (checked in its source, not guessed):

* **Attachment files.** Netron's ``metadata.Attachment`` (in its ``view``/metrics code)
  opens a ``.json`` file whose top-level ``signature`` is ``"netron:attachment"``; its
  ``metrics`` and ``metadata`` lists hold entries
  ``{"kind": "node", "target": <node name>, "name": <label>, "value": <value>}`` (or
  ``"identifier"`` instead of ``"target"``). Netron keys them ``node::<name>`` and shows them
  in the node's sidebar next to the metrics it computes itself. The user opens the model, then
  drags (or opens) the attachment into the view: Lutz Roeder in lutzroeder/netron PR #1418
  (2025-04-11) on external ``.metrics.json`` files, the feature requests #1240 (metrics) and
  #204 (MACs per layer). We write ``<model>.metrics.json`` next to the model.
* **Node doc strings** (``NodeProto.doc_string``), shown as the node's description by every
  Netron version. :func:`write_annotated_copy` writes a *copy* of the model with our figures
  in each node's doc string and ``metadata_props``; the user's file is never modified.

Nodes are matched by the ONNX node name each IR node carries in ``source``
(``onnx:<OpType> <node name>``, set by :mod:`dnnlens.importers.onnx`); an fc that absorbed
its bias ``Add`` is attached to the ``MatMul``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dnnlens.errors import ModelError
from dnnlens.fileio import atomic_write_bytes

SIGNATURE = "netron:attachment"


def onnx_node_name(source: str) -> str | None:
    """``"onnx:Conv /conv1/Conv"`` -> ``"/conv1/Conv"``; None for other sources."""
    if not source.startswith("onnx:") or " " not in source:
        return None
    return source.split(" ", 1)[1]


def _figures(row: Any) -> dict[str, Any]:
    """The figures of one analysis row we show, by label (ints exact, intensity rounded)."""
    return {
        "dnnlens.type": row.type,
        "dnnlens.macs": int(row.macs),
        "dnnlens.weights": int(row.weights),
        "dnnlens.biases": int(row.biases),
        "dnnlens.values_moved": int(row.values_moved),
        "dnnlens.bytes_moved": int(row.bytes_moved),
        "dnnlens.intensity": round(float(row.intensity), 6),
    }


def attachment(analysis: Any) -> dict[str, Any]:
    """The Netron attachment document for an analysis of an ONNX-imported graph."""
    metrics = []
    for node, row in zip(analysis.graph.nodes, analysis.rows):
        target = onnx_node_name(node.source)
        if target is None:
            continue
        for name, value in _figures(row).items():
            metrics.append({"kind": "node", "target": target, "name": name, "value": value})
    if not metrics:
        raise ModelError(
            "no layer of this analysis came from an ONNX file: a Netron "
            "attachment needs an ONNX model (dnnlens analyze model.onnx)"
        )
    t = analysis.totals
    model = [
        {"kind": "model", "target": "", "name": f"dnnlens.{k}", "value": v}
        for k, v in (
            ("macs", t.macs),
            ("weights", t.weights),
            ("biases", t.biases),
            ("values_moved", t.values_moved),
            ("dtype", analysis.dtype),
            ("batch", analysis.batch),
        )
    ]
    return {"signature": SIGNATURE, "metrics": metrics + model, "metadata": []}


def default_attachment_path(model_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.metrics.json`` next to it."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.metrics.json")


def write_attachment(analysis: Any, path: str | Path) -> Path:
    """Write the Netron attachment (JSON) for ``analysis`` to ``path``, atomically."""
    path = Path(path)
    text = json.dumps(attachment(analysis), indent=1)
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def write_annotated_copy(model_path: str | Path, analysis: Any, out_path: str | Path) -> Path:
    """A copy of the ONNX model with our figures in each node's doc string and metadata.

    Refuses to overwrite the source model (compare resolved paths).
    """
    import onnx

    source, out = Path(model_path), Path(out_path)
    if out.resolve() == source.resolve():
        raise ModelError(f"refusing to overwrite {source}: write the annotated copy elsewhere")
    doc = attachment(analysis)
    by_node: dict[str, dict[str, Any]] = {}
    for entry in doc["metrics"]:
        if entry["kind"] == "node":
            by_node.setdefault(entry["target"], {})[entry["name"]] = entry["value"]
    model = onnx.load(str(source))
    for node in model.graph.node:
        figures = by_node.get(node.name)
        if not figures:
            continue
        lines = [
            f"{k.removeprefix('dnnlens.')}: {v:,}"
            if isinstance(v, int)
            else f"{k.removeprefix('dnnlens.')}: {v}"
            for k, v in figures.items()
        ]
        node.doc_string = "\n".join(["dnnlens", *lines])
        for key, value in figures.items():
            prop = node.metadata_props.add()
            prop.key, prop.value = key, str(value)
    atomic_write_bytes(out, model.SerializeToString())
    return out


def nodes_without_figures(analysis: Any, model_nodes: Sequence[str]) -> list[str]:
    """ONNX node names the attachment does not cover (folded shape arithmetic, views fused)."""
    covered = {onnx_node_name(n.source) for n in analysis.graph.nodes}
    return [name for name in model_nodes if name not in covered]
