"""Successive halving with refill inside one batched population (asynchronous successive
halving, Li et al., 2018, with Optuna's SuccessiveHalvingPruner deciding): the sampler (TPE)
asks K trials, which train as one population; at each rung (min_epochs x reduction_factor^k
epochs) a member below the rung's cut is pruned, and at the next epoch's boundary its row
takes a newly asked trial, so the population stays K wide until the budget is spent.

Every member is a tracked run (``runner.execute(refill=...)``): a pruned one ends ``pruned`` in
MLflow and PRUNED in Optuna at the rung that pruned it, so the sampler's next ask knows it.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field

from nnexp import runner, tracking
from nnexp.config.errors import ConfigError
from nnexp.config.names import COMPLETED, DIVERGED, FAILED, PRUNED, TAG_STAGE, TAG_STATUS, TAG_STUDY, TAG_TRIAL
from nnexp.search.backend import Heartbeat, finished_trials, make_storage, open_study, set_user_attrs
from nnexp.search.stage_plan import StagePlan
from nnexp.search.trials import _progress_line, _suggest, ask_trial, budget_spent, run_on_workers, trial_config

log = logging.getLogger("nnexp.study")


@dataclass
class Budget:
    """When a worker stops asking: ``trials`` asked in the stage's study (all workers), or
    ``seconds`` of wall clock since its first trial started."""

    trials: int
    seconds: float | None = None

    def spent(self, study) -> bool:
        if len(study.get_trials(deepcopy=False)) >= self.trials:
            return True
        return bool(self.seconds) and budget_spent(study) >= self.seconds


@dataclass
class _Member:
    trial: object
    job: runner.Job
    told: bool = False
    best: float | None = None


@dataclass
class Population:
    """One worker's population: its members (in the order they joined) and the study."""

    plan: StagePlan
    study: object
    budget: Budget
    heartbeat: Heartbeat
    members: list[_Member] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ask(self) -> runner.Job | None:
        """A new trial as a job, or None once the budget is spent."""
        if self.budget.spent(self.study):
            return None
        with runner.interruptions_deferred():  # an asked trial is always a member (told FAIL if interrupted)
            spent = budget_spent(self.study) if self.budget.seconds else None
            trial = ask_trial(self.study, self.plan.storage)
            self.heartbeat.add(trial._trial_id)
            if spent is not None:
                trial.set_user_attr("budget_spent_s", spent)
            member = _Member(trial, None)
            self.members.append(member)
        member.job = self._job(member)
        return member.job

    def _job(self, member: _Member) -> runner.Job:
        plan, trial = self.plan, member.trial
        c = trial_config(plan, {name: _suggest(trial, name, dist) for name, dist in plan.space.items()})
        tags = {TAG_STUDY: plan.study, TAG_STAGE: plan.stage, TAG_TRIAL: str(trial.number)}

        def rung(record, net):
            """Report the epoch's validation accuracy; at a rung, prune below the cut (told at once)."""
            acc = record.validation_accuracy
            if acc is None:
                return None
            member.best = acc if member.best is None or not math.isfinite(member.best) else max(member.best, acc)
            epoch = int(round(record.epoch))
            trial.report(acc, epoch)
            if epoch >= c.epochs:
                self.tell(member, COMPLETED, record.images_seen)
            elif trial.should_prune():
                self.tell(member, PRUNED, record.images_seen)
                return PRUNED
            return None

        rung.__name__ = "the successive-halving pruner"
        return runner.Job(config=c, experiment=plan.experiment, tags=tags, parent_run_id=plan.parent_run_id,
                          parent_record=plan.parent_record, run_dir=tracking.default_run_dir().resolve(),
                          observers=[rung], run_name=f"{plan.study}/{plan.stage} #{trial.number}", score_test=False,
                          on_start=lambda rid: trial.set_user_attr("mlflow_run_id", rid))

    def tell(self, member: _Member, status: str, images: int, reason: str = "") -> None:
        """The trial's outcome to Optuna, once: COMPLETE with its best validation accuracy, PRUNED,
        or FAIL (diverged: told COMPLETE with its best score, as a low value for the sampler)."""
        from optuna.trial import TrialState

        if member.told:
            return
        member.told = True
        t = member.trial
        with runner.interruptions_deferred():
            set_user_attrs(t, {TAG_STATUS: status, "images": images, "reason": reason[:500]})
            self.heartbeat.remove(t._trial_id)
            if status == PRUNED:
                frozen = self.study.tell(t, state=TrialState.PRUNED)
            elif status == FAILED or member.best is None:
                frozen = self.study.tell(t, state=TrialState.FAIL)
            else:
                frozen = self.study.tell(t, member.best)
        _progress_line(self.study, frozen)


def train_population(task: tuple) -> int:
    """A pool task: one worker's population, K members asked at once and refilled until the
    budget is spent. Returns the number of trials it trained."""
    plan, worker, budget = task
    storage = make_storage(plan.storage, plan.heartbeat, plan.grace, opened=True)
    study = open_study(plan, storage, worker)
    with runner.Interrupts(), Heartbeat(storage, [], plan.heartbeat) as beat:
        pop = Population(plan, study, budget, beat)
        try:
            jobs = [job for job in (pop.ask() for _ in range(plan.population)) if job is not None]
            if not jobs:
                return 0
            with runner.one_blas_thread():
                results = runner.execute(jobs, refill=pop.ask)
            for member, result in zip(pop.members, results):  # the ones no rung told: diverged ones
                h = result.history
                reason = h.reason if result.status == DIVERGED else ""
                pop.tell(member, result.status if result.status != DIVERGED else DIVERGED,
                         h.records[-1].images_seen if h.records else 0, reason)
        except BaseException:
            from optuna.trial import TrialState

            with runner.interruptions_deferred():
                for member in pop.members:
                    if not member.told:
                        member.told = True
                        study.tell(member.trial, state=TrialState.FAIL)
            raise
    return len(pop.members)


def stage_asha(ctx) -> dict:
    """Successive halving with refill: one population of ``study.asha.members`` per worker, the
    sampler's trials at ``study.epochs`` epochs at most, pruned at the rungs, until
    ``study.n_trials`` were asked or ``study.budget_seconds`` passed."""
    from nnexp.search.strategy import full_base, record_decision

    s, a = ctx.settings, ctx.settings.asha
    base = full_base(ctx, int(s.epochs), schedule="constant", early_stopping=False)
    base.tracking.checkpoint = False  # a pruned member's row is refilled at once: nothing resumes into it
    base.monitor.metrics = ["validation_accuracy"]  # what the rungs compare; never the test set
    space = {k: dict(v) for k, v in s.space.items()}
    if "mini_batch_size" in space:
        raise ConfigError("study=asha trains one population, whose members share the mini-batch size: remove "
                          "study.space.mini_batch_size (set mini_batch_size=... for the runs)")
    plan = ctx.plan("asha", base, space, sampler=s.sampler, population=int(a.members),
                    rungs=(int(a.min_epochs), int(a.reduction_factor)))
    budget = Budget(int(s.n_trials), s.budget_seconds)
    tasks = [(plan, w, budget) for w in range(ctx.workers)]
    log.info("asha: %d population(s) of %d, rungs at %s epochs, up to %d trials%s", len(tasks), a.members,
             ", ".join(str(r) for r in rung_epochs(int(a.min_epochs), int(a.reduction_factor), int(s.epochs))),
             s.n_trials, f" or {s.budget_seconds:g} s" if s.budget_seconds else "")
    run_on_workers(train_population, tasks, ctx.pool)
    study = open_study(plan, make_storage(plan.storage, plan.heartbeat, plan.grace, opened=True))
    trials = finished_trials(study)
    complete = [t for t in trials if t.value is not None and t.user_attrs.get(TAG_STATUS) == COMPLETED]
    if not complete:
        raise ConfigError("study=asha: no trial trained to study.epochs (every one was pruned or failed): "
                          "raise study.n_trials or study.budget_seconds")
    best = max(complete, key=lambda t: (t.value, -t.number))
    c = trial_config(plan, best.params)
    params = {"eta": c.eta, "lmbda": c.lmbda, "mini_batch_size": c.mini_batch_size}
    pruned = sum(t.user_attrs.get(TAG_STATUS) == PRUNED for t in trials)
    return record_decision(ctx, "asha", [("full", study)], {
        **params, "validation_accuracy": best.value, "trials": len(trials), "pruned": pruned,
        "completed": len(complete), "rungs": rung_epochs(int(a.min_epochs), int(a.reduction_factor), int(s.epochs)),
        "summary": f"best of {len(complete)} trials trained to {s.epochs} epochs ({pruned} pruned at a rung, "
                   f"{len(trials)} asked): " + ", ".join(f"{k}={v:.4g}" for k, v in params.items())})


def rung_epochs(min_epochs: int, factor: int, epochs: int) -> list[int]:
    """The rungs: min_epochs x factor^k below the members' epochs."""
    out, r = [], min_epochs
    while r < epochs:
        out.append(r)
        r *= factor
    return out


def asha_study(ctx, stop_after: str | None) -> None:
    """``study=asha``: successive halving with refill, then the best trial's configuration on
    ``study.replicates`` seeds (halve on plateau, early stopping), test accuracy measured once."""
    from nnexp.search.strategy import _run_stages, stage_final

    def final() -> dict:
        d = ctx.decisions["asha"]
        return stage_final(ctx, float(d["eta"]), float(d["lmbda"]), int(d["mini_batch_size"]), "halve_on_plateau")

    _run_stages(ctx, [("asha", lambda: stage_asha(ctx)), ("final", final)], stop_after)
