"""``python -m nnexp.report``: figures from a real MLflow store built by the test (digits)."""

import html
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import asdict
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote

import pandas as pd
import pytest

from nnexp.report import figures
from nnexp.report import load_figures
from nnexp.stats import band, paired_difference, per_seed

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
SMALL = ["-o", "dataset=digits", "-o", "epochs=3"]
NAMES = ["learning_slowdown", "overfitting", "regularized", "weight_init", "multiple_eta", "baselines"]


def report(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "nnexp.report", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small store: the report launches the missing runs itself (2 seeds, digits, 3 epochs)."""
    root = tmp_path_factory.mktemp("report")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    out = report(*NAMES, "--seeds", "2", *SMALL, cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "launching 27 missing runs (27 distinct in 29 asked)" in out.stdout  # shared arms run once
    yield root
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.mark.slow  # the report's store (~26 CPU s) and its tests: run by .ci/run
@pytest.mark.xdist_group("report_store")  # one worker builds the store once
def test_no_run_builds_every_figure_from_existing_runs(store):
    for png in store.glob("reports/*.png"):
        png.unlink()
    out = report(*NAMES, "--seeds", "2", "--no-run", *SMALL, cwd=store)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "missing" not in out.stdout
    for name in NAMES:
        png = store / "reports" / f"{name}.png"
        assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    page = (store / "reports" / "index.html").read_text()
    assert page.count("<section") == len(NAMES)
    book, ours = "87.10%", regularized_peak_from_the_store()
    row = next(line for line in page.splitlines() if "lambda = 0.1: peak test accuracy" in line)
    assert book in row and ours in row, (row, ours)  # the book's number next to the one nnexp measured


def regularized_peak_from_the_store() -> str:
    """Independently of the report: the regularized arm's peak test accuracy, mean ± std over
    its seeds, read from MLflow as the page should print it."""
    import statistics

    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("nnexp").experiment_id],
                              filter_string="tags.`nnexp.experiment` = 'regularized'")
    peaks = [max(m.value for m in client.get_metric_history(r.info.run_id, "test_accuracy")) for r in runs]
    assert len(peaks) == 2
    return f"{statistics.mean(peaks):.2%} ± {statistics.stdev(peaks):.2%}"


@pytest.mark.slow  # the report's store (~26 CPU s) and its tests: run by .ci/run
@pytest.mark.xdist_group("report_store")  # one worker builds the store once
def test_no_run_lists_missing_runs(store):
    out = report("regularized", "--seeds", "3", "--no-run", *SMALL, cwd=store)
    assert out.returncode == 1
    assert "2 of 6 runs are missing" in out.stdout
    assert "+experiment=overfitting dataset=digits epochs=3 seed=2" in out.stdout
    assert "+experiment=regularized dataset=digits epochs=3 seed=2" in out.stdout


@pytest.mark.slow  # the report's store (~26 CPU s) and its tests: run by .ci/run
@pytest.mark.xdist_group("report_store")  # one worker builds the store once
def test_a_bad_figure_name_is_one_line(store):
    out = report("overfiting", "--no-run", cwd=store)
    assert out.returncode == 2 and "unknown figure 'overfiting'" in out.stderr


@pytest.mark.slow  # the report's store (~26 CPU s) and its tests: run by .ci/run
@pytest.mark.xdist_group("report_store")  # one worker builds the store once
def test_report_pages_show_the_paired_comparison(store):
    """The page's paired comparison recomputed from the store: per seed the peak test accuracy of
    each arm (its runs found by their config hash), their differences, mean, std and t-interval."""
    import statistics

    from mlflow.tracking import MlflowClient
    from scipy import stats

    from nnexp.report import plan_jobs

    md = (store / "reports" / "index.md").read_text()
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("nnexp").experiment_id
    peak = {}
    for job in plan_jobs(load_figures(), ["regularized"], 2, SMALL[1::2]):
        (run,) = client.search_runs([exp], filter_string=f"tags.`nnexp.config_hash` = '{job.key}'")
        peak[job.arm, job.seed] = max(m.value for m in client.get_metric_history(run.info.run_id, "test_accuracy"))
    d = [peak["lambda = 0.1", seed] - peak["lambda = 0", seed] for seed in (0, 1)]
    mean, std = statistics.mean(d), statistics.stdev(d)
    half = stats.t.ppf(0.975, 1) * std / math.sqrt(2)
    assert (f"paired: lambda = 0.1 minus lambda = 0, max test_accuracy: {mean:+.4f} ± {std:.4f} over 2 paired "
            f"seeds, 95% CI [{mean - half:+.4f}, {mean + half:+.4f}]") in md
    assert md.count("http://127.0.0.1:5000/#/experiments/") >= 28


def hand_bands():
    rows = []
    for arm, offset in (("a", 0.0), ("b", 0.1)):
        for seed, s in enumerate((0.0, 0.01, 0.05)):  # lopsided: min-max is not mean +- std
            for step in (1, 2, 3):
                rows.append((arm, seed, "x", "test_accuracy", step, 0.5 + offset + s + 0.1 * step))
    return pd.DataFrame(rows, columns=["arm", "seed", "run_id", "metric", "step", "value"])


def test_band_statistics_on_hand_made_data():
    b = band(hand_bands())
    row = b[(b.arm == "a") & (b.step == 2)].iloc[0]  # the seeds' values 0.70, 0.71, 0.75
    assert row["mean"] == pytest.approx(0.72) and row.lo == pytest.approx(0.70) and row.hi == pytest.approx(0.75)
    assert row.n == 3  # a mean +- std band would be 0.72 -+ 0.0265: [0.6935, 0.7465]
    s = per_seed(hand_bands(), "test_accuracy", "max")
    assert s[(s.arm == "b") & (s.seed == 2)]["value"].item() == pytest.approx(0.95)
    assert per_seed(hand_bands(), "test_accuracy", "first")["value"].min() == pytest.approx(0.6)


def test_paired_difference_and_its_interval():
    summary = pd.DataFrame({"arm": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2,
                            "value": [0.80, 0.82, 0.84, 0.81, 0.84, 0.87]})
    d = paired_difference(summary, "a", "b")  # differences 0.01, 0.02, 0.03
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.02) and d["std"] == pytest.approx(0.01)
    half = 4.302652729911275 * 0.01 / math.sqrt(3)  # t(0.975, 2) s / sqrt(n)
    assert (d["lo"], d["hi"]) == (pytest.approx(0.02 - half), pytest.approx(0.02 + half))


def test_figure_functions_draw_the_expected_curves(tmp_path):
    drawn = figures.curves_figure(band(hand_bands()), ["test_accuracy"], tmp_path / "c.png", title="t")
    assert drawn.curves == {"test_accuracy": 2} and (tmp_path / "c.png").stat().st_size > 5_000
    pts = pd.DataFrame({"arm": ["net", "net", "SVM"], "size": [100, 1000, 100], "mean": [0.7, 0.9, 0.3],
                        "lo": [0.7, 0.9, 0.3], "hi": [0.7, 0.9, 0.3], "n": [1, 1, 1]})
    assert figures.more_data_figure(pts, tmp_path / "m.png", title="t").curves == {"accuracy": 2}
    bars = pd.DataFrame({"arm": ["random", "svm"], "mean": [0.1, 0.9], "lo": [0.09, 0.9], "hi": [0.11, 0.9]})
    assert figures.bars_figure(bars, tmp_path / "b.png", title="t").curves == {"bars": 2}


@pytest.mark.slow  # the report's store (~26 CPU s) and its tests: run by .ci/run
@pytest.mark.xdist_group("report_store")  # one worker builds the store once
def test_report_figures_have_one_curve_per_arm(store):
    from nnexp.report import build_figure, find_runs, plan_jobs

    uri = os.environ["MLFLOW_TRACKING_URI"]
    figs = load_figures()
    found = find_runs(uri, "nnexp")
    expected = {"learning_slowdown": 4, "regularized": 2, "weight_init": 4, "multiple_eta": 3}
    for name, n in expected.items():
        jobs = plan_jobs(figs, [name], 2, SMALL[1::2])
        section = build_figure(name, figs[name], jobs, found, uri, store / "check")
        assert set(section.curves.values()) == {n}, (name, section.curves)


@pytest.mark.slow  # the report's store (~26 CPU s) and its tests: run by .ci/run
@pytest.mark.xdist_group("report_store")  # one worker builds the store once
def test_learning_slowdown_runs_show_the_slowdown(store):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("nnexp").experiment_id],
                              filter_string="tags.`nnexp.experiment` = 'learning_slowdown'")
    cost = {(r.data.params["cost"], r.data.params["w"]): [m.value for m in sorted(
        client.get_metric_history(r.info.run_id, "training_cost"), key=lambda m: m.step)] for r in runs}
    quad, ce = cost[("quadratic", "2.0")], cost[("cross_entropy", "2.0")]

    def fall(c, a, b):  # the share of the cost lost between epochs a and b
        return (c[a] - c[b]) / c[a]

    # the book's rates (quadratic 0.15, cross-entropy 0.005): the badly wrong neuron with the
    # quadratic cost barely moves at first and then learns (the slowdown); with the
    # cross-entropy it learns from the start, at a thirtieth of the learning rate
    assert fall(ce, 0, 50) > 5 * fall(quad, 0, 50)
    assert fall(quad, 150, 200) > 10 * fall(quad, 0, 50)


@pytest.mark.slow  # the report's store (~26 CPU s) and its tests: run by .ci/run
@pytest.mark.xdist_group("report_store")  # one worker builds the store once
def test_the_page_renders_in_headless_chromium(store):
    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium not installed")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto((store / "reports" / "index.html").as_uri())
        page.wait_for_load_state("load")
        widths = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        text = page.inner_text("body")
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
    assert len(widths) == len(NAMES) and all(w > 0 for w in widths)
    assert "nnexp (mean ± std over seeds)" in text and "87.10%" in text
    assert regularized_peak_from_the_store() in text  # nnexp's own number, as the browser shows it
    assert (ARTIFACTS / "report.png").stat().st_size > 50_000


@pytest.mark.slow
def test_overfitting_figures_on_mnist(shared_data_dir, tmp_path, monkeypatch):
    """The book's overfitting picture: training accuracy -> 100%, test accuracy peaks near 82%;
    lambda 0.1 peaks higher (book: 82.27% vs 87.10%)."""
    from nnexp.report import curves_frame, find_runs, plan_jobs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    extra = [f"dataset.data_dir={shared_data_dir}"]
    out = report("overfitting", "regularized", "-o", extra[0], cwd=tmp_path, timeout=1800)
    assert out.returncode == 0, out.stdout + out.stderr
    jobs = plan_jobs(load_figures(), ["regularized"], 1, extra)
    found = find_runs(uri, "nnexp")
    frame = curves_frame(uri, {(j.arm, j.seed): found[j.key] for j in jobs}, ["training_accuracy", "test_accuracy"])
    peak = per_seed(frame, "test_accuracy", "max").set_index("arm")["value"]
    train = per_seed(frame, "training_accuracy", "max").set_index("arm")["value"]
    print("peak test accuracy:", peak.to_dict(), "max training accuracy:", train.to_dict())
    assert train["lambda = 0"] >= 0.995 and peak["lambda = 0"] < 0.85
    assert peak["lambda = 0.1"] > peak["lambda = 0"]


def book_neuron_costs(cost: str, w: float, b: float, eta: float, epochs: int) -> list[float]:
    """The book's neuron (input 1, target 0) by hand, in plain Python: cost before each step."""
    out = []
    for _ in range(epochs + 1):
        a = 1.0 / (1.0 + math.exp(-(w + b)))
        out.append(0.5 * a * a if cost == "quadratic" else -math.log(1.0 - a))
        delta = a * a * (1.0 - a) if cost == "quadratic" else a  # dC/dz: eq. (55) vs eq. (61)
        w, b = w - eta * delta, b - eta * delta
    return out


@pytest.mark.slow  # the report's store (~26 CPU s) and its tests: run by .ci/run
@pytest.mark.xdist_group("report_store")  # one worker builds the store once
def test_the_tracked_neuron_curves_are_the_books_neuron(store):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("nnexp").experiment_id],
                              filter_string="tags.`nnexp.experiment` = 'learning_slowdown'")
    assert len(runs) == 4
    for r in runs:
        p = r.data.params
        tracked = [m.value for m in sorted(client.get_metric_history(r.info.run_id, "training_cost"),
                                           key=lambda m: m.step)]
        expected = book_neuron_costs(p["cost"], float(p["w"]), float(p["b"]), float(p["eta"]), int(p["epochs"]))
        assert tracked == pytest.approx(expected, rel=1e-9, abs=1e-12), p


@pytest.mark.slow  # the report's store (~26 CPU s) and its tests: run by .ci/run
@pytest.mark.xdist_group("report_store")  # one worker builds the store once
def test_the_report_with_no_figure_names_builds_every_figure_more_data_on_chosen_sizes(store):
    """Every figure of figures.yaml, full_data and more_data included, on digits with a small
    image budget; more_data on the training-set sizes asked for (--sizes), with both SVMs."""
    small = ["-o", "dataset=digits", "-o", "budget_images=2400", "--sizes", "100,300", "--out", "every"]
    out = report("--seeds", "1", *small, cwd=store)
    assert out.returncode == 0, out.stdout + out.stderr
    names = list(load_figures())
    assert f"report: {len(names)} figures ({', '.join(names)})" in out.stdout
    page = (store / "every" / "index.md").read_text()
    assert page.count("\n## ") >= len(names)
    for name in names:
        assert (store / "every" / f"{name}.png").stat().st_size > 10_000
    section = json_section(store / "every" / "more_data.json")
    assert section["curves"] == {"accuracy": 3}  # the network and both SVMs
    rows = {row[0]: row for row in section["table"]}
    # the book's column is figures.yaml's number; nnexp's is the book's SVC (gamma = 1/n_features) fitted
    # here on the first 100 training images and scored on the validation split, as fig/more_data.py does
    from sklearn.svm import SVC

    from nnexp import data

    book = next(r["book"] for r in load_figures()["more_data"]["numbers"] if r["what"] == "SVM as in the book, 100 images")
    digits = data.load("digits")
    first = data.first_n(digits.train, 100)
    svc = SVC(gamma="auto").fit(first.x, first.y)
    measured = float((svc.predict(digits.validation.x) == digits.validation.y).mean())
    assert list(rows["SVM as in the book, 100 images"][1:3]) == [f"{book:.2%}", f"{measured:.2%}"]
    assert not any("1,000 images" in what or "50,000" in what for what in rows)  # sizes not run: no row
    from nnexp.report import find_runs, plan_jobs

    jobs = plan_jobs(load_figures(), ["more_data"], 1, small[1:4:2], sizes=[100, 300])
    assert sorted(j.arm for j in jobs) == sorted(f"{a}@{n}" for a in ("network", "svm_book", "svm") for n in (100, 300))
    assert all(j.key in find_runs(os.environ["MLFLOW_TRACKING_URI"], "nnexp") for j in jobs)


def json_section(path):
    return json.loads(path.read_text())


EVIL = '<script>alert(1)</script> & "q" | x'


class PageParts(HTMLParser):
    """The page as a browser's parser reads it: every tag, every attribute, and the text of
    each h2, td, p, a and pre (entities decoded)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.attrs, self.text, self.open = [], [], {}, []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v) for k, v in attrs]
        if tag in ("h2", "td", "p", "a", "pre"):
            self.open.append([tag, ""])

    def handle_endtag(self, tag):
        if self.open and self.open[-1][0] == tag:
            tag, text = self.open.pop()
            self.text.setdefault(tag, []).append(text)

    def handle_data(self, data):
        for part in self.open:
            part[1] += data


def markdown_cells(row: str) -> list[str]:
    """A GFM table row split at its unescaped pipes, each cell's backslash escapes undone."""
    cells, cell = [], ""
    for token in re.findall(r"\\.|\||[^\\|]+", row.strip()[1:-1]):
        if token == "|":
            cells.append(cell.strip())
            cell = ""
        else:
            cell += token[1] if token.startswith("\\") else token
    return cells + [cell.strip()]


def test_the_page_escapes_every_value(tmp_path):
    """Hostile text in every field of a Section, written through JSON and write_page as the
    report does: the HTML, read back by a parser, holds exactly the data as text and no tag
    or attribute of its own; the markdown table keeps its four columns."""
    from nnexp.report import Section, write_page
    from nnexp.report.page import MLFLOW_UI

    name = f"fig {EVIL}"
    built = Section(name, f"title {EVIL}", f"book {EVIL}", f"{name}.png",
                    [(f"what {EVIL}", f"book {EVIL}", f"nnexp {EVIL}", "2")], [f"paired {EVIL}"],
                    [f"python -m nnexp.run {EVIL}"], [(f"arm {EVIL}", 0, f"run {EVIL}", f"exp {EVIL}")], {})
    section = Section(**json.loads(json.dumps(asdict(built))))  # as nnexp.cli.report reads it back
    page = write_page([section], tmp_path, seeds=2, extra=[f"title={EVIL}"]).read_text()

    assert "<script" not in page.lower() and "alert(1)</script>" not in page and '"q"' not in page
    assert not re.search(r"&(?!(amp|lt|gt|quot|#34|#39);)", page)  # every & starts an entity
    parts = PageParts()
    parts.feed(page)
    assert set(parts.tags) == {"html", "head", "meta", "title", "style", "body", "h1", "p", "code", "section", "h2",
                               "em", "img", "table", "tr", "th", "td", "a", "pre"}
    assert {(t, k) for t, k, _ in parts.attrs} == {("meta", "charset"), ("section", "id"), ("img", "src"),
                                                   ("img", "alt"), ("a", "href")}
    attrs = {(t, k): v for t, k, v in parts.attrs}
    assert re.fullmatch(r"[a-z0-9_-]+", attrs["section", "id"])
    assert unquote(attrs["img", "src"]) == f"{name}.png" and attrs["img", "alt"] == name
    assert attrs["a", "href"] == f"{MLFLOW_UI}/#/experiments/{quote(f'exp {EVIL}', safe='')}/runs/" \
                                 f"{quote(f'run {EVIL}', safe='')}"
    assert parts.text["h2"] == [f"title {EVIL}"] and parts.text["td"] == list(built.table[0])
    assert f"paired {EVIL}" in parts.text["p"] and parts.text["a"] == [f"arm {EVIL} s0"]
    assert parts.text["pre"] == [f"python -m nnexp.run {EVIL}"]
    assert f"--seeds 2 -o 'title={EVIL}'</code>" in html.unescape(page)  # the override shell-quoted too

    md = (tmp_path / "index.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert [len(markdown_cells(r)) for r in rows] == [4, 4, 4]
    assert markdown_cells(rows[2]) == list(built.table[0])
    assert "[arm " + EVIL.replace("|", r"\|") + " s0](" in md and f"-o 'title={EVIL}'`" in md


@pytest.mark.slow  # the report's store (~26 CPU s) and its tests: run by .ci/run
@pytest.mark.xdist_group("report_store")  # one worker builds the store once
def test_a_configuration_two_figures_share_is_run_once(store):
    """overfitting's lambda = 0 arm is regularized's too: one run per config hash in the store."""
    from collections import Counter

    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("nnexp").experiment_id], max_results=1000)
    hashes = Counter(r.data.tags["nnexp.config_hash"] for r in runs if "nnexp.config_hash" in r.data.tags)
    assert len(hashes) >= 27 and max(hashes.values()) == 1


@pytest.mark.slow  # the report's store (~26 CPU s) and its tests: run by .ci/run
@pytest.mark.xdist_group("report_store")  # one worker builds the store once
def test_a_run_the_report_launched_gives_exactly_the_plain_run_of_its_job(store, tmp_path):
    """The README: a run's every metric and its final weights are bit-for-bit the same by the
    report as alone, in float64 and float32. multiple_eta's eta = 2.5 arm (a population of three
    etas or more, on the report's two processes) against ``nnexp.run`` of the job the report composed."""
    from mlflow.tracking import MlflowClient

    from conftest import assert_same_outcome, run_outcome
    from nnexp.report import plan_jobs

    own = tmp_path / "float32"  # the float32 report: its own store, two populations of three runs
    own.mkdir()
    own_uri = f"sqlite:///{own / 'mlflow.db'}"
    proc = subprocess.run([sys.executable, "-m", "nnexp.report", "multiple_eta", "--seeds", "2", *SMALL, "-o",
                           "dtype=float32"], capture_output=True, text=True, cwd=own, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_URI": own_uri})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cases = []  # (store, the report's run, the job it ran)
    for uri, extra, seed in ((os.environ["MLFLOW_TRACKING_URI"], SMALL[1::2], 1),
                             (own_uri, [*SMALL[1::2], "dtype=float32"], 0)):
        (job,) = [j for j in plan_jobs(load_figures(), ["multiple_eta"], 2, extra)
                  if j.arm == "eta = 2.5" and j.seed == seed]
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("nnexp").experiment_id],
                                    f"tags.`nnexp.config_hash` = '{job.key}'")
        assert int(run.data.tags["nnexp.population_size"]) >= 3  # trained with the other etas (and more)
        cases.append((uri, run, job))
    procs = []
    for i, (_, _, job) in enumerate(cases):
        (tmp_path / f"plain{i}").mkdir()
        procs.append(subprocess.Popen([sys.executable, "-m", "nnexp.run", *job.overrides,
                                       f"tracking.uri=sqlite:///{tmp_path / f'plain{i}' / 'mlflow.db'}"],
                                      cwd=tmp_path / f"plain{i}", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    for i, ((uri, run, job), p) in enumerate(zip(cases, procs)):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        plain_uri = f"sqlite:///{tmp_path / f'plain{i}' / 'mlflow.db'}"
        client = MlflowClient(plain_uri)
        (alone,) = client.search_runs([client.get_experiment_by_name("nnexp").experiment_id])
        assert alone.data.tags["nnexp.config_hash"] == job.key and alone.data.params == run.data.params
        want = run_outcome(plain_uri, alone)
        assert want[1]["w0"].dtype == ("float32" if i else "float64") and len(want[0]["training_cost"]) == 3
        assert_same_outcome(run_outcome(uri, run), want)
