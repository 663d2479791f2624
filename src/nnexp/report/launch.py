"""Making the runs a figure is missing: every one a runner Job (composed once, in
``figure_plan``), executed by the runner (compatible runs as populations, spread over the worker
pool), with a progress line as each population ends."""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

from nnexp import runner, tracking
from nnexp.report.figure_plan import FigureRun


def _tracked_in(job: runner.Job, uri: str, experiment: str) -> runner.Job:
    where = dataclasses.replace(job.config.tracking, uri=uri, experiment=experiment)
    return job.with_(config=dataclasses.replace(job.config, tracking=where))


def launch(runs: Sequence[FigureRun], uri: str, experiment: str, workers: int) -> None:
    """Make the missing runs on ``workers`` processes (populations where possible), with progress."""
    tracking.prepare_store(uri, experiment)  # created once, before parallel jobs
    jobs = [_tracked_in(r.job, uri, experiment) for r in runs]
    start, done = time.perf_counter(), 0

    def progress(indices: list[int], outcome) -> None:
        nonlocal done
        done += len(indices)
        first = runs[indices[0]]
        status = "done"
        if isinstance(outcome, BaseException):  # recorded in MLflow by the runs themselves; keep going
            status = f"failed: {str(outcome).splitlines()[0] if str(outcome) else type(outcome).__name__}"
        what = first.arm if len(indices) == 1 else f"{len(indices)} runs as one population ({first.arm}, ...)"
        print(f"[{done}/{len(runs)}] {first.figure}: {what} {status} ({time.perf_counter() - start:.0f} s)",
              flush=True)

    runner.run_jobs(jobs, workers=workers, on_done=progress)
