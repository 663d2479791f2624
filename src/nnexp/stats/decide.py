"""Decisions over paired seed replicates, each at a stated false-decision rate: the broad
strategy's grid stages decide with these (``nnexp.search.weighing``).

A grid stage trains values v_1..v_m of one hyper-parameter on the same seeds s and compares
them by the paired differences d_s = score(v, s) - score(u, s). Two questions, two families of
tests, each corrected with Holm's step-down procedure:

* **Does a value beat the default** (the book's start, or the previous stage's choice)? One
  one-sided paired t-test per other value, H0: delta <= floor. Holm over these m - 1 tests holds
  the chance of replacing a default that no value beats by more than the floor at alpha or less,
  whatever m.
* **Do the values differ at all?** (A stage that cannot tell them apart is a tie and escalates
  to a larger problem.) One two-sided paired test per pair, H0: |delta| <= floor, Holm over the
  m (m - 1) / 2 pairs: when every value scores the same, "not a tie" is said with probability
  alpha or less.

Why Holm: it is the closed test of the elementary hypotheses with Bonferroni local tests, so it
controls the family-wise error rate strongly under any correlation between the comparisons
(those against the default share the default's scores), needs no equal-variance assumption
(Dunnett's would), and is never less powerful than Bonferroni.

**The resolution floor.** A difference smaller than what the measurement resolves is a tie: the
floor is one validation example (1 / n, the score's step) or a configured minimum effect,
whichever is larger. A paired difference of two scores rounded to steps of 1/n has a standard
deviation of at least step / sqrt(6) (two independent roundings, each step^2 / 12): the standard
deviation used is never below that, so an interval of zero width is never evidence.

**Looks.** When a comparison is unresolved after the first seeds, more seeds are trained and the
tests are made again, once. Each look spends alpha / looks (Bonferroni over the looks), so a
stage's false-decision rate stays at alpha or below however the looks are combined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Hashable, Mapping, Sequence

import numpy as np

#: the false-decision rate every grid-stage rule holds (per question, per stage)
ALPHA = 0.05


@dataclass(frozen=True)
class Resolution:
    """What a score can resolve: ``step`` = 1 / validation examples it is measured on."""

    step: float
    min_effect: float = 0.0

    @property
    def floor(self) -> float:
        return max(self.step, self.min_effect)


def paired_test(a: Sequence[float], b: Sequence[float], res: Resolution) -> dict:
    """b - a over the seeds both have (paired by position): mean, the floored std, n, the 95%
    t-interval [lo, hi], and the p-values of H0: delta <= floor (``p_greater``, one-sided) and
    H0: |delta| <= floor (``p_differ``, two-sided). Fewer than 2 pairs: p-values 1, interval nan."""
    from scipy import stats

    n = min(len(a), len(b))
    d = np.asarray(b[:n], dtype=float) - np.asarray(a[:n], dtype=float)  # (n,)
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "std": math.nan, "lo": math.nan, "hi": math.nan,
                "p_greater": 1.0, "p_differ": 1.0, "floor": res.floor}
    std = max(float(d.std(ddof=1)), res.step / math.sqrt(6))
    se = std / math.sqrt(n)
    half = float(stats.t.ppf(0.975, n - 1)) * se
    p_greater = float(stats.t.sf((mean - res.floor) / se, n - 1))
    p_differ = min(1.0, 2 * float(stats.t.sf((abs(mean) - res.floor) / se, n - 1)))
    return {"n": n, "mean": mean, "std": std, "lo": mean - half, "hi": mean + half,
            "p_greater": p_greater, "p_differ": p_differ, "floor": res.floor}


def holm(p_values: Mapping[Hashable, float], alpha: float) -> set:
    """The hypotheses Holm's step-down procedure rejects at family-wise level ``alpha``: sorted
    by p-value, the i-th smallest (from 0) is rejected while p <= alpha / (m - i)."""
    m, out = len(p_values), set()
    for i, key in enumerate(sorted(p_values, key=lambda k: p_values[k])):
        if p_values[key] > alpha / (m - i):
            break
        out.add(key)
    return out


def compare(scores: Mapping[float, Sequence[float]], default: float, res: Resolution,
            alpha: float = ALPHA, ceiling: float = 1.0) -> dict:
    """Both questions for one look at a grid stage's paired scores (value -> score per seed).

    Returns ``beats_default`` (the values shown better than the default by more than the floor),
    ``differ`` (some pair is shown apart by more than the floor), ``saturated`` (two or more
    values scored the ceiling on every seed: they tie among themselves), ``vs_default`` and
    ``pairs`` (each test), and the values more seeds would settle: ``unresolved_default``, the
    default and its best challenger not yet shown better when their interval straddles the floor,
    and ``unresolved_tie``, the farthest pair when no pair is shown apart and its interval reaches
    beyond the floor.
    """
    values = sorted(scores)
    means = {v: float(np.mean(scores[v])) for v in values}
    at_ceiling = [v for v in values if len(scores[v]) and min(scores[v]) >= ceiling]
    vs_default = {v: paired_test(scores[default], scores[v], res) for v in values if v != default} \
        if default in scores else {}
    pairs = {(u, v): paired_test(scores[u], scores[v], res) for u, v in combinations(values, 2)}
    beats = holm({v: t["p_greater"] for v, t in vs_default.items()}, alpha)
    apart = holm({k: t["p_differ"] for k, t in pairs.items()}, alpha)
    saturated = len(at_ceiling) >= 2
    against_default: set = set()  # the default and its best challenger, not yet shown better
    tie_pair: set = set()  # the farthest pair, not yet shown apart
    if not saturated:
        open_ = [v for v, t in vs_default.items() if t["mean"] > 0 and t["hi"] > res.floor]
        if open_ and not beats:
            against_default = {default, max(open_, key=lambda v: means[v])}
        if pairs and not apart:
            (u, v), t = max(pairs.items(), key=lambda kv: abs(kv[1]["mean"]))
            if max(abs(t["lo"]), abs(t["hi"])) > res.floor:
                tie_pair = {u, v}
    return {"beats_default": beats, "differ": bool(apart) and not saturated, "saturated": saturated,
            "at_ceiling": at_ceiling, "vs_default": vs_default, "pairs": pairs,
            "unresolved_default": sorted(against_default), "unresolved_tie": sorted(tie_pair),
            "alpha": alpha, "floor": res.floor}
