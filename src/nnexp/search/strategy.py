"""The book's broad strategy as stages (and the generic sampler baseline): each stage asks
one question on the problem it needs, decides, and records the decision."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

from nnexp import tracking
from nnexp.config.run_schema import RunConfig
from nnexp.config.errors import ConfigError
from nnexp.config.names import DIVERGED, FAILED, TAG_STATUS
from nnexp.search.backend import best_of, finished_trials
from nnexp.config.study_schema import Rung, StudySettings
from nnexp.search.stage_plan import StagePlan
from nnexp.search.trials import fixed_params, run_stage, run_stage_budget, trial_config
from nnexp.stats import mean_std
from nnexp.stats.decide import Resolution
from nnexp.search.weighing import (Grid, area_under_curve, best_within, budget_images, fmt,
                                   one_epoch_seconds, walk)

log = logging.getLogger("nnexp.study")

TRAINING_METRICS = ["training_cost", "training_accuracy", "validation_cost", "validation_accuracy"]


#: what each stage asks (the decision log's first line per stage)
QUESTIONS = {
    "eta_threshold": "Above which learning rate does the training cost stop decreasing over the first "
                     "epochs? (The book: eta = half that threshold.)",
    "lmbda_walk": "Which decade of the regularization parameter lambda gives the best validation accuracy, "
                  "starting from lambda = 1 and moving by factors of 10?",
    "lmbda_refine": "Does lambda / step or lambda x step do better than the decade's value?",
    "mini_batch": "Which mini-batch size raises validation accuracy fastest in wall-clock time (eta scaled "
                  "with the size)?",
    "eta_refine": "With the chosen mini-batch size, on the configured network: does another learning rate "
                  "(factors of refine_step around the mini-batch stage's eta) do better there?",
    "final": "What validation and test accuracy does the chosen configuration reach? (Its seeds, measured once.)",
    "search": "Which eta, lambda and mini-batch size does the sampler find best?",
    "asha": "Which eta and lambda does the sampler find best, pruning below each rung's cut and refilling "
            "the freed rows with new trials?",
    "pbt": "Which schedule of eta and lambda does population-based training find (the best member's, along "
           "its network's lineage)?",
}
@dataclass
class Context:
    name: str
    settings: StudySettings
    base: RunConfig  # the full problem (the run config the study was composed from)
    storage_url: str
    workers: int
    experiment: str | None
    count_images: Callable[[list | None], int] = lambda classes: 0  # training images with these classes
    count_validation: Callable[[list | None], int] = lambda classes: 0  # validation images, likewise
    n_full: int = 0  # training images of the full problem
    n_stage: int = 0  # training images of the stripped-down problem
    parent: tracking.ParentRun | None = None  # the study's MLflow parent run (None: tracking off)
    pool: Any = None  # the study's worker processes (runner.WorkerPool), started once; None: one worker
    decisions: dict = field(default_factory=dict)
    stage_studies: dict = field(default_factory=dict)  # stage -> [(rung, Optuna study), ...]
    output_dir: Path | None = None  # where the outputs went, once written
    outputs: dict = field(default_factory=dict)  # preset, log: their paths

    def plan(self, stage: str, base: RunConfig, space: dict, **kw) -> StagePlan:
        s = self.settings
        kw.setdefault("population", int(s.population))
        return StagePlan(study=self.name, stage=stage, storage=self.storage_url, base=base, space=space,
                    pruner=s.pruner, seed=int(s.seed),
                    parent_run_id=self.parent.run_id if self.parent else None,
                    parent_record=self.parent.record_dir if self.parent else None, experiment=self.experiment,
                    heartbeat=int(s.heartbeat_seconds), grace=int(s.grace_seconds), **kw)

    def rungs(self) -> list[Rung]:
        """The ladder from the stripped-down problem to the configured one, without repeats."""
        out, seen = [], set()
        for r in [self.settings.stripped, *self.settings.ladder]:
            c = rung_base(self, r, 1, early_stopping=False)
            key = (tuple(c.dataset.classes or ()), c.dataset.train_size, tuple(c.sizes), c.monitor.validation_sample)
            if key not in seen:
                seen.add(key)
                out.append(r)
        return out

    def resolution(self, classes: list | None, validation_sample: int | None) -> Resolution:
        """What a validation score on this problem resolves: one of its validation examples, or
        study.min_effect, whichever is larger."""
        n = self.count_validation(classes)
        n = min(n, int(validation_sample)) if validation_sample else n
        return Resolution(1.0 / max(n, 1), float(self.settings.min_effect))

    def lmbda_scale(self, rung: Rung) -> float:
        """A lambda in full-data units on this rung's training set (the book's lambda / n)."""
        return self.count_images(rung.classes) / self.n_full


def rung_base(ctx: Context, rung: Rung, epochs: int, *, early_stopping: bool) -> RunConfig:
    """The run config of a rung of the ladder: its classes, hidden layers and monitoring."""
    c = copy.deepcopy(ctx.base)
    if rung.classes is not None:
        c.dataset.classes, c.dataset.train_size = list(rung.classes), None
    if rung.hidden is not None:
        c.sizes = [c.sizes[0], *rung.hidden, c.sizes[-1]]
    c.epochs, c.budget_images = epochs, None
    c.schedule.name = "constant"
    c.early_stopping.name = "no_improvement" if early_stopping else "off"
    c.early_stopping.patience = int(ctx.settings.patience)
    c.monitor.metrics = ["training_cost", "validation_accuracy"]
    every = None
    if rung.every_images:  # evaluate at least ~5 times an epoch on tiny problems (e.g. digits' 0s and 1s)
        every = min(int(rung.every_images), max(1, ctx.count_images(rung.classes) // 5))
    c.monitor.every_images, c.monitor.validation_sample = every, rung.validation_sample
    c.tracking.log_model = False
    return c


def stripped_base(ctx: Context, epochs: int, *, early_stopping: bool) -> RunConfig:
    """The stripped-down problem: some classes, no hidden layer, frequent cheap monitoring."""
    return rung_base(ctx, ctx.settings.stripped, epochs, early_stopping=early_stopping)


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


def record_decision(ctx: Context, stage: str, studies: list, decision: dict) -> dict:
    """Store the decision with the stage's first study (this is what resumes) and log it.
    ``studies``: [(rung name, Optuna study)] in the order they ran."""
    decision = {"question": QUESTIONS.get(stage, ""), **decision,
                "studies": [[rung, study.study_name] for rung, study in studies]}
    studies[0][1].set_user_attr("decision", decision)
    ctx.decisions[stage] = decision
    ctx.stage_studies[stage] = studies
    if ctx.parent:  # scalar values as params, the summary as a tag
        ctx.parent.log(params={f"{stage}.{k}": v for k, v in decision.items()
                               if isinstance(v, (int, float, str)) and k not in ("summary", "question", "rule")},
                       tags={f"nnexp.decision.{stage}": decision.get("summary", "")[:4000]})
    log.info("stage %s: %s", stage, decision.get("summary", ""))
    return decision


def _grid_scores(study, name: str) -> dict[float, Any]:
    return {float(fixed_params(t)[name]): t for t in finished_trials(study) if name in fixed_params(t)}


def replicate_scores(trial) -> list[float]:
    """The trial's best validation accuracy per seed replicate (seed, seed + 1, ...)."""
    return list(trial.user_attrs.get("replicate_values") or [trial.value or 0.0])


def diverged_share(trials) -> float:
    """The share of a stage's runs (replicates counted one by one) that diverged or failed."""
    statuses = [s for t in trials for s in (t.user_attrs.get("replicate_statuses")
                                            or [t.user_attrs.get(TAG_STATUS)])]
    return sum(s in (DIVERGED, FAILED) for s in statuses) / len(statuses) if statuses else 0.0


def cost_decreasing(costs: list) -> bool:
    """Did the training cost decrease, rather than oscillate or rise? It ends lower than it
    started, and the rises along the way add up to less than half the net fall."""
    if len(costs) < 2 or any(c is None for c in costs):
        return False
    net = costs[0] - costs[-1]
    rises = sum(max(0.0, b - a) for a, b in zip(costs, costs[1:]))
    return net > 0 and rises < 0.5 * net


def decreasing(trial) -> bool:
    """Did the training cost decrease over the first epochs for every seed replicate? (A mean
    over seeds would smooth an oscillation away; a diverged run never decreased.)"""
    statuses = trial.user_attrs.get("replicate_statuses") or [trial.user_attrs.get(TAG_STATUS)]
    if any(s in (DIVERGED, FAILED) for s in statuses):
        return False
    curves = trial.user_attrs.get("replicate_curves") or [trial.user_attrs.get("curve", [])]
    return all(cost_decreasing([row[2] for row in c]) for c in curves)


def _grid_plan(ctx: Context, stage: str, base: RunConfig, name: str, n_values: int, **kw) -> StagePlan:
    """A grid stage: every value trains its seed replicates, all values as one population."""
    return ctx.plan(stage, base, {name: {"low": 1e-8, "high": 1e8, "log": True}}, prune=False,
                    replicates=int(ctx.settings.replicates), population=max(1, n_values), **kw)


def stage_eta_threshold(ctx: Context) -> dict:
    s = ctx.settings.eta
    base = stripped_base(ctx, int(s.epochs), early_stopping=False)
    base.lmbda = 0.0  # the book: find eta first, with no regularization
    decades = sorted(float(v) for v in s.decades)
    values = [{"eta": v} for v in decades]
    plan = _grid_plan(ctx, "eta_threshold", base, "eta", len(values))
    study = run_stage(plan, len(values), ctx.workers, values, pool=ctx.pool)
    trend = {eta: decreasing(t) for eta, t in _grid_scores(study, "eta").items()}
    threshold = next((eta for eta in decades if not trend[eta]), None)
    notes = []
    if threshold is None:
        threshold = decades[-1] * 10
        notes.append("the cost decreased at every eta tried (the top of the range): threshold taken one decade "
                     "above; extend study.eta.decades")
    elif threshold == decades[0]:
        notes.append("the cost did not decrease even at the smallest eta (the bottom of the range): "
                     "extend study.eta.decades")
    else:  # refine inside the decade below the threshold
        refine = [{"eta": threshold / 10 * float(r)} for r in s.refine]
        plan.population = len(refine)
        study = run_stage(plan, len(values) + len(refine), ctx.workers, values + refine, pool=ctx.pool)
        trend = {eta: decreasing(t) for eta, t in _grid_scores(study, "eta").items()}
        threshold = min(eta for eta, down in trend.items() if not down and eta >= threshold / 10)
    eta = threshold / 2
    trials = finished_trials(study)
    summary = (f"threshold eta {threshold:.4g} (the smallest eta whose training cost stops decreasing for "
               f"at least one of {ctx.settings.replicates} seeds), so eta = {eta:.4g}")
    return record_decision(ctx, "eta_threshold", [(ctx.settings.stripped.name, study)], {
        "threshold": threshold, "eta": eta, "summary": summary, "notes": notes, "evidence": "decreasing",
        "problem": ctx.settings.stripped.name, "diverged_share": diverged_share(trials),
        "decreasing": {f"{k:.6g}": v for k, v in sorted(trend.items())}})


def runs_of(trial) -> list[tuple[list, str | None]]:
    """The trial's runs, one per seed replicate in seed order: (curve, status)."""
    curves = trial.user_attrs.get("replicate_curves") or [trial.user_attrs.get("curve", [])]
    statuses = trial.user_attrs.get("replicate_statuses") or [trial.user_attrs.get(TAG_STATUS)]
    return list(zip(curves, statuses))


def equal_budget_scores(runs: dict) -> dict[float, list[float]]:
    """The best validation accuracy per seed within the same number of training images for every
    value: the fewest any of the stage's runs trained (early stopping ends runs at different
    points; a run that trained on would otherwise get more draws of the noisy validation score,
    and its maximum would be biased up)."""
    budget = budget_images([r for rs in runs.values() for r in rs])
    return {k: [best_within(c, budget) for c, _ in rs] for k, rs in runs.items()}


class StudyGrid(Grid):
    """A grid stage trained through Optuna: every value trains ``replicates`` seeds in the
    stage's study; where a comparison is unresolved, its values train more seeds, up to
    ``max_replicates``, in the study ``<stage>+seeds``: blocks of ``replicates`` seeds (block b:
    seed + b x replicates, ...), each block a trial, so that the blocks of one value spread over
    the workers. Scores are paired by seed."""

    def __init__(self, ctx: Context, plan: StagePlan, name: str, res: Resolution, fixed: dict | None = None,
                 score: Callable[[dict], dict] | None = None):
        s = ctx.settings
        super().__init__(name, res, int(s.replicates), int(s.max_replicates), label=plan.stage)
        self.ctx, self.plan, self.fixed = ctx, plan, dict(fixed or {})
        self.score = score or equal_budget_scores
        self.study = self.extra = None
        self.blocks = list(range(1, -(-self.cap // self.first)))  # the extra seeds' blocks
        self.extra_plan = copy.deepcopy(plan)
        self.extra_plan.stage = plan.stage + "+seeds"
        self.extra_plan.space = {**plan.space, "block": {"choices": self.blocks}}

    def _points(self, values: list[float], blocks: list[int] | None = None) -> list[dict]:
        if blocks is None:
            return [{self.name: v, **self.fixed} for v in values]
        return [{self.name: v, **self.fixed, "block": b} for v in values for b in blocks]

    def train(self, values: list[float]) -> None:
        new = [v for v in values if v not in self.values]
        self.plan.population = max(1, len(new))
        self.values += new
        self.study = run_stage(self.plan, len(self.values), self.ctx.workers, self._points(self.values),
                               pool=self.ctx.pool)
        if self.extended:
            self.extend(new)

    def extend(self, values: list[float]) -> None:
        new = [v for v in values if v not in self.extended]
        if not new:
            return
        self.extended += new
        points = self._points(self.extended, self.blocks)
        self.extra_plan.population = len(new) * len(self.blocks)
        self.extra = run_stage(self.extra_plan, len(points), self.ctx.workers, points, pool=self.ctx.pool)

    def runs(self) -> dict[float, list[tuple[list, str | None]]]:
        """value -> its runs (curve, status) in seed order, the extra seeds after the first."""
        out = {k: runs_of(t) for k, t in _grid_scores(self.study, self.name).items()}
        if self.extra is not None:
            for t in sorted(finished_trials(self.extra), key=lambda t: int(fixed_params(t)["block"])):
                k = float(fixed_params(t)[self.name])
                out[k] = out.get(k, []) + runs_of(t)
        return out

    def scores(self) -> dict[float, list[float]]:
        return self.score(self.runs())

    def studies(self, rung: str) -> list[tuple[str, Any]]:
        return [(rung, self.study)] + ([(rung + "+seeds", self.extra)] if self.extra is not None else [])


BEST_WITHIN = ("best validation accuracy per seed within the same number of training images for every value "
               "(the fewest any of the stage's runs trained)")


def _evidence(w: dict, scores_name: str) -> dict:
    return {"evidence": scores_name, "means": w["means"], "stds": w["stds"], "seeds": w["seeds"],
            "look": w.get("look", 1), "alpha": w["alpha"], "floor": w["floor"],
            "best": w["best"], "chosen": w["chosen"],
            "runner_up": w.get("runner_up"), "vs_runner_up": w.get("vs_runner_up"),
            "default": w["default"], "vs_default": w.get("vs_default"), "start": w.get("start"),
            "vs_start": w.get("vs_start"), "why": w["why"]}


def stage_lmbda(ctx: Context, eta: float) -> dict:
    """lambda by factors of 10 from its start, on the smallest problem where it is not a tie:
    a tie escalates up the ladder (the book's building back up)."""
    s = ctx.settings.lmbda
    start = float(s.start)
    rungs, studies, notes = ctx.rungs(), [], []
    for i, rung in enumerate(rungs):
        base = rung_base(ctx, rung, int(rung.epochs or s.epochs), early_stopping=False)
        base.eta = eta
        stage = "lmbda_walk" if i == 0 else f"lmbda_walk@{rung.name}"
        plan = _grid_plan(ctx, stage, base, "lmbda", 3, lmbda_scale=ctx.lmbda_scale(rung))
        grid = StudyGrid(ctx, plan, "lmbda", ctx.resolution(rung.classes, rung.validation_sample))
        # a tie on a lower rung escalates (a larger problem has more signal per seed); on the
        # configured problem, the last rung, an unresolved tie trains more seeds
        w, walk_notes = walk(grid, "lmbda_walk", start, 10.0, int(s.max_steps), settle_ties=i + 1 == len(rungs))
        studies += grid.studies(rung.name)
        if w["tie"] and i + 1 < len(rungs):
            notes.append(f"on {rung.name} the trials tie ({w['tie_reason']}): escalated to {rungs[i + 1].name}")
            continue
        if w["tie"]:
            notes.append(f"on {rung.name}, the configured problem, the trials still tie ({w['tie_reason']}): "
                         f"lambda stays at its start {fmt(start)}")
        notes += walk_notes
        break
    best = w["chosen"]
    trials = finished_trials(grid.study)
    summary = (f"lambda {fmt(best)} (full-data units) on {rung.name}: {w['why']}"
               if not w["tie"] else f"lambda {fmt(best)}: no value differed on any problem up to {rung.name}")
    return record_decision(ctx, "lmbda_walk", studies, {
        "lmbda": best, "lmbda_stage": best * ctx.lmbda_scale(rung), "problem": rung.name,
        "tie": w["tie"], "notes": notes, "diverged_share": diverged_share(trials),
        **_evidence(w, BEST_WITHIN), "summary": summary})


def stage_lmbda_refine(ctx: Context, eta: float) -> dict:
    """lambda / step and lambda x step around the walk's choice, on the problem it was chosen on."""
    walked, s = ctx.decisions["lmbda_walk"], ctx.settings.lmbda
    rung = next(r for r in ctx.rungs() if r.name == walked["problem"])
    base = rung_base(ctx, rung, int(rung.epochs or s.epochs), early_stopping=False)
    base.eta = eta
    plan = _grid_plan(ctx, "lmbda_refine", base, "lmbda", 3, lmbda_scale=ctx.lmbda_scale(rung))
    grid = StudyGrid(ctx, plan, "lmbda", ctx.resolution(rung.classes, rung.validation_sample))
    w, notes = walk(grid, "lmbda_refine", float(walked["lmbda"]), float(s.refine_step), 1)
    return record_decision(ctx, "lmbda_refine", grid.studies(rung.name), {
        "lmbda": w["chosen"], "problem": rung.name, "tie": w["tie"], "notes": notes,
        "diverged_share": diverged_share(finished_trials(grid.study)), **_evidence(w, BEST_WITHIN),
        "summary": f"lambda {fmt(w['chosen'])} on {rung.name}: {w['why']}"})


def stage_eta_refine(ctx: Context, eta: float, lmbda: float, mini_batch: int) -> dict:
    """Building back up (the book): re-adjust eta on the configured network at the chosen
    mini-batch size, lambda fixed. "With the mini-batch size chosen, you can then proceed to
    optimize the other hyper-parameters": the linear scaling of eta with the size is a starting
    point, and a scaled eta that is too large for the longer runs is walked down here."""
    s = ctx.settings.eta
    base = full_base(ctx, int(s.refine_epochs), schedule="constant", early_stopping=False)
    base.lmbda, base.mini_batch_size = lmbda, mini_batch
    plan = _grid_plan(ctx, "eta_refine", base, "eta", 3)
    grid = StudyGrid(ctx, plan, "eta", ctx.resolution(None, None))
    w, notes = walk(grid, "eta_refine", eta, float(s.refine_step), int(s.refine_max_steps))
    if w["tie"]:
        notes.append(f"no eta differed on the configured network ({w['tie_reason']}): eta stays {fmt(eta)}")
    return record_decision(ctx, "eta_refine", grid.studies("full"), {
        "eta": w["chosen"], "lmbda": lmbda, "mini_batch_size": mini_batch, "problem": "full", "tie": w["tie"], "notes": notes,
        "diverged_share": diverged_share(finished_trials(grid.study)), **_evidence(w, BEST_WITHIN),
        "summary": f"eta {fmt(w['chosen'])} on the configured network at mini-batch {mini_batch}: {w['why']}"})


def curve_area_scores(base_size: int, n_images: int) -> Callable[[dict], dict]:
    """Scores of the mini-batch stage: per run, the mean validation accuracy over the time the
    base size takes to train one epoch (the median of its seeds): the area under the
    accuracy-time curve, which asks which size raises accuracy fastest over the whole horizon
    rather than at one instant (where a timer's noise would decide)."""
    def score(runs: dict) -> dict[float, list[float]]:
        base = runs.get(float(base_size)) or [r for rs in runs.values() for r in rs]
        horizon = one_epoch_seconds([c for c, _ in base], n_images)
        return {k: [area_under_curve(c, horizon) for c, _ in rs] for k, rs in runs.items()}
    return score


def stage_mini_batch(ctx: Context, eta: float, lmbda: float) -> dict:
    """The book: the size that improves validation accuracy fastest in real elapsed time. Each run
    trains by itself (a single run's clock) and is scored on the whole validation set; the sizes
    are compared seed by seed on the area under their accuracy-time curves over one epoch of the
    base size (``curve_area_scores``), with the grid stages' rule and error control."""
    s = ctx.settings.mini_batch
    base = full_base(ctx, int(s.epochs), schedule="constant", early_stopping=False)
    base.eta, base.lmbda = eta, lmbda
    base.monitor.metrics = ["training_cost", "validation_accuracy"]
    base.monitor.every_images = max(1, ctx.n_full // int(s.evaluations_per_epoch))
    base.monitor.validation_sample = s.validation_sample
    sizes = [int(m) for m in s.sizes if int(m) <= ctx.n_full]
    plan = ctx.plan("mini_batch", base, {"mini_batch_size": {"choices": sizes}}, eta_base_mb=int(s.base),
                    prune=False, replicates=int(ctx.settings.replicates), alone=True)
    default = int(s.base) if int(s.base) in sizes else min(sizes)
    grid = StudyGrid(ctx, plan, "mini_batch_size", ctx.resolution(None, s.validation_sample),
                score=curve_area_scores(default, ctx.n_full))
    grid.train([float(m) for m in sizes])
    w = grid.decide(float(default))
    base_runs = grid.runs().get(float(default), [])
    horizon = one_epoch_seconds([c for c, _ in base_runs], ctx.n_full)
    best = int(w["chosen"])
    notes = []
    if best in (min(sizes), max(sizes)) and best != default:
        notes.append(f"mini-batch {best} is at the edge of the sizes tried: extend study.mini_batch.sizes")
    if len(sizes) == 1:
        notes.append(f"only mini-batch {best} was tried (study.mini_batch.sizes): nothing to compare")
    elif w["tie"]:
        notes.append(f"the sizes tie over {horizon:.3g} s ({w['tie_reason']}): the base size {default} stays")
    evidence = (f"mean validation accuracy over the first {horizon:.3g} s of training (one epoch of the base "
                f"size {default}): the area under the accuracy-time curve")
    return record_decision(ctx, "mini_batch", grid.studies("full"), {
        "mini_batch_size": best, "eta": eta * best / int(s.base), "horizon_seconds": horizon, "tie": w["tie"],
        "notes": notes, "problem": "full", "diverged_share": diverged_share(finished_trials(grid.study)),
        **_evidence(w, evidence),
        "summary": f"mini-batch {best}, eta {eta * best / int(s.base):.4g}: {w['why']} "
                   f"(mean validation accuracy over the first {horizon:.3g} s of training)"})


def stage_final(ctx: Context, eta: float, lmbda: float, mini_batch: int, schedule: str, *,
                points: list | None = None, epochs: int | None = None, seed: int | None = None) -> dict:
    """The chosen configuration on the full problem, its seed replicates as one population; the
    test set is scored here only, once. ``points``: a piecewise schedule's (population-based
    training's), replayed for all its ``epochs`` from ``seed`` on; like every final stage, it keeps
    the parameters of its best validation evaluation."""
    s = ctx.settings.final
    base = full_base(ctx, int(epochs or s.epochs), schedule=schedule, early_stopping=True)
    base.eta, base.lmbda, base.mini_batch_size = eta, lmbda, mini_batch
    if points is not None:
        base.schedule.points = [list(p) for p in points]
        base.early_stopping.patience = base.epochs  # never ends it early: the schedule runs to its end
    if seed is not None:
        base.seed = seed
    if schedule == "halve_on_plateau":  # the schedule ends the run (the book: at a small fraction of
        # eta0); early stopping with the schedule's own patience would end it at the first plateau,
        # before eta was ever halved: it waits for three halvings without improvement
        base.early_stopping.patience = 3 * int(ctx.settings.patience)
    plan = ctx.plan("final", base, {}, prune=False, replicates=int(ctx.settings.replicates), score_test=True)
    study = run_stage(plan, 1, 1)
    (trial,) = finished_trials(study)[:1]
    c = trial_config(plan, {})
    tests = trial.user_attrs.get("test_accuracies") or [trial.user_attrs.get("test_accuracy", float("nan"))]
    test_mean, test_std = mean_std(tests)
    n = len(tests)
    return record_decision(ctx, "final", [("full", study)], {
        "eta": eta, "lmbda": lmbda, "mini_batch_size": mini_batch, "schedule": schedule,
        **({"points": [list(p) for p in points]} if points is not None else {}),
        "validation_accuracy": trial.value, "validation_accuracies": replicate_scores(trial),
        "test_accuracy": test_mean, "test_accuracy_std": test_std, "test_accuracies": tests,
        "seeds": trial.user_attrs.get("seeds", [c.seed]),
        "images": trial.user_attrs.get("images"), "mlflow_run_id": trial.user_attrs.get("mlflow_run_id"),
        "config": OmegaConf.to_container(OmegaConf.structured(c)), "problem": "full",
        "diverged_share": diverged_share([trial]),
        "summary": f"full problem, {n} seed(s): best validation accuracy {trial.value:.4f}, test accuracy "
                   f"{test_mean:.4f} ± {test_std:.4f} (mean ± std, measured once)"})


def broad_strategy(ctx: Context, stop_after: str | None) -> None:
    d = ctx.decisions
    stages = [
        ("eta_threshold", lambda: stage_eta_threshold(ctx)),
        ("lmbda_walk", lambda: stage_lmbda(ctx, d["eta_threshold"]["eta"])),
        ("lmbda_refine", lambda: stage_lmbda_refine(ctx, d["eta_threshold"]["eta"])),
        ("mini_batch", lambda: stage_mini_batch(ctx, d["eta_threshold"]["eta"], d["lmbda_refine"]["lmbda"])),
        ("eta_refine", lambda: stage_eta_refine(ctx, d["mini_batch"]["eta"], d["lmbda_refine"]["lmbda"],
                                                int(d["mini_batch"]["mini_batch_size"]))),
        ("final", lambda: stage_final(ctx, d["eta_refine"]["eta"], d["lmbda_refine"]["lmbda"],
                                      int(d["mini_batch"]["mini_batch_size"]), "halve_on_plateau")),
    ]
    _run_stages(ctx, stages, stop_after)


def sampler_study(ctx: Context, stop_after: str | None) -> None:
    """The generic baseline: one sampler (TPE or random) over the whole space, full problem."""
    s = ctx.settings

    def search() -> dict:
        base = full_base(ctx, int(s.epochs), schedule="constant", early_stopping=True)
        space = {k: dict(v) for k, v in s.space.items()}
        plan = ctx.plan("search", base, space, sampler=s.sampler)
        study = run_stage_budget(plan, int(s.n_trials), ctx.workers, s.budget_images, s.budget_seconds,
                                 pool=ctx.pool)
        best = best_of(finished_trials(study))
        params = {**{"eta": base.eta, "lmbda": base.lmbda, "mini_batch_size": base.mini_batch_size},
                  **(best.params if best else {})}
        return record_decision(ctx, "search", [("full", study)], {
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
