"""Hydra callback: one MLflow parent run per multirun, created before any job starts.

The parent's id and the sweep id reach the jobs through environment variables, which
every launcher's workers inherit (basic: same process; joblib: spawned afterwards).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from nnexp import tracking
from nnexp.names import PARENT_ENV, SWEEP_ENV, TAG_EXPERIMENT, TAG_SWEEP, TAG_SWEEP_OVERRIDES
from nnexp.errors import NnexpError

log = logging.getLogger(__name__)


def new_sweep_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


class SweepTracking(Callback):
    def __init__(self) -> None:
        self.uri: str | None = None
        self.parent: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_id = new_sweep_id()
        os.environ[SWEEP_ENV] = sweep_id
        os.environ.pop(PARENT_ENV, None)
        if not config.get("tracking", {}).get("enabled", False):
            return
        experiment = config.hydra.runtime.choices.get("experiment") or "sweep"
        self.uri = tracking.resolve_uri(config.tracking.uri)
        try:
            self.parent = tracking.start_parent_run(
                self.uri, config.tracking.experiment, name=f"{experiment} {sweep_id}",
                tags={TAG_SWEEP: sweep_id, TAG_EXPERIMENT: str(experiment),
                      TAG_SWEEP_OVERRIDES: " ".join(config.hydra.overrides.task)[:4000]})
        except NnexpError as exc:
            raise SystemExit(f"nnexp.run: error: {exc}") from None
        os.environ[PARENT_ENV] = self.parent
        log.info("sweep %s: parent run %s in %s", sweep_id, self.parent, tracking.redact(self.uri))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_id = os.environ.get(SWEEP_ENV)
        if self.parent:
            log.info("sweep %s: %s", sweep_id, tracking.end_parent_run(self.uri, self.parent))
        os.environ.pop(PARENT_ENV, None)
        os.environ.pop(SWEEP_ENV, None)


def end_interrupted_sweep(config: DictConfig, what: str = "") -> None:
    """Ctrl-C or SIGTERM reached the launching process: its jobs are recorded KILLED, so end the
    sweep's parent run KILLED too (Hydra skips on_multirun_end then), with one line that starts
    with ``what`` (e.g. what happened to the job that was running)."""
    parent = os.environ.pop(PARENT_ENV, None)
    os.environ.pop(SWEEP_ENV, None)
    head = f"interrupted: {what}; " if what else "interrupted: "
    if parent and config.get("tracking", {}).get("enabled", False):
        uri = tracking.resolve_uri(config.tracking.uri)
        try:
            log.error("%ssweep ended, %s", head, tracking.end_parent_run(uri, parent, "KILLED"))
            return
        except Exception as exc:  # noqa: BLE001 - the store itself failed: say so in one line
            log.error("%scould not end parent run %s: %s", head, parent, exc)
            return
    log.error("%ssweep ended", head)
