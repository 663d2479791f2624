"""The book's broad strategy as stages (and the generic sampler baseline): each stage asks
one question on the problem it needs, decides, and records the decision."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from nnexp import tracking
from nnexp.config import RunConfig
from nnexp.errors import ConfigError
from nnexp.names import DIVERGED, FAILED, TAG_STATUS
from nnexp.search.backend import best_of, finished_trials
from nnexp.search.settings import StudySettings
from nnexp.search.plan import Plan
from nnexp.search.trials import fixed_params, run_stage, run_stage_budget, trial_config

log = logging.getLogger("nnexp.study")

TRAINING_METRICS = ["training_cost", "training_accuracy", "validation_cost", "validation_accuracy"]


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
    parent: tracking.ParentRun | None = None  # the study's MLflow parent run (None: tracking off)
    decisions: dict = field(default_factory=dict)
    stage_studies: dict = field(default_factory=dict)

    def plan(self, stage: str, base: RunConfig, space: dict, **kw) -> Plan:
        s = self.settings
        return Plan(study=self.name, stage=stage, storage=self.storage_url, base=base, space=space,
                    pruner=s.pruner, seed=int(s.seed),
                    parent_run_id=self.parent.run_id if self.parent else None,
                    parent_record=self.parent.record_dir if self.parent else None, experiment=self.experiment,
                    heartbeat=int(s.heartbeat_seconds), grace=int(s.grace_seconds),
                    population=int(s.population), **kw)


def stripped_base(ctx: Context, epochs: int, *, early_stopping: bool) -> RunConfig:
    """The stripped-down problem: some classes, no hidden layer, frequent cheap monitoring."""
    s = ctx.settings.stripped
    c = copy.deepcopy(ctx.base)
    c.dataset.classes = list(s.classes)
    c.dataset.train_size = None
    c.sizes = [c.sizes[0], *s.hidden, c.sizes[-1]]
    c.epochs, c.budget_images = epochs, None
    c.schedule.name = "constant"
    c.early_stopping.name = "no_improvement" if early_stopping else "off"
    c.early_stopping.patience = int(ctx.settings.patience)
    # evaluate at least ~5 times an epoch on tiny problems (e.g. digits' 0s and 1s)
    every = min(int(s.every_images), max(1, ctx.n_stage // 5))
    c.monitor.metrics, c.monitor.every_images = ["training_cost", "validation_accuracy"], every
    c.monitor.validation_sample = s.validation_sample
    c.tracking.log_model = False
    return c


def full_base(ctx: Context, epochs: int, *, schedule: str, early_stopping: bool) -> RunConfig:
    c = copy.deepcopy(ctx.base)
    c.epochs, c.budget_images = epochs, None
    c.schedule.name = schedule
    c.schedule.patience = int(ctx.settings.patience)
    c.early_stopping.name = "no_improvement" if early_stopping else "off"
    c.early_stopping.patience = int(ctx.settings.patience)
    c.monitor.metrics = list(TRAINING_METRICS)  # never the test set while tuning
    c.monitor.every_images = c.monitor.validation_sample = None
    return c


def stage_done(ctx: Context, stage: str) -> dict | None:
    return ctx.decisions.get(stage)


def record_decision(ctx: Context, stage: str, study, decision: dict) -> dict:
    study.set_user_attr("decision", decision)
    ctx.decisions[stage] = decision
    ctx.stage_studies[stage] = study
    if ctx.parent:  # scalar values as params, the summary as a tag
        ctx.parent.log(params={f"{stage}.{k}": v for k, v in decision.items()
                               if isinstance(v, (int, float, str)) and k != "summary"},
                       tags={f"nnexp.decision.{stage}": decision.get("summary", "")})
    log.info("stage %s: %s", stage, decision.get("summary", ""))
    return decision


def _grid_scores(study, name: str) -> dict[float, Any]:
    return {float(fixed_params(t)[name]): t for t in finished_trials(study) if name in fixed_params(t)}


def decreasing(trial) -> bool:
    """Did the training cost decrease over the first epochs, rather than oscillate or rise?

    Decreasing: the cost ends lower than it started, and the rises along the way add up to
    less than half the net fall (oscillation shows as large rises). A diverged run never did.
    """
    if trial.user_attrs.get(TAG_STATUS) in (DIVERGED, FAILED):
        return False
    costs = [row[2] for row in trial.user_attrs.get("curve", [])]
    if len(costs) < 2 or any(c is None for c in costs):
        return False
    net = costs[0] - costs[-1]
    rises = sum(max(0.0, b - a) for a, b in zip(costs, costs[1:]))
    return net > 0 and rises < 0.5 * net


def stage_eta_threshold(ctx: Context) -> dict:
    s = ctx.settings.eta
    base = stripped_base(ctx, int(s.epochs), early_stopping=False)
    base.lmbda = 0.0  # the book: find eta first, with no regularization
    plan = ctx.plan("eta_threshold", base, {"eta": {"low": 1e-6, "high": 1e6, "log": True}}, prune=False)
    decades = sorted(float(v) for v in s.decades)
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
        refine = [{"eta": threshold / 10 * float(r)} for r in s.refine]
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
    base = stripped_base(ctx, int(s.epochs), early_stopping=True)
    base.eta = eta
    scale = ctx.n_stage / ctx.n_full
    plan = ctx.plan("lmbda_walk", base, {"lmbda": {"low": 1e-8, "high": 1e8, "log": True}},
                    lmbda_scale=scale, prune=False)
    start = float(s.start)
    values = [{"lmbda": start}, {"lmbda": start * 10}, {"lmbda": start / 10}]
    study = run_stage(plan, len(values), ctx.workers, values)
    scores = lambda: {k: t.value for k, t in _grid_scores(study, "lmbda").items()}  # noqa: E731
    sc = scores()
    best = max(sc, key=sc.get)
    direction = 10.0 if best > start else 0.1 if best < start else None
    steps = 1 if direction else 0
    while direction and steps < int(s.max_steps):
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
    base = full_base(ctx, int(s.epochs), schedule="constant", early_stopping=False)
    base.eta = eta
    base.monitor.metrics = ["training_cost", "validation_accuracy"]
    base.monitor.every_images = max(1, ctx.n_full // int(s.evaluations_per_epoch))
    base.monitor.validation_sample = s.validation_sample
    sizes = [int(m) for m in s.sizes if int(m) <= ctx.n_full]
    plan = ctx.plan("mini_batch", base, {"mini_batch_size": {"choices": sizes}, "lmbda": {"low": 1e-8, "high": 1e8, "log": True}},
                    eta_base_mb=int(s.base), prune=False)
    values = [{"mini_batch_size": m, "lmbda": lmbda} for m in sizes]
    study = run_stage(plan, len(values), ctx.workers, values)
    trials = {int(fixed_params(t)["mini_batch_size"]): t for t in finished_trials(study)}
    horizon = min(t.user_attrs.get("train_seconds", 0.0) for t in trials.values())
    score = {m: acc_at(t.user_attrs.get("curve", []), horizon) for m, t in trials.items()}
    best = max(sorted(score), key=lambda m: (score[m], m))
    return record_decision(ctx, "mini_batch", study, {
        "mini_batch_size": best, "eta": eta * best / int(s.base), "horizon_seconds": horizon,
        "accuracy_at_horizon": {str(m): v for m, v in sorted(score.items())},
        "summary": f"mini-batch {best} (validation accuracy {score[best]:.4f} after {horizon:.2f} s "
                   f"of training, the shortest trial's time)"})


def stage_final(ctx: Context, eta: float, lmbda: float, mini_batch: int, schedule: str) -> dict:
    s = ctx.settings.final
    base = full_base(ctx, int(s.epochs), schedule=schedule, early_stopping=True)
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
    base = stripped_base(ctx, int(s.epochs), early_stopping=True)
    base.eta = ctx.decisions["eta_threshold"]["eta"]
    best = walk["lmbda"]
    return stage_sampler_refine(
        ctx, "lmbda_refine", base, {"lmbda": {"low": best / 10, "high": best * 10, "log": True}},
        int(s.refine_trials), {"lmbda": best}, lmbda_scale=ctx.n_stage / ctx.n_full)


def _eta_refine(ctx: Context) -> dict:
    """Build back up (the book): re-tune eta on the full problem, lambda fixed, from eta down."""
    s = ctx.settings.eta
    lmbda = ctx.decisions["lmbda_refine"]["lmbda"]
    eta = ctx.decisions["eta_threshold"]["eta"]
    base = full_base(ctx, int(s.refine_epochs), schedule="constant", early_stopping=True)
    base.lmbda = lmbda
    low, high = s.refine_range
    return stage_sampler_refine(
        ctx, "eta_refine", base, {"eta": {"low": eta * float(low), "high": eta * float(high), "log": True}},
        int(s.refine_trials), {"eta": eta})


def sampler_study(ctx: Context, stop_after: str | None) -> None:
    """The generic baseline: one sampler (TPE or random) over the whole space, full problem."""
    s = ctx.settings

    def search() -> dict:
        base = full_base(ctx, int(s.epochs), schedule="constant", early_stopping=True)
        space = {k: dict(v) for k, v in s.space.items()}
        plan = ctx.plan("search", base, space, sampler=s.sampler)
        study = run_stage_budget(plan, int(s.n_trials), ctx.workers, s.budget_images)
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
