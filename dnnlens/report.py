"""Charts and the self-contained HTML report: views of an analysis, a roofline, a footprint.

Pipeline position: importers -> IR -> analysis / roofline -> **report** (here).

* :func:`roofline_chart`: log-log, the memory roof (bandwidth x intensity) and the compute
  roof (peak), one labelled point per layer that does MACs, coloured by layer type. Layers
  without MACs (ReLU, pooling, views) have no place on a log-scale MACs/s axis: the chart
  says so in a note and the bar charts show them.
* :func:`bar_charts`: one bar per layer for MACs, weights, bytes moved and intensity.
* :func:`write_report`: one HTML page with the tables, the charts inlined as SVG, the
  memory footprint and the verification result; no script, no external file, no network.

Every chart is written as PNG and SVG. Every SVG element of a layer carries an id naming it
(``layer-point-<index>``, ``bar-<metric>-<index>``) so tests and readers can find it. Files
are written atomically: a temp file in the same folder, then ``os.replace``.
"""

from __future__ import annotations

import dataclasses
import html
import io
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from dnnlens.errors import UsageError
from dnnlens.fileio import atomic_write_bytes, atomic_write_text
from dnnlens.roofline import (Footprint, HardwareSpec, Roofline, load_spec, memory_footprint,
                              roofline)

if TYPE_CHECKING:
    from matplotlib.figure import Figure as MplFigure

    from dnnlens.analysis import Analysis

#: Metrics of the bar charts: (LayerRow field, axis label).
BAR_METRICS = (
    ("macs", "MACs"),
    ("weights", "weights (values, biases excluded)"),
    ("bytes_moved", "bytes moved"),
    ("intensity", "intensity (MACs per value moved)"),
)


# --------------------------------------------------------------------------------------
# Charts
# --------------------------------------------------------------------------------------
def _pyplot():
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


def roofline_figure(roof: Roofline, measured: dict[str, float] | None = None) -> "MplFigure":
    """The roofline chart of ``roof``; ``measured`` maps layer names to measured MACs/s,
    drawn as hollow markers above the estimate."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 5.5), layout="constrained")
    points = [layer for layer in roof.layers if layer.macs > 0 and layer.bytes_moved > 0]
    intensities = [p.intensity for p in points] or [roof.ridge]
    low = min(min(intensities), roof.ridge) / 8
    high = max(max(intensities), roof.ridge) * 8
    xs = [low, roof.ridge, high]
    ax.plot(xs, [min(roof.peak, x * roof.bandwidth) for x in xs], color="black", lw=2,
            label=f"roof: {roof.peak / 1e9:,.3g} GMAC/s, {roof.bandwidth / 1e9:,.3g} GB/s",
            gid="roof")
    ax.axvline(roof.ridge, color="grey", ls=":", lw=1, gid="ridge")
    ax.annotate(f"ridge {roof.ridge:.3g} MAC/B", (roof.ridge, roof.peak),
                textcoords="offset points", xytext=(4, -14), fontsize=8, color="grey")
    colours = type_colours([p.type for p in points])
    # Names when they can be read; with many points the index (the tables give its name).
    short = len(points) > 12
    seen: set[str] = set()
    for n, p in enumerate(points):
        label = p.type if p.type not in seen else None
        seen.add(p.type)
        ax.plot([p.intensity], [p.attainable], "o", ms=7, color=colours[p.type], label=label,
                gid=f"layer-point-{p.index}")
        ax.annotate(str(p.index) if short else p.name, (p.intensity, p.attainable),
                    textcoords="offset points", xytext=(5, 4 if n % 2 else -11), fontsize=7)
        if measured and measured.get(p.name):
            ax.plot([p.intensity], [measured[p.name]], "o", ms=7, mfc="none",
                    color=colours[p.type], gid=f"layer-measured-{p.index}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    xlabel = f"compute intensity (MACs per byte, {roof.dtype})"
    skipped = [layer for layer in roof.layers if layer not in points]
    if skipped:
        counts: dict[str, int] = {}
        for layer in skipped:
            counts[layer.type] = counts.get(layer.type, 0) + 1
        xlabel += "\nnot shown, no MACs: " + ", ".join(
            f"{n} {kind}" for kind, n in counts.items())
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("attainable MACs per second")
    ax.set_title(f"Roofline on {roof.device.title}, batch {roof.batch}"
                 + (" (hollow: measured)" if measured else ""), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def bar_figure(analysis: "Analysis") -> "MplFigure":
    """Four per-layer bar charts (MACs, weights, bytes moved, intensity), one bar per layer."""
    plt = _pyplot()
    rows = analysis.rows
    fig, axes = plt.subplots(len(BAR_METRICS), 1, figsize=(max(8.0, 0.45 * len(rows)), 10),
                             sharex=True, layout="constrained")
    colours = type_colours([r.type for r in rows])
    names = [r.name for r in rows]
    for ax, (metric, label) in zip(axes, BAR_METRICS):
        values = [float(getattr(r, metric)) for r in rows]
        bars = ax.bar(range(len(rows)), values, color=[colours[r.type] for r in rows])
        for bar, row in zip(bars.patches, rows):
            bar.set_gid(f"bar-{metric}-{row.index}")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    axes[-1].set_xticks(range(len(rows)), names, rotation=60, ha="right", fontsize=8)
    axes[0].set_title(f"{analysis.model}: per layer, batch {analysis.batch}, {analysis.dtype}",
                      fontsize=10)
    return fig


def save_figure(fig: "MplFigure", stem: Path) -> tuple[Path, Path]:
    """``stem``.png and ``stem``.svg, each written atomically; returns both paths."""
    plt = _pyplot()
    paths = []
    for fmt in ("png", "svg"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=110, metadata={"Date": None} if fmt == "svg" else {})
        paths.append(atomic_write_bytes(stem.with_suffix(f".{fmt}"), buffer.getvalue()))
    plt.close(fig)
    return paths[0], paths[1]


def roofline_chart(roof: Roofline, stem: Path,
                   measured: dict[str, float] | None = None) -> tuple[Path, Path]:
    """Write the roofline chart as ``stem``.png and ``stem``.svg."""
    return save_figure(roofline_figure(roof, measured), Path(stem))


def bar_charts(analysis: "Analysis", stem: Path) -> tuple[Path, Path]:
    """Write the per-layer bar charts as ``stem``.png and ``stem``.svg."""
    return save_figure(bar_figure(analysis), Path(stem))


def inline_svg(svg: str) -> str:
    """An SVG file's text made fit to sit inside HTML: no XML prolog, DOCTYPE or metadata."""
    svg = re.sub(r"<\?xml[^>]*\?>", "", svg)
    svg = re.sub(r"<!DOCTYPE[^>]*>", "", svg, flags=re.S)
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    # HTML parsers know the SVG and xlink namespaces; dropping their declarations leaves the
    # page without a single URL in it.
    svg = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", svg)
    return svg.strip()


# --------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 78em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
tr.memory td.bound { color: #b55; } tr.compute td.bound { color: #287; }
.chart svg { max-width: 100%; height: auto; }
.ok { color: #287; font-weight: bold; } .bad { color: #b33; font-weight: bold; }
p.note { color: #666; font-size: 0.85em; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _shape(shape: Sequence[Any]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _si(value: float, unit: str) -> str:
    """1.23 G{unit}: engineering prefixes for readable sizes and rates."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:,.3g} {prefix}{unit}"
    return f"{value:,.3g} {unit}"


def _time(seconds: float) -> str:
    if seconds == 0:
        return "0"
    for factor, unit in ((1, "s"), (1e-3, "ms"), (1e-6, "us")):
        if seconds >= factor:
            return f"{seconds / factor:,.3g} {unit}"
    return f"{seconds / 1e-9:,.3g} ns"


def _bytes(n: float) -> str:
    for factor, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= factor:
            return f"{n / factor:,.2f} {unit} ({int(n):,} B)"
    return f"{int(n):,} B"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 0,
           row_classes: Sequence[str] | None = None) -> str:
    """An HTML table; the first ``left`` columns are left-aligned text."""
    def cls(i: int) -> str:
        return ' class="l"' if i < left else ""

    head = "".join(f"<th{cls(i)}>{_esc(h)}</th>" for i, h in enumerate(headers))
    body = []
    for n, row in enumerate(rows):
        klass = f' class="{row_classes[n]}"' if row_classes else ""
        cells = "".join(
            f'<td{cls(i)}{" class=bound" if headers[i] == "bound" else ""}>{_esc(c)}</td>'
            for i, c in enumerate(row))
        body.append(f"<tr{klass}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def layer_table(analysis: "Analysis", roof: Roofline | None) -> str:
    headers = ["#", "name", "type", "descriptor", "input", "output", "weights", "biases",
               "MACs", "bytes moved", "intensity (MAC/value)"]
    if roof:
        headers += ["MAC/byte", "attainable", "bound", "est. time"]
    rows, classes = [], []
    by_index = {layer.index: layer for layer in roof.layers} if roof else {}
    for r in analysis.rows:
        cells = [r.index, r.name, r.type, _shape(r.descriptor) if r.descriptor else "",
                 _shape(r.input_shape), _shape(r.output_shape), f"{r.weights:,}",
                 f"{r.biases:,}", f"{r.macs:,}", f"{r.bytes_moved:,}", f"{r.intensity:.3f}"]
        layer = by_index.get(r.index)
        if layer:
            cells += [f"{layer.intensity:.3g}" if layer.bytes_moved else "",
                      _si(layer.attainable, "MAC/s") if layer.macs else "", layer.bound,
                      _time(layer.time_s)]
        rows.append(cells)
        classes.append(layer.bound if layer else "")
    t = analysis.totals
    total = ["", "total", "", "", "", "", f"{t.weights:,}", f"{t.biases:,}", f"{t.macs:,}",
             f"{t.bytes:,}", f"{t.intensity:.3f}"]
    if roof:
        total += ["", _si(roof.attainable, "MAC/s"), "", _time(roof.latency_s)]
    rows.append(total)
    classes.append("total")
    return _table(headers, rows, left=6, row_classes=classes)


def footprint_section(foot: Footprint, device: HardwareSpec | None) -> str:
    rows = [["weights", _bytes(foot.weight_bytes)], ["biases", _bytes(foot.bias_bytes)],
            ["peak live activations", f"{_bytes(foot.peak_activation_bytes)} at {foot.peak_at}"],
            ["parameters + peak activations", _bytes(foot.total_bytes)]]
    if device is not None:
        for label, fig, fits in (("main memory", device.main_memory, foot.fits(device)),
                                 ("on-chip memory", device.on_chip_memory,
                                  foot.fits_on_chip(device))):
            if fig is not None:
                word = "fits" if fits else "does not fit"
                rows.append([f"{device.name} {label}", f"{_bytes(fig.value)}: {word}"])
    return (_table(["", "bytes"], rows, left=2)
            + '<p class="note">Activations are freed after their last reader; graph inputs '
              "count while alive; views share their source's memory; no op runs in place.</p>")


def sweep_section(sweep: Sequence[Roofline]) -> str:
    rows = [[r.batch, _time(r.latency_s), f"{r.throughput:,.0f}", _si(r.attainable, "MAC/s"),
             f"{100 * r.attainable / r.peak:.1f}%",
             ", ".join(layer.name for layer in r.layers if layer.bound == "memory"
                       and layer.macs)] for r in sweep]
    return _table(["batch", "est. latency", "images/s", "attainable", "of peak",
                   "memory-bound layers with MACs"], rows, left=0)


def device_section(device: HardwareSpec) -> str:
    rows = [[f"peak {dtype}", _si(fig.value, "MAC/s"), fig.source]
            for dtype, fig in device.peak_macs.items()]
    rows.append(["memory bandwidth", _si(device.bandwidth.value, "B/s"), device.bandwidth.source])
    for label, fig in (("on-chip memory", device.on_chip_memory),
                       ("main memory", device.main_memory)):
        if fig is not None:
            rows.append([label, _bytes(fig.value), fig.source])
    return f"<p>{_esc(device.title)}</p>" + _table(["figure", "value", "source"], rows, left=3)


def verification_section(verification: Any) -> str:
    """The result of :func:`dnnlens.verify.verify`, whatever its exact fields."""
    scalars, layers = [], None
    fields = (dataclasses.asdict(verification) if dataclasses.is_dataclass(verification)
              else dict(vars(verification)) if hasattr(verification, "__dict__")
              else dict(verification))
    for key, value in fields.items():
        if key == "layers" and isinstance(value, (list, tuple, dict)):
            layers = value
        elif isinstance(value, (int, float, str, bool)) or value is None:
            shown = f"{value:.4g}" if isinstance(value, float) else value
            if isinstance(value, float) and "accuracy" in key and value <= 1:
                shown = f"{100 * value:.2f}%"
            scalars.append([key.replace("_", " "), shown])
    out = _table(["", "value"], scalars, left=2)
    if layers:
        items = list(layers.items()) if isinstance(layers, dict) else list(enumerate(layers))
        table_rows = []
        for key, item in items:
            if dataclasses.is_dataclass(item):
                item = dataclasses.asdict(item)
            if isinstance(item, dict):
                table_rows.append((key, item))
            else:
                table_rows.append((key, {"value": item}))
        columns = list(dict.fromkeys(c for _, item in table_rows for c in item))
        rows = [[key] + [_fmt(item.get(c, "")) for c in columns] for key, item in table_rows]
        out += _table(["layer", *columns], rows, left=1)
    return out


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def render_html(analysis: "Analysis", charts: dict[str, str], *, roof: Roofline | None,
                foot: Footprint, sweep: Sequence[Roofline] = (), verification: Any = None,
                measurement_html: str = "") -> str:
    """The report page: ``charts`` maps a title to SVG text (inlined)."""
    device = roof.device if roof else None
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>dnnlens report: {_esc(analysis.model)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>dnnlens report: {_esc(analysis.model)}</h1>",
        f"<p>Input {_esc(_shape(analysis.input_shape))}, batch {analysis.batch}, "
        f"{_esc(analysis.dtype)}, {len(analysis.rows)} layers"
        + (f", on {_esc(device.name)}" if device else "") + f". Written {when}.</p>",
    ]
    for warning in getattr(analysis, "warnings", []):
        parts.append(f'<p class="bad">{_esc(warning)}</p>')
    parts.append("<h2>Layers</h2>" + layer_table(analysis, roof))
    parts.append('<p class="note">MACs per batch (padding zeros counted; FLOPs = 2 x MACs); '
                 "weights exclude biases; bytes moved: inputs + weights + outputs once from "
                 "main memory, weights once per batch. Roofline time = max(MACs / peak, "
                 "bytes / bandwidth).</p>")
    if roof:
        parts.append(f"<p>Estimated latency {_time(roof.latency_s)} per batch of {roof.batch}, "
                     f"{roof.throughput:,.0f} images/s.</p>")
    if sweep:
        parts.append("<h2>Latency and throughput by batch size</h2>" + sweep_section(sweep))
    if measurement_html:
        parts.append("<h2>Estimate against measurement</h2>" + measurement_html)
    parts.append("<h2>Memory footprint</h2>" + footprint_section(foot, device))
    for title, svg in charts.items():
        parts.append(f'<h2>{_esc(title)}</h2><div class="chart">{inline_svg(svg)}</div>')
    if verification is not None:
        against = {"onnxruntime": "onnxruntime"}.get(getattr(verification, "reference", ""),
                                                     "PyTorch")
        parts.append(f"<h2>Verification against {against}</h2>"
                     + verification_section(verification))
    if device:
        parts.append("<h2>Device</h2>" + device_section(device))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(analysis: "Analysis", out_dir: str | Path,
                 device: HardwareSpec | str | None = None, verification: Any = None, *,
                 sweep: Sequence[Roofline] = (), measured: dict[str, float] | None = None,
                 measurement_html: str = "") -> Path:
    """Write ``report.html`` and the charts (PNG + SVG) into ``out_dir``; return the page.

    ``device`` (a spec or a name/path for :func:`~dnnlens.roofline.load_spec`) adds the
    roofline columns, chart and memory fit; ``verification`` is the result of
    :func:`dnnlens.verify.verify`; ``sweep`` rooflines at other batch sizes
    (:func:`~dnnlens.roofline.batch_sweep`); ``measured`` maps layer names to measured MACs/s.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. -o names a file, or a folder inside one
        blocker = next((p for p in (out, *out.parents) if p.exists()), None)
        reason = (f"{blocker} is a file, not a folder" if blocker and not blocker.is_dir()
                  else exc.strerror or exc)
        raise UsageError(f"{out}: cannot write the report here ({reason}); choose another -o "
                         "folder") from None
    spec = load_spec(device) if isinstance(device, (str, Path)) else device
    roof = roofline(analysis, spec) if spec is not None else None
    charts: dict[str, str] = {}
    if roof is not None:
        _, svg = roofline_chart(roof, out / "roofline", measured)
        charts["Roofline"] = svg.read_text(encoding="utf-8")
    _, svg = bar_charts(analysis, out / "layers")
    charts["Per-layer MACs, weights, bytes moved and intensity"] = svg.read_text(encoding="utf-8")
    page = render_html(analysis, charts, roof=roof, foot=memory_footprint(analysis.graph,
                       analysis.dtype), sweep=sweep, verification=verification,
                       measurement_html=measurement_html)
    return atomic_write_text(out / "report.html", page)
