"""Hardware specs (shipped, saved, malformed) and the probe of this machine.

The probe's figures are checked for sanity (positive, finite, plausible bandwidth) and its
FP32 peak against the theoretical peak computed from what Linux reports about the CPU, with
a generous bound because other processes may share the machine; the strict factor-of-2 check
on a quiet machine is recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest

from dnnlens.errors import SpecError
from dnnlens.roofline import DTYPE_BYTES, Figure, HardwareSpec, known_devices, load_spec, save_spec

VALID = """
name = "toy"
title = "A toy device"
[peak_macs_per_s.fp32]
value = 1e11
source = "stated for the test"
[memory_bandwidth]
value = 2e10
source = "stated for the test"
[main_memory]
value = 1048576
source = "stated for the test"
"""


def write(tmp_path, text: str, name: str = "dev.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# --- shipped devices ---------------------------------------------------------------------
def test_the_range_of_devices_is_shipped():
    assert {"stm32h743", "rpi5", "epyc9654", "h100-sxm"} <= set(known_devices())


@pytest.mark.parametrize("name", known_devices())
def test_every_shipped_figure_is_positive_and_cited(name):
    spec = load_spec(name)
    figures = [*spec.peak_macs.values(), spec.bandwidth, spec.on_chip_memory, spec.main_memory]
    for figure in figures:
        assert figure is not None and figure.value > 0
        assert len(figure.source) > 20, f"{name}: a figure without a real source"
    assert "fp32" in spec.peak_macs
    assert set(spec.peak_macs) <= set(DTYPE_BYTES)


def test_shipped_peaks_follow_their_stated_derivations():
    # The sources say how each peak is derived; recompute a few from those words.
    # Raspberry Pi 5: 4 cores x 2 pipes x 4 fp32 lanes x 2.4e9 = 76.8e9 MACs/s.
    assert load_spec("rpi5").peak("fp32") == pytest.approx(4 * 2 * 4 * 2.4e9)
    # EPYC 9654: 96 x 2 x 8 x 2.4e9 = 3.6864e12; 12 x 4.8e9 x 8 B = 460.8e9 B/s.
    epyc = load_spec("epyc9654")
    assert epyc.peak("fp32") == pytest.approx(96 * 2 * 8 * 2.4e9)
    assert epyc.bandwidth.value == pytest.approx(12 * 4.8e9 * 8)
    # H100 SXM datasheet: 67 TFLOPS fp32 = 33.5e12 MACs/s; 3.35 TB/s.
    h100 = load_spec("h100-sxm")
    assert h100.peak("fp32") == pytest.approx(67e12 / 2)
    assert h100.ridge("fp32") == pytest.approx(33.5e12 / 3.35e12)
    # STM32H743: 1 FMA per cycle at 480 MHz; 8 B x 240 MHz AXI.
    mcu = load_spec("stm32h743")
    assert mcu.peak("fp32") == pytest.approx(480e6)
    assert mcu.bandwidth.value == pytest.approx(8 * 240e6)


# --- loading and saving ------------------------------------------------------------------
def test_a_spec_file_loads_by_path(tmp_path):
    spec = load_spec(write(tmp_path, VALID))
    assert spec.name == "toy"
    assert spec.peak("fp32") == 1e11 and spec.bandwidth.value == 2e10
    assert spec.ridge() == 5.0
    assert spec.main_memory.value == 1048576 and spec.on_chip_memory is None


def test_bare_numbers_are_accepted(tmp_path):
    text = 'name = "bare"\nmemory_bandwidth = 1e9\n[peak_macs_per_s]\nfp32 = 2e9\n'
    spec = load_spec(write(tmp_path, text))
    assert spec.peak("fp32") == 2e9 and spec.bandwidth.value == 1e9


def test_save_then_load_round_trips(tmp_path):
    spec = HardwareSpec(
        "probe-like",
        'A machine "quoted" é',
        {"fp32": Figure(1.25e11, "measured"), "int8": Figure(5e11, "derived: a x b")},
        Figure(4.5e10, "triad"),
        Figure(33554432.0, "LLC"),
        Figure(2.5e10, "MemTotal"),
    )
    path = save_spec(spec, tmp_path / "sub" / "me.toml")
    again = load_spec(path)
    assert (again.name, again.title) == (spec.name, spec.title)
    assert dict(again.peak_macs) == dict(spec.peak_macs)
    assert (again.bandwidth, again.on_chip_memory, again.main_memory) == (
        spec.bandwidth,
        spec.on_chip_memory,
        spec.main_memory,
    )
    assert [p.name for p in path.parent.iterdir()] == ["me.toml"]  # no temp file left


# --- errors ------------------------------------------------------------------------------
def test_unknown_device_names_the_known_ones():
    with pytest.raises(SpecError) as err:
        load_spec("cray-1")
    message = str(err.value)
    assert "cray-1" in message and "\n" not in message
    for name in known_devices():
        assert name in message


@pytest.mark.parametrize(
    "edit, field",
    [
        (
            lambda t: t.replace(
                "[memory_bandwidth]\nvalue = 2e10", "[memory_bandwidth]\nvalue = -2e10"
            ),
            "memory_bandwidth",
        ),
        (lambda t: t.replace("value = 1e11", "value = -1"), "peak_macs_per_s.fp32"),
        (lambda t: t.replace("value = 1048576", "value = 0"), "main_memory"),
        (
            lambda t: t.replace("[memory_bandwidth]\nvalue = 2e10\n", "[memory_bandwidth]\n"),
            "memory_bandwidth.value",
        ),
        (
            lambda t: t.replace("[memory_bandwidth]\nvalue = 2e10", "[other]\nvalue = 2e10"),
            "memory_bandwidth",
        ),
        (lambda t: t.replace("[peak_macs_per_s.fp32]", "[peaks.fp32]"), "peak_macs_per_s"),
        (lambda t: t.replace("value = 1e11", 'value = "fast"'), "peak_macs_per_s.fp32"),
        (lambda t: t.replace("peak_macs_per_s.fp32", "peak_macs_per_s.fp64"), "fp64"),
        (lambda t: t.replace("value = 1e11", "value = nan"), "peak_macs_per_s.fp32"),
    ],
)
def test_a_missing_or_bad_figure_is_named(tmp_path, edit, field):
    text = edit(VALID)
    assert text != VALID
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, text))
    assert field in str(err.value) and "\n" not in str(err.value)


def test_not_toml_and_missing_file_are_spec_errors(tmp_path):
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(write(tmp_path, "name = [unclosed"))
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "absent.toml")


def test_a_dtype_the_device_lacks_is_a_clear_error():
    with pytest.raises(SpecError, match="no peak for fp16.*fp32"):
        load_spec("stm32h743").peak("fp16")


def test_cli_reports_a_bad_device_as_error_and_exit_2():
    done = subprocess.run(
        [sys.executable, "-m", "dnnlens", "hw", "show", "cray-1"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: unknown device 'cray-1'")


def test_cli_lists_devices():
    done = subprocess.run(
        [sys.executable, "-m", "dnnlens", "hw", "list"], capture_output=True, text=True, check=True
    )
    for name in known_devices():
        assert name in done.stdout


# --- the probe ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def probed():
    from dnnlens.hwprobe import probe

    return probe(seconds=0.5)


def test_probe_figures_are_sane(probed):
    assert math.isfinite(probed.fp32_macs_per_s) and probed.fp32_macs_per_s > 1e8
    assert 1e9 <= probed.bandwidth <= 500e9  # 1-500 GB/s: DDR3 laptop .. 12-channel DDR5
    assert probed.threads >= 1


def test_probe_fp32_peak_against_the_theoretical_peak(probed):
    """Theoretical = cores x FP32 FMA lanes per cycle x nominal clock, from /proc/cpuinfo as
    lscpu reads it (recomputed here, not taken from the probe). Bounds are generous: a quarter
    (the machine may be shared while tests run) to twice (boost clocks run above nominal)."""
    text = open("/proc/cpuinfo").read()
    mhz = float(re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M).group(1))
    flags = set(re.search(r"^flags\s*:\s*(.*)$", text, re.M).group(1).split())
    family = int(re.search(r"^cpu family\s*:\s*(\d+)", text, re.M).group(1))
    amd = "AuthenticAMD" in text
    if "avx512f" not in flags and not ("avx2" in flags and "fma" in flags):
        pytest.skip("no AVX2/AVX-512 FMA: theoretical peak rule not known for this CPU")
    # Zen 5 (family 26) has two 512-bit FMA pipes: 2 x 16 lanes; otherwise 16 per cycle.
    lanes = 32 if (amd and family >= 26 and "avx512f" in flags) else 16
    import os

    cores = len(os.sched_getaffinity(0))
    theoretical = cores * lanes * mhz * 1e6
    ratio = probed.fp32_macs_per_s / theoretical
    assert 0.25 < ratio < 2.0, f"measured {probed.fp32_macs_per_s:.3g} vs {theoretical:.3g}"


def test_fma_loop_is_vectorised_and_register_resident():
    from dnnlens.hwprobe import NACC, _wide, fma_assembly

    if not _wide():
        pytest.skip("no AVX-512 on this CPU")
    asm = fma_assembly()
    # The hot loop: NACC/16 zmm FMAs back to back, no memory operand between them.
    fmas = re.findall(r"vfmadd\w+\s+%zmm\d+, %zmm\d+, %zmm\d+", asm)
    assert len(fmas) >= NACC // 16
    start = asm.index(fmas[0])
    body = asm[start : asm.index("j", start)]  # up to the loop's back jump
    assert "(%" not in body, "the FMA loop loads or stores"


def test_probe_saves_a_loadable_spec(probed, tmp_path):
    path = save_spec(probed.to_spec("here"), tmp_path / "here.toml")
    spec = load_spec(path)
    assert spec.peak("fp32") == pytest.approx(probed.fp32_macs_per_s)
    assert spec.bandwidth.value == pytest.approx(probed.bandwidth)
    assert "measured" in spec.bandwidth.source


def test_cli_probe_prints_and_saves(tmp_path):
    target = tmp_path / "here.toml"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dnnlens",
            "hw",
            "probe",
            "--seconds",
            "0.3",
            "--save",
            str(target),
            "--name",
            "here",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "GMAC/s measured" in done.stdout and "GB/s (STREAM triad)" in done.stdout
    spec = load_spec(target)
    assert spec.name == "here" and spec.peak("fp32") > 0
    assert [p.name for p in tmp_path.iterdir()] == ["here.toml"]
    bad = subprocess.run(
        [sys.executable, "-m", "dnnlens", "hw", "probe", "--seconds", "0"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: --seconds")
