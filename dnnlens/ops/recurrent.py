"""Recurrent layers: ``nn.RNN``, ``nn.LSTM``, ``nn.GRU`` (layers, bidirectional, batch_first,
LSTM projections) and their cells ``nn.RNNCell``, ``nn.LSTMCell``, ``nn.GRUCell``.

Shape contract (PyTorch's): a sequence is ``(N, T, E)`` with ``batch_first``, else
``(T, N, E)``, or ``(T, E)`` unbatched; the output is ``(..., D * H_out)`` with ``D`` = 2 when
bidirectional and ``H_out`` = ``proj_size`` if set, else ``hidden_size``. A cell takes one time
step ``(N, E)`` (or ``(E,)``) and returns ``(N, H)``. A ``PackedSequence`` input counts by
its data ``(sum of lengths, E)``: every step of every sequence, no padding. The final states ``h_n`` (and ``c_n``)
and a cell's new ``c`` are further outputs: the importer shows them as ``state`` rows that
re-label the recurrent node's result (they cost nothing more; see :class:`RecurrentState`).

Counted per time step, for each layer ``l`` and direction, with ``G`` gates (RNN 1, GRU 3,
LSTM 4), ``in_l`` = E for the first layer and ``D * H_out`` after it:

* **MACs** = the gate matrix products, ``G*H*in_l + G*H*H_out`` per step and sequence, plus
  the projection ``H*H_out`` of an LSTM with ``proj_size``; times ``N * T``. The element-wise
  gate products (``f*c + i*g``, ``o*tanh(c)``, GRU's ``r*(W_hn h)``, ``(1-z)*n + z*h``) are
  element-wise operations: 0 MACs, as for every other model (docs/units.md). Bias additions
  do not count.
* **values moved** = per layer and direction: its input sequence read (``N*T*in_l``), the
  previous hidden state read at every step and the new one written (``2*N*T*H_out``; the
  written states are the layer's output), an LSTM's cell state read and written at every step
  (``2*N*T*H``); plus every weight once (biases excluded, as everywhere) and the final states
  ``h_n`` (and ``c_n``) written once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from dnnlens.errors import ShapeError
from dnnlens.shapes import Shape
from dnnlens.ops.base import Op, register, weight_count

#: Gate matrices per mode (rows of ``weight_ih`` are ``GATES * hidden_size``).
GATES: dict[str, int] = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}


@register
@dataclass(frozen=True)
class Recurrent(Op):
    """One recurrent module (all its layers and directions) or one cell step.

    Parameters come by their PyTorch names as roles (``weight_ih_l0``, ``weight_hh_l0``,
    ``bias_ih_l0``, ``weight_hr_l0``, ``..._reverse``; for a cell ``weight_ih``, ...); roles
    starting with ``bias`` count as biases.
    """

    KIND: ClassVar[str] = "recurrent"
    mode: str = "lstm"  # rnn_tanh, rnn_relu, gru, lstm
    hidden_size: int = 1
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    proj_size: int = 0
    cell: bool = False  # an nn.*Cell: one time step
    packed_batch: int = 0  # > 0: the input is a PackedSequence's data (rows, E) of N sequences

    @property
    def kind(self) -> str:
        name = {"rnn_tanh": "rnn", "rnn_relu": "rnn"}.get(self.mode, self.mode)
        return f"{name}_cell" if self.cell else name

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def hidden_out(self) -> int:
        return self.proj_size or self.hidden_size

    # --- shapes -----------------------------------------------------------------------
    def sequence(self, x: Shape) -> tuple[int, int, int]:
        """``(N, T, E)`` of the input, whatever its layout (a cell has ``T`` = 1)."""
        if self.cell:
            if len(x) not in (1, 2):
                raise ShapeError(f"a {self.kind} takes (N, E) or (E,), got {tuple(x)}")
            return (x[0] if len(x) == 2 else 1), 1, x[-1]
        if len(x) == 2:
            return 1, x[0], x[1]
        if len(x) != 3:
            raise ShapeError(f"{self.kind} takes (N, T, E), (T, N, E) or (T, E), got {tuple(x)}")
        n, t = (x[0], x[1]) if self.batch_first else (x[1], x[0])
        return n, t, x[2]

    def role(self, what: str, layer: int, reverse: bool) -> str:
        if self.cell:
            return what
        return f"{what}_l{layer}{'_reverse' if reverse else ''}"

    def output_shape(self, input_shapes, params):
        x = tuple(input_shapes[0])
        _, _, features = self.sequence(x)
        gates = GATES.get(self.mode)
        if gates is None:
            raise ShapeError(f"unknown recurrent mode {self.mode!r}")
        weight_ih = params.get(self.role("weight_ih", 0, False))
        if weight_ih is None:
            raise ShapeError(f"{self.kind} has no input weight")
        if tuple(weight_ih) != (gates * self.hidden_size, features):
            raise ShapeError(f"input {x} has {features} features but {self.kind} expects "
                             f"weight_ih {(gates * self.hidden_size, features)}, got "
                             f"{tuple(weight_ih)}")
        if self.cell:
            return (*x[:-1], self.hidden_size)
        return (*x[:-1], self.directions * self.hidden_out)

    # --- counts -----------------------------------------------------------------------
    def layer_inputs(self, features: int) -> list[int]:
        """Input features of each layer: E, then D * H_out."""
        return [features] + [self.directions * self.hidden_out] * (self.num_layers - 1)

    def macs(self, input_shapes, output_shape, params):
        n, t, features = self.sequence(tuple(input_shapes[0]))
        gates, hidden, out = GATES[self.mode], self.hidden_size, self.hidden_out
        per_step = 0
        for width in self.layer_inputs(features):
            per_step += gates * hidden * (width + out)  # W_ih x_t and W_hh h_(t-1)
            if self.proj_size:
                per_step += hidden * out  # h_t = W_hr (o * tanh(c_t))
        return n * t * self.directions * per_step

    def values_moved(self, input_shapes, output_shape, params):
        n, t, features = self.sequence(tuple(input_shapes[0]))
        hidden, out = self.hidden_size, self.hidden_out
        lstm = self.mode == "lstm"
        moved = 0
        for width in self.layer_inputs(features):
            step = width + 2 * out + (2 * hidden if lstm else 0)
            moved += self.directions * n * t * step
        weights = weight_count(params)
        if self.cell:
            return moved + weights  # the new h (and c) are the step's outputs, counted above
        sequences = self.packed_batch or n
        final = self.num_layers * self.directions * sequences * (out + (hidden if lstm else 0))
        return moved + weights + final

    def descriptor(self, input_shapes, params):
        """(input features, hidden size, layers, directions)."""
        _, _, features = self.sequence(tuple(input_shapes[0]))
        return (features, self.hidden_size, self.num_layers, self.directions)


@register
@dataclass(frozen=True)
class RecurrentState(Op):
    """A further output of a recurrent node (``h_n``, ``c_n``, a cell's new ``c``): a label on
    values the recurrent node already computed and wrote, so it moves nothing itself."""

    KIND: ClassVar[str] = "state"
    IS_VIEW: ClassVar[bool] = True
    which: str = "h_n"
    shape: tuple[int, ...] = ()

    def output_shape(self, input_shapes: Sequence[Shape], params: Mapping[str, Shape]) -> Shape:
        return tuple(self.shape)
