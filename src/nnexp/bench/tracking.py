"""The ``tracking`` section: what tracking a run costs, on the ``overfitting`` preset run through
the real run path (``nnexp.runner``), tracked and untracked."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from nnexp.bench.context import Bench
from nnexp.bench.table import Table

QUICK_EPOCHS = 20  # --quick: epochs of the overfitting preset (400 otherwise)


def overfitting_run(bench: Bench, tracked: bool, store: str, run_dir: Path):
    """The 400-epoch ``overfitting`` preset through the real run path (nnexp.runner): its
    RunResult, wall seconds and epochs."""
    from nnexp import runner  # imported when the section runs: `--help` stays fast

    overrides = ["+experiment=overfitting", f"tracking.uri={store}",
                 "tracking.enabled=" + ("true" if tracked else "false"), *bench.data_overrides()]
    if bench.quick:
        overrides.append(f"epochs={QUICK_EPOCHS}")
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
        overfitting_run(bench, True, store, Path(tmp, "warm-up"))  # creates and migrates the store
        walls = {}
        for i, tracked in enumerate((False, True, False, True)):
            result, wall, epochs = overfitting_run(bench, tracked, store, Path(tmp, f"run{i}"))
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
