"""Population training: K runs as one batched computation, equal to K single runs."""

import numpy as np
import pytest
from conftest import alive, descendants

from nnexp.engine.network import init_network
from nnexp.train import (DIVERGED, EARLY_STOPPED, EarlyStopping, HalveOnPlateau, Monitor, Streams,
                         TrainSpec, fit, fit_population)

from test_train import TEST, TRAIN, VAL

ALL = ("training_cost", "training_accuracy", "validation_cost", "validation_accuracy",
       "test_cost", "test_accuracy")
MEMBERS = [  # seed, eta, lmbda, init
    (0, 0.5, 0.1, "scaled"), (1, 0.2, 1.0, "large"), (2, 1.0, 0.0, "scaled"), (0, 0.5, 3.0, "large")]


def single(seed, init, spec, sizes=(8, 10, 3)):
    s = Streams.from_seed(seed)
    net = init_network(list(sizes), s.init, init=init)
    return net, fit(net, TRAIN, spec, validation=VAL, test=TEST, streams=s)


def population(members, specs, sizes=(8, 10, 3)):
    streams = [Streams.from_seed(seed) for seed, *_ in members]
    nets = [init_network(list(sizes), s.init, init=m[3]) for s, m in zip(streams, members)]
    return nets, fit_population(nets, TRAIN, specs, validation=VAL, test=TEST, streams=streams)


def assert_same_history(a, b):
    assert (a.outcome, len(a.records), a.best_epoch) == (b.outcome, len(b.records), b.best_epoch)
    for ra, rb in zip(a.records, b.records):
        assert (ra.epoch, ra.images_seen) == (rb.epoch, rb.images_seen)
        for key in (*ALL, "eta"):
            va, vb = getattr(ra, key), getattr(rb, key)
            assert (va is None) == (vb is None), key
            assert va == vb or (va != va and vb != vb), (key, ra.epoch)  # bit-for-bit (NaN = NaN)


@pytest.mark.parametrize("penalty,dropout,momentum", [
    ("l2", 0.0, 0.0), ("l1", 0.0, 0.0), ("l2", 0.3, 0.0), ("l2", 0.0, 0.7), ("l1", 0.2, 0.5)])
def test_each_member_equals_its_single_run(penalty, dropout, momentum):
    def spec(eta, lmbda, mu):
        return TrainSpec(epochs=4, mini_batch_size=7, eta=eta, lmbda=lmbda, penalty=penalty, dropout=dropout,
                         momentum=mu, monitor=Monitor(metrics=ALL))

    specs = [spec(eta, lmbda, momentum * (i % 2)) for i, (_, eta, lmbda, _) in enumerate(MEMBERS)]
    nets, histories = population(MEMBERS, specs)
    for (seed, eta, lmbda, init), s, net, h in zip(MEMBERS, specs, nets, histories):
        ref_net, ref = single(seed, init, s)
        assert_same_history(h, ref)
        for w, rw in zip(net.weights, ref_net.weights):
            np.testing.assert_array_equal(w, rw)


def test_sub_epoch_monitoring_and_schedules_per_member():
    mon = Monitor(metrics=("training_cost", "validation_accuracy"), every_images=130, validation_sample=50)
    specs = [TrainSpec(epochs=e, mini_batch_size=10, eta=eta, schedule=HalveOnPlateau(patience=2, min_factor=1 / 1024), monitor=mon)
             for e, eta in ((6, 0.5), (3, 2.0), (6, 4.0))]
    members = [(5, 0.5, 0.0, "scaled"), (6, 2.0, 0.0, "scaled"), (7, 4.0, 0.0, "large")]
    _, histories = population(members, specs)
    for (seed, _, _, init), s, h in zip(members, specs, histories):
        assert_same_history(h, single(seed, init, s)[1])


@pytest.mark.parametrize("every, dropout, momentum", [(None, 0.0, 0.0), (40, 0.2, 0.5)])
def test_a_diverging_and_an_early_stopping_member_leave_the_others_unchanged(monkeypatch, every, dropout,
                                                                              momentum):
    from nnexp.engine.stepper import Stepper

    sizes = []  # K of every step: frozen members are dropped from the stack
    step = Stepper.step
    monkeypatch.setattr(Stepper, "step", lambda self, xb, *a: (sizes.append(len(xb)), step(self, xb, *a)))
    es = EarlyStopping(patience=2, restore_best=True)
    specs = [TrainSpec(epochs=12, mini_batch_size=10, eta=eta, lmbda=lmbda, early_stopping=es, dropout=dropout,
                       momentum=momentum, monitor=Monitor(metrics=ALL, every_images=every))
             for eta, lmbda in ((0.5, 0.1), (100.0, 200.0), (3.0, 0.0), (0.3, 1.0))]
    members = [(1, 0.5, 0.1, "scaled"), (2, 100.0, 200.0, "large"), (3, 3.0, 0.0, "large"), (4, 0.3, 1.0, "scaled")]
    nets, histories = population(members, specs)
    outcomes = [h.outcome for h in histories]
    assert outcomes[1] == DIVERGED and EARLY_STOPPED in outcomes
    assert sizes[0] == 4 and sizes == sorted(sizes, reverse=True) and sizes[-1] < 4
    for (seed, _, _, init), s, h, net in zip(members, specs, histories, nets):
        ref_net, ref = single(seed, init, s)
        assert_same_history(h, ref)
        if h.outcome != DIVERGED:  # the early-stopped member got its best parameters back
            np.testing.assert_array_equal(net.weights[0], ref_net.weights[0])


def test_a_pruned_member_stops_and_the_others_finish_as_they_would_alone():
    """study.population=K: the pruner stops one member (its observer says "pruned"); the others
    keep every value they have alone."""
    from nnexp.train import PRUNED

    specs = [TrainSpec(epochs=6, mini_batch_size=10, eta=eta, lmbda=lmbda, monitor=Monitor(metrics=ALL))
             for _, eta, lmbda, _ in MEMBERS[:3]]
    streams = [Streams.from_seed(seed) for seed, *_ in MEMBERS[:3]]
    nets = [init_network([8, 10, 3], s.init, init=m[3]) for s, m in zip(streams, MEMBERS[:3])]
    prune_at_2 = lambda record, net: PRUNED if record.epoch == 2 else None  # noqa: E731
    histories = fit_population(nets, TRAIN, specs, validation=VAL, test=TEST, streams=streams,
                               observers=[[], [prune_at_2], []])
    assert histories[1].outcome == PRUNED and [r.epoch for r in histories[1].records] == [1, 2]
    alone = single(MEMBERS[1][0], MEMBERS[1][3], specs[1])[1]
    for a, b in zip(histories[1].records, alone.records):  # up to the pruning, the same values
        assert (a.validation_accuracy, a.training_cost) == (b.validation_accuracy, b.training_cost)
    for i in (0, 2):
        seed, _, _, init = MEMBERS[i]
        ref_net, ref = single(seed, init, specs[i])
        assert_same_history(histories[i], ref)
        np.testing.assert_array_equal(nets[i].weights[0], ref_net.weights[0])


@pytest.mark.parametrize("every, dropout, momentum", [(None, 0.0, 0.0), (40, 0.2, 0.5)])
def test_a_member_handed_over_at_an_epoch_boundary_goes_on_alone_exactly_as_it_would_have(every, dropout,
                                                                                           momentum):
    """``release``: members leave the population with their state (to an idle process, in a
    sweep) and, resumed alone from it, end with the history and weights of their single run;
    the members left behind are unchanged too."""
    from nnexp.train.checkpoint import MemberState

    specs = [TrainSpec(epochs=5, mini_batch_size=10, eta=eta, lmbda=lmbda, dropout=dropout, momentum=momentum,
                       schedule=HalveOnPlateau(patience=1 if every is None else 2, min_factor=1e-9),
                       monitor=Monitor(metrics=ALL, every_images=every)) for _, eta, lmbda, _ in MEMBERS]
    streams = [Streams.from_seed(seed) for seed, *_ in MEMBERS]
    nets = [init_network([8, 10, 3], s.init, init=m[3]) for s, m in zip(streams, MEMBERS)]
    asked, handed = [], {}

    def release(left, epoch_seconds):
        assert epoch_seconds > 0
        asked.append(dict(left))
        return [i for i in (1, 3) if left.get(i) == 3]  # after epoch 2 of 5

    def released(i, state):
        handed[i] = state

    histories = fit_population(nets, TRAIN, specs, validation=VAL, test=TEST, streams=streams,
                               release=release, released=released)
    assert asked[0] == {0: 4, 1: 4, 2: 4, 3: 4} and sorted(handed) == [1, 3]  # asked from epoch 1 on
    assert [set(a) for a in asked[2:]] == [{0, 2}, {0, 2}]  # then the members left, while two train
    assert any(len({r.eta for r in h.records}) > 1 for h in histories)  # the schedule's state goes along too
    for i, (seed, _, _, init) in enumerate(MEMBERS):
        ref_net, ref = single(seed, init, specs[i])
        if i in handed:
            state = handed[i]
            assert isinstance(state, MemberState) and state.position.epoch == 2 and not state.finished
            assert histories[i].records[-1].epoch == 2  # its history here stops at the hand-over
            s = Streams.from_seed(seed)
            net = init_network([8, 10, 3], s.init, init=init)
            (h,) = fit_population([net], TRAIN, [specs[i]], validation=VAL, test=TEST, streams=[s],
                                  resume=[state])
            assert h.train_seconds >= state.history.train_seconds > 0  # the time before goes on
        else:
            net, h = nets[i], histories[i]
        assert_same_history(h, ref)
        for w, rw in zip(net.weights + net.biases, ref_net.weights + ref_net.biases):
            np.testing.assert_array_equal(w, rw)


def test_incompatible_members_are_refused():
    streams = [Streams.from_seed(0), Streams.from_seed(1)]
    nets = [init_network([8, 10, 3], streams[0].init), init_network([8, 5, 3], streams[1].init)]
    specs = [TrainSpec(epochs=1, mini_batch_size=10, eta=0.5)] * 2
    with pytest.raises(ValueError, match="share architecture"):
        fit_population(nets, TRAIN, specs, streams=streams)


def test_float32_population_members_equal_their_float32_single_runs():
    streams = [Streams.from_seed(i) for i in range(3)]
    nets = [init_network([8, 10, 3], s.init, dtype=np.float32) for s in streams]
    specs = [TrainSpec(epochs=3, mini_batch_size=10, eta=eta) for eta in (0.1, 0.5, 1.0)]
    histories = fit_population(nets, TRAIN, specs, validation=VAL, streams=streams)
    assert all(net.weights[0].dtype == np.float32 for net in nets)
    for i, (spec, net, h) in enumerate(zip(specs, nets, histories)):
        s = Streams.from_seed(i)
        alone = init_network([8, 10, 3], s.init, dtype=np.float32)
        ref = fit(alone, TRAIN, spec, validation=VAL, streams=s)
        assert_same_history(h, ref)
        np.testing.assert_array_equal(net.weights[0], alone.weights[0])


def test_evaluation_skipping_all_zero_columns_equals_the_dense_forward_pass():
    from nnexp.engine.costs import COSTS
    from nnexp.engine.network import EvaluationSet, evaluate, forward

    rng = np.random.default_rng(3)
    x = rng.random((500, 40)) * (rng.random((500, 40)) > 0.6)
    x[:, [0, 1, 7, 39]] = 0.0  # a border that is blank in every image
    labels = rng.integers(0, 4, 500)
    prepared = EvaluationSet(x)
    assert prepared.xt.shape == (36, 500) and 0 not in prepared.cols and 39 not in prepared.cols
    for block in (7, 256, 500, 4096):  # transposed block by block, the last block partial or not
        np.testing.assert_array_equal(EvaluationSet(x, block=block).xt, x[:, prepared.cols].T)
    np.testing.assert_array_equal(EvaluationSet(x[:, 2:39], block=7).xt, x[:, 2:39].T)
    for s in range(3):
        net = init_network([40, 6, 4], Streams.from_seed(s).init)
        acts, z = forward(net, x)  # the dense, untransposed reference
        y = np.eye(4)[labels]
        cost, acc = evaluate(net, prepared, labels, chunk=128)
        assert cost == pytest.approx(COSTS[net.cost].fn(z, acts[-1], y) / 500, rel=1e-12)
        assert acc == np.mean(acts[-1].argmax(axis=1) == labels)
        assert evaluate(net, x, labels, chunk=128) == (cost, acc)  # a raw array is prepared the same way
    assert EvaluationSet(x[:, 2:39]).cols is None  # under 5% to gain: the set is used as it is


# -- the Hydra launcher -----------------------------------------------------------------------
def _records(uri):
    """Child runs by (eta, seed): (params, metric names, nnexp tags, artifacts, MLflow status)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("nnexp")
    out = {}
    for r in client.search_runs([exp.experiment_id]):
        if "mlflow.parentRunId" in r.data.tags:
            params = dict(r.data.params)
            tags = {k: v for k, v in r.data.tags.items() if k.startswith("nnexp.")}
            arts = sorted(a.path for a in client.list_artifacts(r.info.run_id))
            out[(params["eta"], params["seed"])] = (params, sorted(r.data.metrics), tags, arts, r.info.status)
    return out


def test_jobs_are_grouped_by_compatibility_and_spread_over_workers():
    from nnexp.config.run_schema import RunConfig
    from nnexp.runner import plan_groups

    configs = []
    for eta in (0.1, 0.2, 0.3):
        for seed in range(5):
            c = RunConfig()
            c.eta, c.seed = eta, seed
            configs.append(c)
    odd = RunConfig()
    odd.sizes = [784, 100, 10]
    configs.append(odd)
    groups = plan_groups(configs, max_members=16, max_memory_mb=4096, workers=2)
    assert sorted(len(g) for g in groups) == [1, 15]  # two groups already keep two workers busy
    groups = plan_groups(configs[:15], max_members=16, max_memory_mb=4096, workers=2)
    assert sorted(len(g) for g in groups) == [7, 8]
    seeds = [{configs[i].seed for i in g} for g in groups]  # same seed, same data order: kept together
    assert sorted(len(s) for s in seeds) == [3, 3] and len(seeds[0] & seeds[1]) == 1
    groups = plan_groups(configs[:15], max_members=4, max_memory_mb=4096, workers=2)
    assert sorted(len(g) for g in groups) == [3, 4, 4, 4] and sorted(sum(groups, [])) == list(range(15))


def _changed(**changes):
    """The default run config with dotted-path changes, e.g. {"dataset.train_size": 100}."""
    from nnexp.config.run_schema import RunConfig

    c = RunConfig()
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        obj = c
        for part in parents:
            obj = getattr(obj, part)
        setattr(obj, leaf, value)
    return c


@pytest.mark.parametrize("changes", [
    {"dataset.name": "fashion_mnist"}, {"dataset.train_size": 1000}, {"dataset.classes": [0, 1]},
    {"dataset.expanded": True}, {"dataset.data_dir": "/elsewhere"}, {"cost.name": "quadratic"},
    {"dtype": "float32"}, {"mini_batch_size": 20}, {"regularization.penalty": "l1"},
    {"regularization.dropout": 0.5}, {"monitor.every_images": 1000}, {"monitor.validation_sample": 100},
    {"monitor.metrics": ["validation_accuracy"]}, {"sizes": [784, 100, 10]}, {"hidden": "tanh"}])
def test_each_grouping_key_keeps_jobs_apart(changes):
    """The README's grouping rule: jobs that differ in data, architecture, cost, dtype, mini-batch
    size, penalty type, dropout on/off or monitoring never train as one population."""
    from nnexp.runner import plan_groups

    assert sorted(map(len, plan_groups([_changed(), _changed(**changes)], workers=1))) == [1, 1]


@pytest.mark.parametrize("changes", [
    {"eta": 3.0}, {"lmbda": 0.1}, {"seed": 7}, {"epochs": 5}, {"momentum": 0.5},
    {"schedule.name": "halve_on_plateau"}, {"early_stopping.name": "no_improvement"}, {"init.name": "large"},
    ({"regularization.dropout": 0.5}, {"regularization.dropout": 0.2})])
def test_what_may_differ_inside_a_population(changes):
    """Every scalar (eta, lambda, seed, epochs, momentum, schedule, early stopping, the initial
    weights, the dropout rate when both use dropout) may differ between members: such jobs train
    as one population."""
    from nnexp.runner import plan_groups

    first, second = changes if isinstance(changes, tuple) else ({}, changes)
    assert plan_groups([_changed(**first), _changed(**second)], workers=1) == [[0, 1]]


def test_seeds_n_expands_to_a_multirun_on_the_population_launcher_by_default():
    from nnexp.cli.run import default_launcher, expand_seeds

    assert default_launcher(expand_seeds(["+experiment=overfitting", "seeds=5"])) == [
        "-m", "+experiment=overfitting", "seed=range(0,5)", "hydra/launcher=population"]
    assert default_launcher(expand_seeds(["seed=3", "seeds=2", "hydra/launcher=joblib", "-m"])) == [
        "hydra/launcher=joblib", "-m", "seed=range(3,5)"]
    assert default_launcher(["-m", "eta=1,2"]) == ["-m", "eta=1,2", "hydra/launcher=population"]
    assert default_launcher(["eta=1"]) == ["eta=1"]  # a single run needs no launcher
    assert expand_seeds(["seeds=1", "seed=7"]) == ["seed=7"]
    assert expand_seeds(["eta=0.1"]) == ["eta=0.1"]


@pytest.mark.parametrize("args, message", [
    (["seeds=0"], "seeds must be a whole number >= 1"),
    (["seeds=x"], "seeds must be a whole number >= 1"),
    (["seeds=3", "seed=1,2"], "give seed= a single whole number"),
])
def test_bad_seeds_is_one_line(args, message, capsys):
    from nnexp.run import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_seeds_trains_the_replicates_as_one_population(tmp_path):
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    out = subprocess.run([sys.executable, "-m", "nnexp.run", "dataset=digits", "epochs=2", "seeds=3", "seed=4",
                          "hydra.launcher.workers=1", f"tracking.uri={uri}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert _population_sizes(uri) == [3]
    assert "3 runs (3 completed)" in out.stdout
    assert sorted(key[1] for key in _records(uri)) == ["4", "5", "6"]


def test_more_groups_than_workers_each_run_once(tmp_path):
    """Singleton groups on 2 workers: this process and one spawned worker share them out."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    out = subprocess.run([sys.executable, "-m", "nnexp.run", "-m", "dataset=digits", "epochs=1",
                          "eta=0.1,0.2,0.3,0.4,0.5", "hydra/launcher=population", "hydra.launcher.max_members=1",
                          f"tracking.uri={uri}"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert _population_sizes(uri) == [1, 1, 1, 1, 1]
    assert "5 runs (5 completed)" in out.stdout
    assert sorted(eta for eta, _ in _records(uri)) == ["0.1", "0.2", "0.3", "0.4", "0.5"]


def _population_sizes(uri) -> list[int]:
    """The sizes of the populations the sweep's runs trained in, read from their tags (each run:
    its population's id and size), checked against the number of runs that share each id."""
    from collections import Counter

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = [r for r in client.search_runs([client.get_experiment_by_name("nnexp").experiment_id])
            if "mlflow.parentRunId" in r.data.tags]
    members = Counter(r.data.tags["nnexp.population"] for r in runs)
    for r in runs:
        assert int(r.data.tags["nnexp.population_size"]) == members[r.data.tags["nnexp.population"]]
    return sorted(members.values())


def _runs_with_metrics(db) -> int:
    """Runs that have logged a validation accuracy, read with plain sqlite (an MLflow client
    would race the launcher on creating the store's tables)."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return con.execute("select count(distinct run_uuid) from metrics "
                               "where key = 'validation_accuracy'").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def _metric_rows(db) -> int:
    """Every metric value logged so far (plain sqlite, read-only)."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return con.execute("select count(*) from metrics").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow  # multi-process robustness: run by .ci/run
def test_sigterm_to_a_population_sweep_leaves_every_run_killed(tmp_path):
    """The launching process trains a group and waits on a spawned worker: one SIGTERM to it
    ends both groups and the parent run, each recorded KILLED with its metrics."""
    import signal
    import subprocess
    import sys
    import time

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "nnexp.run", "-m", "dataset=digits", "epochs=100000",
                             "eta=0.1,0.2,0.3,0.4", "hydra/launcher=population", f"tracking.uri={uri}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)

    try:
        deadline = time.time() + 120
        while time.time() < deadline and _runs_with_metrics(tmp_path / "m.db") < 4 and proc.poll() is None:
            time.sleep(0.5)
        assert _runs_with_metrics(tmp_path / "m.db") == 4, "the runs never all started"
        workers = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            print(proc.communicate())
    assert proc.returncode == 130
    assert workers and not {p for p in workers if alive(p)}  # no worker left behind
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("nnexp").experiment_id])
    assert len(runs) == 5 and {r.info.status for r in runs} == {"KILLED"}
    assert {r.data.tags.get("nnexp.status") for r in runs if "mlflow.parentRunId" in r.data.tags} == {"killed"}
    assert "Traceback" not in out + err
    assert "interrupted: sweep ended, 4 runs (4 killed)" in out + err


@pytest.mark.slow  # multi-process robustness: run by .ci/run
def test_a_killed_launcher_leaves_its_worker_to_record_its_group_and_exit(tmp_path):
    """SIGKILL cannot be caught: the launching process's own group is lost with it, but the
    spawned worker still finishes and records its group, then exits instead of hanging."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    # 300 epochs: when the worker's two runs hold their first evaluation in their records, the
    # launcher's pair stood at epoch 25-54 (measured, three CPU hogs beside it or not)
    proc = subprocess.Popen([sys.executable, "-m", "nnexp.run", "-m", "dataset=digits", "epochs=300",
                             "eta=0.1,0.2,0.3,0.4", "hydra/launcher=population", f"tracking.uri={uri}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)

    def evaluated() -> int:  # the sweep's runs whose local record holds an evaluation
        return sum('"event":"metrics"' in p.read_text() for p in tmp_path.glob("multirun/*/*/*/record/events.jsonl"))

    try:
        deadline = time.time() + 120
        while time.time() < deadline and evaluated() < 4 and proc.poll() is None:
            time.sleep(0.05)
        assert evaluated() == 4 and proc.poll() is None
        kids = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    finally:
        proc.kill()
        proc.wait()

    def alive(pid):
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] not in "ZX"
        except FileNotFoundError:
            return False

    # the worker trains on after the launcher died: wait while it makes progress (its logged metrics
    # grow), not for a fixed time; a worker that neither progresses nor exits for 60 s is stuck
    last, still = -1, time.monotonic()
    while any(alive(p) for p in kids):
        n = _metric_rows(tmp_path / "m.db")
        if n != last:
            last, still = n, time.monotonic()
        assert time.monotonic() - still < 60, "a worker outlived the launcher without training"
        time.sleep(0.5)
    records = _records(uri)
    assert {eta: rec[4] for (eta, _), rec in records.items()} == {
        "0.1": "RUNNING", "0.2": "RUNNING", "0.3": "FINISHED", "0.4": "FINISHED"}


def test_runs_handed_to_a_worker_that_fails_go_on_in_the_launching_process(tmp_path, monkeypatch):
    """``runner.handover``'s fallback: the worker given the runs fails (here: its future holds the
    pool's BrokenProcessPool at once). The launching process claims the released records back and
    trains the runs on itself from the states it handed over: each run ends as it would have,
    FINISHED, every evaluation logged once, one warning line."""
    import concurrent.futures
    import logging
    from concurrent.futures.process import BrokenProcessPool

    from mlflow.tracking import MlflowClient

    from nnexp import runner

    class BrokenWorker:  # the pool's spare capacity, as WorkerPool.run(lend=True) gives it, with a worker that died
        def __init__(self):
            self.submitted = []

        def idle(self):
            return not self.submitted

        def submit(self, fn, arg):
            self.submitted.append(arg)
            future = concurrent.futures.Future()
            future.set_exception(BrokenProcessPool("a worker died"))
            return future

    from nnexp.runner import handover

    monkeypatch.setattr(handover, "MIN_SECONDS_LEFT", 0.0)  # digits' epochs take milliseconds: any time left will do
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    jobs = [runner.compose(["dataset=digits", f"eta={eta}", "epochs=6", f"tracking.uri={uri}"]) for eta in (0.1, 0.5)]
    spare = BrokenWorker()
    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage()) if record.levelno >= logging.WARNING else None
    logging.getLogger("nnexp.population").addHandler(handler)
    try:
        results = runner.execute(jobs, spare=spare)
    finally:
        logging.getLogger("nnexp.population").removeHandler(handler)
    (handed,) = spare.submitted
    assert [(job.config.eta, state.position.epoch) for job, state, _ in handed] == [(0.1, 1)]  # after epoch 1
    assert warnings == ["the worker given 1 run(s) failed (a worker died): they go on in this process"]
    client = MlflowClient(uri)
    for eta, result in zip((0.1, 0.5), results):
        (alone,) = runner.execute(runner.compose(["dataset=digits", f"eta={eta}", "epochs=6", "tracking=off"]))
        assert result.history.column("validation_accuracy") == alone.history.column("validation_accuracy")
        np.testing.assert_array_equal(result.network.weights[0], alone.network.weights[0])
        run = client.get_run(result.run_id)
        assert run.info.status == "FINISHED" and "nnexp.resumed" not in run.data.tags
        steps = [m.step for m in client.get_metric_history(result.run_id, "validation_accuracy")]
        assert sorted(steps) == list(range(1, 7))


HAND_OVER_SCRIPT = """
import json, logging, os, sys, time
from nnexp import runner

def after_c_finished(uri):
    \"\"\"Run a's observer: at its first evaluation, wait until run c (the worker's) is FINISHED
    in the store; the worker idles from then on, while a and b have 149 epochs left.\"\"\"
    seen = []

    def observe(record, net):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        deadline = time.monotonic() + 120  # a bound on a hang, not a timing assumption
        while not seen and time.monotonic() < deadline:
            exp = client.get_experiment_by_name("nnexp")
            runs = exp and client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'c'")
            if runs and runs[0].info.status == "FINISHED":
                seen.append(True)
            time.sleep(0.02)
        return None
    return observe

if __name__ == "__main__":  # worker processes are spawned: the README's guard
    logging.basicConfig(level=logging.INFO)
    uri = sys.argv[1]
    def job(name, eta, epochs):
        overrides = ["dataset=digits", f"eta={eta}", f"epochs={epochs}", f"tracking.uri={uri}"]
        return runner.compose(overrides).with_(run_name=name)
    jobs = [job("a", 0.1, 150).with_(observers=[after_c_finished(uri)]), job("b", 0.5, 150), job("c", 1.0, 3)]
    results = runner.run_jobs(jobs, workers=2)
    print(json.dumps({"pid": os.getpid(), "results": [[r.status, r.history.column("validation_accuracy"),
                      r.network.weights[0].sum().item(), r.run_id] for r in results]}))
"""


@pytest.mark.slow  # 12+ CPU seconds: run by .ci/run
def test_run_jobs_as_a_python_call_and_an_idle_worker_takes_over_half_of_a_population(tmp_path):
    """The README's Python API, ``runner.run_jobs(jobs, workers=2)`` from a script: three runs on
    two processes train as 2 + 1, each to exactly what ``runner.execute`` gives it alone in this
    process (checked for the two that ran in the worker). Once the worker's run ends, the
    launching process hands one of its two over at an epoch's boundary (``runner.handover``): it
    goes on in the worker as the same MLflow run, each evaluation logged once, FINISHED, owned by
    the worker from then on, its population tags as they were, not tagged resumed."""
    import json
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    from nnexp import runner

    script = tmp_path / "sweep.py"
    script.write_text(HAND_OVER_SCRIPT)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    out = subprocess.run([sys.executable, str(script), uri], capture_output=True, text=True, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "a worker is idle: 1 of 2 runs go on there (eta=0.5 seed=0)" in out.stderr  # b: a has an observer
    got = json.loads(out.stdout.splitlines()[-1])
    # b (handed over) and c (the worker's own) against their runs alone; a, trained where it began
    # as a member of a population, is as test_scheduling's runs
    for (status, accuracies, weight_sum, _), (eta, epochs) in zip(got["results"][1:], ((0.5, 150), (1.0, 3))):
        (alone,) = runner.execute(runner.compose(["dataset=digits", f"eta={eta}", f"epochs={epochs}", "tracking=off"]))
        assert [status, accuracies, weight_sum] == [alone.status, alone.history.column("validation_accuracy"),
                                                    alone.network.weights[0].sum().item()]
    accuracies, run_id = got["results"][1][1], got["results"][1][3]
    client = MlflowClient(uri)
    run, a, c = (client.get_run(r[3]) for r in (got["results"][1], got["results"][0], got["results"][2]))
    assert run.info.status == "FINISHED" and "nnexp.resumed" not in run.data.tags
    assert a.data.tags["nnexp.pid"] == str(got["pid"]) != c.data.tags["nnexp.pid"]  # a here, c in the worker
    assert run.data.tags["nnexp.pid"] == c.data.tags["nnexp.pid"]  # b ended in the worker
    assert (run.data.tags["nnexp.population"], run.data.tags["nnexp.population_size"]) == (
        a.data.tags["nnexp.population"], "2")  # it started with a
    assert c.data.tags["nnexp.population_size"] == "1" and c.data.tags["nnexp.population"] != a.data.tags["nnexp.population"]
    history = client.get_metric_history(run_id, "validation_accuracy")
    assert sorted(m.step for m in history) == list(range(1, 151))  # every evaluation, once
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == accuracies
    assert run.data.metrics["train_seconds"] > 0


def test_the_memory_cap_splits_a_sweep_into_smaller_populations(tmp_path):
    """[64,30,10] members take 3.2 MB each (parameters, batches, evaluation): a 7 MB cap holds two."""
    import subprocess
    import sys

    from nnexp import runner
    from nnexp.runner.groups import member_megabytes

    per_member = member_megabytes(runner.compose(["dataset=digits"]).config)
    assert 2 * per_member <= 7 < 3 * per_member
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    out = subprocess.run([sys.executable, "-m", "nnexp.run", "-m", "dataset=digits", "epochs=1", "seed=range(6)",
                          "hydra.launcher.max_memory_mb=7", "hydra.launcher.workers=1", f"tracking.uri={uri}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert _population_sizes(uri) == [2, 2, 2]
    assert len(_records(uri)) == 6
