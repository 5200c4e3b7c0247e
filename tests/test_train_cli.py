"""`dnnlens train` on the command line: Ctrl-C says what was saved and the exact command
that continues, and `--resume` alone finishes the run's own epoch count.

Truth: an uninterrupted run with the same seed (training is seeded and single-threaded, so a
resumed run reaches bit-identical weights; tests/test_train.py checks the API the same way).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import torch

from dnnlens import training
from dnnlens.cli import main
from dnnlens.training import train


def interrupt_after(monkeypatch: pytest.MonkeyPatch, epochs: int) -> None:
    """Ctrl-C in the middle of epoch ``epochs + 1``."""
    real = training._run_epoch
    calls = {"n": 0}

    def run_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > epochs:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "_run_epoch", run_epoch)


def same_weights(a: Path, b: Path) -> bool:
    left, right = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def test_ctrl_c_says_how_to_resume_and_resume_finishes_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run.pth"
    with monkeypatch.context() as patch:
        interrupt_after(patch, epochs=1)
        code = main(["train", "--epochs", "3", "--out", str(run), "--seed", "5"])
    err = capsys.readouterr().err
    assert code == 130
    assert f"{run} holds the weights after epoch 1 of 3" in err
    command = err.rsplit("continue with: ", 1)[1].strip()
    assert command == f"dnnlens train --resume {shlex.quote(str(run))}"

    # The printed command, as given: no --epochs, no --seed; it finishes the run's 3 epochs.
    assert main(shlex.split(command)[1:]) == 0
    assert "after 3 epochs" in capsys.readouterr().out
    straight = train(epochs=3, out=tmp_path / "straight.pth", seed=5, progress=False)
    assert straight.epochs == 3
    assert same_weights(run, tmp_path / "straight.pth")


def test_ctrl_c_before_the_first_epoch_says_nothing_was_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    interrupt_after(monkeypatch, epochs=0)
    assert main(["train", "--epochs", "2", "--out", str(tmp_path / "net.pth")]) == 130
    assert "nothing saved" in capsys.readouterr().err
    assert not (tmp_path / "net.pth").exists()
