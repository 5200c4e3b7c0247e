"""Spec files: the notebook's network reproduces the notebook's own figures; shapes are checked
as they propagate (the first misfit layer is named); malformed files are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from dnnlens.analysis import analyze
from dnnlens.cli import main
from dnnlens.errors import SpecError
from dnnlens.importers.spec import import_spec

NOTEBOOK_SPEC = Path(__file__).parent.parent / "examples" / "specs" / "analyzing-dnns.toml"


def write(tmp_path: Path, text: str, name: str = "net.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_notebook_spec_reproduces_the_notebook_figures():
    a = analyze(import_spec(NOTEBOOK_SPEC))
    rows = {r.name: r for r in a.rows}
    # The notebook's answers 2.5, 2.6 and 2.7 (printed in analyzing-dnns, cells 95-100).
    assert [rows[n].weights for n in ("conv1", "conv2", "fc1", "fc2")] == [100, 800, 100352, 2560]
    assert [rows[n].macs for n in ("conv1", "conv2", "fc1", "fc2")] == [
        78400,
        156800,
        100352,
        2560,
    ]
    expected = {
        "conv1": 19.502487562189053,
        "conv2": 49.746192893401016,
        "fc1": 0.9935841584158416,
        "fc2": 0.9058740268931351,
    }
    for name, value in expected.items():
        assert rows[name].intensity == pytest.approx(value, rel=1e-12)
    assert a.totals.weights == 103812  # the notebook's expected total (2.5)
    assert a.totals.macs == 338112  # the notebook's expected total (2.6)
    # The notebook's output sizes (2.4) of the layers that exist in both lists.
    assert rows["conv1"].output_shape == (1, 4, 28, 28)
    assert rows["pool1"].output_shape == (1, 4, 14, 14)
    assert rows["pool2"].output_shape == (1, 8, 7, 7)
    assert rows["fc2"].output_shape == (1, 10)


def test_notebook_spec_matches_the_pytorch_module_it_describes():
    from dnnlens.models import Net

    spec = analyze(import_spec(NOTEBOOK_SPEC))
    torch_path = analyze(Net(), (1, 1, 28, 28))
    assert spec.totals.macs == torch_path.totals.macs
    assert spec.totals.params == torch_path.totals.params == 104090  # 103,812 + 278 biases
    assert spec.totals.values_moved == torch_path.totals.values_moved
    assert {p.name: p.shape for p in import_spec(NOTEBOOK_SPEC).params().values()} == {
        k: tuple(v.shape) for k, v in Net().state_dict().items()
    }


@pytest.mark.parametrize(
    "conv, options",
    [
        ("[3, 5, 3, 6]", ""),  # Kw=3, Kh=5: 'same' per axis
        ("[3, 3, 3, 6]", ", stride = 2"),
        ("[4, 4, 3, 6]", ", stride = [2, 1], padding = [1, 2]"),  # width first
        ("[3, 3, 3, 6]", ', padding = "valid", dilation = 2'),
        ("[3, 3, 3, 6]", ", groups = 3"),
        ("[3, 3, 3, 6]", ", padding = [0, 1, 2, 0]"),  # left, right, top, bottom
    ],
)
def test_conv_shapes_and_macs_match_torch(tmp_path, conv, options):
    import torch
    import torch.nn.functional as F

    graph = import_spec(
        write(tmp_path, f"input = [2, 3, 11, 13]\nlayers = [ {{ conv = {conv}{options} }} ]\n")
    )
    node = graph.nodes[0]
    kw, kh, cin, cout = [int(v) for v in conv.strip("[]").split(",")]
    op = node.op
    x = torch.zeros(2, 3, 11, 13)
    (pt, pb), (pl, pr) = op.padding
    x = F.pad(x, (pl, pr, pt, pb))
    w = torch.zeros(cout, cin // op.groups, kh, kw)
    y = F.conv2d(x, w, stride=op.stride, dilation=op.dilation, groups=op.groups)
    assert node.output_shape == tuple(y.shape)
    # torch's own count: every output value is a (Cin/groups)*Kh*Kw dot product.
    assert analyze(graph).totals.macs == y.numel() * (cin // op.groups) * kh * kw


def test_same_padding_is_the_notebooks_k_over_2(tmp_path):
    text = "input = [1, 1, 28, 28]\nlayers = [{ conv = [5, 5, 1, 4] }]"
    graph = import_spec(write(tmp_path, text))
    assert graph.nodes[0].op.padding == ((2, 2), (2, 2))  # notebook: np.pad(..., K//2)
    assert graph.nodes[0].output_shape == (1, 4, 28, 28)


def test_fc_that_does_not_fit_its_input_is_named(tmp_path):
    text = NOTEBOOK_SPEC.read_text().replace(
        '{ fc = [256, 392], name = "fc1" }', '{ fc = [256, 256], name = "fc1" }'
    )
    with pytest.raises(SpecError) as err:
        import_spec(write(tmp_path, text))
    message = str(err.value)
    assert "'fc1'" in message and "256" in message and "392" in message
    assert "layer 8" in message and "\n" not in message


def test_skip_connections_and_batchnorm(tmp_path):
    graph = import_spec(
        write(
            tmp_path,
            """
input = [1, 8, 6, 6]
layers = [
  { conv = [3, 3, 8, 8], bias = false, name = "a" },
  { batchnorm = true },
  { add = "input" },
  { relu = true },
  { concat = ["a", "relu1"] },
]""",
        )
    )
    add = graph.node("add1")
    assert add.inputs == ["batchnorm1", "input"]
    assert graph.node("concat1").output_shape == (1, 16, 6, 6)
    assert graph.node("batchnorm1").op.stats == (
        "batchnorm1.running_mean",
        "batchnorm1.running_var",
    )
    assert analyze(graph).totals.params == 8 * 8 * 9 + 2 * 8  # conv weights + bn scale, shift


@pytest.mark.parametrize(
    "text, needle",
    [
        ("input = [1, 1, 28, 28\nlayers = []", "not a valid TOML"),
        (
            "input = [1, 1, 28, 28]\nlayers = [{ convolution = [5, 5, 1, 4] }]",
            "unknown layer type",
        ),
        ("layers = [{ relu = true }]", "missing 'input'"),
        ("input = [1, 1, 28, 28]\nlayers = [{ conv = [5, 5, 1] }]", "needs 4 numbers"),
        ("input = [1, 1, 28, 28]\nlayers = [{ conv = [5, -5, 1, 4] }]", "positive"),
        ("input = [1, -1, 28, 28]\nlayers = [{ relu = true }]", "positive"),
        (
            "input = [1, 1, 28, 28]\nlayers = [{ conv = [5, 5, 1, 4], strides = 2 }]",
            "unknown setting",
        ),
        ('input = [1, 1, 28, 28]\nlayers = [{ add = "nowhere" }]', "not an earlier layer"),
        ("input = [1, 1, 28, 28]\nlayers = [{ conv = [5, 5, 3, 4] }]", "3 input channels"),
        ("input = [1, 1, 4, 4]\nlayers = [{ pool = [5, 5, 1, 1] }]", "larger than"),
        ("input = [1, 1, 28, 28]", "no layers"),
    ],
)
def test_malformed_specs_are_one_line_spec_errors(tmp_path, capsys, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as err:
        import_spec(path)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert main(["analyze", str(path)]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("error: ")


def test_cli_reads_spec_prefix_and_batch(tmp_path, capsys):
    path = write(tmp_path, NOTEBOOK_SPEC.read_text(), "notebook.txt")
    assert main(["analyze", f"spec:{path}", "--batch", "4", "--json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    assert doc["input_shape"] == [4, 1, 28, 28]
    assert doc["totals"]["macs"] == 4 * 338112  # MACs scale with the batch


def test_missing_spec_file_is_a_clear_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read spec file"):
        import_spec(tmp_path / "absent.toml")


def test_input_option_does_not_apply_to_a_spec_file(capsys):
    """A spec fixes its own input; a silently ignored --input would print wrong numbers."""
    from pathlib import Path

    from dnnlens.cli import main

    spec = Path(__file__).parent.parent / "examples" / "specs" / "analyzing-dnns.toml"
    assert main(["analyze", str(spec), "--input", "1,1,32,32"]) == 2
    assert "--input does not apply" in capsys.readouterr().err
