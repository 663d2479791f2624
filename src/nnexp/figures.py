"""Figures (the only module that imports matplotlib). Each function writes one PNG and
returns its path; the data come in as plain Python / pandas objects, never from training."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def eta_cost_curves(curves: dict[float, list], path: Path) -> Path:
    """Training cost vs training images, one line per eta (the eta-threshold stage)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for eta, rows in sorted(curves.items()):
        pts = [(r[0], r[2]) for r in rows if r[2] is not None]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=f"eta = {eta:g}")
    ax.set_yscale("log")
    ax.set_xlabel("training images seen")
    ax.set_ylabel("training cost")
    ax.set_title("Training cost over the first epochs, per eta")
    ax.legend(fontsize=8)
    return _save(fig, path)


def accuracy_vs_param(xs: Sequence[float], ys: Sequence[float], path: Path, *, xlabel: str,
                      title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ax.plot([xs[i] for i in order], [ys[i] for i in order], marker="o")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("best validation accuracy")
    ax.set_title(title)
    return _save(fig, path)


def accuracy_vs_time(curves: dict[Any, list], path: Path, *, label: str) -> Path:
    """Validation accuracy vs training seconds, one line per setting (the mini-batch stage)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, rows in sorted(curves.items()):
        pts = [(r[1], r[3]) for r in rows if r[3] is not None]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=f"{label} {key}")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Validation accuracy vs real elapsed time")
    ax.legend(fontsize=8)
    return _save(fig, path)


def study_stage_figure(stage: str, trials: list, path: Path) -> Path | None:
    """The plot that justifies a study stage's decision, from its finished Optuna trials."""
    def fixed(t):
        return t.params or t.system_attrs.get("fixed_params", {})

    if stage == "eta_threshold":
        return eta_cost_curves({float(fixed(t)["eta"]): t.user_attrs.get("curve", []) for t in trials}, path)
    if stage in ("lmbda_walk", "lmbda_refine", "eta_refine"):
        name = "eta" if stage == "eta_refine" else "lmbda"
        pts = [(float(fixed(t)[name]), t.value) for t in trials if t.value is not None and name in fixed(t)]
        if not pts:
            return None
        return accuracy_vs_param(*zip(*pts), path, xlabel=f"{name}{' (full-data units)' if name == 'lmbda' else ''}",
                                 title=f"{stage}: validation accuracy vs {name}")
    if stage == "mini_batch":
        return accuracy_vs_time({int(fixed(t)["mini_batch_size"]): t.user_attrs.get("curve", []) for t in trials},
                                path, label="mini-batch")
    if stage == "search":
        pts = [(float(t.params["eta"]), t.value) for t in trials if t.value is not None and "eta" in t.params]
        if not pts:
            return None
        return accuracy_vs_param(*zip(*pts), path, xlabel="eta", title="search: validation accuracy vs eta")
    return None
