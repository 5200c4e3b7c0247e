"""The pure parts of benchmarks/engine.py: its section rewrite of BENCHMARKS.md, the ratios
and the PASS/MISS lines of the issue's targets, on tiny hand-made cases (nothing timed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "engine.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmarks_engine", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


DOCUMENT = (
    "# Benchmarks\n\n## Training (issue 2)\n\nslow\n\n"
    "## Engine (issue 3)\n\nold numbers\n\n## Later (issue 5)\n\nkept\n"
)


def test_the_new_section_takes_the_old_ones_place(bench):
    new = bench.SECTION + "\n\nnew numbers\n"
    out = bench.replace_section(DOCUMENT, new)
    assert "old numbers" not in out
    assert out.index("## Training") < out.index(bench.SECTION) < out.index("## Later")
    assert out.endswith("## Later (issue 5)\n\nkept\n")
    again = bench.replace_section(out, bench.SECTION + "\n\nnewer\n")  # its own section now
    assert "new numbers" not in again and again.count(bench.SECTION) == 1
    assert again.replace("newer", "new numbers") == out


def test_a_section_is_appended_when_absent(bench):
    out = bench.replace_section("# Benchmarks\n", bench.SECTION + "\n\nx\n")
    assert out == f"# Benchmarks\n\n{bench.SECTION}\n\nx\n"


def _row(bench, network, mode, contender, images_per_s):
    # one pass of 1,000 images in 1000 / rate seconds: the timing's rate is images_per_s
    timing = bench.Timing(1000 / images_per_s, 1000, 1)
    return bench.Row(network, mode, contender, 100, timing)


def test_targets_are_computed_from_the_rows(bench):
    e, t, c, o = bench.OURS, bench.EAGER, bench.COMPILED, bench.ORT
    rows = [
        _row(bench, "course", "batched", e, 250.0),
        _row(bench, "course", "batched", t, 50.0),
        _row(bench, "course", "batched", c, 60.0),
        _row(bench, "course", "batched", o, 100.0),  # best peer: 250 / 100 = 2.5x -> PASS
        _row(bench, "course", "one image per call", e, 30.0),
        _row(bench, "course", "one image per call", o, 20.0),  # 30 / 20 = 1.5x < 2x -> MISS
        _row(bench, "resnet18", "batch 32", e, 40.0),
        _row(bench, "resnet18", "batch 32", t, 40.0),  # ours = eager: 1x -> PASS
        _row(bench, "resnet18", "batch 32", o, 80.0),
        bench.Row("resnet18", "batch 1", t, 100, None, note="not run"),
    ]
    assert bench.ratio(rows, "course", "batched") == pytest.approx(2.5)
    assert bench.best_peer(rows, "course", "batched").contender == o
    assert bench.ratio(rows, "resnet18", "batch 32", t) == pytest.approx(1.0)
    assert bench.ratio(rows, "resnet18", "batch 32") == pytest.approx(0.5)
    # peak 1 GMAC/s; two 3x3 convs of 1e9 MACs in 2 s and 1 s: 50% and 100% of it (both
    # >= 90% of the largest), a small one at 1% that is not among the largest
    layer = bench.LayerTime
    layers = {
        32: [
            layer("a", "conv 3x3/1 64->64+relu", 1_000_000_000, 2.0, None, 2),
            layer("b", "conv 3x3/1 64->64", 1_000_000_000, 1.0, None, 1),
            layer("c", "conv 1x1/2 64->128", 10_000_000, 1.0, None, 1),
            layer("fc", "fc 512->1000", 10_000_000_000, 1.0, None, 1),
        ]
    }
    lines = bench.target_lines(rows, layers, peak=1.0)
    assert lines[0].startswith("PASS course network, batched") and f"({o})" in lines[0]
    assert lines[1].startswith("MISS course network, one image per call")
    resnet = [line for line in lines if line.split()[1] == "resnet18"]
    assert resnet[0].startswith("n/a  resnet18 batch 1")  # no eager or ours row: no ratio
    assert resnet[1].startswith("PASS resnet18 batch 32") and "best peer = 0.50x" in resnet[1]
    assert lines[-1].startswith("PASS resnet18 batch 32: largest convs (2 steps")
    layers[32][0] = layer("a", "conv 3x3/1 64->64", 1_000_000_000, 2.5, None, 1)  # 40%
    assert bench.target_lines(rows, layers, peak=1.0)[-1].startswith("MISS")


def test_a_slow_contender_is_measured_by_its_one_call(bench):
    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1

    def slow():
        calls["slow"] += 1

    # slow=-1: every warm-up counts as "too slow", so each contender runs exactly once
    timings, _ = bench.race({"fast": fast, "slow": slow}, 1, repeats=3, budget=1.0, slow=-1.0)
    assert calls == {"fast": 1, "slow": 1}
    assert all(t.passes == 1 and t.note for t in timings.values())
    timings, _ = bench.race({"fast": fast}, 1, repeats=3, budget=100.0, slow=100.0)
    assert calls["fast"] == 1 + 1 + 3 and timings["fast"].passes == 3  # warm-up + 3 rounds
