"""Making the runs a figure is missing, through nnexp.runner (compatible runs as populations,
spread over the worker pool), and the two kinds of run that are not a network on a dataset:
the book's single neuron and the baselines."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from nnexp import tracking
from nnexp.config.names import COMPLETED, RUNNING, TAG_CONFIG_HASH, TAG_EXPERIMENT, TAG_STATUS
from nnexp.report.figure_plan import FigureRun, compose_run

def _run_task(task: tuple[str, str, Sequence[FigureRun]]) -> list[str]:
    """A pool task (store, experiment, jobs): compatible runs trained as one population (e.g.
    the seeds of an arm), or one baseline or single-neuron run; returns the MLflow run ids."""
    from nnexp import runner

    uri, experiment, jobs = task
    first = jobs[0]
    if first.kind == "neuron":
        return [_neuron_run(first, uri, experiment)]
    if first.kind == "baseline":
        return [_baseline_run(first, uri, experiment)]
    where = [f"tracking.uri={uri}", f"tracking.experiment={experiment}"]
    jobs = [runner.compose([*j.overrides, *where], experiment=j.experiment) for j in jobs]
    return [r.run_id for r in runner.execute(jobs)]


def _tracker(job: FigureRun, uri: str, experiment: str, params: dict):
    t = tracking.RunTracker(uri=uri, experiment=experiment, run_name=f"{job.figure}: {job.arm}",
                            params=params, tags={TAG_EXPERIMENT: job.experiment or job.figure,
                                                 TAG_CONFIG_HASH: job.key, TAG_STATUS: RUNNING})
    t.start()
    return t


def _neuron_run(job: FigureRun, uri: str, experiment: str) -> str:
    """The book's single neuron (input 1, target 0), trained by the one training loop and
    tracked like any run: training cost per epoch, from epoch 0.

    The loop's targets are one-hot labels, so the neuron is trained in its mirror image: target
    1 with w -> -w, b -> -b. Since 1 - sigma(z) = sigma(-z), its cost and gradients are the
    book's neuron's at every step (quadratic: (1 - a')^2/2 = a^2/2; cross-entropy:
    -ln a' = -ln(1 - a)), and the book's output is 1 - a'."""
    from nnexp.data import Split
    from nnexp.engine.network import Network, evaluate
    from nnexp.train import Monitor, Record, TrainSpec, fit

    s = job.spec
    t = _tracker(job, uri, experiment, {**s, "sizes": [1, 1], "seed": 0})
    net = Network([np.array([[-float(s["w"])]], order="F")], [np.array([-float(s["b"])])], cost=s["cost"])
    one = Split(x=np.array([[1.0]]), y=np.array([0]))  # input 1; label 0 of one output: target 1 (mirrored)
    start_cost = evaluate(net, one.x, one.y)[0]
    t.observe(Record(epoch=0, images_seen=0, eta=float(s["eta"]), epoch_seconds=0.0, training_cost=start_cost))
    spec = TrainSpec(epochs=int(s["epochs"]), mini_batch_size=1, eta=float(s["eta"]), penalty="none",
                     monitor=Monitor(metrics=("training_cost",)))
    history = fit(net, one, spec, observers=[t.observe])
    z = float(net.weights[0][0, 0] + net.biases[0][0])  # the mirrored neuron's weighted input
    output = 1.0 - 1.0 / (1.0 + np.exp(-z))  # the book's neuron's output, sigma(-z)
    t.finish(history.outcome, summary={"final_output": output}, artifacts={})
    t.close()
    return t.run_id


def _baseline_run(job: FigureRun, uri: str, experiment: str) -> str:
    """A baseline fitted on the (first ``train_size``) training images, scored on the validation
    and the test split (the book's "more data" script scores validation, chapter 1 test)."""
    from nnexp import data
    from nnexp.train.baselines import BASELINES, accuracy
    from nnexp.runner import load_splits

    c, _ = compose_run([f"dataset={job.spec['dataset']}", f"dtype={job.spec['dtype']}", *job.overrides])
    splits, train, val, test = load_splits(c)
    if job.spec["train_size"]:
        train = data.first_n(train, int(job.spec["train_size"]))
    t = _tracker(job, uri, experiment, {**job.spec, "seed": job.seed})
    classify = BASELINES[job.spec["method"]](train, np.random.default_rng(job.seed))
    v, a = accuracy(classify, val), accuracy(classify, test)
    t.finish(COMPLETED, summary={"validation_accuracy": v, "test_accuracy": a, "best_test_accuracy": a},
             artifacts={})
    t.close()
    return t.run_id


def _tasks(jobs: Sequence[FigureRun], workers: int) -> list[list[FigureRun]]:
    """Runs grouped into populations where compatible (seeds of an arm, arms of a sweep);
    baselines and the single neuron on their own; the slow SVM fits first."""
    from nnexp import runner

    runs = [j for j in jobs if j.kind == "run"]
    configs = [compose_run(j.overrides)[0] for j in runs]
    groups = [[runs[i] for i in g] for g in runner.plan_groups(configs, 16, 4096, workers)]
    others = sorted((j for j in jobs if j.kind != "run"), key=lambda j: -(j.spec.get("train_size") or 0))
    return [[j] for j in others] + groups


def launch(jobs: Sequence[FigureRun], uri: str, experiment: str, workers: int) -> None:
    """Make the missing runs on ``workers`` processes (populations where possible), with progress."""
    from nnexp import runner

    tracking.prepare_store(uri, experiment)  # created once, before parallel jobs
    tasks = _tasks(jobs, workers)
    start, done = time.perf_counter(), 0

    def progress(i: int, outcome) -> None:
        nonlocal done
        task = tasks[i]
        done += len(task)
        status = "done"
        if isinstance(outcome, BaseException):  # recorded in MLflow by the runs themselves; keep going
            status = f"failed: {str(outcome).splitlines()[0] if str(outcome) else type(outcome).__name__}"
        what = task[0].arm if len(task) == 1 else f"{len(task)} runs as one population ({task[0].arm}, ...)"
        print(f"[{done}/{len(jobs)}] {task[0].figure}: {what} {status} ({time.perf_counter() - start:.0f} s)",
              flush=True)

    runner.run_tasks(_run_task, [(uri, experiment, t) for t in tasks], workers, on_done=progress)
