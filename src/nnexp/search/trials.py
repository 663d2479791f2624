"""One stage's trials: what they train (Plan), how a trial becomes a job, is executed through
nnexp.runner (alone or with others as one population), and is told to Optuna; running a
stage on its worker processes until enough trials have finished."""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from typing import Sequence

from nnexp import runner
from nnexp.config import RunConfig, validate
from nnexp.errors import NnexpError
from nnexp.names import FAILED, PRUNED, TAG_STAGE, TAG_STATUS, TAG_STUDY, TAG_TRIAL
from nnexp.search.backend import Heartbeat, finished_trials, make_storage, open_study
from nnexp.search.plan import Plan

log = logging.getLogger("nnexp.study")


def _suggest(trial, name: str, dist: dict):
    if "choices" in dist:
        return trial.suggest_categorical(name, list(dist["choices"]))
    return trial.suggest_float(name, float(dist["low"]), float(dist["high"]), log=bool(dist.get("log")))


def trial_config(plan: Plan, params: dict) -> RunConfig:
    c = copy.deepcopy(plan.base)
    if "eta" in params:
        c.eta = float(params["eta"])
    if "lmbda" in params:
        c.lmbda = float(params["lmbda"]) * plan.lmbda_scale
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
    step = max(1, len(out) // 200)  # keep the attribute small
    return out[::step] if out[-1:] == out[::step][-1:] else out[::step] + out[-1:]


def _trial_job(trial, plan: Plan):
    """The trial's job: its run config, tags, MLflow run name, and the pruning observer that
    reports validation accuracy at every evaluation."""

    params = {name: _suggest(trial, name, dist) for name, dist in plan.space.items()}
    c = trial_config(plan, params)
    trial.set_user_attr("worker_pid", os.getpid())
    trial.set_user_attr("eta_used", c.eta)
    trial.set_user_attr("lmbda_used", c.lmbda)

    def pruning(record, net):
        acc = record.validation_accuracy
        if acc is None:
            return None
        trial.report(acc, record.images_seen)
        return PRUNED if plan.prune and trial.should_prune() else None

    pruning.__name__ = "the Optuna pruner"
    tags = {TAG_STUDY: plan.study, TAG_STAGE: plan.stage, TAG_TRIAL: str(trial.number)}
    return runner.Job(config=c, experiment=plan.experiment, tags=tags, parent_run_id=plan.parent_run_id,
               observers=[pruning], run_name=f"{plan.study}/{plan.stage} #{trial.number}",
               on_start=lambda rid: trial.set_user_attr("mlflow_run_id", rid))


def _trial_failed(trial, exc: BaseException) -> float:
    """A failed trial is data for the study, not the end of it."""
    trial.set_user_attr(TAG_STATUS, FAILED)
    trial.set_user_attr("reason", f"{type(exc).__name__}: {exc}"[:500])
    return 0.0


def _trial_value(trial, c: RunConfig, result) -> float:
    """Record the run's outcome on the trial; raises ``TrialPruned`` for a pruned run."""
    import optuna

    h = result.history
    trial.set_user_attr(TAG_STATUS, result.status)
    trial.set_user_attr("reason", h.reason[:500])
    trial.set_user_attr("images", h.records[-1].images_seen if h.records else 0)
    trial.set_user_attr("train_seconds", h.train_seconds)
    trial.set_user_attr("curve", _curve(h) if h.records else [])
    if result.test_accuracy is not None and "test_accuracy" not in c.monitor.metrics:
        trial.set_user_attr("test_accuracy", result.test_accuracy)
    if result.status == PRUNED:
        raise optuna.TrialPruned(h.reason)
    return h.best_validation_accuracy or 0.0


def objective(trial, plan: Plan) -> float:
    """Train one configuration; report validation accuracy at every evaluation for pruning."""
    outcome = _population_outcomes(plan, [(trial, _trial_job(trial, plan))])[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _population_outcomes(plan: Plan, members: list) -> list:
    """Train the members [(trial, job)] of one compatible group together (one member: alone);
    each trial's value, or the ``TrialPruned`` that ended it."""
    import optuna

    if len(members) > 1:
        log.info("%s/%s: trials %s trained as one population of %d", plan.study, plan.stage,
                 ", ".join(str(t.number) for t, _ in members), len(members))
    try:
        results = runner.execute([job for _, job in members])
    except NnexpError:
        raise
    except Exception as exc:  # failed trials are data for the study, not the end of it
        return [_trial_failed(trial, exc) for trial, _ in members]
    out = []
    for (trial, job), result in zip(members, results):
        try:
            out.append(_trial_value(trial, job.config, result))
        except optuna.TrialPruned as exc:
            out.append(exc)
    return out


def optimize_populations(study, plan: Plan, storage, n_trials: int) -> None:
    """Ask up to ``plan.population`` trials at a time, train the compatible ones as one batched
    population (the others one by one), and tell every result."""
    import optuna
    from optuna.trial import TrialState


    left = n_trials
    while left > 0:
        batch = [study.ask() for _ in range(min(plan.population, left))]
        left -= len(batch)
        with Heartbeat(storage, [t._trial_id for t in batch], plan.heartbeat):
            groups: dict[tuple, list] = {}
            try:
                for trial in batch:
                    job = _trial_job(trial, plan)
                    groups.setdefault(runner.group_key(job.config), []).append((trial, job))
                outcomes = {}
                for members in groups.values():
                    for (trial, _), outcome in zip(members, _population_outcomes(plan, members)):
                        outcomes[trial.number] = outcome
            except BaseException:  # nothing was told yet: the whole batch ends FAIL
                for trial in batch:
                    study.tell(trial, state=TrialState.FAIL)
                raise
        for trial in batch:
            outcome = outcomes[trial.number]
            if isinstance(outcome, optuna.TrialPruned):
                frozen = study.tell(trial, state=TrialState.PRUNED)
            else:
                frozen = study.tell(trial, outcome)
            _progress_line(study, frozen)


def _progress_line(study, trial) -> None:
    attrs = trial.user_attrs
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    value = "" if trial.value is None else f", best validation accuracy {trial.value:.4f}"
    log.info("%s trial %d (%s): %s%s", study.study_name, trial.number, params,
             attrs.get(TAG_STATUS, trial.state.name.lower()), value)


def _worker(plan: Plan, worker: int, enqueue: list[dict], n_trials: int) -> None:
    """Run ``n_trials`` trials of a stage; enqueue the fixed points first (grid stages)."""
    storage = make_storage(plan.storage, plan.heartbeat, plan.grace)
    study = open_study(plan, storage, worker)
    for params in enqueue:
        study.enqueue_trial(params, skip_if_exists=False)
    if plan.population > 1:
        optimize_populations(study, plan, storage, n_trials)
    else:
        study.optimize(lambda t: objective(t, plan), n_trials=n_trials, callbacks=[_progress_line])


def _worker_task(task: tuple) -> None:
    """A pool task: one worker's share of a stage."""
    _worker(*task)


def _key(params: dict) -> tuple:
    return tuple(sorted((k, round(float(v), 12)) for k, v in params.items()))


def fixed_params(t) -> dict:
    return t.params or t.system_attrs.get("fixed_params", {})


def run_stage(plan: Plan, n_target: int, workers: int, values: Sequence[dict] | None = None,
              first: dict | None = None):
    """Run trials until ``n_target`` are finished (complete or pruned). ``values``: the fixed
    points of a grid stage, each run exactly once; ``first``: a point a sampler stage starts
    from. Returns the stage's Optuna study."""
    import optuna
    from optuna.trial import TrialState

    storage = make_storage(plan.storage, plan.heartbeat, plan.grace)
    study = open_study(plan, storage)
    if first is not None and not study.get_trials(deepcopy=False):
        study.enqueue_trial(first)
    waited = 0.0
    for _ in range(100):
        optuna.storages.fail_stale_trials(study)  # a killed worker's trial: FAIL, then retried
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if len(done) >= n_target:
            break
        if values is not None:
            have = {_key(fixed_params(t)) for t in done + waiting + running}
            new = [v for v in values if _key(v) not in have]
            n_run = len(new) + len(waiting)
        else:
            new, n_run = [], n_target - len(done) - len(running)
        if n_run <= 0:  # only stale trials left: wait for their heartbeat to expire
            if waited > 3 * plan.grace + 60:
                raise NnexpError(f"stage {plan.stage}: trials stuck RUNNING (another process?)")
            time.sleep(2.0)
            waited += 2.0
            continue
        _launch(plan, workers, new, n_run)
    return study


def _launch(plan: Plan, workers: int, new: list[dict], n_run: int) -> None:
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
    outcomes = runner.run_tasks(_worker_task, [(plan, i, chunks[i], shares[i]) for i in range(k)], k, local=False)
    errors = [o for o in outcomes if isinstance(o, NnexpError)]
    if errors:
        raise errors[0]
    died = [o for o in outcomes if isinstance(o, BrokenProcessPool)]
    if died:
        log.warning("stage %s: a worker process died; its trials are retried", plan.stage)
    others = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, BrokenProcessPool)]
    if others:
        raise others[0]


def run_stage_budget(plan: Plan, n_trials: int, workers: int, budget_images: int | None):
    """Sampler stage with an optional budget in training images (for fair comparisons)."""
    if not budget_images:
        return run_stage(plan, n_trials, workers)
    study, n = None, 0
    while n < n_trials:
        n = min(n_trials, n + workers)
        study = run_stage(plan, n, workers)
        used = sum(t.user_attrs.get("images", 0) for t in finished_trials(study))
        if used >= budget_images:
            break
    return study
