"""Recurrent layers (nn.RNN / LSTM / GRU and their cells) against hand-derived closed forms and
PyTorch's FlopCounterMode (FLOPs = 2 x MACs).

Per time step and sequence, a layer with G gates (RNN 1, GRU 3, LSTM 4), hidden size H, output
size H_out (proj_size or H) and input width in_l (E, then D * H_out) does G*H*(in_l + H_out)
MACs, plus H*H_out for an LSTM projection; the total is that times N * T * D.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dnnlens import analyze
from dnnlens.errors import ShapeError
from dnnlens.ops import Recurrent

pytestmark = [
    pytest.mark.filterwarnings("ignore:TF32 acceleration"),
    pytest.mark.filterwarnings("ignore:LSTM with projections"),
]


def _macs(module: nn.Module, x: torch.Tensor) -> int:
    return analyze(module, example_inputs=(x,)).totals.macs


def _flop_counter_macs(module: nn.Module, x: torch.Tensor) -> int:
    """PyTorch's count on the real module. oneDNN's fused LSTM kernel is invisible to it, so
    the default (matrix-product) implementation is forced."""
    with (
        torch.no_grad(),
        torch.backends.mkldnn.flags(enabled=False),
        FlopCounterMode(display=False) as counter,
    ):
        module(x)
    return counter.get_total_flops() // 2


CASES = [
    # (module, input, closed form)
    # LSTM 1 layer, E=10, H=20, batch_first (N=3, T=5): 3*5 * 4*20*(10+20) = 36,000
    (lambda: nn.LSTM(10, 20, batch_first=True), (3, 5, 10), 3 * 5 * 4 * 20 * (10 + 20)),
    # LSTM 2 layers, bidirectional, (T=5, N=3): per step and direction
    # 4*20*(10+20) + 4*20*(40+20) = 2,400 + 4,800 = 7,200; times N*T*D = 3*5*2 -> 216,000
    (
        lambda: nn.LSTM(10, 20, num_layers=2, bidirectional=True),
        (5, 3, 10),
        3 * 5 * 2 * (4 * 20 * 30 + 4 * 20 * 60),
    ),
    # LSTM 3 layers, batch_first, bidirectional, E=6, H=4 (N=2, T=7):
    # 4*4*(6+4) + 2 * 4*4*(8+4) = 160 + 384 = 544; times 2*7*2 = 28 -> 15,232
    (
        lambda: nn.LSTM(6, 4, num_layers=3, batch_first=True, bidirectional=True),
        (2, 7, 6),
        2 * 7 * 2 * (4 * 4 * 10 + 2 * 4 * 4 * 12),
    ),
    # LSTM 2 layers with proj_size 5, E=10, H=20: layer 0 4*20*(10+5) + 20*5 = 1,300,
    # layer 1 (input 5) 4*20*(5+5) + 20*5 = 900; times N*T = 3*5 -> 33,000
    (lambda: nn.LSTM(10, 20, num_layers=2, proj_size=5), (5, 3, 10), 3 * 5 * (1300 + 900)),
    # GRU 3 layers, batch_first, E=8, H=16 (N=2, T=6): 3*16*(8+16) + 2 * 3*16*(16+16)
    # = 1,152 + 3,072 = 4,224; times 12 -> 50,688
    (lambda: nn.GRU(8, 16, num_layers=3, batch_first=True), (2, 6, 8), 12 * 4224),
    # GRU 2 layers, bidirectional, E=8, H=16 (T=4, N=3): 3*16*(8+16) + 3*16*(32+16)
    # = 1,152 + 2,304 = 3,456; times 3*4*2 = 24 -> 82,944
    (lambda: nn.GRU(8, 16, num_layers=2, bidirectional=True), (4, 3, 8), 24 * 3456),
    # RNN (ReLU), E=4, H=6 (T=7, N=2): 6*(4+6) = 60 per step; times 14 -> 840
    (lambda: nn.RNN(4, 6, nonlinearity="relu"), (7, 2, 4), 14 * 60),
    # Unbatched LSTM (T=5, E=10), H=20: 5 * 4*20*30 = 12,000
    (lambda: nn.LSTM(10, 20), (5, 10), 5 * 4 * 20 * 30),
    # Cells, one step of N=3: LSTMCell 3*4*20*(10+20) = 7,200; GRUCell 3*3*20*30 = 5,400;
    # RNNCell 3*20*30 = 1,800
    (lambda: nn.LSTMCell(10, 20), (3, 10), 7200),
    (lambda: nn.GRUCell(10, 20), (3, 10), 5400),
    (lambda: nn.RNNCell(10, 20), (3, 10), 1800),
]


@pytest.mark.parametrize("make, shape, expected", CASES)
def test_macs_equal_the_closed_form_and_pytorchs_flop_counter(make, shape, expected):
    torch.manual_seed(0)
    module = make()
    x = torch.randn(shape)
    assert _macs(module, x) == expected
    assert _flop_counter_macs(module, x) == expected


@pytest.mark.parametrize("make, shape, expected", CASES)
def test_weights_and_biases_are_every_parameter(make, shape, expected):
    module = make()
    totals = analyze(module, example_inputs=(torch.randn(shape),)).totals
    biases = sum(p.numel() for name, p in module.named_parameters() if name.startswith("bias"))
    assert totals.biases == biases
    assert totals.weights + totals.biases == sum(p.numel() for p in module.parameters())
    assert totals.params == sum(p.numel() for p in module.parameters())


def test_values_moved_include_the_recurrent_state():
    # LSTM E=10, H=20, one layer, N=3, T=5. Per step and sequence: x_t read (10), h_(t-1)
    # read and h_t written (2*20), c_(t-1) read and c_t written (2*20) = 90 -> 3*5*90 = 1,350;
    # weights 4*20*10 + 4*20*20 = 2,400 (biases excluded); final h_n and c_n written
    # 3*(20+20) = 120. Total 3,870.
    result = analyze(nn.LSTM(10, 20, batch_first=True), example_inputs=(torch.randn(3, 5, 10),))
    lstm = result.rows[0]
    assert lstm.type == "lstm"
    assert lstm.values_moved == 1350 + 2400 + 120
    # GRU: no cell state. 3*5*(10 + 2*20) + 3*20*10 + 3*20*20 + 3*20 = 750 + 1,800 + 60
    gru = analyze(nn.GRU(10, 20, batch_first=True), example_inputs=(torch.randn(3, 5, 10),))
    assert gru.rows[0].values_moved == 750 + 1800 + 60


def test_final_states_are_rows_that_later_layers_can_read():
    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(8, 16, num_layers=2, batch_first=True)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            _, (h, _) = self.lstm(x)
            return self.head(h[-1])  # the last layer's final state

    result = analyze(Classifier(), example_inputs=(torch.randn(4, 9, 8),))
    names = [row.name for row in result.rows]
    assert names[:3] == ["lstm", "lstm.h_n", "lstm.c_n"]
    head = result.graph.node("head")
    assert head.input_shapes == [(4, 16)]
    assert result.rows[1].output_shape == (2, 4, 16)  # (layers * D, N, H)
    assert result.warnings == []


def test_sequence_shapes_follow_batch_first():
    for batch_first, shape in ((True, (2, 7, 5)), (False, (7, 2, 5))):
        result = analyze(
            nn.GRU(5, 6, bidirectional=True, batch_first=batch_first),
            example_inputs=(torch.randn(shape),),
        )
        assert result.rows[0].output_shape == (*shape[:2], 12)
        # N*T*D * 3*6*(5+6) = 2*7*2 * 198 = 5,544
        assert result.totals.macs == 5544


@pytest.mark.parametrize("make, shape, expected", CASES)
def test_every_output_shape_is_pytorchs(make, shape, expected):
    """On meta the recurrent kernels are not unrolled: their outputs come from our shape
    rule, so the rows are checked against the real module's outputs here."""
    torch.manual_seed(0)
    module = make().eval()
    x = torch.randn(shape)
    with torch.no_grad():
        real = module(x)
    flat = (
        [real[0], *real[1]]
        if isinstance(real, tuple) and isinstance(real[1], tuple)
        else list(real)
        if isinstance(real, tuple)
        else [real]
    )
    result = analyze(module, example_inputs=(x,))
    assert [row.output_shape for row in result.rows] == [tuple(t.shape) for t in flat]


def test_the_shape_rule_refuses_a_wrong_feature_count():
    op = Recurrent(mode="lstm", hidden_size=20)
    with pytest.raises(ShapeError, match="features"):
        op.output_shape([(3, 5, 11)], {"weight_ih_l0": (80, 10), "weight_hh_l0": (80, 20)})


class _Packed(nn.Module):
    """A recurrent layer on a packed batch of sequences of different lengths."""

    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True)
        out, _ = self.rnn(packed)
        return nn.utils.rnn.pad_packed_sequence(out, batch_first=True)[0]


@pytest.mark.parametrize(
    "make, per_row",
    [
        # bidirectional GRU, E=16, H=32: 2 * 3*32*(16+32) = 9,216 per packed row
        (lambda: nn.GRU(16, 32, batch_first=True, bidirectional=True), 2 * 3 * 32 * 48),
        # 2-layer LSTM, E=16, H=32: 4*32*(16+32) + 4*32*(32+32) = 6,144 + 8,192 = 14,336
        (lambda: nn.LSTM(16, 32, num_layers=2, batch_first=True), 4 * 32 * 48 + 4 * 32 * 64),
    ],
)
def test_packed_sequences_count_every_real_step_and_no_padding(make, per_row):
    torch.manual_seed(0)
    module = _Packed(make()).eval()
    x, lengths = torch.randn(2, 10, 16), [10, 7]  # 17 real steps of 20 padded ones
    result = analyze(module, example_inputs=(x, lengths))
    recurrent = result.rows[1]
    assert recurrent.type in ("gru", "lstm")
    assert recurrent.output_shape[0] == 17
    assert result.totals.macs == 17 * per_row
    with (
        torch.no_grad(),
        torch.backends.mkldnn.flags(enabled=False),
        FlopCounterMode(display=False) as counter,
    ):
        module(x, lengths)
    assert counter.get_total_flops() // 2 == 17 * per_row
