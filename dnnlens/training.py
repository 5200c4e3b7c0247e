"""Training the reference network: seeded, resumable, with safe checkpoints.

After every epoch two files are written atomically:

``PATH``
    the plain state dict, as the notebook's ``torch.save(net.state_dict(), PATH)`` writes it;
``PATH.resume``
    everything ``--resume`` needs to continue bit-identically: the weights again (so the file is
    self-consistent even if a crash falls between the two writes), the optimizer state, the
    number of completed epochs, the seed (which with the epoch number fixes every random draw
    still to come), the data source and the history. It holds only
    tensors, numbers and strings, so it loads with ``weights_only=True`` too.

Determinism: the initial weights come from ``seed``; epoch ``e`` shuffles with a generator
seeded from ``(seed, e)`` alone, so a run resumed after epoch ``k`` sees exactly the batches an
uninterrupted run sees, and reaches the same weights bit for bit (on the same machine and
PyTorch build; training uses one thread, so the core count does not matter).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dnnlens.data import Dataset, load_data
from dnnlens.errors import CheckpointError, DataError, UsageError
from dnnlens.models import Net, check_fits, check_writable, save_atomic, save_checkpoint

#: The data ``train`` uses when none is given (and it is not resuming).
DEFAULT_DATA = "sample"
#: Where ``dnnlens train`` writes by default: the notebook's PATH.
DEFAULT_CHECKPOINT = Path("my_mnist_net.pth")
#: Epochs of a fresh run when none are given: the notebook's NUM_EPOCHS.
DEFAULT_EPOCHS = 10
#: Suffix of the resume-state file written beside each checkpoint.
RESUME_SUFFIX = ".resume"
#: Format tag of the resume file, checked on load so a foreign file is refused clearly.
RESUME_FORMAT = "dnnlens-resume-1"
#: Intra-op threads while training. This network is so small (batches of 32, 100k weights)
#: that a second thread costs more in hand-offs than it saves, and on a busy machine
#: oversubscribed threads slow training several-fold; one thread also makes the weights
#: independent of the machine's core count.
TRAIN_THREADS = 1
#: Adam with lr 1e-3 and batches of 32: on the 4,000-image sample this reaches 97.0% in 10
#: epochs within seconds, on full Fashion-MNIST 90.2% in a few minutes (see BENCHMARKS.md).
BATCH_SIZE = 32
LEARNING_RATE = 1e-3


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        net: the trained network (eval mode).
        test_accuracy: test accuracy after each completed epoch, from epoch 1 (resumed runs
            include the epochs before the resume).
        train_loss: mean training cross-entropy of each epoch.
        test_loss: mean test cross-entropy after each epoch.
        checkpoint: path of the final checkpoint (plain state dict).
        wall_time: seconds this call took, data loading included.
        epochs: the number of completed epochs.
    """

    net: nn.Module
    test_accuracy: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    checkpoint: Path = DEFAULT_CHECKPOINT
    wall_time: float = 0.0
    epochs: int = 0

    @property
    def final_accuracy(self) -> float:
        """Test accuracy after the last epoch (0..1)."""
        return self.test_accuracy[-1] if self.test_accuracy else float("nan")


def resume_path(checkpoint: Path) -> Path:
    """The resume-state file that lives beside ``checkpoint``."""
    return checkpoint.with_name(checkpoint.name + RESUME_SUFFIX)


# ---------------------------------------------------------------------------------------------
# Evaluation


def _predict_in_batches(net: nn.Module, dataset: Dataset, batch_size: int) -> tuple[int, float]:
    """(number correct, summed cross-entropy) of ``net`` over ``dataset``."""
    images = torch.from_numpy(dataset.images)
    labels = torch.from_numpy(dataset.labels)
    correct, loss_sum = 0, 0.0
    was_training = net.training
    net.eval()
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            logits = net(images[start : start + batch_size])  # (B, 10)
            target = labels[start : start + batch_size]
            correct += int((logits.argmax(dim=1) == target).sum())
            loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
    net.train(was_training)
    return correct, loss_sum


def evaluate(net: nn.Module, dataset: Dataset, batch_size: int = 1000) -> float:
    """Accuracy (0..1) of ``net`` on ``dataset``: the share of argmax predictions that match."""
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    correct, _ = _predict_in_batches(net, dataset, batch_size)
    return correct / len(dataset)


# ---------------------------------------------------------------------------------------------
# Seeding


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator for epoch ``epoch`` (1-based) that depends on ``(seed, epoch)`` only."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _initial_net(seed: int) -> Net:
    """A fresh :class:`Net` whose initial weights depend on ``seed`` only.

    The global RNG is forked so that training does not disturb the caller's random state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Net()


# ---------------------------------------------------------------------------------------------
# Resume state


def _save_resume(
    path: Path,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    seed: int,
    data: str,
    history: dict[str, list[float]],
    epochs: int,
) -> None:
    # ``epochs`` is the run's own target, so ``--resume`` alone finishes the run it resumes.
    state = {
        "format": RESUME_FORMAT,
        "epoch": epoch,
        "epochs": epochs,
        "seed": seed,
        "data": data,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": history,
        "hyper": {"batch_size": BATCH_SIZE, "lr": LEARNING_RATE},
    }
    save_atomic(state, path)


def _load_resume(checkpoint: Path) -> dict[str, Any]:
    """The resume state written beside ``checkpoint``, checked for the keys we need."""
    path = resume_path(checkpoint)
    if not path.is_file():
        raise CheckpointError(
            f"{checkpoint}: no resume state beside it ({path.name}); only "
            "checkpoints written by `dnnlens train` can be resumed"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # every torch.load failure means the same thing here
        raise CheckpointError(
            f"{path}: corrupt resume state; start again without --resume"
        ) from None
    types_needed = {
        "epoch": int,
        "seed": int,
        "data": str,
        "model": dict,
        "optimizer": dict,
        "history": dict,
    }
    if (
        not isinstance(state, dict)
        or state.get("format") != RESUME_FORMAT
        or any(not isinstance(state.get(k), t) for k, t in types_needed.items())
    ):
        raise CheckpointError(f"{path}: not a {RESUME_FORMAT} file")
    return state


# ---------------------------------------------------------------------------------------------
# Training


def _check_options(epochs: int, seed: int | None, batch_size: int, lr: float) -> None:
    if epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {epochs}")
    if seed is not None and not 0 <= seed < 2**63:
        raise UsageError(f"--seed must be between 0 and 2**63-1, got {seed}")
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    if not lr > 0:
        raise UsageError(f"learning rate must be positive, got {lr}")


def _check_fits_net(dataset: Dataset, classes: int) -> None:
    """The reference network takes (N, 1, 28, 28) images and labels 0..classes-1."""
    if dataset.images.shape[1:] != (1, 28, 28):
        raise DataError(
            f"{dataset.name}: images are {dataset.images.shape[1:]}, the network takes (1, 28, 28)"
        )
    low, high = int(dataset.labels.min()), int(dataset.labels.max())
    if low < 0 or high >= classes:
        raise DataError(
            f"{dataset.name}: labels run from {low} to {high}, the network has "
            f"{classes} classes (0..{classes - 1})"
        )


def _run_epoch(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_set: Dataset,
    generator: torch.Generator,
    batch_size: int,
    desc: str,
    progress: bool,
) -> float:
    """One pass over ``train_set`` in the order ``generator`` draws; returns the mean loss."""
    from tqdm import tqdm

    images = torch.from_numpy(train_set.images)  # (N, 1, 28, 28)
    labels = torch.from_numpy(train_set.labels)  # (N,)
    order = torch.randperm(len(train_set), generator=generator)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    loss_sum, correct, seen = 0.0, 0, 0
    net.train()
    bar = tqdm(
        batches,
        desc=desc,
        unit="batch",
        leave=False,
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    for step, index in enumerate(bar):
        x, y = images[index], labels[index]
        optimizer.zero_grad()
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(index)
        correct += int((logits.argmax(dim=1) == y).sum())
        seen += len(index)
        if progress and step % 20 == 0:  # set_postfix per batch would cost more than the step
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.2%}")
    bar.close()
    return loss_sum / seen


def train(
    data: str | None = None,
    epochs: int | None = None,
    out: Path | None = None,
    resume: Path | None = None,
    seed: int | None = None,
    progress: bool = True,
    *,
    batch_size: int = BATCH_SIZE,
    lr: float = LEARNING_RATE,
    cache_dir: Path | None = None,
    threads: int = TRAIN_THREADS,
) -> TrainResult:
    """Train the reference :class:`~dnnlens.models.Net` on ``data`` for ``epochs`` epochs.

    Args:
        data: a source of :func:`~dnnlens.data.load_data` (``sample``, ``idx:PATH``, ...);
            default ``sample``, or when resuming the stored source (a different explicit
            source is an error).
        epochs: total epochs, including those already done when resuming; default 10 for a
            new run and the resumed run's own total when resuming.
        out: checkpoint path (default ``resume`` when resuming, else ``./my_mnist_net.pth``);
            ``out`` and ``out.resume`` are rewritten atomically after each epoch.
        resume: a checkpoint written by this function; training continues from its
            ``.resume`` state and reaches the weights an uninterrupted run would.
        seed: seeds the initial weights and each epoch's shuffle (default 0; when resuming,
            the stored seed, and a different explicit seed is an error).
        progress: show a progress bar (stderr) and a test-accuracy line per epoch (stdout).
        batch_size, lr: Adam's mini-batch size and learning rate (stored for resuming).
        cache_dir: passed to :func:`~dnnlens.data.load_data`.
        threads: torch intra-op threads during training (restored afterwards).

    Ctrl-C at any point leaves the last complete checkpoint intact.
    """
    if threads < 1:
        raise UsageError(f"threads must be at least 1, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(data, epochs, out, resume, seed, progress, batch_size, lr, cache_dir)
    finally:
        torch.set_num_threads(previous)


def _train(
    data: str | None,
    epochs: int | None,
    out: Path | None,
    resume: Path | None,
    seed: int | None,
    progress: bool,
    batch_size: int,
    lr: float,
    cache_dir: Path | None,
) -> TrainResult:
    """:func:`train` with the thread count already set."""
    started = time.perf_counter()
    _check_options(DEFAULT_EPOCHS if epochs is None else epochs, seed, batch_size, lr)
    state = _load_resume(Path(resume)) if resume is not None else None
    if epochs is None:
        epochs = run_epochs(state)
    if state is not None:
        seed, data = _resume_settings(state, seed, data, batch_size, lr)
    seed = 0 if seed is None else seed
    data = DEFAULT_DATA if data is None else data
    out = Path(out) if out is not None else Path(resume) if resume else DEFAULT_CHECKPOINT
    check_writable(out)  # fail before training, not after the first epoch

    train_set = load_data(data, "train", cache_dir)
    test_set = load_data(data, "test", cache_dir)
    net = _initial_net(seed)
    _check_fits_net(train_set, classes=10)
    _check_fits_net(test_set, classes=10)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    history: dict[str, list[float]] = {"test_accuracy": [], "train_loss": [], "test_loss": []}
    done = 0
    if state is not None:
        done = _restore(state, net, optimizer, history, source=str(resume))

    for epoch in range(done + 1, epochs + 1):
        generator = _epoch_generator(seed, epoch)
        train_loss = _run_epoch(
            net, optimizer, train_set, generator, batch_size, f"epoch {epoch}/{epochs}", progress
        )
        correct, test_loss_sum = _predict_in_batches(net, test_set, 1000)
        history["test_accuracy"].append(correct / len(test_set))
        history["train_loss"].append(train_loss)
        history["test_loss"].append(test_loss_sum / len(test_set))
        # Resume state first, then the checkpoint: each write is atomic on its own, and the
        # resume state carries its own copy of the weights, so any crash point is consistent.
        _save_resume(resume_path(out), net, optimizer, epoch, seed, data, history, epochs)
        save_checkpoint(net.state_dict(), out)
        if progress:
            print(
                f"epoch {epoch}/{epochs}: train loss {train_loss:.4f}, test accuracy "
                f"{correct / len(test_set):.2%} ({correct}/{len(test_set)}) -> {out}",
                flush=True,
            )
    if done >= epochs and state is not None:
        save_checkpoint(net.state_dict(), out)  # nothing to train: still leave the weights

    return TrainResult(
        net=net.eval(),
        test_accuracy=history["test_accuracy"],
        train_loss=history["train_loss"],
        test_loss=history["test_loss"],
        checkpoint=out,
        wall_time=time.perf_counter() - started,
        epochs=max(done, epochs),
    )


def run_epochs(state: dict[str, Any] | None) -> int:
    """The total epochs of the run ``state`` belongs to (10 for a new run, and for resume
    files written before runs stored their total)."""
    if state is None:
        return DEFAULT_EPOCHS
    total = state.get("epochs")
    return total if isinstance(total, int) and total >= 1 else DEFAULT_EPOCHS


def saved_progress(checkpoint: Path) -> tuple[int, int] | None:
    """``(epochs done, epochs of the run)`` of the checkpoint ``train`` wrote at ``checkpoint``,
    or None when it has no readable resume state (nothing saved yet)."""
    try:
        state = _load_resume(Path(checkpoint))
    except CheckpointError:
        return None
    return int(state["epoch"]), run_epochs(state)


def _resume_settings(
    state: dict[str, Any], seed: int | None, data: str | None, batch_size: int, lr: float
) -> tuple[int, str]:
    """The stored seed and data source, refusing explicit options that contradict them."""
    if seed is not None and seed != state["seed"]:
        raise UsageError(f"the run to resume used --seed {state['seed']}, not {seed}")
    if data is not None and data != state["data"]:
        raise UsageError(f"the run to resume trained on --data {state['data']}, not {data}")
    hyper = state.get("hyper", {})
    if hyper and (hyper.get("batch_size") != batch_size or hyper.get("lr") != lr):
        raise UsageError(
            f"the run to resume used batch size {hyper.get('batch_size')} and "
            f"learning rate {hyper.get('lr')}, not {batch_size} and {lr}"
        )
    return int(state["seed"]), str(state["data"])


def _restore(
    state: dict[str, Any],
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    history: dict[str, list[float]],
    source: str,
) -> int:
    """Load weights, optimizer state and history from ``state``; returns the epochs done."""
    check_fits(state["model"], net, source=source + RESUME_SUFFIX)
    net.load_state_dict(state["model"])
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"{source}{RESUME_SUFFIX}: optimizer state does not fit ({exc})"
        ) from None
    for key in history:
        history[key].extend(float(v) for v in state["history"].get(key, []))
    return int(state["epoch"])
