"""A job: one validated run configuration and what its tracked record needs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from nnexp.config import RunConfig


@dataclass
class Job:
    config: RunConfig
    resolved_yaml: str = ""  # the composed config as YAML (secrets redacted): the config.yaml artifact
    experiment: str | None = None  # preset name (tag nnexp.experiment)
    sweep_id: str | None = None
    parent_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    run_name: str | None = None
    observers: Sequence[Callable] = ()  # extra training-loop observers (e.g. a study's pruner)
    on_start: Callable[[str], None] | None = None  # called with the MLflow run id once it exists

    def with_(self, **changes) -> "Job":
        return replace(self, **changes)
