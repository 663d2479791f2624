"""MLflow tracking, the only package that imports mlflow: every run's
local record first (``nnexp.tracking.record``), the store off the training path (``tracker``), the
one way records reach the store (``upload``), and catching up (``catch_up``)."""

from nnexp.tracking.store import (DEFAULT_URI, TrackingError, children_summary, client, first_line, preload,
                                  redact, resolve_uri, running_children)
from nnexp.tracking.catch_up import SyncReport, prepare_store, reap_dead_runs, sync_records
from nnexp.tracking.tracker import SYNC_HINT, ParentRun, RunTracker, Uploader, default_run_dir
from nnexp.tracking.upload import upload
from nnexp.tracking.upload_process import UploadClient, UploadProcess, serving, uploader

__all__ = ["DEFAULT_URI", "ParentRun", "RunTracker", "SYNC_HINT", "SyncReport", "TrackingError", "UploadClient", "UploadProcess", "Uploader",
           "children_summary", "client", "default_run_dir", "first_line", "preload", "prepare_store",
           "reap_dead_runs", "redact", "resolve_uri", "running_children", "serving", "sync_records", "upload", "uploader"]
