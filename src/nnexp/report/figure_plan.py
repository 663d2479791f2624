"""Which runs each figure of ``sweeps/figures.yaml`` needs: one job per arm x seed (and the
baselines), each with the identity (``nnexp.config_hash``) it is found by in MLflow."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence

import yaml

from nnexp.config import config_hash, identity_hash

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


#: a baseline run scores both splits (part of its identity: runs from before did not)
SCORED = {"scored": ["validation", "test"]}


def plan_jobs(figures: dict, names: Sequence[str], seeds: int, extra: Sequence[str],
              svm_max_size: int | None = None, sizes: Sequence[int] | None = None) -> list[FigureRun]:
    """Every run the named figures need, with its identity. ``sizes``: the training-set sizes
    of the more_data figure (default: the figure's)."""
    jobs: list[FigureRun] = []
    base, _ = compose_run(list(extra))
    data_id = {"dataset": base.dataset.name, "dtype": base.dtype}
    where = [o for o in extra if o.startswith("dataset.data_dir=")]  # where a baseline reads its data
    for name in names:
        fig = figures[name]
        kind = fig["kind"]
        limit = svm_max_size if svm_max_size is not None else fig.get("svm_max_size", 10_000)
        if kind == "neuron":
            for arm in fig["arms"]:
                spec = {k: arm[k] for k in ("cost", "w", "b")} | {"eta": arm.get("eta", fig["eta"]),
                                                                 "epochs": fig["epochs"]}
                jobs.append(FigureRun(name, arm["label"], 0, "neuron", identity_hash({"neuron": spec}), spec=spec,
                                experiment="learning_slowdown"))
            continue
        if kind == "baselines":
            for method in fig["methods"]:
                for seed in (range(seeds) if method == "random" else [0]):
                    # the SVM is the slow one: capped like more_data's (SVC fits grow ~quadratically)
                    size = min(limit, base.train_size) if method.startswith("svm") else None
                    spec = {"method": method, "train_size": size, **data_id, **SCORED}
                    jobs.append(FigureRun(name, method, seed, "baseline", identity_hash({"baseline": spec, "seed": seed}),
                                    overrides=where, spec=spec, experiment="baseline"))
            continue
        variants = [(arm, []) for arm in fig["arms"]]
        if kind == "more_data":
            chosen = list(sizes or fig["sizes"])
            variants = [(arm, [f"dataset.train_size={n}"]) for n in chosen for arm in fig["arms"]]
            for n in chosen:
                for method in fig.get("baselines", []) if n <= limit else []:
                    spec = {"method": method, "train_size": n, **data_id, **SCORED}
                    jobs.append(FigureRun(name, f"{method}@{n}", 0, "baseline",
                                    identity_hash({"baseline": spec, "seed": 0}), overrides=where, spec=spec,
                                    experiment="more_data_svm"))
        for arm, more in variants:
            for seed in range(seeds):
                overrides = [*arm["overrides"], *more, *extra, f"seed={seed}"]
                c, _ = compose_run(overrides)
                label = arm["label"] + (f"@{c.dataset.train_size}" if kind == "more_data" else "")
                jobs.append(FigureRun(name, label, seed, "run", config_hash(c), overrides=overrides,
                                experiment=_preset(overrides)))
    return jobs
