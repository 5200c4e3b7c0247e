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

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from math import prod
from typing import TYPE_CHECKING, Any

from dnnlens.errors import DnnlensError, UsageError, annotate
from dnnlens.ir import Graph, Node, Shape
from dnnlens.ops.base import Unknown, bias_count, is_bias, is_weight, weight_count

if TYPE_CHECKING:
    import pandas

    from dnnlens.formatting import Column

#: Bytes per value for each supported dtype.
DTYPE_BYTES: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}

#: What each number means; printed with the table and written into the JSON.
UNITS: dict[str, str] = {
    "macs": "multiply-accumulates per batch, padding zeros counted, bias adds not counted "
    "(FLOPs = 2 x MACs)",
    "weights": "parameter values excluding biases (tied parameters once in the totals)",
    "biases": "bias values",
    "params": "every parameter of the model once, used or not (torchvision's num_params); "
    "buffers are never parameters",
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
    """Column totals. ``weights``/``biases`` count each distinct parameter the traced forward
    used once (tied modules), ``macs``/``values_moved``/``bytes`` add every row, ``outputs``
    adds every row's output values (the notebook's sum of output sizes).

    ``params`` is every parameter of the model once, used or not: what
    ``sum(p.numel() for p in model.parameters())`` and torchvision's ``num_params`` say.
    ``params_unused`` of them belong to ``unused_modules``, whose parameters the traced forward
    never touched (Inception's auxiliary head in eval mode). Buffers are never parameters."""

    weights: int
    biases: int
    macs: int
    outputs: int
    values_moved: int
    bytes: int
    params: int = -1  # -1: weights + biases (a graph that does not list its parameters)
    params_unused: int = 0
    unused_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.params < 0:
            object.__setattr__(self, "params", self.weights + self.biases)

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
        index=index,
        name=node.name,
        module=node.module,
        type=node.kind,
        descriptor=descriptor,
        input_shape=tuple(shapes[0]) if shapes else (),
        input_shapes=tuple(tuple(s) for s in shapes),
        output_shape=tuple(out),
        weights=weights,
        biases=bias_count(params),
        weight_bytes=weights * nbytes,
        macs=macs,
        values_moved=moved,
        bytes_moved=moved * nbytes,
        intensity=macs / moved if moved else 0.0,
    )


def layer_rows(graph: Graph, dtype: str = "fp32") -> list[LayerRow]:
    nbytes = bytes_per_value(dtype)
    rows = []
    for i, node in enumerate(graph.nodes, start=1):
        try:
            rows.append(layer_row(i, node, nbytes))
        except DnnlensError:
            raise
        except Exception as exc:  # a bug in a count formula: say which layer, for the CLI
            annotate(exc, layer=node.name, operator=f"{node.kind} ({node.source})")
            raise
    return rows


def totals(graph: Graph, rows: Sequence[LayerRow], dtype: str = "fp32") -> Totals:
    """Column totals; each distinct parameter once, by the role of its first use."""
    roles: dict[str, tuple[str, int]] = {}
    for node in graph:
        for role, param in node.params.items():
            roles.setdefault(param.name, (role, param.numel))
    weights = sum(n for role, n in roles.values() if is_weight(role))
    biases = sum(n for role, n in roles.values() if is_bias(role))
    moved = sum(r.values_moved for r in rows)
    declared = graph.declared_params
    used = {name.split("[", 1)[0] for name in roles}  # a slice ``w[0:768]`` uses ``w``
    unused = [p for name, p in declared.items() if name not in used]
    used_modules = {name.rsplit(".", i)[0] for name in used for i in range(1, name.count(".") + 1)}
    modules = tuple(dict.fromkeys(_unused_module(p.name, used_modules) for p in unused))
    return Totals(
        weights=weights,
        biases=biases,
        macs=sum(r.macs for r in rows),
        outputs=sum(prod(r.output_shape) for r in rows),
        values_moved=moved,
        bytes=moved * bytes_per_value(dtype),
        params=sum(p.numel for p in declared.values()) if declared else -1,
        params_unused=sum(p.numel for p in unused),
        unused_modules=_outermost(modules),
    )


def _unused_module(param: str, used: set[str]) -> str:
    """The outermost module holding ``param`` none of whose parameters were used
    (``AuxLogits`` for ``AuxLogits.conv0.conv.weight``); ``used``: modules that used some."""
    module = param.rsplit(".", 1)[0] if "." in param else param
    while "." in module:
        parent = module.rsplit(".", 1)[0]
        if parent in used:
            break
        module = parent
    return module


def _outermost(modules: Sequence[str]) -> tuple[str, ...]:
    """Module names without those inside another listed one (``AuxLogits`` covers
    ``AuxLogits.conv0.conv``), in order."""
    kept: list[str] = []
    for name in modules:
        if not any(name == k or name.startswith(k + ".") for k in kept):
            kept = [k for k in kept if not k.startswith(name + ".")]
            kept.append(name)
    return tuple(kept)


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
        index=index,
        name=key or "(model)",
        module=key,
        type=kinds.pop() if len(kinds) == 1 else f"{len(group)} ops",
        descriptor=(),
        input_shape=group[0].input_shape,
        input_shapes=group[0].input_shapes,
        output_shape=group[-1].output_shape,
        weights=sum(r.weights for r in group),
        biases=sum(r.biases for r in group),
        weight_bytes=sum(r.weight_bytes for r in group),
        macs=macs,
        values_moved=moved,
        bytes_moved=sum(r.bytes_moved for r in group),
        intensity=macs / moved if moved else 0.0,
    )


def unknown_warnings(graph: Graph) -> list[str]:
    """One warning listing every operator without a rule (never a silent zero)."""
    unknown: dict[str, list[str]] = {}
    for node in graph:
        if isinstance(node.op, Unknown):
            unknown.setdefault(node.op.target or node.source, []).append(node.name)
    if not unknown:
        return []
    listed = "; ".join(
        f"{target} ({len(names)}x: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
        for target, names in unknown.items()
    )
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

    def to_dataframe(self, depth: int | None = None) -> pandas.DataFrame:
        import pandas  # lazily: pandas is optional

        return pandas.DataFrame(self.to_dicts(depth)).set_index("index")

    def to_json_dict(self, depth: int | None = None) -> dict[str, Any]:
        """The JSON document of issue 4 (keys in its order)."""
        keys = (
            "index",
            "name",
            "type",
            "descriptor",
            "input_shape",
            "output_shape",
            "weights",
            "biases",
            "weight_bytes",
            "macs",
            "values_moved",
            "intensity",
        )
        layers = [{k: _jsonable(getattr(row, k)) for k in keys} for row in self.grouped(depth)]
        t = self.totals
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "batch": self.batch,
            "dtype": self.dtype,
            "units": UNITS,
            "layers": layers,
            "totals": {
                "weights": t.weights,
                "biases": t.biases,
                "macs": t.macs,
                "outputs": t.outputs,
                "values_moved": t.values_moved,
                "params": t.params,
                "params_unused": t.params_unused,
                "unused_modules": list(t.unused_modules),
                # what the text's summary line shows, in base units
                "bytes_moved": t.bytes,
                "parameter_bytes": (t.weights + t.biases) * DTYPE_BYTES[self.dtype],
                "flops": 2 * t.macs,
            },
        }

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

    def __repr__(self) -> str:  # the table, not a dataclass dump of every row
        return render_text(self)

    def _repr_html_(self) -> str:
        return render_html(self)


def analyze(
    model_or_graph: Any,
    input_shape: Sequence[int] | None = None,
    *,
    batch: int | None = None,
    dtype: str = "fp32",
    example_inputs: Any = None,
    kwargs: dict | None = None,
    real: bool = False,
) -> Analysis:
    """Analyse an ``nn.Module`` (traced on the meta device) or an IR :class:`Graph`.

    ``input_shape`` is ``(N, C, H, W)``; ``batch``, when given, replaces ``N``. Shapes carry
    the batch, so MACs and activation traffic scale with it and weights are moved once.
    ``dtype`` (fp32, fp16, bf16, int8) sets the bytes per value. ``real=True`` traces a
    CPU copy on the real values of ``example_inputs`` (models whose work depends on the data,
    such as detection proposals; see :func:`dnnlens.importers.torch.import_torch`).
    """
    bytes_per_value(dtype)  # validate before any tracing
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise UsageError(f"batch must be a positive integer, got {batch!r}")
    if isinstance(model_or_graph, Graph):
        graph = model_or_graph
        have = next(iter(graph.inputs.values()), (1,))
        if batch is not None and have and have[0] != batch:
            raise UsageError(
                f"the graph was imported at batch {have[0]}; import the model "
                f"again with batch {batch}"
            )
    else:
        from dnnlens.importers.torch import import_torch

        if input_shape is not None and batch is not None:
            input_shape = (batch, *tuple(input_shape)[1:])
        graph = import_torch(
            model_or_graph,
            None if input_shape is None else tuple(input_shape),
            example_inputs=example_inputs,
            kwargs=kwargs,
            real=real,
        )
    rows = layer_rows(graph, dtype)
    first = next(iter(graph.inputs.values()), ())
    return Analysis(
        rows=rows,
        totals=totals(graph, rows, dtype),
        graph=graph,
        batch=int(first[0]) if first else 1,
        dtype=dtype,
        warnings=unknown_warnings(graph),
    )


# ---------------------------------------------------------------------------------------------
# Views: terminal table and HTML


def _columns() -> list[Column]:
    from dnnlens.formatting import left, right

    return [
        right("#"),
        left("name"),
        left("type"),
        left("descriptor"),
        left("output shape"),
        right("weights"),
        right("biases"),
        right("MACs"),
        right("values moved"),
        right("intensity"),
    ]


def _cells(row: LayerRow) -> list[str]:
    return [
        str(row.index),
        row.name,
        row.type,
        _shape_text(row.descriptor),
        _shape_text(row.output_shape),
        f"{row.weights:,}",
        f"{row.biases:,}",
        f"{row.macs:,}",
        f"{row.values_moved:,}",
        f"{row.intensity:.4f}",
    ]


def _total_cells(t: Totals) -> list[str]:
    return [
        "",
        "total",
        "",
        "",
        f"{t.outputs:,} outputs",
        f"{t.weights:,}",
        f"{t.biases:,}",
        f"{t.macs:,}",
        f"{t.values_moved:,}",
        f"{t.intensity:.4f}",
    ]


def _header_lines(a: Analysis) -> list[str]:
    nbytes = DTYPE_BYTES[a.dtype]
    return [
        f"{a.model}: input {', '.join(map(_shape_text, a.graph.inputs.values())) or '()'}, "
        f"batch {a.batch}, {a.dtype} "
        f"({nbytes} byte{'s' if nbytes > 1 else ''} per value)",
        "MACs: multiply-accumulates per batch, padding zeros counted, bias adds not "
        "(FLOPs = 2 x MACs).",
        "Weights exclude biases. Values moved: inputs + weights + outputs, each once from "
        "memory (weights once per batch); views move nothing.",
        "Intensity: MACs per value moved.",
    ]


def summary_line(a: Analysis) -> str:
    """Parameters (weights and biases, named apart), their size, traffic and FLOPs."""
    from dnnlens.formatting import size

    t = a.totals
    nbytes = DTYPE_BYTES[a.dtype]
    used = t.weights + t.biases  # the forward's; unused_line names any others
    return (
        f"parameters: {used:,} = {t.weights:,} weights + {t.biases:,} biases "
        f"({size(used * nbytes)} in {a.dtype}); memory traffic: {size(t.bytes)}; "
        f"FLOPs: {2 * t.macs:,} (2 x MACs)"
    )


def render_text(a: Analysis, depth: int | None = None) -> str:
    """A plain-text table with its units and totals, for the terminal."""
    from dnnlens.formatting import text_table

    table = text_table(
        _columns(), [_cells(r) for r in a.grouped(depth)], footer=_total_cells(a.totals)
    )
    out = [*_header_lines(a), "", table, summary_line(a)]
    if a.totals.params_unused or a.totals.params != a.totals.weights + a.totals.biases:
        out.append(unused_line(a.totals))
    out += [f"warning: {w}" for w in a.warnings]
    return "\n".join(out)


def unused_line(t: Totals) -> str:
    """The one line saying which parameters the traced forward never used."""
    listed = ", ".join(t.unused_modules[:4]) + (", ..." if len(t.unused_modules) > 4 else "")
    return (
        f"params: {t.params:,} in the model, {t.params_unused:,} of them never used by "
        f"this forward ({listed or 'none'}): not in the table or its totals"
    )


def render_html(a: Analysis, depth: int | None = None) -> str:
    """An HTML table (what a notebook shows)."""
    from dnnlens.formatting import esc, html_table

    table = html_table(
        _columns(), [_cells(r) for r in a.grouped(depth)], footer=_total_cells(a.totals)
    )
    notes = "<br>".join(esc(line) for line in _header_lines(a))
    warn = "".join(f"<p><b>warning:</b> {esc(w)}</p>" for w in a.warnings)
    t = a.totals
    if t.params_unused or t.params != t.weights + t.biases:
        warn = f"<p>{esc(unused_line(t))}</p>" + warn
    return f"<div><p>{notes}</p>{table}<p>{esc(summary_line(a))}</p>{warn}</div>"


def _shape_text(shape: Sequence[Any]) -> str:
    from dnnlens.formatting import shape as shape_text

    return shape_text(shape)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _csv_cell(value: Any) -> Any:
    if isinstance(value, tuple):
        return (
            "x".join(str(v) for v in value)
            if all(isinstance(v, int) for v in value)
            else str(value)
        )
    return value
