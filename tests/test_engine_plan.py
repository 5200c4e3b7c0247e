"""The engine's plan: batch norms folded into the conv or fc before them (checked against
PyTorch's conv then batch norm, in float64, on random shapes), the IR left as written."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dnnlens import engine
from dnnlens.ir import Graph, Node, Param
from dnnlens.ops import Conv, Linear, Norm


def conv_bn_graph(
    cin: int, cout: int, k: int, groups: int, stride: int, pad: int, size: int
) -> Graph:
    conv = Conv(stride=(stride, stride), padding=((pad, pad), (pad, pad)), groups=groups)
    x = (1, cin, size, size)
    weight = (cout, cin // groups, k, k)
    out = conv.output_shape([x], {"weight": weight})
    nodes = [
        Node(
            "conv",
            conv,
            ["input"],
            [x],
            out,
            {"weight": Param("conv.weight", weight), "bias": Param("conv.bias", (cout,))},
        ),
        Node(
            "bn",
            Norm(eps=1e-3, stats=("bn.mean", "bn.var")),
            ["conv"],
            [out],
            out,
            {"weight": Param("bn.weight", (cout,)), "bias": Param("bn.bias", (cout,))},
        ),
    ]
    return Graph(nodes, {"input": x}, ["bn"])


@settings(max_examples=25, deadline=None)
@given(
    groups=st.sampled_from([1, 2]),
    per_group_in=st.integers(1, 3),
    per_group_out=st.integers(1, 3),
    k=st.integers(1, 3),
    stride=st.integers(1, 2),
    pad=st.integers(0, 1),
    size=st.integers(3, 6),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_folded_conv_and_batch_norm_equal_pytorchs_conv_then_batch_norm(
    groups, per_group_in, per_group_out, k, stride, pad, size, batch, seed
):
    cin, cout = groups * per_group_in, groups * per_group_out
    graph = conv_bn_graph(cin, cout, k, groups, stride, pad, size)
    rng = np.random.default_rng(seed)
    weights = {
        "conv.weight": rng.standard_normal((cout, cin // groups, k, k)),
        "conv.bias": rng.standard_normal(cout),
        "bn.weight": rng.uniform(0.5, 2, cout),
        "bn.bias": rng.standard_normal(cout),
        "bn.mean": rng.standard_normal(cout),
        "bn.var": rng.uniform(0.1, 3, cout),
    }
    x = rng.standard_normal((batch, cin, size, size))
    plan = engine.prepare(graph, weights, "reference")
    assert [step.folded.name for step in plan.steps] == ["bn"]  # one step: conv with bn in it
    ours = plan.run(x).outputs["bn"]
    t = {name: torch.from_numpy(value) for name, value in weights.items()}
    truth = F.batch_norm(
        F.conv2d(torch.from_numpy(x), t["conv.weight"], t["conv.bias"], stride, pad, 1, groups),
        t["bn.mean"],
        t["bn.var"],
        t["bn.weight"],
        t["bn.bias"],
        False,
        0.0,
        1e-3,
    ).numpy()
    np.testing.assert_allclose(ours, truth, rtol=1e-10, atol=1e-10)
    assert [node.kind for node in graph] == ["conv", "batchnorm"]  # the IR as written


def test_a_conv_output_read_twice_keeps_its_batch_norm_separate():
    graph = conv_bn_graph(2, 2, 1, 1, 1, 0, 4)
    other = Node(
        "fc",
        Linear(),
        ["conv"],
        [(1, 2, 4, 4)],
        (1, 2, 4, 3),
        {"weight": Param("fc.weight", (3, 4))},
    )
    graph.nodes.append(other)
    graph.outputs.append("fc")
    steps = engine.plan(graph)
    assert all(step.folded is None for step in steps)
    assert [step.nodes[0].name for step in steps] == ["conv", "bn", "fc"]
