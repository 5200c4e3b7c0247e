"""The training-step analysis against independent truths: PyTorch's FlopCounterMode over a real
forward + backward (FLOPs / 2 = MACs), closed forms where FlopCounterMode is wrong, hand-derived
counts, what ``saved_tensors_hooks`` records on a real step, and the CPU allocator's own record
of a real step (torch.profiler allocation events)."""

from __future__ import annotations

import functools
import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

from dnnlens.errors import ModelError, UsageError
from dnnlens.models import Net
from dnnlens.training_step import analyze_training

torch.set_num_threads(1)


def real_step_counts(model: nn.Module, x: torch.Tensor) -> FlopCounterMode:
    """FlopCounterMode over a real CPU forward + cross-entropy + backward, training mode."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        F.cross_entropy(out, torch.zeros(x.shape[0], dtype=torch.long)).backward()
    return counter


def macs_of(counter: FlopCounterMode, key: str = "Global") -> int:
    return sum(counter.get_flop_counts().get(key, {}).values()) // 2


def ours_in(step, module: str) -> int:
    """Forward + backward MACs of the rows of ``module`` and of the modules inside it."""
    return sum(
        r.forward_macs + r.backward_macs
        for r in step.backward
        if r.module == module or r.module.startswith(module + ".")
    )


# ---------------------------------------------------------------------------------------------
# MACs against FlopCounterMode


def test_course_network_total_and_every_module_equal_flop_counter():
    model = Net()
    step = analyze_training(model, (4, 1, 28, 28))
    counter = real_step_counts(model, torch.randn(4, 1, 28, 28))
    assert step.forward_macs + step.backward_macs == macs_of(counter)
    for name in ("conv1", "conv2", "fc1", "fc2"):
        assert ours_in(step, name) == macs_of(counter, f"Net.{name}"), name
    # The first layer's input is data: no input gradient is computed (autograd skips it).
    assert step.row("conv1").input_grad_macs == 0
    assert step.row("conv2").input_grad_macs == step.row("conv2").forward_macs


def test_resnet18_total_and_every_conv_and_fc_equal_flop_counter():
    model = torchvision.models.resnet18(weights=None)
    x = torch.randn(2, 3, 64, 64)
    step = analyze_training(model, tuple(x.shape))
    inputs: dict[str, torch.Size] = {}
    for name, module in model.named_modules():
        module.register_forward_pre_hook(
            lambda m, args, name=name: inputs.update({name: args[0].shape}) and None
        )
    counter = real_step_counts(model, x)
    assert step.forward_macs + step.backward_macs == macs_of(counter)
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        if "downsample" in name:
            # FlopCounterMode's module tracker keeps a shortcut "entered" in backward from the
            # gradient of its output until the gradient of its input, while the engine runs
            # the whole main branch in between: it charges that branch to the shortcut too
            # (732,168,192 MACs here for a 1x1 conv of 38,535,168). The truth for a branch is
            # FlopCounterMode over the module alone (its input needs a gradient here).
            inner = torch.randn(inputs[name], requires_grad=True)
            with FlopCounterMode(display=False) as alone:
                module(inner).sum().backward()
            assert ours_in(step, name) == macs_of(alone), name
        else:
            assert ours_in(step, name) == macs_of(counter, f"ResNet.{name}"), name


def test_frozen_backbone_costs_no_backward():
    model = torchvision.models.resnet18(weights=None)
    for p in model.parameters():
        p.requires_grad_(False)
    model.fc = nn.Linear(512, 10)  # the only trainable layer
    x = torch.randn(2, 3, 64, 64)
    step = analyze_training(model, tuple(x.shape))
    assert step.forward_macs + step.backward_macs == macs_of(real_step_counts(model, x))
    # Hand-derived: only fc's weight gradient runs, dW = N x out x in = 2 x 10 x 512 = 10,240;
    # its input comes from the frozen backbone and needs no gradient: dX = 0.
    assert step.row("fc").weight_grad_macs == 10_240
    assert step.row("fc").input_grad_macs == 0
    assert step.backward_macs == 10_240
    # Nothing before fc is saved for backward: only fc's input (2 x 512 x 4 bytes) is kept.
    assert step.saved_bytes == 2 * 512 * 4 + step.row("(loss)").saved_bytes


def test_hand_derived_conv_and_fc_gradients_and_a_frozen_layer():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    )
    model[2].weight.requires_grad_(False)  # a frozen conv (its bias still trains)
    step = analyze_training(model, (2, 3, 8, 8))
    first, frozen, fc = step.row("0"), step.row("2"), step.row("4")
    # conv 3->8, 3x3, pad 1 on 8x8, batch 2: forward N*Cout*H*W*Cin*K*K = 2*8*8*8*3*9 = 27,648
    assert first.forward_macs == 27_648
    assert first.weight_grad_macs == 27_648  # dW visits every (output, tap) pair once
    assert first.input_grad_macs == 0  # its input is data
    # conv 8->4 frozen: forward 2*4*8*8*8*9 = 36,864; dX = 36,864 (conv 0 needs it); dW = 0
    assert frozen.forward_macs == 36_864
    assert frozen.input_grad_macs == 36_864
    assert frozen.weight_grad_macs == 0
    # fc 256->10 on 2 rows: forward 2*256*10 = 5,120; dX = dY W: 2*10*256 = 5,120;
    # dW = dY^T X: 10*2*256 = 5,120
    assert (fc.forward_macs, fc.input_grad_macs, fc.weight_grad_macs) == (5_120, 5_120, 5_120)


def test_depthwise_conv_against_the_closed_form_not_flop_counter():
    conv = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
    step = analyze_training(nn.Sequential(nn.Conv2d(3, 32, 1), conv), (1, 3, 56, 56))
    # forward: N*C*H*W*K*K (one input channel per group) = 1*32*56*56*9 = 903,168
    dw = step.row("1")
    assert dw.forward_macs == 903_168
    # dX and dW each visit every (output, tap) pair once: 2 x 903,168 = 1,806,336
    assert (dw.input_grad_macs, dw.weight_grad_macs) == (903_168, 903_168)
    x = torch.randn(1, 32, 56, 56, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        conv(x).sum().backward()
    backward = counter.get_flop_counts()["Global"][torch.ops.aten.convolution_backward] // 2
    # Measured here (torch 2.14.1): FlopCounterMode counts the weight gradient as a dense
    # 32->32 conv, groups x too much: 903,168 + 32 x 903,168 = 29,804,544.
    assert backward in (1_806_336, 29_804_544)


@settings(max_examples=30, deadline=None)
@given(
    cin=st.integers(1, 6),
    cout=st.integers(1, 6),
    k=st.integers(1, 4),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    transposed=st.booleans(),
    groups=st.sampled_from([1, 2]),
    size=st.integers(5, 9),
)
def test_any_conv_on_meta_equals_flop_counter_or_the_closed_form(
    cin, cout, k, stride, padding, dilation, transposed, groups, size
):
    """A conv after a trainable 1x1 conv (so it needs dX and dW), any stride, padding,
    dilation, transposed or not, against FlopCounterMode over the same step on meta; grouped
    ones against the closed form: dX = dW = the forward's MACs."""
    cin, cout = cin * groups, cout * groups
    kind = nn.ConvTranspose2d if transposed else nn.Conv2d
    extra = {"output_padding": stride - 1} if transposed and stride > dilation else {}

    def build() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(3, cin, 1),
            kind(cin, cout, k, stride, padding, dilation=dilation, groups=groups, **extra),
            nn.Flatten(),
        )

    with torch.device("meta"):
        model = build()
        x = torch.empty(2, 3, size, size)
    try:
        out = model(x)
    except RuntimeError:
        assume(False)  # the kernel does not fit the input
    assume(out.numel() > 0)
    step = analyze_training(model, (2, 3, size, size), loss_fn=lambda out: out.sum())
    conv = step.row("1")
    if groups == 1:
        with FlopCounterMode(display=False) as counter:
            model(x).sum().backward()
        assert step.forward_macs + step.backward_macs == macs_of(counter)
    assert conv.input_grad_macs == conv.weight_grad_macs == conv.forward_macs > 0


@pytest.mark.slow
def test_mobilenet_equals_flop_counter_minus_its_grouped_weight_gradient_overcount():
    model = torchvision.models.mobilenet_v2(weights=None)
    x = torch.randn(2, 3, 64, 64)
    step = analyze_training(model, tuple(x.shape))
    counter = real_step_counts(model, x)
    excess = 0  # FlopCounterMode counts a grouped conv's dW (groups - 1) x too often
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            dw = step.by_module()[name].weight_grad_macs
            assert dw == step.by_module()[name].forward_macs
            excess += (module.groups - 1) * dw
    assert excess > 0
    assert step.forward_macs + step.backward_macs == macs_of(counter) - excess


@pytest.mark.slow
def test_vit_b_16_attention_included_equals_flop_counter():
    model = torchvision.models.vit_b_16(weights=None)
    x = torch.randn(1, 3, 224, 224)
    step = analyze_training(model, tuple(x.shape))
    # FlopCounterMode has no formula for the CPU flash-attention kernel
    # (_scaled_dot_product_flash_attention_for_cpu): run attention as its math (bmm) path so
    # FlopCounterMode sees every product.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        counter = real_step_counts(model, x)
    assert step.forward_macs + step.backward_macs == macs_of(counter)
    layer = "encoder.layers.encoder_layer_5"
    assert ours_in(step, layer) == macs_of(counter, f"VisionTransformer.{layer}")
    # attention (12 heads x 197 x 197 x (64 + 64) per layer) is in it, backward = 2 x forward
    attention = [r for r in step.backward if r.type == "attention"]
    assert len(attention) == 12
    assert all(r.forward_macs == 12 * 197 * 197 * 128 for r in attention)
    assert all(r.input_grad_macs == 2 * r.forward_macs for r in attention)


def test_lstm_equals_flop_counter_when_the_importer_traces_it():
    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(16, 32, batch_first=True)
            self.fc = nn.Linear(32, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.lstm(x)[0][:, -1])

    model = Tagger()
    try:
        step = analyze_training(model, (2, 7, 16))
    except (ModelError, KeyError, RuntimeError) as exc:
        pytest.skip(f"the torch importer cannot trace nn.LSTM yet: {type(exc).__name__}")
    # On CPU nn.LSTM runs a fused kernel FlopCounterMode does not count; on meta it runs the
    # cell's products one by one, which it does.
    with torch.device("meta"):
        meta = Tagger()
    with FlopCounterMode(display=False) as counter:
        out = meta(torch.empty(2, 7, 16, device="meta"))
        F.cross_entropy(out, torch.zeros(2, dtype=torch.long, device="meta")).backward()
    assert step.forward_macs + step.backward_macs == macs_of(counter)


def test_checkpointing_recomputes_the_forward_of_the_blocks():
    model = torchvision.models.resnet18(weights=None)
    x = torch.randn(2, 3, 64, 64)
    plain = analyze_training(model, tuple(x.shape))
    ckpt = analyze_training(model, tuple(x.shape), checkpoint_depth=2)  # layer1.0 ... layer4.1
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    # What runs again is exactly the forward of the checkpointed blocks ...
    assert ckpt.recompute_macs == sum(
        r.forward_macs
        for r in plain.backward
        if r.module.split(".")[:2] in [b.split(".") for b in blocks]
    )
    assert ckpt.backward_macs == plain.backward_macs
    # ... and FlopCounterMode over a real checkpointed step sees the same total.
    real = torchvision.models.resnet18(weights=None)
    for name in blocks:
        block = real.get_submodule(name)
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    counter = real_step_counts(real, x)
    assert ckpt.forward_macs + ckpt.backward_macs + ckpt.recompute_macs == macs_of(counter)
    # The blocks keep only their inputs: less is alive after forward (here 1.93 MB against
    # 3.57 MB; the stem, not checkpointed, keeps the rest). The peak of a real checkpointed
    # step is checked against the CPU allocator below.
    assert ckpt.memory.activations < plain.memory.activations


def test_checkpointing_stops_recomputing_once_backward_has_what_it_needs():
    model = nn.Sequential(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)))
    step = analyze_training(model, (4, 16), checkpoint_depth=1)
    # The block re-runs up to its last saved tensor (the ReLU's result, the second linear's
    # input): the first linear again, 4 x 16 x 32 = 2,048 MACs, not the second (4 x 32 x 8).
    assert step.recompute_macs == 2_048
    real = nn.Sequential(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)))
    real[0].forward = functools.partial(checkpoint, real[0].forward, use_reentrant=False)
    counter = real_step_counts(real, torch.randn(4, 16))
    assert step.forward_macs + step.backward_macs + step.recompute_macs == macs_of(counter)


# ---------------------------------------------------------------------------------------------
# Memory against the real step


def saved_by_autograd(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the storages autograd saves on a real CPU forward + loss, as the pack hook of
    ``saved_tensors_hooks`` sees them; each storage once, parameters and buffers excluded."""
    model.train()
    state = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in state:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
        loss = F.cross_entropy(out, torch.zeros(x.shape[0], dtype=torch.long))
    del loss
    return sum(saved.values())


class ViewsAndInPlace(nn.Module):
    """A view saved by a linear layer, an in-place ReLU after a batch norm, a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn(self.conv(x)))
        y = y + torch.sigmoid(y)
        return self.fc(y.view(y.shape[0], -1))


def test_in_place_relu_leaves_the_batch_norm_its_backward():
    step = analyze_training(ViewsAndInPlace(), (3, 3, 8, 8))
    bn, relu = step.row("bn"), step.row("relu")
    # batch norm keeps its input, the conv output: 3 x 8 x 8 x 8 values x 4 bytes = 6,144 B
    # (+ its batch mean and inverse std, 8 values each: 64 B); the in-place ReLU keeps its
    # result, which is the batch norm's output storage: 6,144 B
    assert bn.saved_bytes == 6_144 + 64
    assert relu.saved_bytes == 6_144
    assert bn.backward_values_moved > 0 and relu.backward_values_moved > 0


class TinyEncoder(nn.Module):
    """A transformer encoder layer (attention through F.scaled_dot_product_attention) and a
    classifier on the first token."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            32, 4, dim_feedforward=64, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(x)[:, 0])


@pytest.mark.parametrize(
    "build, shape",
    [
        (Net, (4, 1, 28, 28)),
        (TinyEncoder, (2, 10, 32)),
        (functools.partial(torchvision.models.resnet18, weights=None), (2, 3, 64, 64)),
        (ViewsAndInPlace, (3, 3, 8, 8)),
    ],
    ids=["course-network", "transformer-layer", "resnet18", "views-and-in-place"],
)
def test_saved_bytes_equal_what_saved_tensors_hooks_records(build, shape):
    model = build()
    step = analyze_training(model, shape)
    assert step.saved_bytes == saved_by_autograd(model, torch.randn(shape))


def test_saved_bytes_in_bf16_equal_what_a_bf16_step_saves():
    model = Net()
    step = analyze_training(model, (4, 1, 28, 28), dtype="bf16")
    real = Net().to(torch.bfloat16)
    assert step.saved_bytes == saved_by_autograd(
        real, torch.randn(4, 1, 28, 28, dtype=torch.bfloat16)
    )


def allocator_peak(model: nn.Module, x: torch.Tensor, optimizer: str) -> int:
    """The peak bytes of the second of two real CPU training steps, from the CPU allocator's
    own record: with ``profile_memory`` PyTorch's CPU allocator reports every allocation and
    free (with its size) to the profiler; the running sum over the step, in time order, plus
    what is alive when the step starts (weights, buffers, optimizer state, the batch)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    model.train()
    params = list(model.parameters())
    opt = {
        "adam": lambda: torch.optim.Adam(params, lr=1e-3),
        "sgd": lambda: torch.optim.SGD(params, lr=0.01),
        "sgd-momentum": lambda: torch.optim.SGD(params, lr=0.01, momentum=0.9),
    }[optimizer]()
    target = torch.zeros(x.shape[0], dtype=torch.long)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        del loss
        opt.step()

    step()  # the first step creates the optimizer state
    opt.zero_grad(set_to_none=True)
    alive = [
        *params,
        *model.buffers(),
        x,
        target,
        *(v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)),
    ]
    start = sum(
        {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in alive}.values()
    )
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()

    def walk(events):
        for e in events:
            yield e
            yield from walk(e.children)

    events = [
        e
        for e in walk(prof.profiler.kineto_results.experimental_event_tree())
        if e.tag == _EventType.Allocation
    ]
    running = peak = 0
    for e in sorted(events, key=lambda e: e.start_time_ns):
        running += e.extra_fields.alloc_size
        peak = max(peak, running)
    return start + peak


def checkpointed_resnet18() -> nn.Module:
    """resnet18 whose eight residual blocks run under torch.utils.checkpoint."""
    model = torchvision.models.resnet18(weights=None)
    for name in [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]:
        block = model.get_submodule(name)
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    return model


RESNET18 = functools.partial(torchvision.models.resnet18, weights=None)


@pytest.mark.slow
@pytest.mark.parametrize(
    "build, shape, optimizer, depth",
    [
        (Net, (32, 1, 28, 28), "adam", None),  # what `dnnlens train` runs: Adam, batches of 32
        (Net, (32, 1, 28, 28), "sgd-momentum", None),
        (RESNET18, (2, 3, 224, 224), "adam", None),
        (RESNET18, (2, 3, 224, 224), "sgd", None),
        (checkpointed_resnet18, (2, 3, 224, 224), "sgd", 2),
    ],
    ids=[
        "course-adam",
        "course-sgd-momentum",
        "resnet18-adam",
        "resnet18-sgd",
        "resnet18-checkpointed-sgd",
    ],
)
def test_predicted_peak_within_15_percent_of_a_real_cpu_step(build, shape, optimizer, depth):
    model = build() if depth is None else RESNET18()
    predicted = analyze_training(
        model, shape, optimizer=optimizer, workspace="onednn", checkpoint_depth=depth
    )
    measured = allocator_peak(build() if depth else model, torch.randn(shape), optimizer)
    assert abs(predicted.memory.peak - measured) <= 0.15 * measured, (
        predicted.memory.peak,
        measured,
    )


def test_optimizer_state_and_gradients_match_a_real_optimizer():
    model = Net()
    trainable = sum(p.numel() for p in model.parameters())  # 105,866 values, 4 tensors x 2
    for name, per_value in (("sgd", 0), ("sgd-momentum", 4), ("adam", 8), ("adamw", 8)):
        memory = analyze_training(model, (2, 1, 28, 28), optimizer=name).memory
        assert memory.gradients == 4 * trainable
        # Adam keeps exp_avg and exp_avg_sq (fp32) and a 4-byte step count per tensor
        steps = 4 * 8 if name.startswith("adam") else 0
        assert memory.optimizer_state == per_value * trainable + steps, name
    # Mixed precision, fp32 master weights: fp16 weights and gradients (2 + 2 bytes), fp32
    # masters (4) and Adam state (8): the 16 bytes per parameter of the ZeRO paper.
    amp = analyze_training(model, (2, 1, 28, 28), optimizer="adam", amp=True).memory
    assert (amp.parameters, amp.gradients, amp.master_weights) == (
        2 * trainable,
        2 * trainable,
        4 * trainable,
    )
    assert amp.optimizer_state == 8 * trainable + 4 * 8


def test_bad_options_are_one_line_errors():
    with pytest.raises(UsageError, match="optimizer"):
        analyze_training(Net(), (1, 1, 28, 28), optimizer="lion")
    with pytest.raises(UsageError, match="int8"):
        analyze_training(Net(), (1, 1, 28, 28), dtype="int8")
    with pytest.raises(UsageError, match="checkpoint"):
        analyze_training(Net(), (1, 1, 28, 28), checkpoint_depth=5)
    frozen = Net().requires_grad_(False)
    with pytest.raises(ModelError, match="requires_grad"):
        analyze_training(frozen, (1, 1, 28, 28))


# ---------------------------------------------------------------------------------------------
# Interfaces


def test_cli_train_json_carries_the_backward_columns_and_memory(capsys):
    from dnnlens.cli import main

    assert (
        main(["analyze", "seed", "--train", "--batch", "4", "--optimizer", "sgd", "--json"]) == 0
    )
    doc = json.loads(capsys.readouterr().out)
    conv1 = next(layer for layer in doc["layers"] if layer["name"] == "conv1")
    # conv1 4x5x5 on 28x28, batch 4: 4*4*28*28*25 = 313,600 = its dW; no dX (data input)
    assert (conv1["weight_grad_macs"], conv1["input_grad_macs"]) == (313_600, 0)
    assert doc["training"]["memory"]["optimizer"] == "sgd"
    assert doc["training"]["memory"]["optimizer_state"] == 0


def test_cli_train_csv_has_the_backward_columns(tmp_path, capsys):
    import csv

    from dnnlens.cli import main

    path = tmp_path / "step.csv"
    assert main(["analyze", "seed", "--train", "--depth", "1", "--csv", str(path)]) == 0
    rows = {row["name"]: row for row in csv.DictReader(path.open())}
    # fc1 392 -> 256 at batch 1: dX = dY W = 256 x 392 = 100,352 MACs, dW the same
    assert (rows["fc1"]["input_grad_macs"], rows["fc1"]["weight_grad_macs"]) == (
        "100352",
        "100352",
    )
    assert "(loss)" in rows


def test_cli_train_table_and_bad_options(capsys):
    from dnnlens.cli import main

    assert main(["analyze", "seed", "--train", "--checkpoint-activations", "1"]) == 0
    out = capsys.readouterr().out
    assert "training memory" in out and "recompute" in out
    assert main(["analyze", "seed", "--train", "--device", "epyc9654"]) == 0
    assert "conv2 backward" in capsys.readouterr().out  # on the roofline of a training step
    assert main(["analyze", "seed", "--train", "--checkpoint-activations", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_report_has_a_training_section_and_its_roofline(tmp_path):
    import dnnlens
    from dnnlens.report import write_report

    step = dnnlens.analyze_training(Net(), (8, 1, 28, 28), optimizer="sgd-momentum")
    page = write_report(
        dnnlens.analyze(Net(), (8, 1, 28, 28)), tmp_path, "epyc9654", training=step
    ).read_text()
    assert "<h2>Training step</h2>" in page and "optimizer state (sgd-momentum)" in page
    assert (tmp_path / "roofline-training.svg").exists()
    # fc1 forward and backward both sit on the training roofline
    assert 'id="layer-point-' in (tmp_path / "roofline-training.svg").read_text()


def test_training_roofline_places_forward_and_backward_of_each_layer():
    from dnnlens.roofline import load_spec, training_roofline

    step = analyze_training(Net(), (8, 1, 28, 28))
    roof = training_roofline(step, load_spec("epyc9654"))
    names = [layer.name for layer in roof.layers]
    assert (
        names.index("fc1")
        < names.index("fc2")
        < names.index("fc2 backward")
        < names.index("fc1 backward")
    )  # backward runs the layers in reverse
    fc1 = roof.layers[names.index("fc1 backward")]
    # fc1 backward: dX + dW = 2 x 8 x 392 x 256 = 1,605,632 MACs
    assert fc1.macs == 1_605_632 and fc1.type == "fc backward"
