"""The ``sgd`` section: speed of the engine's mini-batch SGD, next to the book's per-example
algorithm and a hand-vectorised NumPy loop.

What is measured
----------------
Training time only (no evaluation, no data loading) of plain mini-batch SGD with the book's
chapter-3 settings: sigmoid hidden layer, cross-entropy cost, L2 weight decay (lambda = 5.0),
eta = 0.5, on the bench's training images (the 50,000 MNIST training images, or sklearn's 8x8
digits). For each network ([n_in,30,10] and [n_in,100,10]), mini-batch size (10 and 100) and
float type (float64 and float32):

* engine: ``nnexp.train.fit`` with ``Monitor(metrics=())``, one warm-up epoch, then ``epochs``
  timed epochs; the best ``Record.epoch_seconds`` is reported, as seconds per epoch and
  microseconds per mini-batch. This is the real training path: shuffled mini-batches gathered
  with ``x[perm[k:k+m]]`` and one fused-gemm ``Stepper.step`` each.
* hand-vectorised: :class:`~nnexp.bench.reference.HandVectorisedNetwork`, timed like the engine:
  the best a hand-written NumPy step does.
* reference: :class:`~nnexp.bench.reference.ReferenceNetwork` (the book's per-example
  algorithm), float64 only, timed on a subset of the training images (2,000 by default) and
  extrapolated linearly to a full epoch.

The ratio columns are engine / hand-vectorised and reference / engine.

Targets ([784,30,10], mini-batch 10, 50,000 images): float64 within 1.10x of the
hand-vectorised loop in the same run, float32 at most 0.16 s/epoch, and at least 10x faster
than the per-example reference.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from nnexp import data
from nnexp.bench.context import ETA, LMBDA, Bench
from nnexp.bench.reference import HandVectorisedNetwork, ReferenceNetwork, column_pairs
from nnexp.bench.table import Table, label, num
from nnexp.config.errors import NnexpError
from nnexp.config.names import COMPLETED
from nnexp.engine.network import init_network
from nnexp.train import Monitor, Streams, TrainSpec, fit, one_hot

HIDDEN_SIZES = (30, 100)
MINI_BATCHES = (10, 100)
DTYPES = (np.float64, np.float32)
#: (hidden size, mini-batch size) pairs also timed with the per-example reference (float64).
REFERENCE_CASES = ((30, 10), (100, 10), (100, 100))
#: Targets for [n_in, 30, 10], mini-batch 10, 50,000 images.
TARGET_SECONDS = {"float32": 0.16}
TARGET_HAND_RATIO = {"float64": 1.10}
TARGET_SPEEDUP = 10.0

COLUMNS = ("network", "mb", "dtype", "engine s/epoch", "engine us/batch", "hand s/epoch",
           "engine/hand", "reference s/epoch*", "reference us/batch", "reference/engine")


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
    """Best of ``epochs`` epochs (after one warm-up) of the hand-vectorised NumPy loop."""
    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(train.x, dtype=dtype)  # (n, n_in)
    y = one_hot(train.y, sizes[-1], dtype)  # (n, n_out)
    net = HandVectorisedNetwork.random(sizes, rng, dtype)
    best = math.inf
    for epoch in range(1 + epochs):
        perm = rng.permutation(len(x))
        t0 = time.perf_counter()
        net.train_epoch(x, y, perm, mini_batch, ETA, LMBDA)
        if epoch:
            best = min(best, time.perf_counter() - t0)
    return Timing(best, 1e6 * best / math.ceil(len(x) / mini_batch))


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


def sgd_row(r: dict) -> tuple[str, ...]:
    """A result of :func:`sgd_results` as the table's cells (:data:`COLUMNS`)."""
    e, hand, ref = r["engine"], r["hand"], r["reference"]
    ratio = ref.seconds_per_epoch / e.seconds_per_epoch if ref else None
    return (label(r["sizes"]), str(r["mb"]), r["dtype"],
            num(e.seconds_per_epoch, ".4f"), num(e.us_per_batch, ".1f"),
            num(hand.seconds_per_epoch, ".4f"), num(e.seconds_per_epoch / hand.seconds_per_epoch, ".2f"),
            num(ref and ref.seconds_per_epoch, ".4f"), num(ref and ref.us_per_batch, ".1f"),
            num(ratio, ".1f"))


def target_lines(bench: Bench, results: list[dict]) -> list[str]:
    """Pass/fail against the targets; only meaningful on the full 50,000 MNIST images."""
    if bench.dataset != "MNIST" or bench.n_train != 50_000:
        return ["targets: not checked (they are for the 50,000 MNIST training images)"]
    lines = []
    for r in results:
        if r["sizes"][1] != 30 or r["mb"] != 10:
            continue
        s, name = r["engine"].seconds_per_epoch, f"target {label(r['sizes'])} mb 10"
        if r["dtype"] in TARGET_SECONDS:
            limit = TARGET_SECONDS[r["dtype"]]
            lines.append(f"{name} {r['dtype']}: {s:.3f} s/epoch <= {limit:.2f}: {'ok' if s <= limit else 'MISSED'}")
        if r["dtype"] in TARGET_HAND_RATIO:
            ratio, limit = s / r["hand"].seconds_per_epoch, TARGET_HAND_RATIO[r["dtype"]]
            lines.append(f"{name} {r['dtype']}: {ratio:.2f}x the hand-vectorised loop <= {limit:.2f}x: "
                         f"{'ok' if ratio <= limit else 'MISSED'}")
        if r["reference"]:
            x = r["reference"].seconds_per_epoch / s
            lines.append(f"{name} speed-up over reference: {x:.1f}x >= {TARGET_SPEEDUP:.0f}x: "
                         f"{'ok' if x >= TARGET_SPEEDUP else 'MISSED'}")
    return lines


def sgd_section(bench: Bench) -> Table:
    """Seconds per epoch of the engine, the hand-vectorised loop and the per-example reference."""
    results = sgd_results(bench)
    foot = [f"* reference: per-example backprop (book's algorithm), float64, timed on the first "
            f"{min(bench.reference_images, bench.n_train):,} training images and extrapolated "
            f"to {bench.n_train:,} images per epoch"]
    return Table(f"SGD training speed ({bench.dataset}, {bench.n_train:,} images per epoch)",
                 COLUMNS, [sgd_row(r) for r in results], foot + target_lines(bench, results))
