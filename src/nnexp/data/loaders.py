"""Loading a dataset as :class:`Splits` with the book's split (training = the first 50,000
training images, validation = the last 10,000, test = t10k), pixels scaled to [0, 1] and labels
as int64 class indices; sklearn's 8x8 digits split the same way (1,197 / 300 / 300)."""

from __future__ import annotations

import hashlib
import logging
import os
from importlib.metadata import version
from pathlib import Path

import numpy as np

from nnexp.config.errors import DataError, IdxFormatError
from nnexp.data.array_cache import cached_arrays
from nnexp.data.catalog import CATALOG, canonical_name
from nnexp.data.idx import read_idx
from nnexp.data.locate import describe, locate
from nnexp.data.splits import Split, Splits

logger = logging.getLogger(__name__)


def _float_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise DataError(f"invalid dtype {dtype!r} for the data: use float32 or float64") from e
    if dt.kind != "f":
        raise DataError(f"invalid dtype {dt} for the data: pixels need a floating dtype such as float32 or float64")
    return dt


def _load_idx_dataset(name: str, paths: dict[str, Path], source: Path, dtype: np.dtype) -> Splits:
    """Read the four IDX files, check they belong together, and cut the book's split."""
    files = describe(name, paths)

    def pair(images_key: str, labels_key: str) -> tuple[np.ndarray, np.ndarray]:
        ip, lp = paths[images_key], paths[labels_key]
        images, labels = read_idx(ip), read_idx(lp)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise IdxFormatError(
                f"{ip}: expected unsigned-byte images of shape (n, rows, cols), got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise IdxFormatError(
                f"{lp}: expected unsigned-byte labels of shape (n,), got {labels.dtype} {labels.shape}"
            )
        if images.shape[0] != labels.shape[0]:
            raise IdxFormatError(
                f"{ip} holds {images.shape[0]} images but {lp} holds {labels.shape[0]} labels: "
                "the files do not belong together"
            )
        if labels.size and labels.max() >= 10:
            raise IdxFormatError(f"{lp}: label {int(labels.max())} is outside 0..9")
        return images.reshape(images.shape[0], -1), labels  # (n, rows * cols) uint8, (n,) uint8

    def decode() -> dict[str, np.ndarray]:
        train_images, train_labels = pair("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
        test_images, test_labels = pair("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
        return {"train_images": train_images, "train_labels": train_labels, "test_images": test_images,
                "test_labels": test_labels}

    # decoded once per machine: the key is the files' SHA-256s, read back memory-mapped
    key = f"{name}-{hashlib.sha256(''.join(f.sha256 for f in files).encode()).hexdigest()[:16]}"
    raw = cached_arrays(key, decode)
    train_images, train_labels = raw["train_images"], raw["train_labels"]
    n_validation = CATALOG[name].n_validation  # taken from the end of the training file (the book's split)
    n_train = train_images.shape[0] - n_validation
    if n_train <= 0:
        raise IdxFormatError(
            f"{paths['train-images-idx3-ubyte.gz']}: {train_images.shape[0]} training images, "
            f"need more than {n_validation} for the validation split"
        )
    if raw["test_images"].shape[1] != train_images.shape[1]:
        raise IdxFormatError(
            f"{paths['t10k-images-idx3-ubyte.gz']}: images of {raw['test_images'].shape[1]} pixels, "
            f"but the training images have {train_images.shape[1]}"
        )
    parts = {"train": (train_images[:n_train], train_labels[:n_train]),
             "validation": (train_images[n_train:], train_labels[n_train:]),
             "test": (raw["test_images"], raw["test_labels"])}

    def scaled() -> dict[str, np.ndarray]:
        out = {}
        for part, (images, labels) in parts.items():
            out[f"{part}_x"] = np.divide(images, 255, dtype=dtype)  # (n, n_in), exact division
            out[f"{part}_y"] = labels.astype(np.int64)  # (n,)
        return out

    # the splits in this dtype, scaled once per machine too: a process maps them (shared with
    # the other processes of a sweep through the page cache) instead of allocating and scaling
    key = f"{key}-{dtype.name}"
    arrays = cached_arrays(key, scaled)
    train, validation, test = (Split(x=arrays[f"{p}_x"], y=arrays[f"{p}_y"], key=f"{key}-{p}") for p in parts)
    logger.info(
        "loaded %s from %s: %d train, %d validation, %d test, %s",
        name, source, len(train), len(validation), len(test), dtype,
    )
    return Splits(
        name=name,
        source=str(source.resolve()),
        train=train,
        validation=validation,
        test=test,
        n_classes=10,
        files=files,
    )


def _load_digits(dtype: np.dtype) -> Splits:
    """sklearn's 1,797 8x8 digits, shuffled once with seed 0, pixels 0..16 scaled to [0, 1]."""
    def decode() -> dict[str, np.ndarray]:
        from sklearn.datasets import load_digits  # lazy: sklearn is slow to import (and cached below)

        bunch = load_digits()
        return {"x": np.asarray(bunch.data, dtype=np.float64), "y": np.asarray(bunch.target, dtype=np.int64)}

    raw = cached_arrays(f"digits-sklearn-{version('scikit-learn')}", decode)
    x, y = raw["x"], raw["y"]  # (1797, 64) pixels 0..16, (1797,)
    order = np.random.default_rng(0).permutation(len(y))
    x = np.divide(x[order], 16, dtype=dtype)
    y = y[order]
    facts = CATALOG["digits"]
    n_train, n_val = facts.n_train, facts.n_train + facts.n_validation
    cuts = ((0, n_train), (n_train, n_val), (n_val, len(y)))
    train, validation, test = (Split(x=x[a:b].copy(), y=y[a:b].copy()) for a, b in cuts)
    return Splits(
        name="digits",
        source="sklearn.datasets.load_digits",
        train=train,
        validation=validation,
        test=test,
        n_classes=10,
        files=(),
    )


def load(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    dtype=np.float64,
    download: bool = True,
    progress: bool = False,
) -> Splits:
    """Load dataset ``name`` (one of :data:`DATASETS`) with the book's train/validation/test split.

    ``data_dir`` (if given) must hold the IDX files; otherwise ``$NNEXP_DATA_DIR``, the cache
    and system directories are searched, then the files are downloaded into the cache
    (unless ``download=False``). ``digits`` ignores ``data_dir`` and ``download``.
    """
    key = canonical_name(name)
    dt = _float_dtype(dtype)
    if key == "digits":
        return _load_digits(dt)
    paths, source = locate(key, data_dir, download, progress)
    return _load_idx_dataset(key, paths, source, dt)
