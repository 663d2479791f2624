"""Statistics over seeds, the one module of them: the study compares hyper-parameter values over
seed replicates, the report compares arms over seeds and draws bands. Mean and spread, paired
differences with their t-interval, and the pandas frames the report summarises."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from nnexp.config.errors import ConfigError


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def paired_interval(a: Sequence[float], b: Sequence[float]) -> dict:
    """b - a, paired by position (the same seed): mean, std and the 95% t-interval [lo, hi].

    With one pair the interval is unknown (nan); with identical differences it has zero width.
    """
    from scipy import stats

    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)  # (n,)
    n = len(d)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "lo": math.nan, "hi": math.nan}
    mean, std = mean_std(d)
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
    return {"n": n, "mean": mean, "std": std, "lo": mean - half, "hi": mean + half}


def includes_zero(interval: dict) -> bool:
    """Is no difference consistent with the interval (an unknown interval is)?"""
    lo, hi = interval["lo"], interval["hi"]
    return not (lo > 0 or hi < 0)


# -- over a frame of runs (the report): bands, one number per arm and seed ----------------------
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


def paired_difference(summary: pd.DataFrame, a: str, b: str) -> dict:
    """b - a over the seeds both arms share: mean, std and a 95% t-interval."""
    wide = summary.pivot(index="seed", columns="arm", values="value").dropna(subset=[a, b])
    return {"a": a, "b": b, **paired_interval(wide[a].to_numpy(), wide[b].to_numpy())}
