"""Catching up: opening a store (and ending the runs of this host whose process died), and
uploading the local records that did not reach their store (``python -m nnexp.sync``)."""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from nnexp.config.names import KILLED, TAG_HOST, TAG_PID, TAG_PID_START, TAG_REAPED, TAG_RECORD_DIR, TAG_STATUS
from nnexp.tracking.record import RunRecord, find_records, process_alive
from nnexp.tracking.storelock import absolute_url
from nnexp.tracking.store import client, experiment_id, first_line, redact
from nnexp.tracking.upload import upload

log = logging.getLogger("nnexp.tracking")


def prepare_store(uri: str, experiment: str) -> str | None:
    """Open the store once before jobs start, and end the runs of this host whose process is
    gone (see ``reap_dead_runs``); the experiment id, or None when the store does not answer
    (runs are then kept locally: their uploader says so, once)."""
    try:
        exp_id = experiment_id(uri, experiment)
        reap_dead_runs(uri)
        return exp_id
    except Exception as exc:  # noqa: BLE001 - runs are kept locally; nnexp.sync uploads them
        log.debug("tracking store %s: %s", redact(uri), first_line(exc))
        return None


def reap_dead_runs(uri: str) -> list[str]:
    """End KILLED the runs of this host still RUNNING in the store whose process is gone
    (SIGKILL, out of memory, power loss); their local record, if any, is uploaded first, so
    they keep every metric recorded. Runs of other hosts are left alone. Returns their ids."""
    host = socket.gethostname()
    c = client(uri)
    exps = [e.experiment_id for e in c.search_experiments()]
    if not exps:
        return []
    found = c.search_runs(exps, filter_string=f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{host}'",
                          max_results=10_000)
    reaped = []
    for run in found:
        tags = run.data.tags
        pid = tags.get(TAG_PID, "")
        if not pid.isdigit() or process_alive(int(pid), tags.get(TAG_PID_START)):
            continue
        why = (f"process {pid} on {host} was gone; found {time.strftime('%Y-%m-%d %H:%M:%S')} "
               f"by process {os.getpid()}")
        rec_dir = tags.get(TAG_RECORD_DIR)
        record = RunRecord(Path(rec_dir)) if rec_dir and Path(rec_dir, "events.jsonl").is_file() else None
        if record is not None:
            with record.uploading():  # decided and written whole: a process resuming the run waits
                ended = record.ended() or record.owner_alive()  # (or another process resumed it)
                if not ended:
                    record.mend()
                    record.tags({TAG_STATUS: KILLED, TAG_REAPED: why})
                    record.end("KILLED")
            upload(record, uri)  # what the store did not hear yet
            if ended:
                continue
        else:
            c.set_tag(run.info.run_id, TAG_STATUS, KILLED)
            c.set_tag(run.info.run_id, TAG_REAPED, why)
            c.set_terminated(run.info.run_id, "KILLED")
        log.warning("run %s (%s) was still RUNNING but its %s: ended KILLED", run.info.run_id,
                    run.info.run_name, why)
        reaped.append(run.info.run_id)
    return reaped


@dataclass
class SyncReport:
    uploaded: list[str] = field(default_factory=list)  # record dirs now complete in the store
    current: int = 0  # records that were complete in the store already
    failed: list[tuple[str, str]] = field(default_factory=list)  # (record dir, why)
    seconds: float = 0.0


def sync_records(paths: list[Path], uri: str | None = None) -> SyncReport:
    """Upload every record under ``paths`` not yet (completely) in its store, or in ``uri`` if
    given; parents before their children. A record whose process still runs is uploaded as
    far as it goes (its own uploader finishes it)."""
    t0 = time.perf_counter()
    report = SyncReport()
    records = [r for r in find_records(paths) if r.events()]
    records.sort(key=lambda r: bool(r.start.get("parent_record") or r.start.get("parent_run_id")))
    targets: set[str] = set()
    for record in records:
        target = absolute_url(uri or record.start["uri"])
        targets.add(target)
        state = record.state()
        if state.get("uri") == target and state.get("done", 0) >= len(record.events()):
            report.current += 1
            continue
        try:
            run_id = upload(record, target)
        except Exception as exc:  # noqa: BLE001 - one line per record, the others go on
            report.failed.append((str(record.dir.parent), first_line(exc)))
            continue
        report.uploaded.append(str(record.dir.parent))
        log.info("uploaded %s -> run %s (%s)", record.dir.parent, run_id, redact(target))
    for target in sorted(targets):  # then the runs whose process died: ended KILLED, records and all
        try:
            reap_dead_runs(target)
        except Exception as exc:  # noqa: BLE001 - the store did not answer: reported with the records above
            log.debug("could not reap dead runs in %s: %s", redact(target), exc)
    report.seconds = time.perf_counter() - t0
    return report
