"""Which runs each figure of ``sweeps/figures.yaml`` needs: one job per arm x seed (and the
baselines), each composed once into the runner's Job that makes it, with the identity
(``nnexp.config_hash``) it is found by in MLflow."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Sequence

import yaml

from nnexp import runner
from nnexp.config.identity import config_hash, identity_hash
from nnexp.config.run_schema import RunConfig
from nnexp.report.book_runs import fit_baseline, fit_neuron

def load_figures(path: str | Path | None = None) -> dict[str, dict]:
    text = Path(path).read_text() if path else (resources.files("nnexp.sweeps") / "figures.yaml").read_text()
    return yaml.safe_load(text)


@dataclass
class FigureRun:
    """One run a figure needs: found in MLflow by ``key``, else launched."""

    figure: str
    arm: str
    seed: int
    kind: str  # run | neuron | baseline
    key: str  # nnexp.config_hash of the run
    overrides: list[str] = field(default_factory=list)
    spec: dict = field(default_factory=dict)  # neuron / baseline parameters
    experiment: str | None = None
    job: runner.Job | None = None  # what makes the run (composed once, here)

    @property
    def command(self) -> str:
        if self.kind == "run":
            return "python -m nnexp.run " + " ".join(f"'{o}'" if "[" in o or "$" in o else o for o in self.overrides)
        return f"python -m nnexp.report {self.figure}"


def _preset(overrides: Sequence[str]) -> str | None:
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("+experiment=")), None)


#: a baseline run scores both splits (part of its identity: runs from before did not)
SCORED = {"scored": ["validation", "test"]}


def plan_jobs(figures: dict, names: Sequence[str], seeds: int, extra: Sequence[str],
              svm_max_size: int | None = None, sizes: Sequence[int] | None = None) -> list[FigureRun]:
    """Every run the named figures need, with its identity. ``sizes``: the training-set sizes
    of the more_data figure (default: the figure's)."""
    jobs: list[FigureRun] = []
    base = runner.compose(list(extra)).config
    data_id = {"dataset": base.dataset.name, "dtype": base.dtype}
    where = [o for o in extra if o.startswith("dataset.data_dir=")]  # where a baseline reads its data
    data_job = runner.compose([f"dataset={base.dataset.name}", f"dtype={base.dtype}", *where])  # a baseline's data
    for name in names:
        fig = figures[name]
        kind = fig["kind"]
        limit = svm_max_size if svm_max_size is not None else fig.get("svm_max_size", 10_000)
        if kind == "neuron":
            for arm in fig["arms"]:
                spec = {k: arm[k] for k in ("cost", "w", "b")} | {"eta": arm.get("eta", fig["eta"]),
                                                                 "epochs": fig["epochs"]}
                key = identity_hash({"neuron": spec})
                job = runner.Job(config=RunConfig(), experiment="learning_slowdown", fit=partial(fit_neuron, spec),
                                 params={**spec, "sizes": [1, 1], "seed": 0}, identity=key,
                                 run_name=f"{name}: {arm['label']}")
                jobs.append(FigureRun(name, arm["label"], 0, "neuron", key, spec=spec, experiment="learning_slowdown",
                                      job=job))
            continue
        if kind == "baselines":
            for method in fig["methods"]:
                for seed in (range(seeds) if method == "random" else [0]):
                    # the SVM is the slow one: capped like more_data's (SVC fits grow ~quadratically)
                    size = min(limit, base.train_size) if method.startswith("svm") else None
                    spec = {"method": method, "train_size": size, **data_id, **SCORED}
                    jobs.append(_baseline(name, method, seed, spec, "baseline", data_job, where))
            continue
        variants = [(arm, []) for arm in fig["arms"]]
        if kind == "more_data":
            chosen = list(sizes or fig["sizes"])
            variants = [(arm, [f"dataset.train_size={n}"]) for n in chosen for arm in fig["arms"]]
            for n in chosen:
                for method in fig.get("baselines", []) if n <= limit else []:
                    spec = {"method": method, "train_size": n, **data_id, **SCORED}
                    jobs.append(_baseline(name, f"{method}@{n}", 0, spec, "more_data_svm", data_job, where))
        for arm, more in variants:
            for seed in range(seeds):
                overrides = [*arm["overrides"], *more, *extra, f"seed={seed}"]
                job = runner.compose(overrides, experiment=_preset(overrides))
                label = arm["label"] + (f"@{job.config.dataset.train_size}" if kind == "more_data" else "")
                jobs.append(FigureRun(name, label, seed, "run", config_hash(job.config), overrides=overrides,
                                      experiment=_preset(overrides), job=job))
    return jobs


def _baseline(figure: str, arm: str, seed: int, spec: dict, experiment: str, data_job: runner.Job,
              where: list[str]) -> FigureRun:
    """A baseline classifier's run: fitted on the data ``data_job`` reads, tracked like any run."""
    key = identity_hash({"baseline": spec, "seed": seed})
    job = data_job.with_(experiment=experiment, fit=partial(fit_baseline, spec), params={**spec, "seed": seed},
                         identity=key, run_name=f"{figure}: {arm}", config=replace(data_job.config, seed=seed))
    return FigureRun(figure, arm, seed, "baseline", key, overrides=where, spec=spec, experiment=experiment, job=job)
