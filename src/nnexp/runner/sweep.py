"""Many jobs: grouped into populations (``groups``), spread over the worker pool (``pool``),
each population executed and tracked (``execute``)."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Callable, Sequence

from nnexp import tracking
from nnexp.config.names import UPLOADS_ENV
from nnexp.config.run_schema import RunConfig
from nnexp.runner.build import load_splits
from nnexp.runner.execute import execute
from nnexp.runner.groups import MAX_MEMBERS, MAX_MEMORY_MB, plan_groups
from nnexp.runner.job import Job
from nnexp.runner.pool import WorkerPool
from nnexp.train import evaluation_form

log = logging.getLogger("nnexp.population")


def execute_group(jobs: Sequence[Job], spare=None) -> list:
    """One population (a pool task): its results, each summary logged in one line. ``spare``
    (the launching process's task): idle workers take over half of it (``runner.handover``)."""
    results = execute(list(jobs), spare=spare)
    for r in results:
        log.info(r.summary)
    return results


def warm_up(config: RunConfig | None) -> None:
    """A worker's first task, while the launching process still composes the jobs: the imports
    and the data every job of a sweep needs (read once per process)."""
    import nnexp.runner.execute  # noqa: F401

    if config is not None:
        if config.tracking.enabled and UPLOADS_ENV not in os.environ:  # else the sweep's upload process does
            tracking.preload()
        try:
            _, train, validation, test = load_splits(config)
            for split in (train, validation, test):  # the evaluation form the jobs will use
                evaluation_form(split)
        except Exception:  # noqa: BLE001 - a job reports its own data problems, in one line
            pass


def plan(jobs: Sequence[Job], workers: int, max_members: int = MAX_MEMBERS,
         max_memory_mb: float = MAX_MEMORY_MB) -> list[list[int]]:
    """The jobs' indices cut into populations (``groups.plan_groups``); a job with its own ``fit``
    (a baseline, the single neuron) is a group of its own, first (the slow ones: a baseline SVM)."""
    own = [i for i, j in enumerate(jobs) if j.fit is not None]
    nets = [i for i, j in enumerate(jobs) if j.fit is None]
    groups = plan_groups([jobs[i].config for i in nets], max_members, max_memory_mb, workers)
    return [[i] for i in own] + [[nets[k] for k in g] for g in groups]


def run_jobs(jobs: Sequence[Job], *, workers: int = 2, max_members: int = MAX_MEMBERS,
             max_memory_mb: float = MAX_MEMORY_MB, pool: WorkerPool | None = None,
             on_done: Callable[[list[int], Any], None] | None = None) -> list[Any]:
    """Every job executed, compatible ones as populations; per job its RunResult, or the
    exception that ended its population (logged in one line, recorded by its runs).
    ``pool``: workers already started (e.g. warmed up while the jobs were composed);
    ``on_done(indices, outcome)``: as each population ends (its jobs' indices, its results)."""
    groups = plan(jobs, workers, max_members, max_memory_mb)
    log.info("%d jobs in %d population(s) (%s) on %d process(es)", len(jobs), len(groups),
             ", ".join(str(len(g)) for g in groups), min(workers, len(groups)))
    tasks = [[jobs[i] for i in g] for g in groups]
    done = (lambda k, outcome: on_done(groups[k], outcome)) if on_done else None
    tracked = next((j.config.tracking for j in jobs if j.config.tracking.enabled), None)
    # one upload process for every run (none if a sweep's serves them): no worker imports MLflow
    with tracking.serving(tracking.resolve_uri(tracked.uri), tracked.experiment) if tracked else contextlib.nullcontext():
        if pool is None:
            with WorkerPool(min(workers, max(1, len(tasks)))) as own:
                outcomes = own.run(execute_group, tasks, done, lend=True)
        else:
            outcomes = pool.run(execute_group, tasks, done, lend=True)
    results: list[Any] = [None] * len(jobs)
    for g, outcome in zip(groups, outcomes):
        if isinstance(outcome, BaseException):
            first = str(outcome).splitlines()[0] if str(outcome) else type(outcome).__name__
            log.error("population of jobs %s failed: %s", g, first)
        for k, i in enumerate(g):
            results[i] = outcome if isinstance(outcome, BaseException) else outcome[k]
    return results
