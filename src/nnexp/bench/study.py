"""The ``study`` section: is the broad strategy better than what one would otherwise use?

The broad strategy, TPE with median pruning, TPE with Hyperband pruning, random search,
population-based training (``study=pbt``: its members train on until the budget is spent) and
successive halving with refill (``study=asha``), each with 3 study seeds (1 with --quick); every
other method gets the broad strategy's tuning wall clock (same seed) as its budget. Reported: anytime curves (best validation accuracy found so far
against wall seconds, drawn by ``nnexp.report.figures``) and the final choice's test accuracy
over its seeds.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from nnexp.bench.context import Bench
from nnexp.bench.table import Table, num, row_line

if TYPE_CHECKING:
    from nnexp.search.strategy import Context

#: the study benchmark's methods: nnexp.study overrides of each
STUDY_METHODS = {
    "broad_strategy": ["study=broad_strategy"],
    "tpe_median": ["study=tpe", "study.pruner=median"],
    "tpe_hyperband": ["study=tpe", "study.pruner=hyperband"],
    "random": ["study=random", "study.pruner=none"],
    "pbt": ["study=pbt"],  # under a budget: it trains on (study.epochs large) until the budget is spent
    "asha": ["study=asha"],
}
#: --quick, a smoke test of every method: short stages, fewer eta decades, 2 seed replicates and
#: no seeds added to an unresolved comparison (the broad strategy's tuning time is every other
#: method's budget: 5.6 s here, against 7.6-9.7 s with 6-epoch stages and up to 6 seeds), untracked
#: (MLflow costs every method the same and is timed by the tracking section)
QUICK_BROAD_STRATEGY = ["study.eta.epochs=2", "study.eta.decades=[0.01,0.1,1.0,10.0]", "study.eta.refine=[5.0]",
                        "study.lmbda.epochs=3", "study.eta.refine_epochs=3", "study.max_replicates=2",
                        "study.mini_batch.epochs=1", "study.mini_batch.sizes=[5,10]"]
QUICK_SAMPLER = ["study.epochs=6"]
QUICK_COMMON = ["study.patience=3", "study.replicates=2", "tracking.enabled=false"]
ANYTIME_PNG = "bench_study_anytime.png"  # written in the working directory


def run_one_study(overrides: list[str], workers: int) -> Context:
    """Run the study ``python -m nnexp.study OVERRIDES`` would, in this process; its Context
    (``stage_studies``: each stage's Optuna studies by rung, ``decisions``: each stage's choice).

    The one place the benchmark runs a study (through the search package's Python API)."""
    from nnexp import search  # imported when the section runs: `--help` stays fast

    return search.run(overrides, workers=workers)


def quick_overrides(bench: Bench, method: str) -> list[str]:
    """The study overrides that make ``method`` a smoke test under --quick (none otherwise)."""
    if not bench.quick:
        return []
    if method == "pbt":  # no patience, no final epochs: it replays its schedule for its own epochs
        return QUICK_SAMPLER + [o for o in QUICK_COMMON if not o.startswith("study.patience")]
    return (QUICK_BROAD_STRATEGY if method == "broad_strategy" else QUICK_SAMPLER) + QUICK_COMMON + ["study.final.epochs=6"]


def study_result(method: str, seed: int, store: Path, workers: int, extra: list[str]) -> dict:
    """One study, in this process, on its own storage; what the tables and the anytime plot need.

    Anytime: after every finished trial on the full problem (the configured network, all classes,
    the whole validation set), the best validation accuracy found so far, against the wall
    seconds since its first trial started (start-up, the same for every method, is left out).
    The final stage is not tuning: its start ends the budget.
    ``images``: the training images the tuning trials used.
    """
    from nnexp.search import finished_trials

    overrides = [*STUDY_METHODS[method], f"seed={seed}", f"study.seed={seed}", f"study.study_name={method}-{seed}",
                 f"study.storage=sqlite:///{store / 'optuna.db'}", f"study.output_dir={store / method / str(seed)}",
                 f"tracking.uri=sqlite:///{store / 'mlflow.db'}", *extra]
    start = time.perf_counter()
    ctx = run_one_study(overrides, workers)
    wall = time.perf_counter() - start
    final_trial = finished_trials(ctx.stage_studies["final"][0][1])[0]
    first = min(t.datetime_start for stage, studies in ctx.stage_studies.items() if stage != "final"
                for _, st in studies for t in finished_trials(st))  # (a pbt member: its population's start)
    tuning_s = (final_trial.datetime_start - first).total_seconds()  # from the first tuning trial's start
    points, trials, images, longest, last_ask = [], 0, 0, 0.0, 0.0
    for stage, studies in ctx.stage_studies.items():
        for rung, st in studies:
            if stage == "final":
                continue
            done = finished_trials(st)
            trials += len(done)
            longest = max([longest] + [(t.datetime_complete - t.datetime_start).total_seconds() for t in done])
            images += sum(t.user_attrs.get("images", 0) for t in done)
            last_ask = max([last_ask] + [t.user_attrs.get("budget_spent_s", 0.0) for t in st.get_trials(deepcopy=False)])
            if rung == "full":
                points += [((t.datetime_complete - first).total_seconds(), t.value) for t in done
                           if t.value is not None]
                for t in done:  # a pbt member, told at its end: its scores at each ready point too
                    start = (t.datetime_start - first).total_seconds()
                    points += [(start + s, row[3]) for s, row in zip(t.user_attrs.get("seconds", []),
                                                                    t.user_attrs.get("records", []))
                               if row[3] is not None]
    curve, best = [], 0.0
    for t, v in sorted(points):
        best = max(best, v)
        curve.append((t, best))
    final = ctx.decisions["final"]
    return {"trials": trials, "images": images, "tuning_s": tuning_s, "longest_s": longest, "last_ask_s": last_ask,
            "wall": wall, "curve": curve, "best": best,
            "val": final["validation_accuracy"], "test": final.get("test_accuracy"),
            "test_std": final.get("test_accuracy_std"), "tests": final.get("test_accuracies", []),
            "params": (final["eta"], final["lmbda"], final["mini_batch_size"])}


def best_at(curve: list, seconds: float) -> float | None:
    """The best value found by ``seconds`` on an anytime curve of (seconds, best so far)."""
    seen = [v for t, v in curve if t <= seconds]
    return seen[-1] if seen else None


def method_summary(method: str, rs: list[dict], broad: list[dict]) -> str:
    """One footnote: ``method``'s best validation accuracy at 25/50/100% of the broad strategy's
    tuning time (mean over study seeds) and its final test accuracy."""
    tests = [r["test"] for r in rs if r["test"] is not None]
    at = {f: [best_at(r["curve"], f * r0["tuning_s"]) for r, r0 in zip(rs, broad)] for f in (0.25, 0.5, 1.0)}
    cells = [f"{statistics.mean([v for v in vs if v is not None]):.4f}" if any(v is not None for v in vs) else "-"
             for vs in at.values()]
    final = (f"final test accuracy over study seeds {statistics.mean(tests):.4f} ± {statistics.stdev(tests):.4f}"
             if len(tests) > 1 else f"final test accuracy (one study seed) {tests[0]:.4f}" if tests else "no final")
    return f"  {method:15s} best validation found at 25% / 50% / 100% of the budget: {' / '.join(cells)}; {final}"


def study_row(method: str, seed: int, r: dict) -> tuple[str, ...]:
    """A result of :func:`study_result` as the table's cells."""
    eta, lmbda, mb = r["params"]
    last_ask = f"{r['last_ask_s']:.1f}" if r["last_ask_s"] else "-"  # a budgeted stage's: the budget spent at its last ask
    return (method, str(seed), f"{r['tuning_s']:.1f}", str(r["trials"]), f"{r['longest_s']:.1f}", last_ask,
            num(r["best"], ".4f"),
            f"{eta:.3g}/{lmbda:.3g}/{mb}", f"{r['val']:.4f}",
            f"{num(r['test'], '.4f')} ± {num(r['test_std'], '.4f')}")


def study_section(bench: Bench) -> Table:
    """Is the broad strategy better than what one would otherwise use? Every method, each given
    the broad strategy's tuning seconds (same study seed); anytime curves and final accuracies."""
    from nnexp.report import figures  # imported when the section runs: `--help` stays fast

    seeds = (bench.study_seeds[0],) if bench.quick else tuple(bench.study_seeds)
    methods = [m for m in STUDY_METHODS if bench.methods is None or m in bench.methods]
    rows, results = [], {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            budget = None  # the broad strategy's tuning time for this seed: the samplers' budget
            for method in methods:
                bench.progress(f"  {method}, study seed {seed}: running"
                               + (f" (budget {budget:.0f} s)" if budget is not None else "") + " ...")
                limit = [] if budget is None else [f"study.budget_seconds={budget:.1f}", "study.n_trials=1000"]
                if budget is not None and method == "pbt":  # it trains on until the budget is spent
                    limit = [limit[0], "study.epochs=100000"]
                extra = bench.data_overrides() + quick_overrides(bench, method) + limit
                r = study_result(method, seed, Path(tmp), bench.workers, extra)
                results[method].append(r)
                budget = r["tuning_s"] if method == "broad_strategy" else budget
                rows.append(study_row(method, seed, r))
                bench.progress(row_line(rows[-1]))
    broad = results.get("broad_strategy") or []
    budget = statistics.mean(r["tuning_s"] for r in broad) if broad else None
    summary = [method_summary(method, rs, broad or rs) for method, rs in results.items()]
    png = Path(ANYTIME_PNG).resolve()
    curves = {m: [r["curve"] for r in rs] for m, rs in results.items()}
    png.with_suffix(".json").write_text(json.dumps({"seeds": list(seeds), "curves": curves}))  # to draw again
    figures.anytime_figure(curves, png,
                           title=f"Studies on {bench.dataset}: best validation accuracy found so far "
                                 f"(full problem), {len(seeds)} study seed(s)")
    return Table(f"Studies on {bench.dataset}: broad strategy vs TPE (median, Hyperband pruning), random "
                 f"search, population-based training and successive halving with refill at equal wall clock ({bench.workers} worker(s); "
                 + (f"budget: the broad strategy's tuning time, mean {budget:.0f} s)" if budget is not None
                    else "no broad strategy run: each method's own default budget)"),
                 ("study", "seed", "tuning s", "trials", "longest trial s", "last ask s", "best val found", "eta/lambda/mb",
                  "final val acc",
                  "final test acc (mean ± std over its seeds)"), rows,
                 ["last ask s: the budget a sampler had spent when it asked its last trial (none is asked "
                  "once the budget is spent; a trial running then finishes)",
                  "best val found: the best validation accuracy of a full-problem trial (the broad strategy's: "
                  "a mean over its seed replicates; the samplers': one seed, so a max over noisier values)",
                  "final: the chosen settings on the full problem with halve_on_plateau + early stopping, "
                  "seed replicates as one population; test accuracy measured once", *summary,
                  f"anytime plot: {png} (its curves: {png.with_suffix('.json').name})"])
