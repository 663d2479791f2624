"""``python -m nnexp.report``: the book's figures regenerated from tracked runs.

Figures are declared in ``sweeps/figures.yaml``. Each arm x seed is one configuration; its
MLflow run is found by the tag ``nnexp.config_hash``. Missing runs are launched first (on both
cores) through nnexp.run's own path, or listed with ``--no-run``. Plotting reads only the
MLflow store (through pandas frames); it never trains.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import yaml

from nnexp import tracking
from nnexp.errors import ConfigError, NnexpError

log = logging.getLogger("nnexp.report")
GOOD_STATUSES = ("completed", "early_stopped", "diverged")
MLFLOW_UI = "http://127.0.0.1:5000"


# -- declarations -------------------------------------------------------------------------------
def load_figures(path: str | Path | None = None) -> dict[str, dict]:
    text = Path(path).read_text() if path else (resources.files("nnexp.sweeps") / "figures.yaml").read_text()
    return yaml.safe_load(text)


@dataclass
class Job:
    """One run a figure needs: found in MLflow by ``key``, else launched."""

    figure: str
    arm: str
    seed: int
    kind: str  # run | neuron | baseline
    key: str  # nnexp.config_hash of the run
    overrides: list[str] = field(default_factory=list)
    spec: dict = field(default_factory=dict)  # neuron / baseline parameters
    experiment: str | None = None

    @property
    def command(self) -> str:
        if self.kind == "run":
            return "python -m nnexp.run " + " ".join(f"'{o}'" if "[" in o or "$" in o else o for o in self.overrides)
        return f"python -m nnexp.report {self.figure}"


def compose_run(overrides: Sequence[str]):
    """The RunConfig nnexp.run would build from these overrides, and its resolved YAML."""
    from nnexp import runner

    job = runner.compose(list(overrides))
    return job.config, job.resolved_yaml


def _preset(overrides: Sequence[str]) -> str | None:
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("+experiment=")), None)


def _key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_jobs(figures: dict, names: Sequence[str], seeds: int, extra: Sequence[str],
              svm_max_size: int | None = None) -> list[Job]:
    """Every run the named figures need, with its identity."""
    from nnexp.config import config_hash

    jobs: list[Job] = []
    base, _ = compose_run(list(extra))
    data_id = {"dataset": base.dataset.name, "dtype": base.dtype}
    for name in names:
        fig = figures[name]
        kind = fig["kind"]
        limit = svm_max_size if svm_max_size is not None else fig.get("svm_max_size", 10_000)
        if kind == "neuron":
            for arm in fig["arms"]:
                spec = {k: arm[k] for k in ("cost", "w", "b")} | {"eta": fig["eta"], "epochs": fig["epochs"]}
                jobs.append(Job(name, arm["label"], 0, "neuron", _key({"neuron": spec}), spec=spec,
                                experiment="learning_slowdown"))
            continue
        if kind == "baselines":
            for method in fig["methods"]:
                for seed in (range(seeds) if method == "random" else [0]):
                    # the SVM is the slow one: capped like more_data's (SVC fits grow ~quadratically)
                    size = min(limit, base.train_size) if method == "svm" else None
                    spec = {"method": method, "train_size": size, **data_id}
                    jobs.append(Job(name, method, seed, "baseline", _key({"baseline": spec, "seed": seed}),
                                    spec=spec, experiment="baseline"))
            continue
        variants = [(arm, []) for arm in fig["arms"]]
        if kind == "more_data":
            variants = [(arm, [f"dataset.train_size={n}"]) for n in fig["sizes"] for arm in fig["arms"]]
            for n in fig["sizes"]:
                if n <= limit:
                    spec = {"method": "svm", "train_size": n, **data_id}
                    jobs.append(Job(name, f"SVM@{n}", 0, "baseline", _key({"baseline": spec, "seed": 0}),
                                    spec=spec, experiment="more_data_svm"))
        for arm, more in variants:
            for seed in range(seeds):
                overrides = [*arm["overrides"], *more, *extra, f"seed={seed}"]
                c, _ = compose_run(overrides)
                label = arm["label"] + (f"@{c.dataset.train_size}" if kind == "more_data" else "")
                jobs.append(Job(name, label, seed, "run", config_hash(c), overrides=overrides,
                                experiment=_preset(overrides)))
    return jobs


# -- finding and launching runs --------------------------------------------------------------------
def _client(uri: str):
    from mlflow.tracking import MlflowClient

    tracking.prepare_store(uri, "nnexp")  # logs the noisy loggers down as well
    return MlflowClient(uri)


def find_runs(uri: str, experiment: str) -> dict[str, Any]:
    """The newest finished run for every config hash in the experiment."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    found: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                                  max_results=1000, page_token=token, order_by=["attributes.start_time ASC"])
        for run in page:
            key = run.data.tags.get("nnexp.config_hash")
            if key and run.data.tags.get("nnexp.status") in GOOD_STATUSES:
                found[key] = run
        token = page.token
        if not token:
            return found


def _run_task(task: tuple[str, str, Sequence[Job]]) -> list[str]:
    """A pool task (store, experiment, jobs): compatible runs trained as one population (e.g.
    the seeds of an arm), or one baseline or single-neuron run; returns the MLflow run ids."""
    from nnexp import runner

    uri, experiment, jobs = task
    first = jobs[0]
    if first.kind == "neuron":
        return [_neuron_run(first, uri, experiment)]
    if first.kind == "baseline":
        return [_baseline_run(first, uri, experiment)]
    where = [f"tracking.uri={uri}", f"tracking.experiment={experiment}"]
    jobs = [runner.compose([*j.overrides, *where], experiment=j.experiment) for j in jobs]
    return [r.run_id for r in runner.execute(jobs)]


def _tracker(job: Job, uri: str, experiment: str, params: dict):
    t = tracking.RunTracker(uri=uri, experiment=experiment, run_name=f"{job.figure}: {job.arm}",
                            params=params, tags={"nnexp.experiment": job.experiment or job.figure,
                                                 "nnexp.config_hash": job.key, "nnexp.status": "running"})
    t.start()
    return t


def _neuron_run(job: Job, uri: str, experiment: str) -> str:
    """The book's single neuron (input 1, target 0): cost per epoch, tracked like any run."""
    from nnexp.engine.costs import COSTS
    from nnexp.engine.network import Network, forward
    from nnexp.engine.stepper import Stepper
    from nnexp.train import Record

    s = job.spec
    t = _tracker(job, uri, experiment, {**s, "sizes": [1, 1], "seed": 0})
    net = Network([np.array([[float(s["w"])]])], [np.array([float(s["b"])])], cost=s["cost"])
    x, y = np.array([[1.0]]), np.array([[0.0]])
    stepper = Stepper.of([net], eta=float(s["eta"]), penalty="none")
    for epoch in range(int(s["epochs"]) + 1):
        acts, z = forward(net, x)
        cost = COSTS[s["cost"]].fn(z, acts[-1], y)
        t.observe(Record(epoch=epoch, images_seen=epoch, eta=float(s["eta"]), epoch_seconds=0.0,
                         training_cost=cost))
        stepper.step(x, y)
    t.finish("completed", summary={"final_output": float(forward(net, x)[0][-1][0, 0])}, artifacts={})
    return t.run_id


def _baseline_run(job: Job, uri: str, experiment: str) -> str:
    from nnexp import data
    from nnexp.baselines import BASELINES
    from nnexp.runner import load_splits

    c, _ = compose_run([f"dataset={job.spec['dataset']}", f"dtype={job.spec['dtype']}"])
    splits, train, _val, test = load_splits(c)
    if job.spec["train_size"]:
        train = data.first_n(train, int(job.spec["train_size"]))
    t = _tracker(job, uri, experiment, {**job.spec, "seed": job.seed})
    acc = BASELINES[job.spec["method"]](train, test, np.random.default_rng(job.seed))
    t.finish("completed", summary={"test_accuracy": acc, "best_test_accuracy": acc}, artifacts={})
    return t.run_id


def _tasks(jobs: Sequence[Job], workers: int) -> list[list[Job]]:
    """Runs grouped into populations where compatible (seeds of an arm, arms of a sweep);
    baselines and the single neuron on their own; the slow SVM fits first."""
    from nnexp import runner

    runs = [j for j in jobs if j.kind == "run"]
    configs = [compose_run(j.overrides)[0] for j in runs]
    groups = [[runs[i] for i in g] for g in runner.plan_groups(configs, 16, 4096, workers)]
    others = sorted((j for j in jobs if j.kind != "run"), key=lambda j: -(j.spec.get("train_size") or 0))
    return [[j] for j in others] + groups


def launch(jobs: Sequence[Job], uri: str, experiment: str, workers: int) -> None:
    """Make the missing runs on ``workers`` processes (populations where possible), with progress."""
    from nnexp import runner

    tracking.prepare_store(uri, experiment)  # created once, before parallel jobs
    tasks = _tasks(jobs, workers)
    start, done = time.perf_counter(), 0

    def progress(i: int, outcome) -> None:
        nonlocal done
        task = tasks[i]
        done += len(task)
        status = "done"
        if isinstance(outcome, BaseException):  # recorded in MLflow by the runs themselves; keep going
            status = f"failed: {str(outcome).splitlines()[0] if str(outcome) else type(outcome).__name__}"
        what = task[0].arm if len(task) == 1 else f"{len(task)} runs as one population ({task[0].arm}, ...)"
        print(f"[{done}/{len(jobs)}] {task[0].figure}: {what} {status} ({time.perf_counter() - start:.0f} s)",
              flush=True)

    runner.run_tasks(_run_task, [(uri, experiment, t) for t in tasks], workers, on_done=progress)


# -- frames and statistics ---------------------------------------------------------------------
def curves_frame(uri: str, runs: dict[tuple[str, int], Any], metrics: Sequence[str]) -> pd.DataFrame:
    """Long frame: arm, seed, run_id, metric, step, value."""
    client = _client(uri)
    rows = []
    for (arm, seed), run in runs.items():
        for metric in metrics:
            for m in client.get_metric_history(run.info.run_id, metric):
                rows.append((arm, seed, run.info.run_id, metric, m.step, m.value))
    return pd.DataFrame(rows, columns=["arm", "seed", "run_id", "metric", "step", "value"])


def band(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds with a min-max band, per arm, metric and step."""
    g = frame.groupby(["arm", "metric", "step"], sort=True)["value"]
    out = g.agg(mean="mean", lo="min", hi="max", n="count").reset_index()
    return out


AGGS = {"max": "max", "min": "min", "last": "last", "first": "first"}


def per_seed(frame: pd.DataFrame, metric: str, agg: str) -> pd.DataFrame:
    """One number per arm and seed: the metric's max / min / first / last over the epochs."""
    if agg not in AGGS:
        raise ConfigError(f"unknown summary '{agg}'; choose one of: {', '.join(AGGS)}")
    sub = frame[frame.metric == metric].sort_values("step")
    return sub.groupby(["arm", "seed"])["value"].agg(AGGS[agg]).reset_index()


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def paired_difference(summary: pd.DataFrame, a: str, b: str) -> dict:
    """b - a over the seeds both arms share: mean, std and a 95% t-interval."""
    from scipy import stats

    wide = summary.pivot(index="seed", columns="arm", values="value").dropna(subset=[a, b])
    d = (wide[b] - wide[a]).to_numpy()
    n = len(d)
    mean, std = mean_std(d) if n else (math.nan, math.nan)
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
    return {"a": a, "b": b, "n": n, "mean": mean, "std": std, "lo": mean - half, "hi": mean + half}


# -- building figures ------------------------------------------------------------------------------
@dataclass
class Section:
    name: str
    title: str
    book: str
    png: str
    table: list[tuple[str, str, str, str]]  # what, book, nnexp, n
    comparisons: list[str]
    commands: list[str]
    runs: list[tuple[str, int, str, str]]  # arm, seed, run id, experiment id
    curves: dict


def _fmt(x: float) -> str:
    return f"{x:.2%}" if abs(x) <= 1.5 else f"{x:.4g}"


def build_figure(name: str, fig: dict, jobs: Sequence[Job], found: dict, uri: str, out: Path) -> Section:
    from nnexp import figures

    runs = {(j.arm, j.seed): found[j.key] for j in jobs}
    kind, png = fig["kind"], out / f"{name}.png"
    table, comparisons = [], []
    if kind in ("curves", "neuron"):
        metrics = list(dict.fromkeys(fig["panels"] + [n["metric"] for n in fig.get("numbers", [])]))
        frame = curves_frame(uri, runs, metrics)
        arms = [a["label"] for a in fig["arms"]]
        drawn = figures.curves_figure(band(frame[frame.metric.isin(fig["panels"])]), fig["panels"], png,
                                      title=fig["title"], arms=arms, log_cost=kind == "neuron")
        for spec in fig.get("numbers", []):
            s = per_seed(frame, spec["metric"], spec["agg"])
            vals = s[s.arm == spec["arm"]]["value"].tolist()
            m, sd = mean_std(vals)
            table.append((f"{spec['arm']}: {spec['what']}", _fmt(spec["book"]), f"{_fmt(m)} ± {_fmt(sd)}", str(len(vals))))
        for spec in fig.get("compare", []):
            d = paired_difference(per_seed(frame, spec["metric"], spec["agg"]), spec["a"], spec["b"])
            ci = f", 95% CI [{d['lo']:+.4f}, {d['hi']:+.4f}]" if d["n"] > 1 else " (one seed: no interval)"
            comparisons.append(f"{spec['b']} minus {spec['a']}, {spec['agg']} {spec['metric']}: "
                               f"{d['mean']:+.4f} ± {d['std']:.4f} over {d['n']} paired seeds{ci}")
    elif kind == "more_data":
        frame = pd.DataFrame([(arm.split("@")[0], int(arm.split("@")[1]), seed,
                               _final(r, fig.get("metric", "test_accuracy"))) for (arm, seed), r in runs.items()],
                             columns=["arm", "size", "seed", "value"]).replace({"arm": {"SVM": "SVM (SVC defaults)"}})
        pts = frame.groupby(["arm", "size"])["value"].agg(mean="mean", lo="min", hi="max", n="count").reset_index()
        drawn = figures.more_data_figure(pts, png, title=fig["title"])
        for spec in fig.get("numbers", []):
            arm = "SVM (SVC defaults)" if spec["arm"] == "SVM" else spec["arm"]
            vals = frame[(frame.arm == arm) & (frame["size"] == spec["size"])]["value"].tolist()
            got = f"{_fmt(mean_std(vals)[0])} ± {_fmt(mean_std(vals)[1])}" if vals else "not run"
            table.append((spec["what"], _fmt(spec["book"]), got, str(len(vals))))
    else:  # baselines
        frame = pd.DataFrame([(arm, seed, _final(r, "test_accuracy")) for (arm, seed), r in runs.items()],
                             columns=["arm", "seed", "value"])
        vals = frame.groupby("arm", sort=False)["value"].agg(mean="mean", lo="min", hi="max").reset_index()
        drawn = figures.bars_figure(vals, png, title=fig["title"])
        sizes = {j.arm: j.spec.get("train_size") for j in jobs}
        for spec in fig.get("numbers", []):
            v = frame[frame.arm == spec["arm"]]["value"].tolist()
            on = f" (on {sizes[spec['arm']]:,} images)" if sizes.get(spec["arm"]) else ""
            table.append((spec["what"], _fmt(spec["book"]), f"{_fmt(mean_std(v)[0])} ± {_fmt(mean_std(v)[1])}{on}",
                          str(len(v))))
    commands = sorted({j.command for j in jobs if j.kind == "run"}) or [f"python -m nnexp.report {name}"]
    run_list = [(arm, seed, r.info.run_id, r.info.experiment_id) for (arm, seed), r in sorted(runs.items())]
    return Section(name, fig["title"], fig.get("book", ""), png.name, table, comparisons, commands, run_list,
                   drawn.curves)


def _final(run, metric: str) -> float:
    return float(run.data.metrics.get(metric, math.nan))


# -- the page ---------------------------------------------------------------------------------------
def write_page(sections: Sequence[Section], out: Path, *, seeds: int, extra: Sequence[str]) -> Path:
    """index.html and its markdown twin, one section per figure."""
    regen = "python -m nnexp.report" + (f" --seeds {seeds}" if seeds != 1 else "") + \
            "".join(f" -o {o}" for o in extra)
    md = ["# nnexp: the book's figures, regenerated from tracked runs", "",
          f"Regenerate everything: `{regen}`. Bands are min-max over seeds.", ""]
    h = ["<!doctype html><html><head><meta charset='utf-8'><title>nnexp report</title>",
         "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}"
         "img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}code{background:#f4f4f4}</style>",
         "</head><body><h1>nnexp: the book's figures, regenerated from tracked runs</h1>",
         f"<p>Regenerate everything: <code>{html.escape(regen)}</code>. Bands are min-max over seeds.</p>"]
    for s in sections:
        md += [f"## {s.title}", "", f"*{s.book}* · `python -m nnexp.report {s.name}`", "", f"![{s.name}]({s.png})", ""]
        h += [f"<section id='{s.name}'><h2>{html.escape(s.title)}</h2>",
              f"<p><em>{html.escape(s.book)}</em> · <code>python -m nnexp.report {s.name}</code></p>",
              f"<img src='{s.png}' alt='{s.name}'>"]
        if s.table:
            md += ["| | book | nnexp (mean ± std over seeds) | seeds |", "|---|---|---|---|"]
            md += [f"| {a} | {b} | {c} | {n} |" for a, b, c, n in s.table] + [""]
            h.append("<table><tr><th></th><th>book</th><th>nnexp (mean ± std over seeds)</th><th>seeds</th></tr>")
            h += [f"<tr><td>{html.escape(a)}</td><td>{b}</td><td>{c}</td><td>{n}</td></tr>" for a, b, c, n in s.table]
            h.append("</table>")
        for c in s.comparisons:
            md.append(f"- paired: {c}")
            h.append(f"<p>Paired: {html.escape(c)}</p>")
        md += ["", "Runs: " + ", ".join(f"[{a} s{seed}]({MLFLOW_UI}/#/experiments/{e}/runs/{r})"
                                         for a, seed, r, e in s.runs), ""]
        md += ["Commands:", *[f"    {c}" for c in s.commands], ""]
        links = ", ".join(f"<a href='{MLFLOW_UI}/#/experiments/{e}/runs/{r}'>{html.escape(a)} s{seed}</a>"
                          for a, seed, r, e in s.runs)
        h += [f"<p>Runs (MLflow UI at {MLFLOW_UI}): {links}</p>",
              "<pre>" + html.escape("\n".join(s.commands)) + "</pre></section>"]
    h.append("</body></html>")
    (out / "index.md").write_text("\n".join(md))
    page = out / "index.html"
    page.write_text("\n".join(h))
    return page


# -- entry point ----------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None, names: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nnexp.report",
                                description="Regenerate the book's figures from MLflow runs (sweeps/figures.yaml).")
    p.add_argument("figures", nargs="*", help=f"figures to build (default: all): {', '.join(names)}")
    p.add_argument("--no-run", action="store_true", help="do not launch missing runs; list them instead")
    p.add_argument("--seeds", type=int, default=1, help="seeds per arm (default 1)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="an nnexp.run override applied to every arm, e.g. -o dataset=digits -o epochs=5")
    p.add_argument("--out", default="reports", help="output directory (default: reports/)")
    p.add_argument("--workers", type=int, default=2, help="processes for missing runs (default 2)")
    p.add_argument("--svm-max-size", type=int, default=None,
                   help="largest training set for the SVM in more_data (default in figures.yaml)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--experiment", default="nnexp", help="MLflow experiment (default nnexp)")
    args = p.parse_args(argv)
    unknown = [f for f in args.figures if f not in names]
    if unknown:
        p.error(f"unknown figure '{unknown[0]}'; choose from: {', '.join(names)}")
    if args.seeds < 1 or args.workers < 1:
        p.error("--seeds and --workers must be at least 1")
    return args


def run(args: argparse.Namespace, figures: dict) -> int:
    from nnexp.runner import check_overrides

    check_overrides(args.override)
    names = args.figures or list(figures)
    uri = tracking.resolve_uri(args.tracking_uri)
    start = time.perf_counter()
    jobs = plan_jobs(figures, names, args.seeds, args.override, args.svm_max_size)
    found = find_runs(uri, args.experiment)
    missing = [j for j in jobs if j.key not in found]
    if missing and args.no_run:
        print(f"{len(missing)} of {len(jobs)} runs are missing (--no-run):")
        for j in missing:
            print(f"  {j.figure}: {j.arm}, seed {j.seed}: {j.command}")
    elif missing:
        if any(j.kind != "neuron" for j in missing):  # fail fast, once, if the data is not there
            from nnexp.runner import load_splits

            load_splits(compose_run(list(args.override))[0])
        print(f"launching {len(missing)} missing runs of {len(jobs)} on {args.workers} processes")
        launch(missing, uri, args.experiment, args.workers)
        found = find_runs(uri, args.experiment)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections, skipped = [], []
    for name in names:
        fig_jobs = [j for j in jobs if j.figure == name]
        if any(j.key not in found for j in fig_jobs):
            skipped.append(name)
            continue
        sections.append(build_figure(name, figures[name], fig_jobs, found, uri, out))
    for section in sections:  # the page shows the latest build of every figure, not only this call's
        (out / f"{section.name}.json").write_text(json.dumps(asdict(section), indent=1))
    kept = [Section(**json.loads((out / f"{n}.json").read_text())) for n in figures if (out / f"{n}.json").exists()]
    page = write_page(kept, out, seeds=args.seeds, extra=args.override)
    built = ", ".join(s.name for s in sections) or "none"
    note = f"; missing runs for: {', '.join(skipped)}" if skipped else ""
    print(f"report: {len(sections)} figures ({built}) in {page} ({time.perf_counter() - start:.0f} s){note}")
    return 1 if skipped else 0


def main(argv: Sequence[str] | None = None) -> None:
    figures = load_figures()
    args = parse_args(argv, list(figures))
    try:
        code = run(args, figures)
    except NnexpError as exc:
        print(f"nnexp.report: error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    # run the importable module's main, not this __main__ copy: worker processes (joblib,
    # spawn) must be able to unpickle the functions they are handed by reference
    from nnexp.report import main as _main

    _main()
