"""The SGD training loop: epochs of shuffled mini-batches, monitoring, schedules,
early stopping, divergence, observers.

Pure Python + NumPy: no tracking, tuning or config framework is imported here.
Observers (tracking, progress bars, pruning) are called after every evaluation and
may ask the loop to stop by returning a status string (e.g. "pruned").
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Protocol, Sequence

import numpy as np

from nnexp.engine.network import Network, evaluate
from nnexp.engine.regularizers import PENALTIES
from nnexp.engine.sgd import Stepper

SPLIT_NAMES = ("training", "validation", "test")
METRIC_NAMES = tuple(f"{s}_{k}" for s in SPLIT_NAMES for k in ("cost", "accuracy"))

COMPLETED, DIVERGED, EARLY_STOPPED, PRUNED = "completed", "diverged", "early_stopped", "pruned"


class DataSplit(Protocol):
    x: np.ndarray  # (n, n_in)
    y: np.ndarray  # (n,) int labels


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
    evaluations; training ends when eta reaches eta0 * ``min_factor`` (book: 1/1024)."""

    patience: int = 10
    min_factor: float = 1 / 1024
    name: str = "halve_on_plateau"


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when validation accuracy has not improved for ``patience`` evaluations."""

    patience: int = 10
    restore_best: bool = True


@dataclass(frozen=True)
class TrainSpec:
    epochs: int
    mini_batch_size: int
    eta: float
    lmbda: float = 0.0
    penalty: str = "l2"  # "none" | "l2" | "l1"
    dropout: float = 0.0  # probability of dropping a hidden neuron during training
    momentum: float = 0.0
    schedule: Constant | HalveOnPlateau = Constant()
    early_stopping: EarlyStopping | None = None
    monitor: Monitor = Monitor()
    divergence_cost: float = 1e4  # a monitored cost above this (or non-finite) = diverged


@dataclass
class Record:
    """One evaluation. Costs include the weight penalty, scaled by the training-set size."""

    epoch: float  # epochs completed (fractional with sub-epoch monitoring)
    images_seen: int
    eta: float
    epoch_seconds: float  # training time since the previous evaluation
    training_cost: float | None = None
    training_accuracy: float | None = None
    validation_cost: float | None = None
    validation_accuracy: float | None = None
    test_cost: float | None = None
    test_accuracy: float | None = None

    def metrics(self) -> dict[str, float]:
        """The monitored values and eta/epoch_seconds, without the missing ones."""
        out = {k: getattr(self, k) for k in METRIC_NAMES if getattr(self, k) is not None}
        out["eta"] = self.eta
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
Observer = Callable[[Record, Network], "str | None"]


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


def one_hot(labels: np.ndarray, n_classes: int, dtype) -> np.ndarray:
    y = np.zeros((len(labels), n_classes), dtype=dtype)  # (n, n_classes)
    y[np.arange(len(labels)), labels] = 1.0
    return y


class _Trainer:
    """State of one fit: the loop's pieces kept small and separately readable."""

    def __init__(self, net, train, validation, test, spec: TrainSpec, streams: Streams,
                 observers: Sequence[Observer], stepper=None, prepared=None):
        self.net, self.spec, self.streams, self.observers = net, spec, streams, observers
        dtype = net.dtype
        if prepared is None:
            x = np.ascontiguousarray(train.x, dtype=dtype)  # (n, n_in)
            labels = np.asarray(train.y)
            prepared = (x, labels, one_hot(labels, net.sizes[-1], dtype))  # y: (n, n_out)
        self.x, self.labels, self.y = prepared
        self.n = len(self.x)
        self.sgd = stepper or Stepper(net, eta=spec.eta, lmbda=spec.lmbda, n_train=self.n,
                                      penalty=spec.penalty, momentum=spec.momentum)
        self.sets = {"training": (self.x, self.labels)}
        if validation is not None:
            vx, vy = np.asarray(validation.x, dtype=dtype), np.asarray(validation.y)
            m = spec.monitor.validation_sample
            if m is not None and m < len(vx):
                pick = streams.monitor.choice(len(vx), size=m, replace=False)
                vx, vy = vx[pick], vy[pick]
            self.sets["validation"] = (vx, vy)
        if test is not None:
            self.sets["test"] = (np.asarray(test.x, dtype=dtype), np.asarray(test.y))
        self.history = History()
        self.images_seen = 0
        self.eta0 = spec.eta
        self.best_params = None
        self.since_best = 0
        self.since_best_sched = 0
        self.clock = 0.0

    # -- evaluation -----------------------------------------------------------------
    def evaluate(self, precomputed: dict[str, tuple[float, float]] | None = None) -> Record:
        """Evaluate the monitored splits (``precomputed``: split -> (cost, accuracy) already
        measured, e.g. for a whole population at once)."""
        spec, h = self.spec, self.history
        rec = Record(epoch=self.images_seen / self.n, images_seen=self.images_seen,
                     eta=self.sgd.eta, epoch_seconds=self.clock)
        if spec.monitor.every_images is None:
            rec.epoch = round(rec.epoch)  # whole epochs: a clean MLflow step
        penalty = PENALTIES[spec.penalty].value(self.net.weights, spec.lmbda, self.n)
        for split in SPLIT_NAMES:
            wanted = [k for k in ("cost", "accuracy") if f"{split}_{k}" in spec.monitor.metrics]
            if not wanted or split not in self.sets:
                continue
            if precomputed and split in precomputed:
                cost, acc = precomputed[split]
            else:
                cost, acc = evaluate(self.net, *self.sets[split])
            if "cost" in wanted:
                setattr(rec, f"{split}_cost", cost + penalty)
            if "accuracy" in wanted:
                setattr(rec, f"{split}_accuracy", acc)
        h.records.append(rec)
        self.clock = 0.0
        return rec

    def diverged(self, rec: Record) -> str | None:
        if not self.net.params_finite():
            return "parameters became non-finite"
        for k in ("training_cost", "validation_cost", "test_cost"):
            v = getattr(rec, k)
            if v is not None and (not math.isfinite(v) or v > self.spec.divergence_cost):
                return f"{k} = {v:.4g} exceeds {self.spec.divergence_cost:g}"
        return None

    def after_evaluation(self, rec: Record) -> tuple[str, str] | None:
        """Book-keeping after an evaluation; returns (outcome, reason) to stop."""
        why = self.diverged(rec)
        if why:  # the observers still see the record: a diverged run keeps its curves
            for observer in self.observers:
                observer(rec, self.net)
            return DIVERGED, why
        h, spec = self.history, self.spec
        acc = rec.validation_accuracy
        if acc is not None:
            if h.best_validation_accuracy is None or acc > h.best_validation_accuracy:
                h.best_validation_accuracy, h.best_epoch = acc, rec.epoch
                self.since_best = self.since_best_sched = 0
                if spec.early_stopping and spec.early_stopping.restore_best:
                    self.best_params = self.net.copy_params()
            else:
                self.since_best += 1
                self.since_best_sched += 1
        for observer in self.observers:
            status = observer(rec, self.net)
            if status:
                return status, f"stopped by {getattr(observer, '__name__', type(observer).__name__)}"
        es = spec.early_stopping
        if es and acc is not None and self.since_best >= es.patience:
            return EARLY_STOPPED, f"no improvement in validation accuracy for {es.patience} evaluations"
        sched = spec.schedule
        if isinstance(sched, HalveOnPlateau) and acc is not None and self.since_best_sched >= sched.patience:
            self.sgd.eta /= 2
            self.since_best_sched = 0
            if self.sgd.eta <= self.eta0 * sched.min_factor * (1 + 1e-12):
                return COMPLETED, f"learning rate reached eta0 x {sched.min_factor:g}"
        return None

    # -- training ---------------------------------------------------------------------
    def run_epoch(self, last: bool) -> tuple[str, str] | None:
        spec, net, sgd = self.spec, self.net, self.sgd
        m, n, x, y = spec.mini_batch_size, self.n, self.x, self.y
        every = spec.monitor.every_images
        perm = self.streams.shuffle.permutation(n)
        keep = 1.0 - spec.dropout
        hidden_sizes = net.sizes[1:-1]
        t0 = time.perf_counter()
        for k in range(0, n, m):
            idx = perm[k:k + m]
            xb, yb = x[idx], y[idx]  # (batch, n_in), (batch, n_out)
            masks = None
            if spec.dropout:  # inverted dropout: kept neurons scaled by 1/keep
                masks = [((self.streams.dropout.random((len(idx), h)) < keep) / keep).astype(net.dtype)
                         for h in hidden_sizes]
            sgd.step(xb, yb, masks)
            self.images_seen += len(idx)
            if every and self.images_seen >= self.next_eval:
                self.next_eval += every
                self.clock += time.perf_counter() - t0
                stop = self.after_evaluation(self.evaluate())
                if stop:
                    return stop
                t0 = time.perf_counter()
        self.clock += time.perf_counter() - t0
        done = self.history.records and self.history.records[-1].images_seen == self.images_seen
        if every is None or (last and not done):
            return self.after_evaluation(self.evaluate())
        return None

    def fit(self) -> History:
        h = self.history
        start = time.perf_counter()
        every = self.spec.monitor.every_images
        self.next_eval = every or 0
        with np.errstate(all="ignore"):  # divergence is detected and reported, not warned
            for epoch in range(self.spec.epochs):
                stop = self.run_epoch(last=epoch == self.spec.epochs - 1)
                if stop:
                    h.outcome, h.reason = stop
                    break
        if self.best_params is not None and h.outcome != DIVERGED:
            self.net.set_params(*self.best_params)
        h.train_seconds = time.perf_counter() - start
        return h


def fit(net: Network, train: DataSplit, spec: TrainSpec, *, validation: DataSplit | None = None,
        test: DataSplit | None = None, streams: Streams | None = None, seed: int = 0,
        observers: Sequence[Observer] = ()) -> History:
    """Train ``net`` in place by mini-batch SGD and return its History.

    ``streams`` (or ``seed``) supplies the shuffling, dropout and monitoring randomness.
    Never raises on divergence: the History's outcome is "diverged" instead.
    """
    if spec.mini_batch_size < 1 or spec.mini_batch_size > len(train.x):
        raise ValueError(f"mini_batch_size must be in [1, {len(train.x)}], got {spec.mini_batch_size}")
    needs_val = spec.early_stopping is not None or isinstance(spec.schedule, HalveOnPlateau)
    if needs_val and (validation is None or "validation_accuracy" not in spec.monitor.metrics):
        raise ValueError("early stopping and halve_on_plateau need validation_accuracy monitored")
    streams = streams or Streams.from_seed(seed)
    return _Trainer(net, train, validation, test, spec, streams, observers).fit()


# -- populations -------------------------------------------------------------------------------
class _MemberRate:
    """A population member's learning rate, as the schedule of a single run sees it.
    ``rows`` maps members to their current row of the stack (absent once dropped)."""

    def __init__(self, stepper, k: int, rows: dict[int, int]):
        self._stepper, self._k, self._rows = stepper, k, rows
        self._last = float(stepper.eta[k])

    @property
    def eta(self) -> float:
        row = self._rows.get(self._k)
        if row is not None:
            self._last = float(self._stepper.eta[row])
        return self._last

    @eta.setter
    def eta(self, value: float) -> None:
        self._last = value
        row = self._rows.get(self._k)
        if row is not None:
            self._stepper.eta[row] = value


SHARED = ("mini_batch_size", "penalty", "monitor", "divergence_cost")


def population_key(net: Network, spec: TrainSpec) -> tuple:
    """Runs with equal keys can be trained as one population."""
    return (tuple(net.sizes), net.hidden, net.cost, net.dtype.str, spec.dropout > 0,
            *(getattr(spec, f) for f in SHARED))


def fit_population(nets: Sequence[Network], train: DataSplit, specs: Sequence[TrainSpec], *,
                   validation: DataSplit | None = None, test: DataSplit | None = None,
                   streams: Sequence[Streams], observers: Sequence[Sequence[Observer]] | None = None
                   ) -> list[History]:
    """Train K compatible networks as one batched computation; one History per member.

    Each member keeps its own random streams (initial weights are the caller's, data order
    and dropout masks are drawn from its streams exactly as ``fit`` draws them), so a
    member's history equals the single run with the same seed and hyper-parameters, up to
    floating-point summation order. The networks are trained in place.
    """
    from nnexp.engine.population import PopulationStepper

    k = len(nets)
    keys = {population_key(n, s) for n, s in zip(nets, specs)}
    if len(keys) != 1:
        raise ValueError("population members must share architecture, cost, dtype, mini-batch size, "
                         "penalty type, dropout on/off and monitoring")
    observers = observers or [() for _ in range(k)]
    for spec in specs:
        if spec.mini_batch_size < 1 or spec.mini_batch_size > len(train.x):
            raise ValueError(f"mini_batch_size must be in [1, {len(train.x)}], got {spec.mini_batch_size}")
    n_layers = len(nets[0].weights)
    # (K, n_in, n_out), each member's matrix in Fortran order like a single network's
    weights = [np.stack([net.weights[l].T for net in nets]).transpose(0, 2, 1) for l in range(n_layers)]
    biases = [np.stack([net.biases[l] for net in nets]) for l in range(n_layers)]  # (K, n_out)
    for i, net in enumerate(nets):  # members become views into the stack
        net.weights = [w[i] for w in weights]
        net.biases = [b[i] for b in biases]
    dtype = nets[0].dtype
    x = np.ascontiguousarray(train.x, dtype=dtype)
    labels = np.asarray(train.y)
    prepared = (x, labels, one_hot(labels, nets[0].sizes[-1], dtype))
    stepper = PopulationStepper(weights, biases, hidden=nets[0].hidden, cost=nets[0].cost,
                                eta=[s.eta for s in specs], lmbda=[s.lmbda for s in specs],
                                momentum=[s.momentum for s in specs], n_train=len(x), penalty=specs[0].penalty)
    row_of = {i: i for i in range(k)}  # member -> its row of the stack
    members = [_Trainer(nets[i], train, validation, test, specs[i], streams[i], observers[i],
                        stepper=_MemberRate(stepper, i, row_of), prepared=prepared) for i in range(k)]
    return _PopulationLoop(members, stepper, prepared, row_of).run()


class _PopulationLoop:
    """The epochs of a population. Members are indexed 0..K-1; the stack holds the rows
    ``self.rows`` (member of each row), shrinking as members freeze (``compact``)."""

    def __init__(self, members: list[_Trainer], stepper, prepared, row_of: dict[int, int]):
        self.members, self.stepper = members, stepper
        self.x, _, self.y = prepared
        self.n = len(self.x)
        self.spec = members[0].spec  # the shared settings
        self.images_seen = 0
        self.active = np.ones(len(members), dtype=bool)  # per member
        self.rows = np.arange(len(members))  # per row of the stack: its member
        self.row_of = row_of
        self.dropout = any(m.spec.dropout for m in members)
        self.nonzero: dict = {}  # split -> NonzeroColumns, for the evaluation gemm

    def freeze(self, i: int, stop: tuple[str, str] | None) -> None:
        m = self.members[i]
        if stop:
            m.history.outcome, m.history.reason = stop
        if m.best_params is not None and m.history.outcome != DIVERGED:
            m.net.set_params(*m.best_params)
        self.active[i] = False
        self.stepper.active[self.row_of[i]] = False  # masked until the next compact()

    def compact(self) -> np.ndarray | None:
        """Drop frozen members from the stack (their networks keep their final weights);
        returns the rows kept, or None if nothing changed."""
        keep = np.flatnonzero(self.stepper.active)
        if len(keep) == len(self.rows) or len(keep) == 0:
            return None
        self.stepper.keep(keep)
        self.rows = self.rows[keep]
        self.row_of.clear()
        for r, i in enumerate(self.rows):
            self.row_of[int(i)] = r
            net = self.members[i].net
            net.weights = [w[r] for w in self.stepper.weights]
            net.biases = [b[r] for b in self.stepper.biases]
        return keep

    def shared_results(self, chosen: list[int]) -> dict[int, dict[str, tuple[float, float]]]:
        """Cost and accuracy of the chosen members on every split they all monitor on the same
        arrays, computed for the whole population at once."""
        from nnexp.engine.population import NonzeroColumns, evaluate_population

        out: dict[int, dict] = {i: {} for i in chosen}
        first = self.members[chosen[0]]
        for split, (x, labels) in first.sets.items():
            wanted = any(f"{split}_{k}" in first.spec.monitor.metrics for k in ("cost", "accuracy"))
            if not wanted or any(self.members[i].sets.get(split, (None,))[0] is not x for i in chosen):
                continue  # e.g. per-member validation samples: evaluated member by member
            rows = np.array([self.row_of[i] for i in chosen])
            if split not in self.nonzero or self.nonzero[split].source is not x:
                self.nonzero[split] = NonzeroColumns(x)  # once per set: a copy without zero columns
            costs, accs = evaluate_population(self.stepper.weights, self.stepper.biases, rows,
                                              hidden=first.net.hidden, cost=first.net.cost,
                                              x=self.nonzero[split], labels=labels)
            for j, i in enumerate(chosen):
                out[i][split] = (float(costs[j]), float(accs[j]))
        return out

    def evaluate_all(self, elapsed: float, final_for: set[int] | None = None) -> None:
        chosen = [int(i) for i in np.flatnonzero(self.active) if final_for is None or i in final_for]
        if not chosen:
            return
        results = self.shared_results(chosen)
        for i in chosen:
            m = self.members[i]
            m.images_seen = self.images_seen
            m.clock += elapsed
            stop = m.after_evaluation(m.evaluate(results[i]))
            if stop:
                self.freeze(i, stop)

    def masks(self, mb: int) -> list[np.ndarray] | None:
        if not self.dropout:
            return None
        out = []
        for h in self.members[0].net.sizes[1:-1]:
            layer = []
            for r, i in enumerate(self.rows):
                m = self.members[i]
                keep = 1.0 - m.spec.dropout
                if self.stepper.active[r]:
                    layer.append(((m.streams.dropout.random((mb, h)) < keep) / keep).astype(self.x.dtype))
                else:
                    layer.append(np.ones((mb, h), dtype=self.x.dtype))
            out.append(np.stack(layer))  # (K, mb, h)
        return out

    def run(self) -> list[History]:
        start = time.perf_counter()
        spec, every = self.spec, self.spec.monitor.every_images
        next_eval = every or 0
        epochs = max(m.spec.epochs for m in self.members)
        mb = spec.mini_batch_size
        with np.errstate(all="ignore"):
            for epoch in range(epochs):
                for i in np.flatnonzero(self.active):
                    if epoch >= self.members[i].spec.epochs:
                        self.freeze(i, None)
                if not self.active.any():
                    break
                self.compact()
                perms = np.stack([self.members[i].streams.shuffle.permutation(self.n)
                                  for i in self.rows])  # (K, n): all rows active after compact()
                t0 = time.perf_counter()
                for s in range(0, self.n, mb):
                    idx = perms[:, s:s + mb]  # (K, batch)
                    self.stepper.step(self.x[idx], self.y[idx], self.masks(idx.shape[1]))
                    self.images_seen += idx.shape[1]
                    if every and self.images_seen >= next_eval:
                        next_eval += every
                        self.evaluate_all(time.perf_counter() - t0)
                        t0 = time.perf_counter()
                        if not self.active.any():
                            break
                        kept = self.compact()
                        if kept is not None:
                            perms = perms[kept]
                elapsed = time.perf_counter() - t0
                last = {i for i, m in enumerate(self.members) if epoch == m.spec.epochs - 1}
                if every is None:
                    self.evaluate_all(elapsed)
                else:
                    pending = {i for i in last if not self.members[i].history.records
                               or self.members[i].history.records[-1].images_seen != self.images_seen}
                    for i in np.flatnonzero(self.active):
                        self.members[i].clock += elapsed
                    self.evaluate_all(0.0, final_for=pending)
            for i in np.flatnonzero(self.active):
                self.freeze(i, None)
        total = time.perf_counter() - start
        for m in self.members:
            m.history.train_seconds = total
        return [m.history for m in self.members]
