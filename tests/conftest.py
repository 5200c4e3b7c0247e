"""Shared fixtures: the bundled sample, a network trained on it once per session, and the
Debian Fashion-MNIST folder (skipped, with the reason, where it is not installed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from dnnlens.data import Dataset, load_data

# CI replays the same property-test examples every run (a red CI is then reproducible);
# elsewhere hypothesis keeps exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

#: Where Debian's dataset-fashion-mnist package puts the IDX files (`make test-data`).
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def sample_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of the reference network trained on the sample for 10 epochs (seed 0).

    Trained once per test session (about 10 s on two cores); a plain state dict that loads
    with ``torch.load(..., weights_only=True)``.
    """
    from dnnlens.training import train

    out = tmp_path_factory.mktemp("sample_checkpoint") / "my_mnist_net.pth"
    result = train(data="sample", epochs=10, out=out, seed=0, progress=False)
    return result.checkpoint


@pytest.fixture(scope="session")
def sample_test_data() -> Dataset:
    """The 1,000 test images of the bundled sample (100 per digit)."""
    return load_data("sample", "test")


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    """The Fashion-MNIST IDX folder, or a skip saying how to install it."""
    from dnnlens.data import find_idx_file
    from dnnlens.errors import DataError

    try:
        for split in ("train", "test"):
            for kind in ("images", "labels"):
                find_idx_file(FASHION_MNIST_DIR, split, kind)
    except DataError:
        pytest.skip(
            f"Fashion-MNIST not found in {FASHION_MNIST_DIR}: run `make test-data` "
            "(apt-get install dataset-fashion-mnist)"
        )
    return FASHION_MNIST_DIR


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--overwrite-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/*.txt from the current rendering (then review "
        "the diff: a golden file is a snapshot, not a truth)",
    )
    # the torchvision zoo through our engine: minutes per model on two cores
    parser.addoption(
        "--run-engine-zoo",
        action="store_true",
        default=False,
        help="also run the tests marked engine_zoo (every torchvision "
        "classification model through our engine; an hour or more on two "
        "cores)",
    )


@pytest.fixture
def overwrite_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--overwrite-golden"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-engine-zoo"):
        return
    skip = pytest.mark.skip(reason="engine_zoo: run with --run-engine-zoo (minutes per model)")
    for item in items:
        if "engine_zoo" in item.keywords:
            item.add_marker(skip)
