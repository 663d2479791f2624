"""Hydra callback: one MLflow parent run per multirun, created before any job starts.

The parent's id and the sweep id reach the jobs through environment variables, which
every launcher's workers inherit (basic: same process; joblib: spawned afterwards).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from nnexp import tracking
from nnexp.config.names import (PARENT_ENV, PARENT_RECORD_ENV, SWEEP_ENV, TAG_EXPERIMENT, TAG_SWEEP,
                                TAG_SWEEP_OVERRIDES, UPLOADS_ENV)
from nnexp.runner import resume

log = logging.getLogger(__name__)


def new_sweep_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def child_processes(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _is_helper(pid: int) -> bool:
    """A pool's bookkeeping process (e.g. loky's resource tracker), not a job."""
    try:
        return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class SweepTracking(Callback):
    """Also the sweep's interrupt handler in the launching process, for launchers whose jobs run
    in processes of their own (joblib, submitit): Ctrl-C or SIGTERM is passed on to those
    processes as SIGTERM, each records its run KILLED, then the parent run ends KILLED, in one
    line and exit code 130. (A job running in this process, under the basic or the population
    launcher, installs its own handler meanwhile and ends the same way.)"""

    GRACE_SECONDS = 60.0  # for the job processes to record their runs

    def __init__(self) -> None:
        self.parent_record: str | None = None  # the parent run's local record (picklable: submitit
        # pickles the launcher, and with it this callback)
        self.config: DictConfig | None = None
        self.previous: dict = {}
        self.uploads: tracking.UploadProcess | None = None  # uploads every run of the sweep on this host

    def __getstate__(self) -> dict:
        return {**self.__dict__, "uploads": None}  # a process handle is not pickled (it stays in this process)

    def _interrupted(self, signum, frame) -> None:
        for handler_signal in self.previous:
            signal.signal(handler_signal, signal.SIG_IGN)  # a second Ctrl-C does not cut this short
        warnings.filterwarnings("ignore", message=".*resource_tracker")  # the pool's helper ends with it
        uploads = self.uploads.proc.pid if self.uploads is not None else None  # ends last, on its own
        kids = [pid for pid in child_processes(os.getpid()) if not _is_helper(pid) and pid != uploads]
        for pid in kids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + self.GRACE_SECONDS
        while time.time() < deadline and any(_alive(pid) for pid in kids) and self._runs_still_running():
            time.sleep(0.2)
        for pid in child_processes(os.getpid()):  # idle pool workers and helpers that outlive their jobs
            if pid != uploads and _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        what = "the running jobs ended KILLED, with their metrics so far" if kids else ""
        end_interrupted_sweep(self.config, what)
        if self.uploads is not None:
            self.uploads.close()
        logging.shutdown()
        sys.stdout.flush()
        os._exit(130)

    def _runs_still_running(self) -> bool:
        """Whether a child run of the sweep is still RUNNING in the store (True if unknown)."""
        parent = tracking.ParentRun.of_record(Path(self.parent_record)) if self.parent_record else None
        if parent is None or not parent.run_id:
            return True
        try:
            return tracking.running_children(parent.uri, parent.run_id) > 0
        except Exception:  # noqa: BLE001 - the store cannot tell: wait for the processes instead
            return True

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.config = config
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._interrupted) for s in (signal.SIGTERM, signal.SIGINT)}
        sweep_id = new_sweep_id()
        os.environ[SWEEP_ENV] = sweep_id
        for name in (PARENT_ENV, PARENT_RECORD_ENV):
            os.environ.pop(name, None)
        if not config.get("tracking", {}).get("enabled", False):
            return
        experiment = config.hydra.runtime.choices.get("experiment") or "sweep"
        uri = tracking.resolve_uri(config.tracking.uri)
        key = resume.sweep_key(list(config.hydra.overrides.task), uri, config.tracking.experiment)
        parent = resumed_parent(key) if config.tracking.get("resume", True) else None
        if parent is not None:  # the same sweep run again: its runs go on under the same parent run
            sweep_id = os.environ[SWEEP_ENV] = parent.record.start["tags"].get(TAG_SWEEP, sweep_id)
        else:
            parent = tracking.ParentRun(
                uri, config.tracking.experiment, name=f"{experiment} {sweep_id}",
                run_dir=Path(str(config.hydra.sweep.dir)),
                tags={TAG_SWEEP: sweep_id, TAG_EXPERIMENT: str(experiment),
                      TAG_SWEEP_OVERRIDES: " ".join(config.hydra.overrides.task)[:4000]}, upload=False)
            resume.remember_record(key, parent.record)
        self.parent_record = os.environ[PARENT_RECORD_ENV] = parent.record_dir
        # one process opens the store (imports MLflow: ~1.6 s of CPU), uploads the parent run and
        # every run of the sweep on this host (tracking.upload_process): no training process
        # imports MLflow; a job finds its parent by its record
        try:
            self.uploads = tracking.UploadProcess(uri, config.tracking.experiment)
        except OSError as exc:
            log.warning("no upload process (%s): each process of the sweep uploads its own runs", exc)
            return
        os.environ[UPLOADS_ENV] = self.uploads.address
        atexit.register(self.uploads.close)  # also when the sweep ends otherwise (an error, Ctrl-C)
        uploads = self.uploads.client()
        uploads.start(parent.record, wait=False)  # uploaded while the jobs start
        uploads.close()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        sweep_id = os.environ.get(SWEEP_ENV)
        if self.parent_record:
            log.info("sweep %s: %s", sweep_id, end_sweep(self.parent_record, "FINISHED"))
        if self.uploads is not None:
            self.uploads.close()
        for name in (PARENT_ENV, PARENT_RECORD_ENV, SWEEP_ENV, UPLOADS_ENV):
            os.environ.pop(name, None)


def resumed_parent(key: str):
    """The parent run of the same sweep run before in this directory, RUNNING again, or None
    (never run, or its launching process is still alive)."""
    record = resume.recall(key)
    if record is None or (not record.ended() and record.owner_alive()):
        return None
    if not record.claim("the sweep run again"):  # another process took it meanwhile
        return None
    return tracking.ParentRun.of_record(record.dir)


def end_sweep(record_dir: str, status: str) -> str:
    """End the sweep's parent run (``ParentRun.end_sweep``), in the sweep's upload process if it
    has one (this process never imports MLflow then); one line on what is where."""
    uploads = tracking.uploader()
    if isinstance(uploads, tracking.UploadClient):
        return uploads.end_sweep(record_dir, status)
    return tracking.ParentRun.of_record(Path(record_dir)).end_sweep(status)


def end_interrupted_sweep(config: DictConfig, what: str = "", status: str = "KILLED") -> None:
    """Ctrl-C or SIGTERM reached the launching process: its jobs are recorded KILLED, so end the
    sweep's parent run KILLED too (Hydra skips on_multirun_end then), with one line that starts
    with ``what`` (e.g. what happened to the job that was running). ``status`` FAILED: the sweep
    could not start its jobs (``what`` says why)."""
    record = os.environ.get(PARENT_RECORD_ENV)
    head = (f"interrupted: {what}; " if what else "interrupted: ") if status == "KILLED" else f"{what}; "
    try:
        if record and config.get("tracking", {}).get("enabled", False):
            parent = tracking.ParentRun.of_record(Path(record))
            if not parent.record.ended():
                log.error("%ssweep ended, %s", head, end_sweep(record, status))
                return
        log.error("%ssweep ended", head)
    finally:
        for name in (PARENT_ENV, PARENT_RECORD_ENV, SWEEP_ENV, UPLOADS_ENV):
            os.environ.pop(name, None)
