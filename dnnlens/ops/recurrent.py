"""Recurrent layers: ``nn.RNN``, ``nn.LSTM``, ``nn.GRU`` (layers, bidirectional, batch_first,
LSTM projections) and their cells ``nn.RNNCell``, ``nn.LSTMCell``, ``nn.GRUCell``.

Shape contract (PyTorch's): a sequence is ``(N, T, E)`` with ``batch_first``, else
``(T, N, E)``, or ``(T, E)`` unbatched; the output is ``(..., D * H_out)`` with ``D`` = 2 when
bidirectional and ``H_out`` = ``proj_size`` if set, else ``hidden_size``. A cell takes one time
step ``(N, E)`` (or ``(E,)``) and returns ``(N, H)``. A ``PackedSequence`` input counts by
its data ``(sum of lengths, E)``: every step of every sequence, no padding. The final states
``h_n`` (and ``c_n``) and a cell's new ``c`` are further outputs: the importer shows them as
``state`` rows that re-label the recurrent node's result (they cost nothing more; see
:class:`RecurrentState`).

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

import numpy as np

from dnnlens.errors import ModelError, ShapeError
from dnnlens.ops.base import (
    Names,
    Op,
    compiled_kernel,
    contiguous,
    register,
    torch_tensors,
    weight_count,
)
from dnnlens.shapes import Shape

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
    NAMES: ClassVar[Names] = Names(
        modules={name: None for name in ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")}
    )
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
            raise ShapeError(
                f"input {x} has {features} features but {self.kind} expects "
                f"weight_ih {(gates * self.hidden_size, features)}, got "
                f"{tuple(weight_ih)}"
            )
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

    # --- kernels ----------------------------------------------------------------------
    def kernel_gap(self, input_shapes, params):
        if self.packed_batch:
            return (
                "a PackedSequence input (sequences of several lengths) has no kernel: "
                "pad the sequences to one length"
            )
        if self.mode not in GATES:
            return f"no kernel for recurrent mode {self.mode!r}"
        return None

    def reference(self, inputs, weights):
        return self.run(inputs, weights, compiled=False)[0]

    def compiled(self, inputs, weights):
        return self.run(inputs, weights, compiled=True)[0]

    def run(
        self,
        inputs: Sequence[np.ndarray],
        weights: Mapping[str, np.ndarray],
        compiled: bool = True,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The output sequence and the final states (``h_n``, ``c_n``; a cell's ``c``), in
        PyTorch's layouts. ``inputs``: the sequence, then ``h0`` (and ``c0``) if given;
        ``weights`` by their PyTorch names (roles). Layer by layer, direction by direction,
        :func:`recurrent_direction_reference` or its compiled twin runs the time steps."""
        x = np.asarray(inputs[0])
        n, t, features = self.sequence(x.shape)
        self.output_shape([x.shape], {r: np.shape(w) for r, w in weights.items()})
        dtype = np.result_type(x.dtype, np.float32)
        seq = self._batch_first(x).astype(dtype)  # (N, T, E)
        hidden, out_width, d = self.hidden_size, self.hidden_out, self.directions
        layers = 1 if self.cell else self.num_layers
        h0, c0 = self._initial_states(inputs[1:], n, layers * d, dtype)
        h_n = np.empty((layers * d, n, out_width), dtype)
        c_n = np.empty((layers * d, n, hidden), dtype)
        loop = (
            compiled_kernel(recurrent_direction_reference)
            if compiled
            else recurrent_direction_reference
        )
        mode = MODE_CODES[self.mode]
        for layer in range(layers):
            out = np.empty((n, t, d * out_width), dtype)
            for direction in range(d):
                reverse = direction == 1
                w_ih, w_hh, b_ih, b_hh, w_hr = self._layer_weights(weights, layer, reverse, dtype)
                index = layer * d + direction
                h, c = h0[index].copy(), c0[index].copy()
                loop(
                    contiguous(seq),
                    h,
                    c,
                    w_ih,
                    w_hh,
                    b_ih,
                    b_hh,
                    w_hr,
                    mode,
                    reverse,
                    out,
                    direction * out_width,
                )
                h_n[index], c_n[index] = h, c
            seq = out
        return self._layouts(seq, h_n, c_n, x.shape)

    def _batch_first(self, x: np.ndarray) -> np.ndarray:
        if self.cell:
            return x.reshape(-1, 1, x.shape[-1])
        if x.ndim == 2:
            return x[None]
        return x if self.batch_first else x.transpose(1, 0, 2)

    def _initial_states(
        self, given: Sequence[np.ndarray], n: int, count: int, dtype
    ) -> tuple[np.ndarray, np.ndarray]:
        """``h0`` ``(layers*directions, N, H_out)`` and ``c0`` ``(..., N, H)``: given, else 0."""
        h0 = np.zeros((count, n, self.hidden_out), dtype)
        c0 = np.zeros((count, n, self.hidden_size), dtype)
        for i, state in enumerate(given[:2]):
            target = h0 if i == 0 else c0
            target[...] = np.asarray(state).reshape(target.shape)
        return h0, c0

    def _layer_weights(
        self, weights, layer: int, reverse: bool, dtype
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``w_ih, w_hh, b_ih, b_hh, w_hr`` of one layer and direction (zero biases when the
        module has none, an empty ``w_hr`` without projections)."""
        rows = GATES[self.mode] * self.hidden_size

        def get(what: str, shape: tuple[int, ...]) -> np.ndarray:
            value = weights.get(self.role(what, layer, reverse))
            return contiguous(
                np.zeros(shape, dtype) if value is None else np.asarray(value), dtype
            )

        return (
            get("weight_ih", (rows, 0)),
            get("weight_hh", (rows, self.hidden_out)),
            get("bias_ih", (rows,)),
            get("bias_hh", (rows,)),
            get("weight_hr", (0, 0)) if self.proj_size else np.zeros((0, 0), dtype),
        )

    def _layouts(
        self, out: np.ndarray, h_n: np.ndarray, c_n: np.ndarray, shape: Shape
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Output and states back in the input's layout (unbatched: no N)."""
        if self.cell:
            lead = tuple(shape[:-1])
            h = h_n[0].reshape(*lead, -1)
            return h, {"h": h, "c": c_n[0].reshape(*lead, -1)}
        if len(shape) == 2:
            return out[0], {"h_n": h_n[:, 0], "c_n": c_n[:, 0]}
        seq = out if self.batch_first else out.transpose(1, 0, 2)
        return np.ascontiguousarray(seq), {"h_n": h_n, "c_n": c_n}

    def torch_oracle(self, inputs, weights):
        return self.torch_run(inputs, weights)[0]

    def torch_run(self, inputs, weights):
        """Output and final states from ``torch.nn.LSTM`` (GRU, RNN, or the cell) built from
        these weights, in float64."""
        import torch

        tensors = torch_tensors(*inputs)
        x = tensors[0].double()
        states = [s.double() for s in tensors[1:]]
        module = self.torch_module(weights)
        with torch.no_grad():
            if self.cell:
                given = None if not states else tuple(states) if self.mode == "lstm" else states[0]
                result = module(x, given)
                if self.mode == "lstm":
                    return result[0], {"h": result[0], "c": result[1]}
                return result, {"h": result}
            given = None if not states else tuple(states) if self.mode == "lstm" else states[0]
            out, final = module(x, given)
        if self.mode == "lstm":
            return out, {"h_n": final[0], "c_n": final[1]}
        return out, {"h_n": final}

    def torch_module(self, weights):
        """The PyTorch module with these weights (float64)."""
        import torch
        from torch import nn

        first = np.asarray(weights[self.role("weight_ih", 0, False)])
        features = first.shape[1]
        bias = any(r.startswith("bias") for r in weights)
        module: nn.Module
        if self.cell:
            cell = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}.get(self.mode, nn.RNNCell)
            nonlinearity = {"nonlinearity": self.mode[4:]} if cell is nn.RNNCell else {}
            module = cell(features, self.hidden_size, bias=bias, **nonlinearity)
        else:
            layers = {"lstm": nn.LSTM, "gru": nn.GRU}.get(self.mode, nn.RNN)
            extra: dict[str, str | int] = (
                {"nonlinearity": self.mode[4:]} if layers is nn.RNN else {}
            )
            if self.proj_size:
                extra["proj_size"] = self.proj_size
            module = layers(
                features,
                self.hidden_size,
                num_layers=self.num_layers,
                bias=bias,
                batch_first=self.batch_first,
                bidirectional=self.bidirectional,
                **extra,
            )
        module = module.double()
        module.load_state_dict(
            {r: torch.from_numpy(np.array(w, np.float64)) for r, w in weights.items()}
        )
        return module.eval()


#: Mode numbers the compiled loop branches on.
MODE_CODES = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3}


def recurrent_direction_reference(
    seq, h, c, w_ih, w_hh, b_ih, b_hh, w_hr, mode, reverse, out, column
):  # pragma: no cover - also compiled
    """One layer in one direction over every time step, in place: ``seq`` ``(N, T, E)``,
    state ``h`` ``(N, H_out)`` and ``c`` ``(N, H)`` (LSTM), written to
    ``out[:, :, column:column + H_out]``. Gate rows in PyTorch's order (LSTM i, f, g, o;
    GRU r, z, n). Every product is an explicit loop; the readable reference and, through
    :func:`compiled_kernel`, the compiled kernel."""
    n_seq, steps, features = seq.shape
    rows, width = w_hh.shape
    hidden = c.shape[1]
    gi = np.empty(rows, seq.dtype)
    gh = np.empty(rows, seq.dtype)
    cell_out = np.empty(hidden, seq.dtype)
    for n in range(n_seq):
        for step in range(steps):
            t = steps - 1 - step if reverse else step
            for r in range(rows):  # W_ih x_t + b_ih and W_hh h + b_hh
                acc = b_ih[r]
                for e in range(features):
                    acc += w_ih[r, e] * seq[n, t, e]
                gi[r] = acc
                acc = b_hh[r]
                for k in range(width):
                    acc += w_hh[r, k] * h[n, k]
                gh[r] = acc
            if mode == 2:  # LSTM
                for j in range(hidden):
                    i = 1.0 / (1.0 + np.exp(-(gi[j] + gh[j])))
                    f = 1.0 / (1.0 + np.exp(-(gi[hidden + j] + gh[hidden + j])))
                    g = np.tanh(gi[2 * hidden + j] + gh[2 * hidden + j])
                    o = 1.0 / (1.0 + np.exp(-(gi[3 * hidden + j] + gh[3 * hidden + j])))
                    c[n, j] = f * c[n, j] + i * g
                    cell_out[j] = o * np.tanh(c[n, j])
                if w_hr.shape[0] > 0:  # projection h = W_hr (o * tanh(c))
                    for k in range(width):
                        acc = 0.0
                        for j in range(hidden):
                            acc += w_hr[k, j] * cell_out[j]
                        h[n, k] = acc
                else:
                    for j in range(hidden):
                        h[n, j] = cell_out[j]
            elif mode == 3:  # GRU
                for j in range(hidden):
                    r_gate = 1.0 / (1.0 + np.exp(-(gi[j] + gh[j])))
                    z = 1.0 / (1.0 + np.exp(-(gi[hidden + j] + gh[hidden + j])))
                    new = np.tanh(gi[2 * hidden + j] + r_gate * gh[2 * hidden + j])
                    h[n, j] = (1.0 - z) * new + z * h[n, j]
            else:  # Elman RNN, tanh or relu
                for j in range(hidden):
                    pre = gi[j] + gh[j]
                    h[n, j] = np.tanh(pre) if mode == 0 else max(pre, 0.0)
            for k in range(width):
                out[n, t, column + k] = h[n, k]


#: Why a state node that lost its recurrent layer cannot run.
_NO_LAYER = "a recurrent state without its recurrent layer cannot be computed"


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

    #: The recurrent layer whose state this is (set by the importer): the kernels compute the
    #: state from that layer's operands (the engine takes it from the layer's own run).
    recurrent: Recurrent | None = None

    def kernel_gap(self, input_shapes, params):
        if self.recurrent is None:
            return _NO_LAYER
        return self.recurrent.kernel_gap(input_shapes, params)

    def _layer(self) -> Recurrent:
        if self.recurrent is None:
            raise ModelError(_NO_LAYER)
        return self.recurrent

    def reference(self, inputs, weights):
        """``inputs``/``weights``: the recurrent layer's operands, not this node's."""
        return self._layer().run(inputs, weights, compiled=False)[1][self.which]

    def compiled(self, inputs, weights):
        return self._layer().run(inputs, weights, compiled=True)[1][self.which]

    def torch_oracle(self, inputs, weights):
        return self._layer().torch_run(inputs, weights)[1][self.which]
