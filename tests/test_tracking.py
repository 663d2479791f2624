"""Tracking that never loses a run: the local record first, the store when it can,
``python -m nnexp.sync`` for the rest. Real components throughout: a real ``mlflow server``
subprocess (killed and restarted), real SQLite files, real processes and signals."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import BARRIER, free_port, in_store, start_together
from mlflow.tracking import MlflowClient

DIGITS = ["dataset=digits", "monitor.progress=false"]


class MlflowServer:
    """``mlflow server`` on a backend store, artifacts proxied; killable and restartable on
    the same port (the URL a run recorded). Without MLflow's job execution (GenAI jobs, which
    nnexp never submits): with it, each start spawns a job runner and three huey consumers, ten
    processes and 20-26 s of CPU in all, against two and 7-8 s (measured)."""

    def __init__(self, root: Path, backend: str):
        self.root, self.backend, self.port = root, backend, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 90) -> "MlflowServer":
        log = open(self.root / "server.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend,
             "--artifacts-destination", str(self.root / "served-artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return self
            except OSError:
                assert self.proc.poll() is None, (self.root / "server.log").read_text()[-2000:]
                time.sleep(0.3)
        raise AssertionError("mlflow server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture
def server(workdir):
    srv = MlflowServer(workdir, f"sqlite:///{workdir / 'server.db'}")
    yield srv
    srv.kill()


def run(module, *args, env=None, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)


def records(root: Path) -> list[Path]:
    return sorted(root.rglob("record*/events.jsonl"))


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def epochs_recorded(path: Path) -> list[int]:
    steps = [row[3] for e in events(path) if e["event"] == "metrics" for row in e["rows"]
             if row[0] == "validation_accuracy"]
    return steps


def runs_of(uri: str, experiment: str = "nnexp"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([exp.experiment_id], max_results=1000) if exp else [])


def wait_for(predicate, timeout: float = 120, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def assert_synced_once(workdir: Path, uri: str, n_runs: int) -> None:
    first = run("nnexp.sync", env={"MLFLOW_TRACKING_URI": ""})
    assert first.returncode == 0, first.stderr
    assert f"{n_runs} uploaded" in first.stdout, first.stdout + first.stderr
    again = run("nnexp.sync")
    assert again.returncode == 0 and "0 uploaded" in again.stdout and f"{n_runs} already" in again.stdout, again.stdout
    assert len(runs_of(uri)[1]) == n_runs


@pytest.mark.slow  # multi-process robustness: run by .ci/run
# -- the store goes away, or is never there ---------------------------------------------------
def test_a_server_killed_mid_run_loses_nothing_and_sync_uploads_the_run_once(workdir, server):
    server.start()
    env = {"MLFLOW_TRACKING_URI": server.url}
    untracked = time.perf_counter()
    assert run("nnexp.run", *DIGITS, "epochs=150", "tracking=off").returncode == 0
    untracked = time.perf_counter() - untracked
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "nnexp.run", *DIGITS, "epochs=150"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    path = wait_for(lambda: records(workdir), what="the run's record")[0]
    wait_for(lambda: in_store(path.parent) and len(epochs_recorded(path)) >= 3, what="training")
    server.kill()
    out, err = proc.communicate(timeout=300)
    elapsed = time.perf_counter() - t0
    err = out + err
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    # one line when the store went away, and the truth at the end
    assert err.count("does not answer") == 1, err
    summary = [line for line in err.splitlines() if "completed |" in line]
    assert len(summary) == 1 and "kept locally in" in summary[0] and "python -m nnexp.sync" in summary[0], err
    assert elapsed < 2 * untracked + 20, (elapsed, untracked)  # not blocked on a dead store
    # the local record is complete
    ev = events(path)
    assert ev[0]["event"] == "start" and ev[-1] == {**ev[-1], "event": "end", "status": "FINISHED"}
    assert epochs_recorded(path) == list(range(1, 151))
    assert {e["name"] for e in ev if e["event"] == "artifact"} >= {"model.npz", "history.csv", "config.yaml"}
    # the server back on the same backend: sync uploads it, once
    server.start()
    assert_synced_once(workdir, server.url, 1)
    client, (r,) = runs_of(server.url)
    assert r.info.status == "FINISHED" and r.data.tags["nnexp.status"] == "completed" and "nnexp.reaped" not in r.data.tags
    assert [m.step for m in client.get_metric_history(r.info.run_id, "validation_accuracy")] == list(range(1, 151))
    assert "model.npz" in {a.path for a in client.list_artifacts(r.info.run_id)}


@pytest.mark.slow  # multi-process robustness: run by .ci/run
def test_one_line_when_the_server_goes_away_and_one_when_it_is_back(workdir, server):
    import threading

    server.start()
    proc = subprocess.Popen([sys.executable, "-m", "nnexp.run", *DIGITS, "epochs=100000"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": server.url})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        path = wait_for(lambda: records(workdir), what="the run's record")[0]
        wait_for(lambda: in_store(path.parent), what="the run in the store")
        server.kill()
        wait_for(lambda: any("does not answer" in line for line in lines), what="the outage line")
        server.start()
        wait_for(lambda: any("answers again:" in line for line in lines), timeout=120, what="the line it is back")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    text = "".join(lines)
    assert proc.returncode == 130, text
    assert text.count("does not answer") == 1 and text.count("answers again:") == 1, text
    said = [line for line in lines if "interrupted: " in line]
    assert len(said) == 1 and "recorded KILLED" in said[0] and server.url in said[0], text  # in the store: true
    client, (r,) = runs_of(server.url)
    assert r.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(r.info.run_id, "validation_accuracy")] == epochs_recorded(path)


@pytest.mark.slow  # multi-process robustness: run by .ci/run
def test_a_server_down_from_the_start_gets_the_run_at_sync_time(workdir, server):
    env = {"MLFLOW_TRACKING_URI": server.url}  # nothing listens there yet
    out = run("nnexp.run", *DIGITS, "epochs=3", env=env)
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert "Traceback" not in text and "kept locally in" in text, text
    assert sum("does not answer" in line or "cannot be reached" in line for line in text.splitlines()) == 1, text
    server.start()
    assert_synced_once(workdir, server.url, 1)
    client, (r,) = runs_of(server.url)
    assert r.info.status == "FINISHED" and len(client.get_metric_history(r.info.run_id, "validation_accuracy")) == 3


class SlowProxy:
    """An HTTP proxy in front of a real ``mlflow server`` that answers every request ``delay``
    seconds late: a slow store, as opposed to a dead one. Counts the requests it forwarded."""

    def __init__(self, target: str, delay: float):
        import http.server
        import threading

        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(delay)
                req = urllib.request.Request(target + self.path, data=body or None, method=self.command,
                                             headers={k: v for k, v in self.headers.items()
                                                      if k.lower() not in ("host", "content-length")})
                try:
                    with urllib.request.urlopen(req, timeout=60) as resp:
                        status, headers, payload = resp.status, resp.headers, resp.read()
                except urllib.error.HTTPError as err:
                    status, headers, payload = err.code, err.headers, err.read()
                proxy.requests += 1
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, *args):
                pass

        self.requests = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow  # multi-process robustness: run by .ci/run
def test_a_slow_store_never_holds_training_back_and_gets_every_metric(workdir, server):
    """Every store request answered 0.5 s late: training does not wait for the store (the run's
    record reaches its end while the store has only part of its metrics, observed), and the
    store still gets every metric before the command returns."""
    server.start()
    proxy = SlowProxy(server.url, delay=0.5)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "nnexp.run", *DIGITS, "epochs=40"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": proxy.url})
        path = wait_for(lambda: records(workdir), what="the run's record")[0]
        wait_for(lambda: events(path)[-1]["event"] == "end", timeout=300, what="the end of training")
        run_id = wait_for(lambda: in_store(path.parent), what="the run in the store")
        stored = len(MlflowClient(server.url).get_metric_history(run_id, "validation_accuracy"))
        assert len(epochs_recorded(path)) == 40 and stored < 40, stored  # trained on ahead of the store
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "Traceback" not in err, err
        client, (r,) = runs_of(server.url)
        assert r.info.status == "FINISHED" and len(client.get_metric_history(r.info.run_id, "validation_accuracy")) == 40
    finally:
        proxy.close()


@pytest.mark.slow  # multi-process robustness: run by .ci/run
def test_a_sweep_whose_server_is_killed_is_synced_parent_and_children_nested(workdir, server):
    server.start()
    # one worker: the four runs train as one population, in step, so none can end (and be
    # uploaded whole) before the others have started: every child is cut off by the kill
    proc = subprocess.Popen([sys.executable, "-m", "nnexp.run", "-m", *DIGITS, "epochs=120", "seed=0,1,2,3",
                             "hydra.launcher.workers=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": server.url}, start_new_session=True)
    def children_training():
        kids = [p for p in records(workdir) if p.parent.parent.name.isdigit()]  # multirun/.../N/record/
        return len(kids) == 4 and all(len(epochs_recorded(p)) >= 2 for p in kids)

    wait_for(children_training, what="the sweep's runs")
    os.killpg(proc.pid, signal.SIGSTOP)  # held still while its store goes away: no run can end first
    unfinished = [p for p in records(workdir) if events(p)[-1]["event"] != "end"]
    if len(unfinished) != 5:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{5 - len(unfinished)} run(s) ended before the server was killed: nothing to exercise")
    server.kill()
    os.killpg(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    server.start()
    assert_synced_once(workdir, server.url, 5)
    client, runs = runs_of(server.url)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(k.data.params["seed"] for k in kids) == ["0", "1", "2", "3"]
    assert all(len(client.get_metric_history(k.info.run_id, "validation_accuracy")) == 120 for k in kids)
    # they finished: a run whose end the store missed is caught up, never taken for a dead one
    assert {k.info.status for k in kids} == {"FINISHED"} and not any("nnexp.reaped" in r.data.tags for r in runs)


# -- many processes, one fresh SQLite file ---------------------------------------------------------
COMMAND = BARRIER + """
import sys
import mlflow.tracking, optuna  # noqa: F401 - imported before the release, as the command's own imports
from nnexp.cli import run, study
ready_then_wait(sys.argv[2])
getattr(sys.modules["nnexp.cli." + sys.argv[1]], "main")(sys.argv[3:])
"""


def start_commands(command: str, argvs: list[list[str]], barrier: Path, env: dict) -> list:
    """``python -m nnexp.<command> ARGV`` per argv, each entering its command at the same instant
    (released together once every one has imported it; observed: each one's ready file)."""
    return start_together([[sys.executable, "-c", COMMAND, command, str(barrier), *argv] for argv in argvs],
                          barrier, env=env)


@pytest.mark.slow  # 12+ CPU seconds: run by .ci/run
def test_four_runs_started_at_once_on_a_fresh_sqlite_store_are_all_recorded(workdir, tmp_path_factory):
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    procs = start_commands("run", [[*DIGITS, "epochs=2", f"seed={i}"] for i in range(4)],
                           tmp_path_factory.mktemp("barrier"), env)
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    assert not any("kept locally" in o + e for o, e in outs), outs
    _, found = runs_of(uri)
    assert sorted(r.data.params["seed"] for r in found) == ["0", "1", "2", "3"]
    assert {r.info.status for r in found} == {"FINISHED"}


OPENER = BARRIER + """
import sys
kind, url, folder = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "mlflow":
    import mlflow.tracking  # noqa: F401 - imported, the store not yet opened
    from nnexp.tracking.store import client, experiment_id
    ready_then_wait(folder)
    client(url)  # opens (creates) the fresh store
    print(experiment_id(url, "nnexp"))
else:
    import optuna
    from nnexp.search.backend import make_storage
    ready_then_wait(folder)
    storage = make_storage(url)
    print(optuna.create_study(study_name="s", storage=storage, load_if_exists=True).study_name)
"""


@pytest.mark.parametrize("kind", [pytest.param("mlflow", marks=pytest.mark.slow), "optuna"])  # mlflow: 12+ CPU s, .ci/run
def test_four_processes_opening_a_fresh_sqlite_file_at_the_same_instant(workdir, kind, tmp_path_factory):
    """Four processes, released together once each has imported what it needs (observed: each one's
    ready file), create the same fresh store: all succeed and see one experiment (one study)."""
    url = f"sqlite:///{workdir / 'fresh.db'}"
    barrier = tmp_path_factory.mktemp("barrier")
    procs = start_together([[sys.executable, "-c", OPENER, kind, url, str(barrier)] for _ in range(4)], barrier)
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-1500:] for _, e in outs]
    assert len({o.strip() for o, _ in outs}) == 1  # one experiment (one study), the same for all


@pytest.mark.slow  # 12+ CPU seconds: run by .ci/run
def test_two_studies_started_at_once_on_a_fresh_optuna_sqlite_storage(workdir, tmp_path_factory):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
    args = ["study=tpe", "dataset=digits", "study.epochs=2", "study.n_trials=2",
            "study.stop_after=search", f"study.storage=sqlite:///{workdir / 'optuna.db'}"]
    procs = start_commands("study", [args, args], tmp_path_factory.mktemp("barrier"), env)
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-3000:] for _, e in outs]
    import optuna

    study = optuna.load_study(study_name="tpe/search", storage=f"sqlite:///{workdir / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") >= 2 and "FAIL" not in states and "RUNNING" not in states, states


# -- a run killed without warning ------------------------------------------------------------------
def test_a_sigkilled_run_is_ended_killed_with_its_metrics_by_the_next_command(workdir):
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.Popen([sys.executable, "-m", "nnexp.run", *DIGITS, "epochs=2000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    path = wait_for(lambda: records(workdir), what="the run's record")[0]
    wait_for(lambda: len(epochs_recorded(path)) >= 5, what="training")
    uploader = upload_process_of(proc.pid)
    proc.kill()
    proc.communicate(timeout=60)
    wait_for(lambda: not alive(uploader), what="its upload process to upload what it holds and end")
    recorded = epochs_recorded(path)
    _, (r,) = runs_of(uri)
    assert r.info.status == "RUNNING"  # what the store believes until someone looks
    out = run("nnexp.run", *DIGITS, "epochs=1", env={"MLFLOW_TRACKING_URI": uri})  # any command on the store
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert "was still RUNNING" in text and "ended KILLED" in text, text
    client, found = runs_of(uri)
    dead = next(x for x in found if x.info.run_id == r.info.run_id)
    assert dead.info.status == "KILLED" and dead.data.tags["nnexp.status"] == "killed"
    assert f"process {proc.pid}" in dead.data.tags["nnexp.reaped"]
    assert [m.step for m in client.get_metric_history(r.info.run_id, "validation_accuracy")] == recorded
    assert events(path)[-1]["status"] == "KILLED"  # the record says so too


def test_a_live_run_of_this_host_is_not_reaped(workdir):
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.Popen([sys.executable, "-m", "nnexp.run", *DIGITS, "epochs=2000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        path = wait_for(lambda: records(workdir), what="the run's record")[0]
        wait_for(lambda: in_store(path.parent), what="the run in the store")
        out = run("nnexp.sync")
        assert out.returncode == 0, out.stderr
        assert "still RUNNING" not in out.stdout + out.stderr
        _, found = runs_of(uri)
        assert [r.info.status for r in found] == ["RUNNING"]
    finally:
        proc.kill()
        proc.communicate()


def test_the_socket_folder_of_an_upload_process_killed_with_its_sweep_is_removed_by_the_next_one(workdir):
    """SIGKILL to a run's process group (a killed job, a closed terminal) kills its upload process
    too, and no clean-up runs: its socket's folder stays in the temporary directory. The next
    upload process of the host removes it once it is a minute old, and leaves a folder whose
    socket is listened on (one whose backlog is full too: a process stopped, not dead), and one
    younger than a minute."""
    from nnexp.tracking.upload_process import FOLDER_PREFIX, STALE_SECONDS

    tmp = workdir / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
    proc = subprocess.Popen([sys.executable, "-m", "nnexp.run", *DIGITS, "epochs=100000"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        path = wait_for(lambda: records(workdir), what="the run's record")[0]
        wait_for(lambda: len(epochs_recorded(path)) >= 1 and upload_process_of(proc.pid), what="training")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (killed,) = tmp.glob(FOLDER_PREFIX + "*")
    assert (killed / "socket").exists()  # left behind
    live, full, young = (tmp / f"{FOLDER_PREFIX}{name}" for name in ("live", "full", "young"))
    for folder in (live, full, young):
        folder.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(live / "socket"))
    listener.listen(1)
    stopped = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stopped.bind(str(full / "socket"))
    stopped.listen(0)  # never accepts: one connection fills its backlog
    waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    waiting.connect(str(full / "socket"))
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(young / "socket"))  # bound, nobody listening: as the killed one's
    dead.close()
    a_minute_ago = time.time() - STALE_SECONDS - 1
    for folder in (killed, live, full):
        os.utime(folder, (a_minute_ago, a_minute_ago))
    try:
        out = run("nnexp.run", *DIGITS, "epochs=1", env=env)
    finally:
        for s in (listener, stopped, waiting):
            s.close()
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp.glob(FOLDER_PREFIX + "*")) == sorted([live.name, full.name, young.name])


def test_a_killed_owner_is_dead_before_it_is_reaped(tmp_path):
    """A SIGKILLed process stays a zombie until its parent reaps it (a pool worker of a killed
    launcher: until init does). Its record is then free to resume, not "being trained by process
    N" (a killed report's run was trained again as a new run, in CI)."""
    from nnexp.tracking.record import RunRecord, process_alive, process_start

    child = subprocess.Popen(["sleep", "60"])
    try:
        start = process_start(child.pid)
        assert start is not None and process_alive(child.pid, start)
        rec = RunRecord.create(tmp_path / "run", uri=f"sqlite:///{tmp_path / 'm.db'}", experiment="e", run_name="r",
                               params={}, tags={})
        rec._append({"event": "resume", "from": "epoch 1", "time": 0, "host": socket.gethostname(),
                     "pid": child.pid, "pid_start": start, "slurm_job": None})
        assert rec.owner_alive()
        child.kill()
        wait_for(lambda: Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
                 what="the killed child to be a zombie")  # killed, not reaped: its /proc entry is still there
        assert process_start(child.pid) is None and not process_alive(child.pid, start)
        assert not rec.owner_alive() and rec.claim("epoch 1")
    finally:
        child.kill()
        child.wait()


PARENT_SCRIPT = """
import sys
from pathlib import Path
from nnexp.tracking import ParentRun
uri, root = sys.argv[1], Path(sys.argv[2])
for name in ("reaped", "ended"):  # a sweep's parent run each, uploaded; this process then exits
    parent = ParentRun(uri, "nnexp", name=name, tags={"nnexp.sweep": name}, run_dir=root / name)
    if name == "ended":
        parent.end("FINISHED")
"""


def test_a_sweeps_parent_reaped_while_its_cluster_jobs_go_on_is_ended_by_the_job_that_finishes_it(tmp_path):
    """The launching process of a submitit sweep is gone (SIGKILL, a closed laptop) and a
    command on the host ends its RUNNING parent run KILLED; the job that finishes the sweep's
    last run then ends it FINISHED, the reaper's tags gone (in CI, a sweep's own upload process,
    opening the store after its launcher was killed, reaped the parent and the sweep never
    ended). A parent its own process ended stays as it is."""
    from nnexp.tracking import ParentRun, reap_dead_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    made = subprocess.run([sys.executable, "-c", PARENT_SCRIPT, uri, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert made.returncode == 0, made.stderr
    client, found = runs_of(uri)
    ids = {r.info.run_name: r.info.run_id for r in found}
    assert {r.info.run_name: r.info.status for r in found} == {"reaped": "RUNNING", "ended": "FINISHED"}
    assert reap_dead_runs(uri) == [ids["reaped"]]
    reaped = client.get_run(ids["reaped"])
    assert reaped.info.status == "KILLED" and "nnexp.reaped" in reaped.data.tags

    line = ParentRun.of_record(tmp_path / "reaped" / "record").end_sweep("FINISHED")
    assert line == f"0 runs; parent run {ids['reaped']} ({uri})", line  # (no child run here)
    ended = client.get_run(ids["reaped"])
    assert ended.info.status == "FINISHED" and ended.info.end_time >= reaped.info.end_time
    assert not {"nnexp.reaped", "nnexp.status"} & set(ended.data.tags), ended.data.tags
    assert ParentRun.of_record(tmp_path / "reaped" / "record").end_sweep("FINISHED").startswith("ended already")

    before = client.get_run(ids["ended"])
    assert ParentRun.of_record(tmp_path / "ended" / "record").end_sweep("KILLED").startswith("ended already")
    after = client.get_run(ids["ended"])
    assert (after.info.status, after.info.end_time, after.data.tags) == ("FINISHED", before.info.end_time,
                                                                          before.data.tags)


@pytest.mark.slow  # multi-process robustness: run by .ci/run
# -- a study whose store goes away --------------------------------------------------------------------
def test_a_study_whose_server_goes_away_mid_trial_makes_up_no_value(workdir, server):
    import optuna

    server.start()
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nnexp.study", "study=tpe", "dataset=digits", "study.epochs=60", "study.n_trials=3",
         "study.pruner=none", "study.patience=1000", "study.stop_after=search", f"study.storage={storage}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": server.url})

    def a_trial_running():
        try:
            trials = optuna.load_study(study_name="tpe/search", storage=storage).trials
        except Exception:  # noqa: BLE001 - not created yet
            return False
        return any(t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs for t in trials)

    wait_for(a_trial_running, what="a trial")
    server.kill()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name="tpe/search", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    for t in trials:  # each value is what its run measured, as its local record shows
        rec = Path(t.user_attrs["run_dir"]) / "record" / "events.jsonl"
        best = max(row[1] for e in events(rec) if e["event"] == "metrics" for row in e["rows"]
                   if row[0] == "validation_accuracy")
        assert t.value == best
    server.start()
    sync = run("nnexp.sync")
    assert sync.returncode == 0, sync.stderr
    client, found = runs_of(server.url)
    kids = [r for r in found if "nnexp.trial" in r.data.tags]
    assert sorted(int(k.data.tags["nnexp.trial"]) for k in kids) == [0, 1, 2]
    parent = next(r for r in found if r.data.tags.get("nnexp.stage") == "study")
    assert {k.data.tags["mlflow.parentRunId"] for k in kids} == {parent.info.run_id}


@pytest.mark.slow  # multi-process robustness: run by .ci/run
# -- across machines -------------------------------------------------------------------------------------
def test_an_mlflow_server_on_postgresql_records_runs_and_sweeps_over_http(workdir, postgres):
    backend = postgres("mlflowstore").replace("postgresql://", "postgresql+psycopg://")
    srv = MlflowServer(workdir, backend).start()
    try:
        env = {"MLFLOW_TRACKING_URI": srv.url}
        one = run("nnexp.run", *DIGITS, "epochs=2", env=env)
        assert one.returncode == 0 and f"({srv.url})" in one.stdout + one.stderr, one.stdout + one.stderr
        sweep = run("nnexp.run", "-m", *DIGITS, "epochs=1", "eta=0.1,1.0", env=env)
        assert sweep.returncode == 0, sweep.stderr
        client, found = runs_of(srv.url)
        assert len(found) == 4 and {r.info.status for r in found} == {"FINISHED"}
        parent = next(r for r in found if r.data.tags.get("nnexp.sweep") and "mlflow.parentRunId" not in r.data.tags)
        kids = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(k.data.params["eta"] for k in kids) == ["0.1", "1.0"]
        single = next(r for r in found if "nnexp.sweep" not in r.data.tags)
        assert "model.npz" in {a.path for a in client.list_artifacts(single.info.run_id)}  # proxied by the server
        assert not list(workdir.rglob("mlflow.db"))  # nothing went to a local store instead
    finally:
        srv.kill()


def test_a_submitit_local_sweep_nests_its_jobs_under_the_parent_run(workdir):
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    out = run("nnexp.run", "-m", "hydra/launcher=submitit_local", *DIGITS, "epochs=1", "seed=0,1",
              env={"MLFLOW_TRACKING_URI": uri})
    assert out.returncode == 0, out.stderr[-3000:]
    _, found = runs_of(uri)
    parent = next(r for r in found if "mlflow.parentRunId" not in r.data.tags)
    kids = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(k.data.params["seed"] for k in kids) == ["0", "1"] and len(found) == 3
    assert {r.info.status for r in found} == {"FINISHED"}


def test_a_fresh_sqlite_store_is_a_copy_of_the_empty_store_and_works_like_one_mlflow_made(tmp_path, monkeypatch):
    """A new store file is copied from an empty store MLflow created once (per release, in the
    cache): the same schema revision and tables as one MLflow migrates itself, the Default
    experiment's artifact location MLflow would give, and it records runs; a damaged template is
    removed with one warning and MLflow creates the store itself."""
    import sqlite3

    from nnexp.tracking import store

    monkeypatch.setenv("NNEXP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    own = MlflowClient(f"sqlite:///{tmp_path / 'own.db'}")  # MLflow creates and migrates this one itself
    own.search_experiments()
    copied = store.client(f"sqlite:///{tmp_path / 'copied.db'}")  # makes the template, then copies it
    (template,) = (tmp_path / "cache").glob("mlflow-*-empty.db")

    def schema(db):
        """The schema revision and every table's definition, its lines in any order (MLflow's own
        migrations write a table's CHECK constraints in an order that varies from run to run)."""
        with sqlite3.connect(db) as con:
            tables = con.execute("select name, sql from sqlite_master where type = 'table'").fetchall()
            return (con.execute("select version_num from alembic_version").fetchall(),
                    sorted((name, sorted(line.strip().rstrip(",") for line in sql.splitlines()))
                           for name, sql in tables))

    assert schema(tmp_path / "copied.db") == schema(tmp_path / "own.db")
    assert copied.get_experiment("0").artifact_location == own.get_experiment("0").artifact_location
    exp = copied.create_experiment("e")
    run = copied.create_run(exp)
    copied.log_metric(run.info.run_id, "validation_accuracy", 0.5, step=1)
    copied.set_terminated(run.info.run_id)
    assert MlflowClient(f"sqlite:///{tmp_path / 'copied.db'}").get_run(run.info.run_id).data.metrics == \
        {"validation_accuracy": 0.5}
    # the next fresh store is copied without migrating: MLflow's table creation is never called
    import mlflow.store.db.utils as db_utils

    def no_migration(*args, **kwargs):
        raise AssertionError("migrated instead of copied")

    monkeypatch.setattr(db_utils, "_initialize_tables", no_migration)
    store.client(f"sqlite:///{tmp_path / 'second.db'}").search_experiments()
    monkeypatch.undo()
    monkeypatch.setenv("NNEXP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    template.write_bytes(b"not a database " * 100)
    third = store.client(f"sqlite:///{tmp_path / 'third.db'}")
    assert third.search_experiments()[0].name == "Default" and not template.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no copy left aside


def test_a_run_created_just_before_a_crash_is_found_again_not_duplicated(tmp_path, monkeypatch):
    """An upload that dies after MLflow created the run but before the record said so: the next
    upload finds that run by the record's id and goes on in it (one run, every event). A record
    never uploaded before creates its run without looking (nothing can exist yet)."""
    from nnexp.tracking import record as record_module
    from nnexp.tracking.record import RunRecord
    from nnexp.tracking.upload import upload

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rec = RunRecord.create(tmp_path / "run", uri=uri, experiment="nnexp", run_name="r", params={"eta": "0.5"},
                           tags={})
    rec.metrics([("validation_accuracy", 0.5, 0, 1)])
    rec.end("FINISHED")
    saved = record_module.RunRecord.save_state
    calls = []

    def crash_once_the_run_exists(self, state):
        calls.append(dict(state))
        if state.get("run_id"):  # MLflow has the run; the record is about to say so: the process dies
            raise KeyboardInterrupt("killed")
        saved(self, state)

    monkeypatch.setattr(record_module.RunRecord, "save_state", crash_once_the_run_exists)
    with pytest.raises(KeyboardInterrupt):
        upload(rec)
    monkeypatch.setattr(record_module.RunRecord, "save_state", saved)
    assert calls[0] == {"uri": rec.start["uri"], "run_id": None, "done": 0}  # said before creating
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("nnexp").experiment_id
    assert len(client.search_runs([exp])) == 1 and rec.run_id() is None  # created, the record unaware
    run_id = upload(rec)
    (run,) = client.search_runs([exp])
    assert run.info.run_id == run_id == rec.run_id() and run.info.status == "FINISHED"
    assert run.data.metrics == {"validation_accuracy": 0.5} and run.data.params == {"eta": "0.5"}


# -- a sweep's one upload process ------------------------------------------------------------------
def alive(pid: int) -> bool:
    from nnexp.cli.callbacks import _alive

    return _alive(pid)


def upload_process_of(pid: int) -> int | None:
    """The upload process among ``pid``'s children (its command line names the module)."""
    from nnexp.cli.callbacks import child_processes

    for kid in child_processes(pid):
        try:
            if b"nnexp.tracking.upload_process" in Path(f"/proc/{kid}/cmdline").read_bytes():
                return kid
        except OSError:
            pass
    return None


def test_no_process_of_a_population_sweep_imports_mlflow_one_upload_process_uploads_every_run(workdir):
    """The launching process and its pool worker train without MLflow (``-X importtime``, which
    spawned workers inherit, lists every module each imported): the sweep's one upload process
    opens the store and uploads the parent and every run. Fails if any training process uploads
    its own runs (it imports MLflow then)."""
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "nnexp.run", "-m", *DIGITS, "epochs=3",
                          "eta=0.5,1,3", "seed=0,1"], cwd=workdir, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    imported = [line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")]
    assert imported.count("nnexp.train.loop") == 2  # both training processes reported their imports
    assert not [m for m in imported if m.split(".")[0] in ("mlflow", "sqlalchemy", "alembic")]
    assert "6 jobs in 2 population(s) (3, 3) on 2 process(es)" in out.stderr + out.stdout
    client, runs = runs_of(uri)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(children) == 6 and {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["nnexp.pid"] for r in children}) == 2  # trained in two processes, uploaded by a third
    for r in children:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "validation_accuracy")] == [1, 2, 3]
    best = max(children, key=lambda r: r.data.metrics["best_validation_accuracy"])
    assert parent.data.tags["nnexp.best_child"] == best.info.run_id


RUN_JOBS_SCRIPT = """
import json, os, sys
from nnexp import runner

if __name__ == "__main__":  # worker processes are spawned: the README's guard
    jobs = [runner.compose(["dataset=digits", "epochs=3", f"eta={eta}", f"tracking.uri={sys.argv[1]}"])
            for eta in (0.5, 1, 2, 3)]
    results = runner.run_jobs(jobs, workers=2, max_members=2)
    print(json.dumps({"pid": os.getpid(), "runs": [r.run_id for r in results]}))
"""


def test_run_jobs_from_python_uploads_through_one_upload_process_no_training_process_imports_mlflow(workdir):
    """``runner.run_jobs`` (the Python API, the report) starts an upload process as a sweep does:
    its worker trains from its first epoch without importing MLflow (a report's worker spent
    5 s of a loaded machine on it before its first epoch), and neither does the launching
    process. Fails if any training process uploads (it imports MLflow then)."""
    import json

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    (workdir / "jobs.py").write_text(RUN_JOBS_SCRIPT)
    out = subprocess.run([sys.executable, "-X", "importtime", "jobs.py", uri], cwd=workdir, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    imported = [line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")]
    assert imported.count("nnexp.train.loop") == 2  # both training processes reported their imports
    assert not [m for m in imported if m.split(".")[0] in ("mlflow", "sqlalchemy", "alembic")]
    got = json.loads(out.stdout.splitlines()[-1])
    client, runs = runs_of(uri)
    assert sorted(r.info.run_id for r in runs) == sorted(got["runs"])
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["nnexp.pid"] for r in runs}) == 2  # two populations, two processes
    for r in runs:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "validation_accuracy")] == [1, 2, 3]


@pytest.mark.slow  # 12+ CPU seconds: run by .ci/run
def test_a_sweep_whose_upload_process_is_killed_uploads_its_runs_from_the_training_processes(workdir):
    """The upload process SIGKILLed while both populations train (each run's record holds an
    evaluation: its start was sent): each population finds it gone when it next asks (at its
    end), says so in one line and uploads its own runs; every run ends FINISHED with each of its
    evaluations logged once, the parent with its best child."""
    uri, epochs = f"sqlite:///{workdir / 'mlflow.db'}", 100
    proc = subprocess.Popen([sys.executable, "-m", "nnexp.run", "-m", *DIGITS, f"epochs={epochs}", "eta=0.5,1,2,3"],
                            cwd=workdir, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        paths = wait_for(lambda: len(records(workdir)) == 5 and records(workdir), what="the records")
        runs = [p for p in paths if events(p)[0]["params"]]  # (the parent has no params)
        wait_for(lambda: all(epochs_recorded(p) for p in runs), what="all four runs training")
        uploader = upload_process_of(proc.pid)
        assert uploader is not None
        os.kill(uploader, signal.SIGKILL)
        assert all(len(epochs_recorded(p)) < epochs for p in runs)  # killed while they train
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    gone = [line for line in (out + err).splitlines() if "the upload process is gone" in line]
    assert len(gone) == 2, gone  # one line per population
    client, found = runs_of(uri)
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 4 and {r.info.status for r in found} == {"FINISHED"}
    for r in children:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "validation_accuracy")]
        assert steps == list(range(1, epochs + 1))
    (parent,) = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.tags["nnexp.best_child"] in {r.info.run_id for r in children}
