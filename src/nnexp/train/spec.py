"""What a training run is asked to do (TrainSpec and its parts) and what it reports (Record,
History). Plain data: no NumPy arithmetic, no I/O."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import numpy as np

from nnexp.config.names import COMPLETED, METRIC_NAMES


@dataclass(frozen=True)
class Monitor:
    """What to evaluate and when.

    ``metrics``: names from METRIC_NAMES. ``every_images``: evaluate every k training
    images instead of once per epoch. ``validation_sample``: evaluate validation on a
    fixed random sample of m images (the broad strategy: 100 images every 1,000).
    """

    metrics: tuple[str, ...] = ("training_cost", "training_accuracy",
                                "validation_cost", "validation_accuracy")
    every_images: int | None = None
    validation_sample: int | None = None

    def __post_init__(self):
        unknown = [m for m in self.metrics if m not in METRIC_NAMES]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; valid: {', '.join(METRIC_NAMES)}")


@dataclass(frozen=True)
class Constant:
    name: str = "constant"


@dataclass(frozen=True)
class HalveOnPlateau:
    """eta <- eta/2 when validation accuracy has not improved for ``patience``
    evaluations; training ends when eta reaches eta0 * ``min_factor`` (book: 1/1024). The
    defaults live in the run schema (``nnexp.config.run_schema.ScheduleConfig``)."""

    patience: int
    min_factor: float
    name: str = "halve_on_plateau"


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when validation accuracy has not improved for ``patience`` evaluations; end with the
    best evaluation's parameters if ``restore_best``. Defaults: ``run_schema.EarlyStoppingConfig``."""

    patience: int
    restore_best: bool


@dataclass(frozen=True)
class Piecewise:
    """eta and lambda set from given training-image counts on: ``points`` ((images, eta, lmbda),
    ...) in increasing images; each applies to every step after that many images (before the
    first: the spec's eta and lmbda). A population-based training member's schedule replays
    exactly, since its changes happen between steps."""

    points: tuple[tuple[int, float, float], ...]
    name: str = "piecewise"


@dataclass(frozen=True)
class TrainSpec:
    epochs: int
    mini_batch_size: int
    eta: float
    lmbda: float = 0.0
    penalty: str = "l2"  # "none" | "l2" | "l1"
    dropout: float = 0.0  # probability of dropping a hidden neuron during training
    momentum: float = 0.0
    schedule: Constant | HalveOnPlateau | Piecewise = Constant()
    early_stopping: EarlyStopping | None = None
    monitor: Monitor = Monitor()
    divergence_cost: float = 1e4  # a monitored cost above this (or non-finite) = diverged

    @property
    def needs_validation(self) -> bool:
        return self.early_stopping is not None or isinstance(self.schedule, HalveOnPlateau)


def population_key(sizes, hidden: str, cost: str, dtype: str, spec: TrainSpec) -> tuple:
    """The one compatibility rule: runs with equal keys train together as one population and
    get exactly the numbers they would get alone. They share the architecture, the shape of
    every step (mini-batch size, penalty type, dropout on or off) and what is evaluated when;
    every scalar (eta, lambda, momentum, schedule, epochs, seed) may differ."""
    return (tuple(sizes), hidden, cost, np.dtype(dtype).str, spec.mini_batch_size, spec.penalty,
            spec.dropout > 0, spec.monitor, spec.divergence_cost)


@dataclass
class Record:
    """One evaluation. Costs include the weight penalty, scaled by the training-set size."""

    epoch: float  # epochs completed (fractional with sub-epoch monitoring)
    images_seen: int
    eta: float
    epoch_seconds: float  # training time since the previous evaluation
    lmbda: float | None = None  # the current lambda, when a schedule changes it (piecewise)
    training_cost: float | None = None
    training_accuracy: float | None = None
    validation_cost: float | None = None
    validation_accuracy: float | None = None
    test_cost: float | None = None
    test_accuracy: float | None = None
    donor: int | None = None  # population-based training: after this evaluation the member took this member's network
    generation: int | None = None  # ... and its network's generation then (its donor's + 1)

    def metrics(self) -> dict[str, float]:
        """The monitored values and eta/epoch_seconds, without the missing ones."""
        out = {k: getattr(self, k) for k in METRIC_NAMES if getattr(self, k) is not None}
        out["eta"] = self.eta
        if self.lmbda is not None:
            out["lmbda"] = self.lmbda
        out["epoch_seconds"] = self.epoch_seconds
        return out


@dataclass
class History:
    records: list[Record] = field(default_factory=list)
    outcome: str = COMPLETED
    reason: str = ""
    best_validation_accuracy: float | None = None
    best_epoch: float | None = None
    train_seconds: float = 0.0

    def to_csv(self) -> str:
        buf = io.StringIO()
        names = [f.name for f in fields(Record)]
        writer = csv.DictWriter(buf, fieldnames=names)
        writer.writeheader()
        for r in self.records:
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})
        return buf.getvalue()

    def column(self, name: str) -> list:
        return [getattr(r, name) for r in self.records]


# An observer sees each record (and the network) and returns None to continue,
# or a status string to stop training with that outcome.
Observer = Callable[[Record, "object"], "str | None"]


@dataclass(frozen=True)
class Streams:
    """Independent random streams derived from one seed (SeedSequence.spawn), so that
    e.g. switching dropout on changes neither the initial weights nor the data order."""

    init: np.random.Generator
    shuffle: np.random.Generator
    dropout: np.random.Generator
    monitor: np.random.Generator

    @classmethod
    def from_seed(cls, seed: int) -> "Streams":
        children = np.random.SeedSequence(seed).spawn(4)
        return cls(*(np.random.default_rng(s) for s in children))
