"""MLflow tracking: the only module outside the report that imports mlflow.

Runs are written with ``MlflowClient`` (no global "active run"), so that jobs in any
launcher, nested under a sweep's parent run, behave the same. Metrics are buffered and
written with ``log_batch`` every few seconds: per-epoch logging stays a small fraction of
training time even for 400-epoch runs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnexp.errors import NnexpError
from nnexp.names import TAG_BEST_CHILD, TAG_DATASET_SHA256, TAG_ERROR, TAG_STATUS

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
FLUSH_SECONDS = 5.0
MAX_BATCH = 900  # MLflow accepts up to 1,000 metrics per log_batch

_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*)(:[^/@\s]*)?@")


class TrackingError(NnexpError):
    """The tracking store cannot be reached or written."""


def redact(text: str) -> str:
    """Hide credentials in any URL inside ``text``: scheme://user:secret@host -> scheme://***@host."""
    return _CREDENTIALS.sub(lambda m: f"{m.group('scheme')}***@", text)


def resolve_uri(configured: str | None = None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def preload() -> None:
    """Import MLflow now (~1 s), e.g. in a worker process that is waiting for its first job."""
    import mlflow  # noqa: F401


def _client(uri: str):
    for noisy in ("mlflow", "alembic"):  # schema-migration chatter at INFO level
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _artifact_root(uri: str) -> str | None:
    """Next to a SQLite store, keep artifacts in ./mlartifacts beside the database file."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):]).expanduser().resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


def prepare_store(uri: str, experiment: str) -> str:
    """Create (and migrate) the store and the experiment once; return the experiment id.

    Call before parallel jobs start: two processes creating a fresh SQLite store at the
    same moment crash on the schema migration.
    """
    try:
        client = _client(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(experiment, artifact_location=_artifact_root(uri))
        except Exception:  # created meanwhile by another process
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                raise
            return exp.experiment_id
    except NnexpError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(f"cannot use tracking store {redact(uri)}: {redact(first)} "
                            "(set tracking.uri=..., or tracking=off to run untracked)") from None


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _param_value(v: Any) -> str:
    return redact(v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, dict)) else str(v))


def start_parent_run(uri: str, experiment: str, *, name: str, tags: dict[str, str]) -> str:
    """A sweep's parent run, created before its jobs; returns the run id."""
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    exp_id = prepare_store(uri, experiment)
    run = _client(uri).create_run(exp_id, run_name=name, tags={MLFLOW_RUN_NAME: name, **tags})
    return run.info.run_id


def running_children(uri: str, run_id: str) -> int:
    """How many child runs of ``run_id`` are still RUNNING."""
    client = _client(uri)
    parent = client.get_run(run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'",
                                  max_results=1000)
    return len(children)


def end_parent_run(uri: str, run_id: str, status: str = "FINISHED") -> str:
    """End a sweep's parent run; return a one-line summary of its children."""
    client = _client(uri)
    parent = client.get_run(run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
                                  max_results=10_000)
    counts: dict[str, int] = {}
    for r in children:
        st = r.data.tags.get(TAG_STATUS, r.info.status.lower())
        counts[st] = counts.get(st, 0) + 1
    scored = [r for r in children if "best_validation_accuracy" in r.data.metrics]
    best = max(scored, key=lambda r: r.data.metrics["best_validation_accuracy"], default=None)
    if best is not None:
        client.log_metric(run_id, "best_validation_accuracy", best.data.metrics["best_validation_accuracy"])
        client.set_tag(run_id, TAG_BEST_CHILD, best.info.run_id)
    client.set_terminated(run_id, status)
    text = ", ".join(f"{n} {st}" for st, n in sorted(counts.items()))
    line = f"{len(children)} runs" + (f" ({text})" if text else "")
    if best is not None:
        line += (f"; best validation accuracy {best.data.metrics['best_validation_accuracy']:.4f} "
                 f"in run {best.info.run_id} ({best.info.run_name})")
    return line + f"; parent run {run_id} ({redact(uri)})"


@dataclass
class RunTracker:
    """One tracked run: buffered metrics, final status, artifacts, dataset input."""

    uri: str
    experiment: str
    run_name: str
    params: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None
    step_by_images: bool = False
    run_id: str | None = None
    _buffer: list = field(default_factory=list)
    _last_flush: float = 0.0
    seconds_in_tracking: float = 0.0

    def start(self) -> str:
        from mlflow.entities import Param
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

        t0 = time.perf_counter()
        exp_id = prepare_store(self.uri, self.experiment)
        client = self.client = _client(self.uri)
        tags = {MLFLOW_RUN_NAME: self.run_name, **self.tags}
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        if self.parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = self.parent_run_id
        self.run_id = client.create_run(exp_id, run_name=self.run_name, tags=tags).info.run_id
        params = [Param(k, _param_value(v)[:6000]) for k, v in self.params.items()]
        for i in range(0, len(params), 100):
            client.log_batch(self.run_id, params=params[i:i + 100])
        self._last_flush = time.perf_counter()
        self.seconds_in_tracking += time.perf_counter() - t0
        return self.run_id

    # -- per-evaluation metrics -----------------------------------------------------
    def observe(self, record, net=None) -> None:
        """Training-loop observer: buffer the record's metrics, flush now and then."""
        from mlflow.entities import Metric

        t0 = time.perf_counter()
        step = record.images_seen if self.step_by_images else int(record.epoch)
        ts = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), ts, step) for k, v in record.metrics().items())
        if len(self._buffer) >= MAX_BATCH or t0 - self._last_flush >= FLUSH_SECONDS:
            self.flush()
        self.seconds_in_tracking += time.perf_counter() - t0
        return None

    def flush(self) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[:MAX_BATCH], self._buffer[MAX_BATCH:]
            self.client.log_batch(self.run_id, metrics=chunk)
        self._last_flush = time.perf_counter()

    # -- the end of a run ---------------------------------------------------------------
    def log_dataset(self, splits) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        files = {f.name: {"sha256": f.sha256, "verified": f.verified} for f in splits.files}
        local = splits.source.startswith("/")
        source = json.dumps({"uri": splits.source} if local else {"tags": {"loader": splits.source}})
        profile = json.dumps({"sha256": splits.digest(), "files": files, "train": len(splits.train),
                              "validation": len(splits.validation), "test": len(splits.test)})
        ds = Dataset(name=splits.name, digest=splits.digest()[:32], source_type="local" if local else "code",
                     source=source, profile=profile)
        inputs = [DatasetInput(ds, tags=[InputTag("mlflow.data.context", "training")])]
        for attempt in range(3):  # parallel jobs logging one new dataset at once race on its row
            try:
                self.client.log_inputs(self.run_id, datasets=inputs)
                break
            except Exception:
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))
        self.client.set_tag(self.run_id, TAG_DATASET_SHA256, splits.digest())

    def finish(self, status: str, *, summary: dict[str, float], artifacts: dict[str, bytes | str],
               mlflow_status: str = "FINISHED", error: str | None = None) -> None:
        """Flush metrics, log summary metrics, artifacts and status tags, end the run."""
        from mlflow.entities import Metric, RunTag

        t0 = time.perf_counter()
        self.flush()
        ts = int(time.time() * 1000)
        metrics = [Metric(k, float(v), ts, 0) for k, v in summary.items() if v is not None]
        tags = [RunTag(TAG_STATUS, status)]
        if error:
            tags.append(RunTag(TAG_ERROR, redact(error)[:4000]))
        self.client.log_batch(self.run_id, metrics=metrics, tags=tags)
        if artifacts:
            with tempfile.TemporaryDirectory() as tmp:
                for name, content in artifacts.items():
                    path = Path(tmp, name)
                    path.write_bytes(content if isinstance(content, bytes) else content.encode())
                self.client.log_artifacts(self.run_id, tmp)
        self.client.set_terminated(self.run_id, mlflow_status)
        self.seconds_in_tracking += time.perf_counter() - t0

    def fail(self, status: str, mlflow_status: str, error: str | None = None,
             artifacts: dict[str, bytes | str] | None = None) -> None:
        """End the run after an interruption or exception, keeping the metrics so far."""
        try:
            self.finish(status, summary={}, artifacts=artifacts or {}, mlflow_status=mlflow_status,
                        error=error)
        except Exception:  # the store itself failed: nothing more can be recorded
            log.error("could not record the end of run %s:\n%s", self.run_id, traceback.format_exc())

    @property
    def location(self) -> str:
        return f"run {self.run_id} in experiment '{self.experiment}' ({redact(self.uri)})"


def reopen_run(uri: str, run_id: str) -> None:
    """Mark a resumed study's parent run as running again."""
    _client(uri).update_run(run_id, status="RUNNING")


def log_stage_decision(uri: str, run_id: str, stage: str, decision: dict) -> None:
    """A study stage's decision on the parent run: scalar values as params, the summary as a tag."""
    from mlflow.entities import Param, RunTag

    client = _client(uri)
    params = [Param(f"{stage}.{k}", _param_value(v)[:6000]) for k, v in decision.items()
              if isinstance(v, (int, float, str)) and k != "summary"]
    existing = client.get_run(run_id).data.params
    params = [p for p in params if p.key not in existing]  # params are immutable: resumed stages skip
    tags = [RunTag(f"nnexp.decision.{stage}", redact(str(decision.get("summary", "")))[:5000])]
    client.log_batch(run_id, params=params, tags=tags)


def finish_study_run(uri: str, run_id: str, out_dir: Path, metrics: dict[str, float | None]) -> None:
    """Log a study's outputs (decision log, plots, preset) on its parent run and end it."""
    from mlflow.entities import Metric

    client = _client(uri)
    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items() if v is not None])
    client.log_artifacts(run_id, str(out_dir))
    client.set_tag(run_id, TAG_STATUS, "completed")
    client.set_terminated(run_id, "FINISHED")
