"""``python -m nnexp.study``: the book's broad strategy as a staged, resumable, parallel
Optuna study (the only module that imports optuna).

Each stage is its own Optuna study ``<name>/<stage>`` in one storage; its decision is kept
in that study's user attributes, so a re-run skips finished stages and finishes half-done
ones. Trials run through the same path as ``nnexp.run`` (one nested MLflow run each, under
one parent run per study); divergent trials are data (``nnexp.status=diverged``), hopeless
ones are pruned on their validation accuracy.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nnexp import tracking
from nnexp.config import RunConfig, to_run_config, validate
from nnexp.errors import ConfigError, NnexpError

log = logging.getLogger("nnexp.study")

DEFAULT_STORAGE = "sqlite:///optuna.db"
META = "meta"  # user-attribute key of the per-study metadata
TRAINING_METRICS = ["training_cost", "training_accuracy", "validation_cost", "validation_accuracy"]


# -- settings -------------------------------------------------------------------------------------
@dataclass
class StudySettings:
    """The ``study`` config group (sweeps/study/*.yaml), as plain data."""

    raw: dict

    def __getattr__(self, key: str) -> Any:
        try:
            return self.raw[key]
        except KeyError:
            raise AttributeError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)


@dataclass
class Plan:
    """What one stage's trials train: picklable, handed to worker processes."""

    study: str
    stage: str
    storage: str
    base: RunConfig
    space: dict  # name -> {"low", "high", "log"} or {"choices": [...]}
    lmbda_scale: float = 1.0  # trial lambda = suggested (full-data units) x scale
    eta_base_mb: int | None = None  # trial eta = eta x mini_batch_size / eta_base_mb
    prune: bool = True
    pruner: str = "median"
    sampler: str = "tpe"
    seed: int = 0
    parent_run_id: str | None = None
    experiment: str | None = None
    heartbeat: int = 10
    grace: int = 30
    population: int = 1  # trials asked at once and trained as one batched population


# -- storage, samplers, pruners ------------------------------------------------------------------
def make_storage(url: str, heartbeat: int = 10, grace: int = 30):
    """An RDB storage with heartbeats: a killed worker's trial is failed and retried."""
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # population trials are asked and told (not Study.optimize); _Heartbeat keeps them alive
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        return RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat, grace_period=grace,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise NnexpError(f"cannot open Optuna storage {tracking.redact(url)}: {tracking.redact(first)}") from None


def make_sampler(plan: Plan, worker: int = 0):
    import optuna

    seed = plan.seed * 1000 + worker  # workers must not propose identical points
    if plan.sampler == "random":  # its own stream: not TPE's random start-up points
        return optuna.samplers.RandomSampler(seed=seed + 500)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=3)


def make_pruner(plan: Plan):
    import optuna

    if not plan.prune or plan.pruner == "none":
        return optuna.pruners.NopPruner()
    if plan.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)


def open_study(plan: Plan, storage, worker: int = 0):
    import optuna

    return optuna.create_study(study_name=f"{plan.study}/{plan.stage}", storage=storage,
                               direction="maximize", load_if_exists=True,
                               sampler=make_sampler(plan, worker), pruner=make_pruner(plan))


# -- one trial ------------------------------------------------------------------------------------
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
    from nnexp.runner import Job

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
        return "pruned" if plan.prune and trial.should_prune() else None

    pruning.__name__ = "the Optuna pruner"
    tags = {"nnexp.study": plan.study, "nnexp.stage": plan.stage, "nnexp.trial": str(trial.number)}
    return Job(config=c, experiment=plan.experiment, tags=tags, parent_run_id=plan.parent_run_id,
               observers=[pruning], run_name=f"{plan.study}/{plan.stage} #{trial.number}",
               on_start=lambda rid: trial.set_user_attr("mlflow_run_id", rid))


def _trial_failed(trial, exc: BaseException) -> float:
    """A failed trial is data for the study, not the end of it."""
    trial.set_user_attr("nnexp.status", "failed")
    trial.set_user_attr("reason", f"{type(exc).__name__}: {exc}"[:500])
    return 0.0


def _trial_value(trial, c: RunConfig, result) -> float:
    """Record the run's outcome on the trial; raises ``TrialPruned`` for a pruned run."""
    import optuna

    h = result.history
    trial.set_user_attr("nnexp.status", result.status)
    trial.set_user_attr("reason", h.reason[:500])
    trial.set_user_attr("images", h.records[-1].images_seen if h.records else 0)
    trial.set_user_attr("train_seconds", h.train_seconds)
    trial.set_user_attr("curve", _curve(h) if h.records else [])
    if result.test_accuracy is not None and "test_accuracy" not in c.monitor.metrics:
        trial.set_user_attr("test_accuracy", result.test_accuracy)
    if result.status == "pruned":
        raise optuna.TrialPruned(h.reason)
    return h.best_validation_accuracy or 0.0


def objective(trial, plan: Plan) -> float:
    """Train one configuration; report validation accuracy at every evaluation for pruning."""
    outcome = _population_outcomes(plan, [(trial, _trial_job(trial, plan))])[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


class _Heartbeat:
    """Keeps the asked trials' heartbeats fresh while a population trains them (``optimize``
    does this for one trial), so a killed worker's trials are failed and retried."""

    def __init__(self, storage, trial_ids: Sequence[int], interval: int):
        self.storage, self.ids, self.interval = storage, list(trial_ids), max(1, interval)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            for i in self.ids:
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


def _population_outcomes(plan: Plan, members: list) -> list:
    """Train the members [(trial, job)] of one compatible group together (one member: alone);
    each trial's value, or the ``TrialPruned`` that ended it."""
    import optuna

    from nnexp import runner

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

    from nnexp.runner import group_key

    left = n_trials
    while left > 0:
        batch = [study.ask() for _ in range(min(plan.population, left))]
        left -= len(batch)
        with _Heartbeat(storage, [t._trial_id for t in batch], plan.heartbeat):
            groups: dict[tuple, list] = {}
            try:
                for trial in batch:
                    job = _trial_job(trial, plan)
                    groups.setdefault(group_key(job.config), []).append((trial, job))
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
             attrs.get("nnexp.status", trial.state.name.lower()), value)


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


# -- running a stage -----------------------------------------------------------------------------
def _key(params: dict) -> tuple:
    return tuple(sorted((k, round(float(v), 12)) for k, v in params.items()))


def _fixed_params(t) -> dict:
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
            have = {_key(_fixed_params(t)) for t in done + waiting + running}
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

    from nnexp import runner

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


def finished_trials(study) -> list:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def best_of(trials) -> Any:
    scored = [t for t in trials if t.value is not None]
    return max(scored, key=lambda t: t.value) if scored else None


# -- the study's context ----------------------------------------------------------------------
@dataclass
class Context:
    name: str
    settings: StudySettings
    base: RunConfig  # the full problem (the run config the study was composed from)
    storage_url: str
    workers: int
    experiment: str | None
    n_full: int = 0  # training images of the full problem
    n_stage: int = 0  # training images of the stripped-down problem
    parent_run_id: str | None = None
    decisions: dict = field(default_factory=dict)
    stage_studies: dict = field(default_factory=dict)

    def plan(self, stage: str, base: RunConfig, space: dict, **kw) -> Plan:
        s = self.settings
        return Plan(study=self.name, stage=stage, storage=self.storage_url, base=base, space=space,
                    pruner=s.get("pruner", "median"), seed=int(s.get("seed", 0)),
                    parent_run_id=self.parent_run_id, experiment=self.experiment,
                    heartbeat=int(s.get("heartbeat_seconds", 10)), grace=int(s.get("grace_seconds", 30)),
                    population=int(s.get("population", 1)), **kw)


def stripped_base(ctx: Context, epochs: int, *, early_stopping: bool) -> RunConfig:
    """The stripped-down problem: some classes, no hidden layer, frequent cheap monitoring."""
    s = ctx.settings.stripped
    c = copy.deepcopy(ctx.base)
    c.dataset.classes = list(s["classes"])
    c.dataset.train_size = None
    c.sizes = [c.sizes[0], *s.get("hidden", []), c.sizes[-1]]
    c.epochs, c.budget_images = epochs, None
    c.schedule.name = "constant"
    c.early_stopping.name = "no_improvement" if early_stopping else "off"
    c.early_stopping.patience = int(ctx.settings.get("patience", 10))
    # evaluate at least ~5 times an epoch on tiny problems (e.g. digits' 0s and 1s)
    every = min(int(s["every_images"]), max(1, ctx.n_stage // 5))
    c.monitor.metrics, c.monitor.every_images = ["training_cost", "validation_accuracy"], every
    c.monitor.validation_sample = s.get("validation_sample")
    c.tracking.log_model = False
    return c


def full_base(ctx: Context, epochs: int, *, schedule: str, early_stopping: bool) -> RunConfig:
    c = copy.deepcopy(ctx.base)
    c.epochs, c.budget_images = epochs, None
    c.schedule.name = schedule
    c.schedule.patience = int(ctx.settings.get("patience", 10))
    c.early_stopping.name = "no_improvement" if early_stopping else "off"
    c.early_stopping.patience = int(ctx.settings.get("patience", 10))
    c.monitor.metrics = list(TRAINING_METRICS)  # never the test set while tuning
    c.monitor.every_images = c.monitor.validation_sample = None
    return c


def stage_done(ctx: Context, stage: str) -> dict | None:
    return ctx.decisions.get(stage)


def record_decision(ctx: Context, stage: str, study, decision: dict) -> dict:
    study.set_user_attr("decision", decision)
    ctx.decisions[stage] = decision
    ctx.stage_studies[stage] = study
    if ctx.parent_run_id:
        tracking.log_stage_decision(tracking.resolve_uri(ctx.base.tracking.uri), ctx.parent_run_id,
                                    stage, decision)
    log.info("stage %s: %s", stage, decision.get("summary", ""))
    return decision


def _grid_scores(study, name: str) -> dict[float, Any]:
    return {float(_fixed_params(t)[name]): t for t in finished_trials(study) if name in _fixed_params(t)}


def decreasing(trial) -> bool:
    """Did the training cost decrease over the first epochs, rather than oscillate or rise?

    Decreasing: the cost ends lower than it started, and the rises along the way add up to
    less than half the net fall (oscillation shows as large rises). A diverged run never did.
    """
    if trial.user_attrs.get("nnexp.status") in ("diverged", "failed"):
        return False
    costs = [row[2] for row in trial.user_attrs.get("curve", [])]
    if len(costs) < 2 or any(c is None for c in costs):
        return False
    net = costs[0] - costs[-1]
    rises = sum(max(0.0, b - a) for a, b in zip(costs, costs[1:]))
    return net > 0 and rises < 0.5 * net


def stage_eta_threshold(ctx: Context) -> dict:
    s = ctx.settings.eta
    base = stripped_base(ctx, int(s["epochs"]), early_stopping=False)
    base.lmbda = 0.0  # the book: find eta first, with no regularization
    plan = ctx.plan("eta_threshold", base, {"eta": {"low": 1e-6, "high": 1e6, "log": True}}, prune=False)
    decades = sorted(float(v) for v in s["decades"])
    values = [{"eta": v} for v in decades]
    study = run_stage(plan, len(values), ctx.workers, values)
    trend = {eta: decreasing(t) for eta, t in _grid_scores(study, "eta").items()}
    threshold = next((eta for eta in decades if not trend[eta]), None)
    notes = []
    if threshold is None:
        threshold = decades[-1] * 10
        notes.append("the cost decreased at every eta tried; threshold taken one decade above")
    elif threshold == decades[0]:
        notes.append("the cost did not decrease even at the smallest eta: extend study.eta.decades")
    else:  # refine inside the decade below the threshold
        refine = [{"eta": threshold / 10 * float(r)} for r in s.get("refine", [])]
        study = run_stage(plan, len(values) + len(refine), ctx.workers, values + refine)
        trend = {eta: decreasing(t) for eta, t in _grid_scores(study, "eta").items()}
        threshold = min(eta for eta, down in trend.items() if not down and eta >= threshold / 10)
    eta = threshold / 2
    summary = f"threshold eta {threshold:.4g} (cost stops decreasing), so eta = {eta:.4g}"
    return record_decision(ctx, "eta_threshold", study, {
        "threshold": threshold, "eta": eta, "summary": summary, "notes": notes,
        "decreasing": {f"{k:.6g}": v for k, v in sorted(trend.items())}})


def stage_lmbda(ctx: Context, eta: float) -> dict:
    s = ctx.settings.lmbda
    base = stripped_base(ctx, int(s["epochs"]), early_stopping=True)
    base.eta = eta
    scale = ctx.n_stage / ctx.n_full
    plan = ctx.plan("lmbda_walk", base, {"lmbda": {"low": 1e-8, "high": 1e8, "log": True}},
                    lmbda_scale=scale, prune=False)
    start = float(s["start"])
    values = [{"lmbda": start}, {"lmbda": start * 10}, {"lmbda": start / 10}]
    study = run_stage(plan, len(values), ctx.workers, values)
    scores = lambda: {k: t.value for k, t in _grid_scores(study, "lmbda").items()}  # noqa: E731
    sc = scores()
    best = max(sc, key=sc.get)
    direction = 10.0 if best > start else 0.1 if best < start else None
    steps = 1 if direction else 0
    while direction and steps < int(s["max_steps"]):
        nxt = best * direction
        values.append({"lmbda": nxt})
        study = run_stage(plan, len(values), ctx.workers, values)
        sc = scores()
        if sc[nxt] <= sc[best]:
            break
        best, steps = nxt, steps + 1
    walk = record_decision(ctx, "lmbda_walk", study, {
        "lmbda": best, "lmbda_stage": best * scale, "scores": {f"{k:.6g}": v for k, v in sorted(sc.items())},
        "summary": f"best decade lambda {best:.4g} (full-data units; {best * scale:.4g} on "
                   f"{ctx.n_stage} images), validation accuracy {sc[best]:.4f}"})
    return walk


def stage_sampler_refine(ctx: Context, stage: str, base: RunConfig, space: dict, n: int,
                         start: dict, **kw) -> dict:
    """TPE inside a range, starting from the current value (its first trial)."""
    plan = ctx.plan(stage, base, space, **kw)
    study = run_stage(plan, n, ctx.workers, first=start)
    best = best_of(finished_trials(study))
    params, value = (dict(best.params), best.value) if best else (start, 0.0)
    name = next(iter(space))
    return record_decision(ctx, stage, study, {
        **params, "validation_accuracy": value,
        "summary": f"{name} {params[name]:.4g}, validation accuracy {value:.4f} ({n} TPE trials)"})


def acc_at(curve: list, horizon: float) -> float:
    """Validation accuracy of the last evaluation made within ``horizon`` training seconds."""
    seen = [row[3] for row in curve if row[1] <= horizon + 1e-9 and row[3] is not None]
    return seen[-1] if seen else 0.0


def stage_mini_batch(ctx: Context, eta: float, lmbda: float) -> dict:
    s = ctx.settings.mini_batch
    base = full_base(ctx, int(s["epochs"]), schedule="constant", early_stopping=False)
    base.eta = eta
    base.monitor.metrics = ["training_cost", "validation_accuracy"]
    base.monitor.every_images = max(1, ctx.n_full // int(s.get("evaluations_per_epoch", 10)))
    base.monitor.validation_sample = s.get("validation_sample")
    sizes = [int(m) for m in s["sizes"] if int(m) <= ctx.n_full]
    plan = ctx.plan("mini_batch", base, {"mini_batch_size": {"choices": sizes}, "lmbda": {"low": 1e-8, "high": 1e8, "log": True}},
                    eta_base_mb=int(s["base"]), prune=False)
    values = [{"mini_batch_size": m, "lmbda": lmbda} for m in sizes]
    study = run_stage(plan, len(values), ctx.workers, values)
    trials = {int(_fixed_params(t)["mini_batch_size"]): t for t in finished_trials(study)}
    horizon = min(t.user_attrs.get("train_seconds", 0.0) for t in trials.values())
    score = {m: acc_at(t.user_attrs.get("curve", []), horizon) for m, t in trials.items()}
    best = max(sorted(score), key=lambda m: (score[m], m))
    return record_decision(ctx, "mini_batch", study, {
        "mini_batch_size": best, "eta": eta * best / int(s["base"]), "horizon_seconds": horizon,
        "accuracy_at_horizon": {str(m): v for m, v in sorted(score.items())},
        "summary": f"mini-batch {best} (validation accuracy {score[best]:.4f} after {horizon:.2f} s "
                   f"of training, the shortest trial's time)"})


def stage_final(ctx: Context, eta: float, lmbda: float, mini_batch: int, schedule: str) -> dict:
    s = ctx.settings.final
    base = full_base(ctx, int(s["epochs"]), schedule=schedule, early_stopping=True)
    base.eta, base.lmbda, base.mini_batch_size = eta, lmbda, mini_batch
    plan = ctx.plan("final", base, {}, prune=False)
    study = run_stage(plan, 1, 1)
    (trial,) = finished_trials(study)[:1]
    c = trial_config(plan, {})
    return record_decision(ctx, "final", study, {
        "eta": eta, "lmbda": lmbda, "mini_batch_size": mini_batch, "schedule": schedule,
        "validation_accuracy": trial.value, "test_accuracy": trial.user_attrs.get("test_accuracy"),
        "images": trial.user_attrs.get("images"), "mlflow_run_id": trial.user_attrs.get("mlflow_run_id"),
        "config": OmegaConf.to_container(OmegaConf.structured(c)),
        "summary": f"full problem: best validation accuracy {trial.value:.4f}, test accuracy "
                   f"{trial.user_attrs.get('test_accuracy', float('nan')):.4f} (measured once)"})


def broad_strategy(ctx: Context, stop_after: str | None) -> None:
    stages = [
        ("eta_threshold", lambda: stage_eta_threshold(ctx)),
        ("lmbda_walk", lambda: stage_lmbda(ctx, ctx.decisions["eta_threshold"]["eta"])),
        ("lmbda_refine", lambda: _lmbda_refine(ctx)),
        ("eta_refine", lambda: _eta_refine(ctx)),
        ("mini_batch", lambda: stage_mini_batch(ctx, ctx.decisions["eta_refine"]["eta"],
                                                ctx.decisions["lmbda_refine"]["lmbda"])),
        ("final", lambda: stage_final(ctx, ctx.decisions["mini_batch"]["eta"],
                                      ctx.decisions["lmbda_refine"]["lmbda"],
                                      ctx.decisions["mini_batch"]["mini_batch_size"], "halve_on_plateau")),
    ]
    _run_stages(ctx, stages, stop_after)


def _lmbda_refine(ctx: Context) -> dict:
    walk, s = ctx.decisions["lmbda_walk"], ctx.settings.lmbda
    base = stripped_base(ctx, int(s["epochs"]), early_stopping=True)
    base.eta = ctx.decisions["eta_threshold"]["eta"]
    best = walk["lmbda"]
    return stage_sampler_refine(
        ctx, "lmbda_refine", base, {"lmbda": {"low": best / 10, "high": best * 10, "log": True}},
        int(s["refine_trials"]), {"lmbda": best}, lmbda_scale=ctx.n_stage / ctx.n_full)


def _eta_refine(ctx: Context) -> dict:
    """Build back up (the book): re-tune eta on the full problem, lambda fixed, from eta down."""
    s = ctx.settings.eta
    lmbda = ctx.decisions["lmbda_refine"]["lmbda"]
    eta = ctx.decisions["eta_threshold"]["eta"]
    base = full_base(ctx, int(s.get("refine_epochs", 30)), schedule="constant", early_stopping=True)
    base.lmbda = lmbda
    low, high = s.get("refine_range", [0.03, 3.0])
    return stage_sampler_refine(
        ctx, "eta_refine", base, {"eta": {"low": eta * float(low), "high": eta * float(high), "log": True}},
        int(s.get("refine_trials", 6)), {"eta": eta})


def sampler_study(ctx: Context, stop_after: str | None) -> None:
    """The generic baseline: one sampler (TPE or random) over the whole space, full problem."""
    s = ctx.settings

    def search() -> dict:
        base = full_base(ctx, int(s.epochs), schedule="constant", early_stopping=True)
        space = {k: dict(v) for k, v in s.space.items()}
        plan = ctx.plan("search", base, space, sampler=s.get("sampler", "tpe"))
        study = run_stage_budget(plan, int(s.n_trials), ctx.workers, s.get("budget_images"))
        best = best_of(finished_trials(study))
        params = {**{"eta": base.eta, "lmbda": base.lmbda, "mini_batch_size": base.mini_batch_size},
                  **(best.params if best else {})}
        return record_decision(ctx, "search", study, {
            **params, "validation_accuracy": best.value if best else None,
            "trials": len(finished_trials(study)),
            "summary": f"best of {len(finished_trials(study))} {plan.sampler} trials: "
                       + ", ".join(f"{k}={v:.4g}" for k, v in params.items())})

    stages = [("search", search),
              ("final", lambda: stage_final(ctx, ctx.decisions["search"]["eta"], ctx.decisions["search"]["lmbda"],
                                            int(ctx.decisions["search"]["mini_batch_size"]), "halve_on_plateau"))]
    _run_stages(ctx, stages, stop_after)


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


def _run_stages(ctx: Context, stages, stop_after: str | None) -> None:
    names = [n for n, _ in stages]
    if stop_after and stop_after not in names:
        raise ConfigError(f"unknown stage '{stop_after}' for study.stop_after; stages: {', '.join(names)}")
    for name, fn in stages:
        if stage_done(ctx, name):
            log.info("stage %s: done earlier (%s)", name, ctx.decisions[name].get("summary", ""))
        else:
            fn()
        if name == stop_after:
            log.info("stopping after stage %s (study.stop_after); re-run without it to resume", name)
            return


# -- loading state, writing results ------------------------------------------------------------
STAGES = {"broad_strategy": ["eta_threshold", "lmbda_walk", "lmbda_refine", "eta_refine", "mini_batch", "final"],
          "sampler": ["search", "final"]}


def load_decisions(ctx: Context) -> None:
    """Decisions of finished stages, read back from the storage (this is what resumes)."""
    import optuna

    existing = {s.study_name for s in optuna.get_all_study_summaries(make_storage(ctx.storage_url))}
    for stage in STAGES[ctx.settings.kind]:
        name = f"{ctx.name}/{stage}"
        if name in existing:
            study = optuna.load_study(study_name=name, storage=make_storage(ctx.storage_url))
            ctx.stage_studies[stage] = study
            if "decision" in study.user_attrs:
                ctx.decisions[stage] = study.user_attrs["decision"]


def meta_study(ctx: Context):
    import optuna

    return optuna.create_study(study_name=f"{ctx.name}", storage=make_storage(ctx.storage_url),
                               direction="maximize", load_if_exists=True)


def override_file(ctx: Context, out_dir: Path) -> Path:
    """The final configuration as a preset: python -m nnexp.run --config-dir OUT +experiment=NAME."""
    final = ctx.decisions["final"]
    c = final["config"]
    groups = {g: c[g]["name"] for g in ("dataset", "cost", "regularization", "init", "schedule", "early_stopping")}
    body = {k: v for k, v in c.items() if k != "tracking"}
    path = out_dir / "experiment" / f"{_slug(ctx.name)}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = [
        "# @package _global_",
        f"# Chosen by the study '{ctx.name}' ({ctx.settings.kind}); storage {tracking.redact(ctx.storage_url)}.",
        f"# Final stage: best validation accuracy {final['validation_accuracy']:.4f}, "
        f"test accuracy {final.get('test_accuracy') or float('nan'):.4f} (measured once).",
        f"# Reproduce: python -m nnexp.run --config-dir {out_dir} +experiment={_slug(ctx.name)}",
    ]
    defaults = {"defaults": [{f"override /{g}": opt} for g, opt in groups.items()]}
    path.write_text("\n".join(header) + "\n" + OmegaConf.to_yaml(OmegaConf.create({**defaults, **body})))
    return path


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def decision_log(ctx: Context, out_dir: Path, command: str) -> Path:
    """Markdown: the question, the hyper-parameters' roles, each stage's trials and decision,
    the plots that justify them, and the command that reproduces the result."""
    from nnexp import figures

    s = ctx.settings
    lines = [f"# Study `{ctx.name}` ({s.kind})", "", f"**Question.** {s.get('question', '')}", "",
             f"- scientific hyper-parameters: {', '.join(s.get('scientific', []))}",
             f"- nuisance: seed-independent here (one seed per trial, {ctx.base.seed})",
             f"- fixed: sizes {ctx.base.sizes}, cost {ctx.base.cost.name}, init {ctx.base.init.name}, "
             f"dataset {ctx.base.dataset.name} ({ctx.n_full} training images)",
             f"- storage: `{tracking.redact(ctx.storage_url)}`; MLflow parent run: `{ctx.parent_run_id}`",
             f"- command: `{command}`", ""]
    for stage in STAGES[s.kind]:
        decision = ctx.decisions.get(stage)
        study = ctx.stage_studies.get(stage)
        if decision is None or study is None:
            continue
        trials = finished_trials(study)
        lines += [f"## {stage}", "", f"**Decision:** {decision.get('summary', '')}", ""]
        lines += [f"- note: {n}" for n in decision.get("notes", [])]
        lines += ["| trial | params | status | best validation accuracy | images |", "|---|---|---|---|---|"]
        for t in sorted(trials, key=lambda t: t.number):
            params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
            val = "" if t.value is None else f"{t.value:.4f}"
            lines.append(f"| {t.number} | {params} | {t.user_attrs.get('nnexp.status', t.state.name.lower())} "
                         f"| {val} | {t.user_attrs.get('images', '')} |")
        png = figures.study_stage_figure(stage, trials, out_dir / f"{stage}.png")
        if png:
            lines += ["", f"![{stage}]({png.name})"]
        lines.append("")
    path = out_dir / "decisions.md"
    path.write_text("\n".join(lines))
    return path


# -- entry point --------------------------------------------------------------------------------
def _settings(cfg: DictConfig) -> tuple[StudySettings, RunConfig]:
    container = OmegaConf.to_container(cfg, resolve=True)
    raw = container.pop("study", None)
    if not raw:
        raise ConfigError("no study selected: use study=broad_strategy, study=tpe or study=random")
    kind = raw.get("kind")
    if kind not in STAGES:
        raise ConfigError(f"unknown study kind '{kind}'; choose one of: {', '.join(STAGES)}")
    return StudySettings(raw), to_run_config(container)


def _n_images(c: RunConfig, classes=None) -> int:
    from nnexp.runner import load_splits

    c = copy.deepcopy(c)
    if classes is not None:
        c.dataset.classes, c.dataset.train_size = list(classes), None
    return len(load_splits(c)[1])


def run_study(cfg: DictConfig, workers: int | None = None) -> Context:
    settings, base = _settings(cfg)
    hc = HydraConfig.get() if HydraConfig.initialized() else None
    experiment = hc.runtime.choices.get("experiment") if hc else None
    population = settings.get("population", 1)
    if not isinstance(population, int) or isinstance(population, bool) or population < 1:
        raise ConfigError(f"study.population must be a whole number >= 1 (trials trained together), "
                          f"got {population!r}")
    name = settings.get("study_name") or settings.name
    storage_url = settings.get("storage") or DEFAULT_STORAGE
    ctx = Context(name=name, settings=settings, base=base, storage_url=storage_url,
                  workers=int(workers or settings.get("workers", 1)), experiment=experiment)
    ctx.n_full = _n_images(base)
    if settings.kind == "broad_strategy":
        ctx.n_stage = _n_images(base, settings.stripped["classes"])
    make_storage(storage_url)  # create the schema once, before any worker starts
    meta = meta_study(ctx)
    if base.tracking.enabled:
        uri = tracking.resolve_uri(base.tracking.uri)
        ctx.parent_run_id = meta.user_attrs.get("mlflow_parent_run_id")
        if ctx.parent_run_id:
            tracking.reopen_run(uri, ctx.parent_run_id)
        else:
            ctx.parent_run_id = tracking.start_parent_run(
                uri, base.tracking.experiment, name=f"study {name}",
                tags={"nnexp.study": name, "nnexp.stage": "study", "nnexp.experiment": experiment or "none"})
            meta.set_user_attr("mlflow_parent_run_id", ctx.parent_run_id)
    load_decisions(ctx)
    stop_after = settings.get("stop_after")
    log.info("study %s (%s): storage %s, %d worker(s), full problem %d images%s", name, settings.kind,
             tracking.redact(storage_url), ctx.workers, ctx.n_full,
             f", stripped problem {ctx.n_stage} images" if ctx.n_stage else "")
    runner = broad_strategy if settings.kind == "broad_strategy" else sampler_study
    runner(ctx, stop_after)
    if "final" in ctx.decisions:
        _write_outputs(ctx)
    elif ctx.parent_run_id:
        tracking.end_parent_run(tracking.resolve_uri(base.tracking.uri), ctx.parent_run_id)
    return ctx


def _write_outputs(ctx: Context) -> None:
    out_dir = Path(ctx.settings.get("output_dir") or Path("studies") / _slug(ctx.name)).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m nnexp.study " + " ".join(HydraConfig.get().overrides.task) if HydraConfig.initialized() else ""
    preset = override_file(ctx, out_dir)
    log_path = decision_log(ctx, out_dir, command)
    (out_dir / "decisions.json").write_text(json.dumps(ctx.decisions, indent=2, default=str))
    if ctx.parent_run_id:
        uri = tracking.resolve_uri(ctx.base.tracking.uri)
        final = ctx.decisions["final"]
        tracking.finish_study_run(uri, ctx.parent_run_id, out_dir, {
            "best_validation_accuracy": final["validation_accuracy"],
            "test_accuracy": final.get("test_accuracy")})
    final = ctx.decisions["final"]
    ctx.decisions["_outputs"] = {"preset": str(preset), "log": str(log_path)}
    log.info("study %s: eta %.4g, lambda %.4g, mini-batch %d; validation accuracy %.4f, test accuracy %.4f | "
             "reproduce: python -m nnexp.run --config-dir %s +experiment=%s | decisions: %s",
             ctx.name, final["eta"], final["lmbda"], final["mini_batch_size"], final["validation_accuracy"],
             final.get("test_accuracy") or float("nan"), out_dir, _slug(ctx.name), log_path)


@hydra.main(version_base="1.3", config_path="pkg://nnexp.conf", config_name="study")
def _hydra_main(cfg: DictConfig) -> None:
    workers = os.environ.get("NNEXP_STUDY_WORKERS")
    try:
        run_study(cfg, int(workers) if workers else None)
    except NnexpError as exc:
        print(f"nnexp.study: error: {exc}", file=sys.stderr)
        raise SystemExit(2)
    except KeyboardInterrupt:
        log.error("interrupted: finished trials and stages are kept; re-run the same command to resume")
        raise SystemExit(130)


def main(argv: Sequence[str] | None = None) -> None:
    """Accepts ``--workers N`` besides Hydra's arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--workers" in args:
        i = args.index("--workers")
        if i + 1 >= len(args) or not args[i + 1].isdigit() or int(args[i + 1]) < 1:
            print("nnexp.study: error: --workers needs a positive integer", file=sys.stderr)
            raise SystemExit(2)
        os.environ["NNEXP_STUDY_WORKERS"] = args[i + 1]
        del args[i:i + 2]
    from nnexp.entry import hydra_cli

    try:
        check_study_overrides(args)
    except ConfigError as exc:
        print(f"nnexp.study: error: {exc}", file=sys.stderr)
        raise SystemExit(2)
    hydra_cli("nnexp.study", args, _hydra_main, own_group="study")


def check_study_overrides(args: Sequence[str]) -> None:
    """``study=NAME`` must name a file of sweeps/study/; ``study.KEY`` a key some study has."""
    import yaml
    from importlib import resources

    from nnexp.config import suggest

    folder = resources.files("nnexp.sweeps") / "study"
    studies = {p.name[:-5]: yaml.safe_load(p.read_text()) for p in folder.iterdir() if p.name.endswith(".yaml")}
    keys = sorted({k for body in studies.values() for k in body})
    for arg in args:
        key, _, value = arg.partition("=")
        key = key.lstrip("+~")
        if key == "study" and value not in studies:
            raise ConfigError(f"unknown study '{value}'{suggest(value, studies)}; choose one of: {', '.join(sorted(studies))}")
        if key.startswith("study.") and key.split(".")[1] not in keys and not arg.startswith("+"):
            sub = key.split(".")[1]
            raise ConfigError(f"unknown key '{key}'{suggest(sub, keys)}; study keys: {', '.join(keys)}")


if __name__ == "__main__":
    # run the importable module's main, not this __main__ copy: worker processes (joblib,
    # spawn) must be able to unpickle the functions they are handed by reference
    from nnexp.study import main as _main

    _main()
