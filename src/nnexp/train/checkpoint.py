"""A member's checkpoint: everything its training needs to go on exactly as if it had never
stopped, written at each evaluation (``_Loop``) and read back to resume.

What the loop's next step depends on, and nothing else: the parameters (weights and biases,
the momentum velocities, the best parameters kept for early stopping's restore), the current
eta of its schedule and the plateau counters, the history so far (every evaluation's record),
its random streams (the data order's, dropout's and the validation sample's generators) and
where in the epochs it stands. With these, the resumed run's every later number is computed
from the same inputs by the same arithmetic (a population member's numbers never depend on
the others: ``engine.stepper``), so it is bit-for-bit the uninterrupted run's. (A population
under a controller, population-based training, does depend on its members' scores: it resumes
exactly when resumed whole, as it stopped.)

Neither file is pickled. The state: a header line, a JSON line (the scalars, the generators'
states, every array's dtype, shape and order, a sequence number, an Adler-32 checksum) and the
arrays' raw bytes. It is written in place, alternately into two slots (``checkpoint-a.bin``,
``checkpoint-b.bin``): overwriting a file's blocks costs 0.02 ms where writing a new file and
renaming it over the old costs 0.3 ms (ext4, 220 kB; the rename frees and allocates blocks),
and a process killed mid-write leaves the other slot whole: the newest whole slot is read.
The history: ``checkpoint-history.jsonl``, one JSON line per evaluation, appended as they come
(a run's history grows by one record an evaluation: rewriting it whole each time would cost
O(n^2) over a run); a state says how many of its lines are its own. Every float round-trips
exactly through JSON.
"""

from __future__ import annotations

import copy
import json
import os
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from nnexp.train.spec import History, Record, Streams

STREAMS = ("shuffle", "dropout", "monitor")  # the init stream is spent once the network exists


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (corrupt, half-written, another run's)."""


@dataclass
class Position:
    """Where the epochs stand: continue ``epoch`` at mini-batch offset ``offset`` (0: at its
    start, with a new permutation). A checkpoint taken mid-epoch (monitoring every k images)
    keeps the shuffle state from before that epoch's permutation, to draw the same one again."""

    epoch: int
    offset: int
    images_seen: int
    next_eval: int


@dataclass
class MemberState:
    position: Position
    weights: list[np.ndarray]  # (n_in, n_out) per layer
    biases: list[np.ndarray]  # (n_out,) per layer
    velocities: tuple[list[np.ndarray], list[np.ndarray]] | None  # momentum's, eq. (107)
    best_params: tuple[list[np.ndarray], list[np.ndarray]] | None  # kept for restore_best
    eta: float  # the schedule's current learning rate
    since_best: int  # evaluations since the best validation accuracy (early stopping)
    since_best_sched: int  # ... since the schedule last acted (halve on plateau)
    history: History
    streams: dict[str, dict]  # generator states by stream name
    epoch_shuffle: dict | None  # shuffle state before this epoch's permutation (offset > 0)
    finished: bool = False  # the run's end (its final parameters, after any restore)
    identity: str = ""  # the run's config hash: a checkpoint is never applied to another run
    note: str = ""  # how it was read, when not plainly (a damaged newer slot passed over)
    slot: Path | None = None  # the file it was read from
    lmbda: float | None = None  # the current lambda (a piecewise schedule changes it)
    next_point: int = 0  # the first point of a piecewise schedule not yet applied

    def copy(self) -> "MemberState":
        """A copy that owns its arrays and history (a state handed to another process)."""
        return copy.deepcopy(self)

    def restore_streams(self, streams: Streams) -> None:
        for name in STREAMS:
            getattr(streams, name).bit_generator.state = self.streams[name]


def stream_states(streams: Streams) -> dict[str, dict]:
    return {name: getattr(streams, name).bit_generator.state for name in STREAMS}


MAGIC = b"NNEXP-CHECKPOINT 3\n"


def _arrays(prefix: str, arrays) -> dict[str, np.ndarray]:
    return {f"{prefix}{l}": a for l, a in enumerate(arrays)}


def _plain(v):
    """A JSON-ready scalar: NumPy scalars become Python's (float32 values exactly)."""
    return v.item() if isinstance(v, np.generic) else v


def history_path(path: Path) -> Path:
    return path.with_name(path.stem + "-history.jsonl")


def slot_paths(path: Path) -> tuple[Path, Path]:
    """The two files the state of ``path`` alternates between."""
    return path.with_name(f"{path.stem}-a{path.suffix}"), path.with_name(f"{path.stem}-b{path.suffix}")


def exists(path: Path) -> bool:
    return any(p.exists() for p in slot_paths(path))


class Writer:
    """Keeps one member's checkpoint at ``path`` (``save``): the state written in place into the
    older of two slots, the history's new records appended (the first save of a process writes
    the history whole)."""

    def __init__(self, path: Path, read: Path | None = None) -> None:
        self.path, self.history, self.read = path, history_path(path), read  # read: the slot resumed from
        self.written: int | None = None  # history records in the file (None: not yet known)
        self.sequence: int | None = None  # the last state's number (None: not yet known)
        self.target = 0  # the slot the next state goes into

    def _history(self, records: list[Record]) -> None:
        def lines(rs):
            return "".join(json.dumps({k: _plain(v) for k, v in asdict(r).items()}) + "\n" for r in rs)

        if self.written is None or self.written > len(records):
            tmp = self.history.with_name(self.history.name + ".tmp")
            tmp.write_text(lines(records))
            os.replace(tmp, self.history)
        elif len(records) > self.written:
            with open(self.history, "a", encoding="utf-8") as f:
                f.write(lines(records[self.written:]))
        self.written = len(records)

    def save(self, state: MemberState) -> None:
        """``state`` into the files: the history first, then the state that counts its records."""
        if self.sequence is None:  # go on after what an earlier process wrote, never over the state it read
            slots = slot_paths(self.path)
            self.sequence = max((_header(p)[0]["sequence"] for p in slots if _readable(p)), default=0)
            try:
                kept = self.read or load(self.path, state.identity).slot
                self.target = 1 - slots.index(kept)
            except (FileNotFoundError, CheckpointError):
                self.target = 0
        self.sequence += 1
        h = state.history
        self._history(h.records)
        meta = {"identity": state.identity, "sequence": self.sequence, "position": asdict(state.position),
                "eta": state.eta, "lmbda": state.lmbda, "next_point": state.next_point,
                "since_best": state.since_best, "since_best_sched": state.since_best_sched,
                "finished": state.finished, "streams": state.streams, "epoch_shuffle": state.epoch_shuffle,
                "layers": len(state.weights), "records": len(h.records), "outcome": h.outcome, "reason": h.reason,
                "best_validation_accuracy": _plain(h.best_validation_accuracy), "best_epoch": _plain(h.best_epoch),
                "train_seconds": h.train_seconds}
        arrays = {**_arrays("w", state.weights), **_arrays("b", state.biases)}
        if state.velocities is not None:
            arrays.update({**_arrays("vw", state.velocities[0]), **_arrays("vb", state.velocities[1])})
        if state.best_params is not None:
            arrays.update({**_arrays("bw", state.best_params[0]), **_arrays("bb", state.best_params[1])})
        table, blobs, check = [], [], 1
        for name, a in arrays.items():
            fortran = a.ndim > 1 and a.flags.f_contiguous and not a.flags.c_contiguous
            blob = memoryview(np.ascontiguousarray(a.T if fortran else a)).cast("B")
            table.append([name, a.dtype.str, list(a.shape), fortran, blob.nbytes])
            blobs.append(blob)
            check = zlib.adler32(blob, check)
        header = json.dumps({"meta": meta, "arrays": table, "adler32": check}).encode() + b"\n"
        slot = slot_paths(self.path)[self.target]
        self.target = 1 - self.target
        with open(slot, "r+b" if slot.exists() else "wb") as f:  # in place: see the module's docstring
            f.write(MAGIC)
            f.write(header)
            for blob in blobs:
                f.write(blob)
            f.truncate()


def sequence(slot: Path) -> int:
    """The number of the state a slot holds (later states have larger numbers)."""
    return _header(slot)[0]["sequence"]


def position(slot: Path) -> tuple[int, int]:
    """Where the state a slot holds goes on: (epoch, offset)."""
    p = _header(slot)[0]["position"]
    return p["epoch"], p["offset"]


def _readable(path: Path) -> bool:
    try:
        _header(path)[0]["sequence"]
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _header(path: Path) -> tuple[dict, int]:
    """A slot's JSON header and where its arrays start (ValueError if it has none)."""
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError("not an nnexp checkpoint")
        line = f.readline()
    if not line.endswith(b"\n"):
        raise ValueError("its header is cut short")
    header = json.loads(line)
    return {**header["meta"], "_arrays": header["arrays"], "_adler32": header["adler32"]}, len(MAGIC) + len(line)


def save(path: Path, state: MemberState) -> None:
    """Write ``state`` to ``path`` (and its history beside it); see ``Writer``."""
    Writer(path).save(state)


def load(path: Path, identity: str) -> MemberState:
    """The newest whole checkpoint of ``path`` (its two slots): CheckpointError if neither can be
    used (damaged, or another run's), FileNotFoundError if there is none. A newest slot that is
    damaged falls back to the other one, said in ``state.note``."""
    found = [p for p in slot_paths(path) if p.exists()]
    if not found:
        raise FileNotFoundError(path)
    ordered, damaged = [], []
    for p in found:
        try:
            ordered.append((_header(p)[0]["sequence"], p))
        except (OSError, KeyError, ValueError, TypeError) as exc:
            damaged.append(f"checkpoint {p} is damaged ({type(exc).__name__}: {exc})")
    notes = list(damaged)
    for _, p in sorted(ordered, reverse=True):
        try:
            state = _load_slot(p, path, identity)
        except CheckpointError as exc:
            notes.append(str(exc))
            continue
        if notes:
            state.note = "; ".join(notes) + "; resumed from the previous checkpoint"
        return state
    raise CheckpointError("; ".join(notes))


def states(path: Path, identity: str) -> list[MemberState]:
    """Every whole slot of the checkpoint ``path``, newest first (the damaged ones left out)."""
    out = []
    for p in slot_paths(path):
        try:
            out.append((_header(p)[0]["sequence"], _load_slot(p, path, identity)))
        except (OSError, KeyError, ValueError, TypeError):
            continue
    return [s for _, s in sorted(out, key=lambda pair: pair[0], reverse=True)]


def _load_slot(path: Path, base: Path, identity: str) -> MemberState:
    """One slot of the checkpoint ``base``."""
    try:
        meta, at = _header(path)
        data = memoryview(path.read_bytes())
        size = sum(row[4] for row in meta["_arrays"])
        payload = data[at:at + size]
        if len(payload) != size:
            raise ValueError(f"{len(payload)} bytes of arrays, its header says {size}")
        if zlib.adler32(payload) != meta["_adler32"]:
            raise ValueError("checksum mismatch")
        arrays, at = {}, 0
        for name, dtype, shape, fortran, nbytes in meta["_arrays"]:
            a = np.frombuffer(payload[at:at + nbytes], dtype=np.dtype(dtype))
            arrays[name] = (a.reshape(shape[::-1]).T if fortran else a.reshape(shape)).copy(order="K")
            at += nbytes
        lines = history_path(base).read_text(encoding="utf-8").splitlines()[:meta["records"]]
        if len(lines) < meta["records"]:
            raise ValueError(f"its history has {len(lines)} of its {meta['records']} records")
        names = {f.name for f in fields(Record)}
        records = [Record(**{k: v for k, v in json.loads(line).items() if k in names}) for line in lines]
    except (OSError, KeyError, ValueError, IndexError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} is damaged ({type(exc).__name__}: {exc})") from None
    if meta["identity"] != identity:
        raise CheckpointError(f"checkpoint {path} belongs to another configuration ({meta['identity']})")
    n = meta["layers"]

    def layers(prefix):
        return [arrays[f"{prefix}{l}"] for l in range(n)]

    history = History(records=records, outcome=meta["outcome"], reason=meta["reason"],
                      best_validation_accuracy=meta["best_validation_accuracy"], best_epoch=meta["best_epoch"],
                      train_seconds=meta["train_seconds"])
    return MemberState(position=Position(**meta["position"]), weights=layers("w"), biases=layers("b"),
                       velocities=(layers("vw"), layers("vb")) if "vw0" in arrays else None,
                       best_params=(layers("bw"), layers("bb")) if "bw0" in arrays else None, eta=meta["eta"],
                       since_best=meta["since_best"], since_best_sched=meta["since_best_sched"], history=history,
                       streams=meta["streams"], epoch_shuffle=meta["epoch_shuffle"], finished=meta["finished"],
                       identity=meta["identity"], lmbda=meta.get("lmbda"), next_point=meta.get("next_point", 0),
                       slot=path)
