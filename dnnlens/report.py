"""Charts and the self-contained HTML report: views of an analysis, a roofline, a footprint.

Pipeline position: importers -> IR -> analysis / roofline -> **report** (here).

The page reads top-down, the same for the ten-layer course network and a 500-layer
transformer:

1. **Summary**: the totals, how the time splits between compute- and memory-bound layers,
   the estimated latency, the memory footprint and the layers that take the most time;
2. **Layers** as a module tree (``layer1`` > ``layer1.0`` > ``conv1``) collapsed to a depth
   chosen for the model's size (:func:`default_depth`) or given (``report --depth``); every
   group expands in place (plain ``<details>``, no script);
3. **Charts**: the roofline (one point per layer with MACs, each with a hover title; labels
   only on the layers that take the most time or MACs; a legend) and the per-block bar chart
   (the blocks of the tree at the chosen depth, so it stays legible at any layer count);
4. batch sweep, measurement, memory footprint, verification, device: real tables.

Every chart is written as PNG and SVG. SVG elements carry ids (``layer-point-<index>``,
``bar-<metric>-<block>``) so tests and readers can find them. Files are written atomically.
Numbers and units come from :mod:`dnnlens.formatting`, like every other view.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dnnlens.errors import UsageError
from dnnlens.fileio import atomic_write_bytes, atomic_write_text
from dnnlens.formatting import (
    Column,
    Markup,
    Scale,
    count,
    duration,
    esc,
    html_table,
    left,
    number,
    percent,
    rate,
    right,
    shape,
    size,
    size_exact,
    size_scale,
    time_scale,
)
from dnnlens.roofline import (
    Footprint,
    HardwareSpec,
    LayerRoof,
    Roofline,
    load_spec,
    memory_footprint,
    roofline,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure as MplFigure

    from dnnlens.analysis import Analysis, LayerRow

#: Metrics of the bar charts: (block field, axis label).
BAR_METRICS = (
    ("macs", "MACs"),
    ("weights", "weights (values, biases excluded)"),
    ("bytes_moved", "bytes moved"),
    ("intensity", "intensity (MACs per value moved)"),
)
#: The default depth shows at most this many rows (leaves and collapsed groups).
MAX_VISIBLE_ROWS = 30
#: Layers named in the summary and labelled on the roofline.
TOP_LAYERS = 8


# --------------------------------------------------------------------------------------
# The module tree
# --------------------------------------------------------------------------------------
@dataclass
class Block:
    """A group of consecutive layers (a module such as ``layer1.0``) or a single layer.

    ``rows`` are all layers beneath, in execution order; ``children`` the next level (empty
    for a single layer); ``level`` counts from 1 (the model's own children).
    """

    name: str
    level: int
    rows: list[LayerRow] = field(default_factory=list)
    children: list[Block] = field(default_factory=list)
    layer: LayerRow | None = None  # set for a single layer

    @property
    def label(self) -> str:
        """The name relative to the parent (``conv1`` inside ``layer1.0``)."""
        return self.name

    @property
    def type(self) -> str:
        if self.layer is not None:
            return self.layer.type
        kinds = {r.type for r in self.rows}
        return kinds.pop() if len(kinds) == 1 else f"{len(self.rows)} layers"

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def weights(self) -> int:
        return sum(r.weights for r in self.rows)

    @property
    def biases(self) -> int:
        return sum(r.biases for r in self.rows)

    @property
    def values_moved(self) -> int:
        return sum(r.values_moved for r in self.rows)

    @property
    def bytes_moved(self) -> int:
        return sum(r.bytes_moved for r in self.rows)

    @property
    def intensity(self) -> float:
        moved = self.values_moved
        return self.macs / moved if moved else 0.0

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(self.rows[-1].output_shape) if self.rows else ()

    def walk(self) -> Iterator[Block]:
        yield self
        for child in self.children:
            yield from child.walk()


def module_tree(rows: Sequence[LayerRow]) -> list[Block]:
    """The layers as a tree of modules, in execution order.

    A layer sits inside the deepest module that contains other modules' layers too: the
    ``add`` of ``layer1.0`` (module ``layer1.0``) and ``layer1.0.conv1`` are both children of
    ``layer1.0``; a layer with no module (a ``flatten`` in ``forward``) is a child of the
    model. A module called at two separate times keeps its layers in one group.
    """
    modules = {r.module for r in rows if r.module}
    containers = {m for m in modules for other in modules if other.startswith(m + ".")}
    root = Block("", 0)
    index: dict[str, Block] = {"": root}

    def group_of(path: str) -> Block:
        if path in index:
            return index[path]
        parent = group_of(path.rpartition(".")[0])
        block = Block(path.rpartition(".")[2], parent.level + 1)
        parent.children.append(block)
        index[path] = block
        return block

    for row in rows:
        path = row.module if row.module in containers else row.module.rpartition(".")[0]
        parent = group_of(path)
        leaf_name = (
            row.name[len(path) + 1 :] if path and row.name.startswith(path + ".") else row.name
        )
        parent.children.append(Block(leaf_name, parent.level + 1, [row], layer=row))
        for p in _prefixes(path):
            index[p].rows.append(row)
    return [_fold_single(block) for block in root.children]


def _fold_single(block: Block) -> Block:
    """A module holding a single layer (``heads`` > ``head``) is shown as that layer."""
    block.children = [_fold_single(child) for child in block.children]
    if len(block.children) == 1 and block.children[0].layer is not None:
        only = block.children[0]
        return Block(f"{block.name}.{only.name}", block.level, only.rows, layer=only.layer)
    return block


def _prefixes(path: str) -> list[str]:
    parts = path.split(".") if path else []
    return [""] + [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def visible_blocks(tree: Sequence[Block], depth: int) -> list[Block]:
    """The rows a reader sees at ``depth``: every layer and group down to that level, each
    group at that level collapsed (its layers summed)."""
    out: list[Block] = []
    for block in tree:
        out.append(block)
        if block.children and block.level < depth:
            out.extend(visible_blocks(block.children, depth))
    return out


def collapsed_blocks(tree: Sequence[Block], depth: int) -> list[Block]:
    """The blocks at ``depth``: groups at that level and layers above it (what the per-block
    chart shows); their layers add up to the whole network, once each."""
    out: list[Block] = []
    for block in tree:
        if block.children and block.level < depth:
            out.extend(collapsed_blocks(block.children, depth))
        else:
            out.append(block)
    return out


def tree_depth(tree: Sequence[Block]) -> int:
    return max((b.level for top in tree for b in top.walk() if b.children), default=0) + 1


def default_depth(rows: Sequence[LayerRow], limit: int = MAX_VISIBLE_ROWS) -> int:
    """The deepest level whose visible rows number at most ``limit`` (at least 1): every
    layer of a small network, the stages and blocks of a ResNet, the encoder layers of a
    ViT."""
    tree = module_tree(rows)
    best = 1
    for depth in range(1, tree_depth(tree) + 1):
        if len(visible_blocks(tree, depth)) <= limit:
            best = depth
    return best


# --------------------------------------------------------------------------------------
# Charts
# --------------------------------------------------------------------------------------
def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed), deterministic SVG ids."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "dnnlens"  # same ids for the same chart
    matplotlib.rcParams["svg.fonttype"] = "path"  # text as paths: no font to fetch
    return plt


def type_colours(types: Sequence[str]) -> dict[str, Any]:
    """A colour per layer type, in order of first appearance."""
    plt = _pyplot()
    palette = plt.get_cmap("tab10").colors
    order = list(dict.fromkeys(types))
    return {kind: palette[i % len(palette)] for i, kind in enumerate(order)}


def important_layers(layers: Sequence[LayerRoof], limit: int = TOP_LAYERS) -> list[LayerRoof]:
    """The layers that matter: the most estimated time, then the most MACs, ``limit`` in
    all, in execution order."""
    by_time = sorted(layers, key=lambda layer: -layer.time_s)
    by_macs = sorted(layers, key=lambda layer: -layer.macs)
    chosen: dict[int, LayerRoof] = {}
    for layer in [*by_time[: (limit + 1) // 2], *by_macs]:
        if len(chosen) >= limit:
            break
        chosen.setdefault(layer.index, layer)
    return sorted(chosen.values(), key=lambda layer: layer.index)


def point_title(layer: LayerRoof) -> str:
    """The hover text of a roofline point."""
    return (
        f"{layer.name} ({layer.type}): {number(layer.intensity)} MAC/byte, "
        f"{rate(layer.attainable)}, {layer.bound}-bound, {duration(layer.time_s)}"
    )


def _place_labels(ax: Axes, points: Sequence[LayerRoof], fontsize: float = 7.5) -> None:
    """Label ``points`` without overprinting: each label tries a few offsets around its point
    and takes the first whose box is clear of the labels placed so far; a point with no
    clear spot, or sitting on a point already labelled, keeps only its hover title."""
    fig = ax.figure
    fig.canvas.draw()  # fixes the axes limits, so data -> pixels is final
    to_px = ax.transData.transform
    px_per_pt = fig.dpi / 72
    frame = ax.get_window_extent()
    placed: list[tuple[float, float, float, float]] = []
    labelled: list[tuple[float, float]] = []
    offsets = [(6, 5), (6, -12), (-6, 5), (-6, -12), (6, 16), (6, -23), (-6, 16), (-6, -23)]
    for layer in points:
        x, y = to_px((layer.intensity, layer.attainable))
        if any(abs(x - lx) < 4 and abs(y - ly) < 4 for lx, ly in labelled):
            continue  # the same spot as a labelled point: a second label would only overprint
        w = 0.6 * fontsize * len(layer.name) * px_per_pt
        h = 1.25 * fontsize * px_per_pt
        for dx, dy in offsets:
            x0 = x + dx * px_per_pt - (w if dx < 0 else 0)
            y0 = y + dy * px_per_pt
            box = (x0, y0, x0 + w, y0 + h)
            inside = (
                frame.x0 <= box[0]
                and box[2] <= frame.x1
                and frame.y0 <= box[1]
                and box[3] <= frame.y1
            )
            if inside and not any(
                box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed
            ):
                break
        else:
            continue
        placed.append(box)
        labelled.append((x, y))
        ax.annotate(
            layer.name,
            (layer.intensity, layer.attainable),
            textcoords="offset points",
            xytext=(dx, dy),
            fontsize=fontsize,
            ha="right" if dx < 0 else "left",
            gid=f"layer-label-{layer.index}",
        )


def roofline_figure(roof: Roofline, measured: dict[str, float] | None = None) -> MplFigure:
    """The roofline chart of ``roof``: every layer with MACs a point coloured by type, labels
    on the layers that matter, a legend; ``measured`` maps layer names to measured MACs/s,
    drawn as hollow markers."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.2), layout="constrained")
    points = [layer for layer in roof.layers if layer.macs > 0 and layer.bytes_moved > 0]
    intensities = [p.intensity for p in points] or [roof.ridge]
    low = min(min(intensities), roof.ridge) / 8
    high = max(max(intensities), roof.ridge) * 8
    xs = [low, roof.ridge, high]
    ax.plot(
        xs,
        [min(roof.peak, x * roof.bandwidth) for x in xs],
        color="black",
        lw=2,
        label=f"roof: {rate(roof.peak)}, {rate(roof.bandwidth, 'B/s')}",
        gid="roof",
    )
    ax.axvline(
        roof.ridge,
        color="grey",
        ls=":",
        lw=1,
        gid="ridge",
        label=f"ridge: {number(roof.ridge)} MAC/byte",
    )
    colours = type_colours([p.type for p in points])
    seen: set[str] = set()
    for p in points:
        label = p.type if p.type not in seen else None
        seen.add(p.type)
        ax.plot(
            [p.intensity],
            [p.attainable],
            "o",
            ms=6,
            color=colours[p.type],
            label=label,
            alpha=0.85,
            gid=f"layer-point-{p.index}",
        )
        if measured and measured.get(p.name):
            ax.plot(
                [p.intensity],
                [measured[p.name]],
                "o",
                ms=6,
                mfc="none",
                color=colours[p.type],
                gid=f"layer-measured-{p.index}",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    bottom = min([p.attainable for p in points] or [roof.peak]) / 3
    ax.set_ylim(min(bottom, low * roof.bandwidth), roof.peak * 4)  # room for labels on the roof
    ax.set_xlabel(f"compute intensity (MACs per byte, {roof.dtype})", fontsize=9)
    ax.set_ylabel("attainable MACs per second", fontsize=9)
    ax.set_title(
        f"Roofline on {roof.device.name}, batch {roof.batch}"
        + (" (hollow: measured)" if measured else ""),
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0,
        title="layer type",
        title_fontsize=8,
    )
    _place_labels(ax, important_layers(points))
    return fig


def bar_figure(analysis: Analysis, depth: int | None = None) -> MplFigure:
    """Four horizontal bar charts side by side (MACs, weights, bytes moved, intensity), one
    bar per block of the module tree at ``depth`` (default: :func:`default_depth`)."""
    plt = _pyplot()
    from matplotlib.ticker import EngFormatter, MaxNLocator

    depth = default_depth(analysis.rows) if depth is None else depth
    blocks = collapsed_blocks(module_tree(analysis.rows), depth)
    names = [_block_path(b, analysis.rows) for b in blocks]
    height = max(2.6, 0.24 * len(blocks) + 1.3)
    fig, axes = plt.subplots(
        1, len(BAR_METRICS), figsize=(11, height), sharey=True, layout="constrained"
    )
    colours = type_colours([b.type if b.layer else "block" for b in blocks])
    ys = list(range(len(blocks)))
    for ax, (metric, label) in zip(axes, BAR_METRICS):
        values = [float(getattr(b, metric)) for b in blocks]
        bars = ax.barh(ys, values, color=[colours[b.type if b.layer else "block"] for b in blocks])
        for n, bar in enumerate(bars.patches, start=1):
            bar.set_gid(f"bar-{metric}-{n}")
        ax.set_xlabel(label, fontsize=8)
        ax.xaxis.set_major_formatter(EngFormatter(sep=" "))  # 200 M, not 2 and a 1e8 offset
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].set_yticks(ys, names, fontsize=8)
    axes[0].invert_yaxis()  # execution order, top to bottom
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    fig.legend(
        handles,
        [("group of layers" if k == "block" else k) for k in colours],
        loc="outside lower center",
        ncols=min(len(colours), 8),
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(
        f"{analysis.model}: per block at depth {depth}, batch {analysis.batch}, {analysis.dtype}",
        fontsize=10,
    )
    return fig


def _block_path(block: Block, rows: Sequence[LayerRow]) -> str:
    """A block's name as the reader knows it: a layer's name, a group's module path."""
    if block.layer is not None:
        return block.layer.name
    modules = [r.module for r in block.rows if r.module]
    if not modules:
        return block.name
    common = modules[0].split(".")
    for module in modules[1:]:
        parts = module.split(".")
        n = 0
        while n < min(len(common), len(parts)) and common[n] == parts[n]:
            n += 1
        common = common[:n]
    return ".".join(common[: block.level]) or block.name


def save_figure(fig: MplFigure, stem: Path) -> tuple[Path, Path]:
    """``stem``.png and ``stem``.svg, each written atomically; returns both paths."""
    plt = _pyplot()
    paths = []
    for fmt in ("png", "svg"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=110, metadata={"Date": None} if fmt == "svg" else {})
        paths.append(atomic_write_bytes(stem.with_suffix(f".{fmt}"), buffer.getvalue()))
    plt.close(fig)
    return paths[0], paths[1]


def roofline_chart(
    roof: Roofline, stem: Path, measured: dict[str, float] | None = None
) -> tuple[Path, Path]:
    """Write the roofline chart as ``stem``.png and ``stem``.svg."""
    return save_figure(roofline_figure(roof, measured), Path(stem))


def bar_charts(analysis: Analysis, stem: Path, depth: int | None = None) -> tuple[Path, Path]:
    """Write the per-block bar charts as ``stem``.png and ``stem``.svg."""
    return save_figure(bar_figure(analysis, depth), Path(stem))


def inline_svg(svg: str, titles: dict[str, str] | None = None) -> str:
    """An SVG file's text made fit to sit inside HTML: no XML prolog, DOCTYPE or metadata;
    ``titles`` maps element ids to hover text (an SVG ``<title>`` child)."""
    svg = re.sub(r"<\?xml[^>]*\?>", "", svg)
    svg = re.sub(r"<!DOCTYPE[^>]*>", "", svg, flags=re.S)
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    # HTML parsers know the SVG and xlink namespaces; dropping their declarations leaves the
    # page without a single URL in it.
    svg = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", svg)
    # Matplotlib sizes the SVG in pt; the page scales it to its column instead.
    svg = re.sub(r'(<svg[^>]*?)\swidth="[^"]*"\s+height="[^"]*"', r"\1", svg, count=1)
    if titles:
        svg = re.sub(
            r'<g id="([^"]+)">',
            lambda m: (
                m.group(0)
                + (f"<title>{esc(titles[m.group(1)])}</title>" if m.group(1) in titles else "")
            ),
            svg,
        )
    return svg.strip()


# --------------------------------------------------------------------------------------
# HTML sections
# --------------------------------------------------------------------------------------
CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 84em; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.45em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1em; margin: 1em 0 0.3em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.4em 0; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.55em; }
th { background: #f3f3f3; font-weight: 600; }
.n { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.l { text-align: left; }
tfoot td { font-weight: 600; background: #fafafa; }
tr.memory td.bound, .memory .bound { color: #b55; }
tr.compute td.bound, .compute .bound { color: #287; }
.chart svg { width: 100%; height: auto; }
.chart.roof { max-width: 62em; } .chart.bars { max-width: 70em; }
.ok { color: #287; font-weight: bold; } .bad { color: #b33; font-weight: bold; }
p.note, .note { color: #666; font-size: 0.85em; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(13em, 1fr));
         gap: 0.5em; margin: 0.6em 0; }
.card { border: 1px solid #ddd; border-radius: 4px; padding: 0.45em 0.7em; }
.card .k { color: #666; font-size: 0.8em; } .card .v { font-size: 1.2em; font-weight: 600; }
.card .s { color: #666; font-size: 0.75em; }
.tree { font-size: 0.85em; border: 1px solid #ddd; }
.tree .row { display: grid; align-items: baseline;
  grid-template-columns: minmax(12em, 1fr) 8.5em 10.5em 8.5em 10.5em 9em 7.5em 7em 6.5em 5.5em; }
.tree .row > span { padding: 0.15em 0.5em; white-space: nowrap; overflow: hidden;
                    text-overflow: ellipsis; }
.tree .head { background: #f3f3f3; font-weight: 600; border-bottom: 1px solid #ddd; }
.tree .head > span { white-space: normal; }
.tree .foot { font-weight: 600; background: #fafafa; border-top: 1px solid #ddd; }
.tree summary { list-style: none; cursor: pointer; }
.tree summary::-webkit-details-marker { display: none; }
.tree summary .name::before { content: "\\25B8  "; color: #888; }
.tree details[open] > summary .name::before { content: "\\25BE  "; }
.tree summary:hover, .tree .leaf:hover { background: #f5f8ff; }
.tree .group { font-weight: 600; }
.tree .leaf .name { padding-left: 1.4em; }
"""


def _tree_columns(sizes: Scale, times: Scale) -> list[Column]:
    return [
        left("name"),
        left("type"),
        left("output shape"),
        right("weights"),
        right("MACs"),
        right(f"bytes moved ({sizes.unit})"),
        right("MAC/value"),
        left("bound"),
        right(f"est. time ({times.unit})"),
        right("% time"),
    ]


def _block_cells(
    block: Block,
    times: dict[int, LayerRoof],
    total_time: float,
    sizes: Scale,
    seconds_in: Scale,
) -> list[str]:
    layers = [times[r.index] for r in block.rows if r.index in times]
    seconds = sum(layer.time_s for layer in layers)
    bound = ""
    if layers:
        bound_time: dict[str, float] = {}
        for layer in layers:
            bound_time[layer.bound] = bound_time.get(layer.bound, 0.0) + layer.time_s
        bound = max(bound_time, key=lambda b: bound_time[b]) if seconds else layers[0].bound
    return [
        block.type,
        shape(block.output_shape),
        count(block.weights),
        count(block.macs),
        sizes(block.bytes_moved),
        f"{block.intensity:.3g}",
        bound,
        seconds_in(seconds) if layers else "",
        percent(seconds / total_time) if layers and total_time else "",
    ]


def _row_html(
    name_html: str, cells: Sequence[str], columns: Sequence[Column], klass: str, title: str = ""
) -> str:
    spans = [f'<span class="l name">{name_html}</span>']
    for column, cell in zip(columns[1:], cells):
        extra = " bound" if column.header == "bound" else ""
        spans.append(f'<span class="{"n" if column.numeric else "l"}{extra}">{esc(cell)}</span>')
    attr = f' title="{esc(title)}"' if title else ""
    return f'<div class="row {klass}"{attr}>{"".join(spans)}</div>'


def layer_tree(analysis: Analysis, roof: Roofline | None, depth: int) -> str:
    """The layers as a module tree: groups above ``depth`` open, at ``depth`` collapsed; each
    expands in place (``<details>``). Shapes stay on one line, numbers right-aligned."""
    times = {layer.index: layer for layer in roof.layers} if roof else {}
    total_time = roof.latency_s if roof else 0.0
    # One unit per column, chosen by its largest value: the total in the last row.
    sizes, seconds_in = size_scale(analysis.totals.bytes), time_scale(total_time)
    columns = _tree_columns(sizes, seconds_in)

    def render(blocks: Sequence[Block]) -> str:
        out = []
        for block in blocks:
            cells = _block_cells(block, times, total_time, sizes, seconds_in)
            bound = cells[6]
            if block.layer is not None:
                r = block.layer
                title = (
                    f"{r.name}: {r.type}"
                    + (f" {shape(r.descriptor)}" if r.descriptor else "")
                    + f", input {shape(r.input_shape)}, {count(r.biases)} biases"
                )
                out.append(_row_html(esc(block.name), cells, columns, f"leaf {bound}", title))
                continue
            opened = " open" if block.level < depth else ""
            summary = _row_html(
                esc(block.name), cells, columns, f"group {bound}", f"{len(block.rows)} layers"
            )
            summary = summary.replace('<div class="row', '<summary class="row', 1)
            summary = summary[: -len("</div>")] + "</summary>"
            out.append(
                f'<details{opened} style="--level:{block.level}">{summary}'
                f'<div class="kids" style="margin-left:1.1em">'
                f"{render(block.children)}</div></details>"
            )
        return "".join(out)

    head = "".join(
        f'<span class="{"n" if c.numeric else "l"}">{esc(c.header)}</span>' for c in columns
    )
    t = analysis.totals
    foot = _row_html(
        "total",
        [
            "",
            "",
            count(t.weights),
            count(t.macs),
            sizes(t.bytes),
            f"{t.intensity:.3g}",
            "",
            seconds_in(total_time) if roof else "",
            "100%" if roof else "",
        ],
        columns,
        "foot",
    )
    return (
        f'<div class="tree"><div class="row head">{head}</div>'
        f"{render(module_tree(analysis.rows))}{foot}</div>"
    )


def _card(key: str, value: str, sub: str = "") -> str:
    return (
        f'<div class="card"><div class="k">{esc(key)}</div><div class="v">{esc(value)}</div>'
        + (f'<div class="s">{esc(sub)}</div>' if sub else "")
        + "</div>"
    )


def summary_section(analysis: Analysis, roof: Roofline | None, foot: Footprint) -> str:
    """Key figures as cards, then the layers that take the most time (or MACs)."""
    t = analysis.totals
    cards = [
        _card(
            "layers",
            count(len(analysis.rows)),
            f"{sum(1 for r in analysis.rows if r.macs)} with MACs",
        ),
        _card(
            "parameters", count(t.params), f"{count(t.weights)} weights + {count(t.biases)} biases"
        ),
        _card("MACs per batch", count(t.macs), f"FLOPs = 2 x MACs = {count(2 * t.macs)}"),
        _card("memory traffic", size(t.bytes), f"{count(t.values_moved)} values moved"),
        _card(
            "compute intensity",
            f"{t.intensity:.3g} MAC/value",
            f"{t.macs / t.bytes:.3g} MAC/byte" if t.bytes else "",
        ),
        _card(
            "memory footprint",
            size(foot.total_bytes),
            f"parameters {size(foot.parameter_bytes)} + peak activations "
            f"{size(foot.peak_activation_bytes)}",
        ),
    ]
    if roof is not None:
        memory_time = sum(layer.time_s for layer in roof.layers if layer.bound == "memory")
        share = memory_time / roof.latency_s if roof.latency_s else 0.0
        memory_layers = sum(1 for layer in roof.layers if layer.bound == "memory")
        cards += [
            _card(
                "estimated latency",
                duration(roof.latency_s),
                f"batch {roof.batch}: {roof.throughput:,.0f} images/s",
            ),
            _card(
                "bound",
                "memory" if share >= 0.5 else "compute",
                f"{percent(share)} of the time in {memory_layers} memory-bound layers",
            ),
            _card(
                "of peak",
                percent(roof.attainable / roof.peak),
                f"{rate(roof.attainable)} of {rate(roof.peak)}",
            ),
        ]
    fits = ""
    if roof is not None and foot.fits(roof.device) is not None:
        word = "fit" if foot.fits(roof.device) else "do not fit"
        fits = (
            f"<p>Parameters and peak activations {word} in {esc(roof.device.name)}'s memory.</p>"
        )
    return f'<div class="cards">{"".join(cards)}</div>{fits}{top_layers_table(analysis, roof)}'


def top_layers_table(analysis: Analysis, roof: Roofline | None, limit: int = TOP_LAYERS) -> str:
    """The layers with the most estimated time (the most MACs without a device)."""
    rows_by_index = {r.index: r for r in analysis.rows}
    if roof is not None:
        ranked = sorted(roof.layers, key=lambda layer: -layer.time_s)[:limit]
        total = roof.latency_s or 1.0
        sizes = size_scale(max((layer.bytes_moved for layer in ranked), default=0))
        seconds_in = time_scale(max((layer.time_s for layer in ranked), default=0.0))
        rows = [
            [
                layer.name,
                layer.type,
                shape(rows_by_index[layer.index].output_shape),
                count(layer.macs),
                sizes(layer.bytes_moved),
                layer.bound,
                seconds_in(layer.time_s),
                percent(layer.time_s / total),
            ]
            for layer in ranked
        ]
        columns = [
            left("layer"),
            left("type"),
            left("output shape"),
            right("MACs"),
            right(f"bytes moved ({sizes.unit})"),
            left("bound"),
            right(f"est. time ({seconds_in.unit})"),
            right("% time"),
        ]
        title = f"Top {len(rows)} layers by estimated time"
        classes = [layer.bound for layer in ranked]
    else:
        ranked_rows = sorted(analysis.rows, key=lambda r: -r.macs)[:limit]
        total_macs = analysis.totals.macs or 1
        sizes = size_scale(max((r.bytes_moved for r in ranked_rows), default=0))
        rows = [
            [
                r.name,
                r.type,
                shape(r.output_shape),
                count(r.macs),
                sizes(r.bytes_moved),
                percent(r.macs / total_macs),
            ]
            for r in ranked_rows
        ]
        columns = [
            left("layer"),
            left("type"),
            left("output shape"),
            right("MACs"),
            right(f"bytes moved ({sizes.unit})"),
            right("% MACs"),
        ]
        title = f"Top {len(rows)} layers by MACs"
        classes = []
    return f"<h3>{title}</h3>" + html_table(columns, rows, row_classes=classes or None)


def _names_cell(names: Sequence[str], shown: int = 3) -> str:
    """``12: a, b, c, ...`` instead of a wall of names."""
    if not names:
        return "none"
    more = ", ..." if len(names) > shown else ""
    return f"{len(names)}: {', '.join(names[:shown])}{more}"


def sweep_section(sweep: Sequence[Roofline]) -> str:
    rows = []
    seconds_in = time_scale(max((r.latency_s for r in sweep), default=0.0))
    for r in sweep:
        memory = [layer.name for layer in r.layers if layer.bound == "memory" and layer.macs]
        with_macs = sum(1 for layer in r.layers if layer.macs)
        rows.append(
            [
                r.batch,
                seconds_in(r.latency_s),
                f"{r.throughput:,.0f}",
                rate(r.attainable),
                percent(r.attainable / r.peak),
                f"{len(memory)} of {with_macs}",
                _names_cell(memory),
            ]
        )
    return html_table(
        [
            right("batch"),
            right(f"est. latency ({seconds_in.unit})"),
            right("images/s"),
            right("attainable"),
            right("of peak"),
            right("memory-bound (with MACs)"),
            left("which"),
        ],
        rows,
    )


def footprint_section(foot: Footprint, device: HardwareSpec | None) -> str:
    rows = [
        ["weights", size_exact(foot.weight_bytes)],
        ["biases", size_exact(foot.bias_bytes)],
        ["peak live activations", f"{size_exact(foot.peak_activation_bytes)} at {foot.peak_at}"],
        ["parameters + peak activations", size_exact(foot.total_bytes)],
    ]
    if device is not None:
        for label, fig, fits in (
            ("main memory", device.main_memory, foot.fits(device)),
            ("on-chip memory", device.on_chip_memory, foot.fits_on_chip(device)),
        ):
            if fig is not None:
                word = "fits" if fits else "does not fit"
                rows.append([f"{device.name} {label}", f"{size_exact(int(fig.value))}: {word}"])
    return (
        html_table([left("memory"), right("bytes")], rows)
        + '<p class="note">Activations are freed after their last reader; graph inputs '
        "count while alive; views share their source's memory; no op runs in place.</p>"
    )


def training_section(step: Any, roof: Roofline | None) -> str:
    """Issue 15: forward and backward MACs per layer, what autograd keeps, the memory of a
    step, and the rules of thumb next to the exact figures."""
    columns = [
        left("name"),
        left("type"),
        right("forward MACs"),
        right("input-gradient MACs"),
        right("weight-gradient MACs"),
        right("recomputed MACs"),
        right("backward values moved"),
        right("saved for backward"),
    ]
    rows = [
        [
            r.name,
            r.type,
            count(r.forward_macs),
            count(r.input_grad_macs),
            count(r.weight_grad_macs),
            count(r.recompute_macs),
            count(r.backward_values_moved),
            size(r.saved_bytes),
        ]
        for r in step.backward
    ]
    footer = [
        "total",
        "",
        count(step.forward_macs),
        count(step.input_grad_macs),
        count(step.weight_grad_macs),
        count(step.recompute_macs),
        count(step.backward_values_moved),
        size(step.saved_bytes),
    ]
    table = html_table(columns, rows, footer=footer)
    if len(rows) > MAX_VISIBLE_ROWS:  # a large model: open on request, the page stays short
        table = (
            f"<details><summary>{len(rows)} layers: open the per-layer table</summary>"
            f"{table}</details>"
        )
    m = step.memory
    memory = [
        ("parameters and buffers", size(m.parameters)),
        ("gradients", size(m.gradients)),
        (f"optimizer state ({m.optimizer})", size(m.optimizer_state)),
    ]
    if m.amp:
        memory.append(("fp32 master weights", size(m.master_weights)))
    memory += [
        ("kept for backward after forward", size(m.activations)),
        (f"peak of a step (during {m.peak_phase})", size(m.peak)),
        ("peak of the first step", size(m.first_step_peak)),
    ]
    thumbs = [[k, count(v)] for k, v in step.rules_of_thumb().items()]
    out = (
        table + '<p class="note">Backward MACs are what autograd runs: frozen weights get no '
        "weight gradient, a layer fed by data no input gradient. Memory: a whole step "
        "(zero_grad, forward, backward, optimizer) run on the meta device, each storage "
        "alive from the operator that makes it until PyTorch frees it.</p>"
        + html_table(
            [left("memory of a training step"), right("size")], [list(pair) for pair in memory]
        )
        + html_table([left("rule of thumb or exact figure"), right("MACs")], thumbs)
    )
    if roof is not None:
        out += (
            f"<p>Estimated time of a training step on {esc(roof.device.name)}: "
            f"{duration(roof.latency_s)} (forward and backward of every layer on the "
            "roofline).</p>"
        )
    return out


def device_section(device: HardwareSpec) -> str:
    rows = [
        [f"peak {dtype}", rate(fig.value), fig.source] for dtype, fig in device.peak_macs.items()
    ]
    rows.append(["memory bandwidth", rate(device.bandwidth.value, "B/s"), device.bandwidth.source])
    for label, fig in (
        ("on-chip memory", device.on_chip_memory),
        ("main memory", device.main_memory),
    ):
        if fig is not None:
            rows.append([label, size_exact(int(fig.value)), fig.source])
    return f"<p>{esc(device.title)}</p>" + html_table(
        [left("figure"), right("value"), left("source")], rows
    )


# --------------------------------------------------------------------------------------
# Verification (text and HTML share these rows)
# --------------------------------------------------------------------------------------
def reference_name(result: Any) -> str:
    return "PyTorch" if result.reference == "pytorch" else "onnxruntime"


def _rate(value: float | None) -> str:
    """Images per second: whole numbers from 100 up, three significant digits below."""
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def verification_pairs(result: Any) -> list[tuple[str, str]]:
    """The figures of a :class:`dnnlens.verify.VerifyResult` as (label, value), with units."""
    theirs = reference_name(result)
    pairs = []
    if result.accuracy is not None:
        pairs.append(
            (
                "accuracy",
                f"ours {result.correct:,}/{result.images:,} ({result.accuracy:.2%})   "
                f"{theirs} {result.reference_correct:,}/{result.images:,} "
                f"({result.reference_accuracy:.2%})",
            )
        )
    pairs += [
        ("differing predictions", count(result.mismatches)),
        (
            "max |logit diff|",
            f"{result.max_abs_diff:.3g}   (max |{theirs} logit| {result.max_abs_reference:.3g})",
        ),
        (
            "throughput",
            f"ours {_rate(result.images_per_s)} images/s   {theirs} "
            f"{_rate(result.reference_images_per_s)} images/s   ({result.threads} threads; "
            f"warm-up {duration(result.warmup_seconds)})",
        ),
    ]
    return pairs


def verification_columns() -> list[Column]:
    return [
        left("layer"),
        left("kind"),
        left("shape"),
        right("max |diff|"),
        right("max |ref|"),
        left("note"),
    ]


def _diff(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def verification_layer_rows(result: Any) -> list[list[str]]:
    return [
        [
            layer.name,
            layer.kind,
            "x".join(str(d) for d in layer.shape),
            _diff(layer.max_abs_diff),
            _diff(layer.max_abs_reference),
            layer.note,
        ]
        for layer in result.layers
    ]


def verification_section(result: Any) -> str:
    """A :class:`dnnlens.verify.VerifyResult` as two tables: figures, then per layer."""
    theirs = reference_name(result)
    verdict = (
        Markup(f'<p class="ok">Every prediction agrees with {theirs}.</p>')
        if result.mismatches == 0
        else Markup(f'<p class="bad">{result.mismatches:,} predictions differ from {theirs}.</p>')
    )
    head = (
        f"<p>{result.images:,} images of {esc(result.data)}, our {esc(result.engine)} "
        f"engine against {theirs}.</p>"
    )
    return (
        head
        + verdict
        + html_table([left("figure"), left("value")], verification_pairs(result))
        + "<h3>Largest difference per layer</h3>"
        + html_table(verification_columns(), verification_layer_rows(result))
    )


# --------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------
def render_html(
    analysis: Analysis,
    charts: dict[str, str],
    *,
    roof: Roofline | None,
    foot: Footprint,
    sweep: Sequence[Roofline] = (),
    verification: Any = None,
    measurement_html: str = "",
    depth: int | None = None,
    training: Any = None,
    training_roof: Roofline | None = None,
) -> str:
    """The report page: ``charts`` maps a title to SVG text (inlined)."""
    device = roof.device if roof else None
    depth = default_depth(analysis.rows) if depth is None else depth
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>dnnlens report: {esc(analysis.model)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>dnnlens report: {esc(analysis.model)}</h1>",
        f"<p>Input {esc(shape(analysis.input_shape))}, batch {analysis.batch}, "
        f"{esc(analysis.dtype)}, {len(analysis.rows)} layers"
        + (f", on {esc(device.name)}" if device else "")
        + f". Written {when}.</p>",
    ]
    for warning in getattr(analysis, "warnings", []):
        parts.append(f'<p class="bad">{esc(warning)}</p>')
    parts.append('<h2 id="summary">Summary</h2>' + summary_section(analysis, roof, foot))
    parts.append(
        f'<h2 id="layers">Layers</h2><p class="note">Grouped by module, shown to '
        f"depth {depth} (<code>dnnlens report --depth K</code> changes it); click a "
        "group to open it. Hover a row for its descriptor and input shape.</p>"
        + layer_tree(analysis, roof, depth)
        + '<p class="note">MACs per batch (padding zeros counted; FLOPs = 2 x MACs); '
        "weights exclude biases; bytes moved: inputs + weights + outputs once from "
        "main memory, weights once per batch; MAC/value: compute intensity. "
        "Estimated time = max(MACs / peak, bytes / bandwidth). Sizes in decimal "
        "units (1 kB = 1,000 B).</p>"
    )
    for title, (svg, klass, note) in _chart_items(charts):
        parts.append(
            f'<h2>{esc(title)}</h2><div class="chart {klass}">{svg}</div>'
            + (f'<p class="note">{esc(note)}</p>' if note else "")
        )
    if sweep:
        parts.append("<h2>Latency and throughput by batch size</h2>" + sweep_section(sweep))
    if measurement_html:
        rows = measurement_html.count("<tr") - 1
        if rows > MAX_VISIBLE_ROWS:  # a timing per layer: open on request, the page stays short
            measurement_html = (
                f"<details><summary>{rows} layers timed: open the table</summary>"
                f"{measurement_html}</details>"
            )
        parts.append("<h2>Estimate against measurement</h2>" + measurement_html)
    parts.append("<h2>Memory footprint</h2>" + footprint_section(foot, device))
    if training is not None:
        parts.append("<h2>Training step</h2>" + training_section(training, training_roof))
    if verification is not None:
        against = {"onnxruntime": "onnxruntime"}.get(
            getattr(verification, "reference", ""), "PyTorch"
        )
        parts.append(
            f"<h2>Verification against {against}</h2>" + verification_section(verification)
        )
    if device:
        parts.append("<h2>Device</h2>" + device_section(device))
    parts.append("</body></html>")
    return "\n".join(parts)


def _chart_items(charts: dict[str, Any]) -> list[tuple[str, tuple[str, str, str]]]:
    """``title -> svg`` or ``title -> (svg, css class, note)``, normalised."""
    items = []
    for title, value in charts.items():
        if isinstance(value, tuple):
            items.append((title, value))
        else:
            items.append((title, (inline_svg(value), "", "")))
    return items


def _roofline_note(roof: Roofline) -> str:
    skipped: dict[str, int] = {}
    for layer in roof.layers:
        if not (layer.macs > 0 and layer.bytes_moved > 0):
            skipped[layer.type] = skipped.get(layer.type, 0) + 1
    labelled = (
        "Labels name the layers with the most estimated time or MACs; hover any point "
        "for its name and figures."
    )
    if not skipped:
        return labelled
    listed = ", ".join(f"{n} {kind}" for kind, n in skipped.items())
    return f"{labelled} Not on the chart (no MACs, no place on a log MACs/s axis): {listed}."


def write_report(
    analysis: Analysis,
    out_dir: str | Path,
    device: HardwareSpec | str | None = None,
    verification: Any = None,
    *,
    sweep: Sequence[Roofline] = (),
    measured: dict[str, float] | None = None,
    measurement_html: str = "",
    depth: int | None = None,
    training: Any = None,
) -> Path:
    """Write ``report.html`` and the charts (PNG + SVG) into ``out_dir``; return the page.

    ``device`` (a spec or a name/path for :func:`~dnnlens.roofline.load_spec`) adds the
    roofline columns, chart and memory fit; ``verification`` is the result of
    :func:`dnnlens.verify.verify`; ``sweep`` rooflines at other batch sizes
    (:func:`~dnnlens.roofline.batch_sweep`); ``measured`` maps layer names to measured MACs/s;
    ``depth`` the module depth the layer tree and the block chart show (default by size);
    ``training`` (a :class:`~dnnlens.training_step.TrainingStep`) adds the training section and,
    with a device, the roofline of forward and backward of every layer.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. -o names a file, or a folder inside one
        blocker = next((p for p in (out, *out.parents) if p.exists()), None)
        reason = (
            f"{blocker} is a file, not a folder"
            if blocker and not blocker.is_dir()
            else exc.strerror or exc
        )
        raise UsageError(
            f"{out}: cannot write the report here ({reason}); choose another -o folder"
        ) from None
    if depth is not None and depth < 0:
        raise UsageError(f"--depth must be 0 or more, got {depth}")
    depth = default_depth(analysis.rows) if depth is None else max(depth, 1)
    spec = load_spec(device) if isinstance(device, (str, Path)) else device
    roof = roofline(analysis, spec) if spec is not None else None
    charts: dict[str, Any] = {}
    if roof is not None:
        _, svg = roofline_chart(roof, out / "roofline", measured)
        titles = {f"layer-point-{layer.index}": point_title(layer) for layer in roof.layers}
        charts["Roofline"] = (
            inline_svg(svg.read_text(encoding="utf-8"), titles),
            "roof",
            _roofline_note(roof),
        )
    training_roof = None
    if training is not None and spec is not None:
        from dnnlens.roofline import training_roofline

        training_roof = training_roofline(training, spec)
        _, svg = roofline_chart(training_roof, out / "roofline-training")
        titles = {
            f"layer-point-{layer.index}": point_title(layer) for layer in training_roof.layers
        }
        charts["Roofline of a training step (forward and backward of each layer)"] = (
            inline_svg(svg.read_text(encoding="utf-8"), titles),
            "roof",
            _roofline_note(training_roof),
        )
    _, svg = bar_charts(analysis, out / "layers", depth)
    blocks = collapsed_blocks(module_tree(analysis.rows), depth)
    bar_titles = {
        f"bar-{metric}-{n}": f"{_block_path(b, analysis.rows)}: {label} {_metric_text(b, metric)}"
        for metric, label in BAR_METRICS
        for n, b in enumerate(blocks, start=1)
    }
    charts[f"MACs, weights, bytes moved and intensity per block (depth {depth})"] = (
        inline_svg(svg.read_text(encoding="utf-8"), bar_titles),
        "bars",
        f"{len(blocks)} blocks: the rows of the layer table at depth {depth}.",
    )
    page = render_html(
        analysis,
        charts,
        roof=roof,
        foot=memory_footprint(analysis.graph, analysis.dtype),
        sweep=sweep,
        verification=verification,
        measurement_html=measurement_html,
        depth=depth,
        training=training,
        training_roof=training_roof,
    )
    return atomic_write_text(out / "report.html", page)


def _metric_text(block: Block, metric: str) -> str:
    value = getattr(block, metric)
    if metric == "bytes_moved":
        return size(value)
    if metric == "intensity":
        return f"{value:.3g} MAC/value"
    return count(value)
