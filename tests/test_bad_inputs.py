"""Every bad input we know of, in one table: what the user gives, and the one line they get.

Each case runs through the command line (``dnnlens.cli.main``: exactly one ``error: ...`` line
on stderr, exit code 2, no traceback) and/or through the Python API (the typed
:class:`~dnnlens.errors.DnnlensError` subclass, with the same message fragment). The files are
made here: corrupt and truncated checkpoints, ones with extra/missing/mis-shaped tensors, a
pickled module that ``weights_only=True`` refuses, NaN weights, IDX folders that are corrupt,
empty or the wrong image size, malformed spec, ONNX and hardware files, and a plain file in
the way of every output folder (which works even as root, unlike a read-only folder).

Counts that overflow 32- and 64-bit integers are checked last against exact Python products.
docs/errors.md lists the same messages for users.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dnnlens.cli import main
from dnnlens.errors import (
    CheckpointError,
    DataError,
    DnnlensError,
    ModelError,
    ShapeError,
    SpecError,
    UsageError,
)

# ---------------------------------------------------------------------------------------------
# The bad files


def idx(type_code: int, array: np.ndarray) -> bytes:
    """An IDX file: 0, 0, type, ndim, big-endian uint32 dimensions, big-endian data."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def idx_folder(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Both splits of an IDX data set (the same arrays), in the standard file names."""
    folder.mkdir()
    for prefix in ("train", "t10k"):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx(0x08, images))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx(0x08, labels))
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding one file (or folder) per bad input of the table."""
    import torch

    from dnnlens.models import Net

    d = tmp_path_factory.mktemp("bad-inputs")
    torch.manual_seed(0)
    good = Net().state_dict()
    torch.save(good, d / "good.pth")
    raw = (d / "good.pth").read_bytes()

    # Checkpoints
    (d / "corrupt.pth").write_bytes(b"this is not a checkpoint\n" * 8)
    (d / "truncated.pth").write_bytes(raw[: len(raw) // 2])
    torch.save({**good, "extra.weight": torch.zeros(3)}, d / "extra.pth")
    torch.save({k: v for k, v in good.items() if k != "fc2.bias"}, d / "missing.pth")
    torch.save({**good, "fc1.weight": torch.zeros(256, 100)}, d / "misshaped.pth")
    # A checkpoint of another network: 20 foreign keys, none of Net's 8.
    torch.save({f"block{i}.weight": torch.zeros(2) for i in range(20)}, d / "foreign.pth")
    torch.save(Net(), d / "pickled-module.pth")  # the whole module: needs unsafe unpickling
    torch.save({"epoch": 3, "lr": 0.001}, d / "not-a-state-dict.pth")
    torch.save({**good, "conv1.weight": torch.full((4, 1, 5, 5), float("nan"))}, d / "nan.pth")
    torch.save(good, d / "no-resume.pth")  # a checkpoint without its .resume state
    torch.save(good, d / "bad-resume.pth")
    (d / "bad-resume.pth.resume").write_bytes(b"garbage")

    # IDX data sets
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    labels = (np.arange(20) % 10).astype(np.uint8)
    idx_folder(d / "empty", pixels[:0], labels[:0])
    idx_folder(d / "size32", rng.integers(0, 256, (20, 32, 32), dtype=np.uint8), labels)
    idx_folder(d / "counts", pixels, labels[:15])
    bad_magic = idx_folder(d / "magic", pixels, labels)
    (bad_magic / "train-images-idx3-ubyte").write_bytes(b"\x08\x03" + b"\0" * 100)
    cut = idx_folder(d / "cut", pixels, labels)
    (cut / "train-images-idx3-ubyte").write_bytes(idx(0x08, pixels)[:-10])
    idx_folder(d / "labels99", pixels, np.full(20, 99, dtype=np.uint8))

    # Output paths that cannot be written: a plain file stands where a folder should be.
    (d / "afile").write_text("a file, not a folder\n")

    # Network and hardware descriptions
    (d / "malformed.toml").write_text("input = [1, 1, 28, 28\nlayers = [\n")
    (d / "misfit.toml").write_text(
        "input = [1, 1, 28, 28]\nlayers = [{ conv = [5, 5, 1, 4] }, { pool = [2, 2, 2, 2] },"
        ' { flatten = true }, { fc = [10, 256], name = "fc1" }]\n'
    )
    (d / "negative.toml").write_text(
        "input = [1, 1, 28, 28]\nlayers = [{ conv = [5, 5, 1, -4] }]\n"
    )
    (d / "layers-not-list.toml").write_text("input = [1, 1, 28, 28]\nlayers = 3\n")
    (d / "no-input.toml").write_text("layers = [{ relu = true }]\n")
    (d / "garbage.onnx").write_bytes(b"\x08\x07garbage" * 10)
    (d / "tiny.onnx").write_bytes(_tiny_onnx())
    (d / "truncated.onnx").write_bytes(_tiny_onnx()[:40])
    (d / "hw-negative.toml").write_text(
        "name = 'x'\n[peak_macs_per_s.fp32]\nvalue = -1e9\n[memory_bandwidth]\nvalue = 1e9\n"
    )
    (d / "hw-missing.toml").write_text("name = 'x'\n[peak_macs_per_s.fp32]\nvalue = 1e9\n")
    return d


def _tiny_onnx() -> bytes:
    """A valid one-node ONNX model (Relu on 1x1x28x28), for truncating."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 28, 28])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 28, 28])
    relu = helper.make_node("Relu", ["x"], ["y"], name="relu1")  # named: Netron targets names
    graph = helper.make_graph([relu], "tiny", [x], [y])
    return helper.make_model(graph).SerializeToString()


# ---------------------------------------------------------------------------------------------
# API calls used by the table (each takes the folder of bad files)


def _load(name: str) -> Callable[[Path], Any]:
    def call(d: Path) -> Any:
        from dnnlens.models import load_checkpoint

        return load_checkpoint(d / name)

    return call


def _data(source: str, split: str = "train") -> Callable[[Path], Any]:
    def call(d: Path) -> Any:
        from dnnlens.data import load_data

        return load_data(source.format(d=d), split)

    return call


def _dataset(images: np.ndarray, labels: np.ndarray) -> Callable[[Path], Any]:
    def call(d: Path) -> Any:
        from dnnlens.data import Dataset

        return Dataset(images, labels, "api")

    return call


def _engine_run(images: np.ndarray) -> Callable[[Path], Any]:
    def call(d: Path) -> Any:
        from dnnlens.engine import run
        from dnnlens.importers.torch import import_torch
        from dnnlens.models import Net

        net = Net()
        return run(import_torch(net, (1, 1, 28, 28)), net, images, engine="reference")

    return call


def _verify(name: str, **options: Any) -> Callable[[Path], Any]:
    def call(d: Path) -> Any:
        from dnnlens.verify import verify

        opts = {k: v.format(d=d) if isinstance(v, str) else v for k, v in options.items()}
        return verify(d / name, **opts)

    return call


def _train(**options: Any) -> Callable[[Path], Any]:
    def call(d: Path) -> Any:
        from dnnlens.training import train

        opts = {
            k: Path(v.format(d=d))
            if k in ("out", "resume")
            else v.format(d=d)
            if isinstance(v, str)
            else v
            for k, v in options.items()
        }
        return train(progress=False, **{"epochs": 1, **opts})

    return call


def _traffic(layer: str, buffer: Any, outer: str | None = None) -> Callable[[Path], Any]:
    def call(d: Path) -> Any:
        from dnnlens.dataflow import traffic
        from dnnlens.models import Net

        return traffic(Net(), layer, buffer, outer, input_shape=(1, 1, 28, 28))

    return call


def _analyze(shape: tuple[int, ...], **options: Any) -> Callable[[Path], Any]:
    def call(d: Path) -> Any:
        from dnnlens.analysis import analyze
        from dnnlens.models import Net

        return analyze(Net(), shape, **options)

    return call


def _spec(name: str) -> Callable[[Path], Any]:
    def call(d: Path) -> Any:
        from dnnlens.importers.spec import import_spec

        return import_spec(d / name)

    return call


def _onnx(name: str) -> Callable[[Path], Any]:
    def call(d: Path) -> Any:
        from dnnlens.importers.onnx import import_onnx

        return import_onnx(d / name)

    return call


def _hardware(name: str) -> Callable[[Path], Any]:
    def call(d: Path) -> Any:
        from dnnlens.roofline import load_spec

        return load_spec(str(d / name) if name.endswith(".toml") else name)

    return call


def _csv(relative: str) -> Callable[[Path], Any]:
    def call(d: Path) -> Any:
        from dnnlens.analysis import analyze
        from dnnlens.models import Net

        return analyze(Net(), (1, 1, 28, 28)).to_csv(str(d / relative))

    return call


def _report(relative: str) -> Callable[[Path], Any]:
    def call(d: Path) -> Any:
        from dnnlens.analysis import analyze
        from dnnlens.models import Net
        from dnnlens.report import write_report

        return write_report(analyze(Net(), (1, 1, 28, 28)), d / relative, "epyc9654")

    return call


# ---------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Bad:
    """One bad input: the command line (``{d}`` is the folder of bad files) and/or the API
    call, the typed error and a fragment of its message."""

    id: str
    argv: tuple[str, ...] | None
    api: Callable[[Path], Any] | None
    error: type[DnnlensError]
    message: str


NAN_IMAGES = np.zeros((2, 1, 28, 28), np.float32)
NAN_IMAGES[1, 0, 3, 4] = np.nan
INF_IMAGES = np.zeros((2, 1, 28, 28), np.float32)
INF_IMAGES[0, 0, 0, 0] = np.inf
LABELS2 = np.zeros(2, np.int64)

CASES = [
    # --- checkpoints -----------------------------------------------------------------------
    Bad(
        "checkpoint-corrupt",
        ("verify", "{d}/corrupt.pth"),
        _load("corrupt.pth"),
        CheckpointError,
        "not a PyTorch checkpoint",
    ),
    Bad(
        "checkpoint-truncated",
        ("verify", "{d}/truncated.pth"),
        _load("truncated.pth"),
        CheckpointError,
        "corrupt or truncated",
    ),
    Bad(
        "checkpoint-missing-file",
        ("verify", "{d}/nonexistent.pth"),
        _load("nonexistent.pth"),
        CheckpointError,
        "no such checkpoint file",
    ),
    Bad(
        "checkpoint-extra-tensor",
        ("verify", "{d}/extra.pth"),
        _load("extra.pth"),
        CheckpointError,
        "unexpected extra.weight",
    ),
    Bad(
        "checkpoint-missing-tensor",
        ("verify", "{d}/missing.pth"),
        _load("missing.pth"),
        CheckpointError,
        "missing fc2.bias",
    ),
    Bad(
        "checkpoint-misshaped-tensor",
        ("verify", "{d}/misshaped.pth"),
        _load("misshaped.pth"),
        CheckpointError,
        "fc1.weight is (256, 100) in the checkpoint but (256, 392)",
    ),
    # weights_only=True refuses the pickled class; the message says how to convert the file.
    Bad(
        "checkpoint-unsafe-pickle",
        ("verify", "{d}/pickled-module.pth"),
        _load("pickled-module.pth"),
        CheckpointError,
        "refused to unpickle dnnlens.models.Net",
    ),
    Bad(
        "checkpoint-unsafe-pickle-says-how",
        None,
        _load("pickled-module.pth"),
        CheckpointError,
        "convert it once with torch.save(torch.load(",
    ),
    Bad(
        "checkpoint-not-a-state-dict",
        ("verify", "{d}/not-a-state-dict.pth"),
        _load("not-a-state-dict.pth"),
        CheckpointError,
        "not a state dict of tensors",
    ),
    Bad(
        "checkpoint-nan-weights",
        ("verify", "{d}/nan.pth", "--limit", "10"),
        _verify("nan.pth", limit=10),
        CheckpointError,
        "conv1.weight contain NaN or Inf",
    ),
    Bad(
        "report-checkpoint-corrupt",
        (
            "report",
            "-o",
            "{d}/report-ok",
            "--device",
            "epyc9654",
            "--checkpoint",
            "{d}/corrupt.pth",
        ),
        None,
        CheckpointError,
        "not a PyTorch checkpoint",
    ),
    Bad(
        "resume-without-state",
        ("train", "--resume", "{d}/no-resume.pth"),
        _train(resume="{d}/no-resume.pth"),
        CheckpointError,
        "no resume state beside it",
    ),
    Bad(
        "resume-corrupt-state",
        ("train", "--resume", "{d}/bad-resume.pth"),
        _train(resume="{d}/bad-resume.pth"),
        CheckpointError,
        "corrupt resume state",
    ),
    # --- data ------------------------------------------------------------------------------
    Bad(
        "data-unknown-source",
        ("train", "--data", "bogus"),
        _data("bogus"),
        DataError,
        "unknown data source 'bogus'",
    ),
    Bad(
        "data-no-folder",
        ("train", "--data", "idx:{d}/nowhere"),
        _data("idx:{d}/nowhere"),
        DataError,
        "no such folder",
    ),
    Bad(
        "data-no-idx-files",
        ("train", "--data", "idx:{d}"),
        _data("idx:{d}"),
        DataError,
        "no train-images-idx3-ubyte[.gz]",
    ),
    Bad(
        "data-bad-magic",
        ("train", "--data", "idx:{d}/magic"),
        _data("idx:{d}/magic"),
        DataError,
        "not an IDX file",
    ),
    Bad(
        "data-truncated-idx",
        ("train", "--data", "idx:{d}/cut"),
        _data("idx:{d}/cut"),
        DataError,
        "IDX file truncated",
    ),
    Bad(
        "data-count-mismatch",
        ("train", "--data", "idx:{d}/counts"),
        _data("idx:{d}/counts"),
        DataError,
        "20 images (train-images-idx3-ubyte) but 15",
    ),
    Bad(
        "data-empty",
        ("train", "--data", "idx:{d}/empty"),
        _data("idx:{d}/empty"),
        DataError,
        "the data set is empty",
    ),
    Bad(
        "data-empty-verify",
        ("verify", "{d}/good.pth", "--data", "idx:{d}/empty"),
        _verify("good.pth", data="idx:{d}/empty"),
        DataError,
        "empty",
    ),
    Bad(
        "data-wrong-image-size",
        ("train", "--data", "idx:{d}/size32"),
        _data("idx:{d}/size32"),
        DataError,
        "images are 32x32, the MNIST family is 28x28",
    ),
    Bad(
        "data-labels-out-of-range",
        ("train", "--data", "idx:{d}/labels99"),
        _train(data="idx:{d}/labels99"),
        DataError,
        "labels run from 99 to 99",
    ),
    Bad(
        "data-nan-images",
        None,
        _dataset(NAN_IMAGES, LABELS2),
        DataError,
        "1 image(s) contain NaN or Inf",
    ),
    Bad(
        "data-empty-arrays",
        None,
        _dataset(np.zeros((0, 1, 28, 28), np.float32), np.zeros(0, np.int64)),
        DataError,
        "the data set is empty",
    ),
    Bad("engine-nan-input", None, _engine_run(NAN_IMAGES), DataError, "has 1 NaN or Inf value(s)"),
    Bad("engine-inf-input", None, _engine_run(INF_IMAGES), DataError, "has 1 NaN or Inf value(s)"),
    Bad(
        "engine-wrong-image-size",
        None,
        _engine_run(np.zeros((2, 1, 32, 32), np.float32)),
        ShapeError,
        "has shape (2, 1, 32, 32) but the network expects (N, 1, 28, 28)",
    ),
    # --- options out of range --------------------------------------------------------------
    Bad(
        "epochs-zero",
        ("train", "--epochs", "0"),
        _train(epochs=0),
        UsageError,
        "--epochs must be at least 1, got 0",
    ),
    Bad(
        "epochs-negative",
        ("train", "--epochs", "-3"),
        _train(epochs=-3),
        UsageError,
        "--epochs must be at least 1, got -3",
    ),
    Bad(
        "train-batch-zero", None, _train(batch_size=0), UsageError, "batch size must be at least 1"
    ),
    Bad(
        "limit-zero",
        ("verify", "{d}/good.pth", "--limit", "0"),
        _verify("good.pth", limit=0),
        UsageError,
        "--limit must be",
    ),
    Bad(
        "limit-negative",
        ("verify", "{d}/good.pth", "--limit", "-5"),
        _verify("good.pth", limit=-5),
        UsageError,
        "--limit must be",
    ),
    Bad(
        "limit-not-a-number",
        ("verify", "{d}/good.pth", "--limit", "ten"),
        None,
        UsageError,
        "--limit must be a whole number of images, got 'ten'",
    ),
    Bad(
        "engine-unknown",
        ("verify", "{d}/good.pth", "--engine", "fast"),
        _verify("good.pth", engine="fast"),
        UsageError,
        "fast",
    ),
    Bad(
        "analyze-batch-zero",
        ("analyze", "--batch", "0"),
        _analyze((1, 1, 28, 28), batch=0),
        UsageError,
        "must be a positive integer",
    ),
    Bad(
        "analyze-batch-negative",
        ("analyze", "--batch", "-2"),
        _analyze((1, 1, 28, 28), batch=-2),
        UsageError,
        "must be a positive integer",
    ),
    Bad(
        "analyze-dtype-unknown",
        None,
        _analyze((1, 1, 28, 28), dtype="fp64"),
        UsageError,
        "unknown dtype 'fp64'",
    ),
    Bad(
        "analyze-depth-negative",
        ("analyze", "--depth", "-1"),
        None,
        UsageError,
        "--depth must be 0 or more",
    ),
    Bad(
        "report-batch-zero",
        ("report", "-o", "{d}/report-ok", "--device", "epyc9654", "--batch", "0"),
        None,
        UsageError,
        "--batch must be a positive",
    ),
    # --- data movement under a buffer (issue 14) -------------------------------------------
    Bad(
        "traffic-unknown-layer",
        ("traffic", "seed", "--layer", "conv7", "--buffer", "16kB"),
        _traffic("conv7", "16kB"),
        UsageError,
        "no layer named 'conv7' in",
    ),
    Bad(
        "traffic-not-covered",
        ("traffic", "seed", "--layer", "pool", "--buffer", "16kB"),
        _traffic("pool", "16kB"),
        UsageError,
        "layer 'pool' is a maxpool; the data-flow model covers conv",
    ),
    Bad(
        "traffic-loop-not-dividing",
        ("traffic", "seed", "--layer", "conv1", "--buffer", "16kB", "--outer", "P=3"),
        _traffic("conv1", "16kB", "P=3"),
        UsageError,
        "P=3 does not divide P = 28",
    ),
    Bad(
        "traffic-buffer-zero",
        ("traffic", "seed", "--layer", "conv1", "--buffer", "0"),
        _traffic("conv1", 0),
        UsageError,
        "--buffer must be at least 1 byte",
    ),
    Bad(
        "traffic-buffer-malformed",
        ("traffic", "seed", "--layer", "conv1", "--buffer", "4 TB!"),
        _traffic("conv1", "4 TB!"),
        UsageError,
        "--buffer must be a size such as 16kB",
    ),
    Bad(
        "traffic-does-not-fit",
        ("traffic", "seed", "--layer", "conv1", "--buffer", "1kB", "--outer", "P=2"),
        _traffic("conv1", "1kB", "P=2"),
        UsageError,
        "do not fit the 1,000-byte buffer: weights",
    ),
    Bad(
        "analyze-buffer-malformed",
        ("analyze", "--buffer", "lots"),
        None,
        UsageError,
        "--buffer must be a size",
    ),
    # --- unwritable outputs ----------------------------------------------------------------
    Bad(
        "train-out-under-a-file",
        ("train", "--out", "{d}/afile/net.pth"),
        _train(out="{d}/afile/net.pth"),
        CheckpointError,
        "cannot write here ({d}/afile is a file, not a folder)",
    ),
    Bad(
        "train-out-is-a-folder",
        ("train", "--out", "{d}"),
        _train(out="{d}"),
        CheckpointError,
        "is a folder",
    ),
    Bad(
        "report-out-is-a-file",
        ("report", "-o", "{d}/afile", "--device", "epyc9654"),
        _report("afile"),
        UsageError,
        "cannot write the report here ({d}/afile is a file, not a folder)",
    ),
    Bad(
        "report-out-under-a-file",
        ("report", "-o", "{d}/afile/sub", "--device", "epyc9654"),
        _report("afile/sub"),
        UsageError,
        "cannot write the report here ({d}/afile is a file, not a folder)",
    ),
    Bad(
        "csv-under-a-file",
        ("analyze", "--csv", "{d}/afile/rows.csv"),
        _csv("afile/rows.csv"),
        UsageError,
        "cannot write the CSV here",
    ),
    Bad(
        "scalesim-under-a-file",
        ("analyze", "--scalesim", "{d}/afile/topo.csv"),
        None,
        UsageError,
        "cannot write here",
    ),
    Bad(
        "netron-under-a-file",
        ("analyze", "{d}/tiny.onnx", "--netron", "{d}/afile/metrics.json"),
        None,
        UsageError,
        "cannot write here",
    ),
    # --- models and input shapes -----------------------------------------------------------
    Bad("model-unknown", ("analyze", "resnet19"), None, ModelError, "unknown model 'resnet19'"),
    Bad(
        "report-model-unknown",
        ("report", "resnet19", "-o", "{d}/report-ok", "--device", "epyc9654"),
        None,
        ModelError,
        "unknown model 'resnet19'",
    ),
    Bad(
        "model-factory-missing",
        ("analyze", "nosuchpackage.models:build"),
        None,
        ModelError,
        "cannot find factory 'nosuchpackage.models:build'",
    ),
    Bad(
        "input-malformed",
        ("analyze", "--input", "1,a,28"),
        None,
        UsageError,
        "--input must be positive integers separated by commas",
    ),
    Bad(
        "input-zero",
        ("analyze", "--input", "0,1,28,28"),
        None,
        UsageError,
        "--input must be positive integers",
    ),
    Bad("input-empty", ("analyze", "--input", ""), None, UsageError, "--input must be"),
    Bad(
        "input-rejected-by-model",
        ("analyze", "--input", "1,3,28,28"),
        _analyze((1, 3, 28, 28)),
        ModelError,
        "rejects input (1, 3, 28, 28)",
    ),
    Bad(
        "input-wrong-rank",
        ("analyze", "--input", "1,1,28"),
        _analyze((1, 1, 28)),
        ShapeError,
        "conv input must have 4 dimensions",
    ),
    # --- spec, ONNX and hardware files -----------------------------------------------------
    Bad(
        "spec-malformed-toml",
        ("analyze", "{d}/malformed.toml"),
        _spec("malformed.toml"),
        SpecError,
        "not a valid TOML spec file",
    ),
    Bad(
        "spec-misfit-layer",
        ("analyze", "{d}/misfit.toml"),
        _spec("misfit.toml"),
        SpecError,
        "layer 4",
    ),
    Bad(
        "spec-negative-size",
        ("analyze", "{d}/negative.toml"),
        _spec("negative.toml"),
        SpecError,
        "sizes must be positive",
    ),
    Bad(
        "spec-layers-not-a-list",
        ("analyze", "{d}/layers-not-list.toml"),
        _spec("layers-not-list.toml"),
        SpecError,
        "'layers' must be a list of layer tables",
    ),
    Bad(
        "spec-no-input",
        ("analyze", "{d}/no-input.toml"),
        _spec("no-input.toml"),
        SpecError,
        "missing 'input'",
    ),
    Bad(
        "spec-missing-file",
        ("analyze", "{d}/nonexistent.toml"),
        _spec("nonexistent.toml"),
        SpecError,
        "cannot read spec file",
    ),
    Bad(
        "onnx-garbage",
        ("analyze", "{d}/garbage.onnx"),
        _onnx("garbage.onnx"),
        ModelError,
        "is not a readable ONNX model",
    ),
    Bad(
        "onnx-truncated",
        ("analyze", "{d}/truncated.onnx"),
        _onnx("truncated.onnx"),
        ModelError,
        "truncated",
    ),
    Bad(
        "onnx-missing-file",
        ("analyze", "{d}/nonexistent.onnx"),
        _onnx("nonexistent.onnx"),
        ModelError,
        "does not exist",
    ),
    Bad(
        "hardware-negative-figure",
        ("analyze", "--device", "{d}/hw-negative.toml"),
        _hardware("hw-negative.toml"),
        SpecError,
        "peak_macs_per_s.fp32 must be positive",
    ),
    Bad(
        "hardware-missing-figure",
        ("analyze", "--device", "{d}/hw-missing.toml"),
        _hardware("hw-missing.toml"),
        SpecError,
        "missing figure 'memory_bandwidth'",
    ),
    Bad(
        "hardware-unknown-device",
        ("analyze", "--device", "tpu9000"),
        _hardware("tpu9000"),
        SpecError,
        "unknown device 'tpu9000'",
    ),
    # --- issue 13: every argument checked before any output, probe or training -------------
    Bad(
        "json-unknown-device",
        ("analyze", "--json", "--device", "tpu9000"),
        None,
        SpecError,
        "unknown device 'tpu9000'",
    ),
    Bad(
        "device-did-you-mean",
        ("analyze", "--device", "rpi"),
        _hardware("rpi"),
        SpecError,
        "unknown device 'rpi' (did you mean 'rpi5'?)",
    ),
    Bad(
        "model-did-you-mean",
        ("analyze", "resnt18"),
        None,
        ModelError,
        "unknown model 'resnt18' (did you mean 'resnet18'",
    ),
    # -o is checked before the machine is probed (--device probe is report's default).
    Bad(
        "report-out-before-probe",
        ("report", "-o", "{d}/afile/sub"),
        None,
        UsageError,
        "cannot write the report here",
    ),
    Bad(
        "report-device-before-tracing",
        ("report", "resnet50", "-o", "{d}/report-ok", "--device", "tpu9000"),
        None,
        SpecError,
        "unknown device 'tpu9000'",
    ),
    Bad(
        "csv-before-the-table",
        ("analyze", "--csv", "{d}/afile/rows.csv", "--device", "epyc9654"),
        None,
        UsageError,
        "cannot write the CSV here",
    ),
    Bad(
        "report-depth-negative",
        ("report", "-o", "{d}/report-ok", "--device", "epyc9654", "--depth", "-1"),
        None,
        UsageError,
        "--depth must be 0 or more, got -1",
    ),
    Bad(
        "report-checkpoint-before-probe",
        ("report", "-o", "{d}/report-ok", "--checkpoint", "{d}/corrupt.pth"),
        None,
        CheckpointError,
        "not a PyTorch checkpoint",
    ),
    Bad(
        "measure-on-a-file",
        ("analyze", "{d}/tiny.onnx", "--measure"),
        None,
        UsageError,
        "--measure times a PyTorch model",
    ),
    Bad(
        "checkpoint-of-another-network",
        ("verify", "{d}/foreign.pth"),
        _verify("foreign.pth"),
        CheckpointError,
        "missing 8 keys: conv1.weight, conv1.bias, conv2.weight, ...; "
        "unexpected 20 keys: block0.weight, block1.weight, block2.weight, ...",
    ),
]


def _ids(cases: list[Bad]) -> list[str]:
    return [case.id for case in cases]


CLI_CASES = [case for case in CASES if case.argv is not None]
API_CASES = [case for case in CASES if case.api is not None]


def test_case_ids_are_unique() -> None:
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CLI_CASES, ids=_ids(CLI_CASES))
def test_cli_prints_one_error_line_and_exits_2(
    case: Bad, files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [arg.format(d=files) for arg in case.argv or ()]
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.splitlines()  # tqdm's \r-separated updates split too
    errors = [line for line in lines if line.startswith("error:")]
    assert code == 2, f"exit code {code}; stderr: {err[-500:]}"
    assert len(errors) == 1, f"expected one error line, got {errors}"
    assert case.message.format(d=files) in errors[0]
    assert "Traceback" not in err and "Traceback" not in out
    # Every argument is checked before anything starts: no table, no probe, no progress.
    assert out == "", f"printed before the error: {out[:300]}"


@pytest.mark.parametrize("case", API_CASES, ids=_ids(API_CASES))
def test_api_raises_the_typed_error(case: Bad, files: Path) -> None:
    assert case.api is not None
    with pytest.raises(case.error, match=re.escape(case.message.format(d=files))) as info:
        case.api(files)
    assert "\n" not in str(info.value), "an error message is one line"


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--epochs", "many"],
        ["analyze", "--batch", "1.5"],
        ["analyze", "--dtype", "fp64"],
        ["report"],  # -o is required
    ],
)
def test_argparse_rejections_exit_2_without_traceback(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Values argparse itself refuses: its usage line and one ``error:`` line, exit 2."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert len([line for line in err.splitlines() if "error:" in line]) == 1
    assert "Traceback" not in err


def test_nothing_half_written_by_failed_outputs(files: Path) -> None:
    """The failed writes above left no temporary files beside the good ones."""
    leftovers = [p.name for pattern in (".*.tmp", ".dnnlens-*") for p in files.rglob(pattern)]
    assert leftovers == []


# ---------------------------------------------------------------------------------------------
# Counts larger than 32 (and 64) bits stay exact Python integers


def test_huge_conv_spec_counts_are_exact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 3x3 conv, 4096 -> 4096 channels, on a batch of 10^6 images of 1024x1024 (padding 1:
    'same'). MACs = N*Cout*H*W * (Kh*Kw*Cin) = 10^6 * 4096 * 1024 * 1024 * 9 * 4096, about
    1.6e20: past 2^31 and past 2^63 (9.2e18), where an int64 (np.prod) would wrap."""
    spec = tmp_path / "huge.toml"
    spec.write_text(
        "input = [1000000, 4096, 1024, 1024]\n"
        'layers = [{ conv = [3, 3, 4096, 4096], name = "big" }, { relu = true }]\n'
    )
    assert main(["analyze", str(spec), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    big, relu = doc["layers"]
    n, c, h, w, k = 1_000_000, 4096, 1024, 1024, 3
    assert big["macs"] == n * c * h * w * k * k * c == 158_329_674_399_744_000_000
    assert big["macs"] > 2**63
    assert big["weights"] == k * k * c * c == 150_994_944
    # input + weights + output values, each once
    assert big["values_moved"] == n * c * h * w + k * k * c * c + n * c * h * w
    assert relu["values_moved"] == 2 * n * c * h * w  # read + write, > 2^32
    assert doc["totals"]["macs"] == big["macs"]


def test_huge_batch_of_the_seed_network_is_exact(capsys: pytest.CaptureFixture[str]) -> None:
    """The notebook's 338,112 MACs per image (2.6) times a batch of 3 * 10^9 images: about
    1.0e15, past 2^32; weights stay 103,812 (read once per batch)."""
    assert main(["analyze", "--batch", "3000000000", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["totals"]["macs"] == 338_112 * 3_000_000_000
    assert doc["totals"]["weights"] == 103_812
    # outputs: the ten-layer table's 11,498 values per image (docs/units.md), times the batch
    assert doc["totals"]["outputs"] == 11_498 * 3_000_000_000


def test_huge_torch_conv_on_meta_is_exact() -> None:
    """An nn.Conv2d traced on the meta device (no memory allocated) at a batch of 2^20
    images of 4096 channels x 1024 x 1024 (2^52 input values): MACs 9 * 2^64, exact."""
    import torch

    from dnnlens.analysis import analyze

    with torch.device("meta"):
        conv = torch.nn.Conv2d(4096, 4096, 3, padding=1, bias=False)
    a = analyze(conv, (2**20, 4096, 1024, 1024))
    (row,) = a.rows
    assert row.output_shape == (2**20, 4096, 1024, 1024)
    assert row.macs == 2**20 * 4096 * 1024 * 1024 * (3 * 3 * 4096) == 9 * 2**64
    assert type(row.macs) is int and type(row.values_moved) is int
    assert row.values_moved == 2 * 2**52 + 9 * 4096 * 4096
