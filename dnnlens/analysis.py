"""Per-layer analysis: shapes, weights, MACs, memory traffic and compute intensity.

Three stages kept apart (as torchinfo does): *collect* (an importer gives the IR graph),
*rows* (:func:`layer_rows`: one :class:`LayerRow` per node, plain data) and *totals*
(:func:`totals`); tables, JSON, CSV, DataFrames and HTML are views of those rows
(:func:`render_text`, :func:`render_html`, :meth:`Analysis.to_json`).

Units, once (docs/units.md says more):

* ``macs``: multiply-accumulates for the whole batch, padding zeros counted, bias additions
  not counted; FLOPs = 2 x MACs;
* ``weights`` exclude biases (a column of their own); a tied parameter is counted once in the
  totals and at every use in the rows (it is read at every call);
* ``values_moved``: input values read + weight values read + output values written, each once
  from main memory; weights once per batch, activations for every image (shapes carry the
  batch); views (reshape, flatten, eval dropout) move nothing;
* ``bytes_moved`` = values_moved x bytes per value of ``dtype``;
* ``intensity`` = macs / values_moved (the notebook's compute intensity; 0.0 when nothing moves).
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from math import prod
from typing import TYPE_CHECKING, Any, Sequence

from dnnlens.errors import UsageError
from dnnlens.ir import Graph, Node, Shape
from dnnlens.ops.base import Unknown, bias_count, is_weight, weight_count

if TYPE_CHECKING:
    import pandas

#: Bytes per value for each supported dtype.
DTYPE_BYTES: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}

#: What each number means; printed with the table and written into the JSON.
UNITS: dict[str, str] = {
    "macs": "multiply-accumulates per batch, padding zeros counted, bias adds not counted "
            "(FLOPs = 2 x MACs)",
    "weights": "parameter values excluding biases (tied parameters once in the totals)",
    "biases": "bias values",
    "weight_bytes": "weights x bytes per value of dtype",
    "values_moved": "input + weight + output values, each read or written once from main "
                    "memory; weights once per batch, activations per image; views move nothing",
    "bytes_moved": "values_moved x bytes per value of dtype",
    "intensity": "macs / values_moved (0 when nothing moves)",
    "shapes": "(N, C, H, W) with the batch N",
}


@dataclass(frozen=True)
class LayerRow:
    """One row of the table: one operator application (one IR node), or a group of them."""

    index: int  # 1-based, execution order
    name: str
    module: str
    type: str  # the operator kind: conv, relu, maxpool, fc, flatten, matmul, ...
    descriptor: tuple  # notebook's: conv (Kw,Kh,Cin,Cout), pool (xw,yw,xs,ys), fc (out,in)
    input_shape: Shape  # the first activation input, () when there is none
    input_shapes: tuple[Shape, ...]
    output_shape: Shape
    weights: int
    biases: int
    weight_bytes: int
    macs: int
    values_moved: int
    bytes_moved: int
    intensity: float


@dataclass(frozen=True)
class Totals:
    """Column totals. ``weights``/``biases`` count each distinct parameter once (tied modules),
    ``macs``/``values_moved``/``bytes`` add every row, ``outputs`` adds every row's output
    values (the notebook's sum of output sizes)."""

    weights: int
    biases: int
    macs: int
    outputs: int
    values_moved: int
    bytes: int

    @property
    def params(self) -> int:
        return self.weights + self.biases

    @property
    def intensity(self) -> float:
        return self.macs / self.values_moved if self.values_moved else 0.0


def bytes_per_value(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise UsageError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


# ---------------------------------------------------------------------------------------------
# Rows and totals (data)


def layer_row(index: int, node: Node, nbytes: int) -> LayerRow:
    """The row of one node; ``nbytes`` is bytes per value."""
    params = {role: p.shape for role, p in node.params.items()}
    shapes, out = node.input_shapes, node.output_shape
    weights = weight_count(params)
    macs = int(node.op.macs(shapes, out, params))
    moved = int(node.op.values_moved(shapes, out, params))
    try:
        descriptor = tuple(node.op.descriptor(shapes, params))
    except Exception:  # noqa: BLE001 - a descriptor is a label; never fail the table on it
        descriptor = ()
    return LayerRow(
        index=index, name=node.name, module=node.module, type=node.kind,
        descriptor=descriptor, input_shape=tuple(shapes[0]) if shapes else (),
        input_shapes=tuple(tuple(s) for s in shapes), output_shape=tuple(out),
        weights=weights, biases=bias_count(params), weight_bytes=weights * nbytes, macs=macs,
        values_moved=moved, bytes_moved=moved * nbytes,
        intensity=macs / moved if moved else 0.0)


def layer_rows(graph: Graph, dtype: str = "fp32") -> list[LayerRow]:
    nbytes = bytes_per_value(dtype)
    return [layer_row(i, node, nbytes) for i, node in enumerate(graph.nodes, start=1)]


def totals(graph: Graph, rows: Sequence[LayerRow], dtype: str = "fp32") -> Totals:
    """Column totals; each distinct parameter once, by the role of its first use."""
    roles: dict[str, tuple[str, int]] = {}
    for node in graph:
        for role, param in node.params.items():
            roles.setdefault(param.name, (role, param.numel))
    weights = sum(n for role, n in roles.values() if is_weight(role))
    biases = sum(n for role, n in roles.values() if role == "bias")
    moved = sum(r.values_moved for r in rows)
    return Totals(weights=weights, biases=biases, macs=sum(r.macs for r in rows),
                  outputs=sum(prod(r.output_shape) for r in rows), values_moved=moved,
                  bytes=moved * bytes_per_value(dtype))


def group_rows(rows: Sequence[LayerRow], depth: int) -> list[LayerRow]:
    """Rows merged by the first ``depth`` components of their module name (consecutive rows
    only, so execution order stays): ``--depth 1`` on a ResNet gives stem, layer1..4, fc."""
    if depth < 0:
        raise UsageError(f"--depth must be 0 or more, got {depth}")
    groups: list[list[LayerRow]] = []
    keys: list[str] = []
    for row in rows:
        key = ".".join(row.module.split(".")[:depth]) if depth else ""
        if depth and not row.module:
            key = row.name
        if groups and keys[-1] == key:
            groups[-1].append(row)
        else:
            groups.append([row])
            keys.append(key)
    return [_merge(i, key, group) for i, (key, group) in enumerate(zip(keys, groups), start=1)]


def _merge(index: int, key: str, group: list[LayerRow]) -> LayerRow:
    if len(group) == 1:
        return LayerRow(**{**asdict(group[0]), "index": index})
    kinds = {r.type for r in group}
    macs = sum(r.macs for r in group)
    moved = sum(r.values_moved for r in group)
    return LayerRow(
        index=index, name=key or "(model)", module=key,
        type=kinds.pop() if len(kinds) == 1 else f"{len(group)} ops", descriptor=(),
        input_shape=group[0].input_shape, input_shapes=group[0].input_shapes,
        output_shape=group[-1].output_shape, weights=sum(r.weights for r in group),
        biases=sum(r.biases for r in group), weight_bytes=sum(r.weight_bytes for r in group),
        macs=macs, values_moved=moved, bytes_moved=sum(r.bytes_moved for r in group),
        intensity=macs / moved if moved else 0.0)


def unknown_warnings(graph: Graph) -> list[str]:
    """One warning listing every operator without a rule (never a silent zero)."""
    unknown: dict[str, list[str]] = {}
    for node in graph:
        if isinstance(node.op, Unknown):
            unknown.setdefault(node.op.target or node.source, []).append(node.name)
    if not unknown:
        return []
    listed = "; ".join(f"{target} ({len(names)}x: {', '.join(names[:3])}"
                       f"{', ...' if len(names) > 3 else ''})"
                       for target, names in unknown.items())
    count = sum(len(v) for v in unknown.values())
    return [f"{count} operator(s) have no rule, their MACs are unknown and counted as 0: {listed}"]


# ---------------------------------------------------------------------------------------------
# The result object


@dataclass
class Analysis:
    """The analysis of one network at one batch size and dtype: rows, totals, warnings."""

    rows: list[LayerRow]
    totals: Totals
    graph: Graph
    batch: int
    dtype: str
    warnings: list[str] = field(default_factory=list)

    @property
    def model(self) -> str:
        return self.graph.name

    @property
    def input_shape(self) -> Shape:
        return next(iter(self.graph.inputs.values()), ())

    def grouped(self, depth: int | None) -> list[LayerRow]:
        """The rows, or merged by module depth (see :func:`group_rows`)."""
        return list(self.rows) if depth is None else group_rows(self.rows, depth)

    def to_dicts(self, depth: int | None = None) -> list[dict[str, Any]]:
        """Every row as a dict of its fields (tuples kept as tuples)."""
        return [asdict(row) for row in self.grouped(depth)]

    def to_dataframe(self, depth: int | None = None) -> "pandas.DataFrame":
        import pandas  # lazily: pandas is optional

        return pandas.DataFrame(self.to_dicts(depth)).set_index("index")

    def to_json_dict(self, depth: int | None = None) -> dict[str, Any]:
        """The JSON document of issue 4 (keys in its order)."""
        keys = ("index", "name", "type", "descriptor", "input_shape", "output_shape",
                "weights", "biases", "weight_bytes", "macs", "values_moved", "intensity")
        layers = [{k: _jsonable(getattr(row, k)) for k in keys} for row in self.grouped(depth)]
        t = self.totals
        return {"model": self.model, "input_shape": list(self.input_shape), "batch": self.batch,
                "dtype": self.dtype, "units": UNITS, "layers": layers,
                "totals": {"weights": t.weights, "biases": t.biases, "macs": t.macs,
                           "outputs": t.outputs, "values_moved": t.values_moved}}

    def to_json(self, depth: int | None = None, indent: int | None = 2) -> str:
        return json.dumps(self.to_json_dict(depth), indent=indent)

    def to_csv(self, path: str, depth: int | None = None) -> None:
        """Write the rows as CSV (atomically: a temp file in the same folder, then replace)."""
        import csv

        from dnnlens.fileio import atomic_open

        rows = self.to_dicts(depth)
        with atomic_open(path, "w", newline="", what="the CSV ") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["index"])
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _csv_cell(v) for k, v in row.items()})

    def render(self, depth: int | None = None) -> str:
        return render_text(self, depth)

    def __str__(self) -> str:
        return render_text(self)

    def _repr_html_(self) -> str:
        return render_html(self)


def analyze(model_or_graph: Any, input_shape: Sequence[int] | None = None, *,
            batch: int | None = None, dtype: str = "fp32", example_inputs: Any = None,
            kwargs: dict | None = None) -> Analysis:
    """Analyse an ``nn.Module`` (traced on the meta device) or an IR :class:`Graph`.

    ``input_shape`` is ``(N, C, H, W)``; ``batch``, when given, replaces ``N``. Shapes carry
    the batch, so MACs and activation traffic scale with it and weights are moved once.
    ``dtype`` (fp32, fp16, bf16, int8) sets the bytes per value.
    """
    bytes_per_value(dtype)  # validate before any tracing
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise UsageError(f"batch must be a positive integer, got {batch!r}")
    if isinstance(model_or_graph, Graph):
        graph = model_or_graph
        have = next(iter(graph.inputs.values()), (1,))
        if batch is not None and have and have[0] != batch:
            raise UsageError(f"the graph was imported at batch {have[0]}; import the model "
                             f"again with batch {batch}")
    else:
        from dnnlens.importers.torch import import_torch

        if input_shape is not None and batch is not None:
            input_shape = (batch, *tuple(input_shape)[1:])
        graph = import_torch(model_or_graph, input_shape, example_inputs=example_inputs,
                             kwargs=kwargs)
    rows = layer_rows(graph, dtype)
    first = next(iter(graph.inputs.values()), ())
    return Analysis(rows=rows, totals=totals(graph, rows, dtype), graph=graph,
                    batch=int(first[0]) if first else 1, dtype=dtype,
                    warnings=unknown_warnings(graph))


# ---------------------------------------------------------------------------------------------
# Views: terminal table and HTML

_COLUMNS = ("#", "name", "type", "descriptor", "output shape", "weights", "biases", "MACs",
            "values moved", "intensity")


def _cells(row: LayerRow) -> list[str]:
    return [str(row.index), row.name, row.type, _shape_text(row.descriptor),
            _shape_text(row.output_shape), f"{row.weights:,}", f"{row.biases:,}",
            f"{row.macs:,}", f"{row.values_moved:,}", f"{row.intensity:.4f}"]


def _header_lines(a: Analysis) -> list[str]:
    nbytes = DTYPE_BYTES[a.dtype]
    return [
        f"{a.model}: input {_shape_text(a.input_shape)}, batch {a.batch}, {a.dtype} "
        f"({nbytes} byte{'s' if nbytes > 1 else ''} per value)",
        "MACs: multiply-accumulates per batch, padding zeros counted, bias adds not "
        "(FLOPs = 2 x MACs).",
        "Weights exclude biases. Values moved: inputs + weights + outputs, each once from "
        "memory (weights once per batch); views move nothing.",
        "Intensity: MACs per value moved.",
    ]


def render_text(a: Analysis, depth: int | None = None) -> str:
    """A plain-text table with its units and totals, for the terminal."""
    rows = [_cells(r) for r in a.grouped(depth)]
    t = a.totals
    total = ["", "total", "", "", f"{t.outputs:,} outputs", f"{t.weights:,}", f"{t.biases:,}",
             f"{t.macs:,}", f"{t.values_moved:,}", f"{t.intensity:.4f}"]
    widths = [max(len(c[i]) for c in [list(_COLUMNS), *rows, total]) for i in range(len(_COLUMNS))]
    right = {0, 5, 6, 7, 8, 9}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [*_header_lines(a), "", line(_COLUMNS), rule, *map(line, rows), rule, line(total)]
    out.append(f"memory traffic: {_bytes_text(t.bytes)}; weights: "
               f"{_bytes_text((t.weights + t.biases) * DTYPE_BYTES[a.dtype])} "
               f"({t.weights + t.biases:,} parameters); FLOPs: {2 * t.macs:,}")
    out += [f"warning: {w}" for w in a.warnings]
    return "\n".join(out)


def render_html(a: Analysis, depth: int | None = None) -> str:
    """An HTML table (what a notebook shows)."""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in _COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in _cells(r)) + "</tr>"
                   for r in a.grouped(depth))
    t = a.totals
    foot = (f"<tr><th></th><th>total</th><th></th><th></th><th>{t.outputs:,} outputs</th>"
            f"<th>{t.weights:,}</th><th>{t.biases:,}</th><th>{t.macs:,}</th>"
            f"<th>{t.values_moved:,}</th><th>{t.intensity:.4f}</th></tr>")
    notes = "<br>".join(esc(line) for line in _header_lines(a))
    warn = "".join(f"<p><b>warning:</b> {esc(w)}</p>" for w in a.warnings)
    return (f"<div><p>{notes}</p><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
            f"<tfoot>{foot}</tfoot></table>{warn}</div>")


def _shape_text(shape: Sequence[Any]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _bytes_text(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _csv_cell(value: Any) -> Any:
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value) if all(isinstance(v, int) for v in value) \
            else str(value)
    return value
