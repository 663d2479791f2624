"""The ``calibration`` section: how often each kind of broad-strategy decision claims a difference
that is not there (the null false-decision rate) and finds a true one of 0.3 pp (power),
simulated with the study's own decision code -- ``search.weighing.walk``, ``Grid.decide`` and
``stats.decide`` for the grid stages, ``search.strategy.cost_decreasing`` for the eta threshold --
at the noise measured on MNIST replicates (``NOISE``).

A simulated stage draws each value's score per seed as mean + seed effect + noise, rounded to
the stage's resolution (one validation example) and capped at 100%; the seed effect is shared
by every value (the seeds' common data order and initialisation), the noise is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnexp.bench.table import Table, row_line
from nnexp.search.strategy import cost_decreasing
from nnexp.search.weighing import Grid, walk
from nnexp.stats.decide import ALPHA, Resolution

EFFECT = 0.003  # the true difference the power is measured at: 0.3 pp


@dataclass(frozen=True)
class StageKind:
    """A kind of grid stage as the MNIST study runs it: its values, its walk, its scores' noise."""

    name: str
    start: float  # the default the stage starts from
    step: float  # the factor between values (the walk's step)
    max_steps: int  # the walk's steps beyond an edge
    validation: int  # validation examples a score is measured on (its resolution)
    mean: float  # the scores' level (MNIST)
    noise: float  # the per-run std of a score not shared with the other values (MNIST), accuracy units
    seed_noise: float  # the std of the seed effect shared by every value (MNIST)
    sizes: tuple[float, ...] = ()  # a fixed grid (the mini-batch sizes) instead of a walk
    settle_ties: bool = True  # False: a lower rung of the ladder (an unresolved tie escalates)


#: Measured on MNIST [784,30,10] with ``measured_noise``, from the replicates of the default
#: ``python -m nnexp.study`` (study seed 0, 2026-12-06, this machine): ``noise``, the std of the
#: paired differences between two values over seeds divided by sqrt(2), pooled over the stage's
#: pairs; ``seed_noise``, the std over seeds of the values' mean score. A lambda rung: all_classes
#: (no hidden layer, 1,000 validation images, 10 epochs): 0.25 pp / 0.31 pp. A walk: the full
#: network's lambda walk (0.126 pp), lambda refinement (0.065 pp) and eta refinement (0.077 pp),
#: pooled: 0.094 pp / 0.08 pp. The mini-batch stage's area under the accuracy-time curve:
#: 1.18 pp / 1.18 pp (the curve's first tenths of a second, where timing varies most).
NOISE = {
    "lambda rung": StageKind("lambda rung", 1.0, 10.0, 3, 1000, 0.919, 0.0025, 0.0031, settle_ties=False),
    "walk": StageKind("walk", 0.25, 2.0, 2, 10_000, 0.963, 0.00094, 0.0008),
    "mini-batch": StageKind("mini-batch", 10.0, 1.0, 0, 10_000, 0.746, 0.0118, 0.0118,
                            sizes=(1.0, 10.0, 20.0, 50.0, 100.0)),
}
#: The eta threshold on MNIST's stripped problem (3 epochs, 32 evaluations of the training cost),
#: measured in the same study: below the threshold (eta 0.2) the cost falls from about 0.055 to
#: 0.008 with rises adding up to 5-21% of the net fall; at the threshold (eta 0.5) from 0.028 to
#: 0.005 with rises of 100-113%. The noise per evaluation is the one at which the simulated
#: curves show the same ratio of rises to net fall.
ETA_CURVES = {"below": {"start": 0.055, "end": 0.008, "noise": 0.0009},
              "at": {"start": 0.028, "end": 0.005, "noise": 0.0018}}
ETA_POINTS = 32


def measured_noise(scores: dict[float, list[float]]) -> dict:
    """The noise of a grid stage's scores (value -> score per seed, paired by position): ``noise``,
    the std of the paired differences between two values divided by sqrt(2), pooled over pairs;
    ``seed_noise``, the std over seeds of the values' mean score; ``mean``. How NOISE was measured."""
    values = sorted(scores)
    diffs = []
    for i, u in enumerate(values):
        for v in values[i + 1:]:
            n = min(len(scores[u]), len(scores[v]))
            if n >= 2:
                d = np.subtract(scores[v][:n], scores[u][:n])  # (n,)
                diffs.append((n - 1, d.var(ddof=1)))
    pooled = sum(df * var for df, var in diffs) / max(1, sum(df for df, _ in diffs))
    n = min(len(x) for x in scores.values())
    per_seed = np.mean([scores[v][:n] for v in values], axis=0)  # (n,)
    return {"noise": float(np.sqrt(pooled / 2)), "seed_noise": float(per_seed.std(ddof=1)) if n > 1 else 0.0,
            "mean": float(np.mean([np.mean(x) for x in scores.values()]))}


class SimulatedGrid(Grid):
    """A grid stage whose values are drawn, not trained: ``means`` gives each value's true mean."""

    def __init__(self, kind: StageKind, means, rng: np.random.Generator, first: int = 3, cap: int = 6):
        super().__init__(kind.name, Resolution(1.0 / kind.validation), first, cap)
        self.kind, self.means, self.rng = kind, means, rng
        self.seed_effect = rng.normal(0.0, kind.seed_noise, cap)  # (cap,) shared by every value
        self.draws: dict[float, np.ndarray] = {}

    def _draw(self, v: float) -> None:
        k = self.kind
        x = self.means(v) + self.seed_effect + self.rng.normal(0.0, k.noise, self.cap)  # (cap,)
        self.draws[v] = np.minimum(np.round(x * k.validation) / k.validation, 1.0)

    def train(self, values) -> None:
        for v in values:
            if v not in self.values:
                self.values.append(v)
                self._draw(v)

    def extend(self, values) -> None:
        self.extended += [v for v in values if v not in self.extended]

    def scores(self) -> dict[float, list[float]]:
        return {v: list(self.draws[v][:self.cap if v in self.extended else self.first]) for v in self.values}


def simulate_stage(kind: StageKind, effect: float, rng: np.random.Generator, first: int = 3, cap: int = 6) -> dict:
    """One simulated stage under a true difference ``effect`` (0: none) for one value (the start x
    step, or the size after the base one): whether it claimed a difference (``false``: with no
    true difference, a tie was not declared or the default was replaced) and whether it chose
    the better value (``found``)."""
    better = kind.sizes[2] if kind.sizes else kind.start * kind.step

    def means(v: float) -> float:
        return kind.mean + (effect if np.isclose(v, better) else 0.0)

    grid = SimulatedGrid(kind, means, rng, first, cap)
    if kind.sizes:
        grid.train(list(kind.sizes))
        w = grid.decide(kind.start, kind.settle_ties)
    else:
        w, _ = walk(grid, kind.name, kind.start, kind.step, kind.max_steps, kind.settle_ties)
    claimed = (not w["tie"]) or w["chosen"] != kind.start
    return {"false": claimed, "found": bool(np.isclose(w["chosen"], better)),
            "seeds": sum(len(x) for x in grid.scores().values())}


def simulate_eta_threshold(rng: np.random.Generator, case: str, replicates: int = 3) -> bool:
    """One simulated eta (``case`` "below" or "at" the threshold, ``ETA_CURVES``): True when the
    study's rule says the cost stops decreasing (``cost_decreasing`` false for any seed)."""
    c = ETA_CURVES[case]
    k = np.arange(ETA_POINTS)  # (points,)
    trend = c["end"] + (c["start"] - c["end"]) * np.exp(-k / 6.0)  # (points,)
    curves = trend + rng.normal(0.0, c["noise"], (replicates, ETA_POINTS))  # (replicates, points)
    return not all(cost_decreasing(list(row)) for row in curves)


def rates(kind: str, n: int, seed: int = 0, first: int = 3, cap: int = 6) -> dict:
    """The null false-decision rate and the power at 0.3 pp of a stage kind over ``n`` simulated
    stages each (``kind``: a key of NOISE, or "eta threshold"), and the mean seeds per stage."""
    rng = np.random.default_rng(seed)
    if kind == "eta threshold":
        null = np.mean([simulate_eta_threshold(rng, "below") for _ in range(n)])
        power = np.mean([simulate_eta_threshold(rng, "at") for _ in range(n)])
        return {"null": float(null), "power": float(power), "seeds": 3.0}
    k = NOISE[kind]
    nulls = [simulate_stage(k, 0.0, rng, first, cap) for _ in range(n)]
    alts = [simulate_stage(k, EFFECT, rng, first, cap) for _ in range(n)]
    return {"null": float(np.mean([r["false"] for r in nulls])), "power": float(np.mean([r["found"] for r in alts])),
            "seeds": float(np.mean([r["seeds"] for r in nulls + alts]))}


def calibration_section(bench) -> Table:
    """Each stage kind's null false-decision rate and power at 0.3 pp, simulated (quick: fewer
    stages)."""
    n = 400 if bench.quick else 4000
    rows = []
    for kind in [*NOISE, "eta threshold"]:
        r = rates(kind, n)
        se = np.sqrt(ALPHA * (1 - ALPHA) / n)
        row = (kind, f"{100 * r['null']:.1f}%", f"{100 * r['power']:.1f}%", f"{r['seeds']:.1f}",
               f"{100 * (ALPHA + 2 * se):.1f}%")
        rows.append(row)
        bench.progress(row_line((kind, f"null false-decision rate {row[1]}", f"power {row[2]}")))
    return Table(f"Calibration of the broad strategy's decisions ({n} simulated stages per kind and case)",
                 ("stage kind", "null false-decision rate", "power at 0.3 pp", "seeds per stage", "null bound"),
                 rows, [f"targets: null <= {100 * ALPHA:.0f}% for every kind (within 2 standard errors of the "
                        "simulation: 'null bound'); power >= 80% at a true difference of 0.3 pp",
                        "noise per kind: measured on MNIST replicates (nnexp.bench.calibration.NOISE says how); "
                        "a lambda rung's scores resolve one validation example of 1,000 (0.1 pp)"])
