"""A member's checkpoint: everything its training needs to go on exactly as if it had never
stopped, written at each evaluation (``_Loop``) and read back to resume.

What the loop's next step depends on, and nothing else: the parameters (weights and biases,
the momentum velocities, the best parameters kept for early stopping's restore), the current
eta of its schedule and the plateau counters, the history so far (every evaluation's record),
its random streams (the data order's, dropout's and the validation sample's generators) and
where in the epochs it stands. With these, the resumed run's every later number is computed
from the same inputs by the same arithmetic (a population member's numbers never depend on
the others: ``engine.stepper``), so it is bit-for-bit the uninterrupted run's.

One ``.npz`` file per member: the arrays, and the rest as one JSON string (the generators'
states are integers, every float round-trips through JSON's shortest repr). Never pickle.
Written to a temporary name and renamed, so the file on disk is always a whole checkpoint;
only the latest is kept.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from nnexp.train.spec import History, Record, Streams

FORMAT = 1
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

    def restore_streams(self, streams: Streams) -> None:
        for name in STREAMS:
            getattr(streams, name).bit_generator.state = self.streams[name]


def stream_states(streams: Streams) -> dict[str, dict]:
    return {name: getattr(streams, name).bit_generator.state for name in STREAMS}


def _arrays(prefix: str, arrays) -> dict[str, np.ndarray]:
    return {f"{prefix}{l}": a for l, a in enumerate(arrays)}


def save(path: Path, state: MemberState) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, then rename)."""
    h = state.history
    meta = {"format": FORMAT, "identity": state.identity, "position": asdict(state.position), "eta": state.eta,
            "since_best": state.since_best, "since_best_sched": state.since_best_sched, "finished": state.finished,
            "streams": state.streams, "epoch_shuffle": state.epoch_shuffle, "layers": len(state.weights),
            "velocities": state.velocities is not None, "best_params": state.best_params is not None,
            "history": {"records": [{k: _plain(v) for k, v in asdict(r).items()} for r in h.records],
                        "outcome": h.outcome, "reason": h.reason,
                        "best_validation_accuracy": _plain(h.best_validation_accuracy),
                        "best_epoch": _plain(h.best_epoch), "train_seconds": h.train_seconds}}
    arrays = {**_arrays("w", state.weights), **_arrays("b", state.biases)}
    if state.velocities is not None:
        arrays.update({**_arrays("vw", state.velocities[0]), **_arrays("vb", state.velocities[1])})
    if state.best_params is not None:
        arrays.update({**_arrays("bw", state.best_params[0]), **_arrays("bb", state.best_params[1])})
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)


def _plain(v):
    """A JSON-ready scalar: NumPy scalars become Python's (float32 values exactly)."""
    return v.item() if isinstance(v, np.generic) else v


def load(path: Path, identity: str) -> MemberState:
    """The checkpoint at ``path``; CheckpointError if it is damaged or another run's
    (FileNotFoundError if there is none)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            n = meta["layers"]

            def layers(prefix):
                return [f[f"{prefix}{l}"] for l in range(n)]

            weights, biases = layers("w"), layers("b")
            velocities = (layers("vw"), layers("vb")) if meta["velocities"] else None
            best = (layers("bw"), layers("bb")) if meta["best_params"] else None
    except FileNotFoundError:
        raise
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"checkpoint {path} is damaged ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')}, this nnexp reads {FORMAT}")
    if meta["identity"] != identity:
        raise CheckpointError(f"checkpoint {path} belongs to another configuration ({meta['identity']})")
    h = meta["history"]
    names = {f.name for f in fields(Record)}
    history = History(records=[Record(**{k: v for k, v in r.items() if k in names}) for r in h["records"]],
                      outcome=h["outcome"], reason=h["reason"], best_validation_accuracy=h["best_validation_accuracy"],
                      best_epoch=h["best_epoch"], train_seconds=h["train_seconds"])
    return MemberState(position=Position(**meta["position"]), weights=weights, biases=biases, velocities=velocities,
                       best_params=best, eta=meta["eta"], since_best=meta["since_best"],
                       since_best_sched=meta["since_best_sched"], history=history, streams=meta["streams"],
                       epoch_shuffle=meta["epoch_shuffle"], finished=meta["finished"], identity=meta["identity"])
