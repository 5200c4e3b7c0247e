"""``dnnlens analyze`` beyond one float image: several inputs, integer token inputs, factories
found from the current folder, the default input said aloud, and internal errors as one line.

Counts are checked against hand-derived closed forms (arithmetic in the comments).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import textwrap

import pytest
from torch import nn

from dnnlens.cli import main
from dnnlens.importers import torch as torch_importer

TAGGER = textwrap.dedent("""
    import torch
    from torch import nn

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(500, 64)
            self.lstm = nn.LSTM(64, 128, batch_first=True)
            self.head = nn.Linear(128, 10)

        def forward(self, tokens, bias):
            out, _ = self.lstm(self.embed(tokens))
            if int(tokens.max()) >= 500:  # only reachable with ids outside the table
                raise IndexError("token id outside the embedding")
            return self.head(out) + bias

    def make():
        return Tagger()
""")


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def tagger_package(tmp_path, monkeypatch):
    """A package ``mynets`` in a fresh current folder, not on sys.path beforehand."""
    package = tmp_path / "mynets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tagger.py").write_text(TAGGER)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield "mynets.tagger:make"
    for name in [m for m in sys.modules if m == "mynets" or m.startswith("mynets.")]:
        del sys.modules[name]


def test_factory_from_the_current_folder_with_two_inputs_one_of_them_tokens(tagger_package):
    code, out, err = run(
        "analyze", tagger_package, "--input", "4,32:int64", "--input", "4,32,10", "--json"
    )
    assert code == 0, err
    # Its forward reads a token id (``int(tokens.max())``): meta cannot, so it is traced on
    # real random ids, which must then lie inside the embedding (else it raises).
    assert "tracing it on the CPU on random inputs instead" in err
    doc = json.loads(out)
    rows = {layer["name"]: layer for layer in doc["layers"]}
    assert rows["embed"]["output_shape"] == [4, 32, 64]
    # LSTM(64, 128) over N*T = 4*32 steps: 128 * 4*128*(64+128) = 12,582,912
    assert rows["lstm"]["macs"] == 128 * 4 * 128 * (64 + 128)
    # head: 4*32 * 128*10 = 163,840
    assert rows["head"]["macs"] == 4 * 32 * 128 * 10
    assert doc["totals"]["macs"] == 128 * 4 * 128 * 192 + 4 * 32 * 128 * 10
    # params: embedding 500*64 + LSTM 4*128*(64+128) + 2*4*128 + head 128*10 + 10
    assert doc["totals"]["params"] == 500 * 64 + 4 * 128 * 192 + 2 * 4 * 128 + 1280 + 10


def test_token_ids_stay_inside_the_smallest_embedding():
    from dnnlens.cli.analyze import make_inputs
    from dnnlens.models import Net  # no embedding: ids default to 0 or 1

    two_tables = nn.ModuleDict({"words": nn.Embedding(500, 8), "tags": nn.Embedding(40, 8)})
    (tokens,) = make_inputs(two_tables, [((8, 1000), "int64")], real=True)
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 40
    (ids,) = make_inputs(Net(), [((3,), "int32")], real=True)
    assert set(ids.tolist()) <= {0, 1}


def test_a_bad_dtype_is_bad_input(tagger_package):
    code, _, err = run("analyze", tagger_package, "--input", "4,32:int65")
    assert code == 2
    assert err.startswith("error: --input '4,32:int65': unknown dtype")


def test_the_default_input_is_printed():
    code, out, err = run("analyze", "r3d_18", "--depth", "1")
    assert code == 0, err
    assert "input: (1, 3, 16, 112, 112): a clip of 16 frames (r3d_18's default" in err
    assert out.startswith("r3d_18: input (1, 3, 16, 112, 112)")


def test_an_internal_error_is_one_line_with_the_layer_and_operator(monkeypatch):
    def broken(tracer, module, x, out):
        raise KeyError("a bug of ours")

    monkeypatch.setitem(torch_importer.LEAF_RULES, nn.Conv2d, broken)
    code, _, err = run("analyze", "seed")
    assert code == 1
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "error: internal error while running `dnnlens analyze` on "
        "model 'seed' in layer 'conv1' at operator nn.Conv2d: KeyError"
    )
    assert "please report it" in lines[0]
