"""The containers a loader returns: one :class:`Split` per part of the data, the :class:`Splits`
of a dataset, and the :class:`DataFile` records of the files they were read from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from nnexp.config.errors import DataError
from nnexp.data.array_cache import cached_arrays


@dataclass(frozen=True)
class Split:
    """``x``: (n, n_in) floats in [0, 1]; ``y``: (n,) int64 labels. ``derived``: what users of
    the split computed from it once and keep with it (e.g. training's evaluation form).
    ``key``: the name of these very arrays in the array cache (a loaded dataset's split; None
    for a subset), under which arrays computed from them are kept too (:meth:`kept`)."""

    x: np.ndarray
    y: np.ndarray
    derived: dict = field(default_factory=dict, compare=False, repr=False)
    key: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        xs, ys = np.shape(self.x), np.shape(self.y)
        if len(xs) != 2 or len(ys) != 1 or xs[0] != ys[0]:
            raise DataError(f"Split needs x of shape (n, n_in) and y of shape (n,), got x {xs} and y {ys}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def kept(self, name: str, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The arrays ``make()`` computes from this split, computed once per machine when the
        split has a cache ``key`` (read back memory-mapped by later processes), else now."""
        return make() if self.key is None else cached_arrays(f"{self.key}-{name}", make)


@dataclass(frozen=True)
class DataFile:
    """One file a dataset was read from; ``verified``: it matches an official checksum."""

    name: str
    path: str
    sha256: str
    verified: bool


@dataclass(frozen=True)
class Splits:
    """A dataset in the book's split: training, validation and test examples, and their source."""

    name: str
    source: str
    train: Split
    validation: Split
    test: Split
    n_classes: int
    files: tuple[DataFile, ...]

    @property
    def n_inputs(self) -> int:
        return int(self.train.x.shape[1])

    def digest(self) -> str:
        """One SHA-256 identifying the data: over the files' SHA-256s, or, without files, the arrays."""
        h = hashlib.sha256()
        if self.files:
            for f in self.files:
                h.update(f.sha256.encode("ascii") + b"\n")
        else:
            for split in (self.train, self.validation, self.test):
                for a in (split.x, split.y):
                    a = np.ascontiguousarray(a)
                    h.update(f"{a.dtype.str}{a.shape}\n".encode("ascii"))
                    h.update(memoryview(a).cast("B"))
        return h.hexdigest()
