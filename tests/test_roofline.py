"""Roofline and memory footprint against numbers derived by hand (arithmetic in comments).

The test device has stated figures: 100 GMAC/s fp32 and 20 GB/s, so its ridge is
1e11 / 2e10 = 5 MACs per byte.
"""

from __future__ import annotations

import pytest

from dnnlens.analysis import analyze
from dnnlens.errors import SpecError
from dnnlens.ir import Graph, Node, Param
from dnnlens.models import Net
from dnnlens.ops import Activation, Binary, Conv, Linear, Reshape
from dnnlens.roofline import (
    Figure,
    HardwareSpec,
    batch_sweep,
    layer_roof,
    load_spec,
    memory_footprint,
    roofline,
)

TEST_DEVICE = HardwareSpec(
    "test",
    "test device with stated figures",
    {"fp32": Figure(1e11, "stated"), "fp16": Figure(4e11, "stated")},
    Figure(2e10, "stated"),
    on_chip_memory=Figure(2**20, "stated"),
    main_memory=Figure(2**20, "stated"),
)


def reference(batch: int, dtype: str = "fp32"):
    return analyze(Net(), (1, 1, 28, 28), batch=batch, dtype=dtype)


def by_name(roof):
    return {layer.name: layer for layer in roof.layers}


# --- the reference network at batch 1 and 256 --------------------------------------------
def test_reference_network_at_batch_1():
    layers = by_name(roofline(reference(1), TEST_DEVICE))
    # fc1 (256, 392): MACs 392*256 = 100,352; values 392 in + 256 out + 100,352 weights
    # = 101,000 -> 404,000 B; I = 100,352 / 404,000 = 0.2484 MAC/B < 5: memory-bound,
    # time = 404,000 B / 2e10 B/s = 20.2 us, attainable = 0.2484 * 2e10 = 4.968e9 MAC/s.
    fc1 = layers["fc1"]
    assert fc1.bound == "memory"
    assert fc1.intensity == pytest.approx(100_352 / 404_000)
    assert fc1.time_s == pytest.approx(20.2e-6)
    assert fc1.attainable == pytest.approx(100_352 / 404_000 * 2e10)
    # conv1 (5,5,1,4): MACs 28*28*4*25 = 78,400; values 784 + 3,136 + 100 = 4,020 -> 16,080 B;
    # I = 4.876 < 5: memory-bound (just), time = 16,080 / 2e10 = 0.804 us.
    assert layers["conv1"].bound == "memory"
    assert layers["conv1"].time_s == pytest.approx(0.804e-6)
    # conv2 (5,5,4,8): MACs 14*14*8*4*25 = 156,800; values 784 + 1,568 + 800 = 3,152
    # -> 12,608 B; I = 12.44 >= 5: compute-bound, time = 156,800 / 1e11 = 1.568 us.
    assert layers["conv2"].bound == "compute"
    assert layers["conv2"].time_s == pytest.approx(1.568e-6)
    # relu after conv1: 3,136 read + 3,136 written = 25,088 B -> 1.2544 us; no MACs.
    assert layers["relu"].bound == "memory" and layers["relu"].attainable == 0
    assert layers["relu"].time_s == pytest.approx(1.2544e-6)
    # flatten is a view: no traffic, no time.
    assert layers["flatten"].bound == "none" and layers["flatten"].time_s == 0


def test_reference_network_totals_at_batch_1():
    roof = roofline(reference(1), TEST_DEVICE)
    # Per-layer times (us): conv1 0.804, relu 1.2544, pool (3,136+784)*4/2e10 = 0.784,
    # conv2 1.568, relu#2 (1,568*2)*4/2e10 = 0.6272, pool#2 (1,568+392)*4/2e10 = 0.392,
    # flatten 0, fc1 20.2, relu#3 512*4/2e10 = 0.1024,
    # fc2 (256+10+2,560)*4/2e10 = 0.5652 (I = 2,560/11,304 = 0.23: memory-bound)
    # sum = 26.2972 us; throughput = 1 / 26.2972e-6 = 38,026.9 images/s.
    assert roof.latency_s == pytest.approx(26.2972e-6)
    assert roof.throughput == pytest.approx(1 / 26.2972e-6)
    assert roof.ridge == pytest.approx(5.0)


def test_reference_network_at_batch_256():
    layers = by_name(roofline(reference(256), TEST_DEVICE))
    # fc1: MACs 256 * 100,352 = 25,690,112; values 256*(392+256) + 100,352 = 266,240
    # -> 1,064,960 B; I = 24.12 >= 5: compute-bound, time = 25,690,112 / 1e11 = 256.90 us.
    fc1 = layers["fc1"]
    assert fc1.bound == "compute"
    assert fc1.intensity == pytest.approx(25_690_112 / 1_064_960)
    assert fc1.time_s == pytest.approx(256.90112e-6)
    assert fc1.attainable == pytest.approx(1e11)
    # conv1: MACs 256 * 78,400 = 20,070,400; values 256*(784+3,136) + 100 = 1,003,620
    # -> 4,014,480 B; I = 5.0 (4.9996...) < 5: still memory-bound by a hair,
    # time = 4,014,480 / 2e10 = 200.724 us.
    assert layers["conv1"].bound == "memory"
    assert layers["conv1"].time_s == pytest.approx(200.724e-6)


def test_fc1_turns_compute_bound_at_batch_23_on_the_test_device():
    # I(N) = 100,352 N / (4 (648 N + 100,352)) >= 5  <=>  N (100,352 - 12,960) >= 2,007,040
    # <=> N >= 22.97: memory-bound at batch 22, compute-bound from batch 23.
    at = {
        r.batch: by_name(r)["fc1"].bound
        for r in batch_sweep(Net(), TEST_DEVICE, (22, 23), (1, 1, 28, 28))
    }
    assert at == {22: "memory", 23: "compute"}


def test_reference_network_on_the_probed_spec_shape():
    """The same bounds on this machine's probed figures (a short probe): its ridge lies
    between fc1's intensity at batch 1 (0.248) and at batch 256 (24.1)."""
    from dnnlens.hwprobe import probe

    spec = probe(seconds=0.3).to_spec("here")
    assert 0.2484 < spec.ridge() < 24.12
    assert by_name(roofline(reference(1), spec))["fc1"].bound == "memory"
    assert by_name(roofline(reference(256), spec))["fc1"].bound == "compute"


def test_fp16_halves_the_bytes_and_uses_the_fp16_peak():
    layers = by_name(roofline(reference(1, "fp16"), TEST_DEVICE))
    # fc1 fp16: 101,000 values x 2 B = 202,000 B; time = 202,000 / 2e10 = 10.1 us.
    assert layers["fc1"].time_s == pytest.approx(10.1e-6)
    # conv2 fp16: 3,152 x 2 = 6,304 B, I = 156,800 / 6,304 = 24.87 >= the fp16 ridge
    # 4e11 / 2e10 = 20: compute-bound at the fp16 peak, 156,800 / 4e11 = 0.392 us.
    assert layers["conv2"].bound == "compute"
    assert layers["conv2"].time_s == pytest.approx(0.392e-6)


def test_a_dtype_without_peak_is_a_spec_error():
    with pytest.raises(SpecError, match="int8"):
        roofline(reference(1, "int8"), TEST_DEVICE)


def test_layer_roof_on_the_ridge_is_compute_bound():
    # I = 500 / 100 = 5 = ridge: both roofs give 5e-9 s.
    assert layer_roof(500, 100, 1e11, 2e10) == (5.0, 1e11, "compute", 5e-9)


# --- memory footprint --------------------------------------------------------------------
def test_peak_activations_of_the_reference_network():
    from dnnlens.importers.torch import import_torch

    foot = memory_footprint(import_torch(Net(), (1, 1, 28, 28)))
    # Live values per step (the input, 784, is freed after conv1):
    # conv1 784 + 3,136 = 3,920; relu 3,136 + 3,136 = 6,272 (peak); pool 3,136 + 784;
    # conv2 784 + 1,568; relu#2 3,136; pool#2 1,568 + 392; flatten 392 (a view);
    # fc1 392 + 256; relu#3 512; fc2 256 + 10.  Peak 6,272 x 4 B = 25,088 B.
    assert foot.peak_activation_bytes == 25_088 and foot.peak_at == "relu"
    assert [b for _, b in foot.live_bytes] == [
        4 * v for v in (3920, 6272, 3920, 2352, 3136, 1960, 392, 648, 512, 266)
    ]
    # Weights 100 + 800 + 100,352 + 2,560 = 103,812 x 4 = 415,248 B;
    # biases 4 + 8 + 256 + 10 = 278 x 4 = 1,112 B.
    assert (foot.weight_bytes, foot.bias_bytes) == (415_248, 1_112)
    # MCU (1 MiB SRAM): 415,248 + 1,112 + 25,088 = 441,448 B fits.
    assert foot.fits(load_spec("stm32h743")) is True


def test_peak_activations_scale_with_batch_and_stop_fitting():
    from dnnlens.importers.torch import import_torch

    foot = memory_footprint(import_torch(Net(), (256, 1, 28, 28)))
    # 6,272 x 256 x 4 B = 6,422,528 B; plus 416,360 B of parameters > 1 MiB.
    assert foot.peak_activation_bytes == 6_422_528
    assert foot.fits(load_spec("stm32h743")) is False
    assert foot.fits(load_spec("rpi5")) is True


def conv_node(name, source, cin, cout, size=8):
    return Node(
        name,
        Conv(padding=((1, 1), (1, 1))),
        [source],
        [(1, cin, size, size)],
        (1, cout, size, size),
        {
            "weight": Param(f"{name}.weight", (cout, cin, 3, 3)),
            "bias": Param(f"{name}.bias", (cout,)),
        },
    )


def residual_graph() -> Graph:
    """x (1,4,8,8) -> a = conv 4->8 -> b = relu -> c = conv 8->8 -> d = c + a -> e = relu
    -> f = flatten -> g = fc 512->10."""
    act = (1, 8, 8, 8)
    return Graph(
        [
            conv_node("a", "x", 4, 8),
            Node("b", Activation("relu"), ["a"], [act], act),
            conv_node("c", "b", 8, 8),
            Node("d", Binary("add"), ["c", "a"], [act, act], act),
            Node("e", Activation("relu"), ["d"], [act], act),
            Node("f", Reshape.between(act, (1, 512)), ["e"], [act], (1, 512)),
            Node(
                "g",
                Linear(),
                ["f"],
                [(1, 512)],
                (1, 10),
                {"weight": Param("g.weight", (10, 512)), "bias": Param("g.bias", (10,))},
            ),
        ],
        {"x": (1, 4, 8, 8)},
        ["g"],
    )


def test_a_skip_connection_keeps_its_tensor_alive():
    foot = memory_footprint(residual_graph())
    # Values: x 256, a..e 512 each, f a view of e, g 10.
    # a: x + a = 768, then x freed; b: a + b = 1,024 (a kept for the add);
    # c: a + b + c = 1,536, then b freed; d: a + c + d = 1,536, then a and c freed;
    # e: d + e = 1,024; f: e = 512 (view); g: e + g = 522.
    # Peak 1,536 values x 4 B = 6,144 B, first reached at c. Without the skip it would be
    # 1,024 (a freed after b).
    assert [b for _, b in foot.live_bytes] == [
        4 * v for v in (768, 1024, 1536, 1536, 1024, 512, 522)
    ]
    assert foot.peak_activation_bytes == 6_144 and foot.peak_at == "c"
    # Weights 8*4*9 + 8*8*9 + 10*512 = 288 + 576 + 5,120 = 5,984 values; biases 8+8+10 = 26.
    assert (foot.weight_bytes, foot.bias_bytes) == (5_984 * 4, 26 * 4)


def test_the_same_residual_network_imported_from_torch():
    import torch
    from torch import nn

    from dnnlens.importers.torch import import_torch

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 8, 3, padding=1)
            self.c = nn.Conv2d(8, 8, 3, padding=1)
            self.g = nn.Linear(512, 10)

        def forward(self, x):
            a = self.a(x)
            d = self.c(torch.relu(a)) + a
            return self.g(torch.relu(d).flatten(1))

    foot = memory_footprint(import_torch(Residual(), (1, 4, 8, 8)))
    assert foot.peak_activation_bytes == 6_144  # as derived in the test above


def test_a_view_keeps_its_source_alive_until_the_view_is_read():
    """x (1,10) -> A = fc 10->50 -> V = view of A (1,5,10) -> R = relu(A) -> T = fc(R) 50->20
    -> W = relu(V); outputs T and W."""
    graph = Graph(
        [
            Node("A", Linear(), ["x"], [(1, 10)], (1, 50), {"weight": Param("A.w", (50, 10))}),
            Node("V", Reshape(shape=(1, 5, 10)), ["A"], [(1, 50)], (1, 5, 10)),
            Node("R", Activation("relu"), ["A"], [(1, 50)], (1, 50)),
            Node("T", Linear(), ["R"], [(1, 50)], (1, 20), {"weight": Param("T.w", (20, 50))}),
            Node("W", Activation("relu"), ["V"], [(1, 5, 10)], (1, 5, 10)),
        ],
        {"x": (1, 10)},
        ["T", "W"],
    )
    foot = memory_footprint(graph)
    # A: 10 + 50 = 60, x freed; V: 50; R: 50 + 50 = 100, R kept for T;
    # T: A + R + T = 120, R freed; W: A + T + W = 120, A freed (its view V read last).
    # Freeing A after R (its last *direct* reader) would give a peak of 100.
    assert [b for _, b in foot.live_bytes] == [4 * v for v in (60, 50, 100, 120, 120)]
    assert foot.peak_activation_bytes == 480


# --- measurement next to the roofline ----------------------------------------------------
def test_measure_times_every_layer_of_both_libraries():
    from dnnlens.hwprobe import measure_layers

    analysis = reference(2)
    measurement = measure_layers(Net(), analysis, TEST_DEVICE, seconds_per_layer=0.01)
    assert measurement.engine_covers
    assert [t.name for t in measurement.layers] == [r.name for r in analysis.rows]
    for timing in measurement.layers:
        assert timing.ours_s > 0 and timing.torch_s > 0, timing.name
    # Our engine fuses each conv -> relu -> max-pool and the fc1 -> relu of the course network;
    # those kernels are timed as the engine runs them, next to the separate layers.
    assert [f.names for f in measurement.fused] == [
        ("conv1", "relu", "pool"),
        ("conv2", "relu#2", "pool#2"),
        ("fc1", "relu#3"),
    ]
    for fused in measurement.fused:
        assert fused.ours_s > 0 and fused.torch_s > 0
    assert "fused in our engine: conv1 + relu + pool" in measurement.render()
    # The estimates are the roofline's, e.g. fc1 at batch 2: 2*392 + 2*256 + 100,352
    # = 101,648 values -> 406,592 B / 2e10 = 20.33 us (memory-bound).
    fc1 = next(t for t in measurement.layers if t.name == "fc1")
    assert fc1.estimate_s == pytest.approx(406_592 / 2e10)
    assert fc1.of_roof(fc1.estimate_s * 2) == pytest.approx(0.5)


def test_cli_analyze_measure_prints_the_comparison():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "dnnlens", "analyze", "--measure", "--device", "rpi5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Roofline on rpi5" in out and "Roofline on this-machine" in out
    table = out.split("Measured on this machine")[1].splitlines()
    rows = {line.split()[0]: line.split() for line in table[3:] if line.strip()}
    for name in ("conv1", "relu", "pool", "conv2", "relu#2", "pool#2", "fc1", "relu#3", "fc2"):
        assert float(rows[name][4].replace(",", "")) > 0  # ours us
        assert float(rows[name][5].replace(",", "")) > 0  # torch us
