"""Smaller and larger training sets made from a :class:`Split`: the first n examples, some classes
only, a random sample, and the book's expanded data (every image shifted by one pixel)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nnexp.config.errors import DataError
from nnexp.data.splits import Split


def _count(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise DataError(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


def first_n(split: Split, n: int) -> Split:
    """The first ``n`` examples (views, no copy)."""
    n = _count(n, "the number of examples")
    if n > len(split):
        raise DataError(f"asked for the first {n} examples of a split that has only {len(split)}")
    return Split(x=split.x[:n], y=split.y[:n])


def only_classes(split: Split, classes: Sequence[int]) -> Split:
    """The examples whose label is in ``classes``, in their original order; labels unchanged."""
    wanted = np.asarray(list(classes), dtype=np.int64)
    if wanted.size == 0:
        raise DataError("only_classes needs at least one class label")
    keep = np.isin(split.y, wanted)  # (n,)
    return Split(x=split.x[keep], y=split.y[keep])


def sample(split: Split, m: int, rng: np.random.Generator) -> Split:
    """``m`` distinct examples drawn with ``rng``, kept in their original order."""
    m = _count(m, "the sample size")
    if m > len(split):
        raise DataError(f"cannot sample {m} examples without replacement from a split of {len(split)}")
    idx = np.sort(rng.choice(len(split), size=m, replace=False))  # (m,)
    return Split(x=split.x[idx], y=split.y[idx])


def expand(split: Split, shape: tuple[int, int] = (28, 28)) -> Split:
    """The book's expanded data: every image followed by its shifts one pixel up, down, left and right.

    Vacated pixels are zero. Returns ``5 * len(split)`` rows in the order
    [image, up, down, left, right] for each image; labels repeated accordingly.
    """
    rows, cols = (int(s) for s in shape)
    n, n_in = split.x.shape
    if rows * cols != n_in:
        raise DataError(f"cannot expand images of {n_in} pixels as shape {rows}x{cols}")
    img = split.x.reshape(n, rows, cols)
    out = np.zeros((n, 5, rows, cols), dtype=split.x.dtype)
    out[:, 0] = img
    out[:, 1, :-1, :] = img[:, 1:, :]  # up
    out[:, 2, 1:, :] = img[:, :-1, :]  # down
    out[:, 3, :, :-1] = img[:, :, 1:]  # left
    out[:, 4, :, 1:] = img[:, :, :-1]  # right
    return Split(x=out.reshape(5 * n, n_in), y=np.repeat(split.y, 5))  # (5n, n_in), (5n,)
