"""The execution service and nnexp's Python API: compose a run from overrides, execute one
job or many (compatible ones as batched populations), each tracked in MLflow.

    from nnexp import runner
    job = runner.compose(["dataset=digits", "eta=0.3", "epochs=5"])
    (result,) = runner.execute(job)           # one run (a population of one)
    results = runner.run_jobs([runner.compose([f"seed={s}", "dataset=digits"]) for s in range(4)])
    print(result.summary, result.history.column("validation_accuracy"))
"""

from nnexp.runner.build import build_network, load_splits, train_spec
from nnexp.runner.compose import check_overrides, compose, make_job
from nnexp.runner.execute import RunResult, execute, recorded_as
from nnexp.runner.groups import MAX_MEMBERS, MAX_MEMORY_MB, group_key, plan_groups
from nnexp.runner.interrupts import INTERRUPTIONS, Interrupts, Terminated, interruptions_deferred
from nnexp.runner.job import Job, sweep_links
from nnexp.runner.pool import WorkerPool, available_cores, one_blas_thread, run_tasks
from nnexp.runner.sweep import run_jobs, warm_up

__all__ = ["available_cores", "MAX_MEMBERS", "MAX_MEMORY_MB", "INTERRUPTIONS", "Interrupts", "interruptions_deferred", "Job", "RunResult", "Terminated", "WorkerPool", "warm_up", "build_network", "check_overrides",
           "compose", "execute", "group_key", "load_splits", "make_job", "one_blas_thread", "plan_groups", "recorded_as", "run_jobs", "run_tasks", "sweep_links",
           "train_spec"]
