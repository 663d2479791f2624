"""The ``sweep`` section: a tracked sweep end to end (``python -m nnexp.run -m ...`` in a
subprocess), Hydra's basic launcher against the population launcher, in float64 and float32."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nnexp.bench.context import Bench
from nnexp.bench.table import Table, row_line
from nnexp.config.errors import NnexpError

ETAS = "eta=0.025,0.25,2.5"
SEEDS, QUICK_SEEDS = 5, 2
EPOCHS, QUICK_EPOCHS = 30, 3
DTYPES, QUICK_DTYPES = ("float64", "float32"), ("float64",)  # --quick: each sweep is mostly start-up


def sweep_wall(launcher: str, overrides: list[str], store: Path) -> float:
    """Wall seconds of ``python -m nnexp.run -m OVERRIDES`` with ``launcher``, tracked in its own
    sqlite store under ``store``; a failed sweep leaves its output in a log file."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "nnexp.run", "-m", *overrides,
                          f"hydra/launcher={launcher}", f"tracking.uri=sqlite:///{store / launcher}.db",
                          f"hydra.sweep.dir={store / launcher}"], capture_output=True, text=True)
    if out.returncode != 0:
        log_file = Path(tempfile.gettempdir()) / f"nnexp-bench-{launcher}.log"  # outlives the store
        log_file.write_text(out.stdout + out.stderr)
        raise NnexpError(f"the {launcher} sweep failed (log: {log_file})")
    return time.perf_counter() - start


def sweep_section(bench: Bench) -> Table:
    """End to end: a 5-seed x 3-eta sweep of 30 epochs, tracked, basic vs population launcher,
    in float64 (the default) and float32; --quick: 2 seeds, 3 epochs, float64 only."""
    seeds, epochs, dtypes = (QUICK_SEEDS, QUICK_EPOCHS, QUICK_DTYPES) if bench.quick else (SEEDS, EPOCHS, DTYPES)
    grid = [ETAS, f"seed=range({seeds})", f"epochs={epochs}", *bench.data_overrides()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in dtypes:
            store = Path(tmp) / dtype
            store.mkdir()
            basic = sweep_wall("basic", grid + [f"dtype={dtype}"], store)
            pop = sweep_wall("population", grid + [f"dtype={dtype}", f"hydra.launcher.workers={bench.workers}"],
                             store)
            rows += [(dtype, "basic (sequential)", f"{basic:.1f}", "1.00"),
                     (dtype, f"population, {bench.workers} workers", f"{pop:.1f}", f"{basic / pop:.2f}")]
            bench.progress(row_line(rows[-2]) + "\n" + row_line(rows[-1]))
    return Table(f"End-to-end sweep: {ETAS} x seed=range({seeds}), {epochs} epochs, "
                 f"{bench.dataset}, tracked in MLflow", ("dtype", "launcher", "wall s", "speed-up"), rows,
                 ["target: population on 2 workers >= 3x faster than the basic launcher"])
