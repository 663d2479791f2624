"""The benchmark's smoke test and proof that it compares equal work (fast)."""

import numpy as np
import pytest

from nnexp import bench
from nnexp.engine.network import init_network
from nnexp.engine.stepper import Stepper
from nnexp.train import one_hot


def table_rows(text: str, first_layer: int) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.startswith(f"[{first_layer},")]


def test_quick_digits_run_prints_positive_engine_reference_and_ratio(capsys):
    bench.main(["--quick", "--dataset", "digits", "--epochs", "1", "--only", "sgd"])
    out = capsys.readouterr().out
    assert "digits training set" in out and "BLAS:" in out and "num_threads=1" in out and "kernel=" in out
    assert "reference/engine" in out and "extrapolated" in out
    rows = table_rows(out, 64)
    n_cases = len(bench.HIDDEN_SIZES) * len(bench.MINI_BATCHES) * len(bench.DTYPES)
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
    assert with_reference == len(bench.REFERENCE_CASES)


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
    ref = bench.ReferenceNetwork([w.T for w in net.weights], net.biases)

    ref.update_mini_batch(bench.column_pairs(x, labels, sizes[-1]), eta, lmbda, n_train)
    Stepper.of([net], eta=eta, lmbda=lmbda, n_train=n_train, penalty="l2").step(
        x, one_hot(labels, sizes[-1], np.float64))

    for w_ref, w in zip(ref.weights, net.weights):
        np.testing.assert_allclose(w_ref.T, w, rtol=0, atol=1e-10)
    for b_ref, b in zip(ref.biases, net.biases):
        np.testing.assert_allclose(b_ref[:, 0], b, rtol=0, atol=1e-10)
    assert not np.allclose(ref.weights[0].T, init_network(sizes, np.random.default_rng(3)).weights[0])


def test_the_study_section_compares_four_methods_at_equal_wall_clock(capsys, tmp_path, monkeypatch):
    """--only study --quick on digits: the broad strategy, TPE (median, Hyperband) and random
    search, each given the broad strategy's tuning seconds; a row per method with the final
    choice's test accuracy over its seeds, a summary per method, the anytime plot."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    bench.main(["--quick", "--dataset", "digits", "--only", "study", "--workers", "1"])
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.split()[:1] and line.split()[0] in bench.STUDY_METHODS and line.split()[1:2] == ["0"]}
    assert set(rows) == set(bench.STUDY_METHODS), out
    budget = float(rows["broad_strategy"][2])
    for method, row in rows.items():
        tuning, trials, best = float(row[2]), int(row[3]), float(row[4])
        mean, std = float(row[-3]), float(row[-1])
        assert trials > 0 and 0 < best <= 1 and 0.5 < mean <= 1 and std >= 0, row
        if method != "broad_strategy":  # no new trial after the budget: at most one trial's time beyond it
            assert tuning >= 0.9 * budget - 1, (method, tuning, budget)
    assert sum("best validation found at 25% / 50% / 100% of the budget" in line for line in out.splitlines()) == 4
    assert (tmp_path / "bench_study_anytime.png").stat().st_size > 10_000
