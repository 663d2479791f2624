"""Slow: the book's MNIST numbers, reproduced over three seeds (run by .ci/run).

Run-to-run variation is real (the book warns some chapter-1 runs get stuck), so each
check is on the median over seeds of the best test accuracy.
"""

import statistics
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from nnexp import runner

pytestmark = pytest.mark.slow
SEEDS = (0, 1, 2)


def best_test_accuracies(overrides, data_dir):
    """The seeds trained as one population (results do not depend on it: test_scheduling)."""
    jobs = [runner.compose([*overrides, f"seed={s}", "tracking=off", f"dataset.data_dir={data_dir}"])
            for s in SEEDS]
    with runner.one_blas_thread():
        results = runner.execute(jobs)
    assert all(r.status == "completed" for r in results)
    return [max(r.history.column("test_accuracy")) for r in results]


def test_chapter1_network_reaches_the_books_accuracy(shared_data_dir):
    accs = best_test_accuracies(["+experiment=ch1_network"], shared_data_dir)
    print("chapter 1 best test accuracies:", accs)
    assert statistics.median(accs) >= 0.945  # book: 95.42%


def test_chapter3_regularized_network_reaches_the_books_accuracy(shared_data_dir):
    # the default run: [784,30,10], cross-entropy, L2 lambda 5.0, eta 0.5, mini-batch 10, 30 epochs
    accs = best_test_accuracies([], shared_data_dir)
    print("chapter 3 best test accuracies:", accs)
    assert statistics.median(accs) >= 0.956  # book: 96.49% on one seed


def test_regularized_full_preset_through_the_cli(shared_data_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run([sys.executable, "-m", "nnexp.run", "+experiment=regularized_full",
                          f"tracking.uri={uri}", f"dataset.data_dir={shared_data_dir}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stderr
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("nnexp").experiment_id])
    accs = [m.value for m in client.get_metric_history(run.info.run_id, "test_accuracy")]
    print("regularized_full best test accuracy:", max(accs))
    assert len(accs) == 30 and max(accs) >= 0.955  # book: 96.49%
    assert run.data.tags["nnexp.experiment"] == "regularized_full"


def test_the_more_data_figure_on_two_sizes_has_the_books_svm_numbers(shared_data_dir, tmp_path):
    """python -m nnexp.report more_data --sizes 100,1000 on MNIST: the figure's table scores the
    SVM as fig/more_data.py ran it (svm.SVC() with its day's gamma = 1/784) on final validation
    accuracy, within 3 points of the book's; today's default SVM is another model. The networks
    train on 300,000 images, not the figure's 1.5 million (measured on 100 images: 67.1% best
    validation accuracy against 69.6%; the book: 69.09%): the SVM is what this test reproduces."""
    import json

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run([sys.executable, "-m", "nnexp.report", "more_data", "--sizes", "100,1000",
                          "-o", f"dataset.data_dir={shared_data_dir}", "-o", "budget_images=300000",
                          "--tracking-uri", uri],
                         capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    section = json.loads((tmp_path / "reports" / "more_data.json").read_text())
    rows = {what: (book, ours) for what, book, ours, _ in section["table"]}
    print("more_data table:", rows, section["comparisons"])
    for n, book in ((100, 0.2507), (1000, 0.8387)):
        book_cell, ours = rows[f"SVM as in the book, {n:,} images"]
        assert book_cell == f"{book:.2%}" and abs(float(ours.split("%")[0]) / 100 - book) < 0.03
    network = float(rows["network, 100 images"][1].split("%")[0]) / 100
    finding = section["comparisons"][-1]
    today = float(finding.split("SVM, today's scikit-learn default ")[1].split("%")[0]) / 100
    assert today - 0.2507 > 0.05  # the modern default is a different (here: better) model
    assert 0.4 < network < 0.9  # the book: 69.09%


def test_the_lambda_stage_decides_on_a_signal_it_can_show(shared_data_dir, tmp_path):
    """The broad strategy on MNIST up to the lambda walk: on the 0/1 problem every lambda scores
    100% (saturated), so the stage escalates and does not decide there; where it decides, the
    choice is the one its tests support, recomputed here from the runs' curves (Holm over the
    pairs and over the comparisons with the start, at half the error rate per look)."""
    import optuna
    from test_study import holm_rejects, paired_test, replicate_scores_of

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    out = subprocess.run([sys.executable, "-m", "nnexp.study", "study.stop_after=lmbda_walk", "tracking=off",
                          "study.eta.epochs=2", "study.lmbda.epochs=10",  # shorter than the default
                          # from the 0/1 problem straight to the full one (the default ladder climbs
                          # two more rungs between them, 37 of its 118 s here)
                          "study.ladder=[{name:full,classes:null,hidden:null,every_images:null,"
                          "validation_sample:null,epochs:null}]",
                          f"dataset.data_dir={shared_data_dir}", f"study.storage={storage}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    walk = optuna.load_study(study_name="broad_strategy/lmbda_walk", storage=storage).user_attrs["decision"]
    print("lambda walk:", walk["summary"], "| notes:", walk["notes"], "| means:", walk["means"])
    stripped = optuna.load_study(study_name=walk["studies"][0][1], storage=storage).trials
    assert {v for t in stripped for v in t.user_attrs["replicate_values"]} == {1.0}  # saturated: no signal
    assert walk["problem"] != "stripped" and any("escalated to" in n for n in walk["notes"])
    scores = replicate_scores_of(storage, walk, "lmbda_walk")
    means = {v: sum(x) / len(x) for v, x in scores.items()}
    values, default, floor, alpha = sorted(scores), float(walk["default"]), walk["floor"], 0.05 / 2
    tie = sum(min(x) >= 1.0 for x in scores.values()) >= 2 or not holm_rejects(
        {(u, v): paired_test(scores[u], scores[v], floor)["differ"] for i, u in enumerate(values)
         for v in values[i + 1:]}, alpha)
    beats = holm_rejects({v: paired_test(scores[default], scores[v], floor)["greater"]
                          for v in values if v != default}, alpha)
    assert walk["tie"] == tie
    assert walk["lmbda"] == (max(beats, key=lambda v: means[v]) if beats and not tie else default)
