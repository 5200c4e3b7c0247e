"""The analysis of the reference network reproduces every figure of the course notebook
(/work/shared/seed/analyzing-dnns.txt, its printed answers), and the views agree with the rows."""

from __future__ import annotations

import csv
import json
from math import prod

import pytest

from dnnlens.analysis import analyze, group_rows
from dnnlens.cli import main
from dnnlens.errors import UsageError
from dnnlens.models import Net


@pytest.fixture(scope="module")
def seed():
    return analyze(Net(), (1, 1, 28, 28))


def test_reference_network_reproduces_the_notebook(seed):
    by_type = {}
    for row in seed.rows:
        by_type.setdefault(row.type, []).append(row)
    conv1, conv2 = by_type["conv"]
    fc1, fc2 = by_type["fc"]
    # The notebook's answers to 2.5 (weights), 2.6 (multiplications), 2.7 (intensity)
    assert [r.weights for r in (conv1, conv2, fc1, fc2)] == [100, 800, 100_352, 2_560]
    assert seed.totals.weights == 103_812
    assert [r.macs for r in (conv1, conv2, fc1, fc2)] == [78_400, 156_800, 100_352, 2_560]
    assert seed.totals.macs == 338_112
    expected = [19.502487562189053, 49.746192893401016, 0.9935841584158416, 0.9058740268931351]
    for row, value in zip((conv1, conv2, fc1, fc2), expected):
        assert row.intensity == pytest.approx(value, rel=1e-12)
    for row in seed.rows:
        if row.type not in ("conv", "fc"):
            assert row.macs == 0 and row.intensity == 0.0 and row.weights == 0


def test_reference_network_output_shapes_and_their_sum(seed):
    assert [r.output_shape for r in seed.rows] == [
        (1, 4, 28, 28),
        (1, 4, 28, 28),
        (1, 4, 14, 14),
        (1, 8, 14, 14),
        (1, 8, 14, 14),
        (1, 8, 7, 7),
        (1, 392),
        (1, 256),
        (1, 256),
        (1, 10),
    ]
    # 3136 + 3136 + 784 + 1568 + 1568 + 392 + 392 + 256 + 256 + 10 = 11,498. The notebook's
    # nine-layer list gives 3136 + 3136 + 784 + 1568 + 1568 + 392 + 256 + 256 + 10 = 11,106:
    # its flatten is a "relu" returning (1,256,1,1) (256, not 392) and the ReLU after fc1
    # (256) is missing: 11,498 - 136 - 256 = 11,106.
    assert seed.totals.outputs == 11_498
    assert seed.totals.outputs == sum(prod(r.output_shape) for r in seed.rows)


def test_descriptors_are_the_notebooks_tuples(seed):
    assert [r.descriptor for r in seed.rows] == [
        (5, 5, 1, 4),
        (),
        (2, 2, 2, 2),
        (5, 5, 4, 8),
        (),
        (2, 2, 2, 2),
        (),
        (256, 392),
        (),
        (10, 256),
    ]


def test_dtype_sets_bytes_per_value(seed):
    half = analyze(Net(), (1, 1, 28, 28), dtype="fp16")
    int8 = analyze(Net(), (1, 1, 28, 28), dtype="int8")
    assert seed.rows[0].weight_bytes == 400 and half.rows[0].weight_bytes == 200
    assert int8.rows[0].bytes_moved == int8.rows[0].values_moved == 4_020  # 784 + 100 + 3136
    assert half.totals.bytes == 2 * half.totals.values_moved
    with pytest.raises(UsageError, match="dtype"):
        analyze(Net(), (1, 1, 28, 28), dtype="fp64")


def test_views_agree_with_rows(seed, tmp_path):
    doc = json.loads(seed.to_json())
    assert list(doc) == ["model", "input_shape", "batch", "dtype", "units", "layers", "totals"]
    assert list(doc["layers"][0]) == [
        "index",
        "name",
        "type",
        "descriptor",
        "input_shape",
        "output_shape",
        "weights",
        "biases",
        "weight_bytes",
        "macs",
        "values_moved",
        "intensity",
    ]
    moved = seed.totals.values_moved
    # params: every parameter once, 103,812 weights + 278 biases; the seed network uses all.
    assert doc["totals"] == {
        "weights": 103_812,
        "biases": 278,
        "macs": 338_112,
        "outputs": 11_498,
        "values_moved": moved,
        "params": 103_812 + 278,
        "params_unused": 0,
        "unused_modules": [],
        # 103,812 + 278 parameters, 4 bytes each in fp32; FLOPs = 2 x MACs
        "bytes_moved": 4 * moved,
        "parameter_bytes": 416_360,
        "flops": 676_224,
    }
    assert doc["input_shape"] == [1, 1, 28, 28]
    assert doc["layers"][0]["output_shape"] == [1, 4, 28, 28]
    frame = seed.to_dataframe()
    assert list(frame["macs"]) == [r.macs for r in seed.rows]
    assert frame["weights"].sum() == 103_812
    text = str(seed)
    assert "MACs" in text and "FLOPs = 2 x MACs" in text and "338,112" in text
    assert "<table>" in seed._repr_html_() and "conv1" in seed._repr_html_()
    path = tmp_path / "rows.csv"
    seed.to_csv(str(path))
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["macs"]) for r in rows] == [r.macs for r in seed.rows]
    assert rows[0]["output_shape"] == "1x4x28x28"


def test_group_rows_by_depth(seed):
    assert len(group_rows(seed.rows, 0)) == 1
    whole = group_rows(seed.rows, 0)[0]
    assert whole.macs == 338_112 and whole.weights == seed.totals.weights
    assert whole.output_shape == (1, 10)


def test_cli_json_and_exit_codes(capsys):
    assert main(["analyze", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"] == "seed" and doc["totals"]["macs"] == 338_112
    assert main(["analyze", "seed", "--batch", "4", "--dtype", "int8", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["batch"] == 4 and doc["totals"]["macs"] == 4 * 338_112
    for argv, message in [
        (["analyze", "no_such_model"], "unknown model"),
        (["analyze", "seed", "--input", "1,x,28"], "--input"),
        (["analyze", "seed", "--input", "1,3,28,28"], "rejects input (1, 3, 28, 28)"),
        (["analyze", "tests.test_analysis:failing_factory", "--input", "1,1,28,28"], "raised"),
        (["analyze", "os:getcwd", "--input", "1,2"], "not an nn.Module"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_cli_factory_and_table(capsys):
    assert main(["analyze", "dnnlens.models:Net", "--input", "2,1,28,28", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "batch 2" in out and "676,224" in out  # 2 x 338,112 MACs


def failing_factory():
    raise RuntimeError("this factory always fails")
