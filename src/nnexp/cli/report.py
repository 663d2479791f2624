"""``python -m nnexp.report``: the book's figures regenerated from tracked runs.

Figures are declared in ``sweeps/figures.yaml``. Each arm x seed is one configuration; its
MLflow run is found by the tag ``nnexp.config_hash``. Missing runs are launched first (on both
cores) through nnexp.runner, or listed with ``--no-run``. Plotting reads only the MLflow
store (through pandas frames); it never trains."""

from __future__ import annotations

import argparse
from dataclasses import asdict
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from nnexp import tracking
from nnexp.config.errors import NnexpError
from nnexp.report.launch import launch
from nnexp.report.page import Section, build_figure, write_page
from nnexp.report.figure_plan import load_figures, plan_jobs
from nnexp.report.runs import find_runs

log = logging.getLogger("nnexp.report")

def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 100,1000, got '{text}'") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive whole numbers, got '{text}'")
    return sizes


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
    p.add_argument("--sizes", type=_sizes, default=None, metavar="N,N,...",
                   help="training-set sizes of the more_data figure (default in figures.yaml), e.g. 100,1000")
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
    jobs = plan_jobs(figures, names, args.seeds, args.override, args.svm_max_size, args.sizes)
    found = find_runs(uri, args.experiment)
    # a configuration two figures share (overfitting's lambda = 0 arm is regularized's too) runs once
    missing = list({j.key: j for j in jobs if j.key not in found}.values())
    if missing and args.no_run:
        print(f"{len(missing)} of {len(jobs)} runs are missing (--no-run):")
        for j in missing:
            print(f"  {j.figure}: {j.arm}, seed {j.seed}: {j.command}")
    elif missing:
        if any(j.kind != "neuron" for j in missing):  # fail fast, once, if the data is not there
            from nnexp.runner import load_splits

            load_splits(next(j.job.config for j in missing if j.kind != "neuron"))
        print(f"launching {len(missing)} missing runs ({len({j.key for j in jobs})} distinct in {len(jobs)} asked) "
              f"on {args.workers} processes")
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
