"""A run's identity: the hash of what it computes (same hash = same curves). The report finds a
figure's runs by it; a resumed run is recognised by it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from nnexp.config.run_schema import RunConfig, flat_params

#: Params that do not change what a run computes: left out of its identity.
_NOT_IDENTITY = ("dataset.data_dir", "dataset.download", "monitor.progress")

#: The settings that existed when runs were first identified by their hash: always hashed.
#: A setting added later is hashed only when it differs from its default, so that adding a
#: setting (at a default that keeps today's behaviour) leaves every tracked run's hash as it was.
HASHED_ALWAYS = frozenset({
    "budget_images", "cost", "dataset", "dataset.classes", "dataset.expanded", "dataset.n_inputs",
    "dataset.train_size", "dtype", "early_stopping", "early_stopping.patience", "early_stopping.restore_best",
    "epochs", "eta", "hidden", "init", "lmbda", "mini_batch_size", "momentum", "monitor.every_images",
    "monitor.metrics", "monitor.validation_sample", "regularization", "regularization.dropout",
    "regularization.penalty", "schedule", "schedule.min_factor", "schedule.patience", "seed", "sizes"})


def identity_hash(payload: dict) -> str:
    """The one hash of a run's identity (16 hex digits of SHA-256 over canonical JSON)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def identity_params(params: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The params that make a run's identity: see HASHED_ALWAYS and _NOT_IDENTITY."""
    return {k: v for k, v in params.items() if k not in _NOT_IDENTITY
            and (k in HASHED_ALWAYS or k not in defaults or v != defaults[k])}


def config_hash(c: RunConfig) -> str:
    """A short identity of what a run computes (same hash = same curves): the report finds
    runs by it, so that a figure is built from exactly the configurations it declares."""
    return identity_hash(identity_params(flat_params(c), flat_params(RunConfig())))
