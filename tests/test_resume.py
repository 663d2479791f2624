"""Resuming, end to end: real processes killed with SIGKILL, real MLflow SQLite stores. A resumed
run must be the same MLflow run and end bit-for-bit as the run that was never interrupted."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import assert_same_outcome, run_outcome, store_created
from nnexp.train import checkpoint

LONG = ["dataset=digits", "epochs=80"]  # seconds of training: there is time to kill it mid-way


def runs_in(uri: str) -> list:
    """The store's runs (none while nnexp has not created it: see ``store_created``)."""
    if not store_created(uri):
        return []
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)


def command(module: str, cwd: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args, f"tracking.uri=sqlite:///{cwd / 'mlflow.db'}"]


def run_in(cwd: Path, *args: str, module: str = "nnexp.run") -> subprocess.CompletedProcess:
    cwd.mkdir(exist_ok=True)
    out = subprocess.run(command(module, cwd, *args), cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def evaluations(events: Path) -> int:
    try:
        return events.read_text().count('"event":"metrics"')
    except OSError:
        return 0


def killed_in(cwd: Path, *args: str, runs: int, after: int = 10, behind: bool = False) -> None:
    """Start the command in ``cwd`` and SIGKILL its process group once each of its ``runs``
    records holds ``after`` evaluations and a checkpoint (observed in the files). ``behind``:
    then put back a checkpoint from 3+ evaluations earlier, as if the process had died between
    logging evaluations and keeping their state (so the resumed run computes evaluations its
    record already holds)."""
    cwd.mkdir(exist_ok=True)
    proc = subprocess.Popen(command("nnexp.run", cwd, *args), cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    while True:
        records = [p.parent for p in cwd.rglob("record*/events.jsonl")]
        children = [r for r in records if '"nnexp.config_hash"' in (r / "events.jsonl").read_text()]  # not the sweep's
        if len(children) == runs and all(evaluations(r / "events.jsonl") >= after and checkpoint.exists(r / "checkpoint.bin")
                                         for r in children):
            break
        assert proc.poll() is None, f"the command ended before it was killed: {proc.stderr.read()[-2000:]}"
        time.sleep(0.02)
    if behind:
        (record,) = children
        slots = checkpoint.slot_paths(record / "checkpoint.bin")
        os.killpg(proc.pid, signal.SIGSTOP)  # a still copy (a slot stopped mid-write is passed over on reading)
        early, logged = [p.read_bytes() if p.exists() else None for p in slots], evaluations(record / "events.jsonl")
        os.killpg(proc.pid, signal.SIGCONT)
        while evaluations(record / "events.jsonl") < logged + 3:
            assert proc.poll() is None, "the command ended before it was killed"
            time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    if behind:  # both slots as they were 3+ evaluations ago (the history file only grew)
        for p, data in zip(slots, early):
            if data is None:
                p.unlink(missing_ok=True)
            else:
                p.write_bytes(data)


def resumed_from(output: str) -> list[float]:
    return [float(e) for e in re.findall(r"resumed from epoch ([0-9.]+)", output)]


@pytest.mark.slow  # 12+ CPU seconds: run by .ci/run
def test_a_run_killed_with_sigkill_and_run_again_is_the_same_mlflow_run_bit_for_bit(tmp_path):
    """Killed after 10+ evaluations, the same command goes on from the checkpoint (not from the
    start), in the same MLflow run, and ends with the uninterrupted run's every metric (each
    logged once: the checkpoint is behind the record) and final weights. A half-written checkpoint beside it (``.tmp``) is never read. Run once more, the
    finished run is not trained again; ``tracking.resume=false`` trains a new one."""
    run_in(tmp_path / "whole", *LONG)
    (want,) = runs_in(f"sqlite:///{tmp_path / 'whole' / 'mlflow.db'}")
    cut = tmp_path / "cut"
    killed_in(cut, *LONG, runs=1, behind=True)
    uri = f"sqlite:///{cut / 'mlflow.db'}"
    (record,) = [p.parent for p in cut.rglob("record/events.jsonl")]
    (record / "checkpoint-history.jsonl.tmp").write_bytes(b"half a history")  # never read
    out = run_in(cut, *LONG)
    (epoch,) = resumed_from(out.stdout + out.stderr)
    assert 9 <= epoch < 80
    (got,) = runs_in(uri)
    assert got.info.status == "FINISHED" and got.data.tags["nnexp.status"] == "completed"
    assert got.data.tags["nnexp.resumed"].startswith("1, last from epoch")
    assert "nnexp.error" not in got.data.tags and "nnexp.reaped" not in got.data.tags
    assert_same_outcome(run_outcome(uri, got), run_outcome(f"sqlite:///{tmp_path / 'whole' / 'mlflow.db'}", want))

    again = run_in(cut, *LONG)
    assert "not trained again" in again.stdout + again.stderr and got.info.run_id in again.stdout + again.stderr
    assert len(runs_in(uri)) == 1
    run_in(cut, *LONG, "tracking.resume=false")
    assert len(runs_in(uri)) == 2


@pytest.mark.slow  # 12+ CPU seconds: run by .ci/run
def test_the_members_of_a_killed_population_resume_and_each_ends_as_if_never_stopped(tmp_path):
    """A sweep trained as one population of three (float32) is killed; re-run, every member goes
    on from its checkpoint and ends bit-for-bit as the uninterrupted sweep's run of its
    configuration, as the same MLflow run (one run per configuration in the store), under the
    sweep's one parent run, continued and FINISHED. One member's newest checkpoint is removed,
    as if the kill came between the members' saves (CI once caught it there by chance): the
    others go back to their previous slot, and the three go on as one population."""
    sweep = ["-m", *LONG, "dtype=float32", "eta=0.1,0.5,3.0", "hydra.launcher.workers=1"]
    run_in(tmp_path / "whole", *sweep)
    whole = f"sqlite:///{tmp_path / 'whole' / 'mlflow.db'}"
    want = {r.data.params["eta"]: r for r in runs_in(whole) if "nnexp.config_hash" in r.data.tags}
    cut = tmp_path / "cut"
    killed_in(cut, *sweep, runs=3)
    members = [p.parent for p in cut.rglob("record*/events.jsonl") if checkpoint.exists(p.parent / "checkpoint.bin")]
    newest = {m: max((p for p in checkpoint.slot_paths(m / "checkpoint.bin") if p.exists()), key=checkpoint.sequence)
              for m in members}
    ahead = max(members, key=lambda m: checkpoint.position(newest[m]))  # (the kill may have left one a round ahead)
    assert len(members) == 3 and all(p.exists() for p in checkpoint.slot_paths(ahead / "checkpoint.bin"))
    newest[ahead].unlink()  # its previous slot is where the others stand (or their previous one is)
    out = run_in(cut, *sweep)
    resumed = resumed_from(out.stdout + out.stderr)
    # the kill came after 10 logged evaluations; the member's removed slot puts all one round further back
    assert len(resumed) == 3 and len(set(resumed)) == 1 and min(resumed) >= 8, resumed
    assert "Callback" not in out.stderr, out.stderr[-2000:]  # Hydra's callbacks raised nothing
    uri = f"sqlite:///{cut / 'mlflow.db'}"
    got = [r for r in runs_in(uri) if "nnexp.config_hash" in r.data.tags]
    assert sorted(r.data.params["eta"] for r in got) == sorted(want)  # no configuration twice
    (parent,) = [r for r in runs_in(uri) if "nnexp.config_hash" not in r.data.tags]
    assert parent.info.status == "FINISHED" and {r.data.tags["mlflow.parentRunId"] for r in got} == {parent.info.run_id}
    for run in got:
        assert run.info.status == "FINISHED" and "nnexp.resumed" in run.data.tags
        assert int(run.data.tags["nnexp.population_size"]) == 3
        assert_same_outcome(run_outcome(uri, run), run_outcome(whole, want[run.data.params["eta"]]))


@pytest.mark.slow  # 12+ CPU seconds: run by .ci/run
@pytest.mark.parametrize("damaged", ["newest", "both"])  # newest: also in test_train
def test_a_damaged_checkpoint_is_one_line_and_the_run_goes_on_from_the_previous_or_from_the_start(tmp_path, damaged):
    """The newest checkpoint cut short (a process killed mid-write, a full disk): one warning line,
    and the run goes on from the previous checkpoint. Both damaged: one line, and the run trains
    again from the start in its same record. Either way the same MLflow run, each evaluation
    logged once, its end the uninterrupted run's."""
    run_in(tmp_path / "whole", *LONG)
    (want,) = runs_in(f"sqlite:///{tmp_path / 'whole' / 'mlflow.db'}")
    cut = tmp_path / "cut"
    killed_in(cut, *LONG, runs=1)
    (record,) = [p.parent for p in cut.rglob("record/events.jsonl")]
    slots = sorted(checkpoint.slot_paths(record / "checkpoint.bin"), key=checkpoint.sequence)
    # the kill came after 10 logged evaluations, maybe before the 10th was checkpointed: the newest
    # slot holds the 9th or the 10th, the previous one (read now, before the damage) one fewer
    previous = checkpoint.position(slots[0])
    for slot in slots[-1:] if damaged == "newest" else slots:
        data = slot.read_bytes()
        slot.write_bytes(data[: len(data) // 2])
    out = run_in(cut, *LONG)
    lines = [l for l in (out.stdout + out.stderr).splitlines() if "is damaged" in l]
    assert len(lines) == 1, out.stdout + out.stderr
    if damaged == "newest":
        assert "resumed from the previous checkpoint" in lines[0]
        (epoch,) = resumed_from(out.stdout + out.stderr)
        assert previous[1] == 0 and epoch == previous[0] >= 8, (epoch, previous)
    else:
        assert "trains again from the start" in lines[0] and "resumed from the start" in out.stdout + out.stderr
    uri = f"sqlite:///{cut / 'mlflow.db'}"
    (got,) = runs_in(uri)
    assert got.info.status == "FINISHED" and "nnexp.resumed" in got.data.tags
    assert_same_outcome(run_outcome(uri, got), run_outcome(f"sqlite:///{tmp_path / 'whole' / 'mlflow.db'}", want))


@pytest.mark.slow
def test_a_population_job_preempted_on_submitit_is_requeued_and_ends_the_sweep_with_its_launcher_gone(tmp_path):
    """``hydra/launcher=population_submitit_local``: the three runs train as one submitit job (one
    batched population). The job's process gets the preemption signal (USR2, as SLURM sends it)
    mid-way and the launching process is SIGKILLed: submitit requeues the job, which goes on with
    each run from its checkpoint, and, finishing the sweep's last run, ends the sweep's parent run
    (best child and all), though a process of this host found its launcher gone and ended it
    KILLED meanwhile. Each run ends bit-for-bit as the local population launcher's."""
    from conftest import descendants

    runs = ["-m", *LONG, "eta=0.1,0.5,3.0", "hydra.launcher.workers=1"]
    run_in(tmp_path / "whole", *runs)
    whole = f"sqlite:///{tmp_path / 'whole' / 'mlflow.db'}"
    want = {r.data.params["eta"]: r for r in runs_in(whole) if "nnexp.config_hash" in r.data.tags}
    cut = tmp_path / "cut"
    cut.mkdir()
    launcher = subprocess.Popen(command("nnexp.run", cut, *runs, "hydra/launcher=population_submitit_local"),
                                cwd=cut, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while True:
        children = [p.parent for p in cut.rglob("record*/events.jsonl") if '"nnexp.config_hash"' in p.read_text()]
        if len(children) == 3 and all(evaluations(r / "events.jsonl") >= 10 and checkpoint.exists(r / "checkpoint.bin")
                                      for r in children):
            break
        assert launcher.poll() is None, launcher.stderr.read()[-3000:]
        time.sleep(0.02)
    (task,) = [p for p in descendants(launcher.pid) if b"submitit.core._submit" in Path(f"/proc/{p}/cmdline").read_bytes()]
    os.kill(task, signal.SIGUSR2)  # preempted: submitit checkpoints the job and requeues it
    launcher.kill()  # and the launching process is gone (a closed laptop)
    launcher.wait()
    launcher.stderr.close()
    uri = f"sqlite:///{cut / 'mlflow.db'}"
    from nnexp.tracking import reap_dead_runs

    deadline = time.time() + 120
    while not [r for r in runs_in(uri) if "nnexp.config_hash" not in r.data.tags]:  # the parent is in the store
        assert time.time() < deadline, "the sweep's upload process never uploaded its parent run"
        time.sleep(0.1)
    reap_dead_runs(uri)  # a command on this host (in CI, the sweep's own upload process) ends it KILLED
    deadline = time.time() + 300  # a hang guard only: the job's end is the observed event
    while not [r for r in runs_in(uri) if "nnexp.config_hash" not in r.data.tags and r.info.status == "FINISHED"]:
        assert time.time() < deadline, "the requeued job did not end the sweep"
        time.sleep(0.2)  # the requeued job ends the sweep's parent run when it finishes the last run
    got = runs_in(uri)
    (parent,) = [r for r in got if "nnexp.config_hash" not in r.data.tags]
    children = [r for r in got if "nnexp.config_hash" in r.data.tags]
    assert sorted(r.data.params["eta"] for r in children) == sorted(want)
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["nnexp.resumed"].startswith("1, last from epoch")
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert_same_outcome(run_outcome(uri, run), run_outcome(whole, want[run.data.params["eta"]]))
    assert parent.info.status == "FINISHED"
    best = max(children, key=lambda r: r.data.metrics["best_validation_accuracy"])
    assert parent.data.metrics["best_validation_accuracy"] == best.data.metrics["best_validation_accuracy"]


def test_a_population_slurm_job_carries_the_launchers_parameters_and_asks_for_the_requeue_signal(tmp_path,
                                                                                                   monkeypatch):
    """The sbatch script submitit writes for a population job (``hydra/launcher=population_slurm``):
    partition, time, memory, cpus, the extra sbatch keys, and USR2 before the time limit (the
    signal that makes submitit checkpoint and requeue the job). No SLURM here: only ``srun`` is
    looked for, so a stand-in on PATH lets submitit write the script it would submit."""
    from nnexp.runner.cluster import ClusterSettings, executor

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    settings = ClusterSettings(kind="slurm", partition="cpu", timeout_min=120, mem_gb=8, cpus_per_task=2,
                               max_num_timeout=5, slurm={"account": "abc", "qos": "normal"})
    ex = executor(settings, tmp_path / "jobs")
    script = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=cpu", "--time=120", "--mem=8GB", "--cpus-per-task=2", "--account=abc", "--qos=normal",
                 "--signal=USR2@"):
        assert f"#SBATCH {line}" in script, line
    assert ex._executor.max_num_timeout == 5


def test_population_slurm_where_there_is_no_slurm_is_one_line_and_the_sweep_ends_failed(tmp_path):
    out = subprocess.run(command("nnexp.run", tmp_path, "-m", "dataset=digits", "eta=0.1,0.5",
                                 "hydra/launcher=population_slurm"), cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stdout + out.stderr
    (line,) = [l for l in (out.stdout + out.stderr).splitlines() if "are you indeed on a slurm cluster" in l]
    assert "hydra.launcher.submitit=slurm" in line
    (parent,) = runs_in(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert parent.info.status == "FAILED"


@pytest.mark.slow
def test_a_killed_studys_grid_trials_resume_as_the_same_runs_and_the_stage_decides_the_same(tmp_path):
    """The broad strategy's first stage (a grid of eta decades, three seeds each), SIGKILLed with
    trials mid-way and re-run: the points it retries go on from their checkpoints as the same
    MLflow runs (tagged with their new trial), every trial run ends bit-for-bit as the
    uninterrupted study's run of its (eta, seed), and the stage's decision is the same."""
    study = ["dataset=digits", "study.eta.epochs=40", "study.stop_after=eta_threshold", "study.workers=1"]

    def decision(out):
        (line,) = [l for l in (out.stdout + out.stderr).splitlines() if "stage eta_threshold:" in l]
        return line.split("stage eta_threshold:", 1)[1]

    whole_out = run_in(tmp_path / "whole", *study, module="nnexp.study")
    whole = f"sqlite:///{tmp_path / 'whole' / 'mlflow.db'}"
    cut = tmp_path / "cut"
    cut.mkdir()
    proc = subprocess.Popen(command("nnexp.study", cut, *study), cwd=cut, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    while not sum(evaluations(p.parent / "events.jsonl") >= 10 and checkpoint.exists(p.parent / "checkpoint.bin")
                  for p in cut.rglob("record*/events.jsonl")) >= 3:
        assert proc.poll() is None, "the study ended before it was killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    out = run_in(cut, *study, module="nnexp.study")
    assert len(resumed_from(out.stdout + out.stderr)) >= 3
    assert decision(out) == decision(whole_out)

    def trial_runs(uri):
        return {(r.data.params["eta"], r.data.params["seed"]): r for r in runs_in(uri) if "nnexp.trial" in r.data.tags}

    got, want = trial_runs(f"sqlite:///{cut / 'mlflow.db'}"), trial_runs(whole)
    assert sorted(got) == sorted(want)  # one run per (eta, seed): the resumed ones were not trained twice
    resumed = [k for k, r in got.items() if "nnexp.resumed" in r.data.tags]
    assert len(resumed) >= 3
    for key, run in got.items():
        assert run.info.status == "FINISHED"
        g, w = trial_outcome(f"sqlite:///{cut / 'mlflow.db'}", run), trial_outcome(whole, want[key])
        assert_same_outcome(g, w)


def trial_outcome(uri: str, run) -> tuple[dict, dict]:
    """A study trial's metric histories (but the clocks) and its final weights: a trial logs no
    model, so they are read from the final checkpoint beside its record."""
    from conftest import CLOCK_METRICS
    from nnexp.train import checkpoint

    client = MlflowClient(uri)
    metrics = {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
               for key in run.data.metrics if key not in CLOCK_METRICS}
    state = checkpoint.load(Path(run.data.tags["nnexp.record"]) / "checkpoint.bin", run.data.tags["nnexp.config_hash"])
    assert state.finished
    arrays = {f"w{l}": w for l, w in enumerate(state.weights)} | {f"b{l}": b for l, b in enumerate(state.biases)}
    return metrics, arrays


@pytest.mark.slow
def test_a_killed_reports_runs_resume_when_the_report_is_run_again(tmp_path):
    """``nnexp.report``: its runs SIGKILLed mid-way (one population of three), the same report run
    again relaunches them (a figure counts only FINISHED runs) and each goes on from its checkpoint
    as the same MLflow run, ending bit-for-bit as the uninterrupted report's run."""
    # 200 epochs: the two runs of the launching process must still train when the worker's run holds
    # its tenth evaluation and checkpoint. The worker imports no MLflow (0695318): with three CPU
    # hogs beside it, the pair stood at evaluation 36-41 then (it was 265-285 while the worker
    # imported MLflow, which 800 epochs covered)
    report = [sys.executable, "-m", "nnexp.report", "multiple_eta", "--seeds", "1", "-o", "dataset=digits",
              "-o", "epochs=200"]

    def env(cwd):
        return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}

    def by_hash(cwd):
        return {r.data.tags["nnexp.config_hash"]: r for r in runs_in(f"sqlite:///{cwd / 'mlflow.db'}")
                if "nnexp.config_hash" in r.data.tags}

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for d in (whole, cut):
        d.mkdir()
    done = subprocess.run(report, cwd=whole, env=env(whole), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    proc = subprocess.Popen(report, cwd=cut, env=env(cut), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    while True:
        children = [p.parent for p in cut.rglob("record*/events.jsonl") if '"nnexp.config_hash"' in p.read_text()]
        if len(children) == 3 and all(evaluations(r / "events.jsonl") >= 10 and checkpoint.exists(r / "checkpoint.bin")
                                      for r in children):
            break
        assert proc.poll() is None, "the report ended before it was killed"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    again = subprocess.run(report, cwd=cut, env=env(cut), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    got, want = by_hash(cut), by_hash(whole)
    assert sorted(got) == sorted(want) and len(got) == 3  # each configuration once: resumed, not trained twice
    for key, run in got.items():
        assert run.info.status == "FINISHED" and run.data.tags["nnexp.resumed"].startswith("1, last from epoch")
        assert_same_outcome(run_outcome(f"sqlite:///{cut / 'mlflow.db'}", run),
                            run_outcome(f"sqlite:///{whole / 'mlflow.db'}", want[key]))
