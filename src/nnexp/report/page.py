"""Each figure drawn from its runs, with the book's numbers next to nnexp's, and the page
(HTML and its markdown twin, from the templates ``page.html.j2`` and ``page.md.j2``) that gathers them."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from nnexp.report.figure_plan import FigureRun
from nnexp.train.baselines import LABELS
from nnexp.report.runs import curves_frame, final_value
from nnexp.stats import band, paired_difference, per_seed
from nnexp.stats import mean_std

MLFLOW_UI = "http://127.0.0.1:5000"

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


def _fmt(x: float | None) -> str:
    """An accuracy as a percentage, another number to 4 digits; no number (no book value): a dash."""
    if x is None:
        return "—"
    return f"{x:.2%}" if abs(x) <= 1.5 else f"{x:.4g}"


def _over_seeds(vals: Sequence[float]) -> str:
    """nnexp's number for a table row: mean ± std over the seeds, the value alone for one seed."""
    if not vals:
        return "not run"
    m, sd = mean_std(vals)
    return _fmt(m) if len(vals) == 1 else f"{_fmt(m)} ± {_fmt(sd)}"


def _natural(text: str) -> list:
    """Sort key that orders numbers inside text by value (network@100 < network@1000 < ...)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def build_figure(name: str, fig: dict, jobs: Sequence[FigureRun], found: dict, uri: str, out: Path) -> Section:
    from nnexp.report import figures

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
            table.append((f"{spec['arm']}: {spec['what']}", _fmt(spec.get("book")), _over_seeds(vals), str(len(vals))))
        for spec in fig.get("compare", []):
            d = paired_difference(per_seed(frame, spec["metric"], spec["agg"]), spec["a"], spec["b"])
            spread = (f" ± {d['std']:.4f} over {d['n']} paired seeds, 95% CI [{d['lo']:+.4f}, {d['hi']:+.4f}]"
                      if d["n"] > 1 else " on one seed (no interval)")
            comparisons.append(f"paired: {spec['b']} minus {spec['a']}, {spec['agg']} {spec['metric']}: "
                               f"{d['mean']:+.4f}{spread}")
    elif kind == "more_data":
        metric = fig.get("metric", "validation_accuracy")
        frame = pd.DataFrame([(LABELS.get(arm.split("@")[0], arm.split("@")[0]), int(arm.split("@")[1]), seed,
                               final_value(r, metric)) for (arm, seed), r in runs.items()],
                             columns=["arm", "size", "seed", "value"])
        pts = frame.groupby(["arm", "size"])["value"].agg(mean="mean", lo="min", hi="max", n="count").reset_index()
        drawn = figures.more_data_figure(pts, png, title=fig["title"], ylabel=f"final {metric.replace('_', ' ')}")
        for spec in fig.get("numbers", []):
            arm = LABELS.get(spec["arm"], spec["arm"])
            if spec["size"] not in set(frame["size"]):  # a size this report did not run (--sizes)
                continue
            vals = frame[(frame.arm == arm) & (frame["size"] == spec["size"])]["value"].tolist()
            table.append((spec["what"], _fmt(spec.get("book")), _over_seeds(vals), str(len(vals))))
        comparisons += _smallest_size_finding(pts)
    else:  # baselines
        frame = pd.DataFrame([(arm, seed, final_value(r, "test_accuracy")) for (arm, seed), r in runs.items()],
                             columns=["arm", "seed", "value"])
        vals = frame.groupby("arm", sort=False)["value"].agg(mean="mean", lo="min", hi="max").reset_index()
        drawn = figures.bars_figure(vals, png, title=fig["title"])
        sizes = {j.arm: j.spec.get("train_size") for j in jobs}
        for spec in fig.get("numbers", []):
            v = frame[frame.arm == spec["arm"]]["value"].tolist()
            on = f" (on {sizes[spec['arm']]:,} images)" if sizes.get(spec["arm"]) else ""
            table.append((spec["what"], _fmt(spec.get("book")), _over_seeds(v) + on, str(len(v))))
    commands = sorted({j.command for j in jobs if j.kind == "run"}, key=_natural) or [f"python -m nnexp.report {name}"]
    run_list = [(arm, seed, r.info.run_id, r.info.experiment_id)
                for (arm, seed), r in sorted(runs.items(), key=lambda kv: (_natural(kv[0][0]), kv[0][1]))]
    return Section(name, fig["title"], fig.get("book", ""), png.name, table, comparisons, commands, run_list,
                   drawn.curves)


def _smallest_size_finding(pts: pd.DataFrame) -> list[str]:
    """At the smallest size every arm has: which SVM the network beats (the book's conclusion
    there depends on the SVM's gamma default)."""
    have = pts.groupby("size")["arm"].nunique()
    full = have[have == pts["arm"].nunique()].index
    if len(full) == 0 or pts["arm"].nunique() < 2:
        return []
    at = pts[pts["size"] == full.min()].set_index("arm")["mean"]
    parts = ", ".join(f"{arm} {v:.2%}" for arm, v in at.items())
    return [f"At {int(full.min()):,} training images: {parts}. Whether the network beats the SVM here depends "
            "on the SVM's gamma default (the book's 1/784 or today's 'scale')."]


def write_page(sections: Sequence[Section], out: Path, *, seeds: int, extra: Sequence[str]) -> Path:
    """index.html and its markdown twin, one section per figure, from ``page.html.j2`` (every value
    HTML-escaped) and ``page.md.j2`` (table cells, link texts and commands escaped for markdown)."""
    env = _templates()
    context = {"sections": list(zip(sections, _anchors([s.name for s in sections]))),
               "regen": _regen_command(seeds, extra)}
    (out / "index.md").write_text(env.get_template("page.md.j2").render(context), encoding="utf-8")
    page = out / "index.html"
    page.write_text(env.get_template("page.html.j2").render(context), encoding="utf-8")
    return page


def _templates() -> Environment:
    """The page's templates (next to this module): ``*.html.j2`` autoescaped, ``*.md.j2`` not."""
    env = Environment(loader=PackageLoader("nnexp.report", "."), undefined=StrictUndefined,
                      autoescape=select_autoescape(["html.j2"], ["md.j2"], default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(shquote=shlex.quote, md_inline=_md_inline, md_code=_md_code)
    env.globals.update(run_url=_run_url, mlflow_ui=MLFLOW_UI)
    return env


def _regen_command(seeds: int, extra: Sequence[str]) -> str:
    """The command that rebuilds the whole page, every override shell-quoted."""
    return shlex.join(["python", "-m", "nnexp.report", *(["--seeds", str(seeds)] if seeds != 1 else []),
                       *(word for o in extra for word in ("-o", o))])


def _slug(name: str) -> str:
    """A figure name as an HTML id: lower case; every run of anything but a-z, 0-9, _ and - is one -."""
    return re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-") or "figure"


def _anchors(names: Sequence[str]) -> list[str]:
    """One id per section: its name's slug, with -2, -3, ... where two names slug alike."""
    seen, anchors = set(), []
    for name in names:
        base = anchor = _slug(name)
        k = 1
        while anchor in seen:
            k += 1
            anchor = f"{base}-{k}"
        seen.add(anchor)
        anchors.append(anchor)
    return anchors


def _run_url(experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI; the ids percent-encoded (no / ? # or quote can leave its place)."""
    return f"{MLFLOW_UI}/#/experiments/{quote(str(experiment_id), safe='')}/runs/{quote(str(run_id), safe='')}"


def _md_inline(text: str) -> str:
    """Text for a markdown table cell or link text: on one line, with \\ | [ ] backslash-escaped."""
    return re.sub(r"([\\|\[\]])", r"\\\1", " ".join(str(text).splitlines()))


def _md_code(text: str) -> str:
    """A markdown code span for any one-line text: fenced by one backtick more than its longest run."""
    text = " ".join(str(text).splitlines())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
