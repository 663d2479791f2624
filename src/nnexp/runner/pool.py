"""The one worker pool: spawned processes with BLAS pinned to one thread, logging set up once,
and the launching process working too.

numpy and scipy each bundle an OpenBLAS; at more than one thread each, mini-batch training
ran 25x slower here, and a second thread never helped at mini-batch 10. Parallelism comes
from processes. Ctrl-C or SIGTERM in the launching process terminates the workers (each
records its runs as KILLED); a worker whose launcher dies finishes its task and exits.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import logging
import multiprocessing
import os
import threading
import time
from typing import Any, Callable, Sequence

from nnexp.runner.interrupts import INTERRUPTIONS, Interrupts

log = logging.getLogger("nnexp.runner")

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def quiet_libraries() -> None:
    for noisy in ("mlflow", "alembic"):  # schema-migration chatter at INFO level
        logging.getLogger(noisy).setLevel(logging.WARNING)


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. a SLURM or container limit)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def one_blas_thread():
    """Pin every loaded BLAS to one thread (a context manager; also used by workers)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


#: after Ctrl-C or SIGTERM, the seconds a worker process has to record its runs and end
GRACE_SECONDS = 20.0


class _WorkerState:
    """A worker process's own state, process-wide by nature: its BLAS limit and whether it is
    busy. Set by the worker's initializer and its tasks only; the launching process never reads it."""

    busy = threading.Event()
    limits: Any = None


def leave_objects_at_exit() -> None:
    """At this process's exit, leave its objects to the operating system: the collector's last
    passes over MLflow's and SQLAlchemy's objects took 0.6 s of each exit (measured: 0.63 s
    with MLflow's SQLAlchemy store imported, 0.05 s with the objects frozen first). Exit
    handlers (log files, MLflow, multiprocessing) run before it, as usual."""
    import atexit
    import gc

    atexit.unregister(gc.freeze)  # once, however often a command is entered in one process
    atexit.register(gc.freeze)  # registered last: runs after every other exit handler


def _init_worker(parent_pid: int, level: int) -> None:
    leave_objects_at_exit()  # the launcher waits for its workers' exit
    logging.basicConfig(level=level, format=LOG_FORMAT)
    quiet_libraries()
    _WorkerState.limits = one_blas_thread()

    def watch_parent():  # the launcher died (SIGKILL, OOM): finish the current task, then exit
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid and not _WorkerState.busy.is_set():
                os._exit(0)

    threading.Thread(target=watch_parent, name="nnexp-watch-parent", daemon=True).start()


def _call(fn: Callable, task: Any) -> Any:
    _WorkerState.busy.set()
    try:
        return fn(task)
    finally:
        _WorkerState.busy.clear()


class _Spare:
    """The pool's workers as the launching process's own task sees them (``runner.handover``):
    whether one is idle, and a way to give it work. ``pending()``: the pool's tasks not done."""

    def __init__(self, executor: concurrent.futures.ProcessPoolExecutor, processes: int,
                 pending: Callable[[], list[concurrent.futures.Future]]):
        self.executor, self.processes, self.pending = executor, processes, pending
        self.lent: list[concurrent.futures.Future] = []

    def idle(self) -> bool:
        """A worker has nothing to do: fewer tasks (queued or running) than workers."""
        return sum(not f.done() for f in self.pending() + self.lent) < self.processes

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> concurrent.futures.Future:
        future = self.executor.submit(_call, fn, arg)
        self.lent.append(future)
        return future


class WorkerPool:
    """Worker processes for ``run``: spawned as soon as the pool is entered, so they start up
    (and ``warm`` up: imports, data) while this process still prepares the tasks.

    ``local``: this process is one of the workers and takes the first task at once (it has
    imported and opened everything already); the others share one executor. Without it, every
    task runs in a spawned worker of its own executor while this process only waits, so a
    worker killed from outside (a study's worker) takes down neither this process nor the
    other workers: only its own task fails, with ``BrokenProcessPool``."""

    def __init__(self, workers: int, *, local: bool = True, warm: Callable[[Any], Any] | None = None,
                 warm_with: Any = None):
        self.workers, self.local = workers, local
        self.warm, self.warm_with = warm, warm_with
        self.executors: list[concurrent.futures.ProcessPoolExecutor] = []
        self.interrupts = Interrupts()
        self.terminated: list[int] = []  # the worker pids an interruption ended

    def _executor(self, processes: int) -> concurrent.futures.ProcessPoolExecutor:
        ctx = multiprocessing.get_context("spawn")
        level = logging.getLogger().getEffectiveLevel()
        executor = concurrent.futures.ProcessPoolExecutor(max_workers=processes, mp_context=ctx,
                                                          initializer=_init_worker, initargs=(os.getpid(), level))
        if self.warm is not None:
            for _ in range(processes):  # each submit starts one process
                executor.submit(_call, self.warm, self.warm_with)
        return executor

    def __enter__(self) -> "WorkerPool":
        self.interrupts.__enter__()  # a signal while this process waits on the workers ends them too
        if self.local and self.workers > 1:
            self.executors = [self._executor(self.workers - 1)]
        elif not self.local:
            self.executors = [self._executor(1) for _ in range(self.workers)]
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        try:
            interrupted = kind is not None and issubclass(kind, INTERRUPTIONS)
            if interrupted:
                children = multiprocessing.active_children()
                for child in children:
                    self.terminated.append(child.pid)
                    child.terminate()  # SIGTERM: each worker records its runs as KILLED, then stops
                for executor in self.executors:  # no more tasks: each worker ends once it has recorded
                    executor.shutdown(wait=False, cancel_futures=True)
                deadline = time.monotonic() + GRACE_SECONDS
                for child in children:  # a worker that cannot record in time (e.g. a store that stays locked)
                    child.join(max(0.0, deadline - time.monotonic()))
                    if child.is_alive():
                        log.warning("worker process %d did not end within %g s of the interruption: killed",
                                    child.pid, GRACE_SECONDS)
                        child.kill()
                        child.join()
            for executor in self.executors:
                executor.shutdown(wait=True, cancel_futures=interrupted)
        finally:
            self.interrupts.__exit__(kind, exc, tb)
        return False

    def run(self, fn: Callable[..., Any], tasks: Sequence[Any],
            on_done: Callable[[int, Any], None] | None = None, lend: bool = False) -> list[Any]:
        """``fn(task)`` for every task; each task's value, or the exception that ended it;
        ``on_done(index, outcome)`` as each one ends. ``fn`` must be a module-level function;
        tasks are best given largest first. ``lend``: this process's own tasks are called as
        ``fn(task, spare)``, ``spare`` the workers' spare capacity (None without workers), so
        that they can hand work to a worker that became idle (``runner.handover``)."""
        outcomes: list[Any] = [None] * len(tasks)

        def settle(i: int, get: Callable[[], Any]) -> None:
            try:
                outcomes[i] = get()
            except INTERRUPTIONS:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed task is reported, the others go on
                outcomes[i] = exc
            if on_done:
                on_done(i, outcomes[i])

        if not self.executors or (self.local and len(tasks) <= 1):
            spare = _Spare(self.executors[0], self.workers - 1, lambda: []) if self.executors and self.local else None
            with one_blas_thread():
                for i, task in enumerate(tasks):
                    settle(i, lambda task=task: fn(task, spare) if lend else fn(task))
            return outcomes
        if not self.local:
            self._run_isolated(fn, tasks, settle)
            return outcomes
        futures = {self.executors[0].submit(_call, fn, tasks[i]): i for i in range(1, len(tasks))}
        spare = _Spare(self.executors[0], self.workers - 1, lambda: list(futures))
        mine: int | None = 0
        with one_blas_thread():
            while mine is not None:
                settle(mine, lambda i=mine: fn(tasks[i], spare) if lend else fn(tasks[i]))
                # the last task no worker has started yet is this process's next one
                taken = next((f for f in reversed(list(futures)) if f.cancel()), None)
                mine = futures.pop(taken) if taken is not None else None
        for fut in concurrent.futures.as_completed(futures):
            settle(futures[fut], fut.result)
        return outcomes

    def _run_isolated(self, fn, tasks, settle) -> None:
        """One task at a time per single-process executor; a broken one is replaced."""
        pending = list(range(len(tasks)))
        running: dict = {}  # future -> (task index, executor slot)
        for slot in range(len(self.executors)):
            if pending:
                i = pending.pop(0)
                running[self.executors[slot].submit(_call, fn, tasks[i])] = (i, slot)
        while running:
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for fut in done:
                i, slot = running.pop(fut)
                settle(i, fut.result)
                if isinstance(fut.exception(), concurrent.futures.process.BrokenProcessPool):
                    self.executors[slot].shutdown(wait=False)
                    self.executors[slot] = self._executor(1)
                if pending:
                    j = pending.pop(0)
                    running[self.executors[slot].submit(_call, fn, tasks[j])] = (j, slot)


def run_tasks(fn: Callable[[Any], Any], tasks: Sequence[Any], workers: int,
              on_done: Callable[[int, Any], None] | None = None, local: bool = True) -> list[Any]:
    """``fn(task)`` for every task on a ``WorkerPool`` of ``workers`` processes (see there)."""
    with WorkerPool(min(workers, max(1, len(tasks))) if local else workers, local=local) as pool:
        return pool.run(fn, tasks, on_done)
