"""Resuming: which earlier run a job is, and where it stopped.

"The same run" is the same configuration (its config hash, the seed included) tracked to the
same store and experiment, from the same entry point (a plain run or sweep, a study's stage,
the report), within this working directory. ``outputs/resume/KEY.json`` names the record of the
latest run of each; the run's checkpoint (``train.checkpoint``) lies beside that record.

Re-running a command then goes on with every run it finds unfinished (KILLED, FAILED, or
RUNNING with its process gone) from its checkpoint, as the same MLflow run; a run that ended
is not trained again. A checkpoint that cannot be read is reported in one line and the run
trains again from the start, in its same record: since every number is a function of the
configuration, the evaluations it already logged come out the same and are not logged twice.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from nnexp import tracking
from nnexp.config.identity import config_hash, identity_hash
from nnexp.config.names import TAG_STAGE, TAG_STUDY
from nnexp.runner.job import Job
from nnexp.tracking.record import RunRecord
from nnexp.train.checkpoint import CheckpointError, MemberState, Writer, load, states

log = logging.getLogger("nnexp.run")

CHECKPOINT = "checkpoint.bin"  # in the record directory, beside events.jsonl (and its history)


def index_dir() -> Path:
    return Path("outputs", "resume")


def identity(job: Job) -> str:
    return job.identity or config_hash(job.config)


def resume_key(job: Job) -> str:
    """The key of "the same run" (see the module's docstring)."""
    t = job.config.tracking
    return identity_hash({"config": identity(job), "uri": tracking.resolve_uri(t.uri), "experiment": t.experiment,
                          "preset": job.experiment or "", "study": job.tags.get(TAG_STUDY), "stage": job.tags.get(TAG_STAGE)})


def checkpointed(job: Job) -> bool:
    """Whether this job keeps checkpoints (tracked, and not turned off)."""
    return job.fit is None and job.config.tracking.enabled and job.config.tracking.checkpoint


@dataclass
class Earlier:
    """The run a job continues: its record, and the state to go on from (None: from the start;
    ``state.finished``: it ended and is not trained again), or the state of a run handed over."""

    record: RunRecord | None  # None: an untracked run handed over
    state: MemberState | None
    handed: bool = False  # handed over by a process still training (runner.handover), not resumed

    @property
    def finished(self) -> bool:
        """It trained to its end (its record may not say so yet: its process died before)."""
        return self.state is not None and self.state.finished

    @property
    def position(self) -> tuple[int, int]:
        """Where it goes on (epoch, offset); runs at the same position train together."""
        return (0, 0) if self.state is None else (self.state.position.epoch, self.state.position.offset)

    def where(self) -> str:
        if self.state is None:
            return "the start (no usable checkpoint)"
        r = self.state.history.records
        return f"epoch {r[-1].epoch:g} ({r[-1].images_seen} images)" if r else "the start"


def find(job: Job) -> Earlier | None:
    """The earlier run this job is, if it should go on with it (see the module's docstring)."""
    if not (checkpointed(job) and job.config.tracking.resume):
        return None
    record = recall(resume_key(job))
    if record is None:
        return None
    status = record.end_status()
    if status is None and record.owner_alive():
        log.warning("run %s is being trained by process %s: this one starts a new run",
                    record.start.get("run_name"), record.owner().get("pid"))
        return None
    if status == "FINISHED":  # nothing to go on with: read, not claimed
        state = _state(record, job)
        return Earlier(record, state) if state is not None and state.finished else None
    state = _state(record, job)
    if state is not None and state.finished:
        where = "its end"
    else:
        where = Earlier(record, state).where()
    if not record.claim(where):  # another process took it meanwhile (or this one, for a twin job)
        return None
    return Earlier(record, state)


def common_position(jobs: list[Job], earlier: list[Earlier | None], whole: bool = True) -> list[Earlier | None]:
    """A population resumes whole: each member goes on from the newest position every member
    has a checkpoint at. A process killed between the members' saves leaves some a round
    ahead; they go on from their previous slot (its history is cut to match), so the members
    train on as one population, not as parts one after another. With no common position (or a
    member with none): with ``whole`` (a controlled population, e.g. population-based training,
    whose controller must see every member), every member trains again from the start, in its
    record; without, each goes on from its own checkpoint. Members that ended are left alone."""
    live = [i for i, e in enumerate(earlier) if e is not None and not e.finished]
    if not live:
        return earlier
    options: dict[int, dict[tuple[int, int], MemberState]] = {}
    for i in live:
        found = states(earlier[i].record.dir / CHECKPOINT, identity(jobs[i])) if earlier[i].state is not None else []
        options[i] = {(s.position.epoch, s.position.offset): s for s in found if not s.finished}
    fresh = len(live) < sum(e is None or not e.finished for e in earlier)  # a member starts afresh: all do
    common = set.intersection(*(set(o) for o in options.values())) if not fresh else set()
    at = max(common, default=None)
    if at is None and not whole:
        return earlier
    out = list(earlier)
    for i in live:
        out[i] = Earlier(earlier[i].record, options[i].get(at) if at is not None else None)
        if at is not None and earlier[i].state is not None and earlier[i].state.position != out[i].state.position:
            log.info("%s: goes on from its previous checkpoint, where the whole population stands",
                     earlier[i].record.start.get("run_name"))
    return out


def _state(record: RunRecord, job: Job) -> MemberState | None:
    """The run's checkpoint, or None (none, or unusable: said in one line)."""
    try:
        state = load(record.dir / CHECKPOINT, identity(job))
        if state.note:
            log.warning("%s (%s)", state.note, record.start.get("run_name"))
    except FileNotFoundError:
        state = None
    except CheckpointError as exc:
        log.warning("%s; the run (%s) trains again from the start", exc, record.start.get("run_name"))
        state = None
    return state


def remember(job: Job, record: RunRecord) -> None:
    """This job's run is ``record`` from now on."""
    remember_record(resume_key(job), record, config_hash=identity(job), seed=job.config.seed)


def remember_record(key: str, record: RunRecord, **about) -> None:
    """The run of ``key`` is ``record`` from now on (atomically: a reader sees the old or the new)."""
    index_dir().mkdir(parents=True, exist_ok=True)
    path = index_dir() / f"{key}.json"
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"record": str(record.dir.resolve()), **about}))
    os.replace(tmp, path)


def recall(key: str) -> RunRecord | None:
    """The record of the latest run of ``key`` in this directory, if it is still there."""
    try:
        record = RunRecord(Path(json.loads((index_dir() / f"{key}.json").read_text())["record"]))
    except (OSError, ValueError, KeyError):
        return None
    return record if record.events() else None


def sweep_key(overrides: list[str], uri: str | None, experiment: str) -> str:
    """A sweep's "same sweep": its command line's overrides, store and experiment."""
    return identity_hash({"sweep": sorted(overrides), "uri": tracking.resolve_uri(uri), "experiment": experiment})


class Saver:
    """The training loop's checkpoint function for one run: its state beside its record, and
    the seconds that took (``seconds``: what checkpoints cost the run)."""

    def __init__(self, job: Job, record: RunRecord, read: MemberState | None = None) -> None:
        """``read``: the state the run resumed from (its slot is never written over first)."""
        self.writer = Writer(record.dir / CHECKPOINT, read.slot if read is not None else None)
        self.identity, self.seconds = identity(job), 0.0

    def __call__(self, state: MemberState) -> None:
        t0 = time.perf_counter()
        state.identity = self.identity
        self.writer.save(state)
        self.seconds += time.perf_counter() - t0
