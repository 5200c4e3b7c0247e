"""The text tables as printed, compared with golden files (as torchinfo does): a change to the
rendering shows up as a diff to review. `pytest --overwrite-golden` rewrites them.

A golden file is a snapshot of our own output, not a truth: the numbers in it are checked
against independent truths elsewhere (the course notebook's figures in test_analysis and
test_notebook, hand-derived counts in test_op_counts, PyTorch's flop counter in
test_torchvision_crosscheck). What this file adds is a check of the rendering itself: every
column total printed under the rule equals the sum of the column printed above it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
README = Path(__file__).resolve().parents[1] / "README.md"


def seed_table() -> str:
    from dnnlens.analysis import analyze
    from dnnlens.models import Net

    return analyze(Net(), (1, 1, 28, 28)).render()


def resnet18_table() -> str:
    import torch
    import torchvision

    from dnnlens.analysis import analyze

    with torch.device("meta"):
        model = torchvision.models.resnet18(weights=None)
    result = analyze(model, (1, 3, 224, 224))
    result.graph.name = "resnet18"
    return result.render()


def check_golden(name: str, text: str, overwrite: bool) -> None:
    path = GOLDEN / name
    if overwrite:
        path.write_text(text + "\n", encoding="utf-8")
    assert path.exists(), f"no golden file {path}: run pytest --overwrite-golden"
    assert text + "\n" == path.read_text(encoding="utf-8"), (
        f"{name} differs from the rendering; if the change is intended: pytest --overwrite-golden"
    )


@pytest.mark.parametrize(
    "name, render", [("analyze-seed.txt", seed_table), ("analyze-resnet18.txt", resnet18_table)]
)
def test_table_matches_its_golden_file(name: str, render, overwrite_golden: bool) -> None:
    check_golden(name, render(), overwrite_golden)


def table_body(text: str) -> tuple[list[str], list[list[str]], list[str]]:
    """Header cells, body rows and footer of a rendered table (split on 2+ spaces)."""
    lines = text.splitlines()
    rules = [i for i, line in enumerate(lines) if line and set(line) == {"─"}]
    assert len(rules) == 2, "a header rule and a footer rule"
    header = re.split(r"\s{2,}", lines[rules[0] - 1].strip())
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[rules[0] + 1 : rules[1]]]
    footer = re.split(r"\s{2,}", lines[rules[1] + 1].strip())
    return header, rows, footer


@pytest.mark.parametrize("name", ["analyze-seed.txt", "analyze-resnet18.txt"])
def test_printed_totals_add_up(name: str) -> None:
    header, rows, footer = table_body((GOLDEN / name).read_text(encoding="utf-8"))
    for column in ("MACs", "values moved", "biases"):
        at = header.index(column) - len(header)  # from the right: text cells may be empty
        total = sum(int(row[at].replace(",", "")) for row in rows)
        assert total == int(footer[at].replace(",", "")), column


def test_readme_shows_the_golden_table() -> None:
    """The README's table is the golden one, so it cannot go stale."""
    golden = (GOLDEN / "analyze-seed.txt").read_text(encoding="utf-8")
    indented = "\n".join(("    " + line).rstrip() for line in golden.splitlines())
    assert indented in README.read_text(encoding="utf-8")
