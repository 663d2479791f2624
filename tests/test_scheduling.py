"""The contract: a run's per-epoch history and final weights do not depend on how it was
scheduled (alone, as member k of a population of any K, through any launcher), in float64
and float32, including diverging, early-stopped, dropout, L1 and momentum members."""

import subprocess
import sys

import numpy as np
import pytest

from nnexp import runner
from nnexp.config.names import TIMING_METRICS
from nnexp.train import Record

RECORD_FIELDS = [f for f in Record.__dataclass_fields__ if f not in TIMING_METRICS]


def job_set(dtype: str, regularization: str) -> list:
    """Four jobs of one compatible group: plain, with momentum, diverging, early-stopped."""
    common = ["dataset=digits", "epochs=6", f"dtype={dtype}", f"regularization={regularization}", "tracking=off",
              "lmbda=0.5"]
    variants = [["seed=0", "eta=0.5"], ["seed=1", "eta=0.3", "momentum=0.5"], ["seed=2", "eta=1e5", "init=large"],
                ["seed=3", "eta=2.0", "early_stopping=no_improvement", "early_stopping.patience=1"]]
    return [runner.compose([*common, *v]) for v in variants]


def fingerprint(result) -> tuple:
    h = result.history
    rows = [tuple(getattr(r, f) for f in RECORD_FIELDS) for r in h.records]
    return (h.outcome, h.best_validation_accuracy, h.best_epoch, rows)


def assert_identical(a, b) -> None:
    fa, fb = fingerprint(a), fingerprint(b)
    assert fa[:3] == fb[:3]
    assert len(fa[3]) == len(fb[3])
    for ra, rb in zip(fa[3], fb[3]):  # NaN == NaN for a diverged run's costs
        assert all(x == y or (x != x and y != y) for x, y in zip(ra, rb)), (ra, rb)
    for wa, wb in zip(a.network.weights + a.network.biases, b.network.weights + b.network.biases):
        np.testing.assert_array_equal(wa, wb)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("regularization", ["l2", "l1", "dropout"])
def test_each_job_gets_the_same_history_and_weights_alone_and_in_populations_of_any_k(dtype, regularization):
    jobs = job_set(dtype, regularization)
    alone = [runner.execute(j)[0] for j in jobs]
    outcomes = {r.status for r in alone}
    assert {"diverged", "early_stopped"} <= outcomes, outcomes
    assert alone[1].history.records[-1].training_cost != alone[0].history.records[-1].training_cost
    pairs = runner.execute(jobs[:2]) + runner.execute(jobs[2:])  # K = 2
    everyone = runner.execute(list(reversed(jobs)))[::-1]  # K = 4, in another order
    for one, two, four in zip(alone, pairs, everyone):
        assert_identical(one, two)
        assert_identical(one, four)


def test_the_identity_check_sees_a_different_run():
    a, b = (runner.execute(runner.compose(["dataset=digits", "epochs=2", "tracking=off", f"eta={eta}"]))[0]
            for eta in (0.5, 0.5000001))
    with pytest.raises(AssertionError):
        assert_identical(a, b)


#: tags that say where and by which process a run was recorded (and the sweep's id): they differ
#: between any two runs by design
WHERE_RECORDED = {"nnexp.sweep", "nnexp.record_id", "nnexp.record", "nnexp.host", "nnexp.pid", "nnexp.pid_start",
                  "nnexp.population", "nnexp.population_size"}  # where and how it was scheduled


def _records(uri):
    """Every child run's params, full metric histories, nnexp tags, and model weights."""

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("nnexp")
    out = {}
    for r in client.search_runs([exp.experiment_id]):
        if "mlflow.parentRunId" not in r.data.tags:
            continue
        params = dict(r.data.params)
        metrics = {k: [(m.step, m.value) for m in sorted(client.get_metric_history(r.info.run_id, k),
                                                         key=lambda m: m.step)]
                   for k in r.data.metrics if k not in TIMING_METRICS}
        tags = {k: v for k, v in r.data.tags.items() if k.startswith("nnexp.") and k not in WHERE_RECORDED}
        arts = sorted(a.path for a in client.list_artifacts(r.info.run_id))
        weights = None
        if "model.npz" in arts:
            path = client.download_artifacts(r.info.run_id, "model.npz")
            with np.load(path) as f:
                weights = {k: f[k].copy() for k in f.files}
        key = (params["eta"], params["seed"], params["momentum"], params["regularization"])
        out[key] = (params, metrics, tags, arts, r.info.status, weights)
    return out


def sweep_records(tmp_path, sweep: list[str], launchers=("basic", None)) -> dict:
    """The MLflow records of one sweep run through each launcher (None: the default one)."""
    records = {}
    for launcher in launchers:
        name = launcher or "default"
        uri = f"sqlite:///{tmp_path / name}.db"
        choice = [f"hydra/launcher={launcher}"] if launcher else []
        out = subprocess.run([sys.executable, "-m", "nnexp.run", *sweep, *choice, f"tracking.uri={uri}",
                              f"hydra.sweep.dir={tmp_path / name}"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=900)
        assert out.returncode == 0, out.stderr
        records[name] = _records(uri)
    return records


def assert_same_records(basic: dict, pop: dict) -> None:
    assert set(basic) == set(pop)
    for key in basic:
        (bp, bm, bt, ba, bs, bw), (pp, pm, pt, pa, ps, pw) = basic[key], pop[key]
        assert (bp, bt, ba, bs) == (pp, pt, pa, ps), key
        assert bm == pm, key  # every metric at every step, bit-for-bit
        assert (bw is None) == (pw is None)
        for name in bw or {}:
            np.testing.assert_array_equal(bw[name], pw[name])


@pytest.mark.slow  # 12+ CPU seconds: run by .ci/run
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_basic_and_population_launchers_record_identical_runs(tmp_path, dtype):
    regularization = "l1" if dtype == "float64" else "dropout"  # both kinds of step, one per dtype
    sweep = ["-m", "dataset=digits", "epochs=4", f"dtype={dtype}", "eta=0.4,1e5", "momentum=0,0.5",
             f"regularization={regularization}", "early_stopping=no_improvement", "early_stopping.patience=1"]
    records = sweep_records(tmp_path, sweep)
    basic, pop = records["basic"], records["default"]
    assert len(basic) == 4
    statuses = {rec[2]["nnexp.status"] for rec in basic.values()}
    assert "diverged" in statuses and len(statuses) > 1
    assert_same_records(basic, pop)


@pytest.mark.slow
def test_mnist_sweep_records_are_identical_through_the_basic_and_the_default_launcher(tmp_path, shared_data_dir):
    """At eta 2.5 the dynamics amplify any difference in summation order (the issue that made
    this contract): every metric of every run must still be identical."""
    sweep = ["-m", "seed=0,1,2", "eta=2.5,0.5", "epochs=2", f"dataset.data_dir={shared_data_dir}"]
    records = sweep_records(tmp_path, sweep)
    assert len(records["basic"]) == 6
    assert_same_records(records["basic"], records["default"])
