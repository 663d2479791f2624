"""What a study leaves behind and reads back: decisions stored with each stage (this is what
resumes), the chosen configuration as a preset, the decision log with its plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

from nnexp import tracking
from nnexp.config.names import COMPLETED, STUDY_PLOTS_FILE, TAG_STATUS
from nnexp.search.backend import finished_trials, make_storage
from nnexp.search.trials import fixed_params
from nnexp.config.study_schema import STAGES
from nnexp.search.strategy import Context
from nnexp.search.weighing import RULE

log = logging.getLogger("nnexp.study")


def load_decisions(ctx: Context) -> None:
    """Decisions of finished stages, read back from the storage (this is what resumes), with the
    studies of every problem each stage ran on."""
    import optuna

    storage = make_storage(ctx.storage_url, opened=True)
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    for stage in STAGES[ctx.settings.kind]:
        name = f"{ctx.name}/{stage}"
        if name not in existing:
            continue
        study = optuna.load_study(study_name=name, storage=storage)
        decision = study.user_attrs.get("decision")
        if decision is None:
            continue
        ctx.decisions[stage] = decision
        ctx.stage_studies[stage] = [(rung, optuna.load_study(study_name=n, storage=storage))
                                    for rung, n in decision.get("studies", [["", name]]) if n in existing]


def meta_study(ctx: Context):
    import optuna

    return optuna.create_study(study_name=f"{ctx.name}", storage=make_storage(ctx.storage_url, opened=True),
                               direction="maximize", load_if_exists=True)


def override_file(ctx: Context, out_dir: Path) -> Path:
    """The final configuration as a preset: python -m nnexp.run --config-dir OUT +experiment=NAME."""
    final = ctx.decisions["final"]
    c = final["config"]
    groups = {g: c[g]["name"] for g in ("dataset", "cost", "regularization", "init", "schedule", "early_stopping")}
    body = {k: v for k, v in c.items() if k != "tracking"}
    path = out_dir / "experiment" / f"{slug(ctx.name)}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = [
        "# @package _global_",
        f"# Chosen by the study '{ctx.name}' ({ctx.settings.kind}); storage {tracking.redact(ctx.storage_url)}.",
        f"# Final stage ({len(final.get('test_accuracies', [0]))} seed(s)): best validation accuracy "
        f"{final['validation_accuracy']:.4f}, test accuracy {final.get('test_accuracy') or float('nan'):.4f} "
        f"± {final.get('test_accuracy_std') or 0.0:.4f} (mean ± std, measured once).",
        f"# Reproduce: python -m nnexp.run --config-dir {out_dir} +experiment={slug(ctx.name)}",
    ]
    defaults = {"defaults": [{f"override /{g}": opt} for g, opt in groups.items()]}
    path.write_text("\n".join(header) + "\n" + OmegaConf.to_yaml(OmegaConf.create({**defaults, **body})))
    return path


def slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def decision_log(ctx: Context, out_dir: Path, command: str) -> Path:
    """Markdown: the question, the hyper-parameters' roles, each stage's trials and decision,
    the plots that justify them, and the command that reproduces the result."""
    s = ctx.settings
    plots: list[dict] = []
    lines = [f"# Study `{ctx.name}` ({s.kind})", "", f"**Question.** {s.question}", "",
             f"- scientific hyper-parameters: {', '.join(s.scientific)}",
             f"- nuisance: the seed; {_seeds_line(ctx)}",
             f"- fixed: sizes {ctx.base.sizes}, cost {ctx.base.cost.name}, init {ctx.base.init.name}, "
             f"dataset {ctx.base.dataset.name} ({ctx.n_full} training images)",
             f"- storage: `{tracking.redact(ctx.storage_url)}`; MLflow parent run: `{ctx.parent.run_id if ctx.parent else None}`",
             f"- command: `{command}`", ""]
    if s.kind == "broad_strategy":
        rule = RULE.format(alpha=0.05, first=s.replicates, cap=max(s.max_replicates, s.replicates))
        lines += [f"**How a grid stage decides.** Each value trains {s.replicates} seed(s) as one population, scored "
                  f"seed by seed and compared over the same seeds: {rule}.", ""]
    if s.kind == "pbt":
        p = s.pbt
        lines += [f"**How population-based training decides.** Each population of {p.members} members trains as "
                  f"one batched population; at every ready point the members are ranked on validation accuracy and "
                  f"each of the bottom {int(p.members * p.exploit_fraction)} becomes a copy of a member drawn from "
                  f"the top {int(p.members * p.exploit_fraction)} (weights, velocities, data order) when that one "
                  f"scores higher, with the donor's eta and lambda each times one of {list(p.perturb)}, or drawn "
                  f"afresh with probability {p.resample_probability}. The member with the best last validation "
                  "accuracy gives the schedule: eta and lambda along its network's lineage.", ""]
    for stage in STAGES[s.kind]:
        decision = ctx.decisions.get(stage)
        studies = ctx.stage_studies.get(stage)
        if decision is None or not studies:
            continue
        lines += [f"## {stage}", "", f"**Question.** {decision.get('question', '')}", ""]
        lines += [f"**Problem.** {' → '.join(rung for rung, _ in studies if not rung.endswith('+seeds'))}", ""]
        lines += _evidence_lines(decision)
        lines += [f"**Decision.** {decision.get('summary', '')}", ""]
        lines += [f"- note: {n}" for n in decision.get("notes", [])]
        lines += [f"- diverged or failed runs: {100 * decision.get('diverged_share', 0.0):.0f}%", ""]
        for rung, study in studies:
            trials = finished_trials(study)
            lines += [f"Trials on {rung} (Optuna study `{study.study_name}`):", "",
                      "| trial | params | status | validation accuracy (per seed) | mean | images |",
                      "|---|---|---|---|---|---|"]
            for t in sorted(trials, key=lambda t: t.number):
                params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in t.params.items())
                per_seed = ", ".join(f"{v:.4f}" for v in t.user_attrs.get("replicate_values", []))
                val = "" if t.value is None else f"{t.value:.4f}"
                lines.append(f"| {t.number} | {params} | {t.user_attrs.get(TAG_STATUS, t.state.name.lower())} "
                             f"| {per_seed} | {val} | {t.user_attrs.get('images', '')} |")
            png = f"{stage}{'' if rung == studies[0][0] else '@' + rung}.png"
            plots.append({"png": png, "stage": stage, "rung": rung, "trials": [plot_data(t) for t in trials]})
            lines += ["", plot_placeholder(png, f"{stage} on {rung}"), ""]
            if stage == "pbt":  # the lineage (above) and the schedule it gives
                plots[-1].update(population=decision["population"], images_per_epoch=ctx.n_full)
                plots.append({**plots[-1], "png": "pbt_schedule.png", "stage": "pbt_schedule",
                              "schedule": decision["schedule"]})
                lines += _schedule_lines(decision, ctx.n_full) + [plot_placeholder("pbt_schedule.png", "the schedule"), ""]
    path = out_dir / "decisions.md"
    path.write_text("\n".join(lines))
    (out_dir / STUDY_PLOTS_FILE).write_text(json.dumps(plots, default=str))
    return path


def _seeds_line(ctx: Context) -> str:
    s, first = ctx.settings, ctx.base.seed
    final = ctx.decisions.get("final", {}).get("seeds") or []
    if s.kind == "pbt":
        d = ctx.decisions.get("pbt", {})
        n = int(d.get("populations", 1)) * int(d.get("members", s.pbt.members))
        return (f"the members train seeds {first} to {first + n - 1}; the final stage replays the schedule on "
                f"seeds {', '.join(str(v) for v in final)}")
    if s.kind == "broad_strategy":
        return f"every grid trial and the final stage train seeds {first} to {first + s.replicates - 1}"
    return f"every trial trains seed {first}; the final stage trains seeds {', '.join(str(v) for v in final)}"


def plot_placeholder(png: str, caption: str) -> str:
    """Where a plot goes in decisions.md; the report replaces it with the image once drawn."""
    return f"<!-- plot {png} | {caption} -->"


def plot_data(t) -> dict:
    """What a stage's plot needs of one finished trial, as plain JSON."""
    out = {"number": t.number, "params": fixed_params(t), "value": t.value,
           "replicate_values": t.user_attrs.get("replicate_values"), "curve": t.user_attrs.get("curve", [])}
    if "records" in t.user_attrs:  # a population-based training member: its lineage
        out.update({k: t.user_attrs[k] for k in ("population", "member", "records")})
    return out


def _schedule_lines(d: dict, n: int) -> list[str]:
    """The schedule population-based training found, as a table (from which epoch on: eta, lambda)."""
    rows = [f"**Schedule** of population {d['population']} member {d['member']} (its network's lineage from "
            f"member {d['root']}, seed {d['root_seed']}):", "", "| from image | from epoch | eta | lambda |",
            "|---|---|---|---|"]
    rows += [f"| {p[0]} | {p[0] / n:.3g} | {p[1]:.4g} | {p[2]:.4g} |" for p in d["schedule"]]
    return rows + [""]


def _evidence_lines(d: dict) -> list[str]:
    """A grid stage's evidence: each value's mean ± std over seeds, the chosen value's paired
    difference against the runner-up and against the default, and the rule applied."""
    if "means" not in d:
        if d.get("decreasing"):
            return ["**Evidence.** training cost decreasing over the first epochs, for every seed? "
                    + ", ".join(f"eta {k}: {'yes' if v else 'no'}" for k, v in d["decreasing"].items()), ""]
        return []
    seeds = d.get("seeds") or {}
    rows = ["**Evidence.** " + d.get("evidence", ""), "", "| value | mean | std over seeds | seeds |", "|---|---|---|---|"]
    rows += [f"| {k} | {v:.4f} | {d['stds'][k]:.4f} | {seeds.get(k, '')} |" for k, v in d["means"].items()]
    rows.append("")
    if "alpha" in d:
        rows.append(f"- decided at look {d.get('look', 1)} with up to {max(seeds.values(), default=0)} seeds per "
                    f"value, each test at {100 * d['alpha']:.3g}% (Holm), resolution floor "
                    f"{100 * d['floor']:.2g} pp")
    for key, label in (("vs_runner_up", f"best {d['best']:.4g} vs runner-up {d.get('runner_up') or 0:.4g}"),
                       ("vs_default", (f"chosen {d['chosen']:.4g}" if d.get("chosen") not in (None, d["default"])
                                       else f"best {d['best']:.4g}") + f" vs default {d['default']:.4g}"),
                       ("vs_start", f"chosen {d.get('chosen') or 0:.4g} vs the stage's start {d.get('start') or 0:.4g}")):
        iv = d.get(key)
        if iv:
            rows.append(f"- {label}: {100 * iv['mean']:+.2f} pp, 95% interval [{100 * iv['lo']:+.2f}, "
                        f"{100 * iv['hi']:+.2f}] over {iv['n']} seeds")
    rows += [f"- rule: {d.get('why', '')}", ""]
    return rows


def write_outputs(ctx: Context, command: str, draw: Callable[[Path], Any] | None = None) -> None:
    """The preset, the decision log (with the data of its plots) and decisions.json in the study's
    output directory, the plots drawn by ``draw`` (the report's); the final result on the parent
    run, with all of them as artifacts. ``command``: what reproduces the study."""
    out_dir = Path(ctx.settings.output_dir or Path("studies") / slug(ctx.name)).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx.output_dir = out_dir
    preset = override_file(ctx, out_dir)
    log_path = decision_log(ctx, out_dir, command)
    (out_dir / "decisions.json").write_text(json.dumps(ctx.decisions, indent=2, default=str))
    if draw is not None:
        draw(out_dir)
    if ctx.parent:
        final = ctx.decisions["final"]
        ctx.parent.log(metrics={"best_validation_accuracy": final["validation_accuracy"],
                                "test_accuracy": final.get("test_accuracy")},
                       tags={TAG_STATUS: COMPLETED}, artifacts_from=out_dir)
        ctx.parent.end("FINISHED")
    final = ctx.decisions["final"]
    ctx.outputs = {"preset": str(preset), "log": str(log_path)}
    ctx.decisions["_outputs"] = ctx.outputs
    log.info("study %s: eta %.4g, lambda %.4g, mini-batch %d; validation accuracy %.4f, test accuracy %.4f "
             "± %.4f over %d seed(s) | "
             "reproduce: python -m nnexp.run --config-dir %s +experiment=%s | decisions: %s",
             ctx.name, final["eta"], final["lmbda"], final["mini_batch_size"], final["validation_accuracy"],
             final.get("test_accuracy") or float("nan"), final.get("test_accuracy_std") or 0.0,
             len(final.get("test_accuracies", [0])), out_dir, slug(ctx.name), log_path)
