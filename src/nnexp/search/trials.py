"""One stage's trials: what they train (StagePlan), how a trial becomes a job, is executed through
nnexp.runner (alone or with others as one population), and is told to Optuna; running a
stage on its worker processes until enough trials have finished."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from typing import Sequence

from nnexp import runner, tracking
from nnexp.config.run_schema import RunConfig, validate
from nnexp.config.errors import NnexpError
from nnexp.config.names import DIVERGED, FAILED, PRUNED, TAG_REPLICATE, TAG_STAGE, TAG_STATUS, TAG_STUDY, TAG_TRIAL
from nnexp.search.backend import Heartbeat, finished_trials, make_storage, open_study, set_user_attrs
from nnexp.search.stage_plan import StagePlan
from nnexp.tracking.storelock import sqlite_lock

log = logging.getLogger("nnexp.study")


def _suggest(trial, name: str, dist: dict):
    if "choices" in dist:
        return trial.suggest_categorical(name, list(dist["choices"]))
    return trial.suggest_float(name, float(dist["low"]), float(dist["high"]), log=bool(dist.get("log")))


def trial_config(plan: StagePlan, params: dict) -> RunConfig:
    c = copy.deepcopy(plan.base)
    if "eta" in params:
        c.eta = float(params["eta"])
    if "lmbda" in params:
        c.lmbda = float(params["lmbda"]) * plan.lmbda_scale
    if "block" in params:  # a block of extra seeds (a grid stage's unresolved comparison): its own seeds
        c.seed += int(params["block"]) * plan.replicates
    if "mini_batch_size" in params:
        c.mini_batch_size = int(params["mini_batch_size"])
        if plan.eta_base_mb:
            c.eta = c.eta * c.mini_batch_size / plan.eta_base_mb
    validate(c)
    return c


def _curve(history) -> list[list[float]]:
    """[images seen, cumulative training seconds, training cost, validation accuracy] per evaluation."""
    out, clock = [], 0.0
    for r in history.records:
        clock += r.epoch_seconds
        out.append([r.images_seen, round(clock, 4),
                    None if r.training_cost is None or not math.isfinite(r.training_cost) else r.training_cost,
                    r.validation_accuracy])
    step = max(1, len(out) // 1000)  # keep the attribute small (a grid stage scores every evaluation)
    return out[::step] if out[-1:] == out[::step][-1:] else out[::step] + out[-1:]


def mean_curve(curves: list[list]) -> list[list]:
    """The replicates' curves averaged row by row, up to the shortest (None where any is None)."""
    n = min((len(c) for c in curves), default=0)
    out = []
    for rows in zip(*(c[:n] for c in curves)):
        out.append([None if any(r[j] is None for r in rows) else sum(r[j] for r in rows) / len(rows)
                    for j in range(len(rows[0]))])
    return out


def _trial_jobs(trial, plan: StagePlan) -> list:
    """The trial's jobs, one per seed replicate: run config, tags, MLflow run name, and (a single
    replicate only) the pruning observer that reports validation accuracy at every evaluation and
    prunes at any but the last (a trial at its end completes: pruning it would stop nothing, and
    whether the median then counts the other trials' last values depends on timing)."""

    params = {name: _suggest(trial, name, dist) for name, dist in plan.space.items()}
    c = trial_config(plan, params)

    def pruning(record, net):
        acc = record.validation_accuracy
        if acc is None:
            return None
        trial.report(acc, record.images_seen)
        if record.epoch >= c.total_epochs:  # its last evaluation: it ends here anyway, COMPLETE with its value
            return None
        return PRUNED if plan.prune and trial.should_prune() else None

    pruning.__name__ = "the Optuna pruner"
    jobs, run_dirs = [], []
    for r in range(plan.replicates):
        cr = copy.deepcopy(c)
        cr.seed = c.seed + r
        tags = {TAG_STUDY: plan.study, TAG_STAGE: plan.stage, TAG_TRIAL: str(trial.number)}
        name = f"{plan.study}/{plan.stage} #{trial.number}"
        if plan.replicates > 1:
            tags[TAG_REPLICATE] = str(cr.seed - plan.base.seed)
            name += f" seed {cr.seed}"
        run_dir = tracking.default_run_dir().resolve()
        run_dirs.append(str(run_dir))
        jobs.append(runner.Job(
            config=cr, experiment=plan.experiment, tags=tags, parent_run_id=plan.parent_run_id,
            parent_record=plan.parent_record, run_dir=run_dir,
            observers=[pruning] if plan.replicates == 1 else [], run_name=name, score_test=plan.score_test,
            on_start=(lambda rid: trial.set_user_attr("mlflow_run_id", rid)) if r == 0 else None))
    attrs = {"eta_used": c.eta, "lmbda_used": c.lmbda,
             "run_dir": run_dirs[0]}  # the run's local record: record/ in there
    if plan.replicates > 1:
        attrs["seeds"] = [j.config.seed for j in jobs]
    set_user_attrs(trial, attrs)
    return jobs


def _trial_failed(trial, exc: BaseException) -> BaseException:
    """A trial that could not be trained is data for the study (told FAIL), not the end of it."""
    set_user_attrs(trial, {TAG_STATUS: FAILED, "reason": f"{type(exc).__name__}: {exc}"[:500]})
    return exc


def _trial_value(trial, c: RunConfig, results: list) -> float:
    """Record the outcome of the trial's runs (its seed replicates) on the trial; its value is
    their mean best validation accuracy. Raises ``TrialPruned`` for a pruned run."""
    import optuna

    hs = [r.history for r in results]
    statuses = [r.status for r in results]
    status = next((s for s in statuses if s in (PRUNED, DIVERGED)), statuses[0])
    values = [h.best_validation_accuracy or 0.0 for h in hs]
    curves = [_curve(h) if h.records else [] for h in hs]
    attrs = {TAG_STATUS: status,
             "reason": "; ".join(dict.fromkeys(h.reason for h in hs if h.reason))[:500],
             "images": max((h.records[-1].images_seen if h.records else 0) for h in hs),
             "train_seconds": sum(h.train_seconds for h in hs) / len(hs),
             "curve": mean_curve(curves) if len(curves) > 1 else curves[0]}
    tests = [r.test_accuracy for r in results if r.test_accuracy is not None]
    if tests and "test_accuracy" not in c.monitor.metrics:
        attrs["test_accuracy"] = sum(tests) / len(tests)
    if len(results) > 1:
        attrs.update(replicate_values=values, replicate_curves=curves, replicate_statuses=statuses)
        if tests:
            attrs["test_accuracies"] = tests
    set_user_attrs(trial, attrs)
    if status == PRUNED:
        raise optuna.TrialPruned(hs[0].reason)
    return sum(values) / len(values)


def _train_group(plan: StagePlan, members: list) -> list:
    """Train one population [(trial, job)] (``plan.alone``: each job by itself); per job its
    RunResult, or the exception that kept the population from being trained."""
    if len(members) > 1 and not plan.alone:
        numbers = dict.fromkeys(str(t.number) for t, _ in members)
        log.info("%s/%s: trial(s) %s trained as one population of %d", plan.study, plan.stage,
                 ", ".join(numbers), len(members))
    jobs = [job for _, job in members]
    try:
        return [runner.execute([j])[0] for j in jobs] if plan.alone else runner.execute(jobs)
    except NnexpError:
        raise
    except Exception as exc:  # failed trials are data for the study, not the end of it
        return [exc] * len(jobs)


def _trial_outcome(trial, pairs: list):
    """A trial's outcome from its jobs' results [(job, result)], in replicate order: its value, the
    ``TrialPruned`` that ended it, or the exception that kept it from being trained."""
    import optuna

    failed = next((r for _, r in pairs if isinstance(r, BaseException)), None)
    if failed is not None:
        return _trial_failed(trial, failed)
    try:
        return _trial_value(trial, pairs[0][0].config, [r for _, r in pairs])
    except optuna.TrialPruned as exc:
        return exc


def ask_trial(study, storage_url: str):
    """A trial to run: a waiting one (a grid point, a killed worker's retry) or a new one.
    Reaping stale trials and popping a waiting one are serialised across worker processes:
    on SQLite two workers could otherwise pop, and train, the same waiting trial."""
    import optuna

    with sqlite_lock(storage_url):
        optuna.storages.fail_stale_trials(study)  # a killed worker's trial: FAIL, then retried
        trial = study.ask()
        trial.set_user_attr("worker_pid", os.getpid())  # from its first moment: see api.fail_orphaned_trials
        return trial


def _tell(study, trial, outcome) -> None:
    import optuna
    from optuna.trial import TrialState

    try:
        if isinstance(outcome, optuna.TrialPruned):
            frozen = study.tell(trial, state=TrialState.PRUNED)
        elif isinstance(outcome, BaseException):
            frozen = study.tell(trial, state=TrialState.FAIL)
        else:
            frozen = study.tell(trial, outcome)
    except optuna.exceptions.UpdateFinishedTrialError:  # its heartbeat was late: reaped and retried
        log.warning("%s trial %d was ended as stale by another worker while it trained (its heartbeat "
                    "was late); its result is dropped and the trial is retried", study.study_name, trial.number)
        return
    _progress_line(study, frozen)


def optimize(study, plan: StagePlan, storage, n_trials: int) -> None:
    """Run ``n_trials`` trials: ask up to ``plan.population`` at a time, train the compatible
    ones as one batched population (the others one by one; a population of one is a single
    run), keep their heartbeats fresh meanwhile, and tell every outcome."""
    from optuna.trial import TrialState

    left = n_trials
    while left > 0:
        batch: list = []
        try:
            for _ in range(min(plan.population, left)):
                spent = budget_spent(study) if plan.budget_seconds else None
                if spent is not None and spent >= plan.budget_seconds:
                    break  # the stage's wall-clock budget is spent: no trial starts after it
                with runner.interruptions_deferred():  # an asked trial is always in the batch
                    batch.append(ask_trial(study, plan.storage))
                    if spent is not None:
                        batch[-1].set_user_attr("budget_spent_s", spent)
            if not batch:
                return
            left -= len(batch)
            with Heartbeat(storage, [t._trial_id for t in batch], plan.heartbeat):
                members = [(trial, job) for trial in batch for job in _trial_jobs(trial, plan)]
                # the runner's one grouping rule and caps: a trial's seeds may span populations
                results: dict[int, object] = {}
                for g in runner.plan_groups([job.config for _, job in members], workers=1):
                    for i, result in zip(g, _train_group(plan, [members[i] for i in g])):
                        results[i] = result
                outcomes = {trial.number: _trial_outcome(trial, [(job, results[i]) for i, (t, job)
                                                                 in enumerate(members) if t is trial])
                            for trial in batch}
        except BaseException:  # nothing was told yet: the whole batch ends FAIL
            with runner.interruptions_deferred():
                for trial in batch:
                    study.tell(trial, state=TrialState.FAIL)
            raise
        with runner.interruptions_deferred():  # every outcome is told, then an interruption ends the stage
            for trial in batch:
                _tell(study, trial, outcomes[trial.number])


def _progress_line(study, trial) -> None:
    attrs = trial.user_attrs
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    value = "" if trial.value is None else f", best validation accuracy {trial.value:.4f}"
    detail = f" ({attrs['reason']})" if attrs.get(TAG_STATUS) == FAILED and attrs.get("reason") else ""
    log.info("%s trial %d (%s): %s%s%s", study.study_name, trial.number, params,
             attrs.get(TAG_STATUS, trial.state.name.lower()), value, detail)


def _worker(plan: StagePlan, worker: int, enqueue: list[dict], n_trials: int) -> None:
    """Run ``n_trials`` trials of a stage; enqueue the fixed points first (grid stages). Ctrl-C or
    SIGTERM at any moment (a worker process is terminated by its launcher) ends the stage with the
    asked trials told FAIL, never left RUNNING: the interruption is caught from the first line."""
    with runner.Interrupts():
        storage = make_storage(plan.storage, plan.heartbeat, plan.grace, opened=True)
        study = open_study(plan, storage, worker)
        for params in enqueue:
            study.enqueue_trial(params, skip_if_exists=False)
        optimize(study, plan, storage, n_trials)


def _worker_task(task: tuple) -> None:
    """A pool task: one worker's share of a stage."""
    _worker(*task)


def _key(params: dict) -> tuple:
    return tuple(sorted((k, round(float(v), 12)) for k, v in params.items()))


def fixed_params(t) -> dict:
    return t.params or t.system_attrs.get("fixed_params", {})


def run_stage(plan: StagePlan, n_target: int, workers: int, values: Sequence[dict] | None = None,
              first: dict | None = None, pool: runner.WorkerPool | None = None):
    """Run trials until ``n_target`` are finished (complete or pruned). ``values``: the fixed
    points of a grid stage, each run exactly once; ``first``: a point a sampler stage starts
    from; ``pool``: the study's worker processes (started once, warm), else spawned for this
    call. Returns the stage's Optuna study."""
    import optuna
    from optuna.trial import TrialState

    storage = make_storage(plan.storage, plan.heartbeat, plan.grace, opened=True)
    study = open_study(plan, storage)
    if first is not None and not study.get_trials(deepcopy=False):
        study.enqueue_trial(first)
    waited, seen_failed = 0.0, None
    for _ in range(100):
        with sqlite_lock(plan.storage):
            optuna.storages.fail_stale_trials(study)  # a killed worker's trial: FAIL, then retried
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        running = [t for t in trials if t.state == TrialState.RUNNING]
        failed = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get(TAG_STATUS) == FAILED]
        seen_failed = {t.number for t in failed} if seen_failed is None else seen_failed
        failed_now = [t for t in failed if t.number not in seen_failed]  # in this call, not earlier runs
        if values is not None and failed_now:  # a grid stage decides on every point
            raise _could_not_train(plan, failed_now)
        if len(done) + len(failed_now) >= n_target:
            break
        if plan.budget_seconds and not running and budget_spent(study) >= plan.budget_seconds:
            break  # a budgeted stage: its wall clock is spent (see optimize)
        if values is not None:
            have = {_key(fixed_params(t)) for t in done + waiting + running}
            new = [v for v in values if _key(v) not in have]
            n_run = len(new) + len(waiting)
        else:
            new, n_run = [], n_target - len(done) - len(failed_now) - len(running)
        if n_run <= 0:  # only stale trials left: wait for their heartbeat to expire
            if waited > 3 * plan.grace + 60:
                raise NnexpError(f"stage {plan.stage}: trials stuck RUNNING (another process?)")
            time.sleep(2.0)
            waited += 2.0
            continue
        _launch(plan, workers, new, n_run, pool)
    if not done and failed_now:
        raise _could_not_train(plan, failed_now)
    return study


def _could_not_train(plan: StagePlan, failed: list) -> NnexpError:
    t = failed[0]
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fixed_params(t).items())
    return NnexpError(f"stage {plan.stage}: {len(failed)} trial(s) could not be trained (FAIL in Optuna); "
                      f"trial {t.number} ({params}): {t.user_attrs.get('reason', 'no reason recorded')}. "
                      "Re-running the study retries them")


def _launch(plan: StagePlan, workers: int, new: list[dict], n_run: int, pool: runner.WorkerPool | None) -> None:
    k = max(1, min(workers, n_run))
    shares = [n_run // k + (1 if i < n_run % k else 0) for i in range(k)]
    # each worker enqueues no more points than it will run itself, so nobody samples a grid stage
    chunks, start = [], 0
    for share in shares:
        take = min(share, len(new) - start)
        chunks.append(new[start:start + max(take, 0)])
        start += max(take, 0)
    from concurrent.futures.process import BrokenProcessPool

    if k == 1:  # in this process: nothing to spawn
        with runner.one_blas_thread():
            _worker(plan, 0, chunks[0], shares[0])
        return
    tasks = [(plan, i, chunks[i], shares[i]) for i in range(k)]
    outcomes = pool.run(_worker_task, tasks) if pool is not None else runner.run_tasks(_worker_task, tasks, k,
                                                                                         local=False)
    errors = [o for o in outcomes if isinstance(o, NnexpError)]
    if errors:
        raise errors[0]
    died = [o for o in outcomes if isinstance(o, BrokenProcessPool)]
    if died:
        log.warning("stage %s: a worker process died; its trials are retried", plan.stage)
    others = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, BrokenProcessPool)]
    if others:
        raise others[0]


def run_on_workers(fn, tasks: list, pool: runner.WorkerPool | None) -> None:
    """``fn(task)`` for every task (one population per worker: ``study=pbt``, ``study=asha``): on
    the study's worker processes when there are several, else in this process; the first error
    is raised once every task ended."""
    if pool is not None and len(tasks) > 1:
        failed = [o for o in pool.run(fn, tasks) if isinstance(o, BaseException)]
        if failed:
            raise failed[0]
    else:
        for task in tasks:
            fn(task)


def budget_spent(study) -> float:
    """Wall seconds since the stage's first trial started (0 before it): the clock starts with the
    first trial, as tuning time is measured (``bench.study``), so the stage's start-up is not tuning."""
    import datetime

    first = min((t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start), default=None)
    return (datetime.datetime.now() - first).total_seconds() if first else 0.0  # Optuna's clock: local time


def run_stage_budget(plan: StagePlan, n_trials: int, workers: int, budget_images: int | None,
                     budget_seconds: float | None = None, pool: runner.WorkerPool | None = None):
    """Sampler stage with optional budgets (for fair comparisons): no new trials once the finished
    ones used ``budget_images`` training images, or once ``budget_seconds`` of wall clock passed
    since its first trial started: each worker checks before it asks a trial (``budget_spent``, kept
    on the trial as ``budget_spent_s``), and a trial running then finishes."""
    if not budget_images and not budget_seconds:
        return run_stage(plan, n_trials, workers, pool=pool)
    plan = dataclasses.replace(plan, budget_seconds=budget_seconds)
    study, n = None, 0
    while n < n_trials:
        n = min(n_trials, n + workers)
        study = run_stage(plan, n, workers, pool=pool)
        used = sum(t.user_attrs.get("images", 0) for t in finished_trials(study))
        if (budget_images and used >= budget_images) or (budget_seconds and budget_spent(study) >= budget_seconds):
            break
    return study
