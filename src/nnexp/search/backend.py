"""The Optuna backend (the only package that imports optuna): storages with heartbeats,
samplers, pruners, opening a stage's study, keeping asked trials alive."""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any, Sequence

from nnexp.config.errors import NnexpError
from nnexp.search.stage_plan import StagePlan
from nnexp.tracking.storelock import sqlite_lock
from nnexp.tracking import redact

DEFAULT_STORAGE = "sqlite:///optuna.db"


class _NoInterruptTracebacks(logging.Filter):
    """Drops Optuna's "trial failed" warning (with its traceback) when Ctrl-C or SIGTERM ended the
    trial: the command says so in one line, and Optuna still fails the trial."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


def _held_back(method):
    """``method`` with Ctrl-C and SIGTERM held back until it returns (in the main thread, where
    signals land; a heartbeat thread's calls are left as they are)."""
    from nnexp.runner.interrupts import interruptions_deferred

    @functools.wraps(method)
    def call(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            return method(*args, **kwargs)
        with interruptions_deferred():
            return method(*args, **kwargs)

    return call


@functools.lru_cache(maxsize=1)
def _uninterrupted_storage():
    """Optuna's RDBStorage, each of its calls whole: an interruption waits until the call returns.

    Why (measured: a trial left RUNNING after SIGTERM in 2 of 30 interrupted studies, a worker
    hung until killed in 4 of 30): raised inside a storage call, e.g. while TPE reads the trials
    in ``suggest_float``, an interruption abandons a SQLite statement half-read. Its read lock
    stays held (the statement lives on in the traceback) and every write to the file waits on it,
    this process's own ``tell(FAIL)`` included: a deadlock until SQLite's busy timeout (60 s),
    while the trial stays RUNNING and the launcher kills the worker after its grace."""
    from optuna.storages import RDBStorage

    methods = {name: _held_back(attr) for name, attr in vars(RDBStorage).items()
               if callable(attr) and not name.startswith("__") and not isinstance(attr, (staticmethod, classmethod))}
    methods["set_trial_user_attrs"] = _held_back(_set_trial_user_attrs)
    return type("UninterruptedRDBStorage", (RDBStorage,), methods)


def _set_trial_user_attrs(storage, trial_id: int, attrs: dict) -> None:
    """Every one of ``attrs`` on the trial in one transaction: the RDB storage's own write of one
    attribute, each in the same session, one commit (see :func:`set_user_attrs`)."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(storage.scoped_session, True) as session:
        for key, value in attrs.items():
            storage._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id, key, value)


def set_user_attrs(trial, attrs: dict) -> None:
    """``trial.set_user_attr(key, value)`` for every item, in one transaction of its storage.

    Optuna writes each user attribute in a transaction of its own (a read, an upsert, a commit):
    10 attributes took 25 ms on SQLite, 8 ms in one transaction (measured), and a trial's outcome
    has up to 10. The storage is always :func:`make_storage`'s (Optuna wraps it in a cache that
    passes attribute writes through). It relies on Optuna's RDB internals (a session, the write of
    one attribute without its commit): every study test goes through it."""
    storage = getattr(trial.storage, "_backend", trial.storage)
    storage.set_trial_user_attrs(trial._trial_id, attrs)
    trial._cached_frozen_trial.user_attrs.update(attrs)  # what trial.user_attrs reads, as set_user_attr keeps it


def make_storage(url: str, heartbeat: int = 10, grace: int = 30, *, opened: bool = False):
    """An RDB storage with heartbeats: a killed worker's trial is failed and retried. ``opened``:
    the study opened this storage before (``run_study`` does, before any stage or worker), so
    Optuna's schema check is skipped (it loads every alembic revision file: ~0.1 s an open, 35
    opens in a broad-strategy study, measured)."""
    import warnings

    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for handler in logging.getLogger("optuna").handlers:  # an interrupted trial: our one line, not a traceback
        if not any(isinstance(f, _NoInterruptTracebacks) for f in handler.filters):
            handler.addFilter(_NoInterruptTracebacks())
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # population trials are asked and told (not Study.optimize); _Heartbeat keeps them alive
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        with sqlite_lock(url):  # two commands creating a fresh SQLite storage at once race on its schema
            return _uninterrupted_storage()(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat, grace_period=grace,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
                              skip_compatibility_check=opened)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise NnexpError(f"cannot open Optuna storage {redact(url)}: {redact(first)}") from None


def make_sampler(plan: StagePlan, worker: int = 0):
    import optuna

    seed = plan.seed * 1000 + worker  # workers must not propose identical points
    if plan.sampler == "random":  # its own stream: not TPE's random start-up points
        return optuna.samplers.RandomSampler(seed=seed + 500)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=3)


def make_pruner(plan: StagePlan):
    import optuna

    if plan.rungs is not None:  # successive halving (study=asha): rungs at min x factor^k epochs
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=plan.rungs[0], reduction_factor=plan.rungs[1],
                                                      min_early_stopping_rate=0)
    if not plan.prune or plan.pruner == "none":
        return optuna.pruners.NopPruner()
    if plan.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)


def open_study(plan: StagePlan, storage, worker: int = 0):
    import optuna

    return optuna.create_study(study_name=f"{plan.study}/{plan.stage}", storage=storage,
                               direction="maximize", load_if_exists=True,
                               sampler=make_sampler(plan, worker), pruner=make_pruner(plan))


class Heartbeat:
    """Keeps the asked trials' heartbeats fresh while a population trains them (``optimize``
    does this for one trial), so a killed worker's trials are failed and retried."""

    def __init__(self, storage, trial_ids: Sequence[int], interval: int):
        self.storage, self.ids, self.interval = storage, list(trial_ids), max(1, interval)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def add(self, trial_id: int) -> None:
        """Keep this trial's heartbeat too (a population refilled with a new trial)."""
        with self.lock:
            self.ids.append(trial_id)
        self.storage.record_heartbeat(trial_id)

    def remove(self, trial_id: int) -> None:
        """Stop beating for a trial that was told (it is no longer RUNNING)."""
        with self.lock:
            if trial_id in self.ids:
                self.ids.remove(trial_id)

    def _beat(self) -> None:
        while True:
            with self.lock:
                ids = list(self.ids)
            for i in ids:
                self.storage.record_heartbeat(i)
            if self.stop.wait(self.interval):
                return

    def __enter__(self):
        if self.storage.get_heartbeat_interval():
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


def finished_trials(study) -> list:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def best_of(trials) -> Any:
    scored = [t for t in trials if t.value is not None]
    return max(scored, key=lambda t: t.value) if scored else None
