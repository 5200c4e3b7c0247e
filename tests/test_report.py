"""The charts and the HTML report: one point/bar per layer, self-contained, atomic, and
rendered by a real browser (headless Chromium) without a single network request.

The truth for "one per layer" is the course notebook's layer list of the reference network:
conv1, relu, pool, conv2, relu, pool, flatten, fc1, relu, fc2 (10 layers), of which conv1,
conv2, fc1 and fc2 do MACs (4 roofline points).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dnnlens.analysis import analyze
from dnnlens.models import Net
from dnnlens.report import BAR_METRICS, write_report
from dnnlens.roofline import Figure, HardwareSpec

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
NOTEBOOK_LAYERS = [
    "conv1",
    "relu",
    "pool",
    "conv2",
    "relu",
    "pool",
    "flatten",
    "fc1",
    "relu",
    "fc2",
]
WITH_MACS = ["conv1", "conv2", "fc1", "fc2"]

DEVICE = HardwareSpec(
    "test",
    "test device",
    {"fp32": Figure(1e11, "stated")},
    Figure(2e10, "stated"),
    main_memory=Figure(2**30, "stated"),
)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    analysis = analyze(Net(), (1, 1, 28, 28), batch=1)
    return write_report(analysis, tmp_path_factory.mktemp("report"), DEVICE)


def ids(text: str, prefix: str) -> list[str]:
    return re.findall(rf'id="({prefix}[^"]*)"', text)


# --- charts ------------------------------------------------------------------------------
def test_charts_are_written_as_png_and_svg(report):
    folder = report.parent
    for stem in ("roofline", "layers"):
        assert (folder / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in (folder / f"{stem}.svg").read_text()
    assert sorted(p.name for p in folder.iterdir()) == [
        "layers.png",
        "layers.svg",
        "report.html",
        "roofline.png",
        "roofline.svg",
    ]


def test_roofline_chart_has_one_point_per_layer_with_macs(report):
    svg = (report.parent / "roofline.svg").read_text()
    points = ids(svg, "layer-point-")
    assert len(points) == len(WITH_MACS) == 4
    # Their indices are the execution positions of conv1, conv2, fc1, fc2 in the notebook list.
    assert sorted(int(p.rsplit("-", 1)[1]) for p in points) == [
        NOTEBOOK_LAYERS.index(name) + 1 for name in WITH_MACS
    ]


def test_bar_charts_have_one_bar_per_layer_and_metric(report):
    svg = (report.parent / "layers.svg").read_text()
    for metric, _ in BAR_METRICS:
        assert len(ids(svg, f"bar-{metric}-")) == len(NOTEBOOK_LAYERS)


# --- the page ----------------------------------------------------------------------------
def test_the_page_is_self_contained(report):
    page = report.read_text()
    assert (
        "http://" not in page
        and "https://" not in page
        and "//" not in re.sub(r"<svg.*?</svg>", "", page, flags=re.S).replace("<!DOCTYPE", "")
    )
    for pattern in (
        r"<script",
        r"<link",
        r"<iframe",
        r"<object",
        r"<embed",
        r"@import",
        r"\ssrc=",
    ):
        assert not re.search(pattern, page, re.I), pattern
    # References stay inside the page: url(#clip), xlink:href="#glyph".
    assert all(ref.startswith("#") for ref in re.findall(r"url\(\s*['\"]?([^)'\"]*)", page))
    assert all(ref.startswith("#") for ref in re.findall(r'href="([^"]*)"', page))
    # Every chart is inline: both SVGs, with their per-layer ids, are in the page.
    assert page.count("<svg") == 2
    assert len(ids(page, "layer-point-")) == 4
    for name in NOTEBOOK_LAYERS:
        assert f'<td class="l">{name}' in page or f">{name}<" in page


def test_the_page_shows_roofline_and_footprint(report):
    page = report.read_text()
    # fc1 on the test device (derived in test_roofline): memory-bound, 20.2 µs.
    assert re.search(r">fc1<.*?>memory<.*?>20\.2<", page, re.S)
    assert "est. time (µs)" in page  # the unit once, in the column's header
    # Peak activations of the reference network at batch 1: 25,088 B, at the first relu.
    assert "25,088 B) at relu" in page


def test_an_interrupted_report_leaves_the_good_one(report, monkeypatch):
    import dnnlens.report as module

    before = report.read_bytes()
    folder_before = sorted(p.name for p in report.parent.iterdir())

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "render_html", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_report(analyze(Net(), (1, 1, 28, 28), batch=4), report.parent, DEVICE)
    assert report.read_bytes() == before
    assert sorted(p.name for p in report.parent.iterdir()) == folder_before  # no temp files


def test_an_interrupted_write_removes_its_temp_file(tmp_path, monkeypatch):
    from dnnlens import roofline

    target = tmp_path / "report.html"
    target.write_text("good")

    def broken_fsync(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(roofline.os, "fsync", broken_fsync)
    with pytest.raises(KeyboardInterrupt):
        roofline.atomic_write_text(target, "half")
    assert target.read_text() == "good" and [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_report_includes_the_verification(tmp_path, sample_checkpoint):
    from dnnlens.verify import verify

    result = verify(sample_checkpoint, data="sample")
    page = write_report(analyze(Net(), (1, 1, 28, 28)), tmp_path, DEVICE, result).read_text()
    assert "Verification against PyTorch" in page
    assert f"{100 * result.accuracy:.2f}%" in page


# --- the command -------------------------------------------------------------------------
def test_cli_report_writes_the_page(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dnnlens",
            "report",
            "-o",
            str(tmp_path),
            "--device",
            "rpi5",
            "--batch",
            "8",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "report.html").read_text()
    assert "Raspberry Pi 5" in page and "batch 8" in page
    assert "Latency and throughput by batch size" in page


def test_cli_report_bad_device_is_an_error(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "dnnlens", "report", "-o", str(tmp_path), "--device", "cray-1"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stderr.startswith("error: unknown device")
    assert not (tmp_path / "report.html").exists()


# --- a real browser ----------------------------------------------------------------------
def chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``page``; as root it needs --no-sandbox."""
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *extra,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def page_requests(net_log: Path) -> list[str]:
    """URLs of http(s)/ws requests the *page* started (the browser's own background
    requests have no origin: ``initiator`` 'not an origin')."""
    log = json.loads(net_log.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        event["params"]["url"]
        for event in log["events"]
        if event["type"] == start
        and event["params"].get("initiator") != "not an origin"
        and re.match(r"(https?|wss?)://", event["params"].get("url", ""))
    ]


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium not installed: run `make test-data` (apt-get install chromium)")
    return CHROMIUM


def test_the_page_renders_in_chromium(browser, report, tmp_path):
    done = chromium(report, tmp_path / "profile-dom", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert "<h1>dnnlens report: Net</h1>" in dom
    assert dom.count("<svg") == 2  # both charts parsed as SVG elements
    assert len(ids(dom, "layer-point-")) == 4
    assert len(ids(dom, "bar-macs-")) == 10


def test_chromium_screenshot_shows_the_charts(browser, report, tmp_path):
    import matplotlib.image
    import numpy as np

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    done = chromium(
        report,
        tmp_path / "profile-shot",
        "--window-size=1400,3600",
        f"--screenshot={shot}",
        "--hide-scrollbars",
    )
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round().astype(int)
    # The charts' points and bars are tab:blue (31, 119, 180); text and tables never are.
    blue = np.all(np.abs(pixels - (31, 119, 180)) <= 6, axis=-1)
    assert blue.sum() > 2000, "no chart visible in the screenshot"
    assert (pixels.std(axis=(0, 1)) > 10).all()  # not a blank page


def test_no_request_leaves_the_page(browser, report, tmp_path):
    # Control: a page with one external image is caught by the same check.
    control = tmp_path / "control.html"
    control.write_text('<html><body><img src="http://example.invalid/x.png"></body></html>')
    done = chromium(
        control, tmp_path / "profile-control", f"--log-net-log={tmp_path}/c.json", "--dump-dom"
    )
    assert done.returncode == 0
    assert page_requests(tmp_path / "c.json") == ["http://example.invalid/x.png"]

    done = chromium(
        report, tmp_path / "profile-report", f"--log-net-log={tmp_path}/r.json", "--dump-dom"
    )
    assert done.returncode == 0
    assert page_requests(tmp_path / "r.json") == []


def test_cli_report_on_a_model_file(tmp_path):
    spec = Path(__file__).resolve().parents[1] / "examples" / "specs" / "analyzing-dnns.toml"
    if not spec.exists():
        pytest.skip("the example spec file is not in this checkout")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dnnlens",
            "report",
            str(spec),
            "-o",
            str(tmp_path),
            "--device",
            "rpi5",
            "--batch",
            "4",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "report.html").read_text()
    # The notebook's network at batch 4: peak activations 4 x 25,088 B = 100,352 B.
    assert "(100,352 B) at relu" in page
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dnnlens",
            "report",
            str(spec),
            "-o",
            str(tmp_path / "m"),
            "--measure",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "--measure" in done.stderr


@pytest.mark.slow
def test_cli_report_on_a_detector_uses_its_default_input(tmp_path):
    """A detector takes a list of images, which no N,C,H,W shape describes: the report uses
    the same default input as ``analyze`` instead of asking for --input (it used to)."""
    import torchvision

    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    done = subprocess.run(
        [sys.executable, "-m", "dnnlens", "report", name, "-o", str(tmp_path)]
        + ["--device", "rpi5"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "report.html").read_text()
    published = torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"]
    assert f"{published:,}" in page  # the published parameter count, 19,386,354
