"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest

#: the test files, longest first (seconds on one core, measured): xdist hands out whole files
#: (--dist loadfile) in collection order, so the two workers end together when the long ones go
#: first and the short ones fill in. Files not listed go last, in their usual order.
LONGEST_FIRST = ("test_study.py", "test_run.py", "test_report.py", "test_resume.py", "test_bench.py",
                 "test_tracking.py", "test_population.py", "test_pbt.py", "test_asha.py", "test_scheduling.py",
                 "test_notebooks.py")


#: the slow part (``-m slow``, run by .ci/run with ``-n 3 --dist loadgroup --no-loadscope-reorder``):
#: the MNIST tests, the multi-process robustness tests, and every test that costs 12 CPU seconds
#: or more (measured), which keeps the default suite under 5 minutes on two cores. Its tests wait on
#: servers, heartbeats and killed processes, so a third worker fills the idle core (509 s, 0.6% of
#: the CPU idle, against 525 s and 5.3% with two workers, measured). Tests that share a module
#: fixture carry one ``xdist_group``: one worker runs them, so the fixture is built once. Test by
#: test (a group where its first member comes), longest first (wall seconds in a run of the suite,
#: measured): xdist hands them out in this order, so no long test starts last. (By file, the 385 s
#: lambda-stage test started at 181 s and the 82 s overfitting one at 652 s: the suite took 771 s
#: on 1,130 CPU seconds.) Tests not listed go last.
SLOW_LONGEST_FIRST = (
    "test_the_lambda_stage_decides_on_a_signal_it_can_show",  # 197 s
    "test_a_run_the_report_launched_gives_exactly_the_plain_run_of_its_job",  # the report_store group
    "test_chapter3_regularized_network_reaches_the_books_accuracy",
    "test_chapter1_network_reaches_the_books_accuracy",
    "test_pbt_on_mnist_finds_a_schedule_whose_replay_reaches_the_floor",
    "test_overfitting_figures_on_mnist",
    "test_a_killed_studys_grid_trials_resume_as_the_same_runs_and_the_stage_decides_the_same",
    "test_asha_on_mnist_chooses_a_configuration_above_the_floor",
    "test_a_sweep_through_another_launcher_gives_each_run_exactly_its_plain_run",  # plain_digits group
    "test_the_study_section_compares_six_methods_at_equal_wall_clock",  # the bench_study group
    "test_a_pbt_study_is_bit_identical_when_killed_and_resumed",  # the pbt_whole group
    "test_the_more_data_figure_on_two_sizes_has_the_books_svm_numbers",  # 73 s
    "test_a_killed_reports_runs_resume_when_the_report_is_run_again",
    "test_a_server_killed_mid_run_loses_nothing_and_sync_uploads_the_run_once",
    "test_a_study_whose_server_goes_away_mid_trial_makes_up_no_value",
    "test_a_sweep_whose_server_is_killed_is_synced_parent_and_children_nested",
    "test_mnist_sweep_records_are_identical_through_the_basic_and_the_default_launcher",
    "test_regularized_full_preset_through_the_cli",
    "test_one_line_when_the_server_goes_away_and_one_when_it_is_back",  # 35 s
    "test_an_interrupted_study_exits_130_in_one_line_and_a_rerun_resumes",
    "test_an_interrupted_asha_study_exits_130_in_one_line_and_a_rerun_completes",
    "test_a_run_killed_with_sigkill_and_run_again_is_the_same_mlflow_run_bit_for_bit",
    "test_every_section_prints_its_table_with_its_rows",
    "test_run_jobs_as_a_python_call_and_an_idle_worker_takes_over_half_of_a_population",
    "test_eta_is_readjusted_at_the_chosen_mini_batch_size_before_the_final_run",
    "test_a_study_from_python_decides_as_the_same_study_from_the_command_line",
    "test_two_studies_started_at_once_on_a_fresh_optuna_sqlite_storage",
    "test_a_population_job_preempted_on_submitit_is_requeued_and_ends_the_sweep_with_its_launcher_gone",
    "test_a_slow_store_never_holds_training_back_and_gets_every_metric",
    "test_a_worker_killed_mid_trial_is_failed_by_heartbeat_and_retried_from_its_checkpoint",  # 4 of 23-31 s
)


def name_the_xdist_groups(config, items) -> None:
    """``--dist loadgroup`` runs the tests of one ``xdist_group`` on one worker by the suffix
    ``@group`` each worker adds to their node ids. pytest-xdist 3.8 sets it on ``item._nodeid``,
    which pytest 9.2 no longer reads (it reads ``item._id``): the suffix never showed and a group's
    tests went to every worker, each building the group's module fixture again (measured: the
    report's store built four times in one run of the slow part; and on a toy file, three tests of
    one group ran on both workers, on one with this). The same suffix, where pytest 9.2 reads it."""
    if not getattr(config.option, "loadgroup", False):  # set in xdist's workers under --dist loadgroup
        return
    from _pytest.nodeid import coerce_node_id

    for item in items:
        groups = sorted({str(m.args[0]) for m in item.iter_markers("xdist_group")})
        if groups and "@" not in item.nodeid:
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(groups)}")


def pytest_collection_modifyitems(session, config, items):
    name_the_xdist_groups(config, items)
    if config.getoption("markexpr", "").strip() == "slow":  # (deselection by -m comes after this hook)
        rank = {name: i for i, name in enumerate(SLOW_LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.originalname, len(rank)))  # stable: the rest keep their order
    else:
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _has_mnist(directory: Path) -> bool:
    return any(all((d / f).is_file() for f in _MNIST_FILES) for d in (directory / "mnist", directory))


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The directory holding the real MNIST files (``<d>/mnist/*.gz`` or ``<d>/*.gz``).

    ``$NNEXP_DATA_DIR`` if set, else ``../shared/data`` beside the repository; skips only if missing.
    """
    env = os.environ.get("NNEXP_DATA_DIR", "").strip()
    directory = Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not _has_mnist(directory):
        if os.environ.get("CI"):  # in CI the data must be there: a skip would hide a broken setup
            pytest.fail(f"real MNIST files not found under {directory} (CI must provide ../shared/data)")
        pytest.skip(f"real MNIST files not found under {directory} (set NNEXP_DATA_DIR)")
    return directory


REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- PostgreSQL: a real server, started here ----------------------------------------------------
@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session; returns ``database(name) -> URL`` (created once)."""
    import glob
    import shutil
    import subprocess
    import tempfile

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
        pytest.skip("PostgreSQL server binaries not installed")
    bindir = Path(bins[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="nnexp-pg-", dir="/tmp"))
    os.chmod(root, 0o755)
    as_user = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    made: set[str] = set()

    def database(name: str) -> str:
        if name not in made:
            subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c",
                            f"CREATE DATABASE {name}"], check=True, capture_output=True)
            made.add(name)
        return f"postgresql://postgres@127.0.0.1:{port}/{name}"

    try:
        yield database
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


# -- starting processes together: on an observed event, not a clock ------------------------------
#: prepended to a child script: ``ready_then_wait(folder)`` says this process is ready (its imports
#: done) by a file, then waits for the test's ``go`` file
BARRIER = """
import os as _os, pathlib as _pathlib, time as _time
def ready_then_wait(folder):
    folder = _pathlib.Path(folder)
    (folder / f"ready-{_os.getpid()}").touch()
    while not (folder / "go").exists():
        _time.sleep(0.0005)
"""


def start_together(argvs: list[list[str]], folder: Path, timeout: float = 120, **popen) -> list:
    """Start processes that call ``ready_then_wait(folder)``; once every one of them is ready (its
    file exists), release them at once. A process that exits before it is ready fails the test
    with its stderr."""
    import subprocess
    import time

    folder.mkdir(parents=True, exist_ok=True)
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
             for argv in argvs]
    deadline = time.monotonic() + timeout
    while len(list(folder.glob("ready-*"))) < len(procs):
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"a process ended before it was ready: {p.communicate()[1][-1500:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"processes not ready after {timeout} s")
        time.sleep(0.02)
    (folder / "go").touch()
    return procs


def descendants(pid: int, helpers: bool = False) -> set[int]:
    """Every live process below ``pid`` (Linux /proc), children of children included; without
    ``helpers``, not multiprocessing's resource tracker (bookkeeping that ends by itself once its
    parent is gone, not a worker)."""
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            kids = {int(k) for t in Path(f"/proc/{p}/task").iterdir()
                    for k in (t / "children").read_text().split()}
        except OSError:
            continue
        todo += list(kids - found)
        found |= kids
    def helper(p: int) -> bool:
        try:
            return b"resource_tracker" in Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            return False

    return {p for p in found if alive(p) and (helpers or not helper(p))}


def alive(pid: int) -> bool:
    """A process that runs (not a zombie, not gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def store_created(uri: str) -> bool:
    """Whether the SQLite store ``uri`` exists: nnexp creates it whole (a copy of an empty store,
    moved into place). A test that polls a store while nnexp runs opens it only then: an MLflow
    client would create it itself, racing nnexp's creation ("table ... already exists")."""
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file()


def in_store(record_dir: Path) -> str | None:
    """The MLflow run id of a run's record once the store has the run (its upload state says
    so; the state is written just before the run is created, without an id), else None."""
    import json

    try:
        return json.loads((Path(record_dir) / "store.json").read_text()).get("run_id")
    except (OSError, ValueError):
        return None


# -- what a run computed, as its MLflow run holds it ---------------------------------------------
#: wall-clock metrics: the only ones that may differ between two runs of one configuration
CLOCK_METRICS = ("epoch_seconds", "train_seconds")


def run_outcome(uri: str, run) -> tuple[dict, dict]:
    """A tracked run's every metric history but the clocks ({key: [(step, value), ...]}) and the
    arrays of its final network (the run's ``model.npz`` artifact), read back from the store."""
    import tempfile

    import numpy as np
    from mlflow.tracking import MlflowClient

    client, rid = MlflowClient(uri), run.info.run_id
    metrics = {key: sorted((m.step, m.value) for m in client.get_metric_history(rid, key))
               for key in run.data.metrics if key not in CLOCK_METRICS}
    with tempfile.TemporaryDirectory() as d, np.load(client.download_artifacts(rid, "model.npz", d)) as f:
        arrays = {name: f[name] for name in f.files}
    return metrics, arrays


def assert_same_outcome(got: tuple[dict, dict], want: tuple[dict, dict], metrics=None) -> None:
    """Bit-for-bit: the same values at the same steps for every metric (``metrics``: only these),
    and the same final weights and biases (dtype, shape, bytes)."""
    (got_metrics, got_arrays), (want_metrics, want_arrays) = got, want
    if metrics is None:
        assert sorted(got_metrics) == sorted(want_metrics)
        metrics = want_metrics
    for key in metrics:
        assert got_metrics[key] == want_metrics[key], key  # floats compared with ==: exact
    assert sorted(got_arrays) == sorted(want_arrays)
    for name, want_array in want_arrays.items():
        a = got_arrays[name]
        assert (a.dtype, a.shape) == (want_array.dtype, want_array.shape), name
        assert a.tobytes() == want_array.tobytes(), (
            name, float(abs(a.astype("float64") - want_array.astype("float64")).max()) if a.dtype.kind == "f" else a)
