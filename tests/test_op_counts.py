"""Hand-derived counts and shapes for each operator, through the whole path (trace on meta ->
IR -> analysis). The arithmetic is in the comments; nothing here comes from our own output."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnnlens.analysis import analyze


def rows_of(model: nn.Module, shape=None, **kw):
    result = analyze(model, shape, **kw)
    return result, [r for r in result.rows]


def only(rows, kind):
    found = [r for r in rows if r.type == kind]
    assert len(found) == 1, [(r.name, r.type) for r in rows]
    return found[0]


class Fn(nn.Module):
    """A module whose forward is a given function (for functional calls)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def test_conv_stride_and_padding():
    # (32 + 2*1 - 3) // 2 + 1 = 16; MACs = N*Cout*Ho*Wo*Cin*K*K = 1*8*16*16*3*3*3 = 55,296
    _, rows = rows_of(nn.Conv2d(3, 8, 3, stride=2, padding=1), (1, 3, 32, 32))
    row = only(rows, "conv")
    assert row.output_shape == (1, 8, 16, 16)
    assert row.macs == 55_296
    assert (row.weights, row.biases) == (8 * 3 * 3 * 3, 8)  # 216 weights, 8 biases
    assert row.descriptor == (3, 3, 3, 8)  # (Kw, Kh, Cin, Cout)


def test_conv_dilation():
    # reach = 2*(3-1)+1 = 5; (20 + 2 - 5) // 1 + 1 = 18; MACs = 6*18*18*4*9 = 69,984
    _, rows = rows_of(nn.Conv2d(4, 6, 3, dilation=2, padding=1), (1, 4, 20, 20))
    row = only(rows, "conv")
    assert row.output_shape == (1, 6, 18, 18)
    assert row.macs == 69_984


def test_depthwise_conv():
    # groups = channels: each output sees 1 input channel; MACs = 16*10*10*1*9 = 14,400
    _, rows = rows_of(nn.Conv2d(16, 16, 3, padding=1, groups=16), (1, 16, 10, 10))
    row = only(rows, "conv")
    assert row.output_shape == (1, 16, 10, 10)
    assert row.macs == 14_400
    assert row.weights == 16 * 1 * 3 * 3  # 144


def test_conv_same_padding_1d_and_3d():
    # Conv1d 'same', k=5: length stays 50; MACs = 2*8*50*4*5 = 16,000
    _, rows = rows_of(nn.Conv1d(4, 8, 5, padding="same"), (2, 4, 50))
    assert only(rows, "conv").output_shape == (2, 8, 50)
    assert only(rows, "conv").macs == 16_000
    # Conv3d k=3, no padding: 6 -> 4 in each dimension; MACs = 1*5*4*4*4*2*27 = 17,280
    _, rows = rows_of(nn.Conv3d(2, 5, 3), (1, 2, 6, 6, 6))
    assert only(rows, "conv").output_shape == (1, 5, 4, 4, 4)
    assert only(rows, "conv").macs == 17_280


def test_conv_transpose_stride_2():
    # Ho = (7-1)*2 - 2*1 + (4-1) + 1 = 14; every input value is scattered through the kernel:
    # MACs = N*Cin*H*W*Cout*K*K = 1*8*7*7*4*4*4 = 25,088
    _, rows = rows_of(nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1), (1, 8, 7, 7))
    row = only(rows, "convtranspose")
    assert row.output_shape == (1, 4, 14, 14)
    assert row.macs == 25_088
    assert row.weights == 8 * 4 * 4 * 4  # weight (Cin, Cout, K, K) = 512


def test_linear_on_three_dimensional_input():
    # [8, 3, 512] @ W^T (512 -> 256): MACs = 8*3*512*256 = 3,145,728
    _, rows = rows_of(nn.Linear(512, 256), (8, 3, 512))
    row = only(rows, "fc")
    assert row.output_shape == (8, 3, 256)
    assert row.macs == 3_145_728
    assert (row.weights, row.biases) == (131_072, 256)
    # values moved: input 8*3*512 + weights 131,072 + output 8*3*256 = 149,504
    assert row.values_moved == 12_288 + 131_072 + 6_144


def test_functional_linear_and_matmul():
    w = nn.Parameter(torch.zeros(7, 6))

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = w

        def forward(self, a, b):
            # matmul (2,5,6) @ (6,7) -> (2,5,7): 2*5*7*6 = 420 MACs
            # F.linear (2,5,6) with w (7,6) -> (2,5,7): another 420 MACs
            return torch.matmul(a, b) + F.linear(a, self.w)

    result = analyze(M(), example_inputs=(torch.zeros(2, 5, 6), torch.zeros(6, 7)))
    assert result.totals.macs == 840
    assert result.totals.weights == 42  # the functional weight is a parameter, not an input
    assert set(result.graph.inputs) == {"input0", "input1"}


def test_q_at_k_transpose():
    # (2,4,10,16) @ (2,4,16,10) -> (2,4,10,10): 2*4*10*10*16 = 12,800 MACs
    result = analyze(
        Fn(lambda q, k: q @ k.transpose(-2, -1)),
        example_inputs=(torch.zeros(2, 4, 10, 16), torch.zeros(2, 4, 10, 16)),
    )
    assert result.totals.macs == 12_800
    assert result.rows[-1].output_shape == (2, 4, 10, 10)


def test_sdpa_is_one_attention_node():
    # q k^T: 2*4*10*12*16 = 15,360; scores @ v: 2*4*10*12*8 = 7,680; total 23,040
    q, k, v = torch.zeros(2, 4, 10, 16), torch.zeros(2, 4, 12, 16), torch.zeros(2, 4, 12, 8)
    result = analyze(Fn(F.scaled_dot_product_attention), example_inputs=(q, k, v))
    row = only(result.rows, "attention")
    assert row.output_shape == (2, 4, 10, 8)
    assert row.macs == 23_040
    # fused: reads q, k, v and writes the output, never the 10x12 scores
    assert row.values_moved == 1280 + 1536 + 768 + 640


@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_attention(need_weights):
    # E=16, 4 heads of 4, batch 2, length 5.
    # in-projections 3 * 2*5*16*16 = 7,680; q k^T 2*4*5*5*4 = 800; attn @ v 800;
    # out-projection 2*5*16*16 = 2,560; total 11,840
    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, t):
            return self.mha(t, t, t, need_weights=need_weights)[0]

    result = analyze(SelfAttention(), (2, 5, 16))
    assert result.totals.macs == 11_840
    assert result.totals.weights == 3 * 16 * 16 + 16 * 16  # in_proj_weight + out_proj.weight
    assert result.totals.biases == 3 * 16 + 16
    assert not result.warnings


def test_embedding_is_a_lookup():
    # (2,12) indices into a (1000, 64) table -> (2,12,64); 0 MACs, 64,000 weights
    result = analyze(nn.Embedding(1000, 64), example_inputs=torch.zeros(2, 12, dtype=torch.long))
    row = only(result.rows, "embedding")
    assert row.output_shape == (2, 12, 64)
    assert row.macs == 0 and row.weights == 64_000
    # 24 indices read, 24 rows of 64 read, 24*64 written = 24 + 1536 + 1536
    assert row.values_moved == 3_096


def test_module_called_three_times():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(10, 10)

        def forward(self, x):
            return self.fc(self.fc(self.fc(x)))

    result = analyze(Tied(), (1, 10))
    assert [r.name for r in result.rows] == ["fc", "fc#2", "fc#3"]
    assert result.totals.macs == 3 * 10 * 10  # MACs at every call: 300
    assert (result.totals.weights, result.totals.biases) == (100, 10)  # parameters once
    assert [r.weights for r in result.rows] == [100, 100, 100]  # read at every call


def test_batch_1_vs_4():
    from dnnlens.models import Net

    one = analyze(Net(), (1, 1, 28, 28))
    four = analyze(Net(), (1, 1, 28, 28), batch=4)
    assert four.batch == 4 and four.rows[0].input_shape == (4, 1, 28, 28)
    assert four.totals.macs == 4 * 338_112
    assert four.totals.weights == one.totals.weights == 103_812
    # conv1 at batch 4: activations per image, weights once: 4*(784 + 3136) + 100 = 15,780
    assert four.rows[0].values_moved == 15_780
    # fc1: 4*(392 + 256) + 100,352 = 102,944
    assert four.rows[7].values_moved == 102_944


def test_norms_pooling_activations_softmax_dropout_flatten():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.GELU(),
        nn.GroupNorm(2, 8),
        nn.SiLU(),
        nn.AvgPool2d(2),
        nn.Hardswish(),
        nn.MaxPool2d(3, 1, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.LayerNorm(8),
        nn.Sigmoid(),
        nn.Softmax(dim=1),
    )
    result = analyze(model, (2, 3, 10, 10))
    kinds = [r.type for r in result.rows]
    assert kinds == [
        "conv",
        "batchnorm",
        "gelu",
        "groupnorm",
        "silu",
        "avgpool",
        "hardswish",
        "maxpool",
        "adaptiveavgpool",
        "flatten",
        "dropout",
        "layernorm",
        "sigmoid",
        "softmax",
    ]
    shapes = [r.output_shape for r in result.rows]
    assert shapes[0] == (2, 8, 8, 8) and shapes[5] == (2, 8, 4, 4) and shapes[8] == (2, 8, 1, 1)
    assert shapes[-1] == (2, 8)
    # only the conv multiplies: 2*8*8*8*3*9 = 27,648
    assert result.totals.macs == 27_648
    # conv 216 + 8, BN 8 + 8, GN 8 + 8, LN 8 + 8 (scale counts as weights, shift as bias)
    assert (result.totals.weights, result.totals.biases) == (216 + 24, 8 + 24)
    bn = result.rows[1]
    # BN reads x, writes y, reads scale (8) and its running mean and variance (8 + 8)
    assert bn.values_moved == 2 * 1024 + 8 + 16
    # flatten and dropout are views: nothing moved
    assert result.rows[9].values_moved == 0 and result.rows[10].values_moved == 0


def test_permute_cat_add_mul_reshape():
    def f(x, y):
        z = torch.cat([x, y], dim=1)  # (2, 6, 4)
        z = z.permute(0, 2, 1).reshape(2, 24)  # (2, 4, 6) copied then viewed
        return z * 2 + z

    result = analyze(Fn(f), example_inputs=(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)))
    kinds = [r.type for r in result.rows]
    assert kinds[0] == "concat" and "permute" in kinds and "mul" in kinds and "add" in kinds
    assert result.rows[-1].output_shape == (2, 24)
    assert result.totals.macs == 0
    assert only(result.rows, "concat").values_moved == 2 * 24 + 48  # read 2x24, write 48


def test_parameters_used_directly_are_params_not_inputs():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls = nn.Parameter(torch.zeros(1, 1, 8))
            self.pos = nn.Parameter(torch.zeros(1, 5, 8))

        def forward(self, x):  # x (N, 4, 8) -> (N, 5, 8)
            return torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos

    result = analyze(Tokens(), (3, 4, 8))
    assert list(result.graph.inputs) == ["input"]
    assert result.totals.weights == 8 + 40
    assert result.rows[-1].output_shape == (3, 5, 8)


def test_unknown_operator_is_listed_not_silent():
    result = analyze(Fn(lambda x: torch.cumprod(x, dim=1)), (2, 7))
    row = only(result.rows, "unknown")
    assert row.output_shape == (2, 7)
    assert result.warnings and "aten.cumprod" in result.warnings[0]
    assert "warning:" in str(result)


def test_attention_inside_multihead_attention_is_one_fused_node():
    # vit-style self-attention: SDPA called from F.multi_head_attention_forward is still one
    # attention row (2*4*5*5*(4+4) = 1,600 MACs), not its math decomposition.
    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, t):
            return self.mha(t, t, t, need_weights=False)[0]

    result = analyze(SelfAttention(), (2, 5, 16))
    assert only(result.rows, "attention").macs == 1_600
    assert not [r for r in result.rows if r.type in ("softmax", "matmul")]
    assert F.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention
