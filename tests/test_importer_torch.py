"""The torch importer: the reference network's ten layers, parameters by state-dict name,
shapes checked against PyTorch actually running the model on CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnnlens.analysis import analyze
from dnnlens.errors import ModelError, UsageError
from dnnlens.importers.torch import import_torch, unknown_ops
from dnnlens.ir import Param
from dnnlens.models import Net


def test_reference_net_has_the_ten_correct_layers():
    graph = import_torch(Net(), (1, 1, 28, 28))
    # The notebook's list labels the flatten "relu" and misses the ReLU after fc1.
    assert [n.kind for n in graph] == [
        "conv",
        "relu",
        "maxpool",
        "conv",
        "relu",
        "maxpool",
        "flatten",
        "fc",
        "relu",
        "fc",
    ]
    assert [n.name for n in graph] == [
        "conv1",
        "relu",
        "pool",
        "conv2",
        "relu#2",
        "pool#2",
        "flatten",
        "fc1",
        "relu#3",
        "fc2",
    ]
    assert graph.inputs == {"input": (1, 1, 28, 28)}
    assert graph.outputs == ["fc2"]
    conv1 = graph.node("conv1")
    assert conv1.params == {
        "weight": Param("conv1.weight", (4, 1, 5, 5)),
        "bias": Param("conv1.bias", (4,)),
    }
    assert conv1.module == "conv1" and conv1.module_type == "Conv2d"
    assert graph.node("relu#3").inputs == ["fc1"]
    assert graph.node("flatten").module == ""  # the view in Net.forward belongs to the root


def test_reference_net_shapes_match_pytorch_running_it():
    net = Net().eval()
    seen = []
    x = torch.zeros(2, 1, 28, 28)
    # Independent truth: the real CPU forward, step by step as Net.forward writes it.
    with torch.no_grad():
        for f in (
            net.conv1,
            F.relu,
            net.pool,
            net.conv2,
            F.relu,
            net.pool,
            lambda t: t.view(-1, 392),
            net.fc1,
            F.relu,
            net.fc2,
        ):
            x = f(x)
            seen.append(tuple(x.shape))
    graph = import_torch(net, (2, 1, 28, 28))
    assert [n.output_shape for n in graph] == seen


def test_user_model_is_not_touched():
    net = Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    import_torch(net, (1, 1, 28, 28))
    assert net.training and all(p.device.type == "cpu" for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not net._forward_hooks and not net.conv1._forward_pre_hooks


def test_model_built_on_meta_is_imported_without_weights():
    with torch.device("meta"):
        net = Net()
    graph = import_torch(net, (1, 1, 28, 28))
    assert len(graph) == 10


def test_rejected_input_shape_is_a_model_error():
    with pytest.raises(ModelError, match="rejects input"):
        import_torch(Net(), (1, 3, 28, 28))
    with pytest.raises(UsageError):
        import_torch(Net())
    with pytest.raises(UsageError):
        import_torch(Net(), (1, 0, 28, 28))


def test_keyword_inputs_and_residual_wiring():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x, *, scale):
            return self.fc(x) + x * scale

    graph = import_torch(
        Block(), example_inputs=torch.zeros(2, 6), kwargs={"scale": torch.zeros(2, 6)}
    )
    assert graph.inputs == {"input0": (2, 6), "scale": (2, 6)}
    mul = next(n for n in graph if n.kind == "mul")
    add = next(n for n in graph if n.kind == "add")
    assert set(mul.inputs) == {"input0", "scale"}
    assert add.inputs == ["fc", mul.name]  # both branches of the residual


def test_subclass_with_its_own_forward_is_traced_not_trusted():
    class ScaledConv(nn.Conv2d):
        def forward(self, x):  # same weights, but a different computation
            return super().forward(x) * 2

    graph = import_torch(ScaledConv(1, 2, 3), (1, 1, 5, 5))
    assert [n.kind for n in graph] == ["conv", "mul"]
    assert graph.nodes[0].source == "aten.convolution"
    assert graph.nodes[0].params["weight"] == Param("weight", (2, 1, 3, 3))


def test_unknown_operator_keeps_its_shape():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.cumprod(x, dim=-1)

    graph = import_torch(Odd(), (3, 4))
    assert len(unknown_ops(graph)) == 1
    assert unknown_ops(graph)[0].output_shape == (3, 4)


def test_conv_with_reflect_padding_shows_its_pad_and_is_not_run_as_zero_padding():
    """padding_mode='reflect' pads with mirrored values, not zeros: the pad must appear in the
    graph (as unknown, flagged) so the engine refuses it instead of zero-padding silently."""
    import numpy as np

    from dnnlens.engine import run

    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"))
    graph = import_torch(model, (1, 1, 8, 8))
    assert [n.kind for n in graph] == ["unknown", "conv"]
    assert unknown_ops(graph)[0].op.target == "aten.reflection_pad2d"
    conv = graph.nodes[1]
    assert conv.op.padding == ((0, 0), (0, 0))  # the padding happened before the conv
    # MACs unchanged by where the padding lives: 2 out ch * 8*8 positions * 1*3*3 = 1,152
    assert (
        conv.op.macs(
            conv.input_shapes, conv.output_shape, {r: p.shape for r, p in conv.params.items()}
        )
        == 1152
    )
    with pytest.raises(ModelError, match="reflection_pad2d|unknown"):
        run(graph, model, np.zeros((1, 1, 8, 8), np.float32), engine="reference")


def test_a_buffer_read_as_an_operand_is_a_constant_not_a_weight():
    class Projected(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("proj", torch.randn(8, 3))  # a fixed random projection
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x @ self.proj)

    result = analyze(Projected(), (4, 8))
    assert [row.type for row in result.rows] == ["constant", "matmul", "fc"]
    # x (4, 8) @ proj (8, 3): 4*3*8 = 96 MACs; moves x 32 + proj 24 + output 12 = 68
    assert (result.rows[1].macs, result.rows[1].values_moved) == (96, 68)
    assert result.totals.weights == 3 * 2  # the buffer is not a weight
    assert result.totals.params == 3 * 2 + 2


class _WindowLookups(nn.Module):
    """What Swin and MaxViT do around window attention, small: a relative-position bias
    looked up in a parameter table by a buffer's index (``table[index.view(-1)]``), a mask
    built from literals (``new_zeros``, slices filled with numbers, ``masked_fill``), zero
    padding, a cyclic shift, a lookup along a later axis by a literal index tensor, and
    Swin V2's ``F.normalize``."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(7, 3))
        self.register_buffer("index", torch.tensor([[0, 1, 2, 3], [4, 5, 6, 0], [1, 1, 2, 2]]))
        self.fc = nn.Linear(3, 3)

    def forward(self, x):  # x (N, 3, 4, 3)
        bias = self.table[self.index.view(-1)].view(3, 4, 3)
        mask = x.new_zeros((3, 4))
        mask[:1, :2] = 1.0
        mask[1:, 3:] = 2.0
        mask = mask.masked_fill(mask != 0, -10.0).unsqueeze(-1)
        y = self.fc(x + bias) + mask
        y = F.pad(y, (0, 0, 1, 2), value=0.5)  # W: 4 -> 7
        y = torch.roll(y, shifts=(1, -2), dims=(1, 2))
        y = y[:, :, torch.tensor([6, 0, 0, 3, -1])]  # gather along W, a negative index too
        return F.normalize(y, dim=-1)


def test_window_attention_lookups_import_and_run_like_pytorch():
    import numpy as np

    from dnnlens.engine import run

    torch.manual_seed(0)
    model = _WindowLookups().eval()
    graph = import_torch(model, (2, 3, 4, 3))
    kinds = [n.kind for n in graph]
    assert not unknown_ops(graph), [n.op.target for n in unknown_ops(graph)]
    for kind in ("embedding", "pad", "roll", "gather", "norm"):
        assert kind in kinds, kind
    constants = [n.op for n in graph if n.kind == "constant"]
    # the index buffer (by its name, in the view's shape); the literal mask and the literal
    # index tensor by value
    assert {(c.source, c.shape) for c in constants if c.source} == {("index", (12,))}
    literal = {np.dtype(c.dtype).kind: c for c in constants if not c.source}
    np.testing.assert_array_equal(literal["i"].reference([], {}), [6, 0, 0, 3, -1])
    mask = literal["f"]
    expected_mask = np.zeros((3, 4), np.float32)
    expected_mask[:1, :2] = -10.0
    expected_mask[1:, 3:] = -10.0
    np.testing.assert_array_equal(mask.reference([], {}), expected_mask[..., None])
    x = torch.randn(2, 3, 4, 3)
    with torch.no_grad():
        truth = model(x).numpy()
    for engine in ("reference", "compiled"):
        ours = run(graph, model, x.numpy(), engine=engine).logits
        np.testing.assert_allclose(ours, truth, rtol=1e-5, atol=1e-6, err_msg=engine)


def test_a_constant_computed_from_a_buffer_keeps_no_value_and_is_refused():
    """A checkpoint may change a buffer, so a value computed from one while tracing is not
    kept: the engine refuses the layer, naming why, instead of running stale numbers."""
    import numpy as np

    from dnnlens.engine import run

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("offset", torch.ones(3))

        def forward(self, x):
            return x + self.offset * 2

    graph = import_torch(Scaled(), (2, 3))
    (constant,) = [n for n in graph if n.kind == "constant"]
    assert not constant.op.known
    with pytest.raises(ModelError, match="computed from buffers"):
        run(graph, Scaled(), np.zeros((2, 3), np.float32))


def test_arithmetic_on_a_parameter_runs_as_nodes_and_counts_the_parameter_once():
    """Swin V2 multiplies by ``clamp(logit_scale).exp()`` and zeroes the key third of a copy
    of its qkv bias in place: the parameters become values (``expand`` nodes reading them)
    and the arithmetic nodes of its own, so the engine computes what the layers read, and
    the analysis still counts each stored parameter once."""
    import numpy as np

    from dnnlens.engine import run

    class CosineScaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.logit_scale = nn.Parameter(torch.full((2, 1), 0.5))
            self.qkv = nn.Linear(3, 2)

        def forward(self, x):
            bias = self.qkv.bias.clone()
            bias[1:2].zero_()
            y = F.linear(x, self.qkv.weight, bias)
            return y * torch.clamp(self.logit_scale, max=0.2).exp()

    torch.manual_seed(0)
    model = CosineScaled().eval()
    graph = import_torch(model, (2, 3))
    assert not unknown_ops(graph)
    assert {"expand", "where", "fc", "add", "clamp", "exp", "mul"} <= {n.kind for n in graph}
    totals = analyze(model, (2, 3)).totals
    assert (totals.weights, totals.params) == (8, 10)  # weights 3*2 + 2*1, bias 2: once each
    x = torch.randn(2, 3)
    with torch.no_grad():
        truth = model(x).numpy()
    for engine in ("reference", "compiled"):
        ours = run(graph, model, x.numpy(), engine=engine).logits
        np.testing.assert_allclose(ours, truth, rtol=1e-6, atol=1e-7, err_msg=engine)


def test_arithmetic_on_a_transposed_parameter_is_refused_by_the_engine():
    """A value cannot say that its parameter is stored transposed: the product of ``2 * W.t()``
    is counted as ``W`` but marked computed, and the engine refuses it rather than run the
    stored values."""
    import numpy as np

    from dnnlens.engine import run

    class Doubled(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(2, 3))

        def forward(self, x):
            return x @ (self.w.t() * 2)

    graph = import_torch(Doubled(), (4, 3))
    computed = {p.name: p.computed for n in graph for p in n.params.values() if p.computed}
    assert computed == {"w": "mul"}
    with pytest.raises(ModelError, match=r"parameter 'w' as the forward changes it \(mul\)"):
        run(graph, Doubled(), np.zeros((4, 3), np.float32))


def test_import_inside_inference_mode_decomposes_as_outside():
    """Under torch.inference_mode() PyTorch hands composite operators (linear, softmax,
    adaptive_avg_pool2d) to the tracer whole; the importer traces as outside it, so a user's
    ``with torch.inference_mode():`` gives no unknown operators and the same MACs.
    Hand count at batch 2: conv 2 x (4 x 6 x 6) x (3 x 3 x 3) = 7,776; fc 2 x 2 x 4 = 16."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2), nn.Softmax(-1)
    ).eval()
    with torch.inference_mode():
        graph = import_torch(model, (2, 3, 8, 8))
    assert not [node for node in graph if node.kind == "unknown"]
    assert analyze(graph).totals.macs == 7_776 + 16
