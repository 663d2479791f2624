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
    bench.main(["--quick", "--dataset", "digits", "--epochs", "1"])
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
