"""Hardware specs, the roofline model and the memory footprint of a network.

Pipeline position: it reads an :class:`~dnnlens.analysis.Analysis` (per-layer MACs and bytes
moved) and a :class:`HardwareSpec` (peak MACs/s per dtype, memory bandwidth, memory sizes) and
says, per layer, how fast it could run and what limits it.

Roofline (Williams, Waterman and Patterson, CACM 2009), in MACs rather than FLOPs:

* intensity per byte ``I = macs / bytes_moved`` (bytes from the analysis dtype; weights read
  once per batch, activations once per image, so ``I`` of a fully connected layer grows with
  the batch);
* attainable MACs/s ``= min(peak, I * bandwidth)``; the layer is *compute-bound* when
  ``I >= ridge = peak / bandwidth`` and *memory-bound* otherwise;
* estimated time ``= max(macs / peak, bytes / bandwidth)`` (the same as ``macs / attainable``),
  so a layer without MACs (ReLU, pooling) still takes its memory time and a view takes none.

Memory footprint: see :func:`memory_footprint` for how tensors are kept alive and freed.

Hardware specs are TOML files, one per device, in ``dnnlens/hardware/``; see
:func:`load_spec` for the format.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from math import isfinite, prod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dnnlens.analysis import DTYPE_BYTES, bytes_per_value
from dnnlens.errors import SpecError
from dnnlens.fileio import atomic_write_text

if TYPE_CHECKING:
    from dnnlens.ir import Graph

#: Bytes per value of each dtype a spec may give a peak for.

#: Figures a spec must give (``peak_macs_per_s`` needs at least one dtype).
REQUIRED = ("peak_macs_per_s", "memory_bandwidth")
#: Figures a spec may give.
OPTIONAL = ("on_chip_memory", "main_memory", "on_chip_buffer")


# --------------------------------------------------------------------------------------
# Hardware specs
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Figure:
    """One number of a spec and where it comes from (datasheet, derivation, measurement)."""

    value: float
    source: str = ""


@dataclass(frozen=True)
class HardwareSpec:
    """A device as the roofline sees it.

    ``peak_macs`` maps a dtype (``fp32``, ``fp16``, ``bf16``, ``int8``) to the peak
    multiply-accumulates per second; ``bandwidth`` is main-memory bytes per second;
    ``on_chip_memory`` / ``main_memory`` are bytes (``None`` where unknown);
    ``on_chip_buffer`` is the one on-chip buffer between main memory and the cores that the
    data-flow model (:mod:`dnnlens.dataflow`) tiles layers into, in bytes.
    """

    name: str
    title: str
    peak_macs: Mapping[str, Figure]
    bandwidth: Figure
    on_chip_memory: Figure | None = None
    main_memory: Figure | None = None
    notes: str = ""
    path: str = ""
    on_chip_buffer: Figure | None = None

    def buffer_bytes(self) -> int:
        """The data-flow buffer: ``on_chip_buffer``, else all of ``on_chip_memory``;
        SpecError when the spec gives neither."""
        figure = self.on_chip_buffer or self.on_chip_memory
        if figure is None:
            raise SpecError(
                f"device {self.name!r} gives no on-chip buffer size; add "
                f"[on_chip_buffer] to its spec or give --buffer SIZE"
            )
        return int(figure.value)

    def peak(self, dtype: str = "fp32") -> float:
        """Peak MACs/s for ``dtype``; SpecError naming the dtypes the spec has otherwise."""
        if dtype not in self.peak_macs:
            have = ", ".join(self.peak_macs) or "none"
            raise SpecError(
                f"device {self.name!r} gives no peak for {dtype} (it has: {have}); "
                f"add peak_macs_per_s.{dtype} to its spec or pick another dtype"
            )
        return self.peak_macs[dtype].value

    def ridge(self, dtype: str = "fp32") -> float:
        """Intensity (MACs per byte) where the memory roof meets the compute roof."""
        return self.peak(dtype) / self.bandwidth.value


def hardware_dir() -> Path:
    """The folder of the shipped device specs."""
    return Path(str(resources.files("dnnlens") / "hardware"))


def known_devices() -> list[str]:
    """Names of the shipped devices (file stems), sorted."""
    return sorted(p.stem for p in hardware_dir().glob("*.toml"))


def load_spec(name_or_path: str | os.PathLike) -> HardwareSpec:
    """A shipped device by name (``rpi5``) or a spec file by path (anything ending ``.toml``
    or naming an existing file).

    File format (every figure is a table with ``value`` and ``source``, or a bare number)::

        name = "rpi5"
        title = "Raspberry Pi 5 (4x Cortex-A76 @ 2.4 GHz)"
        [peak_macs_per_s.fp32]            # MACs per second, one table per dtype
        value = 76.8e9
        source = "derived: 4 cores x 2 FMA pipes x 4 fp32 lanes x 2.4 GHz (Arm A76 guide)"
        [memory_bandwidth]                # bytes per second
        value = 17.07e9
        source = "..."
        [main_memory]                     # bytes, optional; so is [on_chip_memory]
        value = 8589934592
        source = "..."
        [on_chip_buffer]                  # bytes, optional: the buffer dnnlens.dataflow tiles
        value = 2097152                   # into (default: all of on_chip_memory)
        source = "..."

    SpecError (one line naming the file and field) on a missing, non-numeric, zero or
    negative figure, and on an unknown device name (listing the known ones).
    """
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith(".toml") or path.is_file() or os.sep in text):
        path = hardware_dir() / f"{text}.toml"
        if not path.is_file():
            from dnnlens.formatting import did_you_mean

            hint = did_you_mean(text, [*known_devices(), "probe"])
            raise SpecError(
                f"unknown device {text!r}{hint}; known devices: "
                f"{', '.join(known_devices())} (or give a .toml spec file)"
            )
    if not path.is_file():
        raise SpecError(
            f"hardware spec file {text} does not exist; known devices: "
            f"{', '.join(known_devices())}"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"hardware spec {path}: not valid TOML ({exc})") from None
    return parse_spec(data, where=str(path), default_name=path.stem)


def parse_spec(
    data: Mapping[str, Any], where: str = "spec", default_name: str = "device"
) -> HardwareSpec:
    """A :class:`HardwareSpec` from a parsed TOML mapping (see :func:`load_spec`)."""
    for key in REQUIRED:
        if key not in data:
            raise SpecError(f"hardware spec {where}: missing figure {key!r}")
    peaks_raw = data["peak_macs_per_s"]
    if not isinstance(peaks_raw, Mapping) or not peaks_raw:
        raise SpecError(
            f"hardware spec {where}: peak_macs_per_s needs at least one dtype "
            f"table ({', '.join(DTYPE_BYTES)})"
        )
    peaks = {}
    for dtype, raw in peaks_raw.items():
        if dtype not in DTYPE_BYTES:
            raise SpecError(
                f"hardware spec {where}: unknown dtype peak_macs_per_s.{dtype} "
                f"(known: {', '.join(DTYPE_BYTES)})"
            )
        peaks[dtype] = _figure(raw, f"peak_macs_per_s.{dtype}", where)
    optional = {key: _figure(data[key], key, where) for key in OPTIONAL if key in data}
    return HardwareSpec(
        name=str(data.get("name", default_name)),
        title=str(data.get("title", data.get("name", default_name))),
        peak_macs=peaks,
        bandwidth=_figure(data["memory_bandwidth"], "memory_bandwidth", where),
        on_chip_memory=optional.get("on_chip_memory"),
        main_memory=optional.get("main_memory"),
        notes=str(data.get("notes", "")),
        path=where,
        on_chip_buffer=optional.get("on_chip_buffer"),
    )


def _figure(raw: Any, field_name: str, where: str) -> Figure:
    """A positive finite figure from ``{value, source}`` or a bare number."""
    source = ""
    if isinstance(raw, Mapping):
        if "value" not in raw:
            raise SpecError(f"hardware spec {where}: missing figure {field_name}.value")
        source = str(raw.get("source", ""))
        raw = raw["value"]
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise SpecError(f"hardware spec {where}: {field_name} must be a number, got {raw!r}")
    value = float(raw)
    if not isfinite(value) or value <= 0:
        raise SpecError(f"hardware spec {where}: {field_name} must be positive, got {raw!r}")
    return Figure(value, source)


def spec_to_toml(spec: HardwareSpec) -> str:
    """The TOML text :func:`load_spec` reads back into an equal spec."""

    def quote(text: str) -> str:
        return json.dumps(text)  # a JSON string is a valid TOML basic string

    def table(header: str, fig: Figure) -> list[str]:
        return ["", f"[{header}]", f"value = {fig.value!r}", f"source = {quote(fig.source)}"]

    lines = [f"name = {quote(spec.name)}", f"title = {quote(spec.title)}"]
    if spec.notes:
        lines.append(f"notes = {quote(spec.notes)}")
    for dtype, fig in spec.peak_macs.items():
        lines += table(f"peak_macs_per_s.{dtype}", fig)
    lines += table("memory_bandwidth", spec.bandwidth)
    for key, memory in (
        ("on_chip_memory", spec.on_chip_memory),
        ("main_memory", spec.main_memory),
        ("on_chip_buffer", spec.on_chip_buffer),
    ):
        if memory is not None:
            lines += table(key, memory)
    return "\n".join(lines) + "\n"


def save_spec(spec: HardwareSpec, path: str | os.PathLike) -> Path:
    """Write ``spec`` as TOML, atomically (a temp file in the same folder, then os.replace)."""
    return atomic_write_text(Path(path), spec_to_toml(spec))


# --------------------------------------------------------------------------------------
# Roofline
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerRoof:
    """One layer on the roofline. ``intensity`` is MACs per byte; ``attainable`` MACs/s;
    ``bound`` is ``compute``, ``memory`` or ``none`` (a view: no MACs, no traffic)."""

    index: int
    name: str
    type: str
    macs: int
    bytes_moved: int
    intensity: float
    attainable: float
    bound: str
    time_s: float


@dataclass(frozen=True)
class Roofline:
    """A network on a device at one batch size and dtype."""

    device: HardwareSpec
    dtype: str
    batch: int
    peak: float
    bandwidth: float
    layers: list[LayerRoof] = field(default_factory=list)

    @property
    def ridge(self) -> float:
        """MACs per byte at which a layer stops being memory-bound."""
        return self.peak / self.bandwidth

    @property
    def latency_s(self) -> float:
        """Estimated time for one batch: layers run one after another."""
        return sum(layer.time_s for layer in self.layers)

    @property
    def throughput(self) -> float:
        """Estimated images (batch items) per second."""
        latency = self.latency_s
        return self.batch / latency if latency > 0 else float("inf")

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def attainable(self) -> float:
        """Whole-network MACs/s: total MACs over estimated latency."""
        latency = self.latency_s
        return self.macs / latency if latency > 0 else 0.0


def layer_roof(
    macs: int, bytes_moved: int, peak: float, bandwidth: float
) -> tuple[float, float, str, float]:
    """``(intensity MAC/byte, attainable MAC/s, bound, time s)`` of one layer."""
    if bytes_moved <= 0:
        # A view moves nothing; a layer with MACs but no traffic cannot be memory-bound.
        return (
            float("inf") if macs else 0.0,
            peak if macs else 0.0,
            "compute" if macs else "none",
            macs / peak,
        )
    intensity = macs / bytes_moved
    attainable = min(peak, intensity * bandwidth)
    bound = "compute" if macs and intensity >= peak / bandwidth else "memory"
    time_s = max(macs / peak, bytes_moved / bandwidth)
    return intensity, attainable, bound, time_s


def roofline(analysis: Any, device: HardwareSpec | str) -> Roofline:
    """Per-layer roofline of an :class:`~dnnlens.analysis.Analysis` on ``device``.

    Uses each row's ``macs`` and ``bytes_moved`` (already in the analysis dtype) and the
    device's peak for that dtype.
    """
    spec = device if isinstance(device, HardwareSpec) else load_spec(device)
    dtype = getattr(analysis, "dtype", "fp32")
    peak, bandwidth = spec.peak(dtype), spec.bandwidth.value
    layers: list[LayerRoof] = []
    for row in analysis.rows:
        intensity, attainable, bound, time_s = layer_roof(
            int(row.macs), int(row.bytes_moved), peak, bandwidth
        )
        layers.append(
            LayerRoof(
                int(row.index),
                str(row.name),
                str(row.type),
                int(row.macs),
                int(row.bytes_moved),
                intensity,
                attainable,
                bound,
                time_s,
            )
        )
    return Roofline(spec, dtype, int(getattr(analysis, "batch", 1)), peak, bandwidth, layers)


def training_roofline(step: Any, device: HardwareSpec | str) -> Roofline:
    """Forward and backward of every layer of a training step
    (:class:`~dnnlens.training_step.TrainingStep`) on ``device``: each layer twice, as
    ``name`` (its forward: MACs and bytes moved of the analysis) and ``name backward`` (input
    and weight gradient MACs plus any recomputation, and the values its backward operators
    read and write), so ``latency_s`` is the time of a whole step."""
    spec = device if isinstance(device, HardwareSpec) else load_spec(device)
    analysis = step.analysis
    nbytes = bytes_per_value(analysis.dtype)
    peak, bandwidth = spec.peak(analysis.dtype), spec.bandwidth.value
    layers: list[LayerRoof] = []
    for row in analysis.rows:
        intensity, attainable, bound, time_s = layer_roof(
            int(row.macs), int(row.bytes_moved), peak, bandwidth
        )
        layers.append(
            LayerRoof(
                len(layers) + 1,
                row.name,
                row.type,
                int(row.macs),
                int(row.bytes_moved),
                intensity,
                attainable,
                bound,
                time_s,
            )
        )
    for back in reversed(step.backward):  # backward runs the layers in reverse
        macs = back.backward_macs + back.recompute_macs
        moved = back.backward_values_moved * nbytes
        if not macs and not moved:
            continue
        intensity, attainable, bound, time_s = layer_roof(macs, moved, peak, bandwidth)
        layers.append(
            LayerRoof(
                len(layers) + 1,
                f"{back.name} backward",
                f"{back.type} backward",
                macs,
                moved,
                intensity,
                attainable,
                bound,
                time_s,
            )
        )
    return Roofline(spec, analysis.dtype, int(analysis.batch), peak, bandwidth, layers)


def batch_sweep(
    model: Any,
    device: HardwareSpec | str,
    batches: Iterable[int] = (1, 16, 256),
    input_shape: Sequence[int] | None = None,
    dtype: str = "fp32",
) -> list[Roofline]:
    """The roofline at each batch size: latency and throughput against batch."""
    from dnnlens.analysis import analyze

    spec = device if isinstance(device, HardwareSpec) else load_spec(device)
    return [roofline(analyze(model, input_shape, batch=b, dtype=dtype), spec) for b in batches]


# --------------------------------------------------------------------------------------
# Memory footprint
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Footprint:
    """Memory a forward pass needs.

    ``weight_bytes`` excludes biases (the counting convention); ``parameter_bytes`` is
    weights + biases, what the device must hold. ``live_bytes[i]`` is the activation memory
    alive while node ``i`` runs (its inputs, its output and everything kept for later);
    ``peak_activation_bytes`` is their maximum, reached at node ``peak_at``.
    """

    dtype: str
    weight_bytes: int
    bias_bytes: int
    peak_activation_bytes: int
    peak_at: str
    live_bytes: list[tuple[str, int]]

    @property
    def parameter_bytes(self) -> int:
        return self.weight_bytes + self.bias_bytes

    @property
    def total_bytes(self) -> int:
        """Parameters plus peak activations: the least memory a run needs."""
        return self.parameter_bytes + self.peak_activation_bytes

    def fits(self, device: HardwareSpec) -> bool | None:
        """Whether parameters + peak activations fit the device's main memory (its on-chip
        memory when it lists no main memory); ``None`` when it gives neither."""
        memory = device.main_memory or device.on_chip_memory
        return None if memory is None else self.total_bytes <= memory.value

    def fits_on_chip(self, device: HardwareSpec) -> bool | None:
        """Whether everything fits the on-chip memory (no main-memory traffic at all)."""
        memory = device.on_chip_memory
        return None if memory is None else self.total_bytes <= memory.value


def memory_footprint(graph: Graph, dtype: str = "fp32") -> Footprint:
    """Parameter bytes and peak live activation bytes of ``graph`` run in its node order.

    The liveness model (what a framework with a caching allocator does, minus fragmentation):

    * a graph input is alive from the start until its last consumer has run;
    * a node's output is allocated when the node runs, while its inputs are still alive (so a
      step counts inputs + output), and is freed after its last consumer; a graph output
      stays alive to the end; an output nobody reads is freed right after its step;
    * a view (reshape/flatten, permute, slice, expand, eval dropout: ``op.IS_VIEW``) allocates
      nothing: it shares its source's storage, which stays alive, whole, until the last
      consumer of the source *or of any view of it* has run;
    * nothing is computed in place: an element-wise op (ReLU) gets its own output, as
      ``F.relu`` does; ``inplace=True`` modules would need less;
    * parameters are not activations: they are counted apart, once each, weights and biases.
    """
    elem = bytes_per_value(dtype)
    storage: dict[str, str | None] = {name: name for name in graph.inputs}
    size: dict[str, int] = {name: prod(shape) * elem for name, shape in graph.inputs.items()}
    for node in graph.nodes:
        if node.op.IS_VIEW:
            storage[node.name] = storage.get(node.inputs[0]) if node.inputs else None
        else:
            storage[node.name] = node.name
            size[node.name] = prod(node.output_shape) * elem

    end = len(graph.nodes)
    last_use = {name: -1 for name in size}  # -1: read by nobody
    for index, node in enumerate(graph.nodes):
        for value in node.inputs:
            owner = storage.get(value)
            if owner is not None:
                last_use[owner] = index
    for value in graph.outputs:
        owner = storage.get(value)
        if owner is not None:
            last_use[owner] = end

    # Free each storage after the step of its last use (unread outputs: after their own step,
    # unread graph inputs: after the first step).
    index_of = {node.name: i for i, node in enumerate(graph.nodes)}
    frees: dict[int, list[str]] = {}
    for owner, last in last_use.items():
        step = last if last >= 0 else index_of.get(owner, 0)
        frees.setdefault(step, []).append(owner)

    live = sum(size[name] for name in graph.inputs)
    timeline: list[tuple[str, int]] = []
    for index, node in enumerate(graph.nodes):
        if storage[node.name] == node.name:
            live += size[node.name]
        timeline.append((node.name, live))
        live -= sum(size[owner] for owner in frees.get(index, ()))
    peak_at, peak = max(timeline, key=lambda item: item[1]) if timeline else ("", live)

    bias_names = {
        p.name for node in graph.nodes for role, p in node.params.items() if role == "bias"
    }
    weights = biases = 0
    for param_name, param in graph.params().items():
        if param_name in bias_names:
            biases += param.numel * elem
        else:
            weights += param.numel * elem
    return Footprint(dtype, weights, biases, peak, peak_at, timeline)


# --------------------------------------------------------------------------------------
# Text views
# --------------------------------------------------------------------------------------
def roofline_columns() -> list[Any]:
    from dnnlens.formatting import left, right

    return [
        right("#"),
        left("name"),
        left("type"),
        right("MAC/byte"),
        right("attainable"),
        left("bound"),
        right("est. time"),
    ]


def roofline_cells(layer: LayerRoof) -> list[str]:
    """One layer's roofline cells, formatted (a dash where a layer has no MACs or bytes)."""
    from dnnlens.formatting import DASH, duration, number, rate

    return [
        str(layer.index),
        layer.name,
        layer.type,
        number(layer.intensity) if layer.bytes_moved else DASH,
        rate(layer.attainable) if layer.macs else DASH,
        layer.bound,
        duration(layer.time_s),
    ]


def roofline_headline(roof: Roofline) -> str:
    from dnnlens.formatting import rate

    return (
        f"Roofline on {roof.device.name} ({roof.device.title}): peak "
        f"{rate(roof.peak)} {roof.dtype}, {rate(roof.bandwidth, 'B/s')}, "
        f"ridge {roof.ridge:.3g} MAC/byte"
    )


def latency_line(roof: Roofline) -> str:
    from dnnlens.formatting import duration

    return (
        f"estimated latency {duration(roof.latency_s)} per batch of {roof.batch}, "
        f"throughput {roof.throughput:,.0f} images/s, "
        f"{100 * roof.attainable / roof.peak:.1f}% of peak"
    )


def footprint_lines(foot: Footprint, device: HardwareSpec | None) -> list[str]:
    from dnnlens.formatting import size, size_exact

    lines = [
        f"memory: weights {size(foot.weight_bytes)} + biases {size(foot.bias_bytes)} + "
        f"peak activations {size(foot.peak_activation_bytes)} (at {foot.peak_at}) = "
        f"{size_exact(foot.total_bytes)}"
    ]
    if device is not None:
        for label, fits in (
            ("main memory", foot.fits(device)),
            ("on-chip memory", foot.fits_on_chip(device)),
        ):
            if fits is not None:
                lines.append(f"  {'fits' if fits else 'does not fit'} in {device.name} {label}")
    return lines


def render_roofline(roof: Roofline, foot: Footprint | None = None) -> str:
    """The roofline columns per layer, the totals and, if given, the memory footprint."""
    from dnnlens.formatting import text_table

    lines = [
        roofline_headline(roof),
        text_table(roofline_columns(), [roofline_cells(layer) for layer in roof.layers]),
        latency_line(roof),
    ]
    if foot is not None:
        lines += footprint_lines(foot, roof.device)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Data views (JSON)
# --------------------------------------------------------------------------------------
def device_dict(spec: HardwareSpec) -> dict[str, Any]:
    """A device's figures with their sources, JSON-ready (bytes, MACs/s, B/s)."""

    def fig(f: Figure | None) -> dict[str, Any] | None:
        return None if f is None else {"value": f.value, "source": f.source}

    return {
        "name": spec.name,
        "title": spec.title,
        "peak_macs_per_s": {dtype: fig(f) for dtype, f in spec.peak_macs.items()},
        "memory_bandwidth": fig(spec.bandwidth),
        "on_chip_memory": fig(spec.on_chip_memory),
        "main_memory": fig(spec.main_memory),
    }


def footprint_dict(foot: Footprint) -> dict[str, Any]:
    return {
        "dtype": foot.dtype,
        "weight_bytes": foot.weight_bytes,
        "bias_bytes": foot.bias_bytes,
        "peak_activation_bytes": foot.peak_activation_bytes,
        "peak_at": foot.peak_at,
        "total_bytes": foot.total_bytes,
    }


def roofline_dict(roof: Roofline, foot: Footprint | None = None) -> dict[str, Any]:
    """The roofline of every layer and of the whole network, JSON-ready (seconds, MACs/s,
    MACs per byte; ``null`` intensity for a layer that moves nothing)."""

    def finite(value: float) -> float | None:
        return value if isfinite(value) else None

    out: dict[str, Any] = {
        "device": device_dict(roof.device),
        "dtype": roof.dtype,
        "batch": roof.batch,
        "peak_macs_per_s": roof.peak,
        "bandwidth_bytes_per_s": roof.bandwidth,
        "ridge_macs_per_byte": roof.ridge,
        "latency_s": roof.latency_s,
        "throughput_per_s": finite(roof.throughput),
        "attainable_macs_per_s": roof.attainable,
        "layers": [
            {
                "index": layer.index,
                "name": layer.name,
                "type": layer.type,
                "intensity_macs_per_byte": finite(layer.intensity) if layer.bytes_moved else None,
                "attainable_macs_per_s": layer.attainable,
                "bound": layer.bound,
                "time_s": layer.time_s,
            }
            for layer in roof.layers
        ],
    }
    if foot is not None:
        out["fits"] = {
            "main_memory": foot.fits(roof.device),
            "on_chip_memory": foot.fits_on_chip(roof.device),
        }
    return out
