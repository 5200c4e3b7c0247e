"""Training: the loss really falls, runs are reproducible, interrupted runs resume to the same
weights, and the CLI commands work. Accuracies are computed here with plain torch."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dnnlens
import dnnlens.training as training
from dnnlens.cli import main
from dnnlens.data import Dataset, load_data
from dnnlens.errors import CheckpointError, DataError, UsageError
from dnnlens.models import Net, load_checkpoint
from dnnlens.training import evaluate, resume_path, train


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert list(wa) == list(wb)
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key  # bit-identical, not merely close


def torch_accuracy(net: torch.nn.Module, dataset: Dataset) -> float:
    with torch.no_grad():
        predicted = net(torch.from_numpy(dataset.images)).argmax(dim=1).numpy()
    return float((predicted == dataset.labels).mean())


def test_short_run_really_lowers_the_loss(tmp_path: Path) -> None:
    train_set = load_data("sample", "train")
    images, labels = torch.from_numpy(train_set.images), torch.from_numpy(train_set.labels)
    torch.manual_seed(0)
    with torch.no_grad():
        before = float(F.cross_entropy(Net()(images), labels))  # ~ln(10) = 2.30 untrained
    result = train(epochs=1, out=tmp_path / "net.pth", progress=False)
    with torch.no_grad():
        after = float(F.cross_entropy(result.net(images), labels))
    assert before > 2.0 and after < before / 3
    assert len(result.test_accuracy) == 1 and result.epochs == 1
    assert result.test_accuracy[0] == pytest.approx(
        torch_accuracy(result.net, load_data("sample", "test"))
    )


def test_sample_accuracy_reaches_94_percent(
    sample_checkpoint: Path, sample_test_data: Dataset
) -> None:
    net = load_checkpoint(sample_checkpoint)
    accuracy = torch_accuracy(net, sample_test_data)
    assert accuracy >= 0.94
    assert evaluate(net, sample_test_data, batch_size=333) == pytest.approx(accuracy)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path) -> None:
    train(epochs=1, out=tmp_path / "a.pth", seed=3, progress=False)
    train(epochs=1, out=tmp_path / "b.pth", seed=3, progress=False)
    train(epochs=1, out=tmp_path / "c.pth", seed=4, progress=False)
    assert_same_weights(tmp_path / "a.pth", tmp_path / "b.pth")
    assert not torch.equal(
        weights(tmp_path / "a.pth")["fc1.weight"], weights(tmp_path / "c.pth")["fc1.weight"]
    )


def test_training_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(epochs=1, out=tmp_path / "a.pth", seed=9, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_resume_reaches_the_uninterrupted_weights(tmp_path: Path) -> None:
    straight = train(epochs=3, out=tmp_path / "straight.pth", progress=False)
    train(epochs=2, out=tmp_path / "resumed.pth", progress=False)
    resumed = train(epochs=3, resume=tmp_path / "resumed.pth", progress=False)
    assert resumed.checkpoint == tmp_path / "resumed.pth"  # --out defaults to the resumed path
    assert_same_weights(tmp_path / "straight.pth", tmp_path / "resumed.pth")
    assert resumed.test_accuracy == straight.test_accuracy  # history carried across
    assert resumed.train_loss == straight.train_loss
    state = torch.load(resume_path(tmp_path / "resumed.pth"), weights_only=True)
    assert state["epoch"] == 3


class InterruptingF:
    """torch.nn.functional, except that cross_entropy raises Ctrl-C on its n-th call."""

    def __init__(self, calls_before_interrupt: int) -> None:
        self.left = calls_before_interrupt

    def __getattr__(self, name: str) -> Any:
        return getattr(F, name)

    def cross_entropy(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt
        return F.cross_entropy(*args, **kwargs)


def test_ctrl_c_mid_epoch_keeps_the_last_checkpoint_and_resumes_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 4,000 images in batches of 32: 125 training calls per epoch, then 1 call evaluating the
    # 1,000 test images in one batch; interrupt 60 batches into epoch 2.
    monkeypatch.setattr(training, "F", InterruptingF(125 + 1 + 60))
    with pytest.raises(KeyboardInterrupt):
        train(epochs=3, out=tmp_path / "run.pth", progress=False)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pth", "run.pth.resume"]
    train(epochs=1, out=tmp_path / "one.pth", progress=False)
    assert_same_weights(tmp_path / "run.pth", tmp_path / "one.pth")  # epoch 1, intact

    train(epochs=3, resume=tmp_path / "run.pth", progress=False)
    train(epochs=3, out=tmp_path / "three.pth", progress=False)
    assert_same_weights(tmp_path / "run.pth", tmp_path / "three.pth")


def test_resume_errors(tmp_path: Path) -> None:
    train(epochs=1, out=tmp_path / "run.pth", seed=2, progress=False)
    with pytest.raises(UsageError, match="--seed 2, not 5"):
        train(epochs=2, resume=tmp_path / "run.pth", seed=5, progress=False)
    with pytest.raises(UsageError, match="--data sample, not idx:"):
        train(data=f"idx:{tmp_path}", epochs=2, resume=tmp_path / "run.pth", progress=False)
    done = train(epochs=1, resume=tmp_path / "run.pth", progress=False)  # nothing left to do
    assert done.epochs == 1 and len(done.test_accuracy) == 1
    torch.save(Net().state_dict(), tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="no resume state"):
        train(epochs=2, resume=tmp_path / "foreign.pth", progress=False)
    resume_path(tmp_path / "foreign.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="corrupt resume state"):
        train(epochs=2, resume=tmp_path / "foreign.pth", progress=False)
    torch.save(Net().state_dict(), resume_path(tmp_path / "foreign.pth"))
    with pytest.raises(CheckpointError, match="not a dnnlens-resume-1 file"):
        train(epochs=2, resume=tmp_path / "foreign.pth", progress=False)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"epochs": 0}, "--epochs must be at least 1"),
        ({"seed": -1}, "--seed must be between"),
        ({"batch_size": 0}, "batch size"),
        ({"lr": 0.0}, "learning rate"),
    ],
)
def test_out_of_range_options(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        train(out=tmp_path / "x.pth", progress=False, **options)
    assert not (tmp_path / "x.pth").exists()


def test_unwritable_output_fails_before_training(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="cannot write here"):
        train(out=tmp_path / "file" / "net.pth", progress=False)
    with pytest.raises(CheckpointError, match="is a folder"):
        train(out=tmp_path, progress=False)


def test_labels_outside_the_ten_classes(tmp_path: Path) -> None:
    # IDX by the format's definition: 0, 0, type 0x08 (ubyte), ndim, big-endian dims, data.
    images = b"\x00\x00\x08\x03" + struct.pack(">III", 12, 28, 28) + bytes(12 * 28 * 28)
    labels = b"\x00\x00\x08\x01" + struct.pack(">I", 12) + bytes(range(12))  # 10, 11: no
    for prefix in ("train", "t10k"):
        (tmp_path / f"{prefix}-images-idx3-ubyte").write_bytes(images)
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(labels)
    with pytest.raises(DataError, match="labels run from 0 to 11"):
        train(data=f"idx:{tmp_path}", out=tmp_path / "x.pth", progress=False)


def test_package_level_train_stays_callable(tmp_path: Path) -> None:
    # The training module is dnnlens.training, so importing it never shadows dnnlens.train.
    result = dnnlens.train(epochs=1, out=tmp_path / "x.pth", progress=False)
    assert result.epochs == 1
    assert dnnlens.evaluate is evaluate


# ---- the command line ------------------------------------------------------------------------


def test_cli_train_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.pth"
    assert main(["train", "--epochs", "1", "--out", str(out)]) == 0
    assert main(["train", "--epochs", "2", "--resume", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "epoch 1/1: train loss" in printed and "epoch 2/2: train loss" in printed
    assert "test accuracy" in printed
    train(epochs=2, out=tmp_path / "api.pth", progress=False)
    assert_same_weights(out, tmp_path / "api.pth")


def test_cli_errors_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--epochs", "0", "--out", str(tmp_path / "x.pth")]) == 2
    assert capsys.readouterr().err == "error: --epochs must be at least 1, got 0\n"
    assert main(["train", "--data", "cifar", "--out", str(tmp_path / "x.pth")]) == 2
    assert capsys.readouterr().err.startswith("error: unknown data source 'cifar'")
    assert main(["train", "--resume", str(tmp_path / "none.pth")]) == 2
    assert "no resume state" in capsys.readouterr().err


def test_cli_demo_matches_the_library(
    tmp_path: Path, sample_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed
    # Same seed, same data, same epochs as the session fixture: the same weights, bit for bit.
    assert_same_weights(tmp_path / "demo" / "my_mnist_net.pth", sample_checkpoint)


def test_real_sigint_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    """A real Ctrl-C (SIGINT) to a running `dnnlens train`: exit 130, the checkpoint of the
    last complete epoch intact and no temporary file; resuming then matches a straight run."""
    import signal
    import subprocess
    import sys
    import time

    def as_from_a_shell() -> None:
        # A child inherits ignored and blocked signals from the test process, whatever an
        # earlier test left there; a user's shell starts dnnlens with SIGINT delivered.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    out = tmp_path / "net.pth"
    process = subprocess.Popen(
        [sys.executable, "-m", "dnnlens", "train", "--epochs", "40", "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_from_a_shell,
    )
    deadline = time.monotonic() + 120
    while not out.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, (
        f"exit {process.returncode}; checkpoint written before the signal: {out.exists()}; "
        f"{sorted(p.name for p in tmp_path.iterdir())}; stderr: {err[-500:]}"
    )
    assert err.rstrip().endswith(f"continue with: dnnlens train --resume {out}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.pth", "net.pth.resume"]
    done = torch.load(resume_path(out), weights_only=True)["epoch"]
    assert 1 <= done < 40
    load_checkpoint(out)  # loads and fits
    train(epochs=done + 1, resume=out, progress=False)
    train(epochs=done + 1, out=tmp_path / "straight" / "net.pth", progress=False)
    assert_same_weights(out, tmp_path / "straight" / "net.pth")


def test_cli_resume_keeps_the_runs_own_data(tmp_path: Path) -> None:
    """`train --resume` continues on the data the run used, without --data repeated."""
    sample = load_data("sample", "train")
    # IDX: 0, 0, type 0x08 (ubyte), ndim, big-endian dims, then the bytes (first 64 digits).
    pixels = np.rint((sample.images[:64, 0] + 1) / 2 * 255).astype(np.uint8)
    images = b"\x00\x00\x08\x03" + struct.pack(">III", 64, 28, 28) + pixels.tobytes()
    labels = (
        b"\x00\x00\x08\x01" + struct.pack(">I", 64) + sample.labels[:64].astype(np.uint8).tobytes()
    )
    folder = tmp_path / "idx"
    folder.mkdir()
    for prefix in ("train", "t10k"):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(images)
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(labels)
    out = tmp_path / "run.pth"
    assert main(["train", "--data", f"idx:{folder}", "--epochs", "1", "--out", str(out)]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    straight = train(data=f"idx:{folder}", epochs=2, out=tmp_path / "two.pth", progress=False)
    assert_same_weights(out, straight.checkpoint)
