"""A run's local record: everything needed to rebuild its MLflow run, written as it trains.

The record lives in the run's own output directory (``DIR/record/``; ``record-ID/`` when
two runs share the directory) and is written before
any store is touched, so a run is never lost when the store is slow, down, or the process is
killed::

    record/events.jsonl   append-only, one JSON event per line, flushed at each evaluation
    record/artifacts/     the run's artifacts (config.yaml, history.csv, model.npz, ...)
    record/store.json     how far the record has been uploaded (rewritten atomically)

Events, in order: ``start`` (record id, experiment, run name, params, tags, parent, host, pid,
start time), then any of ``metrics`` ([key, value, timestamp ms, step] rows), ``tags``,
``dataset``, ``artifact``, and last ``end`` (MLflow status, end time); a resumed run
goes on after its ``end`` (or its last line) with ``resume`` (this process, from where). A line cut short by a
killed process is ignored on reading. Plain JSON: never pickle.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from nnexp.config.names import TAG_REAPED
from nnexp.tracking.storelock import absolute_url

EVENTS, ARTIFACTS, STATE = "events.jsonl", "artifacts", "store.json"


def now_ms() -> int:
    return int(time.time() * 1000)


def process_start(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (clock ticks since boot), or None if gone or
    dead (a zombie: killed, not yet reaped by its parent): with the pid, it tells a live process
    from a new one that reused the pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # fields[0]: the state; a zombie writes nothing
        return None
    return fields[19]


def this_process() -> dict[str, Any]:
    """Who writes a record: host, pid, the pid's start time, and the SLURM job if any (a requeued
    job runs again, possibly on another node, under the same job id)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start(os.getpid()),
            "slurm_job": os.environ.get("SLURM_JOB_ID")}


def process_alive(pid: int, pid_start: str | None) -> bool:
    start = process_start(pid)
    return start is not None and (pid_start is None or start == pid_start)


@dataclass
class RunRecord:
    """Writes and reads one record directory (``DIR/record``)."""

    dir: Path

    @classmethod
    def create(cls, run_dir: Path | str, *, uri: str, experiment: str, run_name: str, params: dict[str, str],
               tags: dict[str, str], parent_run_id: str | None = None, parent_record: str | None = None,
               run_id: str | None = None) -> "RunRecord":
        """A new record in ``run_dir/record`` (``record-ID`` if another run has that one). ``run_id``:
        an existing MLflow run this record continues (e.g. a resumed study's parent run)."""
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        for name in ("record", *(f"record-{uuid.uuid4().hex[:8]}" for _ in range(100))):
            try:  # atomic: runs started in the same second share Hydra's output directory
                (Path(run_dir) / name).mkdir()
                break
            except FileExistsError:
                continue
        rec = cls(Path(run_dir) / name)
        (rec.dir / ARTIFACTS).mkdir()
        rec._append({"event": "start", "record_id": uuid.uuid4().hex, "uri": absolute_url(uri), "experiment": experiment,
                     "run_name": run_name, "params": params, "tags": tags, "parent_run_id": parent_run_id,
                     "parent_record": parent_record, "run_id": run_id, "time": now_ms(), **this_process()})
        return rec

    @property
    def events_path(self) -> Path:
        return self.dir / EVENTS

    # -- writing ---------------------------------------------------------------------------
    def _append(self, event: dict) -> None:
        with open(self.events_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event, separators=(",", ":"), allow_nan=True) + "\n")

    def metrics(self, rows: list[tuple[str, float, int, int]]) -> None:
        """[(key, value, timestamp ms, step)]: one line, flushed (an evaluation's metrics)."""
        if rows:
            self._append({"event": "metrics", "rows": [list(r) for r in rows]})

    def tags(self, tags: dict[str, str]) -> None:
        self._append({"event": "tags", "tags": tags})

    def params(self, params: dict[str, str]) -> None:
        self._append({"event": "params", "params": params})

    def dataset(self, dataset: dict[str, Any]) -> None:
        self._append({"event": "dataset", **dataset})

    def artifact(self, name: str, content: bytes | str) -> None:
        """An artifact file; ``name`` may hold directories (``plots/a.png``)."""
        path = self.dir / ARTIFACTS / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        self._append({"event": "artifact", "name": name})

    def artifact_dir(self, source: Path) -> None:
        """Every file of ``source`` (e.g. a study's outputs) as artifacts, directories kept."""
        for path in sorted(p for p in Path(source).rglob("*") if p.is_file()):
            self.artifact(path.relative_to(source).as_posix(), path.read_bytes())

    def end(self, status: str) -> None:
        """The last event: the MLflow status (FINISHED, FAILED, KILLED)."""
        self._append({"event": "end", "status": status, "time": now_ms()})

    def claim(self, where: str, handover: bool = False) -> bool:
        """The run goes on in this process (after an ``end`` KILLED or FAILED, a ``release``, or
        none if its process died): a ``resume`` event makes this process its owner, and the
        MLflow run RUNNING again. Decided and written under the record's lock (a reaper ending it
        KILLED, another process resuming it, waits); False if a live process owns it.
        ``handover``: it was released to this process (not a resume: ``resumes`` skips it)."""
        with self.uploading():
            if not self.ended() and self.owner_alive():
                return False
            self.reopen(where, handover)
            return True

    def reopen(self, where: str, handover: bool = False) -> None:
        """Append the ``resume`` event (for a caller holding ``uploading``: see ``claim``)."""
        self.mend()
        self._append({"event": "resume", "from": where, "handover": handover, "time": now_ms(), **this_process()})

    def release(self, to: str) -> None:
        """This process stops writing the run, which goes on ``to`` (e.g. an idle worker): it
        has no owner until a process claims it (``claim``)."""
        with self.uploading():
            self._append({"event": "release", "to": to, "time": now_ms(), **this_process()})

    # -- reading ---------------------------------------------------------------------------
    def events(self) -> list[dict]:
        """Every complete event (a last line cut short by a killed process is skipped)."""
        out = []
        try:
            lines = self.events_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return out

    @property
    def start(self) -> dict:
        return self.events()[0]

    def ended(self) -> bool:
        ev = self.events()
        return bool(ev) and ev[-1]["event"] == "end"

    def reaped(self) -> bool:
        """Ended KILLED by another process that found its owner gone (``reap_dead_runs``), not by
        its owner: the tags of its last stretch (since its start or resume) say so."""
        ev = self.events()
        since = max((i for i, e in enumerate(ev) if e["event"] in ("start", "resume")), default=0)
        return self.ended() and any(e["event"] == "tags" and TAG_REAPED in e["tags"] for e in ev[since:])

    def end_status(self) -> str | None:
        """The MLflow status the record ended with (None while it has not ended)."""
        ev = self.events()
        return ev[-1]["status"] if ev and ev[-1]["event"] == "end" else None

    def owner(self) -> dict:
        """The process that writes the record now: the last to start or resume it (or, the last
        event being a ``release``, the process that released it, which writes it no more)."""
        return [e for e in self.events() if e["event"] in ("start", "resume", "release")][-1]

    def owner_alive(self) -> bool:
        """Whether the record's owner still runs: on this host, its process; on another, it is
        taken to, unless it was an earlier run of this very SLURM job (requeued: that one ended)."""
        o = self.owner()
        if o["event"] == "release":  # handed over, not claimed yet: nobody writes it
            return False
        if o.get("host") == socket.gethostname():
            return process_alive(int(o["pid"]), o.get("pid_start"))
        job = os.environ.get("SLURM_JOB_ID")
        return not (job and o.get("slurm_job") == job)

    def mend(self) -> None:
        """Cut a last line left half-written by a killed process, before another process appends
        (an event after it would be unreadable: reading stops at the first bad line)."""
        try:
            with open(self.events_path, "rb+") as f:
                size = f.seek(0, os.SEEK_END)
                if size == 0:
                    return
                f.seek(size - 1)
                if f.read(1) == b"\n":
                    return
                start = max(0, size - (1 << 20))
                f.seek(start)
                tail = f.read()
                f.truncate(start + tail.rfind(b"\n") + 1)
        except FileNotFoundError:
            return

    def last_step(self) -> int | None:
        """The largest step of the metrics recorded so far (None: no metric yet)."""
        steps = [row[3] for e in self.events() if e["event"] == "metrics" for row in e["rows"]]
        return max(steps) if steps else None

    def resumes(self) -> int:
        return sum(e["event"] == "resume" and not e.get("handover") for e in self.events())

    def state(self) -> dict:
        """The upload state: {"run_id": MLflow id, "uri": store, "done": events applied}."""
        try:
            return json.loads((self.dir / STATE).read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def save_state(self, state: dict) -> None:
        tmp = self.dir / (STATE + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.dir / STATE)

    def run_id(self) -> str | None:
        """The MLflow run id in the record's own store, once it exists there."""
        state = self.state()
        return state.get("run_id") if state.get("uri") == self.start["uri"] else None

    @contextlib.contextmanager
    def uploading(self) -> Iterator[None]:
        """Held while the record is uploaded: one uploader at a time across processes (a sweep
        job may upload its parent's record while the launching process does)."""
        with open(self.dir / "upload.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def uploaded(self) -> bool:
        """Every event so far is in the store."""
        return self.state().get("done", 0) >= len(self.events()) > 0


def find_records(paths: list[Path]) -> Iterator[RunRecord]:
    """Every record under ``paths`` (directories searched recursively)."""
    for root in paths:
        root = Path(root)
        if (root / EVENTS).is_file():
            yield RunRecord(root)
            continue
        for events in sorted(root.rglob(f"record*/{EVENTS}")):
            yield RunRecord(events.parent)
