"""The benchmark's smoke tests (every section, --quick on digits) and proof that it compares
equal work: the reference networks take the engine's step (fast)."""

import contextlib
import io
import json
import math

import numpy as np
import pytest

from nnexp import bench
from nnexp.bench import command, sgd, study
from nnexp.bench.reference import HandVectorisedNetwork, ReferenceNetwork, column_pairs
from nnexp.bench.table import Table
from nnexp.engine.network import init_network
from nnexp.engine.stepper import Stepper
from nnexp.train import one_hot

QUICK = ["--quick", "--dataset", "digits", "--epochs", "1", "--workers", "1"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``quick_run(name)``: the printed output and the Table objects of ``nnexp-bench QUICK --only
    name``, run once per module (in a directory of its own, with its own MLflow store)."""
    runs: dict[str, tuple[str, list[Table]]] = {}
    cwd = tmp_path_factory.mktemp("bench")

    def run(name: str) -> tuple[str, list[Table]]:
        if name not in runs:
            tables = []
            render = Table.render

            def spy(table: Table) -> str:
                tables.append(table)
                return render(table)

            out = io.StringIO()
            with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
                mp.chdir(cwd)
                mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{cwd / 'mlflow.db'}")
                mp.setattr(Table, "render", spy)
                bench.main([*QUICK, "--only", name])
            runs[name] = out.getvalue(), tables
        return runs[name]

    run.cwd = cwd
    return run


def table_rows(text: str, first_layer: int) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.startswith(f"[{first_layer},")]


def number(cell: str) -> float:
    return float(cell.split()[0].rstrip("%"))


#: per section under --quick on digits: rows, and a column every row has a real value in
QUICK_TABLES = {
    "sgd": (8, "engine s/epoch", lambda v: v > 0),
    "tracking": (6, "wall s", lambda v: v > 0),
    "study": (6, "final val acc", lambda v: 0.5 < v <= 1),
    "study-population": (2, "final val acc", lambda v: 0.5 < v <= 1),
    "population": (8, "1 process", lambda v: v > 0),
    "sweep": (2, "wall s", lambda v: v > 0),
    # 400 simulated stages per kind: the null rate within 2 standard errors of 5%
    "calibration": (4, "null false-decision rate", lambda v: 0 <= v <= 5 + 2 * 100 * (0.05 * 0.95 / 400) ** 0.5),
}


def test_every_section_has_a_quick_check():
    assert set(QUICK_TABLES) == set(bench.SECTIONS)


#: the sections whose --quick run costs 12+ CPU seconds: run by .ci/run (-m slow)
SLOW_SECTIONS = ("study", "study-population", "calibration", "sweep")


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow, pytest.mark.xdist_group(f"bench_{n}")])
                                  if n in SLOW_SECTIONS else n for n in bench.SECTIONS])
def test_every_section_prints_its_table_with_its_rows(quick_run, name):
    out, tables = quick_run(name)
    (table,) = tables
    assert "digits training set" in out and table.render() in out
    n_rows, column, real = QUICK_TABLES[name]
    assert len(table.rows) == n_rows, table.render()
    assert all(len(row) == len(table.columns) for row in table.rows)
    at = table.columns.index(column)
    for row in table.rows:
        assert math.isfinite(number(row[at])) and real(number(row[at])), (column, row)


def test_help_lists_every_section_with_its_description(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name, section in bench.SECTIONS.items():
        assert any(line.split()[:1] == [name] and section.description in line for line in out.splitlines()), name


def test_only_accepts_exactly_the_registered_sections(capsys):
    for name in bench.SECTIONS:
        assert command.parse_args(["--only", name]).only == [name]
    assert command.parse_args([]).only is None
    for wrong in ("SGD", "study_population", "all"):
        with pytest.raises(SystemExit) as exit_info:
            command.parse_args(["--only", wrong])
        assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_study_seeds_start_at_first_study_seed(capsys):
    """--first-study-seed S --study-seeds N: seeds S..S+N-1 (more seeds for an earlier run)."""
    assert list(command.parse_args([]).seeds) == [0, 1, 2]
    assert list(command.parse_args(["--first-study-seed", "1", "--study-seeds", "2"]).seeds) == [1, 2]
    for wrong in (["--first-study-seed", "-1"], ["--study-seeds", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            command.parse_args(wrong)
        assert exit_info.value.code == 2
    assert "--first-study-seed must be at least 0" in capsys.readouterr().err


def test_the_tracking_section_times_checkpoints_exactly_on_the_runs_that_write_them(quick_run):
    """A run with checkpoints spent time writing them (each evaluation's state); a run without
    (tracking off, or tracking.checkpoint=false) spent none, and the footer quotes each share."""
    _, (table,) = quick_run("tracking")
    mode, seconds = table.columns.index("tracking"), table.columns.index("checkpoint s")
    for row in table.rows:
        assert (float(row[seconds]) > 0) == (row[mode] == "+ checkpoints"), row
    assert sum("share of the training time: overfitting" in line and "default" in line for line in table.footnotes) == 1


def test_quick_digits_run_prints_positive_engine_reference_and_ratio(quick_run):
    out, _ = quick_run("sgd")
    assert "digits training set" in out and "BLAS:" in out and "num_threads=1" in out and "kernel=" in out
    assert "reference/engine" in out and "extrapolated" in out
    rows = table_rows(out, 64)
    n_cases = len(sgd.HIDDEN_SIZES) * len(sgd.MINI_BATCHES) * len(sgd.DTYPES)
    assert len(rows) == n_cases
    with_reference = 0
    for net, mb, dtype, *numbers in rows:
        assert len(numbers) == 7
        engine, us, hand, ratio = (float(v) for v in numbers[:4])
        assert engine > 0 and us > 0 and hand > 0
        half = 5e-5  # the seconds are printed to 4 decimals
        assert (engine - half) / (hand + half) - 0.005 <= ratio <= (engine + half) / (hand - half) + 0.005
        if numbers[4] != "-":
            with_reference += 1
            assert dtype == "float64"
            assert all(float(v) > 0 for v in numbers[4:])  # reference s, us, ratio
        else:
            assert numbers[4:] == ["-", "-", "-"]
    assert with_reference == len(sgd.REFERENCE_CASES)


def test_missing_mnist_dir_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--quick", "--dataset", "mnist", "--data-dir", "/nonexistent/nnexp-bench"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("sizes", [[6, 5, 3], [7, 6, 5, 4]])
def test_reference_update_equals_engine_step(sizes):
    rng = np.random.default_rng(3)
    net = init_network(sizes, rng)
    m, n_train, eta, lmbda = 8, 50, 0.5, 5.0
    x = rng.random((m, sizes[0]))
    labels = rng.integers(0, sizes[-1], m)
    ref = ReferenceNetwork([w.T for w in net.weights], net.biases)

    ref.update_mini_batch(column_pairs(x, labels, sizes[-1]), eta, lmbda, n_train)
    Stepper.of([net], eta=eta, lmbda=lmbda, n_train=n_train, penalty="l2").step(
        x, one_hot(labels, sizes[-1], np.float64))

    for w_ref, w in zip(ref.weights, net.weights):
        np.testing.assert_allclose(w_ref.T, w, rtol=0, atol=1e-10)
    for b_ref, b in zip(ref.biases, net.biases):
        np.testing.assert_allclose(b_ref[:, 0], b, rtol=0, atol=1e-10)
    assert not np.allclose(ref.weights[0].T, init_network(sizes, np.random.default_rng(3)).weights[0])


@pytest.mark.parametrize("sizes", [[6, 5, 3], [7, 6, 5, 4]])
def test_hand_vectorised_epoch_equals_engine_steps(sizes):
    """An epoch of the hand-vectorised loop (in-place gemm: decay and gradient in one) is the
    engine's steps over the same mini-batches, the last one short."""
    rng = np.random.default_rng(5)
    net = init_network(sizes, rng)
    n, mb, eta, lmbda = 20, 8, 0.5, 5.0
    x = rng.random((n, sizes[0]))  # (n, n_in)
    y = one_hot(rng.integers(0, sizes[-1], n), sizes[-1], np.float64)  # (n, n_out)
    perm = rng.permutation(n)
    hand = HandVectorisedNetwork(net.weights, net.biases)

    hand.train_epoch(x, y, perm, mb, eta, lmbda)
    stepper = Stepper.of([net], eta=eta, lmbda=lmbda, n_train=n, penalty="l2")
    for k in range(0, n, mb):
        stepper.step(x[perm[k:k + mb]], y[perm[k:k + mb]])

    for got, want in zip(hand.weights + hand.biases, net.weights + net.biases):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    assert not np.allclose(hand.weights[0], init_network(sizes, np.random.default_rng(5)).weights[0])


@pytest.mark.slow  # 12+ CPU seconds: run by .ci/run
@pytest.mark.xdist_group("bench_study")  # with the section's table test: one worker runs the section once
def test_the_study_section_compares_six_methods_at_equal_wall_clock(quick_run):
    """--only study --quick on digits: the broad strategy, TPE (median, Hyperband), random
    search, population-based training and successive halving with refill, each given the broad
    strategy's tuning seconds; a row per method with the final choice's test accuracy over its
    seeds, a summary per method, the anytime plot."""
    out, _ = quick_run("study")
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.split()[:1] and line.split()[0] in study.STUDY_METHODS and line.split()[1:2] == ["0"]}
    assert set(rows) == set(study.STUDY_METHODS), out
    budget = float(rows["broad_strategy"][2])
    for method, row in rows.items():
        tuning, trials, longest, best = float(row[2]), int(row[3]), float(row[4]), float(row[6])
        mean, std = float(row[-3]), float(row[-1])
        assert trials > 0 and 0 < longest <= tuning and 0 < best <= 1 and 0.5 < mean <= 1 and std >= 0, row
        if method == "broad_strategy":
            assert row[5] == "-"  # no budget: its stages run to their decisions
        else:  # equal wall clock: trials are asked until the budget is spent, none after
            assert tuning >= budget, (method, tuning, budget)
            assert float(row[5]) <= budget, (method, row[5], budget)  # the budget spent at the last ask
    assert sum("best validation found at 25% / 50% / 100% of the budget" in line
               for line in out.splitlines()) == len(study.STUDY_METHODS) == 6
    assert (quick_run.cwd / study.ANYTIME_PNG).stat().st_size > 10_000
    saved = json.loads((quick_run.cwd / study.ANYTIME_PNG).with_suffix(".json").read_text())
    assert set(saved["curves"]) == set(study.STUDY_METHODS) and saved["seeds"] == [0]
    for method, (curve,) in saved["curves"].items():  # best so far: never falls; its end is the row's best
        assert curve and all(a[1] <= b[1] and a[0] <= b[0] for a, b in zip(curve, curve[1:])), method
        assert curve[-1][1] == pytest.approx(float(rows[method][6]), abs=5e-5), method
