"""``python -m nnexp.run`` end to end: real subprocesses, a real MLflow SQLite store."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from mlflow.tracking import MlflowClient

from conftest import free_port, in_store, store_created
from nnexp.config.run_schema import to_run_config
from nnexp.config.errors import ConfigError
from nnexp.runner import check_overrides

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
PER_EPOCH = ["training_cost", "training_accuracy", "validation_cost", "validation_accuracy",
             "test_cost", "test_accuracy", "eta", "epoch_seconds"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


def nnexp_run(*args, timeout=180, **kw):
    return subprocess.run([sys.executable, "-m", "nnexp.run", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)


def all_runs(uri):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("nnexp")
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def test_single_run_on_digits_is_fully_tracked(store):
    out = nnexp_run("dataset=digits", "epochs=3", "seed=7")
    assert out.returncode == 0, out.stderr
    client, runs = all_runs(store)
    assert len(runs) == 1
    run = runs[0]
    rid = run.info.run_id
    assert run.info.status == "FINISHED" and run.data.tags["nnexp.status"] == "completed"
    assert rid in out.stdout and "best validation accuracy" in out.stdout  # the summary line
    p = run.data.params
    for key in ("eta", "lmbda", "mini_batch_size", "cost", "regularization", "init", "schedule",
                "early_stopping", "sizes", "dataset", "seed", "epochs"):
        assert key in p, key
    assert (p["eta"], p["seed"], p["sizes"], p["cost"], p["dataset"]) == ("0.5", "7", "[64, 30, 10]", "cross_entropy", "digits")
    for key in PER_EPOCH:
        hist = client.get_metric_history(rid, key)
        assert sorted(m.step for m in hist) == [1, 2, 3], key
    val = [m.value for m in client.get_metric_history(rid, "validation_accuracy")]
    assert run.data.metrics["best_validation_accuracy"] == max(val)
    assert run.data.metrics["best_epoch"] in (1, 2, 3)
    assert {a.path for a in client.list_artifacts(rid)} >= {"config.yaml", "history.csv", "model.npz"}
    local = client.download_artifacts(rid, "", str(Path(store[len("sqlite:///"):]).parent / "dl"))
    assert len(Path(local, "history.csv").read_text().strip().splitlines()) == 4
    with np.load(Path(local, "model.npz"), allow_pickle=False) as f:
        assert f["w0"].shape == (64, 30)
    assert "eta: 0.5" in Path(local, "config.yaml").read_text()
    (ds,) = run.inputs.dataset_inputs
    assert ds.dataset.name == "digits" and len(ds.dataset.digest) == 32
    assert run.data.tags["nnexp.dataset_sha256"].startswith(ds.dataset.digest)
    assert "mlflow.source.git.commit" in run.data.tags or not (REPO / ".git").exists()


def test_multirun_gives_a_parent_and_nested_children_and_a_bad_or_diverging_job_is_contained(store):
    """On the default (population) launcher: a diverging job is recorded, a bad job is one line,
    and the others run."""
    out = nnexp_run("-m", "dataset=digits", "epochs=2", "eta=0.1,0.5,1000,-1")
    assert out.returncode == 0 and "Traceback" not in out.stderr + out.stdout, out.stderr
    assert "eta must be a positive number, got -1.0" in out.stdout
    client, runs = all_runs(store)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert {c.data.tags["nnexp.sweep"] for c in children} == {parent.data.tags["nnexp.sweep"]}
    by_eta = {c.data.params["eta"]: c for c in children}
    assert set(by_eta) == {"0.1", "0.5", "1000.0"}
    assert by_eta["1000.0"].data.tags["nnexp.status"] == "diverged"
    assert by_eta["1000.0"].info.status == "FINISHED"
    assert len(client.get_metric_history(by_eta["1000.0"].info.run_id, "training_cost")) >= 1  # curves kept
    for eta in ("0.1", "0.5"):
        assert by_eta[eta].data.tags["nnexp.status"] == "completed"
        assert len(client.get_metric_history(by_eta[eta].info.run_id, "validation_accuracy")) == 2
    assert parent.info.status == "FINISHED"
    assert "3 runs (2 completed, 1 diverged)" in out.stdout + out.stderr


def test_joblib_parallel_multirun_on_a_fresh_store_loses_no_run(store):
    out = nnexp_run("-m", "hydra/launcher=joblib", "dataset=digits", "epochs=2", "seed=1,2")
    assert out.returncode == 0, out.stderr
    _, runs = all_runs(store)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 3 and len(children) == 2
    assert {r.data.params["seed"] for r in children} == {"1", "2"}
    assert all(r.info.status == "FINISHED" for r in runs)


# -- results never depend on scheduling: through any launcher, as a study trial ------------------
SWEPT = ["dataset=digits", "epochs=3", "monitor.progress=false"]


def two_at_a_time(commands: list[tuple[list[str], Path]]) -> None:
    """Run each command (argv, working directory), two at once (one per core); each must succeed."""
    for i in range(0, len(commands), 2):
        procs = [subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for argv, cwd in commands[i:i + 2]]
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]


def plain_runs(root: Path, argvs: list[list[str]]) -> list:
    """``python -m nnexp.run ARGS`` for each argv, each in its own directory with its own store;
    the tracked run of each, with its store's URI."""
    uris = [f"sqlite:///{root / f'plain{i}' / 'mlflow.db'}" for i in range(len(argvs))]
    for i in range(len(argvs)):
        (root / f"plain{i}").mkdir()
    two_at_a_time([([sys.executable, "-m", "nnexp.run", *args, f"tracking.uri={uri}"], root / f"plain{i}")
                   for i, (args, uri) in enumerate(zip(argvs, uris))])
    return [(uri, all_runs(uri)[1][0]) for uri in uris]


@pytest.fixture(scope="module")
def plain_digits(tmp_path_factory):
    """The plain single runs of the launcher sweeps' jobs: (dtype, seed) -> (store URI, run)."""
    keys = [(dtype, seed) for dtype in ("float64", "float32") for seed in (0, 1)]
    runs = plain_runs(tmp_path_factory.mktemp("plain"), [[*SWEPT, f"dtype={d}", f"seed={s}"] for d, s in keys])
    return dict(zip(keys, runs))


@pytest.mark.parametrize("launcher, sweep, n_runs", [
    ("joblib", ["dtype=float64,float32", "seed=0,1"], 4),
    ("submitit_local", ["dtype=float64,float32", "seed=1"], 2),  # two jobs: submitit's are the slower to start
], ids=["joblib", "submitit_local"])
@pytest.mark.slow  # 12+ CPU seconds with plain_digits: run by .ci/run
@pytest.mark.xdist_group("plain_digits")  # one worker trains the plain runs once
def test_a_sweep_through_another_launcher_gives_each_run_exactly_its_plain_run(store, plain_digits, launcher, sweep,
                                                                                n_runs):
    """The README: a run's every metric and its final weights are bit-for-bit the same alone and
    through any launcher, in float64 and float32. Each run of a sweep through joblib /
    submitit_local against the plain ``nnexp.run`` of its configuration."""
    from conftest import assert_same_outcome, run_outcome

    out = nnexp_run("-m", f"hydra/launcher={launcher}", *SWEPT, *sweep)
    assert out.returncode == 0, out.stderr[-3000:]
    _, runs = all_runs(store)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == n_runs and {r.data.params["dtype"] for r in children} == {"float64", "float32"}
    for got in children:
        uri, alone = plain_digits[(got.data.params["dtype"], int(got.data.params["seed"]))]
        assert got.data.params == alone.data.params  # the same configuration
        assert got.data.tags["nnexp.config_hash"] == alone.data.tags["nnexp.config_hash"]
        want = run_outcome(uri, alone)
        assert want[1]["w0"].dtype == np.dtype(got.data.params["dtype"]) and len(want[0]["validation_accuracy"]) == 3
        assert_same_outcome(run_outcome(store, got), want)


@pytest.mark.slow  # 12+ CPU seconds: run by .ci/run
def test_a_study_trial_gives_exactly_the_plain_run_of_its_configuration(tmp_path):
    """The README: bit-for-bit the same as a study trial, in float64 and float32. A random-search
    trial's run (its configuration read back from its MLflow params) against ``nnexp.run`` of that
    configuration; the trial scores no test set, so the metrics both log are compared."""
    from conftest import assert_same_outcome, run_outcome

    dtypes = ("float64", "float32")
    studies = []
    for dtype in dtypes:
        (tmp_path / dtype).mkdir()
        studies.append(([sys.executable, "-m", "nnexp.study", "study=random", "dataset=digits", f"dtype={dtype}",
                         "study.epochs=3", "study.n_trials=2", "study.workers=1", "study.stop_after=search",
                         f"study.storage=sqlite:///{tmp_path / dtype / 'optuna.db'}",
                         f"tracking.uri=sqlite:///{tmp_path / dtype / 'mlflow.db'}"], tmp_path / dtype))
    two_at_a_time(studies)
    trials = []
    for dtype in dtypes:
        uri = f"sqlite:///{tmp_path / dtype / 'mlflow.db'}"
        by_number = {r.data.tags["nnexp.trial"]: r for r in all_runs(uri)[1] if "nnexp.trial" in r.data.tags}
        assert sorted(by_number) == ["0", "1"]
        assert {r.data.tags["nnexp.status"] for r in by_number.values()} == {"completed"}
        trials.append((uri, by_number["0"]))
    commands = []
    for _, trial in trials:
        p = trial.data.params
        commands.append([f"dataset={p['dataset']}", f"early_stopping={p['early_stopping']}",
                         f"monitor.metrics=[{','.join(json.loads(p['monitor.metrics']))}]",
                         *(f"{k}={p[k]}" for k in ("eta", "lmbda", "mini_batch_size", "epochs", "seed", "dtype"))])
    for dtype, (uri, trial), (plain_uri, alone) in zip(dtypes, trials, plain_runs(tmp_path, commands)):
        assert alone.data.params == trial.data.params  # the same configuration
        assert alone.data.tags["nnexp.config_hash"] == trial.data.tags["nnexp.config_hash"]
        got, want = run_outcome(uri, trial), run_outcome(plain_uri, alone)
        shared = sorted(set(got[0]) & set(want[0]))
        assert {"training_cost", "validation_accuracy", "eta", "best_validation_accuracy"} <= set(shared)
        assert want[1]["w0"].dtype == np.dtype(dtype) and len(want[0]["validation_accuracy"]) == 3
        assert_same_outcome(got, want, metrics=shared)


def wait_for_metrics(uri: str, n: int, runs: int = 1, timeout: float = 60) -> None:
    """Until ``runs`` runs have logged at least ``n`` validation accuracies (an observable event,
    not a sleep)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if not store_created(uri):
                raise FileNotFoundError(uri)
            client, found = all_runs(uri)
            counts = [len(client.get_metric_history(r.info.run_id, "validation_accuracy")) for r in found]
            if sum(c >= n for c in counts) >= runs:
                return
        except Exception:  # noqa: BLE001 - the store is still being created
            pass
        time.sleep(0.3)
    raise AssertionError(f"no {runs} run(s) with {n} evaluations within {timeout} s")


def assert_one_interrupted_line(code: int, out: str, err: str) -> None:
    """The README's promise: exit code 130 and one line, no traceback."""
    assert code == 130, (code, out, err)
    said = [line for line in (out + err).splitlines() if "interrupted: " in line]
    assert len(said) == 1 and "KILLED" in said[0], out + err
    assert "Traceback" not in out + err


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])  # the same handler: Ctrl-C in .ci/run's slow part
def test_sigterm_or_ctrl_c_leaves_the_run_killed_with_its_metrics(store, signum):
    proc = subprocess.Popen([sys.executable, "-m", "nnexp.run", "dataset=digits", "epochs=100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60  # the run's record says when its run exists in the store (created, migrated)
    while time.time() < deadline and not any(in_store(p.parent) for p in Path.cwd().rglob("record*/store.json")):
        time.sleep(0.1)
    _, runs = all_runs(store)
    assert runs, "the run never appeared in the store"
    wait_for_metrics(store, 3)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert_one_interrupted_line(proc.returncode, out, err)
    client, (run,) = all_runs(store)
    assert run.info.status == "KILLED" and run.data.tags["nnexp.status"] == "killed"
    assert len(client.get_metric_history(run.info.run_id, "validation_accuracy")) >= 3
    assert "Traceback" not in err


def test_sigterm_while_the_record_is_being_created_still_ends_it_killed(store):
    """The signal lands while the run's params and dataset are being written (no sleep)."""
    proc = subprocess.Popen([sys.executable, "-m", "nnexp.run", "dataset=digits", "epochs=100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = Path(store[len("sqlite:///"):])
    deadline = time.time() + 60
    while time.time() < deadline and not db.exists():
        time.sleep(0.01)
    while time.time() < deadline:  # the first row of the runs table: the record is being created
        try:
            if sqlite3.connect(db).execute("select count(*) from runs").fetchone()[0]:
                break
        except sqlite3.Error:
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert_one_interrupted_line(proc.returncode, out, err)
    _, (run,) = all_runs(store)
    assert run.info.status == "KILLED" and run.data.tags["nnexp.status"] == "killed"
    assert "Traceback" not in err


INTERRUPT_PROGRAM = """
import os, signal, time
from nnexp.runner import Interrupts, Terminated
done, before = [], signal.getsignal(signal.SIGTERM)
try:
    with Interrupts() as interrupts:
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            done.append("write finished")  # not cut short by the signal
        done.append("after the write")
except Terminated:
    done.append("Terminated")
print(done, signal.getsignal(signal.SIGTERM) is before)
"""


def test_interrupts_wait_for_a_store_write_to_finish():
    """In a process of its own: a regression must not signal the test session itself."""
    out = subprocess.run([sys.executable, "-c", INTERRUPT_PROGRAM], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # the write finished, the signal was raised right after it, the previous handler is back
    assert out.stdout.strip() == "['write finished', 'Terminated'] True"


def test_tracking_off_creates_no_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = nnexp_run("dataset=digits", "epochs=1", "tracking=off")
    assert out.returncode == 0, out.stderr
    assert "not tracked" in out.stdout and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("args,fragment", [
    (["etta=0.1"], "did you mean 'eta'"),
    (["cost=quadratc"], "choose one of: cross_entropy, log_likelihood, quadratic"),
    (["dataset=digits", "eta=-1"], "eta must be a positive number"),
    (["dataset=digits", "mini_batch_size=5000"], "larger than the training set"),
    (["dataset=digits", "schedule=piecewise", "schedule.points=[[10,0.5,5],[5,0.1,1]]"], "at increasing image counts"),
    (["dataset=digits", "schedule=piecewise", "schedule.points=[[10,0.5]]"], "row is [images >= 0 (whole), eta > 0"),
    (["dataset=digits", "schedule=piecewise", "schedule.points=[[0,abc,1]]"], "row is [images >= 0 (whole), eta > 0"),
    (["dataset=digits", "schedule.points=[[0,0.5,1]]"], "schedule.points is for schedule=piecewise"),
    (["dataset=digits", "schedule=piecewise"], "schedule=piecewise needs schedule.points"),
])
def test_bad_input_is_one_line(store, args, fragment, capsys):
    from nnexp.run import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and lines[0].startswith("nnexp.run: error:")


@pytest.mark.parametrize("args", [["eta=0.1,0.2", "seed=range(3)"], ["sizes=[64,30,10]"], ["eta=${lmbda}"],
                                  ["+experiment=more_data", "dataset.train_size=200"]])
def test_the_value_check_passes_what_hydra_accepts(args):
    check_overrides(args)


def test_bad_input_from_the_command_line_is_one_line_and_exit_code_2(store):
    out = nnexp_run("dataset=digits", "eta=-1")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == "nnexp.run: error: eta must be a positive number, got -1.0", out.stderr


def _flat(overrides):
    from nnexp import runner
    from nnexp.config.run_schema import flat_params

    return flat_params(runner.compose(overrides).config)


def _leaves(node, prefix=""):
    """A preset YAML's settings as dotted keys (its defaults list and hydra block left out)."""
    for key, value in node.items():
        if key in ("defaults", "hydra"):
            continue
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_applies_exactly_what_its_file_sets(preset):
    """Read independently of Hydra, each preset file's settings and group overrides: composed onto
    the base config, they are what changed (a value written as an interpolation is resolved)."""
    import yaml

    body = yaml.safe_load((REPO / "conf" / "experiment" / f"{preset}.yaml").read_text())
    composed = _flat([f"+experiment={preset}"])
    for key, value in _leaves(body):
        if "${" in str(value):
            assert "${" not in str(composed[key]), key  # resolved, not left as text
        else:
            assert composed[key] == value, (key, composed[key], value)
    for entry in body.get("defaults", []):
        if isinstance(entry, dict):
            ((where, option),) = entry.items()
            assert composed[where.removeprefix("override /")] == option
    keys, groups = _preset_reach(preset)  # nothing else changed: every other key keeps the base value
    base = _flat([])
    outside = {k for k in composed if composed[k] != base.get(k) and k not in keys
               and not any(k == g or k.startswith(g + ".") for g in groups)}
    assert outside == ({"epochs"} if "budget_images" in keys else set()), outside  # epochs: from the image budget


def _preset_reach(preset):
    """The dotted keys a preset sets and the config groups it overrides, its parent presets' too
    (a plain entry of its defaults list is another preset)."""
    import yaml

    body = yaml.safe_load((REPO / "conf" / "experiment" / f"{preset}.yaml").read_text())
    keys, groups = {k for k, _ in _leaves(body)}, set()
    for entry in body.get("defaults", []):
        if isinstance(entry, dict):
            groups.add(next(iter(entry)).removeprefix("override /"))
        elif entry != "_self_":
            more_keys, more_groups = _preset_reach(entry)
            keys, groups = keys | more_keys, groups | more_groups
    return keys, groups


def test_the_book_presets_relate_as_the_books_experiments():
    """regularized is the overfitting run with lambda 0.1 and nothing else changed; regularized_full
    is overfitting_full with lambda 5; more_data keeps lambda / n and the image budget (n x epochs)
    fixed across training-set sizes."""
    def diff(a, b):
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}

    assert diff(_flat(["+experiment=overfitting"]), _flat(["+experiment=regularized"])) == \
        {"lmbda": (0.0, 0.1), "regularization": ("none", "l2"), "regularization.penalty": ("none", "l2")}
    assert diff(_flat(["+experiment=overfitting_full"]), _flat(["+experiment=regularized_full"])) == \
        {"lmbda": (0.0, 5.0), "regularization": ("none", "l2"), "regularization.penalty": ("none", "l2")}
    small, large = (_flat(["+experiment=more_data", f"dataset.train_size={n}"]) for n in (200, 1000))
    assert small["lmbda"] / 200 == pytest.approx(large["lmbda"] / 1000)
    assert small["epochs"] * 200 == large["epochs"] * 1000 == small["budget_images"]


@pytest.mark.parametrize("args,fragment", [
    (["eta=0.1", "dataset.nme=x"], "unknown key 'dataset.nme'"),
    (["init=huge"], "choose one of: large, scaled"),
    (["-m", "schedule=constant,halve"], "unknown schedule 'halve'"),
    (["experiment=overfitting"], "+experiment=overfitting"),
    (["eta=abc"], "bad value for 'eta': Value 'abc' of type 'str' could not be converted to Float"),
    (["-m", "eta=0.1,abc"], "bad value for 'eta'"),
    (["mini_batch_size=1.5"], "bad value for 'mini_batch_size'"),
    (["dataset.classes=[0,x]"], "bad value for 'dataset.classes'"),
])
def test_override_check_catches_typos_before_hydra(args, fragment):
    with pytest.raises(ConfigError, match=None) as err:
        check_overrides(args)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_valid_overrides_pass_the_check_and_compose_to_what_they_say():
    from nnexp import runner

    check_overrides(["-m", "eta=0.025,0.25,2.5", "+experiment=multiple_eta", "hydra/launcher=joblib",
                     "dataset.train_size=100", "regularization=dropout", "schedule=halve_on_plateau"])
    c = runner.compose(["+experiment=multiple_eta", "dataset.train_size=100", "regularization=dropout",
                        "schedule=halve_on_plateau"]).config
    assert (c.dataset.train_size, c.regularization.dropout, c.regularization.penalty) == (100, 0.5, "none")
    assert (c.schedule.name, c.init.name, c.lmbda) == ("halve_on_plateau", "scaled", 5.0)


def test_figure_sweeps_reference_real_presets_and_valid_overrides():
    import yaml

    figures = yaml.safe_load((REPO / "sweeps" / "figures.yaml").read_text())
    assert {"learning_slowdown", "overfitting", "regularized", "full_data", "weight_init", "multiple_eta",
            "more_data", "baselines"} <= set(figures)
    for name, fig in figures.items():
        for arm in fig.get("arms", []):
            if "overrides" not in arm:
                continue
            check_overrides(arm["overrides"])
            presets = [o.split("=", 1)[1] for o in arm["overrides"] if o.startswith("+experiment=")]
            assert len(presets) == 1 and presets[0] in PRESETS, (name, arm)


@pytest.mark.parametrize("preset", ["multiple_eta", "weight_init", "more_data"])
def test_every_job_a_sweep_preset_declares_composes_with_its_value(preset):
    """Each swept value of a preset that is a sweep (its hydra.sweeper.params) composes into a
    valid run that carries that value."""
    import yaml

    from nnexp import runner

    from hydra.core.override_parser.overrides_parser import OverridesParser

    text = (REPO / "conf" / "experiment" / f"{preset}.yaml").read_text()
    params = yaml.safe_load(text)["hydra"]["sweeper"]["params"]
    assert params, preset
    parser = OverridesParser.create()
    for key, values in params.items():
        swept = list(parser.parse_overrides([f"{key}={values}"])[0].sweep_string_iterator())
        composed = []
        for value in swept:
            got = runner.compose([f"+experiment={preset}", f"{key}={value}", "dataset=digits"]).config
            for part in key.split("."):
                got = getattr(got, part)
            composed.append(str(getattr(got, "name", got)))
        assert len(swept) >= 2 and len(set(composed)) == len(swept), (preset, key, swept, composed)


def test_secrets_in_urls_are_redacted():
    from nnexp.config.run_schema import RunConfig, flat_params
    from nnexp.tracking import redact

    assert redact("postgresql://alice:s3cret@db:5432/mlflow") == "postgresql://***@db:5432/mlflow"
    assert redact("uri: https://bob@host/x and http://h/y") == "uri: https://***@host/x and http://h/y"
    c = RunConfig()
    c.tracking.uri = "postgresql://alice:s3cret@db/mlflow"
    assert not any("s3cret" in str(v) for v in flat_params(c).values())


def test_an_exception_during_training_leaves_a_failed_run_with_the_error(store):
    from nnexp import runner

    def broken(record, net):
        if record.epoch == 2:
            raise RuntimeError("observer exploded")

    job = runner.compose(["dataset=digits", "epochs=5"], observers=[broken])
    with pytest.raises(RuntimeError):
        runner.execute(job)
    client, (run,) = all_runs(store)
    assert run.info.status == "FAILED" and run.data.tags["nnexp.status"] == "failed"
    assert "observer exploded" in run.data.tags["nnexp.error"]
    assert len(client.get_metric_history(run.info.run_id, "validation_accuracy")) == 2
    assert "traceback.txt" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_config_hash_is_stable_when_a_setting_is_added_at_its_default():
    from nnexp.config.run_schema import RunConfig, flat_params
    from nnexp.config.identity import config_hash, identity_hash, identity_params

    c = RunConfig()
    params, defaults = flat_params(c), flat_params(RunConfig())
    assert identity_hash(identity_params(params, defaults)) == config_hash(c)
    grown, grown_defaults = {**params, "new_setting": 0.0}, {**defaults, "new_setting": 0.0}
    assert identity_hash(identity_params(grown, grown_defaults)) == config_hash(c)  # at its default: same run
    changed = {**params, "new_setting": 0.5}
    assert identity_hash(identity_params(changed, grown_defaults)) != config_hash(c)
    c2 = RunConfig()
    c2.eta = 0.25  # an existing setting is always part of the identity, default or not
    assert config_hash(c2) != config_hash(c)
    c3 = RunConfig()
    c3.dataset.data_dir = "/elsewhere"  # where the data is read from is not what the run computes
    assert config_hash(c3) == config_hash(c)


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=basic"]])
def test_a_preset_sweep_gives_three_children_tagged_with_the_preset(store, launcher):
    out = nnexp_run("-m", "+experiment=multiple_eta", "dataset=digits", "epochs=1", *launcher)
    assert out.returncode == 0, out.stderr
    _, runs = all_runs(store)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(float(r.data.params["eta"]) for r in children) == [0.025, 0.25, 2.5]
    assert {r.data.tags["nnexp.experiment"] for r in runs} == {"multiple_eta"}  # parent and children
    assert {r.data.params["init"] for r in children} == {"scaled"}  # network2's default, as fig/multiple_eta.py
    assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.parametrize("override, check", [
    ("cost=log_likelihood", lambda p: p["cost"] == "log_likelihood"),
    ("regularization=l1", lambda p: (p["regularization"], p["regularization.penalty"]) == ("l1", "l1")),
    ("regularization=dropout", lambda p: (p["regularization.dropout"], p["regularization.penalty"]) == ("0.5", "none")),
    ("init=large", lambda p: p["init"] == "large"),
    ("hidden=tanh", lambda p: p["hidden"] == "tanh"),
    ("hidden=relu", lambda p: p["hidden"] == "relu"),
    ("momentum=0.5", lambda p: p["momentum"] == "0.5"),
    ("dtype=float32", lambda p: p["dtype"] == "float32"),
    ("schedule=halve_on_plateau", lambda p: p["schedule"] == "halve_on_plateau"),
    ("schedule=piecewise schedule.points=[[0,0.3,2],[500,0.1,1]]",
     lambda p: (p["schedule"], p["schedule.points"]) == ("piecewise", "[[0, 0.3, 2], [500, 0.1, 1]]")),
    ("early_stopping=no_improvement", lambda p: p["early_stopping"] == "no_improvement"),
    ("monitor.every_images=400", lambda p: p["monitor.every_images"] == "400"),
    ("monitor.validation_sample=50", lambda p: p["monitor.validation_sample"] == "50"),
])
def test_each_config_option_from_the_command_line_gives_a_tracked_completed_run(tmp_path, monkeypatch,
                                                                                   override, check):
    from nnexp.run import main

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    main(["dataset=digits", "epochs=2", *override.split(" "), f"tracking.uri={uri}", f"hydra.run.dir={tmp_path / 'out'}"])
    client, (run,) = all_runs(uri)
    assert run.info.status == "FINISHED" and run.data.tags["nnexp.status"] in ("completed", "early_stopped")
    assert check(run.data.params), run.data.params
    history = client.get_metric_history(run.info.run_id, "validation_accuracy")
    if override.startswith("monitor.every_images"):  # steps count images: every 400, and the end
        seen, due, steps = 0, 400, []
        for _ in range(2):  # 1,197 digits images per epoch in mini-batches of 10
            for k in range(0, 1197, 10):
                seen += min(10, 1197 - k)
                if seen >= due:
                    due, steps = due + 400, steps + [seen]
        steps += [seen] if steps[-1] != seen else []
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == steps
    else:
        assert sorted(m.step for m in history) == [1, 2]
    if override.startswith("schedule=piecewise"):  # from 500 images on (in epoch 1), eta 0.1 and lambda 1
        assert [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, "lmbda"),
                                                  key=lambda m: m.step)] == [(1, 1.0), (2, 1.0)]
        assert {m.value for m in client.get_metric_history(run.info.run_id, "eta")} == {0.1}
    if override.startswith("monitor.validation_sample"):  # accuracies on 50 images are multiples of 1/50
        assert all(abs(m.value * 50 - round(m.value * 50)) < 1e-9 for m in history)


def interrupt_sweep(store: str, launcher: str, signum: int, started_runs: int) -> tuple[str, str, list[int]]:
    """A never-ending two-job digits sweep, signalled once ``started_runs`` runs have evaluated
    three times; returns its output and the job processes it had, after checking the one line."""
    from nnexp.cli.callbacks import child_processes

    proc = subprocess.Popen([sys.executable, "-m", "nnexp.run", "-m", f"hydra/launcher={launcher}",
                             "dataset=digits", "epochs=100000", "seed=1,2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_metrics(store, 3, runs=started_runs)
        workers = child_processes(proc.pid)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_one_interrupted_line(proc.returncode, out, err)
    return out, err, workers


@pytest.mark.parametrize("signum", [signal.SIGINT])  # SIGTERM: the same handler, tested on single runs
def test_an_interrupted_basic_launcher_sweep_ends_its_run_and_parent_killed(store, signum):
    interrupt_sweep(store, "basic", signum, started_runs=1)
    client, runs = all_runs(store)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 2 and len(children) == 1  # the second job never started
    assert {r.info.status for r in runs} == {"KILLED"} and children[0].data.tags["nnexp.status"] == "killed"
    assert len(client.get_metric_history(children[0].info.run_id, "validation_accuracy")) >= 3


def test_help_lists_the_groups_options_and_keys():
    out = nnexp_run("--help")
    assert out.returncode == 0, out.stderr
    for group, option in (("dataset", "digits"), ("cost", "log_likelihood"), ("regularization", "dropout"),
                          ("init", "large"), ("schedule", "halve_on_plateau"), ("early_stopping", "no_improvement"),
                          ("experiment", "overfitting")):
        assert group in out.stdout and option in out.stdout, (group, option)
    for key in ("eta", "lmbda", "mini_batch_size", "momentum", "monitor"):
        assert f"{key}:" in out.stdout, key


def test_the_default_store_is_sqlite_mlflow_db_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = nnexp_run("dataset=digits", "epochs=1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "mlflow.db").is_file() and "sqlite:///mlflow.db" in out.stdout
    _, (run,) = all_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FINISHED"


@pytest.mark.parametrize("command, fragments", [
    ("nnexp.study", ["broad_strategy", "tpe", "random", "--workers", "optuna-dashboard"]),
    ("nnexp.report", ["--no-run", "--seeds", "overfitting", "more_data", "--svm-max-size"]),
    ("nnexp.bench", ["--only", "population", "--quick", "--epochs"]),
])
def test_every_command_has_a_help_that_lists_its_options(command, fragments):
    if command == "nnexp.study":  # every study of sweeps/study/ is named
        fragments = fragments + [p.stem for p in (REPO / "sweeps" / "study").glob("*.yaml")]
    out = subprocess.run([sys.executable, "-m", command, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    missing = [f for f in fragments if f not in out.stdout]
    assert not missing, (missing, out.stdout[-2000:])


def test_fashion_mnist_from_debians_package_trains_and_is_tracked(tmp_path, monkeypatch):
    """``dataset=fashion_mnist`` read from Debian's dataset-fashion-mnist (.ci/run installs it)."""
    system = Path("/usr/share/datasets/fashion-mnist")
    if not (system / "train-images-idx3-ubyte.gz").is_file():
        if os.environ.get("CI"):
            pytest.fail("Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
        pytest.skip("dataset-fashion-mnist not installed")
    from nnexp.run import main

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    main(["dataset=fashion_mnist", "epochs=1", "dataset.train_size=3000", "dataset.download=false",
          f"tracking.uri={uri}", f"hydra.run.dir={tmp_path / 'out'}"])
    client, (run,) = all_runs(uri)
    assert run.info.status == "FINISHED" and run.data.params["dataset"] == "fashion_mnist"
    (source,) = [d.dataset.source for d in run.inputs.dataset_inputs]
    assert str(system) in source
    (acc,) = client.get_metric_history(run.info.run_id, "validation_accuracy")
    assert acc.value > 0.5  # ten classes: far above chance only if images and labels belong together


@pytest.mark.parametrize("signum", [signal.SIGTERM])  # SIGINT takes the same handler in the launching process
@pytest.mark.slow  # 12+ CPU seconds: run by .ci/run
def test_an_interrupted_joblib_sweep_ends_every_run_killed_and_leaves_no_process(store, signum):
    _, err, workers = interrupt_sweep(store, "joblib", signum, started_runs=2)
    assert workers and "Warning" not in err, err
    client, runs = all_runs(store)
    assert len(runs) == 3 and {r.info.status for r in runs} == {"KILLED"}
    assert {r.data.tags["nnexp.status"] for r in runs if "mlflow.parentRunId" in r.data.tags} == {"killed"}
    from nnexp.cli.callbacks import _alive

    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.2)
    assert not [pid for pid in workers if _alive(pid)], "a job process outlived the sweep"


def test_a_single_run_never_imports_mlflow_its_upload_process_does_and_says_so_in_its_log(tmp_path):
    """A tracked single run trains without MLflow in its process (``-X importtime`` lists every
    module it imported): a process of its own uploads the run. Its lines reach the run's own log:
    with no store answering, the run's log file holds the one warning, the run is kept locally."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "nnexp.run", "dataset=digits", "epochs=2"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    imported = [line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")]
    assert "nnexp.runner" in imported and not [m for m in imported if m.split(".")[0] in ("mlflow", "sqlalchemy")]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("nnexp").experiment_id])
    assert run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id, "validation_accuracy")) == 2
    assert f"run {run.info.run_id} in experiment" in out.stdout + out.stderr
    dead, down = f"http://127.0.0.1:{free_port()}", tmp_path / "down"
    down.mkdir()
    out = subprocess.run([sys.executable, "-m", "nnexp.run", "dataset=digits", "epochs=2", f"tracking.uri={dead}"],
                         cwd=down, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    (log_file,) = [p for p in down.rglob("*.log")]
    said = [line for line in log_file.read_text().splitlines() if "does not answer" in line]
    assert len(said) == 1 and "kept locally" in out.stdout + out.stderr


def test_a_tracked_run_with_a_missing_data_directory_ends_in_one_line(tmp_path):
    """The run fails before training (no data): one line, exit 2, and the process ends. (It waited
    forever once: its upload process waited for the run's connection, which only the run's end
    closed.)"""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    out = subprocess.run([sys.executable, "-m", "nnexp.run", f"dataset.data_dir={tmp_path / 'none'}"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert [line for line in out.stderr.splitlines() if line.strip()] == [
        f"nnexp.run: error: data_dir {tmp_path / 'none'} does not exist or is not a directory"]
