"""Speed of the engine's mini-batch SGD, next to the book's per-example algorithm.

What is measured
----------------
Training time only (no evaluation, no data loading) of plain mini-batch SGD with the
book's chapter-3 settings: sigmoid hidden layer, cross-entropy cost, L2 weight decay
(lambda = 5.0), eta = 0.5, on the 50,000 MNIST training images (sklearn's 8x8 digits
when MNIST is not available). For each network ([784,30,10] and [784,100,10]),
mini-batch size (10 and 100) and float type (float64 and float32):

* engine: ``nnexp.train.fit`` with ``Monitor(metrics=())``, one warm-up epoch, then
  ``--epochs`` timed epochs; the best ``Record.epoch_seconds`` is reported, as seconds
  per epoch and microseconds per mini-batch. This is the real training path: shuffled
  mini-batches gathered with ``x[perm[k:k+m]]`` and one fused-gemm ``Stepper.step`` each.
* reference: the book's network2-style update written here from scratch (column vectors,
  backprop one example at a time, gradients summed over the mini-batch, then
  ``w <- (1 - eta lambda/n) w - (eta/m) nabla_w``), float64 only. It is timed on a subset
  of the training images (2,000 by default) and extrapolated linearly to a full epoch.

The ratio column is reference time / engine time for the rows where both exist.
BLAS is pinned to one thread for the whole run (numpy and scipy each bundle an OpenBLAS;
letting both use several threads was measured to be 25x slower).

* hand-vectorised: a plain NumPy loop written here for the comparison (one row per example,
  mini-batches gathered with ``x[idx]``, one in-place gemm per layer applying weight decay
  and gradient together), the best a hand-written NumPy step does; timed like the engine.

Targets ([784,30,10], mini-batch 10, 50,000 images): float64 within 1.10x of the
hand-vectorised loop in the same run, float32 at most 0.16 s/epoch, and at least 10x
faster than the per-example reference.

The report is a list of sections (:data:`SECTIONS`), each a function from the shared
:class:`Bench` context to a :class:`Table`; further sections (e.g. a population of
networks trained side by side) are added by appending to that list.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

import nnexp.engine.stepper  # noqa: F401  (loads scipy's BLAS before the thread limit is applied)
from nnexp import data
from nnexp.engine.network import init_network
from nnexp.config.errors import DataError, NnexpError
from nnexp.config.names import COMPLETED
from nnexp.train import Monitor, Streams, TrainSpec, fit

ETA = 0.5
LMBDA = 5.0
HIDDEN_SIZES = (30, 100)
MINI_BATCHES = (10, 100)
DTYPES = (np.float64, np.float32)
#: (hidden size, mini-batch size) pairs also timed with the per-example reference (float64).
REFERENCE_CASES = ((30, 10), (100, 10), (100, 100))
REFERENCE_IMAGES = 2_000
QUICK_IMAGES = 5_000
QUICK_REFERENCE_IMAGES = 500
#: Targets for [n_in, 30, 10], mini-batch 10, 50,000 images.
TARGET_SECONDS = {"float32": 0.16}
TARGET_HAND_RATIO = {"float64": 1.10}
TARGET_SPEEDUP = 10.0


# --------------------------------------------------------------------------- reference


def _ref_sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class ReferenceNetwork:
    """The book's per-example network: weights[l] (n_out, n_in), biases[l] (n_out, 1).

    Independent of :mod:`nnexp.engine`: sigmoid neurons, cross-entropy output error,
    L2 weight decay, one example (a column vector) at a time.
    """

    def __init__(self, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray]):
        self.weights = [np.array(w, dtype=np.float64) for w in weights]
        self.biases = [np.array(b, dtype=np.float64).reshape(-1, 1) for b in biases]

    @classmethod
    def random(cls, sizes: Sequence[int], rng: np.random.Generator) -> "ReferenceNetwork":
        """Weights N(0, 1/n_in), biases N(0, 1): the book's default initialisation."""
        pairs = list(zip(sizes[:-1], sizes[1:]))
        weights = [rng.standard_normal((n_out, n_in)) / np.sqrt(n_in) for n_in, n_out in pairs]
        biases = [rng.standard_normal((n_out, 1)) for _, n_out in pairs]
        return cls(weights, biases)

    def backprop(self, x: np.ndarray, y: np.ndarray):
        """Gradients of one example's cost: x (n_in, 1), y (n_out, 1)."""
        outputs = [x]
        for w, b in zip(self.weights, self.biases):
            outputs.append(_ref_sigmoid(w @ outputs[-1] + b))
        grads_w = [np.zeros_like(w) for w in self.weights]
        grads_b = [np.zeros_like(b) for b in self.biases]
        err = outputs[-1] - y  # cross-entropy: delta^L = a^L - y
        for l in range(len(self.weights) - 1, -1, -1):
            grads_b[l] = err
            grads_w[l] = err @ outputs[l].T
            if l > 0:
                a = outputs[l]
                err = (self.weights[l].T @ err) * (a * (1.0 - a))
        return grads_w, grads_b

    def update_mini_batch(self, batch, eta: float, lmbda: float, n: int) -> None:
        """One SGD step on ``batch``, a list of (x, y) column-vector pairs."""
        sum_w = [np.zeros_like(w) for w in self.weights]
        sum_b = [np.zeros_like(b) for b in self.biases]
        for x, y in batch:
            grads_w, grads_b = self.backprop(x, y)
            sum_w = [s + g for s, g in zip(sum_w, grads_w)]
            sum_b = [s + g for s, g in zip(sum_b, grads_b)]
        m = len(batch)
        decay = 1.0 - eta * lmbda / n
        self.weights = [decay * w - (eta / m) * g for w, g in zip(self.weights, sum_w)]
        self.biases = [b - (eta / m) * g for b, g in zip(self.biases, sum_b)]


def column_pairs(x: np.ndarray, labels: np.ndarray, n_classes: int) -> list:
    """The book's data layout: a list of (x (n_in, 1), one-hot y (n_classes, 1)) pairs."""
    pairs = []
    for row, label in zip(np.asarray(x, dtype=np.float64), labels):
        y = np.zeros((n_classes, 1))
        y[int(label)] = 1.0
        pairs.append((row.reshape(-1, 1), y))
    return pairs


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    seconds_per_epoch: float
    us_per_batch: float


def time_engine(train: data.Split, sizes: list[int], mini_batch: int, dtype,
                epochs: int, seed: int = 0) -> Timing:
    """Best epoch of ``fit`` (after one warm-up epoch) on ``train``, training time only."""
    streams = Streams.from_seed(seed)
    net = init_network(sizes, streams.init, dtype=dtype)
    spec = TrainSpec(epochs=1 + epochs, mini_batch_size=mini_batch, eta=ETA, lmbda=LMBDA,
                     penalty="l2", monitor=Monitor(metrics=()))
    history = fit(net, train, spec, streams=streams)
    if history.outcome != COMPLETED:
        raise NnexpError(f"benchmark training {sizes} mb {mini_batch} ended {history.outcome}: "
                         f"{history.reason}")
    best = min(r.epoch_seconds for r in history.records[1:])
    return Timing(best, 1e6 * best / math.ceil(len(train.x) / mini_batch))


def time_reference(pairs: list, sizes: list[int], mini_batch: int, n_train: int,
                   epochs: int, seed: int = 0) -> Timing:
    """Best of ``epochs`` passes of the reference over ``pairs``, extrapolated to ``n_train``."""
    rng = np.random.default_rng(seed)
    net = ReferenceNetwork.random(sizes, rng)
    net.update_mini_batch(pairs[:mini_batch], ETA, LMBDA, n_train)  # warm-up
    best = math.inf
    for _ in range(epochs):
        shuffled = [pairs[i] for i in rng.permutation(len(pairs))]
        t0 = time.perf_counter()
        for k in range(0, len(shuffled), mini_batch):
            net.update_mini_batch(shuffled[k:k + mini_batch], ETA, LMBDA, n_train)
        best = min(best, time.perf_counter() - t0)
    n_batches = math.ceil(len(pairs) / mini_batch)
    return Timing(best * n_train / len(pairs), 1e6 * best / n_batches)


def time_hand_vectorised(train: data.Split, sizes: list[int], mini_batch: int, dtype, epochs: int,
                         seed: int = 0) -> Timing:
    """Best of ``epochs`` epochs (after one warm-up) of a plain hand-vectorised NumPy loop."""
    from scipy.linalg.blas import get_blas_funcs

    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(train.x, dtype=dtype)  # (n, n_in)
    y = np.zeros((len(x), sizes[-1]), dtype=dtype)  # (n, n_out) one-hot
    y[np.arange(len(x)), train.y] = 1.0
    ws = [np.asfortranarray(rng.standard_normal((a, b)) / np.sqrt(a), dtype=dtype) for a, b in zip(sizes, sizes[1:])]
    bs = [rng.standard_normal(b).astype(dtype) for b in sizes[1:]]
    gemm = get_blas_funcs("gemm", (ws[0],))
    n, decay = len(x), 1.0 - ETA * LMBDA / len(x)

    def sigmoid(z):
        z *= 0.5
        np.tanh(z, out=z)
        z *= 0.5
        z += 0.5
        return z

    best = math.inf
    for epoch in range(1 + epochs):
        perm = rng.permutation(n)
        t0 = time.perf_counter()
        for k in range(0, n, mini_batch):
            idx = perm[k:k + mini_batch]
            xb, yb = x[idx], y[idx]  # (m, n_in), (m, n_out)
            acts = [xb]
            for w, b in zip(ws, bs):
                z = acts[-1] @ w  # (m, n_out)
                z += b
                acts.append(sigmoid(z))
            delta = acts[-1] - yb  # cross-entropy (eq. 66)
            alpha = -ETA / len(idx)
            for l in range(len(ws) - 1, -1, -1):
                back = delta @ ws[l].T if l else None
                gb = delta.sum(axis=0)
                gemm(alpha, acts[l].T, delta.T, beta=decay, c=ws[l], trans_b=1, overwrite_c=1)
                gb *= alpha
                bs[l] += gb
                if l:
                    a = acts[l]
                    back *= a - a * a  # sigma'(z)
                    delta = back
        if epoch:
            best = min(best, time.perf_counter() - t0)
    return Timing(best, 1e6 * best / math.ceil(n / mini_batch))


# --------------------------------------------------------------------------- report


@dataclass
class Bench:
    """What every section shares: the training data (float64) and the run's settings."""

    dataset: str  # "MNIST" or "digits"
    train: data.Split
    n_classes: int
    epochs: int
    reference_images: int
    notes: list[str] = field(default_factory=list)
    data_dir: str | None = None
    quick: bool = False
    workers: int = 1

    @property
    def n_train(self) -> int:
        return len(self.train.x)

    @property
    def n_in(self) -> int:
        return int(self.train.x.shape[1])


@dataclass
class Table:
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    footnotes: list[str] = field(default_factory=list)

    def render(self) -> str:
        cells = [self.columns] + self.rows
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]

        def line(row):
            first = row[0].ljust(widths[0])
            rest = (c.rjust(w) for c, w in zip(row[1:], widths[1:]))
            return "  ".join([first, *rest]).rstrip()

        out = [self.title, line(self.columns), line(tuple("-" * w for w in widths))]
        out += [line(r) for r in self.rows]
        return "\n".join(out + self.footnotes)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _label(sizes: Sequence[int]) -> str:
    return "[" + ",".join(str(s) for s in sizes) + "]"


SGD_COLUMNS = ("network", "mb", "dtype", "engine s/epoch", "engine us/batch", "hand s/epoch",
               "engine/hand", "reference s/epoch*", "reference us/batch", "reference/engine")


def sgd_results(bench: Bench) -> list[dict]:
    """Time every engine case and the reference cases; one dict per table row."""
    pairs = column_pairs(bench.train.x[:bench.reference_images],
                         bench.train.y[:bench.reference_images], bench.n_classes)
    by_dtype = {np.dtype(dt).name: data.Split(x=bench.train.x.astype(dt), y=bench.train.y)
                for dt in DTYPES}
    results = []
    for hidden in HIDDEN_SIZES:
        sizes = [bench.n_in, hidden, bench.n_classes]
        for mb in MINI_BATCHES:
            for dtype_name, train in by_dtype.items():
                engine = time_engine(train, sizes, mb, train.x.dtype, bench.epochs)
                hand = time_hand_vectorised(train, sizes, mb, train.x.dtype, bench.epochs)
                ref = None
                if dtype_name == "float64" and (hidden, mb) in REFERENCE_CASES:
                    ref = time_reference(pairs, sizes, mb, bench.n_train, bench.epochs)
                results.append({"sizes": sizes, "mb": mb, "dtype": dtype_name,
                                "engine": engine, "hand": hand, "reference": ref})
    return results


def _sgd_row(r: dict) -> tuple[str, ...]:
    e, hand, ref = r["engine"], r["hand"], r["reference"]
    ratio = ref.seconds_per_epoch / e.seconds_per_epoch if ref else None
    return (_label(r["sizes"]), str(r["mb"]), r["dtype"],
            _num(e.seconds_per_epoch, ".4f"), _num(e.us_per_batch, ".1f"),
            _num(hand.seconds_per_epoch, ".4f"), _num(e.seconds_per_epoch / hand.seconds_per_epoch, ".2f"),
            _num(ref and ref.seconds_per_epoch, ".4f"), _num(ref and ref.us_per_batch, ".1f"),
            _num(ratio, ".1f"))


def target_lines(bench: Bench, results: list[dict]) -> list[str]:
    """Pass/fail against the targets; only meaningful on the full 50,000 MNIST images."""
    if bench.dataset != "MNIST" or bench.n_train != 50_000:
        return ["targets: not checked (they are for the 50,000 MNIST training images)"]
    lines = []
    for r in results:
        if r["sizes"][1] != 30 or r["mb"] != 10:
            continue
        s = r["engine"].seconds_per_epoch
        if r["dtype"] in TARGET_SECONDS:
            limit = TARGET_SECONDS[r["dtype"]]
            lines.append(f"target {_label(r['sizes'])} mb 10 {r['dtype']}: {s:.3f} s/epoch "
                         f"<= {limit:.2f}: {'ok' if s <= limit else 'MISSED'}")
        if r["dtype"] in TARGET_HAND_RATIO:
            ratio, limit = s / r["hand"].seconds_per_epoch, TARGET_HAND_RATIO[r["dtype"]]
            lines.append(f"target {_label(r['sizes'])} mb 10 {r['dtype']}: {ratio:.2f}x the hand-vectorised "
                         f"loop <= {limit:.2f}x: {'ok' if ratio <= limit else 'MISSED'}")
        if r["reference"]:
            x = r["reference"].seconds_per_epoch / s
            lines.append(f"target {_label(r['sizes'])} mb 10 speed-up over reference: {x:.1f}x "
                         f">= {TARGET_SPEEDUP:.0f}x: {'ok' if x >= TARGET_SPEEDUP else 'MISSED'}")
    return lines


def sgd_section(bench: Bench) -> Table:
    results = sgd_results(bench)
    foot = [f"* reference: per-example backprop (book's algorithm), float64, timed on the first "
            f"{min(bench.reference_images, bench.n_train):,} training images and extrapolated "
            f"to {bench.n_train:,} images per epoch"]
    return Table(f"SGD training speed ({bench.dataset}, {bench.n_train:,} images per epoch)",
                 SGD_COLUMNS, [_sgd_row(r) for r in results],
                 foot + target_lines(bench, results))


def _overfitting_run(bench: Bench, tracked: bool, store: str, run_dir: Path):
    """The 400-epoch ``overfitting`` preset through the real run path (nnexp.runner)."""
    from nnexp import runner

    overrides = ["+experiment=overfitting", f"tracking.uri={store}",
                 "tracking.enabled=" + ("true" if tracked else "false")]
    if bench.dataset != "MNIST":
        overrides += ["dataset=digits", f"sizes=[{bench.n_in},30,10]"]
    if bench.data_dir:
        overrides.append(f"dataset.data_dir={bench.data_dir}")
    if bench.quick:
        overrides.append("epochs=20")
    job = runner.compose(overrides, run_dir=run_dir)
    start = time.perf_counter()
    (result,) = runner.execute(job)
    return result, time.perf_counter() - start, job.config.total_epochs


def tracking_section(bench: Bench) -> Table:
    """Tracking overhead on the overfitting preset: the local record (written by the training
    loop) and the wall time against an untracked run (the store is written off the training
    path, by a background thread)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        _overfitting_run(bench, True, store, Path(tmp, "warm-up"))  # creates and migrates the store
        walls = {}
        for i, tracked in enumerate((False, True, False, True)):
            result, wall, epochs = _overfitting_run(bench, tracked, store, Path(tmp, f"run{i}"))
            walls.setdefault(tracked, []).append(wall)
            n_metrics = sum(len(r.metrics()) for r in result.history.records)
            share = 100 * result.tracking_seconds / wall
            rows.append(("record + mlflow (sqlite)" if tracked else "off", str(epochs),
                         str(n_metrics if tracked else 0), f"{wall:.2f}", f"{result.history.train_seconds:.2f}",
                         f"{result.tracking_seconds:.3f}", f"{share:.2f}%"))
    extra = 100 * (min(walls[True]) / min(walls[False]) - 1)
    foot = ["record s: time the run spent writing its local record (params, per-evaluation metrics, "
            "dataset, summary, artifacts); the MLflow store is written by a background thread",
            f"wall time tracked vs off (best of 2 each): {extra:+.1f}%",
            "target: local record <= 2% of wall time"]
    return Table("Tracking overhead: the overfitting preset (400 epochs, 1,000 images, 6 metrics/epoch)",
                 ("tracking", "epochs", "metrics", "wall s", "fit s", "record s", "share"), rows, foot)


#: the study benchmark's methods: nnexp.study overrides of each
STUDY_METHODS = {
    "broad_strategy": ["study=broad_strategy"],
    "tpe_median": ["study=tpe", "study.pruner=median"],
    "tpe_hyperband": ["study=tpe", "study.pruner=hyperband"],
    "random": ["study=random", "study.pruner=none"],
}


def _study_run(method: str, seed: int, store: Path, workers: int, extra: list[str]) -> dict:
    """One study, in this process, on its own storage; what the table and the anytime plot need.

    Anytime: after every finished trial on the full problem (the configured network, all classes,
    the whole validation set), the best validation accuracy found so far, against the wall
    seconds since the study started. The final stage is not tuning: its start ends the budget.
    """
    from datetime import datetime

    from hydra import compose, initialize_config_module

    from nnexp.search import finished_trials, run_study

    overrides = [*STUDY_METHODS[method], f"seed={seed}", f"study.seed={seed}", f"study.study_name={method}-{seed}",
                 f"study.storage=sqlite:///{store / 'optuna.db'}", f"study.output_dir={store / method / str(seed)}",
                 f"tracking.uri=sqlite:///{store / 'mlflow.db'}", *extra]
    with initialize_config_module(version_base="1.3", config_module="nnexp.conf"):
        cfg = compose("study", overrides=overrides)
    started = datetime.now()
    start = time.perf_counter()
    ctx = run_study(cfg, workers)
    wall = time.perf_counter() - start
    final_trial = finished_trials(ctx.stage_studies["final"][0][1])[0]
    tuning_s = (final_trial.datetime_start - started).total_seconds()
    points, trials = [], 0
    for stage, studies in ctx.stage_studies.items():
        for rung, st in studies:
            if stage == "final":
                continue
            done = finished_trials(st)
            trials += len(done)
            if rung == "full":
                points += [((t.datetime_complete - started).total_seconds(), t.value) for t in done
                           if t.value is not None]
    curve, best = [], 0.0
    for t, v in sorted(points):
        best = max(best, v)
        curve.append((t, best))
    final = ctx.decisions["final"]
    return {"trials": trials, "tuning_s": tuning_s, "wall": wall, "curve": curve, "best": best,
            "val": final["validation_accuracy"], "test": final.get("test_accuracy"),
            "test_std": final.get("test_accuracy_std"), "tests": final.get("test_accuracies", []),
            "params": (final["eta"], final["lmbda"], final["mini_batch_size"])}


def _best_at(curve: list, seconds: float) -> float | None:
    seen = [v for t, v in curve if t <= seconds]
    return seen[-1] if seen else None


def study_section(bench: Bench) -> Table:
    """Is the broad strategy better than what one would otherwise use? The broad strategy, TPE with
    median pruning, TPE with Hyperband pruning and random search, each with 3 study seeds; every
    other method gets the broad strategy's tuning wall clock (same seed) as its budget. Anytime
    curves (best validation accuracy found so far vs wall seconds) and the final choice's test
    accuracy over its seeds."""
    import statistics
    import tempfile as _tempfile

    from nnexp.report import figures

    extra = ["dataset=digits", f"sizes=[{bench.n_in},30,10]"] if bench.dataset != "MNIST" else []
    if bench.data_dir:
        extra.append(f"dataset.data_dir={bench.data_dir}")
    seeds = (0,) if bench.quick else (0, 1, 2)
    quick = {"broad_strategy": ["study.eta.epochs=2", "study.lmbda.epochs=6", "study.eta.refine_epochs=6",
                                "study.mini_batch.epochs=1", "study.mini_batch.sizes=[10,50]"],
             "sampler": ["study.epochs=6"]} if bench.quick else {}  # a smoke test: short stages
    if bench.quick:
        extra += ["study.final.epochs=6", "study.patience=3"]
    rows, results = [], {m: [] for m in STUDY_METHODS}
    with _tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            budget = None  # the broad strategy's tuning time for this seed: the samplers' budget
            for method in STUDY_METHODS:
                print(f"  {method}, study seed {seed}: running"
                      + (f" (budget {budget:.0f} s)" if budget is not None else "") + " ...", flush=True)
                own = quick.get("broad_strategy" if budget is None else "sampler", [])
                limit = [] if budget is None else [f"study.budget_seconds={budget:.1f}", "study.n_trials=1000"]
                r = _study_run(method, seed, Path(tmp), bench.workers, extra + own + limit)
                results[method].append(r)
                budget = r["tuning_s"] if budget is None else budget
                eta, lmbda, mb = r["params"]
                rows.append((method, str(seed), f"{r['tuning_s']:.0f}", str(r["trials"]), _num(r["best"], ".4f"),
                             f"{eta:.3g}/{lmbda:.3g}/{mb}", f"{r['val']:.4f}",
                             f"{_num(r['test'], '.4f')} ± {_num(r['test_std'], '.4f')}"))
                print("  " + "  ".join(rows[-1]), flush=True)
    budget = statistics.mean(r["tuning_s"] for r in results["broad_strategy"])
    summary = []
    for method, rs in results.items():
        tests = [r["test"] for r in rs if r["test"] is not None]
        at = {f: [_best_at(r["curve"], f * r0["tuning_s"]) for r, r0 in zip(rs, results["broad_strategy"])]
              for f in (0.25, 0.5, 1.0)}
        cells = [f"{statistics.mean([v for v in vs if v is not None]):.4f}" if any(v is not None for v in vs) else "-"
                 for vs in at.values()]
        final = (f"final test accuracy over study seeds {statistics.mean(tests):.4f} ± {statistics.stdev(tests):.4f}"
                 if len(tests) > 1 else f"final test accuracy (one study seed) {tests[0]:.4f}" if tests else "no final")
        summary.append(f"  {method:15s} best validation found at 25% / 50% / 100% of the budget: "
                       f"{' / '.join(cells)}; {final}")
    png = Path("bench_study_anytime.png").resolve()
    figures.anytime_figure({m: [r["curve"] for r in rs] for m, rs in results.items()}, png,
                           title=f"Studies on {bench.dataset}: best validation accuracy found so far "
                                 f"(full problem), {len(seeds)} study seed(s)")
    return Table(f"Studies on {bench.dataset}: broad strategy vs TPE (median, Hyperband pruning) vs random "
                 f"search at equal wall clock ({bench.workers} worker(s); budget: the broad strategy's tuning "
                 f"time, mean {budget:.0f} s)",
                 ("study", "seed", "tuning s", "trials", "best val found", "eta/lambda/mb", "final val acc",
                  "final test acc (mean ± std over its seeds)"), rows,
                 ["best val found: the best validation accuracy of a full-problem trial (the broad strategy's: "
                  "a mean over its seed replicates; the samplers': one seed, so a max over noisier values)",
                  "final: the chosen settings on the full problem with halve_on_plateau + early stopping, "
                  "seed replicates as one population; test accuracy measured once", *summary,
                  f"anytime plot: {png}"])


def study_population_section(bench: Bench) -> Table:
    """The broad strategy with trials one at a time vs asked 6 at a time and trained as
    populations (study.population), one worker; same seed, so grid stages see the same points."""
    import tempfile as _tempfile

    extra = ["dataset=digits", f"sizes=[{bench.n_in},30,10]"] if bench.dataset != "MNIST" else []
    if bench.data_dir:
        extra.append(f"dataset.data_dir={bench.data_dir}")
    rows = []
    with _tempfile.TemporaryDirectory() as tmp:
        for population in (1, 6):
            store = Path(tmp) / f"p{population}"
            store.mkdir()
            r = _study_run("broad_strategy", 0, store, 1, extra + [f"study.population={population}"])
            eta, lmbda, mb = r["params"]
            rows.append((str(population), str(r["trials"]), f"{r['images'] / 1e6:.2f}", f"{r['val']:.4f}",
                         _num(r["test"], ".4f"), f"{eta:.3g}/{lmbda:.3g}/{mb}", f"{r['wall']:.0f}"))
            print("  " + "  ".join(rows[-1]), flush=True)
    return Table(f"Broad strategy on {bench.dataset}, 1 worker: trials one by one vs batched populations",
                 ("study.population", "tuning trials", "images (M)", "final val acc", "final test acc",
                  "eta/lambda/mb", "wall s"), rows,
                 ["study.population=6: each stage asks up to 6 trials at once and trains those with the "
                  "same mini-batch size as one population"])


POP_IMAGES = 10_000  # images timed per population epoch (scaled to the full set per epoch)


def _time_population(x, y, k: int, mb: int, dtype, seed: int = 0) -> float:
    """Seconds for one epoch of ``len(x)`` images, for all K members together: the best of two
    epochs after a warm-up one."""
    from nnexp.train import fit_population

    train = data.Split(x=x.astype(dtype), y=y)
    streams = [Streams.from_seed(seed + i) for i in range(k)]
    nets = [init_network([x.shape[1], 30, 10], s.init, dtype=dtype) for s in streams]
    specs = [TrainSpec(epochs=3, mini_batch_size=mb, eta=ETA, lmbda=LMBDA, monitor=Monitor(metrics=()))
             for _ in range(k)]
    histories = fit_population(nets, train, specs, streams=streams)
    return min(r.epoch_seconds for r in histories[0].records[1:])


def _pop_series(task) -> list[float]:
    """A pool task: the population timings of every case, started at a common wall-clock moment
    so that two processes time the same cases side by side."""
    x, y, cases, seed, start_at = task
    time.sleep(max(0.0, start_at - time.time()))
    return [_time_population(x, y, k, mb, dtype, seed) for mb, dtype, k in cases]


def population_section(bench: Bench) -> Table:
    """Per-configuration seconds per epoch of a population of K members, one and two processes."""
    from nnexp import runner

    n = min(bench.n_train, 2_000 if bench.quick else POP_IMAGES)
    x, y = bench.train.x[:n], bench.train.y[:n]
    scale = bench.n_train / n
    ks = (1, 3) if bench.quick else (1, 3, 8, 16)
    cases = [(mb, dtype, k) for mb in (10, 100) for dtype in (np.float32, np.float64) for k in ks]
    alone = [_time_population(x, y, k, mb, dtype) for mb, dtype, k in cases]
    start_at = time.time() + 8.0  # the spawned worker has started and imported by then
    pair = runner.run_tasks(_pop_series, [(x, y, cases, s, start_at) for s in (0, 100)], 2)
    for p in pair:
        if isinstance(p, BaseException):
            raise NnexpError(f"population benchmark worker failed: {p}")
    rows, base = [], {}
    for (mb, dtype, k), t1, t2a, t2b in zip(cases, alone, pair[0], pair[1]):
        one, both = t1 * scale / k, max(t2a, t2b) * scale / (2 * k)
        base.setdefault((mb, dtype), one)
        rows.append((str(mb), np.dtype(dtype).name, str(k), f"{one:.4f}", f"{one / base[(mb, dtype)]:.2f}",
                     f"{both:.4f}", f"{both / base[(mb, dtype)]:.2f}"))
        print("  " + "  ".join(rows[-1]), flush=True)
    return Table(f"Population training ({bench.dataset}, [{bench.n_in},30,10]): seconds per epoch per configuration",
                 ("mb", "dtype", "K", "1 process", "vs K=1", "2 processes", "vs K=1"), rows,
                 [f"timed on {n:,} images, scaled to {bench.n_train:,} per epoch; 2 processes: two populations "
                  "of K side by side, per-configuration = wall / 2K",
                  "targets: K = 8 at mini-batch 10 <= 0.55 x K = 1 in float32, <= 0.70 x in float64 (one process)"])


def _sweep_wall(launcher: str, extra: list[str], store: Path) -> float:
    import subprocess

    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "nnexp.run", "-m", "eta=0.025,0.25,2.5", "seed=range(5)",
                          f"hydra/launcher={launcher}", f"tracking.uri=sqlite:///{store / launcher}.db",
                          f"hydra.sweep.dir={store / launcher}", *extra], capture_output=True, text=True)
    if out.returncode != 0:
        log_file = Path(tempfile.gettempdir()) / f"nnexp-bench-{launcher}.log"  # outlives the store
        log_file.write_text(out.stdout + out.stderr)
        raise NnexpError(f"the {launcher} sweep failed (log: {log_file})")
    return time.perf_counter() - start


def sweep_section(bench: Bench) -> Table:
    """End to end: a 5-seed x 3-eta sweep of 30 epochs, tracked, basic vs population launcher,
    in float64 (the default) and float32."""
    extra = [] if bench.dataset == "MNIST" else ["dataset=digits"]
    if bench.data_dir:
        extra.append(f"dataset.data_dir={bench.data_dir}")
    if bench.quick:
        extra.append("epochs=3")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float64", "float32"):
            store = Path(tmp) / dtype
            store.mkdir()
            basic = _sweep_wall("basic", extra + [f"dtype={dtype}"], store)
            pop = _sweep_wall("population", extra + [f"dtype={dtype}", f"hydra.launcher.workers={bench.workers}"],
                              store)
            rows += [(dtype, "basic (sequential)", f"{basic:.1f}", "1.00"),
                     (dtype, f"population, {bench.workers} workers", f"{pop:.1f}", f"{basic / pop:.2f}")]
            print("  " + "  ".join(rows[-2]) + "\n  " + "  ".join(rows[-1]), flush=True)
    return Table(f"End-to-end sweep: eta=0.025,0.25,2.5 x seed=range(5), {'3' if bench.quick else '30'} epochs, "
                 f"{bench.dataset}, tracked in MLflow", ("dtype", "launcher", "wall s", "speed-up"), rows,
                 ["target: population on 2 workers >= 3x faster than the basic launcher"])


Section = Callable[[Bench], Table]
#: The report's sections, in order.
SECTIONS: list[Section] = [sgd_section, tracking_section, study_section]
SECTION_NAMES = {"sgd": sgd_section, "tracking": tracking_section, "study": study_section,
                 "population": population_section, "sweep": sweep_section,
                 "study-population": study_population_section}


# --------------------------------------------------------------------------- setup


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


def _digits_bench(epochs: int, reference_images: int, notes: list[str]) -> Bench:
    splits = data.load("digits")
    return Bench("digits", splits.train, splits.n_classes, epochs, reference_images, notes)


def load_bench(dataset: str | None, data_dir: str | None, epochs: int, quick: bool) -> Bench:
    """The training set to time on. ``dataset=None``: MNIST if available locally, else digits."""
    ref_images = QUICK_REFERENCE_IMAGES if quick else REFERENCE_IMAGES
    if dataset == "digits":
        return _digits_bench(epochs, ref_images, [])
    try:
        splits = data.load("mnist", data_dir, download=dataset == "mnist")
    except DataError as exc:
        if dataset == "mnist":
            raise
        note = f"note: MNIST unavailable ({' '.join(str(exc).split())}); using digits instead"
        return _digits_bench(epochs, ref_images, [note])
    train = splits.train
    notes = []
    if quick:
        train = data.Split(x=train.x[:QUICK_IMAGES], y=train.y[:QUICK_IMAGES])
        notes.append(f"note: --quick: timing on the first {QUICK_IMAGES:,} MNIST training images")
    return Bench("MNIST", train, splits.n_classes, epochs, ref_images, notes)


def header(bench: Bench) -> list[str]:
    return [
        "nnexp benchmark: mini-batch SGD, sigmoid hidden layer, cross-entropy cost, "
        f"L2 lambda={LMBDA}, eta={ETA}",
        f"data: {bench.dataset} training set, {bench.n_train:,} images x {bench.n_in} inputs",
        *bench.notes,
        blas_summary(),
        f"engine: nnexp.train.fit, Monitor(metrics=()), best of {bench.epochs} timed epoch(s) "
        "after 1 warm-up epoch (training time only)",
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="nnexp-bench",
        description="Seconds per epoch and microseconds per mini-batch of the engine's SGD, "
                    "next to the book's per-example algorithm (BLAS pinned to 1 thread).")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per case (default 2)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: at most {QUICK_IMAGES:,} MNIST images (or digits), "
                        f"reference on {QUICK_REFERENCE_IMAGES} images")
    p.add_argument("--dataset", choices=("mnist", "digits"), default=None,
                   help="default: MNIST if found locally, else digits")
    p.add_argument("--data-dir", default=None, help="directory holding the MNIST IDX files")
    p.add_argument("--only", choices=tuple(SECTION_NAMES), action="append",
                   help="run only these sections (repeatable); default: sgd, tracking and population")
    p.add_argument("--workers", type=int, default=2, help="worker processes for the study section")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be at least 1")
    return args


def run(args: argparse.Namespace) -> None:
    bench = load_bench(args.dataset, args.data_dir, args.epochs, args.quick)
    bench.data_dir, bench.quick, bench.workers = args.data_dir, args.quick, args.workers
    print("\n".join(header(bench)), flush=True)
    chosen = args.only or ["sgd", "tracking", "population"]
    for section in [SECTION_NAMES[name] for name in chosen]:
        print()
        print(section(bench).render(), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        with threadpool_limits(limits=1):
            run(args)
    except NnexpError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(2)
