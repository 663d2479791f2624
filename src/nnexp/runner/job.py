"""A job: one validated run configuration and what its tracked record needs. The one kind of
thing the runner executes, whether it comes from the command line, a sweep, a study or the report."""

from __future__ import annotations

import os

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from nnexp.config.run_schema import RunConfig
from nnexp.config.names import PARENT_ENV, PARENT_RECORD_ENV, SWEEP_ENV


@dataclass
class Job:
    config: RunConfig
    resolved_yaml: str = ""  # the composed config as YAML (secrets redacted): the config.yaml artifact
    experiment: str | None = None  # preset name (tag nnexp.experiment)
    sweep_id: str | None = None
    parent_run_id: str | None = None  # the sweep's or study's MLflow parent run
    parent_record: str | None = None  # ... or its local record, when the store did not answer
    run_dir: Path | None = None  # where the run's local record goes (default: ./outputs/records/...)
    tags: dict[str, str] = field(default_factory=dict)
    run_name: str | None = None
    observers: Sequence[Callable] = ()  # extra training-loop observers (e.g. a study's pruner)
    on_start: Callable[[str], None] | None = None  # called with the MLflow run id once it exists
    score_test: bool = True  # the test set scored once at the end (a study's tuning trials: never)
    # a run that is not a network trained on its dataset (the book's single neuron, a baseline
    # classifier): ``fit(job, observers) -> (History, summary metrics)``, tracked like any run,
    # with ``params`` and ``identity`` (its nnexp.config_hash) in place of the config's
    fit: Callable[["Job", list], tuple] | None = None
    params: dict | None = None
    identity: str | None = None

    def with_(self, **changes) -> "Job":
        return replace(self, **changes)


def sweep_links() -> dict[str, str | None]:
    """A sweep job's links to its sweep, from the environment the sweep's callback set (every
    launcher's job processes inherit it): sweep id, parent run id, parent record."""
    return {"sweep_id": os.environ.get(SWEEP_ENV), "parent_run_id": os.environ.get(PARENT_ENV),
            "parent_record": os.environ.get(PARENT_RECORD_ENV)}
