"""dnnlens.models against the course notebook's Net (copied verbatim below) and torch itself."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dnnlens import models
from dnnlens.errors import CheckpointError
from dnnlens.models import Net, load_checkpoint, load_state_dict_file, save_checkpoint


class NotebookNet(nn.Module):
    """The course notebook's cell, verbatim (the independent truth)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 5, padding=2)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(4, 8, 5, padding=2)
        self.fc1 = nn.Linear(8 * 7 * 7, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 8 * 7 * 7)
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return x


def test_parameter_names_and_shapes_match_the_notebook() -> None:
    ours = {k: tuple(v.shape) for k, v in Net().state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in NotebookNet().state_dict().items()}
    assert list(ours) == list(theirs)  # same names, same order
    assert ours == theirs
    # conv1 4*1*5*5 + 4, conv2 8*4*5*5 + 8, fc1 256*392 + 256, fc2 10*256 + 10
    assert sum(p.numel() for p in Net().parameters()) == 104 + 808 + 100608 + 2570


def test_forward_equals_the_notebook_with_the_same_weights() -> None:
    theirs = NotebookNet()
    ours = Net()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize("batch", [1, 3])
def test_layer_output_shapes(batch: int) -> None:
    shapes: dict[str, tuple[int, ...]] = {}
    net = Net()
    for name in ("conv1", "conv2", "fc1", "fc2"):
        getattr(net, name).register_forward_hook(
            lambda module, inputs, output, name=name: shapes.__setitem__(name, output.shape)
        )
    out = net(torch.zeros(batch, 1, 28, 28))
    # padding 2 keeps 28 and 14 (28 + 2*2 - 5 + 1 = 28); each 2x2 pool halves: 28 -> 14 -> 7
    assert shapes == {
        "conv1": (batch, 4, 28, 28),
        "conv2": (batch, 8, 14, 14),
        "fc1": (batch, 256),
        "fc2": (batch, 10),
    }
    assert out.shape == (batch, 10)


# ---- checkpoints -----------------------------------------------------------------------------


def test_round_trip_and_notebook_compatibility(tmp_path: Path) -> None:
    net = Net()
    path = save_checkpoint(net.state_dict(), tmp_path / "net.pth")
    raw = torch.load(path, weights_only=True)  # a plain state dict, loadable safely
    assert isinstance(raw, dict) and list(raw) == list(net.state_dict())
    notebook = NotebookNet()
    notebook.load_state_dict(torch.load(path))  # the notebook's own way of loading ours
    loaded = load_checkpoint(path)
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
        assert torch.equal(notebook.state_dict()[key], value)


def test_reads_a_checkpoint_the_notebook_wrote(tmp_path: Path) -> None:
    notebook = NotebookNet()
    torch.save(notebook.state_dict(), tmp_path / "my_mnist_net.pth")
    loaded = load_checkpoint(tmp_path / "my_mnist_net.pth")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), notebook(x))


def test_nested_state_dict_is_found(tmp_path: Path) -> None:
    net = Net()
    torch.save({"epoch": 3, "model_state_dict": net.state_dict()}, tmp_path / "c.pth")
    state = load_state_dict_file(tmp_path / "c.pth")
    assert torch.equal(state["fc2.bias"], net.fc2.bias.detach())


def test_atomic_write_keeps_the_old_file_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_checkpoint(Net().state_dict(), tmp_path / "net.pth")
    before = path.read_bytes()
    real_save = torch.save

    for failure in (OSError(28, "No space left on device"), KeyboardInterrupt()):

        def half_write(obj: object, f: object, failure: BaseException = failure) -> None:
            real_save(obj, f)
            f.truncate(100)  # type: ignore[attr-defined]  # half the data is on disk ...
            raise failure  # ... when the disk fills up or the user presses Ctrl-C

        monkeypatch.setattr(torch, "save", half_write)
        with pytest.raises((CheckpointError, KeyboardInterrupt)):
            save_checkpoint(Net().state_dict(), path)
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["net.pth"]  # no temp left


def test_checkpoint_file_mode_follows_umask(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        path = save_checkpoint(Net().state_dict(), tmp_path / "net.pth")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_unwritable_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="cannot write"):
        save_checkpoint(Net().state_dict(), tmp_path / "file" / "net.pth")


def test_mismatch_errors_name_keys_and_shapes(tmp_path: Path) -> None:
    state = Net().state_dict()
    missing = {k: v for k, v in state.items() if k != "fc2.bias"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="missing fc2.bias"):
        load_checkpoint(tmp_path / "missing.pth")
    torch.save({**state, "fc3.weight": torch.zeros(2)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="unexpected fc3.weight"):
        load_checkpoint(tmp_path / "extra.pth")
    torch.save({**state, "conv1.weight": torch.zeros(8, 1, 5, 5)}, tmp_path / "shape.pth")
    with pytest.raises(
        CheckpointError,
        match=r"conv1.weight is \(8, 1, 5, 5\) in the checkpoint but "
        r"\(4, 1, 5, 5\) in Net",
    ):
        load_checkpoint(tmp_path / "shape.pth")


class Sneaky:
    """Unpickling this with full pickle would create the marker file: weights_only must not."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))  # type: ignore[return-value]


def test_refuses_unsafe_pickles_and_says_how_to_convert(tmp_path: Path) -> None:
    torch.save(Net(), tmp_path / "whole.pth")  # the whole module, not its state dict
    with pytest.raises(CheckpointError, match=r"refused .*Net.*convert it once"):
        load_checkpoint(tmp_path / "whole.pth")
    marker = tmp_path / "pwned"
    torch.save({"x": Sneaky(marker)}, tmp_path / "sneaky.pth")
    with pytest.raises(CheckpointError, match="refused"):
        load_state_dict_file(tmp_path / "sneaky.pth")
    assert not marker.exists()


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "corrupt"),
        (b"hello world", "corrupt"),
        (os.urandom(2000), "corrupt"),
        (pickle.dumps({"a": 1}), "corrupt"),
    ],
    ids=["empty", "text", "random", "plain-pickle"],
)
def test_not_a_checkpoint(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "bad.pth").write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(tmp_path / "bad.pth")
    assert "\n" not in str(info.value)


def test_truncated_and_non_state_dicts(tmp_path: Path) -> None:
    path = save_checkpoint(Net().state_dict(), tmp_path / "net.pth")
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "cut.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a state dict .*list"):
        load_checkpoint(tmp_path / "list.pth")
    torch.save({"a": 1}, tmp_path / "numbers.pth")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_checkpoint(tmp_path / "numbers.pth")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nowhere.pth")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path)  # a folder


def test_load_into_a_given_model(tmp_path: Path) -> None:
    other = nn.Sequential(nn.Linear(3, 2))
    torch.save(other.state_dict(), tmp_path / "seq.pth")
    fresh = nn.Sequential(nn.Linear(3, 2))
    assert models.load_checkpoint(tmp_path / "seq.pth", fresh) is fresh
    assert torch.equal(fresh[0].weight, other[0].weight)
    with pytest.raises(CheckpointError, match="does not fit Net"):
        load_checkpoint(tmp_path / "seq.pth")
