"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest

_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _has_mnist(directory: Path) -> bool:
    return any(all((d / f).is_file() for f in _MNIST_FILES) for d in (directory / "mnist", directory))


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The directory holding the real MNIST files (``<d>/mnist/*.gz`` or ``<d>/*.gz``).

    ``$NNEXP_DATA_DIR`` if set, else ``../shared/data`` beside the repository; skips only if missing.
    """
    env = os.environ.get("NNEXP_DATA_DIR", "").strip()
    directory = Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not _has_mnist(directory):
        if os.environ.get("CI"):  # in CI the data must be there: a skip would hide a broken setup
            pytest.fail(f"real MNIST files not found under {directory} (CI must provide ../shared/data)")
        pytest.skip(f"real MNIST files not found under {directory} (set NNEXP_DATA_DIR)")
    return directory


REPO = Path(__file__).resolve().parents[1]
