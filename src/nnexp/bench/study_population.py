"""The ``study-population`` section: the broad strategy with its trials trained one at a time
against trials asked 6 at a time and trained as populations (``study.population``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from nnexp.bench.context import Bench
from nnexp.bench.study import quick_overrides, study_result
from nnexp.bench.table import Table, num, row_line

POPULATIONS = (1, 6)


def study_population_section(bench: Bench) -> Table:
    """The broad strategy with trials one at a time vs asked 6 at a time and trained as
    populations (study.population), one worker; same seed, so grid stages see the same points."""
    extra = bench.data_overrides() + quick_overrides(bench, "broad_strategy")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for population in POPULATIONS:
            store = Path(tmp) / f"p{population}"
            store.mkdir()
            r = study_result("broad_strategy", 0, store, 1, extra + [f"study.population={population}"])
            eta, lmbda, mb = r["params"]
            rows.append((str(population), str(r["trials"]), f"{r['images'] / 1e6:.2f}", f"{r['val']:.4f}",
                         num(r["test"], ".4f"), f"{eta:.3g}/{lmbda:.3g}/{mb}", f"{r['wall']:.0f}"))
            bench.progress(row_line(rows[-1]))
    return Table(f"Broad strategy on {bench.dataset}, 1 worker: trials one by one vs batched populations",
                 ("study.population", "tuning trials", "images (M)", "final val acc", "final test acc",
                  "eta/lambda/mb", "wall s"), rows,
                 ["images: training images used by the tuning trials (the final stage is not counted)",
                  "study.population=6: each stage asks up to 6 trials at once and trains those with the "
                  "same mini-batch size as one population"])
