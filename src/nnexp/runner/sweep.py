"""Many jobs: grouped into populations (``groups``), spread over the worker pool (``pool``),
each population executed and tracked (``execute``)."""

from __future__ import annotations

import logging
from typing import Any, Sequence

from nnexp import tracking
from nnexp.config import RunConfig
from nnexp.runner.build import load_splits
from nnexp.runner.execute import execute
from nnexp.runner.groups import plan_groups
from nnexp.runner.job import Job
from nnexp.runner.pool import WorkerPool

log = logging.getLogger("nnexp.population")


def execute_group(jobs: Sequence[Job]) -> list:
    """One population (a pool task): its results, each summary logged in one line."""
    results = execute(list(jobs))
    for r in results:
        log.info(r.summary)
    return results


def warm_up(config: RunConfig | None) -> None:
    """A worker's first task, while the launching process still composes the jobs: the imports
    and the data every job of a sweep needs (read once per process)."""
    import nnexp.runner.execute  # noqa: F401

    if config is not None:
        if config.tracking.enabled:
            tracking.preload()
        try:
            load_splits(config)
        except Exception:  # noqa: BLE001 - a job reports its own data problems, in one line
            pass


def run_jobs(jobs: Sequence[Job], *, workers: int = 2, max_members: int = 16,
             max_memory_mb: float = 4096, pool: WorkerPool | None = None) -> list[Any]:
    """Every job executed, compatible ones as populations; per job its RunResult, or the
    exception that ended its population (logged in one line, recorded by its runs).
    ``pool``: workers already started (e.g. warmed up while the jobs were composed)."""
    groups = plan_groups([j.config for j in jobs], max_members, max_memory_mb, workers)
    log.info("%d jobs in %d population(s) (%s) on %d process(es)", len(jobs), len(groups),
             ", ".join(str(len(g)) for g in groups), min(workers, len(groups)))
    tasks = [[jobs[i] for i in g] for g in groups]
    if pool is None:
        with WorkerPool(min(workers, max(1, len(tasks)))) as own:
            outcomes = own.run(execute_group, tasks)
    else:
        outcomes = pool.run(execute_group, tasks)
    results: list[Any] = [None] * len(jobs)
    for g, outcome in zip(groups, outcomes):
        if isinstance(outcome, BaseException):
            first = str(outcome).splitlines()[0] if str(outcome) else type(outcome).__name__
            log.error("population of jobs %s failed: %s", g, first)
        for k, i in enumerate(g):
            results[i] = outcome if isinstance(outcome, BaseException) else outcome[k]
    return results
