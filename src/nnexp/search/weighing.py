"""How a grid stage weighs its values: each value's score per seed (the same training budget for
every value, or the area under the accuracy-time curve for the mini-batch size), then the
decision at the stage's false-decision rate (``nnexp.stats.decide``), in words for the log."""

from __future__ import annotations

import logging
import math
from typing import Sequence

from nnexp.config.names import DIVERGED, FAILED
from nnexp.stats import mean_std
from nnexp.stats.decide import ALPHA, Resolution, compare, paired_test

log = logging.getLogger("nnexp.study")

#: how a grid stage decides (the decision log's paragraph; nnexp.stats.decide says why)
RULE = ("two questions, each held at a {alpha:.0%} false-decision rate whatever the number of values: do the "
        "values differ at all (paired two-sided tests over every pair, Holm-corrected; if not, the stage is a "
        "tie and escalates to a larger problem), and does a value beat the default, the book's start or the "
        "previous stage's choice (one-sided paired tests against it, Holm-corrected)? The default stays "
        "unless both say yes; then the best of the values shown better is taken. A difference within one "
        "validation example (or study.min_effect) is a tie, a zero-width interval is never evidence, and "
        "values at 100% on every seed tie among themselves (saturated: the stage escalates). When a "
        "comparison is unresolved after {first} seeds, its values train up to {cap} seeds and the tests are "
        "made once more; each of the two looks spends half the error rate")


def weigh(scores: dict[float, list[float]], default: float, res: Resolution, looks: int = 1) -> dict:
    """Decide a grid stage from its scores (value -> score per seed, paired by position) at one
    look of ``looks``: ``tie`` (escalate; the default stays), ``chosen``, ``why``, the evidence
    (means, stds, paired intervals) and ``unresolved`` (the values more seeds would settle)."""
    alpha = ALPHA / looks
    c = compare(scores, default, res, alpha)
    means = {v: mean_std(x)[0] for v, x in scores.items()}
    ranked = sorted(means, key=lambda v: (-means[v], v != default))
    best = ranked[0]
    out = {"means": {f"{v:.6g}": means[v] for v in sorted(means)},
           "stds": {f"{v:.6g}": mean_std(scores[v])[1] for v in sorted(means)},
           "seeds": {f"{v:.6g}": len(scores[v]) for v in sorted(means)},
           "best": best, "default": default, "alpha": alpha, "floor": res.floor,
           "unresolved_default": c["unresolved_default"], "unresolved_tie": c["unresolved_tie"]}
    if len(ranked) > 1:
        out["runner_up"] = ranked[1]
        out["vs_runner_up"] = _interval(c, ranked[1], best)
    out["tie"] = bool(c["saturated"] or not c["differ"])
    # what more seeds would settle: whether the values differ (a tie) or, if they do, whether the
    # best challenger beats the default (a replacement needs both)
    out["unresolved"] = c["unresolved_tie"] if out["tie"] else c["unresolved_default"]
    far = None
    if len(ranked) > 1:  # the farthest pair: the best against the worst mean
        far = _interval(c, ranked[-1], best)
    out["tie_reason"] = (f"{', '.join(fmt(v) for v in c['at_ceiling'])} scored 100% on every seed: saturated"
                         if c["saturated"] else
                         f"no pair of values is shown apart by more than {pp_floor(res)} (the farthest pair: "
                         f"{pp(far)})" if out["tie"] and far else "")
    chosen, why = best, f"{fmt(best)} has the best mean"
    if default in scores and best != default:
        vs = out["vs_default"] = _interval(c, default, best)
        winners = [v for v in ranked if v in c["beats_default"]]
        if out["tie"]:
            chosen, why = default, f"the values tie ({out['tie_reason']}): the default {fmt(default)} stays"
        elif not winners:
            chosen, why = default, (f"the default {fmt(default)} is kept: {fmt(best)} beats it by {pp(vs)}, "
                                    f"not shown above {pp_floor(res)} at this look's {100 * alpha:.3g}% level")
        else:
            chosen = winners[0]
            vs = out["vs_default"] = _interval(c, default, chosen)
            why = f"{fmt(chosen)} beats the default {fmt(default)} by {pp(vs)}"
    out["chosen"], out["why"] = chosen, why
    return out


def _interval(c: dict, a: float, b: float) -> dict:
    """b - a from the comparison's tests (either orientation)."""
    t = c["pairs"].get((a, b))
    if t is None:
        t = dict(c["pairs"][(b, a)])
        t["mean"], t["lo"], t["hi"] = -t["mean"], -t["hi"], -t["lo"]
    return t


def fmt(v: float) -> str:
    return f"{v:.4g}"


def pp(interval: dict) -> str:
    """A paired difference in accuracy as percentage points with its 95% interval."""
    return (f"{100 * interval['mean']:+.2f} pp (95% interval {100 * interval['lo']:+.2f} to "
            f"{100 * interval['hi']:+.2f}, {interval['n']} seeds)")


def pp_floor(res: Resolution) -> str:
    return f"{100 * res.floor:.2g} pp"


# -- scores per seed ---------------------------------------------------------------------------
def usable(status: str | None) -> bool:
    return status not in (DIVERGED, FAILED)


def budget_images(runs: Sequence[tuple[list, str | None]]) -> int:
    """The training budget every value of a stage is scored within: the fewest images any of its
    (not diverged) runs trained. Each run is (curve, status); a curve's rows are
    [images, training seconds, training cost, validation accuracy]."""
    ends = [c[-1][0] for c, status in runs if c and usable(status)]
    return min(ends) if ends else 0


def best_within(curve: list, images: int) -> float:
    """The best validation accuracy among the evaluations made within ``images`` training images:
    the same number of draws of the noisy validation score for every value."""
    seen = [row[3] for row in curve if row[0] <= images and row[3] is not None]
    return max(seen) if seen else 0.0


def one_epoch_seconds(curves: Sequence[list], n_images: int) -> float:
    """The median training time the runs took to see ``n_images`` images (one epoch)."""
    times = sorted(next((row[1] for row in c if row[0] >= n_images), c[-1][1]) for c in curves if c)
    if not times:
        return math.nan
    mid = len(times) // 2
    return times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2


def area_under_curve(curve: list, horizon: float) -> float:
    """Mean validation accuracy over the first ``horizon`` seconds of training: the accuracy is
    0 until the first evaluation and then holds each evaluation's value until the next (the last
    one past the run's end). Which size raises accuracy fastest is the one with the largest area."""
    area, t_prev, acc_prev = 0.0, 0.0, 0.0
    for _, t, _, acc in curve:
        if acc is None:
            continue
        t = min(t, horizon)
        area += acc_prev * (t - t_prev)
        t_prev, acc_prev = t, acc
        if t >= horizon:
            break
    area += acc_prev * max(0.0, horizon - t_prev)
    return area / horizon if horizon > 0 else 0.0


# -- the decision flow of a grid stage ---------------------------------------------------------
class Grid:
    """A grid stage's values and their seeds, and how it decides: every value has ``first``
    seeds; where a comparison is unresolved, its contenders get more, up to ``cap`` (once), and
    the stage decides again. Subclasses train (``train``, ``extend``) and score (``scores``:
    value -> score per seed, paired by position): the study through Optuna, the calibration
    benchmark by simulation."""

    def __init__(self, name: str, res: Resolution, first: int, cap: int, label: str = ""):
        self.name, self.res, self.label = name, res, label or name
        self.first, self.cap = int(first), max(int(cap), int(first))
        self.looks = 2 if self.cap > self.first else 1
        self.values: list[float] = []
        self.extended: list[float] = []

    def train(self, values: list[float]) -> None:
        """Train the values not trained yet (and their extra seeds, once the stage has them)."""
        raise NotImplementedError

    def extend(self, values: list[float]) -> None:
        """Train ``values``' extra seeds, up to ``cap`` (the contenders of an unresolved comparison)."""
        raise NotImplementedError

    def scores(self) -> dict[float, list[float]]:
        raise NotImplementedError

    def can_extend(self) -> bool:
        return self.cap > self.first and not self.extended

    def weigh(self, default: float) -> dict:
        w = weigh(self.scores(), default, self.res, looks=self.looks)
        w["look"] = 2 if self.extended else 1
        return w

    def decide(self, default: float, settle_ties: bool = True) -> dict:
        """Weigh; if unresolved and the stage may add seeds, add them to the contenders, weigh
        again. ``settle_ties`` False: an unresolved tie stays a tie (a lower rung of the ladder,
        where a tie escalates to a larger problem rather than buying seeds)."""
        w = self.weigh(default)
        if w["unresolved"] and (settle_ties or not w["tie"]) and self.can_extend():
            log.info("stage %s: unresolved after %d seeds (%s): %s trained up to %d seeds", self.label, self.first,
                     w["tie_reason"] or w["why"], ", ".join(fmt(v) for v in w["unresolved"]), self.cap)
            self.extend([float(v) for v in w["unresolved"]])
            w = self.weigh(default)
        return w


def walk(grid: Grid, stage: str, default: float, step: float, max_steps: int,
         settle_ties: bool = True) -> tuple[dict, list[str]]:
    """A grid walk: default / step, default, default x step; while the best mean lies at an edge
    of the values tried, one more step beyond it (at most ``max_steps``), even when the test does
    not yet let it replace the default: the tuning playbook's rule that a best value at the edge
    of the search space means the space was too narrow. Stops when the values tie (no signal),
    unless the edge value is shown better than its neighbour (``edge_rises``: the values may tie
    as a whole while the accuracy still rises towards the edge, e.g. down from far too large an
    eta). A step decides nothing by itself: the stage's decision is the last weighing's.
    ``settle_ties``: see ``Grid.decide``. Returns the last weighing and the notes."""
    name = grid.name
    grid.train([default / step, default, default * step])
    w, notes, steps = grid.decide(default, settle_ties), [], 0
    while True:
        tried = sorted(grid.values)
        best = w["best"]
        if best not in (tried[0], tried[-1]) or (w["tie"] and not edge_rises(grid, best, tried, w["alpha"])):
            break
        if steps >= max_steps:
            notes.append(f"{name} {fmt(best)} (the best mean) is at the edge of the values tried after {steps} "
                         f"step(s) beyond the first three: widen the search (study settings for {stage})")
            break
        nxt = best * step if best == tried[-1] else best / step
        notes.append(f"{name} {fmt(best)} (the best mean) was at the edge of the values tried: "
                     f"{name} {fmt(nxt)} tried too")
        grid.train([nxt])
        w, steps = grid.decide(w["chosen"], settle_ties), steps + 1  # the incumbent is now the default
    if w["chosen"] != default and w["default"] != default:  # the start was replaced on the way: say by how much
        final = grid.scores()
        w["start"], w["vs_start"] = default, paired_test(final[default], final[w["chosen"]], grid.res)
        w["why"] += f"; it replaced the start {fmt(default)}, which it beats by {pp(w['vs_start'])}"
    return w, notes


def edge_rises(grid: Grid, best: float, tried: list[float], alpha: float) -> bool:
    """Is the best value, at an edge of the values tried, shown better than its neighbour by more
    than the floor (one-sided paired test at the look's level)? Under no true difference a walk
    takes such a step with probability alpha or less."""
    neighbour = tried[1] if best == tried[0] else tried[-2]
    scores = grid.scores()
    return paired_test(scores[neighbour], scores[best], grid.res)["p_greater"] <= alpha
