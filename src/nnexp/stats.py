"""Statistics over seeds, shared by the report (arms compared over seeds) and the study
(hyper-parameter values compared over replicates): mean and spread, paired differences."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


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
