"""Units and tables, once (dnnlens.formatting): each expected string is derived by hand from
the convention in docs/units.md (decimal SI sizes, ns/µs/ms/s, three significant digits)."""

from __future__ import annotations

import pytest

from dnnlens.formatting import (
    count,
    did_you_mean,
    duration,
    html_table,
    left,
    rate,
    right,
    size,
    size_scale,
    text_table,
    time_scale,
)


@pytest.mark.parametrize(
    "seconds, text",
    [
        (67_568.27e-6, "67.6 ms"),  # the "67,568.27 us"
        (10.61e-6, "10.6 µs"),
        (919e-9, "919 ns"),
        (999.96e-6, "1.00 ms"),  # rounds up into the next unit, never "1,000 µs"
        (1.5, "1.50 s"),
        (0, "0 s"),
    ],
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize(
    "nbytes, text",
    [
        (275_832.00e9, "276 TB"),  # the "275832.00 GB"
        (507_192, "507 kB"),  # 126,798 values x 4 B
        (999, "999 B"),
        (1000, "1.00 kB"),  # decimal: 1 kB = 1,000 B
        (999_950, "1.00 MB"),
        (416_360, "416 kB"),
    ],
)
def test_size(nbytes: float, text: str) -> None:
    assert size(nbytes) == text


def test_rates_and_counts() -> None:
    assert rate(76.8e9) == "76.8 GMAC/s"
    assert rate(17.07e9, "B/s") == "17.1 GB/s"
    assert count(338_112) == "338,112"


def test_column_scales_name_the_unit_once() -> None:
    sizes = size_scale(125e6)
    assert sizes.unit == "MB" and sizes(3.85e6) == "3.85" and sizes(410e3) == "0.410"
    times = time_scale(67.6e-3)
    assert times.unit == "ms" and times(376e-6) == "0.376" and times(0) == "0"


def test_text_table_aligns_and_has_no_trailing_space() -> None:
    table = text_table(
        [right("#"), left("name"), right("MACs")],
        [["1", "conv1", "78,400"], ["10", "fc2", "2,560"]],
        footer=["", "total", "80,960"],
    )
    lines = table.splitlines()
    assert lines[0].split() == ["#", "name", "MACs"]
    assert all(line == line.rstrip() for line in lines)
    # Right-aligned numbers end in the same column; text starts in the same column.
    assert len({line.rstrip().__len__() for line in lines if "," in line}) == 1
    assert lines[2].index("conv1") == lines[3].index("fc2")
    assert "\x1b[" not in table  # no colour codes when not a terminal


def test_html_table_escapes_and_aligns() -> None:
    page = html_table([left("name"), right("MACs")], [["<b>", "1"]])
    assert "&lt;b&gt;" in page and '<td class="n">1</td>' in page


def test_did_you_mean() -> None:
    assert did_you_mean("resnt18", ["resnet18", "vit_b_16"]) == " (did you mean 'resnet18'?)"
    assert did_you_mean("RPI5", ["rpi5", "h100-sxm"]) == " (did you mean 'rpi5'?)"
    assert did_you_mean("zzz", ["rpi5", "h100-sxm"]) == ""
