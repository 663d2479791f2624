"""Statistics over seeds: bands, one number per arm and seed, paired differences."""

from __future__ import annotations

import pandas as pd

from nnexp.errors import ConfigError
from nnexp.stats import paired_interval

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
