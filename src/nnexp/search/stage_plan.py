"""What one stage's trials train: picklable, handed to worker processes."""

from __future__ import annotations

from dataclasses import dataclass

from nnexp.config.run_schema import RunConfig


@dataclass
class StagePlan:
    """What one stage's trials train: picklable, handed to worker processes."""

    study: str
    stage: str
    storage: str
    base: RunConfig
    space: dict  # name -> {"low", "high", "log"} or {"choices": [...]}
    lmbda_scale: float = 1.0  # trial lambda = suggested (full-data units) x scale
    eta_base_mb: int | None = None  # trial eta = eta x mini_batch_size / eta_base_mb
    prune: bool = True
    pruner: str = "median"
    sampler: str = "tpe"
    seed: int = 0
    parent_run_id: str | None = None
    parent_record: str | None = None  # the study's parent run's local record
    experiment: str | None = None
    heartbeat: int = 10
    grace: int = 30
    population: int = 1  # trials asked at once and trained as one batched population
    replicates: int = 1  # seeds per trial (seed, seed + 1, ...), trained as one population; value: their mean
    score_test: bool = False  # tuning never sees the test set; the final stage scores it, once
    alone: bool = False  # train every run by itself: its wall clock is a single run's (the mini-batch stage)
    rungs: tuple[int, int] | None = None  # successive halving: (min epochs, reduction factor); the pruner
    budget_seconds: float | None = None  # no trial is asked once this much wall clock passed since the first started
