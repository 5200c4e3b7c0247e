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
        pytest.skip(f"Fashion-MNIST not found in {FASHION_MNIST_DIR}: run `make test-data` "
                    "(apt-get install dataset-fashion-mnist)")
    return FASHION_MNIST_DIR


# --- the torchvision zoo through our engine: minutes per model on two cores --------------
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-zoo", action="store_true", default=False,
                     help="also run the tests marked zoo (every torchvision classification "
                          "model through our engine; an hour or more on two cores)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-zoo"):
        return
    skip = pytest.mark.skip(reason="zoo: run with --run-zoo (minutes per model)")
    for item in items:
        if "zoo" in item.keywords:
            item.add_marker(skip)
