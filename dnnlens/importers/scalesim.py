"""SCALE-Sim topology files: write the conv and fc layers of any graph, read such a file back.

SCALE-Sim (the systolic-array simulator, ``pip install scalesim``) reads a CSV *topology*:
a header line, then one line per layer, each ending in a comma::

    Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels,
    Num Filter, Strides,     (one line in the file)

Its reader (``scalesim/topology_utils.py``, ``topologies.load_arrays_conv``) drops the field
after the last comma, repeats the one stride for both directions, and computes the output size
as ``ceil((ifmap - filter + stride) / stride)`` with no padding: the IFMAP sizes are *padded*.
Conventions we follow (from that reader):

* **Padding**: IFMAP height/width are the padded input, trimmed to the rows and columns the
  windows actually read, ``(out - 1) * stride + kernel``. With that, SCALE-Sim's ceil rule gives
  PyTorch's floor-rule output size even where the stride does not divide the padded input
  (ResNet's 7x7/2 stem: 230 padded, 229 read, 112 out either way).
* **Depthwise** convolutions (``groups == Cin``, ``Cout = m * Cin``): one line whose name
  contains ``DP``, ``Channels = Cin``, ``Num Filter = m``; the reader expands it into ``Cin``
  single-channel layers. Other names never contain ``DP`` (we write ``Dp``).
* **Grouped** convolutions (1 < groups < Cin): one line per group, ``<name>_g<i>``, each with
  ``Cin/groups`` channels and ``Cout/groups`` filters: the same MACs, as SCALE-Sim has no groups.
* **Plain GEMM** rows (fc layers, ``M x K`` times ``K x N``): SCALE-Sim's own GEMM mapping
  (``load_arrays_gemm``): IFMAP ``M x K``, filter ``1 x K``, 1 channel, ``N`` filters, stride 1.
  ``M`` is the rows per image (1 for an ``(N, in)`` input, tokens for a transformer).
* Figures are **per image** (SCALE-Sim has no batch): our per-batch MACs / batch size.

Layers SCALE-Sim cannot express (transposed, dilated, 3-d, unequal strides) are skipped and
returned by :func:`topology_rows` with the reason, never written wrongly.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from math import prod
from pathlib import Path

from dnnlens.errors import SpecError
from dnnlens.fileio import atomic_write_text
from dnnlens.ir import Graph, Node, Param, unique_name
from dnnlens.ops import Conv, Linear, infer_shape

HEADER = (
    "Layer name",
    "IFMAP Height",
    "IFMAP Width",
    "Filter Height",
    "Filter Width",
    "Channels",
    "Num Filter",
    "Strides",
)


@dataclass(frozen=True)
class TopologyRow:
    """One SCALE-Sim layer line (per image)."""

    name: str
    ifmap_h: int
    ifmap_w: int
    filter_h: int
    filter_w: int
    channels: int
    num_filter: int
    stride: int

    @property
    def depthwise(self) -> bool:
        return "DP" in self.name

    def fields(self) -> list[str]:
        return [
            self.name,
            *(
                str(v)
                for v in (
                    self.ifmap_h,
                    self.ifmap_w,
                    self.filter_h,
                    self.filter_w,
                    self.channels,
                    self.num_filter,
                    self.stride,
                )
            ),
        ]


def _clean(name: str) -> str:
    """A layer name safe for SCALE-Sim's comma splitting and its ``DP`` test."""
    return name.replace(",", ";").replace("DP", "Dp").strip() or "layer"


def _conv_rows(node: Node) -> tuple[list[TopologyRow], str]:
    """Rows for one conv node, or ([], reason) when SCALE-Sim cannot express it."""
    op: Conv = node.op  # type: ignore[assignment]
    if op.transposed:
        return [], "transposed convolution"
    if op.spatial_dims not in (1, 2):
        return [], f"{op.spatial_dims}-d convolution"
    if any(d != 1 for d in op.dilation):
        return [], f"dilation {op.dilation}"
    if len(set(op.stride)) != 1:
        return [], f"unequal strides {op.stride} (SCALE-Sim has one stride column)"
    x, out = node.input_shapes[0], node.output_shape
    weight = node.params["weight"].shape
    cin, cout, kernel = x[1], out[1], weight[2:]
    if op.spatial_dims == 1:  # a 1 x L image
        kernel, spatial_out = (1, *kernel), (1, *out[2:])
    else:
        spatial_out = out[2:]
    stride = op.stride[0]
    # Padded input trimmed to what the windows read: SCALE-Sim's ceil rule then gives out.
    ih, iw = [(o - 1) * stride + k for o, k in zip(spatial_out, kernel)]
    kh, kw = kernel
    name = _clean(node.name)
    g = op.groups
    if g == 1:
        return [TopologyRow(name, ih, iw, kh, kw, cin, cout, stride)], ""
    if g == cin:  # depthwise, channel multiplier cout // cin
        return [TopologyRow(f"{name}_DP", ih, iw, kh, kw, cin, cout // cin, stride)], ""
    return [
        TopologyRow(f"{name}_g{i}", ih, iw, kh, kw, cin // g, cout // g, stride) for i in range(g)
    ], ""


def _gemm_row(node: Node) -> TopologyRow:
    """An fc layer as SCALE-Sim's GEMM mapping: IFMAP M x K, filter 1 x K, N filters."""
    out_features, in_features = node.params["weight"].shape
    rows = prod(node.input_shapes[0][1:-1])  # rows per image (1 for (N, in))
    return TopologyRow(_clean(node.name), rows, in_features, 1, in_features, 1, out_features, 1)


def topology_rows(graph: Graph) -> tuple[list[TopologyRow], list[tuple[str, str]]]:
    """The conv and fc layers of ``graph`` as topology rows, plus (layer, reason) skipped."""
    rows: list[TopologyRow] = []
    skipped: list[tuple[str, str]] = []
    for node in graph:
        if isinstance(node.op, Conv):
            made, reason = _conv_rows(node)
            rows.extend(made)
            if reason:
                skipped.append((node.name, reason))
        elif isinstance(node.op, Linear):
            rows.append(_gemm_row(node))
    return rows, skipped


def render_topology(rows: list[TopologyRow]) -> str:
    """The CSV text, each line ending in a comma as SCALE-Sim's reader expects."""
    lines = [", ".join(HEADER) + ","]
    lines += [",".join(row.fields()) + "," for row in rows]
    return "\n".join(lines) + "\n"


def write_topology(graph: Graph, path: str | Path) -> list[tuple[str, str]]:
    """Write ``graph``'s conv and fc layers as a SCALE-Sim topology CSV (atomically).

    Returns the layers skipped, with the reason; raises SpecError if nothing is left to write.
    """
    rows, skipped = topology_rows(graph)
    if not rows:
        raise SpecError(
            f"{graph.name} has no conv or fc layer SCALE-Sim can express; "
            f"nothing written to {path}"
        )
    atomic_write_text(path, render_topology(rows))
    return skipped


# --- reading a topology back as a graph ------------------------------------------------


def _parse_int(where: str, column: str, text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise SpecError(f"{where}: {column} must be an integer, got {text.strip()!r}") from None
    if value < 1:
        raise SpecError(f"{where}: {column} must be positive, got {value}")
    return value


def read_topology(path: str | Path) -> list[TopologyRow]:
    """Parse a SCALE-Sim conv topology CSV (header line, trailing commas, optional N:M)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read SCALE-Sim topology {path}: {exc}") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise SpecError(f"{path}: a SCALE-Sim topology needs a header line and at least one layer")
    rows = []
    for number, fields in enumerate(csv.reader(lines[1:]), start=2):
        fields = [f for f in fields]
        if fields and not fields[-1].strip():
            fields = fields[:-1]  # the trailing comma
        where = f"{path}: line {number}"
        if len(fields) < 8:
            raise SpecError(f"{where}: needs 8 fields ({', '.join(HEADER)}), got {len(fields)}")
        values = [_parse_int(where, col, f) for col, f in zip(HEADER[1:], fields[1:8])]
        row = TopologyRow(fields[0].strip(), *values)
        if row.filter_h > row.ifmap_h or row.filter_w > row.ifmap_w:
            raise SpecError(
                f"{where}: filter {row.filter_h}x{row.filter_w} is larger than the "
                f"IFMAP {row.ifmap_h}x{row.ifmap_w}"
            )
        rows.append(row)
    return rows


def _is_gemm(row: TopologyRow) -> bool:
    """SCALE-Sim's GEMM mapping: 1 channel, a 1 x K filter spanning the IFMAP width."""
    return (
        row.channels == 1
        and row.filter_h == 1
        and row.filter_w == row.ifmap_w
        and row.stride == 1
        and not row.depthwise
    )


def _row_node(row: TopologyRow, taken: set[str], batch: int) -> tuple[str, tuple[int, ...], Node]:
    """One topology line as a graph input (its padded IFMAP) and one conv or fc node."""
    name = unique_name(row.name, taken)
    taken.add(name)
    if _is_gemm(row):
        x: tuple[int, ...] = (batch, row.ifmap_h, row.ifmap_w)  # M rows of K values each
        op: Linear | Conv = Linear()
        params = {"weight": Param(f"{name}.weight", (row.num_filter, row.ifmap_w))}
    else:
        groups = row.channels if row.depthwise else 1
        cout = row.channels * row.num_filter if row.depthwise else row.num_filter
        x = (batch, row.channels, row.ifmap_h, row.ifmap_w)
        op = Conv(stride=(row.stride, row.stride), groups=groups)
        params = {
            "weight": Param(
                f"{name}.weight", (cout, row.channels // groups, row.filter_h, row.filter_w)
            )
        }
    source = f"{name}.ifmap"
    shapes = {role: p.shape for role, p in params.items()}
    out = infer_shape(name, op, [x], shapes)
    node = Node(
        name=name,
        op=op,
        inputs=[source],
        input_shapes=[x],
        output_shape=out,
        params=params,
        module=name,
        module_type="scalesim",
        source="scalesim",
    )
    return source, x, node


def import_topology(path: str | Path, batch: int | None = None) -> Graph:
    """A SCALE-Sim topology as a :class:`~dnnlens.ir.Graph`: one conv/fc node per line.

    A topology lists layers, not how they connect, so every layer reads its own graph input
    (its padded IFMAP, ``batch`` images, default 1) and padding is 0. Depthwise (``DP``) lines
    become one grouped conv; GEMM-mapped lines (1 channel, 1 x K filter across the IFMAP)
    become fc layers.
    """
    rows = read_topology(path)
    graph = Graph(nodes=[], inputs={}, outputs=[], name=Path(path).stem)
    taken: set[str] = set()
    for row in rows:
        source, shape, node = _row_node(row, taken, batch or 1)
        graph.inputs[source] = shape
        graph.nodes.append(node)
        graph.outputs.append(node.name)
    from dnnlens.canonical import canonicalise

    return canonicalise(graph)
