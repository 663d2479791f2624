"""The plots of a study's decision log, drawn from the data the search wrote beside it
(``plots.json``): the search decides and writes data, the report draws."""

from __future__ import annotations

import json
import re
from pathlib import Path

from nnexp.config.names import STUDY_PLOTS_FILE
from nnexp.report import figures

_PLACEHOLDER = re.compile(r"<!-- plot (?P<png>[^ ]+) \| (?P<caption>.*?) -->")


def pbt_figures(plot: dict, path: Path) -> Path | None:
    """Population-based training's lineage plot (stage ``pbt``) or its schedule plot
    (``pbt_schedule``): the chosen population's members, in epochs."""
    n = float(plot["images_per_epoch"])
    members = {int(t["member"]): [[row[0] / n, *row[1:]] for row in t["records"]]
               for t in plot["trials"] if t.get("population") == plot["population"]}
    if not members:
        return None
    if plot["stage"] == "pbt":
        return figures.lineage_figure(members, path, title=f"population {plot['population']}: validation accuracy; "
                                                           "dashed: a member takes a donor's network")
    points = [[p[0] / n, p[1], p[2]] for p in plot["schedule"]]
    return figures.schedule_figure(points, members, path, end=max(r[0] for rows in members.values() for r in rows),
                                   title="the best member's schedule along its lineage (red), every member's (grey)")


def stage_figure(stage: str, trials: list[dict], path: Path) -> Path | None:
    """The plot that justifies a stage's decision, from its finished trials (``plot_data``):
    training cost per eta (eta_threshold), accuracy against a hyper-parameter (walks, a sampler's
    search), accuracy against training seconds (mini_batch)."""
    def scored(name: str) -> dict[float, list[float]]:
        return {float(t["params"][name]): t.get("replicate_values") or [t["value"]]
                for t in trials if t.get("value") is not None and name in t["params"]}

    if stage == "eta_threshold":
        return figures.eta_cost_curves({float(t["params"]["eta"]): t.get("curve") or [] for t in trials}, path)
    if stage in ("lmbda_walk", "lmbda_refine", "eta_refine", "search", "asha"):
        name = "eta" if stage in ("eta_refine", "search", "asha") else "lmbda"
        points = scored(name)
        if not points:
            return None
        return figures.accuracy_vs_param(points, path, title=f"{stage}: validation accuracy vs {name}",
                                         xlabel=f"{name}{' (full-data units)' if name == 'lmbda' else ''}")
    if stage == "mini_batch":
        return figures.accuracy_vs_time({int(t["params"]["mini_batch_size"]): t.get("curve") or []
                                         for t in trials}, path, label="mini-batch")
    return None


def draw_study(out_dir: str | Path) -> list[Path]:
    """Draw every plot of a study's decision log (``out_dir``: the study's output directory) and
    put each in ``decisions.md`` where the search left its place; returns the PNGs drawn."""
    out_dir = Path(out_dir)
    data = out_dir / STUDY_PLOTS_FILE
    if not data.exists():
        return []
    drawn = {}
    for plot in json.loads(data.read_text()):
        if plot["stage"] in ("pbt", "pbt_schedule"):
            png = pbt_figures(plot, out_dir / plot["png"])
        else:
            png = stage_figure(plot["stage"], plot["trials"], out_dir / plot["png"])
        if png is not None:
            drawn[plot["png"]] = png
    log = out_dir / "decisions.md"
    if log.exists():
        def image(m: re.Match) -> str:
            return f"![{m['caption']}]({m['png']})" if m["png"] in drawn else ""

        log.write_text(_PLACEHOLDER.sub(image, log.read_text()))
    return list(drawn.values())
