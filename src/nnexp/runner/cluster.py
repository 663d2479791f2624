"""Populations as cluster jobs: each population group of a sweep is one submitit job (``local``
on this machine, ``slurm`` on a cluster), trained as one batched population exactly as the
local launcher trains it.

Preemption and time limits: submitit sends the job its signal (USR2), asks the job's callable
for a checkpoint of itself and requeues it. Nothing is kept in that callable but the jobs: the
members' state is in their checkpoints (``runner.resume``), so the requeued job goes on with
each run from its last evaluation, as the same MLflow run, bit for bit.

The launching process may be closed: the job that finishes the sweep's last run ends the
sweep's parent run (best child and all), whichever it is.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from nnexp import tracking
from nnexp.config.errors import NnexpError
from nnexp.runner import resume
from nnexp.runner.job import Job
from nnexp.runner.pool import LOG_FORMAT, one_blas_thread, quiet_libraries

log = logging.getLogger("nnexp.population")

KINDS = ("local", "slurm")


@dataclass
class ClusterSettings:
    """submitit's usual parameters (``hydra.launcher.*``); ``slurm`` is the extra sbatch
    parameters (e.g. ``{account: abc, qos: normal}``)."""

    kind: str = "local"  # local | slurm
    folder: str = ".submitit"  # submitit's pickles and logs (relative: in the sweep's directory)
    timeout_min: int = 60
    partition: str | None = None
    mem_gb: float | None = None
    cpus_per_task: int = 1
    max_num_timeout: int = 3  # requeues after a time limit (preemptions do not count)
    slurm: dict[str, Any] = field(default_factory=dict)


class PopulationJob:
    """One population group, as a submitit job: trains its jobs (``execute``), and ends the
    sweep's parent run if its runs were the sweep's last. ``checkpoint`` (called by submitit on
    preemption or timeout) resubmits the same jobs: their checkpoints say where each stands."""

    def __init__(self, jobs: Sequence[Job], cwd: str, sweep_keys: Sequence[str], parent_record: str | None):
        self.jobs, self.cwd = list(jobs), cwd
        self.sweep_keys, self.parent_record = list(sweep_keys), parent_record

    def __call__(self) -> list:
        from nnexp.runner.interrupts import INTERRUPTIONS
        from nnexp.runner.sweep import execute_group

        os.chdir(self.cwd)  # the working directory's records: resume finds the runs there
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
        quiet_libraries()
        # submitit's preemption signal stops the runs as SIGTERM does (each recorded KILLED, never
        # in the middle of a store write), then submitit's own handler requeues the job
        requeue, preempted = signal.getsignal(signal.SIGUSR2), []

        def stop(signum, frame):
            preempted.append(signum)
            os.kill(os.getpid(), signal.SIGTERM)

        signal.signal(signal.SIGUSR2, stop)
        try:
            with one_blas_thread():
                results = execute_group(self.jobs)
        except INTERRUPTIONS:
            if preempted and callable(requeue):
                requeue(signal.SIGUSR2, None)  # checkpoint (this job, resubmitted), requeue, exit
            raise
        finally:
            signal.signal(signal.SIGUSR2, requeue)
        end_sweep_if_complete(self.sweep_keys, self.parent_record)
        return results

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        log.warning("population job preempted or timed out: requeued; its runs go on from their checkpoints")
        return submitit.helpers.DelayedSubmission(PopulationJob(self.jobs, self.cwd, self.sweep_keys,
                                                                self.parent_record))


def end_sweep_if_complete(keys: Sequence[str], parent_record: str | None) -> bool:
    """End the sweep's parent run (``tracking.ParentRun.end_sweep``) once every run of the sweep
    (``keys``: their resume keys) has FINISHED; whether it did. Any process may call it: the first
    to see the sweep complete ends it, once. (A sweep with a failed run is ended by its launching
    process, or by the next command that runs it again.)"""
    if not parent_record:
        return False
    records = [resume.recall(k) for k in keys]  # FINISHED, and this sweep's (not a preempted one waiting for
    # its requeue, nor a run of an earlier sweep the index still names)
    if any(r is None or r.end_status() != "FINISHED" or r.start.get("parent_record") != parent_record
           for r in records):
        return False
    log.info("sweep complete: %s", tracking.ParentRun.of_record(Path(parent_record)).end_sweep("FINISHED"))
    return True


def executor(settings: ClusterSettings, folder: Path):
    """A submitit executor for ``settings`` (submitit imported here: an optional dependency)."""
    import submitit

    if settings.kind not in KINDS:
        raise NnexpError(f"hydra.launcher.submitit must be one of {', '.join(KINDS)}, got {settings.kind!r}")
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster=settings.kind,
                                   **{f"{settings.kind}_max_num_timeout": settings.max_num_timeout})
    except RuntimeError as exc:  # e.g. no SLURM here
        raise NnexpError(f"hydra.launcher.submitit={settings.kind}: {exc}") from None
    params: dict[str, Any] = {"timeout_min": settings.timeout_min, "cpus_per_task": settings.cpus_per_task,
                              "name": "nnexp-population"}
    if settings.mem_gb is not None:
        params["mem_gb"] = settings.mem_gb
    if settings.kind == "slurm":
        if settings.partition:
            params["slurm_partition"] = settings.partition
        if settings.slurm:
            params["slurm_additional_parameters"] = dict(settings.slurm)
    ex.update_parameters(**params)
    return ex


def run_groups(jobs: Sequence[Job], groups: Sequence[Sequence[int]], settings: ClusterSettings,
               folder: Path) -> list[Any]:
    """Each group submitted as one job; per job its RunResult, or the exception that ended its
    group. Waits for the jobs (Ctrl-C cancels them; their runs end KILLED and resume later)."""
    ex = executor(settings, folder)
    keys = [resume.resume_key(j) for j in jobs]
    parent = next((j.parent_record for j in jobs if j.parent_record), None)
    cwd = os.getcwd()
    with ex.batch():
        submitted = [ex.submit(PopulationJob([jobs[i] for i in g], cwd, keys, parent)) for g in groups]
    log.info("%d population job(s) submitted to %s (%s)", len(submitted), settings.kind,
             ", ".join(str(s.job_id) for s in submitted))
    results: list[Any] = [None] * len(jobs)
    try:
        for g, sj in zip(groups, submitted):
            try:
                outcome = sj.result()
            except Exception as exc:  # noqa: BLE001 - one group's failure is reported, the others go on
                outcome = exc
                lines = str(exc).strip().splitlines()
                log.error("population job %s failed: %s", sj.job_id, lines[-1] if lines else type(exc).__name__)
            for k, i in enumerate(g):
                results[i] = outcome if isinstance(outcome, BaseException) else outcome[k]
                if not isinstance(outcome, BaseException):
                    log.info(outcome[k].summary)
    except BaseException:
        for sj in submitted:
            sj.cancel(check=False)
        raise
    return results
