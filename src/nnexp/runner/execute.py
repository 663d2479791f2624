"""Executing jobs: any list of compatible jobs (one job is a list of one) trained as one
population, each tracked as its own MLflow run, with interrupts and failures recorded; a job
that is not a network on a dataset (``Job.fit``) is tracked the same way.

Every run of every entry point (a run, a sweep, a study's trials, the report's runs) is
executed here; ``sweep.run_jobs`` spreads many jobs over the worker pool.
"""

from __future__ import annotations

import io
import logging
import sys
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from nnexp import tracking
from nnexp.config.run_schema import flat_params
from nnexp.config.identity import config_hash
from nnexp.engine import save_network
from nnexp.engine.network import Network, evaluate
from nnexp.config.names import (COMPLETED, DIVERGED, FAILED, KILLED, RUNNING, TAG_CONFIG_HASH, TAG_EXPERIMENT,
                                TAG_LINEAGE, TAG_POPULATION, TAG_POPULATION_SIZE, TAG_STATUS, TAG_SWEEP)
from nnexp.runner.build import build_network, load_splits, train_spec
from nnexp.runner.groups import check_compatible
from nnexp.runner.handover import Handed, HandOver
from nnexp.runner.interrupts import INTERRUPTIONS, Interrupts
from nnexp.runner import resume
from nnexp.runner.job import Job
from nnexp.train import History, Record, Streams, fit_population

log = logging.getLogger("nnexp.run")


@dataclass
class RunResult:
    status: str  # completed | diverged | early_stopped | pruned
    history: History
    run_id: str | None = None
    test_accuracy: float | None = None
    summary: str = ""
    tracking_seconds: float = 0.0
    checkpoint_seconds: float = 0.0  # spent writing its checkpoints
    network: Network | None = None  # the trained network (best parameters if early stopping restored them)

    @property
    def best_validation_accuracy(self) -> float | None:
        return self.history.best_validation_accuracy


def test_accuracy_of(history: History, net, test, monitored: bool) -> float | None:
    """Test accuracy at the best-validation evaluation if tracked, else measured once now."""
    if history.outcome == DIVERGED:
        return None
    if monitored and history.records:
        best = history.best_epoch
        rec = next((r for r in history.records if r.epoch == best), history.records[-1])
        return rec.test_accuracy
    return evaluate(net, test.x, test.y)[1]


class ProgressBar:
    """Per-evaluation tqdm bar: epoch, current eta, validation accuracy."""

    def __init__(self, total_epochs: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total_epochs, unit="epoch", disable=not enabled, leave=False, file=sys.stderr)

    def __call__(self, record: Record, net=None):
        self.bar.n = record.epoch
        post = {"eta": f"{record.eta:.4g}"}
        if record.validation_accuracy is not None:
            post["val_acc"] = f"{record.validation_accuracy:.4f}"
        self.bar.set_postfix(post, refresh=True)
        return None

    def logging(self):
        """Route log lines through tqdm while the bar is shown, so they don't break it."""
        from contextlib import nullcontext

        from tqdm.contrib.logging import logging_redirect_tqdm

        return nullcontext() if self.bar.disable else logging_redirect_tqdm()

    def close(self):
        self.bar.close()


def summary_line(result: RunResult, where: str) -> str:
    h = result.history
    parts = [result.status]
    if h.best_validation_accuracy is not None:
        parts.append(f"best validation accuracy {h.best_validation_accuracy:.4f} at epoch {h.best_epoch:g}")
    if result.test_accuracy is not None:
        parts.append(f"test accuracy {result.test_accuracy:.4f}")
    if h.reason and result.status != COMPLETED:
        parts.append(h.reason)
    parts.append(where)
    return " | ".join(parts)


# -- tracking one job -------------------------------------------------------------------------
def run_name(job: Job) -> str:
    c = job.config
    head = job.experiment or "run"
    return job.run_name or f"{head} eta={c.eta:g} lmbda={c.lmbda:g} mb={c.mini_batch_size} seed={c.seed}"


def new_tracker(job: Job, uploader, population: tuple[str, int] = ("", 1)):
    """The job's tracker, not yet started (None if tracking is off). ``population``: the id and
    size of the population it trains in (tags: how it was scheduled, never what it computes)."""
    c = job.config
    if not c.tracking.enabled:
        return None
    tags = {TAG_EXPERIMENT: job.experiment or "none", TAG_STATUS: RUNNING,
            TAG_CONFIG_HASH: job.identity or config_hash(c), TAG_POPULATION: population[0] or uuid.uuid4().hex[:12],
            TAG_POPULATION_SIZE: str(population[1]), **(job.tags or {})}
    if job.sweep_id:
        tags[TAG_SWEEP] = job.sweep_id
    return tracking.RunTracker(
        uri=tracking.resolve_uri(c.tracking.uri), experiment=c.tracking.experiment, run_name=run_name(job),
        params=job.params if job.params is not None else flat_params(c), tags=tags, parent_run_id=job.parent_run_id, parent_record=job.parent_record,
        step_by_images=c.monitor.every_images is not None, run_dir=job.run_dir, uploader=uploader)


def _open(tracker, splits, job: Job, earlier: resume.Earlier | None) -> None:
    """Create the run's record before training: params, tags, dataset input (and the MLflow run
    if the store answers); or go on with the earlier run's record, as the same MLflow run."""
    if tracker is None:
        return
    if earlier is not None and earlier.handed:
        if not earlier.record.claim(f"a hand-over at {earlier.where()}", handover=True):
            raise RuntimeError(f"run {tracker.run_name} was handed over but another process owns it")
        tracker.resume(earlier.record, earlier.where(), handover=True)
    elif earlier is not None:
        tracker.resume(earlier.record, earlier.where())
        log.info("%s: resumed from %s", tracker.run_name, earlier.where())
    else:
        tracker.start()
        tracker.log_dataset(splits)
    if resume.checkpointed(job):
        resume.remember(job, tracker.record)
    if job.on_start and tracker.started():
        job.on_start(tracker.run_id)


def _record_interruption(tracker, exc: BaseException, artifacts: dict) -> None:
    """Ctrl-C / SIGTERM (or a cluster job's requeue exit) -> KILLED, anything else -> FAILED;
    the metrics so far are kept, and the run resumes from its checkpoint when run again."""
    if tracker is None or tracker.record is None:  # interrupted before its record existed
        return
    if isinstance(exc, INTERRUPTIONS):
        tracker.fail(KILLED, "KILLED", error="interrupted (Ctrl-C or SIGTERM)", artifacts=dict(artifacts))
    elif isinstance(exc, SystemExit):  # a cluster job preempted or timed out, requeued by submitit
        tracker.fail(KILLED, "KILLED", error="stopped to be requeued (preempted or timed out)",
                     artifacts=dict(artifacts))
    else:
        tracker.fail(FAILED, "FAILED", error=f"{type(exc).__name__}: {exc}",
                     artifacts={**artifacts, "traceback.txt": traceback.format_exc()})


def _finish(job: Job, tracker, history: History, net, test, artifacts: dict) -> RunResult:
    """After training: test accuracy, summary metrics, artifacts and status into the record."""
    c = job.config
    result = RunResult(history.outcome, history, tracker.run_id if tracker else None, network=net)
    if job.score_test:
        result.test_accuracy = test_accuracy_of(history, net, test, "test_accuracy" in c.monitor.metrics)
    if tracker:
        summary = {"best_validation_accuracy": history.best_validation_accuracy,
                   "best_epoch": history.best_epoch, "final_test_accuracy": result.test_accuracy,
                   "train_seconds": history.train_seconds}
        artifacts = {**artifacts, "history.csv": history.to_csv()}
        if c.tracking.log_model and history.outcome != DIVERGED:
            buf = io.BytesIO()
            save_network(net, buf)
            artifacts["model.npz"] = buf.getvalue()
        donors = [f"{r.images_seen}:{r.donor}@{r.generation}" for r in history.records if r.donor is not None]
        tracker.finish(history.outcome, summary=summary, artifacts=artifacts, mlflow_status="FINISHED",
                       error=history.reason if history.outcome == DIVERGED else None,
                       tags={TAG_LINEAGE: " ".join(donors)[:4000]} if donors else None)
        result.tracking_seconds = tracker.seconds_in_tracking
    return result


def _where(tracker) -> str:
    return tracker.location if tracker else "not tracked (tracking=off)"


def recorded_as(exc: BaseException, status: str) -> str:
    """What happened to the runs an exception ended, truthfully: in the store or kept locally."""
    where = getattr(exc, "where", None)
    if not where:
        return "no run was recorded yet"
    return f"recorded {status} with the metrics so far: " + "; ".join(where)


# -- executing ---------------------------------------------------------------------------------
def execute(jobs: Sequence[Job] | Job, *, progress: bool = False, control=None,
            refill: Callable[[], Job | None] | None = None, uploader=None, spare=None) -> list[RunResult]:
    """Train compatible jobs (see ``runner.groups.group_key``) as one population and track each.

    Raises NnexpError for bad data or config (before any run is created); KeyboardInterrupt /
    Terminated after recording every started run as KILLED; other exceptions after recording
    them as FAILED (the exception's ``where``: each such run's location, see ``interrupted``).
    One job is a population of one: the results never depend on grouping. ``control``: the
    population's controller (``train.Population``; population-based training), which names each
    member by its job's position in ``jobs``. ``refill``: at each epoch's boundary, a finished run's
    row trains the job ``refill()`` gives (compatible, tracked like the others), as long as it gives
    one; their results follow the others', in the order they joined (successive halving with
    refill). Refilled runs keep no checkpoints. ``uploader``: what takes the runs' records to the
    store (default: a ``tracking.Uploader`` thread per population; ``tracking.UploadProcess``
    keeps MLflow out of this process); it is closed when the runs end. ``spare``: a worker pool's
    spare capacity (``runner.handover``): while a worker idles, half of the population goes on
    there, each run as the same run (the worker tracks it from then on)."""
    jobs = [jobs] if isinstance(jobs, Job) else list(jobs)
    if jobs[0].fit is not None:
        (job,) = jobs  # never grouped: see sweep.run_jobs
        return [_execute_fit(job)]
    check_compatible([j.config for j in jobs])
    if refill is not None:  # one population from its start: nothing resumes into it
        return _train(list(jobs), [None] * len(jobs), progress, control, None, refill, uploader)
    earlier = [resume.find(j) for j in jobs]  # each claimed: the same configuration twice, one goes on with it
    # a population resumes from one position; a controller must see all of it (or none resumes)
    earlier = resume.common_position(jobs, earlier, whole=control is not None)
    results: list[RunResult | None] = [None] * len(jobs)
    groups: dict[tuple[int, int], list[int]] = {}  # runs that go on from one position train together
    for i, e in enumerate(earlier):
        if e is not None and e.finished:
            results[i] = _already_finished(jobs[i], e)
        else:
            groups.setdefault((0, 0) if e is None else e.position, []).append(i)
    for members in groups.values():
        trained = _train([jobs[i] for i in members], [earlier[i] for i in members], progress, control, members,
                         uploader=uploader, spare=spare)
        for i, result in zip(members, trained):
            results[i] = result
    return results


def continue_runs(handed: Sequence[Handed]) -> list[RunResult]:
    """Runs handed over at one position by a process still training (``runner.handover``):
    each record claimed (it is this process's run from now on), trained on from its state as
    one population, tracked and checkpointed here; their results."""
    from nnexp.tracking.record import RunRecord

    earlier = [resume.Earlier(RunRecord(Path(d)) if d else None, state, handed=True) for _, state, d in handed]
    return _train([job for job, _, _ in handed], earlier, progress=False)


def _already_finished(job: Job, earlier: resume.Earlier) -> RunResult:
    """A run that trained to its end before: its result from its final checkpoint, not trained
    again. If its process died before recording the end, its record ends now, as it would have."""
    state = earlier.state
    _, _, _, test = load_splits(job.config)
    net = build_network(job.config, Streams.from_seed(job.config.seed))
    net.set_params(state.weights, state.biases)
    if earlier.record.end_status() != "FINISHED":
        uploader = tracking.uploader()
        tracker = new_tracker(job, uploader)
        with Interrupts() as interrupts, interrupts.deferred():
            tracker.resume(earlier.record, "its end")
            if job.on_start and tracker.started():
                job.on_start(tracker.run_id)
            result = _finish(job, tracker, state.history, net, test,
                             {"config.yaml": job.resolved_yaml} if job.resolved_yaml else {})
            uploader.close()
        result.summary = summary_line(result, f"trained to its end before, recorded now: {_where(tracker)}")
        return result
    result = RunResult(state.history.outcome, state.history, earlier.record.run_id(), network=net)
    if job.score_test:
        result.test_accuracy = test_accuracy_of(state.history, net, test, "test_accuracy" in job.config.monitor.metrics)
    if job.on_start and result.run_id:
        job.on_start(result.run_id)
    where = (f"run {result.run_id}" if result.run_id else f"record {earlier.record.dir.parent}")
    result.summary = summary_line(result, f"finished before, not trained again ({where}; "
                                          "tracking.resume=false trains it again)")
    return result


def _train(jobs: list[Job], earlier: list[resume.Earlier | None], progress: bool, control=None,
           ids: list[int] | None = None, refill: Callable[[], Job | None] | None = None,
           uploader=None, spare=None) -> list[RunResult]:
    """Train and track jobs as one population (``earlier``: the runs each goes on with;
    ``control``, ``ids``: the population's controller and the members' names for it)."""
    splits, train, val, test = load_splits(jobs[0].config, progress=progress)
    streams = [Streams.from_seed(j.config.seed) for j in jobs]
    nets = [build_network(j.config, s) for j, s in zip(jobs, streams)]
    specs = [train_spec(j.config) for j in jobs]
    uploader = uploader or tracking.uploader()  # the population's runs reach the store off the training path
    population = (uuid.uuid4().hex[:12], len(jobs))
    trackers = [new_tracker(j, uploader, population) for j in jobs]
    artifacts = [{"config.yaml": j.resolved_yaml} if j.resolved_yaml else {} for j in jobs]
    bar = ProgressBar(max(s.epochs for s in specs), progress and len(jobs) == 1)
    # interruptions are caught from before the records exist, so they never leave one RUNNING
    with Interrupts() as interrupts:
        observers = [([interrupts.guard(t.observe)] if t else []) + ([bar] if len(jobs) == 1 else [])
                     + list(j.observers) for t, j in zip(trackers, jobs)]
        try:
            with interrupts.deferred():
                for t, j, e in zip(trackers, jobs, earlier):
                    _open(t, splits, j, e)
            savers = [resume.Saver(j, t.record, e and e.state) if t is not None and resume.checkpointed(j) else None
                      for j, t, e in zip(jobs, trackers, earlier)]
            if len(jobs) > 1:
                log.info("training %d runs as one population (%s)", len(jobs),
                         ", ".join(f"eta={j.config.eta:g} seed={j.config.seed}" for j in jobs))

            def join():
                """The next job of ``refill`` as a member (its record opened), or None."""
                job = refill()
                if job is None:
                    return None
                check_compatible([jobs[0].config, job.config])
                st = Streams.from_seed(job.config.seed)
                net, spec, tracker = build_network(job.config, st), train_spec(job.config), new_tracker(job, uploader, population)
                jobs.append(job), nets.append(net), trackers.append(tracker), savers.append(None)
                artifacts.append({"config.yaml": job.resolved_yaml} if job.resolved_yaml else {})
                with interrupts.deferred():
                    _open(tracker, splits, job, None)
                return net, spec, st, ([interrupts.guard(tracker.observe)] if tracker else []) + list(job.observers)

            done: dict[int, RunResult] = {}
            recorded: dict[int, object] = {}  # the ended runs' trackers: where each is, once uploaded

            def ended(i: int, history: History) -> None:
                """A member that ended is recorded at once (its run ends in the store while the
                others train on), its result kept."""
                with interrupts.deferred():
                    done[i] = _finish(jobs[i], trackers[i], history, nets[i], test, artifacts[i])
                    recorded[i], trackers[i] = trackers[i], None  # recorded: an interruption leaves it alone

            def detach(i: int) -> str | None:
                """Member i's run goes on elsewhere: no longer uploaded, checkpointed or
                recorded here; its record released (its directory returned)."""
                with interrupts.deferred():
                    tracker, trackers[i], savers[i] = trackers[i], None, None
                    if tracker is None or tracker.record is None:
                        return None
                    uploader.forget(tracker.record)
                    tracker.record.release("a worker of this process's pool")
                    return str(tracker.record.dir.resolve())

            handover = None
            if spare is not None and control is None and refill is None and len(jobs) > 1:
                handover = HandOver(list(jobs), spare, detach, continue_runs)
            with bar.logging():
                fit_population(nets, train, specs, validation=val, test=test, streams=streams, observers=observers,
                               checkpoints=savers, resume=[e and e.state for e in earlier], control=control, ids=ids,
                               refill=join if refill is not None else None, ended=ended,
                               release=handover and handover.release, released=handover and handover.released)
                handed = handover.collect() if handover is not None else {}
            done.update(handed)  # complete: tracked and summarised by the process that finished them
            bar.close()
            with interrupts.deferred():
                uploader.close()
            results = [done[i] for i in range(len(jobs))]
            for i, (result, saver) in enumerate(zip(results, savers)):
                if i in handed:
                    continue
                result.run_id = result.run_id or recorded[i] and recorded[i].run_id  # an upload process's: known now
                result.summary = summary_line(result, _where(recorded[i]))
                result.checkpoint_seconds = saver.seconds if saver else 0.0
            return results
        except BaseException as exc:
            bar.close()
            for t, a in zip(trackers, artifacts):
                _record_interruption(t, exc, a)
            uploader.close()
            # where each ended run is now (the store, or only its local record): callers say the truth
            exc.where = [t.location for t in trackers if t is not None and t.record is not None]
            raise


def _execute_fit(job: Job) -> RunResult:
    """A run that is not a network on a dataset (``job.fit``), tracked like one: its record first,
    its curve through the observers, its summary metrics and status at the end, KILLED or FAILED
    when interrupted."""
    uploader = tracking.uploader()
    tracker = new_tracker(job, uploader)
    with Interrupts() as interrupts:
        try:
            with interrupts.deferred():
                if tracker is not None:
                    tracker.start()
                    if job.on_start and tracker.started():
                        job.on_start(tracker.run_id)
            history, summary = job.fit(job, [interrupts.guard(tracker.observe)] if tracker else [])
            result = RunResult(history.outcome, history, tracker.run_id if tracker else None)
            with interrupts.deferred():
                if tracker is not None:
                    tracker.finish(history.outcome, summary=summary, artifacts={})
                    result.tracking_seconds = tracker.seconds_in_tracking
                uploader.close()
            result.summary = summary_line(result, _where(tracker))
            return result
        except BaseException as exc:
            _record_interruption(tracker, exc, {})
            uploader.close()
            exc.where = [tracker.location] if tracker is not None and tracker.record is not None else []
            raise
