"""Many jobs: grouped into populations (``groups``), spread over the worker pool (``pool``),
each population executed and tracked (``execute``)."""

from __future__ import annotations

import logging
from typing import Any, Sequence

from nnexp.runner.execute import execute
from nnexp.runner.groups import plan_groups
from nnexp.runner.job import Job
from nnexp.runner.pool import run_tasks

log = logging.getLogger("nnexp.population")


def execute_group(jobs: Sequence[Job]) -> list:
    """One population (a pool task): its results, each summary logged in one line."""
    results = execute(list(jobs))
    for r in results:
        log.info(r.summary)
    return results


def run_jobs(jobs: Sequence[Job], *, workers: int = 2, max_members: int = 16,
             max_memory_mb: float = 4096) -> list[Any]:
    """Every job executed, compatible ones as populations; per job its RunResult, or the
    exception that ended its population (logged in one line, recorded by its runs)."""
    groups = plan_groups([j.config for j in jobs], max_members, max_memory_mb, workers)
    log.info("%d jobs in %d population(s) (%s) on %d process(es)", len(jobs), len(groups),
             ", ".join(str(len(g)) for g in groups), min(workers, len(groups)))
    outcomes = run_tasks(execute_group, [[jobs[i] for i in g] for g in groups], workers)
    results: list[Any] = [None] * len(jobs)
    for g, outcome in zip(groups, outcomes):
        if isinstance(outcome, BaseException):
            first = str(outcome).splitlines()[0] if str(outcome) else type(outcome).__name__
            log.error("population of jobs %s failed: %s", g, first)
        for k, i in enumerate(g):
            results[i] = outcome if isinstance(outcome, BaseException) else outcome[k]
    return results
