"""Population-based training (Jaderberg et al., 2017) inside one batched population: K members
train together; every ``ready`` interval the bottom fraction (by validation accuracy) becomes a
copy of a member of the top fraction (exploit: a row copy of weights, velocities and random
streams, ``train.Population.copy``) and perturbs the donor's eta and lambda (explore).

The controller's randomness is a pure function of the study seed, the population and the images
seen, and it decides from the members' scores alone, so a population is deterministic and
resumes bit for bit from its members' checkpoints. Since a copied member trains exactly as its
donor would, a member's network is always its lineage's: its root's initial network and data
order under the eta/lambda schedule along the lineage (``schedule_of``), which ``Piecewise``
replays on any seed.
"""

from __future__ import annotations

import copy
import datetime
import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from nnexp import runner, tracking
from nnexp.config.names import DIVERGED, FAILED, TAG_MEMBER, TAG_STAGE, TAG_STATUS, TAG_STUDY
from nnexp.search.backend import make_storage, open_study
from nnexp.search.stage_plan import StagePlan
from nnexp.search.trials import run_on_workers
from nnexp.tracking.storelock import sqlite_lock

log = logging.getLogger("nnexp.study")


@dataclass(frozen=True)
class Rule:
    """How a population exploits and explores. Ranges are in run units (lambda as the run's)."""

    seed: int
    population: int  # which population of the study (one per worker)
    exploit_fraction: float = 0.25  # the bottom fraction copies a member of the top fraction
    perturb: tuple[float, ...] = (0.8, 1.2)  # explore: the donor's value times one of these
    resample_probability: float = 0.25  # ... or, with this probability, a fresh draw from the range
    eta_range: tuple[float, float] = (1e-3, 10.0)
    lmbda_range: tuple[float, float] = (1e-2, 100.0)


@dataclass(frozen=True)
class Exploit:
    images: int  # training images seen when it happened
    dst: int  # the member that became a copy
    src: int  # its donor
    eta: float  # the copy's new eta and lambda (explored from the donor's)
    lmbda: float


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def initial_hypers(rule: Rule, k: int) -> list[tuple[float, float]]:
    """The K members' starting (eta, lambda): log-uniform in the ranges, from the seed alone."""
    rng = np.random.default_rng([rule.seed, rule.population, 0xB7])
    return [(log_uniform(rng, *rule.eta_range), log_uniform(rng, *rule.lmbda_range)) for _ in range(k)]


def explore(rule: Rule, rng: np.random.Generator, eta: float, lmbda: float) -> tuple[float, float]:
    """Each of eta and lambda: resampled with ``resample_probability``, else the donor's times a
    perturbation factor; kept inside its range."""
    out = []
    for value, (low, high) in ((eta, rule.eta_range), (lmbda, rule.lmbda_range)):
        if rng.random() < rule.resample_probability:
            value = log_uniform(rng, low, high)
        else:
            value = value * rule.perturb[int(rng.integers(len(rule.perturb)))]
        out.append(min(max(value, low), high))
    return out[0], out[1]


def decide(rule: Rule, images: int, scores: dict[int, float | None],
           hypers: dict[int, tuple[float, float]]) -> list[Exploit]:
    """Truncation selection at one ready point: members ranked by validation accuracy (ties by
    index); each of the bottom ``floor(K x exploit_fraction)`` copies a member drawn from as many
    at the top, if that one scores higher, and explores from its eta and lambda."""
    rng = np.random.default_rng([rule.seed, rule.population, images])
    score = {m: -math.inf if s is None or not math.isfinite(s) else s for m, s in scores.items()}
    ranked = sorted(score, key=lambda m: (-score[m], m))
    q = int(len(ranked) * rule.exploit_fraction)
    events = []
    for dst in ranked[len(ranked) - q:] if q else []:
        src = ranked[int(rng.integers(q))]
        eta, lmbda = explore(rule, rng, *hypers[src])
        if score[src] > score[dst]:
            events.append(Exploit(images, dst, src, eta, lmbda))
    return events


class Controller:
    """The population's controller (``train.fit_population(control=...)``): ``decide``, then
    each copy and its new eta and lambda. ``budget_seconds``: at the first ready point after
    this much wall clock, every member ends (a benchmark's equal budget; not deterministic)."""

    def __init__(self, rule: Rule, budget_seconds: float | None = None):
        self.rule, self.budget = rule, budget_seconds
        self.started = time.monotonic()
        self.spent = 0.0  # wall seconds at the last ready point the population trained on from

    def __call__(self, pop) -> None:
        members = pop.members()
        elapsed = time.monotonic() - self.started
        if self.budget and elapsed >= self.budget:
            for m in members:
                pop.end(m, f"the study's wall-clock budget ({self.budget:g} s) is spent")
            return
        self.spent = elapsed
        scores = {m: pop.score(m) for m in members}
        events = decide(self.rule, pop.images_seen, scores, {m: pop.hyper(m) for m in members})
        for e in events:
            pop.copy(e.src, e.dst)
            pop.set_hyper(e.dst, e.eta, e.lmbda)
        scores = {m: v for m, v in scores.items() if v is not None and math.isfinite(v)}
        if scores:  # progress: one line per ready point
            top = max(scores, key=scores.get)
            log.info("pbt population %d at %s images (%.0f s): best validation accuracy %.4f (member %d), "
                     "%d member(s) took a better one's network", self.rule.population, f"{pop.images_seen:,}",
                     elapsed, scores[top], top, len(events))


# -- lineage and schedule ---------------------------------------------------------------------
def compact_records(history) -> list[list]:
    """[images, eta, lambda, validation accuracy, donor, generation] per evaluation: the lineage."""
    return [[r.images_seen, r.eta, r.lmbda, r.validation_accuracy, r.donor, r.generation] for r in history.records]


def segments(member: int, records: dict[int, list[list]]) -> list[tuple[int, int]]:
    """The lineage of ``member`` as (start images, member) from its root on: in each segment the
    network was trained by that member (``records``: per member, ``compact_records``)."""
    out, m, end = [], member, math.inf
    while True:
        copies = [(row[0], row[4]) for row in records[m] if row[4] is not None and row[0] < end]
        if not copies:
            out.append((0, m))
            return out[::-1]
        start, donor = copies[-1]
        out.append((start, m))
        m, end = donor, start


def schedule_of(member: int, records: dict[int, list[list]]) -> tuple[int, list[list]]:
    """The member's root and the eta/lambda schedule its network was trained with, as the
    ``schedule.points`` of a piecewise schedule: [[images, eta, lmbda], ...] from 0 on."""
    parts = segments(member, records)
    points: list[list] = []
    for start, m in parts:
        first = next(row for row in records[m] if row[0] > start)  # reports the value used since start
        if not points or points[-1][1:] != [first[1], first[2]]:
            points.append([int(start), float(first[1]), float(first[2])])
    return parts[0][1], points


def stitched_curve(member: int, records: dict[int, list[list]]) -> list[list]:
    """The records of the member's network along its lineage (what a replay of its schedule from
    its root's seed reports): each segment's member's own records inside the segment."""
    parts = segments(member, records)
    out = []
    for (start, m), (end, _) in zip(parts, parts[1:] + [(math.inf, None)]):
        out += [row[:4] for row in records[m] if start < row[0] <= end]
    return out


# -- training a population as a study stage ---------------------------------------------------
def member_jobs(plan: StagePlan, rule: Rule, k: int) -> list:
    """The population's K runs: member i trains from seed ``base.seed + population x K + i`` with
    its initial (eta, lambda); each is an MLflow run under the study's parent."""
    jobs = []
    for i, (eta, lmbda) in enumerate(initial_hypers(rule, k)):
        c = copy.deepcopy(plan.base)
        c.seed = plan.base.seed + rule.population * k + i
        c.eta, c.lmbda = eta, lmbda
        tags = {TAG_STUDY: plan.study, TAG_STAGE: plan.stage, TAG_MEMBER: str(i),
                "nnexp.pbt_population": str(rule.population)}
        jobs.append(runner.Job(config=c, experiment=plan.experiment, tags=tags, parent_run_id=plan.parent_run_id,
                               parent_record=plan.parent_record, run_dir=tracking.default_run_dir().resolve(),
                               run_name=f"{plan.study}/{plan.stage} population {rule.population} member {i}",
                               score_test=False))
    return jobs


def train_population(task: tuple) -> int:
    """A pool task: train (or resume) one population to its end, then add its members to the
    stage's Optuna study as finished trials (params: the initial eta and lambda; value: the last
    validation accuracy; intermediate values: every ready point). Returns the members added."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import FrozenTrial, TrialState

    plan, rule, k = task
    jobs = member_jobs(plan, rule, k)
    started = datetime.datetime.now()
    control = Controller(rule, plan.budget_seconds)
    with runner.one_blas_thread():
        results = runner.execute(jobs, control=control)
    storage = make_storage(plan.storage, plan.heartbeat, plan.grace, opened=True)
    study = open_study(plan, storage, rule.population)
    dists = {"eta": FloatDistribution(*rule.eta_range, log=True),
             "lmbda": FloatDistribution(*(v / plan.lmbda_scale for v in rule.lmbda_range), log=True)}
    with sqlite_lock(plan.storage), runner.interruptions_deferred():
        if any(t.user_attrs.get("population") == rule.population for t in study.get_trials(deepcopy=False)):
            return 0  # added by an earlier run of this stage
        for i, (job, result) in enumerate(zip(jobs, results)):
            h = result.history
            last = next((r.validation_accuracy for r in reversed(h.records) if r.validation_accuracy is not None), None)
            clock = np.cumsum([r.epoch_seconds for r in h.records]).round(3).tolist()
            study.add_trial(FrozenTrial(
                number=0, trial_id=0, state=TrialState.COMPLETE, datetime_start=started,
                datetime_complete=datetime.datetime.now(),
                value=last if last is not None and result.status not in (DIVERGED, FAILED) else 0.0,
                params={"eta": job.config.eta, "lmbda": job.config.lmbda / plan.lmbda_scale}, distributions=dists,
                intermediate_values={r.images_seen: r.validation_accuracy for r in h.records
                                     if r.validation_accuracy is not None and math.isfinite(r.validation_accuracy)},
                user_attrs={"population": rule.population, "member": i, "seed": job.config.seed,
                            TAG_STATUS: result.status, "reason": h.reason[:500], "mlflow_run_id": result.run_id,
                            "best_validation_accuracy": h.best_validation_accuracy,
                            "images": h.records[-1].images_seen if h.records else 0,
                            "records": compact_records(h), "seconds": clock,
                            **({"budget_spent_s": round(control.spent, 3)} if plan.budget_seconds else {})},
                system_attrs={}))
    return len(jobs)


# -- the study: population-based training, then its schedule replayed on fresh seeds ----------
def rule_of(ctx, population: int) -> Rule:
    s, p = ctx.settings, ctx.settings.pbt
    space = {k: dict(v) for k, v in s.space.items()}
    return Rule(seed=int(s.seed), population=population, exploit_fraction=float(p.exploit_fraction),
                perturb=tuple(float(f) for f in p.perturb), resample_probability=float(p.resample_probability),
                eta_range=(float(space["eta"]["low"]), float(space["eta"]["high"])),
                lmbda_range=(float(space["lmbda"]["low"]), float(space["lmbda"]["high"])))


def stage_pbt(ctx) -> dict:
    """One population of ``study.pbt.members`` per worker, trained for ``study.epochs`` epochs,
    ready every ``study.pbt.ready_images`` images (default: 5 epochs); the member with the best
    last validation accuracy gives the schedule."""
    from nnexp.search.backend import finished_trials
    from nnexp.search.strategy import full_base, record_decision

    s, p = ctx.settings, ctx.settings.pbt
    k = int(p.members)
    base = full_base(ctx, int(s.epochs), schedule="constant", early_stopping=False)
    base.monitor.metrics = ["validation_accuracy"]  # the controller's score; never the test set
    base.monitor.every_images = int(p.ready_images or 5 * ctx.n_full)
    plan = ctx.plan("pbt", base, {}, prune=False, population=k, budget_seconds=s.budget_seconds)
    tasks = [(plan, rule_of(ctx, w), k) for w in range(ctx.workers)]
    log.info("pbt: %d population(s) of %d members, %d epochs, ready every %d images", len(tasks), k,
             int(s.epochs), base.monitor.every_images)
    run_on_workers(train_population, tasks, ctx.pool)
    study = open_study(plan, make_storage(plan.storage, plan.heartbeat, plan.grace, opened=True))
    trials = [t for t in finished_trials(study) if t.user_attrs.get("population", -1) < len(tasks)]
    best = max(trials, key=lambda t: (t.value or 0.0, -t.number))
    pop = int(best.user_attrs["population"])
    records = {int(t.user_attrs["member"]): t.user_attrs["records"] for t in trials
               if t.user_attrs["population"] == pop}
    root, points = schedule_of(int(best.user_attrs["member"]), records)
    lineage = {str(w): {str(t.user_attrs["member"]): [[row[0], row[4], row[5]] for row in t.user_attrs["records"]
                                                     if row[4] is not None]
                        for t in trials if t.user_attrs["population"] == w} for w in range(len(tasks))}
    copies = sum(len(v) for per in lineage.values() for v in per.values())
    root_seed = base.seed + pop * k + root
    trained = max(row[0] for row in records[int(best.user_attrs["member"])])  # images (a budget may end it early)
    summary = (f"population {pop} member {best.user_attrs['member']}: last validation accuracy {best.value:.4f}; "
               f"its network's schedule has {len(points)} piece(s) along a lineage from member {root} "
               f"(seed {root_seed}); {copies} exploit(s) in all")
    return record_decision(ctx, "pbt", [("full", study)], {
        "eta": points[0][1], "lmbda": points[0][2] / plan.lmbda_scale, "mini_batch_size": base.mini_batch_size,
        "schedule": points, "epochs": min(int(s.epochs), math.ceil(trained / ctx.n_full)), "images": trained,
        "ready_images": base.monitor.every_images,
        "population": pop, "member": int(best.user_attrs["member"]), "root": root, "root_seed": root_seed,
        "validation_accuracy": best.value, "lineage": lineage, "curve": stitched_curve(int(best.user_attrs["member"]), records),
        "members": k, "populations": len(tasks), "evidence": "last validation accuracy of every member",
        "notes": [], "summary": summary})


def pbt_study(ctx, stop_after: str | None) -> None:
    """``study=pbt``: the population-based search, then the best member's schedule replayed on
    ``study.replicates`` fresh seeds (after every member's), test accuracy measured once."""
    from nnexp.search.strategy import _run_stages, stage_final

    def final() -> dict:
        d = ctx.decisions["pbt"]
        points = [list(p) for p in d["schedule"]]
        fresh = ctx.base.seed + int(d["populations"]) * int(d["members"])
        return stage_final(ctx, points[0][1], points[0][2], int(d["mini_batch_size"]), "piecewise",
                           points=points, epochs=int(d["epochs"]), seed=fresh)

    _run_stages(ctx, [("pbt", lambda: stage_pbt(ctx)), ("final", final)], stop_after)
