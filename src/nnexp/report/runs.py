"""Reading runs back from the MLflow store: the newest finished run of each configuration,
and its metric histories as a pandas frame."""

from __future__ import annotations

import math
from typing import Any, Sequence

import pandas as pd

from nnexp import tracking
from nnexp.config.names import COMPLETED, DIVERGED, EARLY_STOPPED, TAG_CONFIG_HASH, TAG_STATUS

GOOD_STATUSES = (COMPLETED, EARLY_STOPPED, DIVERGED)


def open_client(uri: str):
    if tracking.prepare_store(uri, "nnexp") is None:
        raise tracking.TrackingError(f"the report reads its runs from the tracking store {tracking.redact(uri)}, "
                                     "which does not answer")
    return tracking.client(uri)


def find_runs(uri: str, experiment: str) -> dict[str, Any]:
    """The newest finished run for every config hash in the experiment."""
    client = open_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    found: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                                  max_results=1000, page_token=token, order_by=["attributes.start_time ASC"])
        for run in page:
            key = run.data.tags.get(TAG_CONFIG_HASH)
            if key and run.data.tags.get(TAG_STATUS) in GOOD_STATUSES:
                found[key] = run
        token = page.token
        if not token:
            return found


def curves_frame(uri: str, runs: dict[tuple[str, int], Any], metrics: Sequence[str]) -> pd.DataFrame:
    """Long frame: arm, seed, run_id, metric, step, value."""
    client = open_client(uri)
    rows = []
    for (arm, seed), run in runs.items():
        for metric in metrics:
            for m in client.get_metric_history(run.info.run_id, metric):
                rows.append((arm, seed, run.info.run_id, metric, m.step, m.value))
    return pd.DataFrame(rows, columns=["arm", "seed", "run_id", "metric", "step", "value"])


def final_value(run, metric: str) -> float:
    return float(run.data.metrics.get(metric, math.nan))
