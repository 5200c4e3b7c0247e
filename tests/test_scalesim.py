"""SCALE-Sim topologies: what we write is read back by the scalesim package's own reader with
the layer dimensions of the PyTorch modules, and its MAC count agrees with PyTorch's."""

from __future__ import annotations

from pathlib import Path

import pytest

from dnnlens.analysis import analyze
from dnnlens.cli import main
from dnnlens.errors import SpecError
from dnnlens.importers.scalesim import import_topology, write_topology

scalesim_topology = pytest.importorskip("scalesim.topology_utils")
NOTEBOOK_SPEC = Path(__file__).parent.parent / "examples" / "specs" / "analyzing-dnns.toml"


def read_with_scalesim(path: Path):
    topo = scalesim_topology.topologies()
    topo.load_arrays(str(path))
    return topo


def torch_layers(model, shape):
    """Every Conv2d/Linear with its input and output shapes, from forward hooks (the truth)."""
    import torch
    from torch import nn

    seen = []
    hooks = [
        m.register_forward_hook(lambda m, i, o, n=n: seen.append((n, m, i[0].shape, o.shape)))
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model(torch.zeros(shape))
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_scalesim_reads_our_topology_with_the_module_dimensions(tmp_path, name):
    import torchvision
    from torch import nn

    model = torchvision.models.get_model(name, weights=None).eval()
    shape = (1, 3, 224, 224)
    path = tmp_path / f"{name}.csv"
    assert write_topology(analyze(model, shape).graph, path) == []
    topo = read_with_scalesim(path)
    expected, torch_macs = [], 0
    for _, m, _x, out in torch_layers(model, shape):
        if isinstance(m, nn.Linear):
            # SCALE-Sim's GEMM mapping: IFMAP M x K, filter 1 x K, 1 channel, N filters.
            expected.append([1, m.in_features, 1, m.in_features, 1, m.out_features, 1, 1])
            torch_macs += m.in_features * m.out_features
            continue
        kh, kw = m.kernel_size
        s = m.stride[0]
        ifmap = [(out[2] - 1) * s + kh, (out[3] - 1) * s + kw]  # padded, as windows read it
        torch_macs += out.numel() * (m.in_channels // m.groups) * kh * kw
        if m.groups == 1:
            expected.append([*ifmap, kh, kw, m.in_channels, m.out_channels, s, s])
        else:  # depthwise: the reader expands one DP line into one layer per channel
            assert m.groups == m.in_channels == m.out_channels
            expected += [[*ifmap, kh, kw, 1, 1, s, s]] * m.in_channels
    got = [list(row[1:9]) for row in topo.topo_arrays]
    assert got == expected
    assert topo.get_all_mac_ops() == torch_macs  # SCALE-Sim's own count


def test_notebook_network_topology_by_hand(tmp_path, capsys):
    path = tmp_path / "nb.csv"
    assert main(["analyze", str(NOTEBOOK_SPEC), "--scalesim", str(path)]) == 0
    lines = path.read_text().splitlines()
    # conv1: 28 + 2 + 2 = 32 padded; conv2: 14 + 4 = 18; fc rows: M=1, K=in, N=out.
    assert lines[1:] == [
        "conv1,32,32,5,5,1,4,1,",
        "conv2,18,18,5,5,4,8,1,",
        "fc1,1,392,1,392,1,256,1,",
        "fc2,1,256,1,256,1,10,1,",
    ]
    topo = read_with_scalesim(path)
    assert topo.get_all_mac_ops() == 338112  # the notebook's total multiplications


def test_topology_imports_as_a_graph_with_scalesims_macs(tmp_path):
    import torchvision

    model = torchvision.models.get_model("mobilenet_v2", weights=None)
    path = tmp_path / "mb.csv"
    write_topology(analyze(model, (1, 3, 224, 224)).graph, path)
    graph = import_topology(path)
    assert analyze(graph).totals.macs == read_with_scalesim(path).get_all_mac_ops()
    kinds = {n.kind for n in graph}
    assert kinds == {"conv", "fc"}
    assert any(n.op.groups > 1 for n in graph if n.kind == "conv")  # DP lines come back grouped


def test_grouped_conv_is_one_line_per_group(tmp_path):
    spec = tmp_path / "g.toml"
    spec.write_text("input = [1, 8, 10, 10]\nlayers = [{ conv = [3, 3, 8, 4], groups = 2 }]\n")
    from dnnlens.importers.spec import import_spec

    path = tmp_path / "g.csv"
    write_topology(import_spec(spec), path)
    topo = read_with_scalesim(path)
    assert [list(r[1:8]) for r in topo.topo_arrays] == [[12, 12, 3, 3, 4, 2, 1]] * 2
    assert topo.get_all_mac_ops() == 10 * 10 * 4 * 4 * 9  # out H*W*Cout*(Cin/g)*K


@pytest.mark.parametrize(
    "text, needle",
    [
        ("Layer name, a, b,\nconv1,32,32,5,5,1,\n", "needs 8 fields"),
        ("Layer name,\nconv1,32,x,5,5,1,4,1,\n", "must be an integer"),
        ("Layer name,\nconv1,3,3,5,5,1,4,1,\n", "larger than"),
        ("", "header"),
    ],
)
def test_malformed_topologies(tmp_path, text, needle):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(SpecError, match=needle):
        import_topology(path)
    assert main(["analyze", str(path)]) == 2


def test_topology_takes_the_batch(tmp_path):
    """A topology is per image; --batch B multiplies every layer's MACs by B."""
    from dnnlens.cli import main
    from dnnlens.importers.spec import import_spec

    path = tmp_path / "net.csv"
    write_topology(import_spec(NOTEBOOK_SPEC), path)
    one, four = analyze(import_topology(path)), analyze(import_topology(path, batch=4))
    # the notebook's network: 338,112 MACs per image, so 4 * 338,112 = 1,352,448
    assert one.totals.macs == 338_112
    assert four.totals.macs == 1_352_448
    assert main(["analyze", str(path), "--batch", "4", "--json"]) == 0
