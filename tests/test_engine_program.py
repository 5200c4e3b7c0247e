"""Small batches as one compiled call (dnnlens.program) against PyTorch in float64: the course
network and networks of other shapes, a network with a step the program cannot compile (run
between its segments), and the input check the program makes inside its compiled code.

The first program for a set of shapes compiles for seconds (once per machine: it is cached on
disk); hence the slow mark."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from dnnlens import engine
from dnnlens.errors import DataError
from dnnlens.importers.torch import import_torch
from dnnlens.models import Net
from dnnlens.program import PROGRAM_AFTER_RUNS, Program, Segment

pytestmark = pytest.mark.slow


def torch_truth(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The model's output in float64 on the same (float32) input."""
    double = copy.deepcopy(model).double()
    with torch.inference_mode():
        return double(torch.from_numpy(x).double()).numpy()


def programmed(model: nn.Module, shape: tuple[int, ...], seed: int) -> tuple[engine.Plan, Program]:
    """A plan for ``model`` at input ``shape``, run until it has built its program (each run
    on fresh inputs checked against PyTorch), and that program."""
    torch.manual_seed(seed)
    model = model.eval()
    graph = import_torch(model, (1, *shape[1:]))
    plan = engine.prepare(graph, model)
    rng = np.random.default_rng(seed)
    for _ in range(PROGRAM_AFTER_RUNS + 2):
        x = rng.standard_normal(shape).astype(np.float32)
        got = plan.run(x).logits
        np.testing.assert_allclose(got, torch_truth(model, x), rtol=1e-4, atol=1e-4)
    program = plan._programs.get((shape,))
    assert program is not None, "no program was built for a small batch run again and again"
    return plan, program


class ConvNet(nn.Module):
    """Shapes the course network does not have: 3 input channels, 3x3 and 4x2 kernels, a
    3-wide pool with stride 2, an fc without a ReLU before the last one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 5, (4, 2))
        self.fc1 = nn.Linear(5 * 2 * 4, 17)
        self.fc2 = nn.Linear(17, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)  # (N, 6, 9, 10)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 3, 2)  # (N, 5, 2, 4)
        return self.fc2(self.fc1(x.flatten(1)))


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(20, 33)
        self.fc2 = nn.Linear(33, 16)
        self.fc3 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class WithGelu(nn.Module):
    """The course network with a GELU after fc1: a step with no kernel launch of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.pool(torch.relu(n.conv1(x)))
        x = n.pool(torch.relu(n.conv2(x)))
        return n.fc2(nn.functional.gelu(n.fc1(x.flatten(1))))


class ThreeConvs(nn.Module):
    """Three fused convs in a row, each of its own geometry: padding, a width dilation, a
    height stride, a 3-wide pool with stride 2, input rows the next conv never reads (conv3
    reads 5 of conv2's 7 pooled rows)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 5, 3, padding=1)
        self.conv2 = nn.Conv2d(5, 6, (5, 3), padding=(2, 0), dilation=(1, 2))
        self.conv3 = nn.Conv2d(6, 3, 3, stride=(2, 1))
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = nn.functional.max_pool2d
        x = pool(torch.relu(self.conv1(x)), 2)  # (N, 5, 15, 13)
        x = pool(torch.relu(self.conv2(x)), 3, 2)  # (N, 6, 7, 4)
        x = pool(torch.relu(self.conv3(x)), 2)  # (N, 3, 1, 1)
        return self.fc(x.flatten(1))


class TwoOutputs(nn.Module):
    """The course network that also returns conv1's pooled output: that value must leave the
    lanes, so conv1 and conv2 are not strung together."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Net()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.net
        first = n.pool(torch.relu(n.conv1(x)))
        x = n.pool(torch.relu(n.conv2(first)))
        return n.fc2(torch.relu(n.fc1(x.flatten(1)))), first


def chained(program: Program) -> list[int]:
    """How many fused convs each chain of the program strings together."""
    return [
        len(piece.chain)
        for part in program.parts
        if isinstance(part, Segment)
        for piece in part.pieces
        if piece.chain is not None
    ]


@pytest.mark.parametrize("batch", [16, 37])  # one whole block; two and a partial one
def test_batched_course_network_keeps_the_images_in_the_lanes(batch):
    """A batch of the course network: conv1 and conv2 strung together (conv1's output never
    leaves the lanes), against PyTorch."""
    plan, program = programmed(Net(), (batch, 1, 28, 28), seed=batch)
    assert program.calls == 1 and chained(program) == [2]


def test_three_fused_convs_of_different_shapes_string_together():
    _, program = programmed(ThreeConvs(), (35, 2, 30, 26), seed=5)
    assert chained(program) == [3]


def test_a_large_batch_with_nothing_to_string_together_keeps_the_general_path():
    model = TwoOutputs().eval()
    graph = import_torch(model, (1, 1, 28, 28))
    plan = engine.prepare(graph, model)
    x = np.random.default_rng(2).standard_normal((20, 1, 28, 28)).astype(np.float32)
    double = copy.deepcopy(model).double()
    with torch.inference_mode():
        logits, first = (t.numpy() for t in double(torch.from_numpy(x).double()))
    for _ in range(PROGRAM_AFTER_RUNS + 2):
        outputs = list(plan.run(x).outputs.values())
        np.testing.assert_allclose(outputs[0], logits, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(outputs[1], first, rtol=1e-4, atol=1e-4)
    assert plan._programs.get((x.shape,)) is None


@pytest.mark.parametrize("batch", [1, 3])
def test_course_network_runs_as_one_compiled_call(batch):
    plan, program = programmed(Net(), (batch, 1, 28, 28), seed=batch)
    assert program.calls == 1 and isinstance(program.whole, Segment)
    assert [p.launch is not None for p in program.whole.pieces] == [True, True, False, True, True]


@pytest.mark.parametrize(
    "model, shape",
    [(ConvNet(), (3, 3, 18, 20)), (Mlp(), (2, 20)), (Mlp(), (1, 20))],
    ids=["convnet-batch3", "mlp-batch2", "mlp-batch1"],
)
def test_other_networks_run_as_one_compiled_call(model, shape):
    _, program = programmed(model, shape, seed=7)
    assert program.calls == 1


def test_a_step_without_a_kernel_launch_runs_between_two_compiled_segments():
    _, program = programmed(WithGelu(), (2, 1, 28, 28), seed=3)
    kinds = [type(part).__name__ for part in program.parts]
    assert kinds == ["Segment", "Piece", "Segment"]  # convs + fc1 | gelu | fc2


def test_logits_are_fresh_arrays_and_odd_inputs_still_fit():
    model = Net()
    plan, _ = programmed(model, (1, 1, 28, 28), seed=11)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, 1, 28, 28)).astype(np.float32)
    b = rng.standard_normal((1, 1, 28, 28)).astype(np.float32)
    first = plan.run(a).logits
    kept = first.copy()
    second = plan.run(b).logits
    np.testing.assert_array_equal(first, kept)  # the second call did not write into it
    np.testing.assert_allclose(second, torch_truth(model, b), rtol=1e-4, atol=1e-4)
    # a strided view (not contiguous) and a float64 input: the same answers as PyTorch's
    wide = rng.standard_normal((1, 1, 28, 56)).astype(np.float32)[:, :, :, ::2]
    np.testing.assert_allclose(
        plan.run(wide).logits, torch_truth(model, np.ascontiguousarray(wide)), atol=1e-4
    )
    np.testing.assert_allclose(
        plan.run(a.astype(np.float64)).logits, torch_truth(model, a), atol=1e-4
    )


def test_a_nan_in_the_input_is_refused_by_the_programmed_path_too():
    plan, program = programmed(Net(), (1, 1, 28, 28), seed=5)
    assert program.whole is not None and program.whole.checked  # the check is compiled in
    x = np.zeros((1, 1, 28, 28), np.float32)
    x[0, 0, 3, 4] = np.nan
    with pytest.raises(DataError, match="1 NaN or Inf"):
        plan.run(x)
    x[0, 0, 3, 4] = np.inf
    with pytest.raises(DataError, match="NaN or Inf"):
        plan.run(x)


class Residual(nn.Module):
    """fc -> relu -> fc with a batch norm folded in, plus the input (an add: no kernel launch),
    and two graph outputs: segments whose inputs and outputs are read across the add."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(12, 12), nn.Linear(12, 12), nn.Linear(12, 4)
        self.bn = nn.BatchNorm1d(12)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.bn(self.fc2(torch.relu(self.fc1(x)))) + x
        return self.fc3(torch.relu(h)), h


def test_residual_network_with_two_outputs_matches_pytorch():
    torch.manual_seed(2)
    model = Residual().eval()
    plan = engine.prepare(import_torch(model, (1, 12)), model)
    rng = np.random.default_rng(2)
    for _ in range(PROGRAM_AFTER_RUNS + 2):
        x = rng.standard_normal((2, 12)).astype(np.float32)
        got = list(plan.run(x).outputs.values())
        with torch.inference_mode():
            truth = copy.deepcopy(model).double()(torch.from_numpy(x).double())
        for ours, theirs in zip(got, truth, strict=True):
            np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-5)
    program = plan._programs[((2, 12),)]
    assert program is not None
    assert [type(part).__name__ for part in program.parts][0] == "Segment"
    assert program.calls > 1  # the add runs between compiled segments
