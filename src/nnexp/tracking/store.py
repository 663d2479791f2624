"""The MLflow store: opening it (once per process, safely on a fresh SQLite file), reading
what a sweep's parent needs, and ending runs whose process died.

Runs are written with ``MlflowClient`` (no global "active run"), so that jobs in any
launcher, nested under a sweep's parent run, behave the same. HTTP requests are short and
not retried by MLflow (``MLFLOW_HTTP_REQUEST_*``, unless set by the user): a run's local
record is kept whatever the store does, and the uploader retries on its own schedule.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from nnexp.config.errors import NnexpError
from nnexp.config.names import TAG_STATUS
from nnexp.config.paths import cache_dir
from nnexp.tracking.storelock import sqlite_lock, sqlite_path

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"

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


#: MLflow's HTTP client defaults retry for minutes with back-off; nnexp keeps every run locally
#: and retries itself, so a request fails fast (the user's own settings win); and no "View run"
#: line per upload
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                 "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}  # nnexp prints where a run is, once


def client(uri: str):
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from mlflow.tracking import MlflowClient

    for noisy in ("mlflow", "alembic", "urllib3.connectionpool"):  # migration chatter, retry warnings
        level = logging.ERROR if noisy.startswith("urllib3") else logging.WARNING
        if logging.getLogger(noisy).level != level:  # setLevel clears every logger's cache: once
            logging.getLogger(noisy).setLevel(level)
    # a client on a SQLite file creates (and migrates) the store on construction: processes that do
    # this at the same moment on a fresh file crash on the migration or corrupt it (measured)
    with sqlite_lock(uri):
        db = sqlite_path(uri)
        if db is not None and not db.exists():
            new_store_from_template(db)
        return MlflowClient(tracking_uri=uri)


def new_store_from_template(db: Path) -> None:
    """A fresh SQLite store as a copy of an empty one MLflow created and migrated before, kept in
    the cache per MLflow release: MLflow's ~50 schema migrations take 2-3 s on every new file, a
    copy takes milliseconds. The copy's Default experiment gets the artifact location MLflow
    would have given it (./mlruns/0 of this process). Any problem: MLflow creates the file itself."""
    from importlib.metadata import version

    from mlflow.tracking import MlflowClient

    template = cache_dir() / f"mlflow-{version('mlflow')}-empty.db"
    aside = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    try:
        with sqlite_lock(f"sqlite:///{template}"):
            if not template.exists():
                made = template.with_name(f"{template.name}.{os.getpid()}.tmp")
                made.unlink(missing_ok=True)
                MlflowClient(tracking_uri=f"sqlite:///{made}").search_experiments()  # creates and migrates
                os.replace(made, template)
            shutil.copyfile(template, aside)
        with contextlib.closing(sqlite3.connect(aside)) as con, con:
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                        ((Path.cwd() / "mlruns" / "0").as_posix(),))
        os.replace(aside, db)
    except sqlite3.Error as exc:  # a damaged template: made again next time
        template.unlink(missing_ok=True)
        log.warning("the empty tracking store %s was damaged (%s): removed; MLflow creates %s itself",
                    template, exc, db)
    except Exception as exc:  # noqa: BLE001 - no template (a read-only cache, ...): only slower
        log.debug("no store template (%s): MLflow creates %s", first_line(exc), db)
    finally:
        aside.unlink(missing_ok=True)


def first_line(exc: BaseException) -> str:
    """An exception in one short line, credentials hidden (a refused or timed-out connection
    says just that, not urllib3's paragraph)."""
    text = str(exc).strip()
    for marker, short in (("Connection refused", "connection refused"), ("NewConnectionError", "connection refused"),
                          ("timed out", "timed out"), ("Name or service not known", "unknown host")):
        if marker in text:
            return short
    return redact(text.splitlines()[0] if text else type(exc).__name__)[:200]


def _artifact_root(uri: str) -> str | None:
    """Next to a SQLite store, keep artifacts in ./mlartifacts beside the database file."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):]).expanduser().resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


def experiment_id(uri: str, experiment: str, c=None) -> str:
    """The experiment's id, creating the store (see ``client``; ``c``: one made already) and the
    experiment if needed."""
    c = c or client(uri)
    with sqlite_lock(uri):  # get-or-create, one process at a time
        exp = c.get_experiment_by_name(experiment)
        if exp is not None:
            return exp.experiment_id
        try:
            return c.create_experiment(experiment, artifact_location=_artifact_root(uri))
        except Exception:  # created meanwhile by another process (another machine, a server)
            exp = c.get_experiment_by_name(experiment)
            if exp is None:
                raise
            return exp.experiment_id


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def param_value(v: Any) -> str:
    return redact(v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, dict)) else str(v))


def running_children(uri: str, run_id: str) -> int:
    """How many child runs of ``run_id`` are still RUNNING."""
    c = client(uri)
    parent = c.get_run(run_id)
    children = c.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'",
                                  max_results=1000)
    return len(children)


def children_summary(uri: str, run_id: str) -> tuple[str, Any]:
    """One line on a parent run's children (how many, their statuses, the best) and the best
    child (or None)."""
    c = client(uri)
    parent = c.get_run(run_id)
    children = c.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
                             max_results=10_000)
    counts: dict[str, int] = {}
    for r in children:
        st = r.data.tags.get(TAG_STATUS, r.info.status.lower())
        counts[st] = counts.get(st, 0) + 1
    scored = [r for r in children if "best_validation_accuracy" in r.data.metrics]
    best = max(scored, key=lambda r: r.data.metrics["best_validation_accuracy"], default=None)
    text = ", ".join(f"{n} {st}" for st, n in sorted(counts.items()))
    line = f"{len(children)} runs" + (f" ({text})" if text else "")
    if best is not None:
        line += (f"; best validation accuracy {best.data.metrics['best_validation_accuracy']:.4f} "
                 f"in run {best.info.run_id} ({best.info.run_name})")
    return line, best
