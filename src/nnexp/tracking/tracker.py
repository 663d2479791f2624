"""Tracking a run: its local record first (``nnexp.tracking.record``), the MLflow store off the
training path.

The training loop only appends to the record (microseconds an evaluation). An ``Uploader``
thread applies the record to the store every few seconds; when the store stops answering,
training goes on at full speed, the user sees one warning line (and one when it answers
again), and what could not be uploaded stays in the record for ``python -m nnexp.sync``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnexp.config.names import RUNNING, TAG_BEST_CHILD, TAG_DATASET_SHA256, TAG_ERROR, TAG_RESUMED, TAG_STATUS
from nnexp.tracking.record import RunRecord, now_ms
from nnexp.tracking.store import children_summary, client, first_line, param_value, redact
from nnexp.tracking.upload import upload

log = logging.getLogger("nnexp.tracking")

FLUSH_SECONDS = 5.0  # upload period while the store answers
MAX_RETRY_SECONDS = 30.0  # back-off limit while it does not
SYNC_HINT = "`python -m nnexp.sync` uploads it"


def default_run_dir() -> Path:
    """Where a run outside a Hydra job (the Python API, a study's trial, a report run) keeps
    its record: ./outputs/records/DATE/TIME-ID."""
    return Path("outputs", "records", time.strftime("%Y-%m-%d"), f"{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:8]}")


class Uploader:
    """Uploads the records handed to it: in the caller's thread when asked (a run's start and
    end), and in a background thread every ``FLUSH_SECONDS`` meanwhile, backing off while the
    store does not answer. One warning line when a store stops answering, one when it is back."""

    #: stores that did not answer, for this process: one warning per outage, not one per run
    down: dict[str, str] = {}

    def __init__(self) -> None:
        self.records: list[RunRecord] = []
        self.busy = threading.Lock()  # one upload at a time (the thread or the caller)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def add(self, record: RunRecord) -> None:
        if any(r.dir == record.dir for r in self.records):  # handed over and back, or sent twice
            return
        self.records.append(record)
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name="nnexp-uploader", daemon=True)
            self.thread.start()

    def upload_now(self, record: RunRecord) -> bool:
        """Upload what the record holds; False (after one warning line per outage) if the
        store did not take it."""
        uri = record.start["uri"]
        with self.busy:
            try:
                upload(record)
            except Exception as exc:  # noqa: BLE001 - kept locally; the next attempt goes on from here
                if uri not in self.down:
                    self.down[uri] = first_line(exc)
                    log.warning("tracking store %s does not answer (%s): training goes on, runs are kept "
                                "locally and uploaded when it answers again", redact(uri), first_line(exc))
                return False
            if uri in self.down:
                del self.down[uri]
                log.warning("tracking store %s answers again: the runs kept meanwhile are uploaded", redact(uri))
            return True

    def flush(self, record: RunRecord) -> None:
        """Return once what the record holds is in the store (or the store did not take it)."""
        self.upload_now(record)

    def is_down(self, record: RunRecord) -> bool:
        return record.start["uri"] in self.down

    def forget(self, record: RunRecord) -> None:
        """Stop uploading ``record``: another process goes on with it (its uploads go on from
        where this one's stopped)."""
        with self.busy:
            self.records = [r for r in self.records if r.dir != record.dir]

    def start(self, record: RunRecord) -> None:
        """A new (or resumed) run's record: uploaded now if the store answers, then every few
        seconds while the run trains."""
        if not self.is_down(record):
            self.upload_now(record)
        self.add(record)

    def _loop(self) -> None:
        delay = FLUSH_SECONDS
        while not self.stop.wait(delay):
            ok = True
            for record in list(self.records):
                if not record.uploaded():
                    ok = self.upload_now(record) and ok
                elif record.ended():  # every event in the store, the last its end: nothing more comes
                    self.forget(record)  # (an upload process serves hundreds of a study's runs)
            delay = FLUSH_SECONDS if ok else min(2 * delay, MAX_RETRY_SECONDS)

    def close(self) -> None:
        """Stop the thread; one last upload of every record (fails fast if the store is down)."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        for record in self.records:
            if not record.uploaded():
                self.upload_now(record)


@dataclass
class RunTracker:
    """One tracked run: params, tags, metrics at every evaluation, dataset input, artifacts and
    final status, into its local record and from there to the store."""

    uri: str
    experiment: str
    run_name: str
    params: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None
    parent_record: str | None = None
    step_by_images: bool = False
    run_dir: Path | None = None
    uploader: Uploader | None = None
    record: RunRecord | None = None
    seconds_in_tracking: float = 0.0
    logged_through: int | None = None  # a resumed run: its metrics up to this step are in the record

    def start(self) -> str | None:
        """Write the record's first event and create the MLflow run if the store answers;
        returns its id (None while the store does not answer)."""
        t0 = time.perf_counter()
        self.record = RunRecord.create(
            self.run_dir or default_run_dir(), uri=self.uri, experiment=self.experiment, run_name=self.run_name,
            params={k: param_value(v) for k, v in self.params.items()}, tags=dict(self.tags),
            parent_run_id=self.parent_run_id, parent_record=self.parent_record)
        return self._upload_start(t0)

    def resume(self, record: RunRecord, where: str, handover: bool = False) -> str | None:
        """Go on with an earlier run's record, claimed by this process (``RunRecord.claim``):
        the same MLflow run, RUNNING again, tagged with its resumes. The evaluations its record
        already holds are not logged twice (a resumed run computes them again, bit for bit).
        ``handover``: the run was handed to this process while it trained (``runner.handover``):
        its tags stay as they are."""
        t0 = time.perf_counter()
        self.record = record
        self.logged_through = record.last_step()
        if not handover:  # this job's tags (its population, a retried study trial's number), RUNNING and resumed
            record.tags({**self.tags, TAG_STATUS: RUNNING, TAG_RESUMED: f"{record.resumes()}, last from {where}"})
        return self._upload_start(t0)

    def _upload_start(self, t0: float) -> str | None:
        self.uploader = self.uploader or Uploader()
        self.uploader.start(self.record)  # an upload process's client returns at once: the run id comes later
        self.seconds_in_tracking += time.perf_counter() - t0
        return self.run_id

    @property
    def run_id(self) -> str | None:
        """The MLflow run id, once the run exists in the store."""
        return self.record.run_id() if self.record else None

    def started(self) -> str | None:
        """The MLflow run id once the start is in the store, waiting for it if another process
        uploads it (None: the store did not take it)."""
        if self.run_id is None:
            self.uploader.flush(self.record)
        return self.run_id

    def observe(self, record, net=None) -> None:
        """Training-loop observer: the evaluation's metrics, appended to the record."""
        t0 = time.perf_counter()
        step = record.images_seen if self.step_by_images else int(record.epoch)
        if self.logged_through is not None and step <= self.logged_through:
            return None
        ts = int(time.time() * 1000)
        self.record.metrics([(k, float(v), ts, step) for k, v in record.metrics().items()])
        self.seconds_in_tracking += time.perf_counter() - t0
        return None

    def log_dataset(self, splits) -> None:
        """The dataset as the run's MLflow input (name, digest, source, per-file checksums)."""
        import json

        files = {f.name: {"sha256": f.sha256, "verified": f.verified} for f in splits.files}
        local, digest = splits.source.startswith("/"), splits.digest()  # (without files: a hash of the arrays)
        self.record.dataset({
            "name": splits.name, "digest": digest[:32], "source_type": "local" if local else "code",
            "source": json.dumps({"uri": splits.source} if local else {"tags": {"loader": splits.source}}),
            "profile": {"sha256": digest, "files": files, "train": len(splits.train),
                        "validation": len(splits.validation), "test": len(splits.test)}, "tagged": True})
        self.record.tags({TAG_DATASET_SHA256: digest})  # uploaded in one batch with the metrics

    def finish(self, status: str, *, summary: dict[str, float | None], artifacts: dict[str, bytes | str],
               mlflow_status: str = "FINISHED", error: str | None = None, tags: dict[str, str] | None = None) -> None:
        """The run's end into the record: summary metrics, status tags (and ``tags``), artifacts,
        MLflow status. (The uploader's ``close`` sends it to the store.)"""
        t0 = time.perf_counter()
        ts = int(time.time() * 1000)
        self.record.metrics([(k, float(v), ts, 0) for k, v in summary.items() if v is not None])
        tags = {**(tags or {}), TAG_STATUS: status}
        if error:
            tags[TAG_ERROR] = redact(error)[:4000]
        self.record.tags(tags)
        for name, content in artifacts.items():
            self.record.artifact(name, content)
        self.record.end(mlflow_status)
        self.seconds_in_tracking += time.perf_counter() - t0

    def fail(self, status: str, mlflow_status: str, error: str | None = None,
             artifacts: dict[str, bytes | str] | None = None) -> None:
        """End the run after an interruption or exception, keeping the metrics so far."""
        self.finish(status, summary={}, artifacts=artifacts or {}, mlflow_status=mlflow_status, error=error)

    def close(self) -> None:
        """Upload what is left (for a tracker with an uploader of its own)."""
        self.uploader.close()

    def stored(self) -> bool:
        """Everything recorded so far is in the store."""
        return self.record is not None and self.record.uploaded()

    @property
    def location(self) -> str:
        """Where the run is: in the store, or (not all of it uploaded) its local record."""
        if self.stored():
            return f"run {self.run_id} in experiment '{self.experiment}' ({redact(self.uri)})"
        return f"kept locally in {self.record.dir.parent}; {SYNC_HINT}"


class ParentRun:
    """A sweep's or a study's parent run: a local record like any run's, uploaded at each step
    (start, decisions, end) when the store answers. ``run_id``: continue that existing run
    (a resumed study); ``upload`` False: the caller uploads the start (``upload_start``), e.g.
    in the background while the sweep's jobs start (children find their parent by its record);
    ``uploader``: what uploads it (default: from this process; an ``UploadClient``: the upload
    process of a study)."""

    def __init__(self, uri: str, experiment: str, *, name: str, tags: dict[str, str], run_dir: Path,
                 run_id: str | None = None, upload: bool = True, uploader=None) -> None:
        self.uri, self.experiment = uri, experiment
        self.uploader = uploader or Uploader()
        self.record = RunRecord.create(run_dir, uri=uri, experiment=experiment, run_name=name, params={},
                                       tags=tags, run_id=run_id)
        self.logged: set[str] = set()  # params are immutable: each is logged once
        if upload and self.uploader.upload_now(self.record) and run_id:
            try:
                self.logged |= set(client(uri).get_run(run_id).data.params)
            except Exception:  # noqa: BLE001 - the store went away just now: nothing more known
                pass

    def upload_start(self) -> bool:
        """Upload what the record holds; whether the store took it."""
        return self.uploader.upload_now(self.record)

    @classmethod
    def of_record(cls, record_dir: Path) -> "ParentRun":
        """The parent run whose record is ``record_dir`` (e.g. from a sweep job's process)."""
        self = cls.__new__(cls)
        self.record = RunRecord(Path(record_dir))
        self.uri, self.experiment = self.record.start["uri"], self.record.start["experiment"]
        self.uploader, self.logged = Uploader(), set()
        return self

    @property
    def run_id(self) -> str | None:
        return self.record.run_id()

    @property
    def record_dir(self) -> str:
        return str(self.record.dir.resolve())

    def log(self, *, params: dict[str, Any] | None = None, tags: dict[str, str] | None = None,
            metrics: dict[str, float | None] | None = None, artifacts_from: Path | None = None) -> None:
        params = {k: v for k, v in (params or {}).items() if k not in self.logged}
        if params:
            self.record.params({k: param_value(v)[:6000] for k, v in params.items()})
            self.logged |= set(params)
        if tags:
            self.record.tags({k: redact(str(v))[:5000] for k, v in tags.items()})
        if metrics:
            ts = int(time.time() * 1000)
            self.record.metrics([(k, float(v), ts, 0) for k, v in metrics.items() if v is not None])
        if artifacts_from is not None:
            self.record.artifact_dir(artifacts_from)
        self.uploader.upload_now(self.record)

    def end(self, status: str = "FINISHED") -> bool:
        """End the run; whether it is in the store."""
        self.record.end(status)
        return self.uploader.upload_now(self.record)

    def end_sweep(self, status: str) -> str:
        """End a sweep's parent run, once (another process may have ended it: a cluster job that
        finished the sweep's last run), with its best child as a metric and a tag when the store
        answers; one line on what is where. Reaped meanwhile (ended KILLED by a process that found
        the launching process gone while the sweep's cluster jobs went on): it runs again, and ends."""
        line = ""
        with self.record.uploading():  # held while deciding and writing: one process ends it
            if self.record.ended() and not self.record.reaped():
                return f"ended already (by the process that finished its last run); {self.location}"
            if self.record.ended():
                self.record.reopen("its sweep's last run ended")
            if self.run_id:
                try:
                    line, best = children_summary(self.uri, self.run_id)
                    if best is not None:
                        self.record.metrics([("best_validation_accuracy",
                                              float(best.data.metrics["best_validation_accuracy"]), now_ms(), 0)])
                        self.record.tags({TAG_BEST_CHILD: best.info.run_id})
                except Exception as exc:  # noqa: BLE001 - the store went away: the record keeps the run
                    line = f"children unknown (the store did not answer: {first_line(exc)})"
            self.record.end(status)
        stored = self.uploader.upload_now(self.record)
        return f"{line}; {self.location}" if line and stored else self.location

    @property
    def location(self) -> str:
        if self.record.uploaded():
            return f"parent run {self.run_id} ({redact(self.uri)})"
        return f"parent run kept locally in {self.record.dir.parent}; {SYNC_HINT}"
