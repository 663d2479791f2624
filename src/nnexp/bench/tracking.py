"""The ``tracking`` section: what tracking a run costs, on the ``overfitting`` preset run through
the real run path (``nnexp.runner``), tracked and untracked."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from nnexp.bench.context import Bench
from nnexp.bench.table import Table

QUICK_EPOCHS = 20  # --quick: epochs of the overfitting preset (400 otherwise)


def overfitting_run(bench: Bench, tracked: bool, store: str, run_dir: Path, checkpoint: bool = True,
                    preset: str | None = "overfitting"):
    """The 400-epoch ``overfitting`` preset (``preset`` None: the default MNIST run) through the
    real run path (nnexp.runner), trained afresh: its RunResult, wall seconds and epochs."""
    from nnexp import runner  # imported when the section runs: `--help` stays fast

    overrides = [f"tracking.uri={store}", "tracking.resume=false", f"tracking.checkpoint={str(checkpoint).lower()}",
                 "tracking.enabled=" + ("true" if tracked else "false"), *bench.data_overrides()]
    if preset:
        overrides.insert(0, f"+experiment={preset}")
    if bench.quick:
        overrides.append(f"epochs={QUICK_EPOCHS if preset else 3}")
    job = runner.compose(overrides, run_dir=run_dir)
    start = time.perf_counter()
    (result,) = runner.execute(job)
    return result, time.perf_counter() - start, job.config.total_epochs


MODES = {"off": (False, False), "record + mlflow": (True, False), "+ checkpoints": (True, True)}


def tracking_section(bench: Bench) -> Table:
    """Tracking overhead on the overfitting preset: the local record (written by the training
    loop), the checkpoints (written by the training loop at each evaluation), and the wall time
    against an untracked run (the store is written off the training path, by a background
    thread). The checkpoints' cost is also measured on the default MNIST run."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        overfitting_run(bench, True, store, Path(tmp, "warm-up"))  # creates and migrates the store
        walls: dict[str, list[float]] = {}
        shares = []
        runs = [(preset, mode) for preset in ("overfitting", None) for mode in MODES]
        for i, (preset, mode) in enumerate(runs + (runs[:3] if not bench.quick else [])):
            tracked, checkpoint = MODES[mode]
            result, wall, epochs = overfitting_run(bench, tracked, store, Path(tmp, f"run{i}"), checkpoint, preset)
            walls.setdefault(f"{preset} {mode}", []).append(wall)
            n_metrics = sum(len(r.metrics()) for r in result.history.records)
            if checkpoint:
                shares.append((preset or "default", 100 * result.checkpoint_seconds / result.history.train_seconds))
            rows.append((preset or "default", mode, str(epochs), str(n_metrics if tracked else 0), f"{wall:.2f}",
                         f"{result.history.train_seconds:.2f}", f"{result.tracking_seconds:.3f}",
                         f"{result.checkpoint_seconds:.3f}", f"{100 * result.tracking_seconds / wall:.2f}%"))
    extra = 100 * (min(walls["overfitting record + mlflow"]) / min(walls["overfitting off"]) - 1)
    foot = ["record s: time the run spent writing its local record (params, per-evaluation metrics, "
            "dataset, summary, artifacts); the MLflow store is written by a background thread",
            "checkpoint s: time the run spent writing its checkpoint at each evaluation",
            f"wall time tracked vs off, overfitting (best of {len(walls['overfitting off'])} each): {extra:+.1f}%",
            "checkpoints, share of the training time: "
            + ", ".join(f"{name} {share:.2f}%" for name, share in shares),
            "targets: local record <= 2% of wall time; checkpoints <= 2% of training time"]
    return Table("Tracking overhead: the overfitting preset (400 epochs, 1,000 images, 6 metrics/epoch) "
                 "and the default run", ("run", "tracking", "epochs", "metrics", "wall s", "fit s", "record s",
                                         "checkpoint s", "record share"), rows, foot)
