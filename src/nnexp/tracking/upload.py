"""Uploading a run's local record (``nnexp.tracking.record``) to the MLflow store: the one way runs
reach the store, used by the background uploader while a run trains and by
``python -m nnexp.sync`` afterwards.

Resumable and idempotent: ``record/store.json`` counts the events applied; the MLflow run
carries the record's id as a tag, so a run created just before a crash is found again, not
duplicated. Uploading an up-to-date record changes nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from nnexp.config.names import (TAG_DATASET_SHA256, TAG_ERROR, TAG_HOST, TAG_PID, TAG_PID_START, TAG_REAPED,
                                TAG_RECORD_DIR, TAG_RECORD_ID, TAG_STATUS)
from nnexp.tracking.record import ARTIFACTS, STATE, RunRecord
from nnexp.tracking.storelock import absolute_url
from nnexp.tracking.store import client, experiment_id, git_commit

MAX_BATCH = 900  # MLflow accepts up to 1,000 metrics per log_batch


def upload(record: RunRecord, uri: str | None = None) -> str:
    """Apply the record's events not yet in the store ``uri`` (default: the record's own);
    returns the MLflow run id. Raises whatever the store raises: what was applied stays
    applied, and the next call goes on from there."""
    with record.uploading():
        return _upload(record, uri)


def _upload(record: RunRecord, uri: str | None) -> str:
    events = record.events()
    start = events[0]
    uri = absolute_url(uri or start["uri"])
    state = record.state()
    fresh = not (record.dir / STATE).exists()  # no upload was ever tried: no run of it exists anywhere
    if state.get("uri") != uri:  # never uploaded, or now to another store: from the start
        state = {"uri": uri, "run_id": None, "done": 0}
    if state["done"] >= len(events):
        return state["run_id"]
    c = client(uri)
    if state["run_id"] is None:
        if fresh:  # from here on, a crash may leave a run behind: the next upload looks for it
            record.save_state(state)
        state.update(run_id=_open_run(c, record, start, uri, look_first=not fresh), done=1)
        record.save_state(state)
    run_id = state["run_id"]
    while state["done"] < len(events):
        n = _apply(c, record, run_id, events, state["done"])
        state["done"] += n
        record.save_state(state)
    return run_id


def _open_run(c, record: RunRecord, start: dict, uri: str, look_first: bool = True) -> str:
    """The record's MLflow run: the existing one it continues, the one an earlier upload
    created (looked for unless ``look_first`` is False: no upload was tried before), or a new
    one (params, tags, parent, start time)."""
    from mlflow.entities import Param, RunTag
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    here = {TAG_RECORD_DIR: str(record.dir.resolve()), TAG_HOST: start["host"], TAG_PID: str(start["pid"]),
            TAG_PID_START: str(start.get("pid_start") or "")}
    if start.get("run_id"):  # continues an existing run (a resumed study's parent run), in this process
        c.update_run(start["run_id"], status="RUNNING")
        c.log_batch(start["run_id"], tags=[RunTag(k, v) for k, v in here.items()])
        return start["run_id"]
    exp_id = experiment_id(uri, start["experiment"], c)
    found = look_first and c.search_runs([exp_id], max_results=1,
                                         filter_string=f"tags.`{TAG_RECORD_ID}` = '{start['record_id']}'")
    if found:
        return found[0].info.run_id
    tags = {MLFLOW_RUN_NAME: start["run_name"], **start["tags"], TAG_RECORD_ID: start["record_id"], **here}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    parent = _parent_run_id(start, uri)
    if parent:
        tags[MLFLOW_PARENT_RUN_ID] = parent
    run_id = c.create_run(exp_id, start_time=start["time"], tags=tags, run_name=start["run_name"]).info.run_id
    params = [Param(k, v[:6000]) for k, v in start["params"].items()]
    for i in range(0, len(params), 100):
        c.log_batch(run_id, params=params[i:i + 100])
    return run_id


def _parent_run_id(start: dict, uri: str) -> str | None:
    if start.get("parent_run_id"):
        return start["parent_run_id"]
    if not start.get("parent_record"):
        return None
    parent = RunRecord(Path(start["parent_record"]))
    if not parent.events():
        return None  # the parent's record is gone: the run is uploaded on its own
    state = parent.state()
    return state["run_id"] if state.get("uri") == uri and state.get("run_id") else upload(parent, uri)


def _apply(c, record: RunRecord, run_id: str, events: list[dict], i: int) -> int:
    """Apply events[i] (with the metrics and tags events that follow it, batched); returns
    how many events were applied."""
    from mlflow.entities import Metric, Param, RunTag

    ev = events[i]
    kind = ev["event"]
    if kind in ("metrics", "tags", "params"):
        metrics, tags, params, n = [], [], [], 0
        while i + n < len(events) and events[i + n]["event"] in ("metrics", "tags", "params"):
            e = events[i + n]
            rows = e.get("rows", [])
            if metrics and len(metrics) + len(rows) > MAX_BATCH:
                break
            metrics += [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in rows]
            tags += [RunTag(k, str(v)[:5000]) for k, v in e.get("tags", {}).items()]
            params += [Param(k, str(v)[:6000]) for k, v in e.get("params", {}).items()]
            n += 1
        for j in range(0, max(len(metrics), 1), MAX_BATCH):
            c.log_batch(run_id, metrics=metrics[j:j + MAX_BATCH], tags=tags if j == 0 else [],
                        params=params if j == 0 else [])
        return n
    if kind == "dataset":
        _log_dataset(c, run_id, ev)
    elif kind == "artifact":
        folder = Path(ev["name"]).parent.as_posix()
        c.log_artifact(run_id, str(record.dir / ARTIFACTS / ev["name"]), None if folder == "." else folder)
    elif kind == "end":
        c.set_terminated(run_id, ev["status"], end_time=ev["time"])
    elif kind == "resume":
        _resume(c, run_id, ev)
    return 1


def _resume(c, run_id: str, ev: dict) -> None:
    """The run is RUNNING again, owned by the resuming process; what said it had ended (and how)
    goes."""
    from mlflow.entities import RunTag

    c.update_run(run_id, status="RUNNING")
    c.log_batch(run_id, tags=[RunTag(TAG_HOST, ev["host"]), RunTag(TAG_PID, str(ev["pid"])),
                              RunTag(TAG_PID_START, str(ev.get("pid_start") or ""))])
    stale = set(c.get_run(run_id).data.tags) & {TAG_ERROR, TAG_REAPED, TAG_STATUS}
    for tag in stale:
        c.delete_tag(run_id, tag)


def _log_dataset(c, run_id: str, ev: dict) -> None:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    ds = Dataset(name=ev["name"], digest=ev["digest"], source_type=ev["source_type"], source=ev["source"],
                 profile=json.dumps(ev["profile"]))
    inputs = [DatasetInput(ds, tags=[InputTag("mlflow.data.context", "training")])]
    for attempt in range(3):  # parallel jobs logging one new dataset at once race on its row
        try:
            c.log_inputs(run_id, datasets=inputs)
            break
        except Exception:
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))
    if not ev.get("tagged"):  # a record written before the tag went into its own tags event
        c.set_tag(run_id, TAG_DATASET_SHA256, ev["profile"]["sha256"])

