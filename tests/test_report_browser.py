"""The report read in a real browser at any model size: headless Chromium at 1400 px renders
the pages `dnnlens report` writes for the course network (10 layers), resnet50 (175) and
vit_b_16 (466) and checks what a reader meets: a page that stays short at the default depth,
no console error, every chart there with its legend and a hover title on every roofline
point. Screenshots go to ``artifacts/report-screenshots/`` for a human to look at.

Truths: the layer counts of the two torchvision models are not ours to check here (see
test_torchvision_crosscheck); "one point per layer with MACs" is checked against the models'
own modules (every Conv2d / Linear is one layer with MACs; ViT adds one attention product per
encoder layer: 12).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "report-screenshots"
WIDTH = 1400
MAX_HEIGHT = 6000

pytestmark = pytest.mark.slow  # three reports (resnet50 and vit_b_16 traced four times each)


def layers_with_macs(name: str) -> int:
    """Conv2d and Linear modules of the model (each one layer with MACs), plus ViT's
    attention products (one per encoder layer), counted from PyTorch's module list."""
    import torch
    import torchvision
    from torch import nn

    from dnnlens.models import Net

    if name == "seed":
        model: nn.Module = Net()
    else:
        with torch.device("meta"):
            model = torchvision.models.get_model(name, weights=None)
    count = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    # nn.MultiheadAttention holds its in-projection as a bare parameter (not an nn.Linear) and
    # its out-projection as a Linear: + 1 in-projection and + 1 attention product each.
    count += 2 * sum(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    return count


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    """Headless Chromium; as root it needs --no-sandbox. Console messages go to stderr."""
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            f"--user-data-dir={profile}",
            f"--window-size={WIDTH},900",
            "--hide-scrollbars",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def measured(page: Path, tmp: Path) -> tuple[int, str, list[str]]:
    """(page height in px at 1400 px wide, the DOM, console messages): a copy of the page
    with one line of script that writes the height into its title."""
    probe = tmp / "measure.html"
    probe.write_text(
        page.read_text(encoding="utf-8").replace(
            "</body>",
            "<script>document.title = 'height=' + "
            "document.documentElement.scrollHeight;</script></body>",
        ),
        encoding="utf-8",
    )
    done = chromium(probe.as_uri(), tmp / "profile-measure", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    height = re.search(r"<title>height=(\d+)</title>", done.stdout)
    assert height, "the page did not run the measuring line"
    return int(height.group(1)), done.stdout, console_messages(done.stderr)


@pytest.fixture(scope="module")
def browser() -> str:
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium not installed: run `make test-data` (apt-get install chromium)")
    return CHROMIUM


def test_the_console_check_catches_an_error(browser: str, tmp_path: Path) -> None:
    control = tmp_path / "control.html"
    control.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    done = chromium(control.as_uri(), tmp_path / "profile", "--dump-dom")
    assert any("undefinedFunction" in m for m in console_messages(done.stderr))


@pytest.mark.parametrize("model", ["seed", "resnet50", "vit_b_16"])
def test_report_reads_at_any_size(browser: str, model: str, tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "dnnlens", "report", model, "-o", str(out), "--device", "rpi5"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    page = out / "report.html"

    height, dom, console = measured(page, tmp_path)
    assert console == [], console
    assert height < MAX_HEIGHT, f"{model}: {height} px tall at {WIDTH} px"

    # Every chart is there: the roofline and the per-block bars, each with its legend.
    assert dom.count("<svg") == 2
    assert len(re.findall(r'id="legend_\d+"', dom)) == 2
    points = re.findall(r'<g id="layer-point-(\d+)"><title>([^<]+)</title>', dom)
    assert len(points) == layers_with_macs(model)  # one per layer with MACs, each titled
    assert all("MAC/byte" in title for _, title in points)
    labels = re.findall(r'id="layer-label-\d+"', dom)
    assert 1 <= len(labels) <= 8  # only the layers that matter are named on the chart
    bars = re.findall(r'id="bar-macs-(\d+)"', dom)
    assert 1 <= len(bars) <= 30  # blocks at the default depth, not one bar per layer
    # The summary comes first, then the layers, then the charts.
    assert dom.index('id="summary"') < dom.index('id="layers"') < dom.index("<svg")
    # Shapes on one line: no wrapping allowed in the tree's cells.
    assert "white-space: nowrap" in dom

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / f"{model}.png"
    done = chromium(
        page.as_uri(),
        tmp_path / "profile-shot",
        f"--screenshot={shot}",
        f"--window-size={WIDTH},{height}",
    )
    assert done.returncode == 0 and shot.stat().st_size > 10_000, done.stderr[-2000:]


def test_depth_opens_the_tree_further(browser: str, tmp_path: Path) -> None:
    """--depth K: groups above K open, at K closed; a deeper K shows more rows."""
    import torch
    import torchvision

    from dnnlens.analysis import analyze
    from dnnlens.models import Net
    from dnnlens.report import write_report

    with torch.device("meta"):
        model = torchvision.models.get_model("resnet18", weights=None)
    analysis = analyze(model, (1, 3, 224, 224))
    pages = {
        depth: write_report(analysis, tmp_path / f"d{depth}", "rpi5", depth=depth)
        for depth in (1, 2)
    }
    opened = {depth: page.read_text().count("<details open") for depth, page in pages.items()}
    # resnet18: at depth 1 nothing is open; at depth 2 the four stages layer1..layer4 are.
    assert opened == {1: 0, 2: 4}
    # The course network has no modules inside modules: every layer is a row at any depth.
    flat = write_report(analyze(Net(), (1, 1, 28, 28)), tmp_path / "seed", "rpi5", depth=1)
    assert flat.read_text().count("<details") == 0
