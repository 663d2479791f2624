"""The ``population`` section: seconds per epoch per configuration when K networks train side
by side as one population (``nnexp.train.fit_population``), in one process and in two."""

from __future__ import annotations

import time

import numpy as np

from nnexp import data
from nnexp.bench.context import ETA, LMBDA, Bench
from nnexp.bench.table import Table, row_line
from nnexp.config.errors import NnexpError
from nnexp.engine.network import init_network
from nnexp.train import Monitor, Streams, TrainSpec, fit_population

POP_IMAGES = 10_000  # images timed per population epoch (scaled to the full set per epoch)
QUICK_POP_IMAGES = 2_000
KS = (1, 3, 8, 16)
QUICK_KS = (1, 3)
#: seconds until both processes start timing: the spawned worker has started and imported by then
START_DELAY = 8.0
QUICK_START_DELAY = 3.0


def time_population(x: np.ndarray, y: np.ndarray, k: int, mb: int, dtype, seed: int = 0) -> float:
    """Seconds for one epoch of ``len(x)`` images, for all K members together: the best of two
    epochs after a warm-up one. x (n, n_in) float64, y (n,) labels."""
    train = data.Split(x=x.astype(dtype), y=y)
    streams = [Streams.from_seed(seed + i) for i in range(k)]
    nets = [init_network([x.shape[1], 30, 10], s.init, dtype=dtype) for s in streams]
    specs = [TrainSpec(epochs=3, mini_batch_size=mb, eta=ETA, lmbda=LMBDA, monitor=Monitor(metrics=()))
             for _ in range(k)]
    histories = fit_population(nets, train, specs, streams=streams)
    return min(r.epoch_seconds for r in histories[0].records[1:])


def population_series(task) -> list[float]:
    """A pool task: the population timings of every case, started at a common wall-clock moment
    so that two processes time the same cases side by side."""
    x, y, cases, seed, start_at = task
    time.sleep(max(0.0, start_at - time.time()))
    return [time_population(x, y, k, mb, dtype, seed) for mb, dtype, k in cases]


def population_section(bench: Bench) -> Table:
    """Per-configuration seconds per epoch of a population of K members, one and two processes."""
    from nnexp import runner  # imported when the section runs: `--help` stays fast

    n = min(bench.n_train, QUICK_POP_IMAGES if bench.quick else POP_IMAGES)
    x, y = bench.train.x[:n], bench.train.y[:n]  # (n, n_in), (n,)
    scale = bench.n_train / n
    cases = [(mb, dtype, k) for mb in (10, 100) for dtype in (np.float32, np.float64)
             for k in (QUICK_KS if bench.quick else KS)]
    alone = [time_population(x, y, k, mb, dtype) for mb, dtype, k in cases]
    start_at = time.time() + (QUICK_START_DELAY if bench.quick else START_DELAY)
    pair = runner.run_tasks(population_series, [(x, y, cases, s, start_at) for s in (0, 100)], 2)
    for p in pair:
        if isinstance(p, BaseException):
            raise NnexpError(f"population benchmark worker failed: {p}")
    rows, base = [], {}
    for (mb, dtype, k), t1, t2a, t2b in zip(cases, alone, pair[0], pair[1]):
        one, both = t1 * scale / k, max(t2a, t2b) * scale / (2 * k)
        base.setdefault((mb, dtype), one)
        rows.append((str(mb), np.dtype(dtype).name, str(k), f"{one:.4f}", f"{one / base[(mb, dtype)]:.2f}",
                     f"{both:.4f}", f"{both / base[(mb, dtype)]:.2f}"))
        bench.progress(row_line(rows[-1]))
    return Table(f"Population training ({bench.dataset}, [{bench.n_in},30,10]): seconds per epoch per configuration",
                 ("mb", "dtype", "K", "1 process", "vs K=1", "2 processes", "vs K=1"), rows,
                 [f"timed on {n:,} images, scaled to {bench.n_train:,} per epoch; 2 processes: two populations "
                  "of K side by side, per-configuration = wall / 2K",
                  "targets: K = 8 at mini-batch 10 <= 0.55 x K = 1 in float32, <= 0.70 x in float64 (one process)"])
