"""Statistics over seeds: bands, one number per arm and seed, paired differences."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from nnexp.errors import ConfigError

def band(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds with a min-max band, per arm, metric and step."""
    g = frame.groupby(["arm", "metric", "step"], sort=True)["value"]
    out = g.agg(mean="mean", lo="min", hi="max", n="count").reset_index()
    return out


AGGS = {"max": "max", "min": "min", "last": "last", "first": "first"}


def per_seed(frame: pd.DataFrame, metric: str, agg: str) -> pd.DataFrame:
    """One number per arm and seed: the metric's max / min / first / last over the epochs."""
    if agg not in AGGS:
        raise ConfigError(f"unknown summary '{agg}'; choose one of: {', '.join(AGGS)}")
    sub = frame[frame.metric == metric].sort_values("step")
    return sub.groupby(["arm", "seed"])["value"].agg(AGGS[agg]).reset_index()


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def paired_difference(summary: pd.DataFrame, a: str, b: str) -> dict:
    """b - a over the seeds both arms share: mean, std and a 95% t-interval."""
    from scipy import stats

    wide = summary.pivot(index="seed", columns="arm", values="value").dropna(subset=[a, b])
    d = (wide[b] - wide[a]).to_numpy()
    n = len(d)
    mean, std = mean_std(d) if n else (math.nan, math.nan)
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
    return {"a": a, "b": b, "n": n, "mean": mean, "std": std, "lo": mean - half, "hi": mean + half}
