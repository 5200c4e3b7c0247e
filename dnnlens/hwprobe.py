"""Measure this machine: peak FP32 MACs/s and main-memory bandwidth, as a roofline spec.

* Compute: every core runs our own Numba loop of fused multiply-adds ``x[j] = x[j]*a + b``
  over ``NACC`` independent accumulators. With ``NACC`` a compile-time constant LLVM unrolls
  and vectorises the inner loop and keeps every accumulator in a register for the whole outer
  loop: on AVX-512 the loop body is 16 ``vfmadd213ps zmm`` and no load or store (checked in
  the compiled assembly, see :func:`fma_assembly`). 16 independent chains cover the FMA
  latency (4 cycles) x pipes (2) with room to spare, so the pipes never wait.
  ``fastmath={"contract"}`` lets LLVM fuse the multiply and add but not reassociate the
  recurrence, so it cannot skip iterations.
* Memory: a STREAM triad ``a[i] = b[i] + s*c[i]`` on all cores over three float64 arrays, each
  at least 4x the last-level cache, counted as STREAM counts it: 24 bytes per element (two
  reads, one write; the write-allocate read is not counted). Best of several passes.
* Timings take the best of several repetitions, the one least disturbed by other processes.
  The compute figure sums, over one thread per core running at the same time, each thread's
  best 2 ms call: on a busy machine a descheduled call is just not the best one (a single
  parallel region would instead wait for its slowest thread every time).
"""

from __future__ import annotations

import os
import platform
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, prange

from dnnlens.errors import UsageError
from dnnlens.roofline import Figure, HardwareSpec

#: Accumulators per core: 16 AVX-512 registers of 16 fp32 lanes.
NACC = 256
#: Accumulators per core without AVX-512: 12 AVX2 registers of 8 lanes (16 exist; 2 hold a, b).
NACC_NARROW = 96
#: Factor between each array of the triad and the last-level cache.
TRIAD_CACHE_FACTOR = 4
#: Least size of each triad array even on a machine reporting a small cache.
TRIAD_MIN_BYTES = 64 * 2**20


# --------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------
@njit(fastmath={"contract"}, nogil=True, cache=True)
def _fma_chain(x, a, b, reps):  # pragma: no cover - compiled
    """``reps`` rounds of ``x[j] = x[j]*a + b`` over the NACC accumulators of ``x``."""
    for _ in range(reps):
        for j in range(NACC):
            x[j] = x[j] * a + b


@njit(fastmath={"contract"}, nogil=True, cache=True)
def _fma_chain_narrow(x, a, b, reps):  # pragma: no cover - compiled
    for _ in range(reps):
        for j in range(NACC_NARROW):
            x[j] = x[j] * a + b


@njit(fastmath={"contract"}, cache=True)
def _fma_dependent(x, a, b, reps):  # pragma: no cover - compiled
    """One dependent FMA chain: each iteration waits for the previous one (latency-bound)."""
    for _ in range(reps):
        x = x * a + b
    return x


@njit(parallel=True, cache=True)
def _triad(a, b, c, s):  # pragma: no cover - compiled
    for i in prange(a.shape[0]):
        a[i] = b[i] + s * c[i]


@njit(parallel=True, cache=True)
def _fill(a, value):  # pragma: no cover - compiled
    """First touch on all cores, so pages land near the threads that use them."""
    for i in prange(a.shape[0]):
        a[i] = value


# --------------------------------------------------------------------------------------
# This CPU
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CpuInfo:
    """What Linux tells about the CPU (``/proc/cpuinfo``, sysfs), as lscpu shows it."""

    model: str
    vendor: str
    family: int
    cores: int
    clock_hz: float
    flags: frozenset[str] = field(default_factory=frozenset)
    llc_bytes: int = 32 * 2**20
    memory_bytes: int = 0


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _size(text: str) -> int:
    """``32768K`` / ``2M`` (sysfs cache sizes) -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)\s*", text)
    if not match:
        return 0
    return int(match.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match.group(2)]


def cpu_info() -> CpuInfo:
    """This machine's CPU: model, usable cores, nominal clock, flags, LLC and RAM sizes."""
    text = _read("/proc/cpuinfo")

    def first(key: str, default: str = "") -> str:
        match = re.search(rf"^{key}\s*:\s*(.*)$", text, re.MULTILINE)
        return match.group(1).strip() if match else default

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    max_khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").strip()
    clock = float(max_khz) * 1e3 if max_khz.isdigit() else float(first("cpu MHz", "0")) * 1e6
    llc = max(
        (
            _size(_read(f"{d}/size"))
            for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")
        ),
        default=0,
    )
    mem = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.MULTILINE)
    family = first("cpu family", "0")
    return CpuInfo(
        model=first("model name", platform.processor() or "unknown CPU"),
        vendor=first("vendor_id", "unknown"),
        family=int(family) if family.isdigit() else 0,
        cores=int(cores or 1),
        clock_hz=clock,
        flags=frozenset(first("flags").split()),
        llc_bytes=llc or 32 * 2**20,
        memory_bytes=int(mem.group(1)) * 1024 if mem else 0,
    )


@dataclass(frozen=True)
class Theoretical:
    """Peak FP32 MACs/s from the datasheet formula cores x FMA lanes per cycle x clock."""

    macs_per_s: float
    cores: int
    lanes_per_cycle: int
    clock_hz: float
    reason: str


def fp32_fma_lanes(info: CpuInfo) -> tuple[int, str]:
    """FP32 FMAs one core can start per cycle, and why.

    The usual rule (AVX-512: one 16-lane FMA pipe, or AVX2: two 8-lane pipes) gives 16; AMD
    Zen 5 (family 26) has two full-width 512-bit FMA pipes, so 32.
    """
    if "avx512f" in info.flags and info.vendor == "AuthenticAMD" and info.family >= 26:
        return 32, "AMD Zen 5: 2 FMA pipes x 16 fp32 lanes (512-bit datapath)"
    if "avx512f" in info.flags:
        return 16, "AVX-512: 16 fp32 lanes per FMA (one full-width pipe assumed)"
    if "avx2" in info.flags and "fma" in info.flags:
        return 16, "AVX2: 2 FMA pipes x 8 fp32 lanes"
    if platform.machine() in ("aarch64", "arm64"):
        return 8, "Arm NEON: 2 FMA pipes x 4 fp32 lanes"
    return 4, "SSE: 4 fp32 lanes, no FMA pipe assumed"


def theoretical_peak(info: CpuInfo | None = None) -> Theoretical:
    """cores x FP32 FMA lanes per cycle x the nominal clock (lscpu's, not the boost clock)."""
    info = info or cpu_info()
    lanes, reason = fp32_fma_lanes(info)
    return Theoretical(
        info.cores * lanes * info.clock_hz, info.cores, lanes, info.clock_hz, reason
    )


# --------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------
def _wide() -> bool:
    return "avx512f" in cpu_info().flags


def _best_rate(run, work_per_call: float, seconds: float, min_calls: int = 3) -> float:
    """Work per second of the fastest of the calls of ``run()`` that fit in ``seconds``."""
    best = float("inf")
    deadline = time.perf_counter() + seconds
    calls = 0
    while calls < min_calls or time.perf_counter() < deadline:
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
        calls += 1
    return work_per_call / best


def _fma_core(
    kernel,
    nacc: int,
    reps: int,
    seconds: float,
    start: threading.Barrier,
    rates: list[float],
    slot: int,
) -> None:
    """One core's best MACs/s over calls of ``reps`` rounds within ``seconds``."""
    x = np.ones(nacc, np.float32)
    # a*1 + b = 1 exactly: x stays at the fixed point 1.0, never denormal or overflowing.
    a, b = np.float32(0.5), np.float32(0.5)
    start.wait()
    rates[slot] = _best_rate(lambda: kernel(x, a, b, reps), nacc * reps, seconds, min_calls=5)
    if not np.all(x == 1.0):  # pragma: no cover - would mean the kernel computed garbage
        raise RuntimeError("FMA probe kernel left its accumulators away from 1.0")


def measure_fma(seconds: float = 1.0, threads: int | None = None) -> float:
    """Peak FP32 MACs/s of this machine: one thread per core (default: every usable core),
    all running the FMA loop at the same time, each timing its own calls of about 2 ms.

    The machine's figure is the sum of each core's best call. Short calls timed per core
    make the figure robust to other processes: a call that was descheduled is simply not
    the best one, where a single parallel region would wait for its slowest thread.
    """
    threads = threads or len(os.sched_getaffinity(0))
    wide = _wide()
    nacc = NACC if wide else NACC_NARROW
    kernel = _fma_chain if wide else _fma_chain_narrow
    x = np.ones(nacc, np.float32)
    kernel(x, np.float32(0.5), np.float32(0.5), 1)  # compile (or load from the cache)
    reps = 4096
    while True:  # calibrate: double until a call takes 1 ms, then aim at 2 ms per call
        begin = time.perf_counter()
        kernel(x, np.float32(0.5), np.float32(0.5), reps)
        elapsed = time.perf_counter() - begin
        if elapsed > 1e-3:
            break
        reps *= 2
    reps = max(1, int(reps * 2e-3 / elapsed))
    rates = [0.0] * threads
    start = threading.Barrier(threads)
    workers = [
        threading.Thread(target=_fma_core, args=(kernel, nacc, reps, seconds, start, rates, slot))
        for slot in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(rates)


def measure_clock(seconds: float = 0.2, fma_latency_cycles: int = 4) -> float:
    """The running core clock, from one dependent FMA chain (``fma_latency_cycles`` each;
    4 on Intel since Skylake and AMD since Zen 4). Shows the boost clock under load, which
    can be well above the nominal clock lscpu reports."""
    _fma_dependent(1.0, 0.5, 0.5, 1)
    reps = 2_000_000
    rate = _best_rate(lambda: _fma_dependent(1.0, 0.5, 0.5, reps), reps, seconds)
    return rate * fma_latency_cycles


def triad_elements(info: CpuInfo | None = None) -> int:
    """float64 elements per triad array: >= 4x the LLC and >= 64 MiB, <= 1/8 of RAM."""
    info = info or cpu_info()
    size = max(TRIAD_CACHE_FACTOR * info.llc_bytes, TRIAD_MIN_BYTES)
    if info.memory_bytes:
        size = min(size, info.memory_bytes // 24)
    return size // 8


def measure_bandwidth(seconds: float = 1.0, elements: int | None = None) -> float:
    """Main-memory bytes/s of a STREAM triad on all cores (24 bytes per element)."""
    n = elements or triad_elements()
    a, b, c = np.empty(n), np.empty(n), np.empty(n)
    _fill(a, 0.0)
    _fill(b, 1.0)
    _fill(c, 2.0)
    _triad(a, b, c, 3.0)  # compile, and touch every page once more
    rate = _best_rate(lambda: _triad(a, b, c, 3.0), 24.0 * n, seconds)
    if a[0] != 7.0 or a[-1] != 7.0:  # pragma: no cover - 1 + 3*2
        raise RuntimeError("triad probe computed a wrong value")
    return rate


def fma_assembly() -> str:
    """The compiled assembly of the per-core FMA loop, for checking its vectorisation
    (compiled afresh: Numba shows no assembly for a function loaded from its cache)."""
    wide = _wide()
    kernel = njit(fastmath={"contract"})((_fma_chain if wide else _fma_chain_narrow).py_func)
    kernel(np.ones(NACC if wide else NACC_NARROW, np.float32), np.float32(0.5), np.float32(0.5), 1)
    return kernel.inspect_asm(kernel.signatures[0])


# --------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeResult:
    """Measured figures of this machine and the CPU they were measured on."""

    fp32_macs_per_s: float
    bandwidth: float
    clock_hz: float
    threads: int
    seconds: float
    cpu: CpuInfo
    when: str

    @property
    def theoretical(self) -> Theoretical:
        return theoretical_peak(self.cpu)

    def to_spec(self, name: str | None = None) -> HardwareSpec:
        """The probed figures as a roofline spec (``dnnlens hw probe --save``)."""
        how = f"measured by `dnnlens hw probe` on {self.when}, {self.threads} threads"
        theory = self.theoretical
        memory = (
            Figure(float(self.cpu.memory_bytes), "MemTotal in /proc/meminfo")
            if self.cpu.memory_bytes
            else None
        )
        return HardwareSpec(
            name=name or f"probed-{socket.gethostname()}",
            title=f"{self.cpu.model}, {self.cpu.cores} cores (probed)",
            peak_macs={
                "fp32": Figure(
                    self.fp32_macs_per_s,
                    (
                        f"{how}: Numba FMA loop, {NACC} register accumulators per core; "
                        "theoretical "
                        f"{theory.macs_per_s / 1e9:.1f} GMAC/s = {theory.cores} cores x "
                        f"{theory.lanes_per_cycle} lanes x {theory.clock_hz / 1e9:.2f} GHz nominal"
                    ),
                )
            },
            bandwidth=Figure(
                self.bandwidth,
                (
                    f"{how}: STREAM triad, 3 x {triad_elements(self.cpu) * 8 / 2**20:.0f} MiB "
                    "float64 arrays, 24 bytes per element"
                ),
            ),
            on_chip_memory=Figure(float(self.cpu.llc_bytes), "last-level cache size (sysfs)"),
            main_memory=memory,
            notes=f"core clock under load about {self.clock_hz / 1e9:.2f} GHz "
            "(dependent FMA chain, 4-cycle latency assumed)",
        )


def probe(seconds: float = 2.0, threads: int | None = None) -> ProbeResult:
    """Measure this machine for about ``seconds`` (compute 40%, memory 50%, clock 10%)."""
    import numba

    if not seconds > 0:
        raise UsageError(f"--seconds must be positive, got {seconds}")
    # numba.config sets its NUMBA_* names at import time from the environment: no stub sees them
    available = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
    if threads is not None and not 1 <= threads <= available:
        raise UsageError(f"--threads must be between 1 and {available}, got {threads}")
    threads = threads or available
    numba.set_num_threads(threads)
    try:
        fma = measure_fma(0.4 * seconds, threads)
        bandwidth = measure_bandwidth(0.5 * seconds)
        clock = measure_clock(0.1 * seconds)
    finally:
        numba.set_num_threads(available)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return ProbeResult(fma, bandwidth, clock, threads, seconds, cpu_info(), when)


# --------------------------------------------------------------------------------------
# Per-layer timing next to the roofline (``dnnlens analyze --measure``)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerTiming:
    """One layer: the roofline estimate and the measured seconds per batch (None: not run)."""

    index: int
    name: str
    type: str
    macs: int
    bound: str
    estimate_s: float
    ours_s: float | None
    torch_s: float | None

    def of_roof(self, measured: float | None) -> float | None:
        """Estimate / measured: 1.0 means the layer runs at the roofline's attainable rate."""
        if measured is None or measured <= 0 or self.estimate_s <= 0:
            return None
        return self.estimate_s / measured


@dataclass(frozen=True)
class FusedTiming:
    """Layers our engine runs as one fused kernel (conv+ReLU+pool, fc+ReLU), timed as it runs
    them: the per-layer table times each layer's own kernel, which the engine does not use."""

    names: tuple[str, ...]
    ours_s: float
    separate_s: float  # the same layers' own kernels, one after another
    torch_s: float | None  # PyTorch's layers, one after another
    estimate_s: float  # the roofline's estimate of the layers, one after another


@dataclass(frozen=True)
class Measurement:
    """Per-layer timings of one network on this machine against a roofline."""

    layers: list[LayerTiming]
    device: HardwareSpec
    batch: int
    engine_covers: bool  # False when some layer has no kernel of ours (ours stop there)
    fused: list[FusedTiming] = field(default_factory=list)

    def total(self, attr: str) -> float | None:
        values = [getattr(t, attr) for t in self.layers]
        return None if any(v is None for v in values) else sum(values)

    def rows(self) -> list[list[str]]:
        """Formatted rows: layer, type, bound, estimate, ours, torch, % of roof (ours, torch);
        the last row is the total."""

        def us(value: float | None) -> str:
            return "-" if value is None else f"{value * 1e6:,.1f}"

        def pct(value: float | None) -> str:
            return "-" if value is None else f"{100 * value:.0f}%"

        rows = [
            [
                t.name,
                t.type,
                t.bound,
                us(t.estimate_s),
                us(t.ours_s),
                us(t.torch_s),
                pct(t.of_roof(t.ours_s)),
                pct(t.of_roof(t.torch_s)),
            ]
            for t in self.layers
        ]
        est, ours, torch_ = (self.total(a) for a in ("estimate_s", "ours_s", "torch_s"))
        rows.append(
            [
                "total",
                "",
                "",
                us(est),
                us(ours),
                us(torch_),
                pct(est / ours if est and ours else None),
                pct(est / torch_ if est and torch_ else None),
            ]
        )
        return rows

    HEADERS = (
        "layer",
        "type",
        "bound",
        "roofline µs",
        "ours µs",
        "torch µs",
        "ours % of roof",
        "torch % of roof",
    )

    @classmethod
    def columns(cls) -> list[Any]:
        from dnnlens.formatting import Column

        return [Column(h, "left" if i < 3 else "right") for i, h in enumerate(cls.HEADERS)]

    def render(self) -> str:
        """A text table; times are per batch, in microseconds."""
        from dnnlens.formatting import text_table

        rows = self.rows()
        table = text_table(self.columns(), rows[:-1], footer=rows[-1])
        return "\n".join([table, *self.fused_lines()])

    def fused_lines(self) -> list[str]:
        """One line per fused kernel of our engine: what the engine really spends there."""
        from dnnlens.formatting import duration

        lines = []
        for f in self.fused:
            torch_ = "-" if f.torch_s is None else duration(f.torch_s)
            lines.append(
                f"fused in our engine: {' + '.join(f.names)}: {duration(f.ours_s)} "
                f"(separately {duration(f.separate_s)}; torch {torch_}; "
                f"roofline {duration(f.estimate_s)})"
            )
        return lines

    def to_dict(self) -> dict[str, Any]:
        """The measurement as JSON-ready data: seconds per batch, None where not run."""
        return {
            "device": self.device.name,
            "batch": self.batch,
            "engine_covers": self.engine_covers,
            "layers": [
                {
                    "index": t.index,
                    "name": t.name,
                    "type": t.type,
                    "macs": t.macs,
                    "bound": t.bound,
                    "estimate_s": t.estimate_s,
                    "ours_s": t.ours_s,
                    "torch_s": t.torch_s,
                }
                for t in self.layers
            ],
            "totals": {key: self.total(key) for key in ("estimate_s", "ours_s", "torch_s")},
            "fused": [
                {
                    "layers": list(f.names),
                    "ours_s": f.ours_s,
                    "separate_s": f.separate_s,
                    "torch_s": f.torch_s,
                    "estimate_s": f.estimate_s,
                }
                for f in self.fused
            ],
        }

    def measured_rates(self, which: str = "ours") -> dict[str, float]:
        """Layer name -> measured MACs/s (for the roofline chart's hollow markers)."""
        rates = {}
        for t in self.layers:
            seconds = t.ours_s if which == "ours" else t.torch_s
            if seconds and t.macs:
                rates[t.name] = t.macs / seconds
        return rates


def _best_time(call, seconds: float, min_calls: int = 10, max_calls: int = 500) -> float:
    """Seconds of the fastest call of ``call()``: at least ``min_calls`` calls, more while
    ``seconds`` last (after one warm-up call). Inputs and weights stay in the caches between
    calls, so a layer whose data fits in them can beat the main-memory roof."""
    call()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    calls = 0
    while calls < min_calls or (time.perf_counter() < deadline and calls < max_calls):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
        calls += 1
    return best


def materialise(model):
    """A module built on the meta device, given real (seeded, freshly initialised) CPU
    weights so it can run; a module already on the CPU is returned as is."""
    import torch

    if not any(p.is_meta for p in model.parameters()):
        return model.eval()
    torch.manual_seed(0)
    model = model.to_empty(device="cpu")
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return model.eval()


def _torch_layer(model, node, x):
    """A callable running ``node`` in PyTorch on tensor ``x``, or None when there is none."""
    from dnnlens.ops import Op

    if node.module and node.params:
        try:
            module = model.get_submodule(node.module)
        except AttributeError:
            return None
        return lambda: module(x)
    if node.module and not node.params and node.module_type:
        try:
            module = model.get_submodule(node.module)
        except AttributeError:
            module = None
        if module is not None and not list(module.children()):  # a leaf such as MaxPool2d
            return lambda: module(x)
    if node.op.IS_VIEW:
        return lambda: x.reshape(node.output_shape)
    if (
        len(node.inputs) == 1
        and not node.params
        and not node.op.buffers()
        and type(node.op).torch_oracle is not Op.torch_oracle
    ):
        # a functional layer (F.relu, x.mean(...), x * 0.5): the operator's own PyTorch
        # oracle is that function
        return lambda: node.op.torch_oracle([x], {})
    return None


def measure_layers(
    model, analysis, device: HardwareSpec, seconds_per_layer: float = 0.05, seed: int = 0
) -> Measurement:
    """Time each layer of our compiled engine and of PyTorch on this machine, per batch of
    ``analysis.batch`` random inputs, next to the roofline estimate on ``device``.

    Each layer runs on the activations our engine computed for the layer before, so both
    libraries see the same inputs; our timings stop at the first layer we have no kernel for.
    Nodes run one by one (no fusion), so the times are comparable layer by layer; the
    engine's fused kernels are then timed as it runs them (``Measurement.fused``).
    """
    import torch

    from dnnlens.engine import load_weights, node_weights, run_node
    from dnnlens.roofline import roofline

    model = materialise(model)
    graph = analysis.graph
    roof = {layer.name: layer for layer in roofline(analysis, device).layers}
    weights = load_weights(model)
    rng = np.random.default_rng(seed)
    values: dict[str, np.ndarray] = {
        name: rng.standard_normal(shape).astype(np.float32) for name, shape in graph.inputs.items()
    }
    covers = True
    timings = []
    with torch.inference_mode():
        for index, node in enumerate(graph.nodes, start=1):
            layer = roof[node.name]
            ours = torch_s = None
            inputs = [values[v] for v in node.inputs if v in values]
            complete = len(inputs) == len(node.inputs)  # every input computed before
            shapes = {role: p.shape for role, p in node.params.items()}
            if covers and complete and node.op.kernel_gap(node.input_shapes, shapes) is None:
                params = node_weights(node, weights)
                params |= {role: weights[name] for role, name in node.op.buffers().items()}
                values[node.name] = run_node(node, inputs, params)
                ours = _best_time(
                    lambda n=node, i=inputs, p=params: run_node(n, i, p), seconds_per_layer
                )
            else:
                covers = False
            if complete and len(inputs) == 1:
                call = _torch_layer(model, node, torch.from_numpy(np.ascontiguousarray(inputs[0])))
                if call is not None:
                    torch_s = _best_time(call, seconds_per_layer)
            timings.append(
                LayerTiming(
                    index,
                    node.name,
                    node.kind,
                    layer.macs,
                    layer.bound,
                    layer.time_s,
                    ours,
                    torch_s,
                )
            )
    fused = _measure_fused(graph, weights, values, timings, seconds_per_layer) if covers else []
    return Measurement(timings, device, analysis.batch, covers, fused)


def _measure_fused(
    graph, weights, values, timings: list[LayerTiming], seconds: float
) -> list[FusedTiming]:
    """Time each fused step of the engine's plan on the inputs the layer-by-layer run saw."""
    from dnnlens.engine import plan, run_step

    by_name = {t.name: t for t in timings}
    fused = []
    for step in plan(graph, fuse=True):
        if len(step.nodes) < 2:
            continue
        ours = _best_time(lambda s=step: run_step(s, values, weights, "compiled"), seconds)
        parts = [by_name[node.name] for node in step.nodes]
        torch_parts = [t.torch_s for t in parts if t.torch_s is not None]
        ours_parts = [t.ours_s for t in parts if t.ours_s is not None]  # all: the run covers
        fused.append(
            FusedTiming(
                names=tuple(t.name for t in parts),
                ours_s=ours,
                separate_s=sum(ours_parts),
                torch_s=sum(torch_parts) if len(torch_parts) == len(parts) else None,
                estimate_s=sum(t.estimate_s for t in parts),
            )
        )
    return fused


def measurement_html(measurement: Measurement) -> str:
    """The measurement table as HTML (for :func:`dnnlens.report.write_report`)."""
    from dnnlens.formatting import esc, html_table

    rows = measurement.rows()
    table = html_table(Measurement.columns(), rows[:-1], footer=rows[-1])
    fused = "".join(f'<p class="note">{esc(line)}</p>' for line in measurement.fused_lines())
    note = (
        '<p class="note">Seconds per batch of '
        f"{measurement.batch}, best of repeated runs on this machine; roofline estimate on "
        f"{esc(measurement.device.name)}. % of roof = estimate / measured.</p>"
    )
    return f"{table}{fused}{note}"
