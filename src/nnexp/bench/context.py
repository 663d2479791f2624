"""What every benchmark section shares: the training data, the run's settings, the header lines."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from threadpoolctl import threadpool_info

from nnexp import data
from nnexp.config.errors import DataError

#: The book's chapter-3 settings, used by every timed training run.
ETA = 0.5
LMBDA = 5.0
REFERENCE_IMAGES = 2_000  # images the per-example reference is timed on (extrapolated to an epoch)
QUICK_IMAGES = 5_000  # --quick: MNIST training images timed on
QUICK_REFERENCE_IMAGES = 500


def _quiet(line: str) -> None:
    """The default progress sink: library code does not print."""


@dataclass
class Bench:
    """What every section shares: the training data (float64) and the run's settings.

    ``progress`` receives one line as each long step (a study, a sweep, a timed case) ends;
    the command prints them, library callers may leave it silent.
    """

    dataset: str  # "MNIST" or "digits"
    train: data.Split  # x (n_train, n_in) float64, y (n_train,) class indices
    n_classes: int
    epochs: int
    reference_images: int
    notes: list[str] = field(default_factory=list)
    data_dir: str | None = None
    quick: bool = False
    workers: int = 1
    progress: Callable[[str], None] = _quiet
    methods: tuple[str, ...] | None = None  # the study section's methods (None: all)
    study_seeds: Sequence[int] = range(3)  # the study section's study seeds (the first only, with --quick)

    @property
    def n_train(self) -> int:
        return len(self.train.x)

    @property
    def n_in(self) -> int:
        return int(self.train.x.shape[1])

    def data_overrides(self) -> list[str]:
        """The run overrides that select this bench's data: digits (with its input size) or the
        MNIST directory."""
        extra = [] if self.dataset == "MNIST" else ["dataset=digits", f"sizes=[{self.n_in},30,10]"]
        return extra + ([f"dataset.data_dir={self.data_dir}"] if self.data_dir else [])


def blas_summary() -> str:
    """One line: each loaded BLAS library, its version, owner package and thread count."""
    parts = []
    for lib in threadpool_info():
        if lib.get("user_api") != "blas":
            continue
        owner = Path(lib.get("filepath", "")).parent.name.removesuffix(".libs") or "?"
        parts.append(f"{lib.get('internal_api')} {lib.get('version')} ({owner}) "
                     f"kernel={lib.get('architecture', '?')} num_threads={lib.get('num_threads')}")
    env = ", ".join(f"{k}={os.environ[k]}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ)
    forced = f" (forced by {env}; unset both in one command for the processor's own kernels)" if env else ""
    return "BLAS: " + ("; ".join(parts) if parts else "no BLAS library found by threadpoolctl") + forced


def load_bench(dataset: str | None, data_dir: str | None, epochs: int, quick: bool, *, workers: int = 1,
               progress: Callable[[str], None] = _quiet) -> Bench:
    """The training set to time on. ``dataset=None``: MNIST if available locally, else digits."""
    settings = dict(epochs=epochs, reference_images=QUICK_REFERENCE_IMAGES if quick else REFERENCE_IMAGES,
                    data_dir=data_dir, quick=quick, workers=workers, progress=progress)
    if dataset == "digits":
        splits = data.load("digits")
        return Bench("digits", splits.train, splits.n_classes, **settings)
    try:
        splits = data.load("mnist", data_dir, download=dataset == "mnist")
    except DataError as exc:
        if dataset == "mnist":
            raise
        note = f"note: MNIST unavailable ({' '.join(str(exc).split())}); using digits instead"
        splits = data.load("digits")
        return Bench("digits", splits.train, splits.n_classes, notes=[note], **settings)
    train, notes = splits.train, []
    if quick:
        train = data.Split(x=train.x[:QUICK_IMAGES], y=train.y[:QUICK_IMAGES])
        notes.append(f"note: --quick: timing on the first {QUICK_IMAGES:,} MNIST training images")
    return Bench("MNIST", train, splits.n_classes, notes=notes, **settings)


def header(bench: Bench) -> list[str]:
    """The lines printed before the sections: settings, data, BLAS, how the engine is timed."""
    return [
        "nnexp benchmark: mini-batch SGD, sigmoid hidden layer, cross-entropy cost, "
        f"L2 lambda={LMBDA}, eta={ETA}",
        f"data: {bench.dataset} training set, {bench.n_train:,} images x {bench.n_in} inputs",
        *bench.notes,
        blas_summary(),
        f"engine: nnexp.train.fit, Monitor(metrics=()), best of {bench.epochs} timed epoch(s) "
        "after 1 warm-up epoch (training time only)",
    ]
