"""``python -m nnexp.study``: real Optuna storages (SQLite, PostgreSQL), real MLflow, digits."""

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from conftest import BARRIER, alive, descendants, start_together

FAST = ["dataset=digits", "study.eta.epochs=2", "study.lmbda.epochs=8",
        "study.eta.refine_epochs=10", "study.mini_batch.epochs=1",
        "study.final.epochs=15", "study.patience=4", "study.mini_batch.sizes=[10,50]"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def nnexp(module, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout)


def stage(storage, name):
    return optuna.load_study(study_name=name, storage=storage)


def counts(study):
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {s: states.count(s) for s in set(states)}


def children(parent_name="study"):
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("nnexp")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, [r for r in runs if "mlflow.parentRunId" in r.data.tags], \
        [r for r in runs if r.data.tags.get("nnexp.stage") == "study"]


GRID_STAGES = ("lmbda_walk", "lmbda_refine", "mini_batch", "eta_refine")
ALL_STAGES = ("eta_threshold", *GRID_STAGES, "final")


@pytest.fixture(scope="module")
def digits_study(tmp_path_factory):
    """The broad strategy on digits, stopped after lmbda_walk and resumed (one run for the module)."""
    d = tmp_path_factory.mktemp("broad")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{d / 'mlflow.db'}"}

    def study(*args):
        return subprocess.run([sys.executable, "-m", "nnexp.study", *args], capture_output=True, text=True,
                              timeout=600, cwd=d, env=env)

    storage = f"sqlite:///{d / 'optuna.db'}"
    first = study(*FAST, "study.workers=1", "study.stop_after=lmbda_walk")
    assert first.returncode == 0, first.stderr
    early = {s: len(stage(storage, f"broad_strategy/{s}").trials) for s in ("eta_threshold", "lmbda_walk")}
    second = study(*FAST, "study.workers=1")
    assert second.returncode == 0, second.stderr
    decisions = {s: stage(storage, f"broad_strategy/{s}").user_attrs["decision"] for s in ALL_STAGES}
    return SimpleNamespace(dir=d, storage=storage, uri=env["MLFLOW_TRACKING_URI"], first=first, second=second,
                           early=early, decisions=decisions)


def test_broad_strategy_resumes_runs_every_stage_and_its_preset_reproduces(digits_study, monkeypatch):
    st, storage, decisions = digits_study, digits_study.storage, digits_study.decisions
    monkeypatch.setenv("MLFLOW_TRACKING_URI", st.uri)
    assert "stopping after stage lmbda_walk" in st.first.stdout
    for s in ("eta_threshold", "lmbda_walk"):  # resumed: nothing repeated
        assert f"stage {s}: done earlier" in st.second.stdout
        assert len(stage(storage, f"broad_strategy/{s}").trials) == st.early[s]
    eta_stage = decisions["eta_threshold"]
    assert eta_stage["eta"] < eta_stage["threshold"]
    assert eta_stage["decreasing"][f"{eta_stage['threshold']:.6g}"] is False
    final = decisions["final"]
    assert final["validation_accuracy"] > 0.85 and final["test_accuracy"] > 0.8
    out = st.dir / "studies" / "broad_strategy"
    assert {"decisions.md", "eta_threshold.png", "mini_batch.png"} <= {p.name for p in out.iterdir()}
    assert "## eta_threshold" in (out / "decisions.md").read_text()
    # one parent run, one child per trial, the decision log on the parent
    client, kids, parents = children()
    (parent,) = parents
    assert parent.info.status == "FINISHED" and "nnexp.decision.final" in parent.data.tags
    # every trial of every problem a stage ran on trains its seed replicates (3, or 6 more where a
    # comparison was unresolved), each its own child run
    names = [name for s in decisions for _, name in decisions[s]["studies"]]
    seeds = {name: [t.user_attrs["seeds"] for t in stage(storage, name).trials] for name in names}
    assert all(x == [0, 1, 2] for name in names if not name.endswith("+seeds") for x in seeds[name])
    assert all(x in ([3, 4, 5], [6, 7, 8]) for name in names if name.endswith("+seeds") for x in seeds[name])
    n_runs = sum(len(x) for name in names for x in seeds[name])
    assert len(kids) == n_runs and all(k.data.tags["mlflow.parentRunId"] == parent.info.run_id for k in kids)
    assert {k.data.tags["nnexp.stage"] for k in kids} == {n.split("/", 1)[1] for n in names}
    assert {k.data.tags["nnexp.replicate"] for k in kids} == {str(i) for i in range(6)}
    assert "decisions.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    # the threshold, recomputed from MLflow's training-cost histories: the smallest eta whose cost
    # did not decrease (net fall, rises under half of it) for some seed, and eta half of it
    costs = {}
    for k in kids:
        if k.data.tags["nnexp.stage"] == "eta_threshold":
            history = sorted((m.step, m.value) for m in client.get_metric_history(k.info.run_id, "training_cost"))
            costs.setdefault(float(k.data.params["eta"]), []).append([v for _, v in history])

    def fell(c):
        return (len(c) > 1 and all(math.isfinite(v) for v in c) and c[0] - c[-1] > 0
                and sum(max(0.0, b - a) for a, b in zip(c, c[1:])) < 0.5 * (c[0] - c[-1]))
    down = {eta: all(fell(c) for c in cs) for eta, cs in costs.items()}
    assert {f"{eta:.6g}": d for eta, d in sorted(down.items())} == eta_stage["decreasing"]
    assert eta_stage["threshold"] == pytest.approx(min(eta for eta, d in down.items() if not d))
    assert eta_stage["eta"] == pytest.approx(eta_stage["threshold"] / 2)
    # the preset reproduces the reported validation accuracy
    rerun = subprocess.run([sys.executable, "-m", "nnexp.run", "--config-dir", str(out), "+experiment=broad_strategy",
                            "tracking=off"], capture_output=True, text=True, timeout=600, cwd=st.dir)
    assert rerun.returncode == 0, rerun.stderr
    assert f"best validation accuracy {final['validation_accuracies'][0]:.4f}" in rerun.stdout  # seed 0's




def test_a_stage_whose_trials_tie_escalates_instead_of_deciding(digits_study):
    """On digits' 0s and 1s every lambda scores 100%: lambda is not chosen there."""
    walk = digits_study.decisions["lmbda_walk"]
    (first_rung, first_study), *higher = walk["studies"]
    stripped = stage(digits_study.storage, first_study).trials
    assert first_rung == "stripped" and stripped
    assert all(t.user_attrs["replicate_values"] == [1.0, 1.0, 1.0] for t in stripped)  # saturated
    assert higher and walk["problem"] == higher[-1][0].removesuffix("+seeds") != "stripped"
    assert any("escalated to" in n for n in walk["notes"])
    decided_on = stage(digits_study.storage, higher[-1][1]).trials
    assert len({t.value for t in decided_on}) > 1  # where it decided, the scores differ


def paired_test(a, b, floor):
    """b - a over the seeds both have, computed here independently of nnexp.stats: mean, the std
    floored at the rounding of two scores (floor / sqrt(6)), the 95% t-interval, and the p-values
    of "b beats a by more than the floor" (one-sided) and "they differ by more" (two-sided)."""
    import numpy as np
    from scipy import stats

    n = min(len(a), len(b))
    d = np.subtract(b[:n], a[:n])
    sd = max(d.std(ddof=1), floor / 6 ** 0.5)
    se = sd / n ** 0.5
    half = stats.t.ppf(0.975, n - 1) * se
    return {"mean": d.mean(), "lo": d.mean() - half, "hi": d.mean() + half, "n": n,
            "greater": stats.t.sf((d.mean() - floor) / se, n - 1),
            "differ": min(1.0, 2 * stats.t.sf((abs(d.mean()) - floor) / se, n - 1))}


def holm_rejects(p, alpha):
    out = set()
    for i, (k, v) in enumerate(sorted(p.items(), key=lambda kv: kv[1])):
        if v > alpha / (len(p) - i):
            break
        out.add(k)
    return out


def replicate_scores_of(storage, decision, name):
    """Each value's score per seed on the problem the stage decided on (its first seeds, then
    the extra ones), recomputed from the trials' curves: the best validation accuracy within the
    fewest images any run trained, or (mini-batch) the mean accuracy over the horizon."""
    rung = decision["studies"][-1][0].removesuffix("+seeds")
    key = _param(name)
    runs = {}
    for r, study_name in decision["studies"]:
        if r.removesuffix("+seeds") != rung:
            continue
        for t in sorted(stage(storage, study_name).trials, key=lambda t: t.number):
            if t.state == TrialState.COMPLETE:
                runs.setdefault(float(t.params[key]), []).extend(
                    zip(t.user_attrs["replicate_curves"], t.user_attrs["replicate_statuses"]))
    if name == "mini_batch":
        h = decision["horizon_seconds"]

        def area(curve):
            total, t0, acc0 = 0.0, 0.0, 0.0
            for _, t, _, acc in curve:
                t = min(t, h)
                total, t0, acc0 = total + acc0 * (t - t0), t, acc
            return (total + acc0 * max(0.0, h - t0)) / h
        return {v: [area(c) for c, _ in rs] for v, rs in runs.items()}
    budget = min(c[-1][0] for rs in runs.values() for c, status in rs if status not in ("diverged", "failed"))
    return {v: [max(row[3] for row in c if row[0] <= budget) for c, _ in rs] for v, rs in runs.items()}


def test_every_decision_follows_its_tests_and_the_log_shows_it(digits_study):
    """Each grid stage's choice recomputed from the runs' curves, independently of nnexp: the
    scores, Holm over the pairs (a tie?) and over the comparisons with the default (replaced?),
    at half the error rate per look, and the numbers and seed counts the decision log prints."""
    md = (digits_study.dir / "studies" / "broad_strategy" / "decisions.md").read_text()
    for name in GRID_STAGES:
        d = digits_study.decisions[name]
        scores = replicate_scores_of(digits_study.storage, d, name)
        means = {v: sum(x) / len(x) for v, x in scores.items()}
        default, floor, alpha = float(d["default"]), d["floor"], 0.05 / 2
        best = max(means, key=lambda v: (means[v], v == default))
        assert float(d["best"]) == best, (name, means)
        assert d["alpha"] == alpha and {f"{k:.6g}": len(x) for k, x in scores.items()} == d["seeds"]
        saturated = sum(min(x) >= 1.0 for x in scores.values()) >= 2
        values = sorted(scores)
        pairs = {(u, v): paired_test(scores[u], scores[v], floor)["differ"]
                 for i, u in enumerate(values) for v in values[i + 1:]}
        tie = saturated or not holm_rejects(pairs, alpha)
        assert d["tie"] == tie, (name, d["why"])
        beats = holm_rejects({v: paired_test(scores[default], scores[v], floor)["greater"]
                              for v in values if v != default}, alpha)
        chosen = max(beats, key=lambda v: means[v]) if beats and not tie else default
        assert float(d[_param(name)]) == chosen, (name, d["why"])
        section = md.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        for v, x in scores.items():  # every value's mean and its seeds
            assert any(line.startswith(f"| {v:.6g} | {means[v]:.4f} |") and line.endswith(f"| {len(x)} |")
                       for line in section.splitlines()), (name, v)
        if best != default:
            shown = chosen if chosen != default else best
            t = paired_test(scores[default], scores[shown], floor)
            label = f"chosen {chosen:.4g}" if chosen != default else f"best {best:.4g}"
            assert (f"{label} vs default {default:.4g}: {100 * t['mean']:+.2f} pp, "
                    f"95% interval [{100 * t['lo']:+.2f}, {100 * t['hi']:+.2f}] over {t['n']} seeds") in section
        assert "- rule: " in section and "**Question.**" in section
    final = digits_study.decisions["final"]
    assert len(final["test_accuracies"]) == 3 and final["seeds"] == [0, 1, 2]
    assert final["test_accuracy"] == pytest.approx(sum(final["test_accuracies"]) / 3)


def _param(stage_name):
    return {"lmbda_walk": "lmbda", "lmbda_refine": "lmbda", "eta_refine": "eta", "mini_batch": "mini_batch_size"}[stage_name]


def test_replicates_train_as_one_population_of_seeds_times_values(digits_study):
    client = MlflowClient(digits_study.uri)
    runs = client.search_runs([client.get_experiment_by_name("nnexp").experiment_id], max_results=1000,
                              filter_string="tags.`nnexp.stage` = 'lmbda_walk'")
    first = [r for r in runs if r.data.tags["nnexp.trial"] in ("0", "1", "2")]  # the walk's first three values
    assert len(first) == 9 and {(r.data.tags["nnexp.population"], r.data.tags["nnexp.population_size"])
                                for r in first} == {(first[0].data.tags["nnexp.population"], "9")}
    for _, name in digits_study.decisions["lmbda_walk"]["studies"]:
        trials = stage(digits_study.storage, name).trials
        assert len({t.user_attrs["worker_pid"] for t in trials}) == 1  # one process
        blocks = [t.params.get("block", 0) for t in trials]  # extra seeds come in blocks of 3
        assert all(t.user_attrs["seeds"] == [3 * b, 3 * b + 1, 3 * b + 2] for t, b in zip(trials, blocks))
        assert all(t.value == pytest.approx(sum(t.user_attrs["replicate_values"]) / 3) for t in trials)


def tpe(*extra):
    return ["study=tpe", "dataset=digits", "study.epochs=5", "study.stop_after=search", *extra]


@pytest.mark.slow  # 12+ CPU seconds: run by .ci/run
def test_trials_trained_as_populations_match_trials_trained_one_by_one(workdir):
    """study.population=3: trials are asked three at a time and trained as one batched
    population; with the same sampler stream they get the values of one-by-one training."""
    space = ["study.pruner=none", "~study.space",
             "+study.space={eta:{low:0.05,high:3.0,log:true},lmbda:{low:0.1,high:10.0,log:true}}"]
    base = ["study=random", "dataset=digits", "study.epochs=4", "study.stop_after=search", "study.n_trials=6",
            "study.workers=1"]  # one sampler stream: the same values whichever the population
    results = {}
    for population in (1, 3):
        d = workdir / f"p{population}"
        d.mkdir()
        out = subprocess.run([sys.executable, "-m", "nnexp.study", *base, *space,
                              f"study.population={population}", f"study.storage=sqlite:///{d / 'optuna.db'}",
                              f"tracking.uri=sqlite:///{d / 'mlflow.db'}"],
                             capture_output=True, text=True, timeout=600, cwd=d)
        assert out.returncode == 0, out.stderr
        trials = stage(f"sqlite:///{d / 'optuna.db'}", "random/search").trials
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
        results[population] = trials
        client = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("nnexp").experiment_id])
        kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert sorted(int(k.data.tags["nnexp.trial"]) for k in kids) == list(range(6))
        assert {t.user_attrs["mlflow_run_id"] for t in trials} == {k.info.run_id for k in kids}
        if population == 3:
            populations = {k.data.tags["nnexp.population"]: set() for k in kids}
            for k in kids:
                populations[k.data.tags["nnexp.population"]].add(int(k.data.tags["nnexp.trial"]))
                assert k.data.tags["nnexp.population_size"] == "3"
            assert sorted(map(sorted, populations.values())) == [[0, 1, 2], [3, 4, 5]]  # asked three at a time
            assert "Warning" not in out.stderr, out.stderr
            # a population's members share its training clock
            assert len({round(t.user_attrs["train_seconds"], 9) for t in trials[:3]}) == 1
    for one, batched in zip(results[1], results[3]):
        assert one.params == batched.params
        assert batched.value == one.value  # bit-for-bit: results do not depend on scheduling
        assert [c[2:] for c in batched.user_attrs["curve"]] == [c[2:] for c in one.user_attrs["curve"]]


def test_bad_population_setting_is_one_line(workdir):
    out = nnexp("nnexp.study", *tpe("study.population=0"))
    assert out.returncode == 2
    assert "study.population must be a whole number >= 1" in out.stderr
    assert "Traceback" not in out.stderr


def test_divergent_trials_are_recorded_not_fatal(workdir):
    out = nnexp("nnexp.study", *tpe("study.n_trials=4", "study.pruner=none", "~study.space",
                                     "+study.space={eta:{choices:[0.5,100.0]},lmbda:{choices:[50.0]}}"))
    assert out.returncode == 0, out.stderr
    trials = stage(f"sqlite:///{workdir / 'optuna.db'}", "tpe/search").trials
    status = {t.number: (t.params["eta"], t.user_attrs["nnexp.status"]) for t in trials}
    assert any(eta == 100.0 for eta, _ in status.values())
    assert all((st == "diverged") == (eta == 100.0) for eta, st in status.values())
    _, kids, _ = children()
    assert {k.data.tags["nnexp.status"] for k in kids if k.data.params["eta"] == "100.0"} == {"diverged"}


def is_worker_of(pid: int, parent: int) -> bool:
    """Is ``pid`` a live child process of ``parent`` spawned by multiprocessing (not a reused pid)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat[0] not in "ZX" and int(stat[1]) == parent and b"multiprocessing" in cmdline


def checkpointed_evaluations(run_dir: str) -> int:
    """How many evaluations a trial's record holds once its checkpoint exists (0 before)."""
    from nnexp.train import checkpoint

    record = Path(run_dir) / "record"
    try:
        return (record / "events.jsonl").read_text().count('"event":"metrics"') if checkpoint.exists(record / "checkpoint.bin") else 0
    except OSError:
        return 0


@pytest.mark.slow  # multi-process robustness: run by .ci/run
@pytest.mark.parametrize("kind, backend, population", [("tpe", "sqlite", 1), ("tpe", "sqlite", 2),
                                                       ("tpe", "postgresql", 1), ("random", "postgresql", 1)])
def test_a_worker_killed_mid_trial_is_failed_by_heartbeat_and_retried_from_its_checkpoint(
        workdir, request, kind, backend, population):
    """A worker SIGKILLed mid-trial: the study goes on; the trial is told FAIL once its heartbeat
    is stale and retried with its parameters, and the retry goes on from the trial's checkpoint
    as the same MLflow run (its record resumed). On SQLite and on PostgreSQL (a shared storage)."""
    storage = (f"sqlite:///{workdir / 'optuna.db'}" if backend == "sqlite"
               else request.getfixturevalue("postgres")(f"killed_{kind}_{population}"))
    proc = subprocess.Popen([sys.executable, "-m", "nnexp.study", *tpe(
        f"study={kind}", "study.n_trials=4", "study.epochs=150", "study.patience=1000", "study.pruner=none",
        "study.heartbeat_seconds=1", "study.grace_seconds=3", f"study.population={population}",
        f"study.storage={storage}",
        "~study.space", "+study.space={eta:{low:0.05,high:1.0,log:true},lmbda:{low:0.1,high:10.0,log:true}}"),
        "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    name = f"{kind}/search"
    victim, deadline = None, time.time() + 120
    while victim is None and time.time() < deadline:
        time.sleep(0.2)
        try:
            running = [t for t in stage(storage, name).trials
                       if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs
                       and checkpointed_evaluations(t.user_attrs["run_dir"]) >= 5]  # into its training
        except Exception:  # storage or study not there yet
            continue
        if running:
            victim = stage(storage, name).trials[running[0].number]
            pid = victim.user_attrs["worker_pid"]
            # still that trial's worker: RUNNING in the storage and a spawned worker of this study's process
            if victim.state != TrialState.RUNNING or not is_worker_of(pid, proc.pid):
                victim = None
                continue
            os.kill(pid, signal.SIGKILL)
    assert victim is not None, "no trial started"
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    trials = stage(storage, name).trials
    assert trials[victim.number].state == TrialState.FAIL
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.params == victim.params and retry.state == TrialState.COMPLETE
    # the retry went on with the victim's run, from its checkpoint
    assert retry.user_attrs["mlflow_run_id"] == victim.user_attrs["mlflow_run_id"]
    run = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(retry.user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["nnexp.trial"] == str(retry.number)
    assert int(re.search(r"from epoch (\d+)", run.data.tags["nnexp.resumed"]).group(1)) >= 5


ASKER = BARRIER + """
import sys
import optuna
from nnexp.search.trials import ask_trial
optuna.logging.set_verbosity(optuna.logging.ERROR)
url, folder = sys.argv[1], sys.argv[2]
study = optuna.load_study(study_name="s", storage=url)
ready_then_wait(folder)
print(" ".join(str(ask_trial(study, url).number) for _ in range(100)))
"""


@pytest.mark.slow  # 12+ CPU seconds: run by .ci/run
def test_two_processes_never_pop_the_same_waiting_trial(workdir):
    # SQLite has no row locks: without nnexp's lock two workers pop (and train) the same
    # waiting trial now and then (measured: 3 of 80 trials) -- it failed CI as "Trial#3 has
    # already finished" when a killed worker's retry was waiting.
    url = f"sqlite:///{workdir / 'race.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    for i in range(200):
        study.enqueue_trial({"x": float(i)})
    procs = start_together([[sys.executable, "-c", ASKER, url, str(workdir / "barrier")] for _ in range(2)],
                           workdir / "barrier")
    popped = [int(n) for p in procs for n in p.communicate(timeout=120)[0].split()]
    assert all(p.returncode == 0 for p in procs)
    assert len(popped) == 200 and len(set(popped)) == 200
    assert {t.state for t in study.get_trials()} == {TrialState.RUNNING}


@pytest.mark.slow  # 12+ CPU seconds: run by .ci/run
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_on_a_fresh_storage_lose_nothing(workdir, backend, request):
    if backend == "sqlite":
        url = shown = f"sqlite:///{workdir / 'optuna.db'}"
    else:
        shown = request.getfixturevalue("postgres")("nnexp")
        secret = "s3cret-pw-4711"  # the server trusts local connections: any password works, none may show
        url = shown.replace("postgres@", f"postgres:{secret}@")
    out = nnexp("nnexp.study", *tpe("study.n_trials=6", f"study.storage={url}"), "--workers", "2")
    assert out.returncode == 0, out.stderr
    study = stage(shown, "tpe/search")
    c = counts(study)
    assert c.get(TrialState.COMPLETE, 0) + c.get(TrialState.PRUNED, 0) == 6 and len(study.trials) == 6
    assert len({t.user_attrs["worker_pid"] for t in study.trials}) == 2  # really two processes
    _, kids, _ = children()
    assert len(kids) == 6 and {k.data.tags["nnexp.trial"] for k in kids} == {str(i) for i in range(6)}
    if backend == "postgresql":
        assert secret not in out.stdout + out.stderr  # credentials never printed, by the study or its workers
        assert "postgresql://***@" in out.stdout + out.stderr  # the storage is named, redacted


@pytest.mark.parametrize("raw, fragment", [
    ({"populaton": 2}, "unknown key 'study.populaton' (did you mean 'population'?)"),
    ({"population": "many"}, "bad value for study.population"),
    ({"population": 0}, "study.population must be a whole number >= 1"),
    ({"pruner": "medain"}, "unknown study.pruner 'medain'"),
    ({"kind": "sampler", "space": {}}, "a sampler study needs study.space"),
    ({"stop_after": "lmbda"}, "unknown stage 'lmbda' for study.stop_after"),
    ({"eta": {"refine_step": 0.5}}, "study.eta.refine_step and study.lmbda.refine_step must be > 1"),
    ({"replicates": 0}, "study.replicates must be a whole number >= 1"),
    ({"replicates": 1}, "study.replicates must be >= 2 for the broad strategy"),
    ({"max_replicates": 2}, "study.max_replicates (2) must be >= study.replicates (3)"),
    ({"min_effect": 2}, "study.min_effect is an accuracy difference in [0, 1)"),
    ({"workers": 0}, "study.workers must be >= 1 (or null: the machine's cores)"),
    ({"ladder": [{"name": "stripped"}]}, "study.ladder: every rung needs its own name"),
    ({"ladder": [{"name": "a", "epochs": 0}]}, "each study.ladder rung's epochs must be >= 1"),
])
def test_study_settings_are_typed_and_bad_values_are_one_line(raw, fragment):
    from nnexp.config.errors import ConfigError
    from nnexp.search import to_settings

    with pytest.raises(ConfigError) as exc:
        to_settings(raw)
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


def test_study_settings_fill_defaults_from_the_schema():
    from nnexp.search import to_settings

    s = to_settings({"name": "x", "eta": {"epochs": 5}})
    assert (s.eta.epochs, s.eta.refine_step, s.lmbda.start, s.study, s.replicates) == (5, 2.0, 1.0, "x", 3)
    assert [r.name for r in s.ladder] == ["all_classes", "few_hidden", "full"]


@pytest.mark.slow  # 12+ CPU seconds: run by .ci/run
def test_hopeless_trials_are_pruned_by_the_default_median_pruner(workdir):
    """A space with hopeless learning rates (1e-5): once three trials have finished, a trial whose
    validation accuracy falls below the median at an evaluation is stopped: PRUNED in Optuna,
    ``pruned`` in MLflow, its run ended normally with the curve so far."""
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    out = nnexp("nnexp.study", "study=random", "dataset=digits", "study.epochs=6", "study.stop_after=search",
                "study.n_trials=8", f"study.storage={storage}", "~study.space",
                "+study.space={eta:{low:0.00001,high:1.0,log:true}}")
    assert out.returncode == 0, out.stderr
    trials = stage(storage, "random/search").trials
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and len(pruned) < len(trials)
    assert all(t.params["eta"] < max(u.params["eta"] for u in trials) for t in pruned)
    client, kids, _ = children()
    by_id = {k.info.run_id: k for k in kids}
    for t in pruned:
        run = by_id[t.user_attrs["mlflow_run_id"]]
        assert run.data.tags["nnexp.status"] == "pruned" and run.info.status == "FINISHED"
        assert 1 <= len(client.get_metric_history(run.info.run_id, "validation_accuracy")) < 6


def test_the_pruner_stops_a_trial_at_any_evaluation_but_its_last(workdir):
    """A trial below the pruner's bar is pruned at an evaluation before its last; at its last it
    completes (it ends there anyway). The median pruner of the test above pruned a trial at its
    last evaluation (6 of 6) when the other trials' last values happened to be in first."""
    from nnexp import runner
    from nnexp.search.stage_plan import StagePlan
    from nnexp.search.trials import _trial_jobs
    from nnexp.train import PRUNED, Record

    storage = f"sqlite:///{workdir / 'optuna.db'}"
    base = runner.compose(["dataset=digits", "epochs=3", "tracking=off"]).config
    plan = StagePlan(study="s", stage="stage", storage=storage, base=base,
                     space={"eta": {"low": 0.01, "high": 10.0, "log": True}})
    from nnexp.search.backend import make_storage

    study = optuna.create_study(study_name="s/stage", storage=make_storage(storage), direction="maximize",
                                pruner=optuna.pruners.ThresholdPruner(lower=0.99))  # below 0.99: prune
    trial = study.ask()
    (observer,) = _trial_jobs(trial, plan)[0].observers
    for epoch, expected in ((1, PRUNED), (2, PRUNED), (3, None)):
        record = Record(epoch=epoch, images_seen=1197 * epoch, eta=0.1, epoch_seconds=0.1, validation_accuracy=0.5)
        assert observer(record, None) == expected
    assert sorted(study.trials[0].intermediate_values) == [1197, 2394, 3591]  # every evaluation reported


@pytest.mark.parametrize("signum", [signal.SIGTERM])  # Ctrl-C is a KeyboardInterrupt already; SIGTERM needed the fix
@pytest.mark.slow  # 12+ CPU seconds: run by .ci/run
def test_an_interrupted_study_exits_130_in_one_line_and_a_rerun_resumes(workdir, signum):
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    args = [sys.executable, "-m", "nnexp.study", *tpe("study.n_trials=4", "study.epochs=40", "study.pruner=none",
                                                      "study.patience=1000", f"study.storage={storage}"),
            "--workers", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: set[int] = set()
    try:
        deadline = time.time() + 120
        done = 0
        while time.time() < deadline and done < 1 and proc.poll() is None:
            time.sleep(0.3)
            try:
                done = counts(stage(storage, "tpe/search")).get(TrialState.COMPLETE, 0)
            except Exception:  # noqa: BLE001 - the storage or the stage is not there yet
                pass
        assert done >= 1, "no trial finished"
        workers = descendants(proc.pid)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    left = {p: Path(f"/proc/{p}/cmdline").read_bytes() for p in workers if alive(p)}
    assert workers and not left, left  # its worker processes ended with it
    said = [line for line in (out + err).splitlines() if "interrupted: " in line]
    assert len(said) == 1 and "re-run" in said[0] and "Traceback" not in out + err
    before = counts(stage(storage, "tpe/search"))
    assert before.get(TrialState.RUNNING, 0) == 0, err[-4000:]  # nothing left pretending to run
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    after = counts(stage(storage, "tpe/search"))
    assert after.get(TrialState.COMPLETE, 0) == 4  # resumed: the earlier trials count, four in all
    assert after.get(TrialState.COMPLETE, 0) - before.get(TrialState.COMPLETE, 0) < 4


@pytest.mark.parametrize("grid", [True, False])
def test_a_trial_that_cannot_be_trained_is_fail_never_a_made_up_value(workdir, monkeypatch, grid):
    from nnexp import runner
    from nnexp.config.errors import NnexpError
    from nnexp.search.stage_plan import StagePlan
    from nnexp.search.trials import run_stage

    def broken(jobs, **kw):  # e.g. the disk under the run's record filled up
        raise OSError("No space left on device")

    monkeypatch.setattr(runner, "execute", broken)
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    base = runner.compose(["dataset=digits", "epochs=1", "tracking=off"]).config
    plan = StagePlan(study="s", stage="stage", storage=storage, base=base, prune=False,
                space={"eta": {"low": 0.01, "high": 10.0, "log": True}})
    with pytest.raises(NnexpError, match="could not be trained.*No space left on device.*Re-running"):
        run_stage(plan, 2, 1, [{"eta": 0.1}, {"eta": 1.0}] if grid else None)
    trials = optuna.load_study(study_name="s/stage", storage=storage).trials
    assert trials and all(t.state == TrialState.FAIL and t.value is None for t in trials)
    assert all(t.user_attrs["nnexp.status"] == "failed" and "No space" in t.user_attrs["reason"] for t in trials)


@pytest.mark.parametrize("kind", ["tpe"])  # (random: the same stages; the bench's study smoke runs it)
def test_a_sampler_study_ends_with_its_final_stage_on_the_best_trial(workdir, kind):
    out = nnexp("nnexp.study", f"study={kind}", "dataset=digits", "study.epochs=3", "study.n_trials=3",
                "study.final.epochs=4")
    assert out.returncode == 0, out.stderr
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    search = stage(storage, f"{kind}/search")
    best = max((t for t in search.trials if t.value is not None), key=lambda t: t.value)
    final = stage(storage, f"{kind}/final").user_attrs["decision"]
    chosen = (final["eta"], final["lmbda"], final["mini_batch_size"])
    assert chosen == (best.params["eta"], best.params["lmbda"], best.params["mini_batch_size"])  # the search's best
    (run,) = stage(storage, f"{kind}/final").trials  # trained once, on the full problem, and measured once
    assert run.state == TrialState.COMPLETE and final["validation_accuracy"] == run.value
    assert 0 < final["test_accuracy"] <= 1
    assert (workdir / "studies" / kind / "decisions.md").is_file()


@pytest.mark.slow  # 12+ CPU seconds: run by .ci/run
def test_a_choice_at_the_edge_of_the_values_tried_walks_on(workdir):
    """lambda started far too high (1000): a smaller value wins at the edge, so the walk tries
    one more decade beyond it, and the decision log says so."""
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    out = nnexp("nnexp.study", *FAST, "study.stop_after=lmbda_walk", "study.lmbda.start=1000", "tracking=off")
    assert out.returncode == 0, out.stderr
    walk = stage(storage, "broad_strategy/lmbda_walk").user_attrs["decision"]
    decided = stage(storage, [n for r, n in walk["studies"] if not r.endswith("+seeds")][-1]).trials
    tried = sorted(t.params["lmbda"] for t in decided)
    assert any("was at the edge of the values tried" in n for n in walk["notes"]), walk["notes"]
    assert len(tried) > 3 and tried[0] < 100  # walked below the first three decades (100, 1000, 10000)
    assert walk["lmbda"] < 1000  # the start was beaten by an interval above zero, then walked on
    assert walk["start"] == 1000 and walk["vs_start"]["mean"] > 0 and "it replaced the start 1000" in walk["why"]



@pytest.mark.slow  # 12+ CPU seconds: run by .ci/run
def test_eta_is_readjusted_at_the_chosen_mini_batch_size_before_the_final_run(workdir):
    """Mini-batch 50 alone: eta scaled x5 from the stripped problem's is far too large for it on
    digits. The book: with the mini-batch size chosen, optimize the other hyper-parameters;
    eta_refine runs at that size from the scaled eta, walks down, and the final run learns."""
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    out = nnexp("nnexp.study", *FAST, "study.mini_batch.sizes=[50]", "tracking=off")
    assert out.returncode == 0, out.stderr
    d = {s: stage(storage, f"broad_strategy/{s}").user_attrs["decision"]
         for s in ("eta_threshold", "mini_batch", "eta_refine", "final")}
    assert d["mini_batch"]["mini_batch_size"] == 50
    assert d["mini_batch"]["eta"] == pytest.approx(5 * d["eta_threshold"]["eta"])  # scaled from base 10
    assert any("only mini-batch 50 was tried" in n for n in d["mini_batch"]["notes"])
    refine = stage(storage, "broad_strategy/eta_refine").trials
    assert min(t.params["eta"] for t in refine) < d["mini_batch"]["eta"] / 2  # walked on, below the first three
    assert d["eta_refine"]["mini_batch_size"] == 50 and d["eta_refine"]["eta"] < d["mini_batch"]["eta"]
    assert (d["final"]["eta"], d["final"]["mini_batch_size"]) == (d["eta_refine"]["eta"], 50)
    assert d["final"]["test_accuracy"] > 0.8, d["final"]["summary"]
    assert d["eta_refine"]["start"] == d["mini_batch"]["eta"]  # the log compares the choice with where it began
    md = (workdir / "studies" / "broad_strategy" / "decisions.md").read_text()
    assert f"chosen {d['eta_refine']['eta']:.4g} vs the stage's start {d['mini_batch']['eta']:.4g}: +" in md


@pytest.mark.slow  # 12+ CPU seconds: run by .ci/run
def test_a_study_from_python_decides_as_the_same_study_from_the_command_line(tmp_path):
    """``nnexp.search.run(overrides)`` from a script: the same override checks, the same trials and
    decisions, the same outputs (decision log with its plots, preset, reproduce command)."""
    args = ["study=tpe", "dataset=digits", "study.epochs=3", "study.n_trials=4", "study.final.epochs=4",
            "study.population=2", "study.workers=1"]  # one worker: one sampler stream, the same trials
    (tmp_path / "cli").mkdir()
    (tmp_path / "api").mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}
    cli = subprocess.run([sys.executable, "-m", "nnexp.study", *args], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path / "cli", env=env)
    assert cli.returncode == 0, cli.stderr
    script = ("import sys\nfrom nnexp import search\nfrom nnexp.report.study_plots import draw_study\n"
              "study = search.run(sys.argv[1:], draw=draw_study)\nprint(study.outputs['preset'])\n")
    api = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path / "api", env=env)
    assert api.returncode == 0, api.stderr

    def trials(where):
        st = stage(f"sqlite:///{tmp_path / where / 'optuna.db'}", "tpe/search")
        return [(t.params, t.value, t.state) for t in st.trials]

    def decision(where):
        return stage(f"sqlite:///{tmp_path / where / 'optuna.db'}", "tpe/final").user_attrs["decision"]

    assert trials("api") == trials("cli") and len(trials("cli")) == 4
    keys = ("eta", "lmbda", "mini_batch_size", "validation_accuracy", "test_accuracy")
    assert {k: decision("api")[k] for k in keys} == {k: decision("cli")[k] for k in keys}
    out = tmp_path / "api" / "studies" / "tpe"
    assert api.stdout.strip() == str(out / "experiment" / "tpe.yaml")
    assert "Reproduce: python -m nnexp.run --config-dir" in (out / "experiment" / "tpe.yaml").read_text()
    log = (out / "decisions.md").read_text()
    assert "command: `python -m nnexp.study study=tpe dataset=digits" in log
    assert "![search on" in log and (out / "search.png").is_file() and "<!-- plot" not in log
    # the same checks as the command line: a misspelt key is one line before anything runs
    bad = subprocess.run([sys.executable, "-c", script, "dataset=digits", "study.n_trial=4"], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path / "api", env=env)
    assert bad.returncode != 0 and "unknown key 'study.n_trial' (did you mean 'n_trials'?)" in bad.stderr


@pytest.mark.slow  # 12+ CPU seconds: run by .ci/run
def test_a_study_uses_every_core_by_default_none_imports_mlflow_and_one_line_for_one_replicate(workdir):
    """A worker process per core; the study's one upload process uploads its parent run and every
    trial's run: neither the launching process nor a worker imports MLflow (``-X importtime``,
    which spawned workers inherit). Fails if any of them uploads (it imports MLflow then)."""
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "nnexp.study", *FAST,
                          "study.stop_after=eta_threshold"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    imported = [line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")]
    # the launching process and each worker reported their imports
    assert imported.count("nnexp.train.loop") == 1 + min(len(os.sched_getaffinity(0)), 6)
    assert not [m for m in imported if m.split(".")[0] == "mlflow"]
    trials = stage(storage, "broad_strategy/eta_threshold").trials
    pids = {t.user_attrs["worker_pid"] for t in trials}
    assert len(pids) == min(len(os.sched_getaffinity(0)), 6)  # a worker process per core (6 decades)
    _, kids, (parent,) = children()
    assert parent.info.run_id == stage(storage, "broad_strategy").user_attrs["mlflow_parent_run_id"]  # resumable
    assert len(kids) == 3 * len(trials) and {r.info.status for r in kids} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in kids} == {parent.info.run_id}
    assert {int(r.data.tags["nnexp.pid"]) for r in kids} == pids  # trained in the workers, uploaded by a third
    one = nnexp("nnexp.study", *FAST, "study.replicates=1", "tracking=off")
    assert one.returncode != 0 and len(one.stderr.strip().splitlines()) == 1
    assert "study.replicates must be >= 2 for the broad strategy" in one.stderr


def test_tuning_never_scores_the_test_set_and_the_mini_batch_runs_train_alone(digits_study):
    """Only the final stage's runs have a test metric (scored once, at their end); every run of the
    mini-batch stage trained by itself (a population of one: its clock is a single run's) and
    was scored on the whole validation set."""
    client = MlflowClient(digits_study.uri)
    runs = client.search_runs([client.get_experiment_by_name("nnexp").experiment_id], max_results=1000)
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    for r in kids:
        tested = sorted(k for k in r.data.metrics if "test" in k)
        assert (tested == ["final_test_accuracy"]) == (r.data.tags["nnexp.stage"] == "final"), \
            (r.data.tags["nnexp.stage"], tested)
        if r.data.tags["nnexp.stage"] != "final":  # nor was it evaluated: not among the monitored metrics
            assert "test" not in r.data.params["monitor.metrics"], r.data.params["monitor.metrics"]
    trials = [t for _, name in digits_study.decisions["eta_refine"]["studies"] for t in stage(digits_study.storage, name).trials]
    assert trials and not any("test_accuracy" in t.user_attrs for t in trials)
    alone = [r for r in kids if r.data.tags["nnexp.stage"] == "mini_batch"]
    assert len(alone) == 3 * len(digits_study.decisions["mini_batch"]["means"])
    assert {r.data.tags["nnexp.population_size"] for r in alone} == {"1"}
    assert {r.data.params["monitor.validation_sample"] for r in alone} == {"None"}


def test_a_trials_attributes_are_written_in_one_transaction_all_or_none(tmp_path):
    """search.backend.set_user_attrs: every attribute in the storage and on the live trial, as
    trial.set_user_attr would leave them; one that cannot be stored (not JSON) leaves none of
    them (one transaction), and a finished trial takes none."""
    from nnexp.search.backend import make_storage, set_user_attrs

    storage = make_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    attrs = {"status": "completed", "curve": [[10, 0.5, 2.3, 0.9]], "images": 1197}
    set_user_attrs(trial, attrs)
    assert trial.user_attrs == attrs == optuna.load_study(study_name="s", storage=storage).trials[0].user_attrs
    with pytest.raises(TypeError):
        set_user_attrs(trial, {"reason": "first", "bad": object()})  # the second cannot be stored
    assert optuna.load_study(study_name="s", storage=storage).trials[0].user_attrs == attrs  # nor the first
    study.tell(trial, 0.9)
    with pytest.raises(RuntimeError):  # Optuna's UpdateFinishedTrialError
        set_user_attrs(trial, {"late": 1})
    assert "late" not in optuna.load_study(study_name="s", storage=storage).trials[0].user_attrs
