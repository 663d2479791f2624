"""Figures (the only module that imports matplotlib). Each function writes one PNG and
returns its path; the data come in as plain Python / pandas objects, never from training."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _wrap(title: str, width: int = 72) -> str:
    """A long title on as many lines as it needs, so that none is cut at the figure's edge."""
    import textwrap

    return "\n".join(part for line in title.splitlines() for part in textwrap.wrap(line, width))


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _curves_by_key(curves: dict[Any, list], path: Path, *, x: int, y: int, label: str, xlabel: str,
                   ylabel: str, title: str, log_y: bool = False) -> Path:
    """One line per key from rows [images, seconds, training cost, validation accuracy]."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, rows in sorted(curves.items()):
        pts = [(r[x], r[y]) for r in rows if r[y] is not None]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=label.format(key))
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(_wrap(title))
    ax.legend(fontsize=8)
    return _save(fig, path)


def eta_cost_curves(curves: dict[float, list], path: Path) -> Path:
    """Training cost vs training images, one line per eta (the eta-threshold stage)."""
    return _curves_by_key(curves, path, x=0, y=2, label="eta = {:g}", xlabel="training images seen",
                          ylabel="training cost", title="Training cost over the first epochs, per eta", log_y=True)


def accuracy_vs_time(curves: dict[Any, list], path: Path, *, label: str) -> Path:
    """Validation accuracy vs training seconds, one line per setting (the mini-batch stage)."""
    return _curves_by_key(curves, path, x=1, y=3, label=label + " {}", xlabel="training time (s)",
                          ylabel="validation accuracy", title="Validation accuracy vs real elapsed time")


def accuracy_vs_param(points: dict[float, list[float]], path: Path, *, xlabel: str, title: str) -> Path:
    """Best validation accuracy against a hyper-parameter: every seed replicate as a dot, the
    mean over replicates as the line."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    xs = sorted(points)
    for x in xs:
        ax.scatter([x] * len(points[x]), points[x], color="tab:blue", alpha=0.4, s=14)
    ax.plot(xs, [sum(points[x]) / len(points[x]) for x in xs], marker="o", color="tab:blue",
            label="mean over seeds" if any(len(v) > 1 for v in points.values()) else None)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("best validation accuracy")
    ax.set_title(_wrap(title))
    if any(len(v) > 1 for v in points.values()):
        ax.legend()
    return _save(fig, path)


def lineage_figure(members: dict[int, list[list]], path: Path, *, title: str) -> Path:
    """Population-based training's lineage: each member's validation accuracy against epochs
    (``members``: per member, rows [epoch, eta, lmbda, validation accuracy, donor]); where a
    member took a donor's network, a grey line joins the donor's point to the member's next one."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = plt.get_cmap("tab10")
    by_member = {m: {row[0]: row for row in rows} for m, rows in members.items()}
    for m, rows in sorted(members.items()):
        ax.plot([r[0] for r in rows], [r[3] for r in rows], color=colors(m % 10), lw=1, label=f"member {m}")
        for j, r in enumerate(rows[:-1]):
            donor = by_member.get(r[4], {}).get(r[0]) if r[4] is not None else None
            if donor is not None:
                ax.plot([r[0], rows[j + 1][0]], [donor[3], rows[j + 1][3]], color="0.6", lw=0.8, ls="--")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(_wrap(title))
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def schedule_figure(points: list[list], others: dict[int, list[list]], path: Path, *, title: str,
                    end: float) -> Path:
    """A piecewise schedule of eta and lambda against epochs (``points``: [epoch, eta, lmbda]
    rows, up to ``end``), over the other members' values at each evaluation (faint)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for k, (ax, name) in enumerate(zip(axes, ("eta", "lambda"))):
        for rows in others.values():
            ax.plot([r[0] for r in rows], [r[1 + k] for r in rows], color="0.75", lw=0.7, drawstyle="steps-pre")
        xs = [p[0] for p in points] + [end]
        ys = [p[1 + k] for p in points] + [points[-1][1 + k]]
        ax.step(xs, ys, where="post", color="tab:red", lw=2, label="the chosen schedule")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
    axes[0].legend(fontsize=8)
    fig.suptitle(_wrap(title))
    return _save(fig, path)


def anytime_figure(curves: dict[str, list[list]], path: Path, *, title: str) -> Path:
    """Best validation accuracy found so far against wall seconds, per method: one line per
    study seed, (seconds, best) steps."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (method, runs) in enumerate(curves.items()):
        for j, curve in enumerate(runs):
            if curve:
                ts, vs = zip(*curve)
                ax.step(ts, vs, where="post", color=colors[i % len(colors)], alpha=0.8,
                        label=method if j == 0 else None)
    quarter = [next((v for t, v in reversed(c) if t <= c[-1][0] / 4), c[0][1])
               for runs in curves.values() for c in runs if c]
    if quarter:  # the range that matters: from the lowest best any study held at a quarter of its time
        top = max(v for runs in curves.values() for c in runs for _, v in c)
        ax.set_ylim(min(quarter) - 0.1 * (top - min(quarter)) - 1e-3, top + 0.1 * (top - min(quarter)) + 1e-3)
    ax.set_xlabel("wall-clock seconds since the study started")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title(_wrap(title), fontsize=10)
    ax.legend()
    return _save(fig, path)


# -- the book's figures (report) -------------------------------------------------------------------
from dataclasses import dataclass, field  # noqa: E402

import pandas as pd  # noqa: E402

LABELS = {"training_cost": "training cost", "training_accuracy": "training accuracy",
          "validation_cost": "validation cost", "validation_accuracy": "validation accuracy",
          "test_cost": "test cost", "test_accuracy": "test accuracy"}


@dataclass
class Drawn:
    path: Path
    curves: dict[str, int] = field(default_factory=dict)  # panel -> number of curves drawn


def curves_figure(bands: pd.DataFrame, panels: Sequence[str], path: Path, *, title: str,
                  arms: Sequence[str] | None = None, log_cost: bool = False) -> Drawn:
    """One panel per metric; per arm the mean over seeds and, with several seeds, the
    min-max band. ``bands``: columns arm, metric, step, mean, lo, hi, n."""
    arms = list(arms or dict.fromkeys(bands["arm"]))
    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 3.8 * rows), squeeze=False)
    drawn = Drawn(Path(path))
    for ax, metric in zip(axes.flat, panels):
        n = 0
        for arm in arms:
            sub = bands[(bands.arm == arm) & (bands.metric == metric)].sort_values("step")
            if sub.empty:
                continue
            (line,) = ax.plot(sub.step, sub["mean"], label=arm, lw=1.4)
            if (sub.n > 1).any():
                ax.fill_between(sub.step, sub.lo, sub.hi, color=line.get_color(), alpha=0.2, lw=0)
            n += 1
        drawn.curves[metric] = n
        ax.set_xlabel("epoch")
        ax.set_ylabel(LABELS.get(metric, metric))
        if log_cost and metric.endswith("cost"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if n:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(_wrap(title + _band_note(bands)), fontsize=10)
    _save(fig, path)
    return drawn


def _band_note(frame: pd.DataFrame) -> str:
    n = int(frame["n"].max()) if "n" in frame and len(frame) else 1
    return f"\n(mean of {n} seeds; band: min-max)" if n > 1 else ""


def more_data_figure(points: pd.DataFrame, path: Path, *, title: str, ylabel: str = "accuracy") -> Drawn:
    """Accuracy vs training-set size (log axis), one line per arm (network, SVM).
    ``points``: columns arm, size, mean, lo, hi, n."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    drawn = Drawn(Path(path))
    for arm in dict.fromkeys(points["arm"]):
        sub = points[points.arm == arm].sort_values("size")
        (line,) = ax.plot(sub["size"], sub["mean"], marker="o", label=arm)
        if (sub.n > 1).any():
            ax.fill_between(sub["size"], sub.lo, sub.hi, color=line.get_color(), alpha=0.2, lw=0)
    drawn.curves["accuracy"] = points["arm"].nunique()
    ax.set_xscale("log")
    ax.set_xlabel("training images")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(_wrap(title + _band_note(points)), fontsize=10)
    _save(fig, path)
    return drawn


def bars_figure(values: pd.DataFrame, path: Path, *, title: str) -> Drawn:
    """One bar per method: ``values`` columns arm, mean (and lo, hi for the error bar)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    err = [values["mean"] - values["lo"], values["hi"] - values["mean"]]
    ax.bar(values["arm"], values["mean"], yerr=err, capsize=4, color="#4c72b0")
    for i, v in enumerate(values["mean"]):
        ax.text(i, v + 0.01, f"{v:.2%}", ha="center", fontsize=9)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy")
    ax.set_title(_wrap(title), fontsize=10)
    _save(fig, path)
    return Drawn(Path(path), {"bars": len(values)})
