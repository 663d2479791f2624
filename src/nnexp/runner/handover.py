"""Handing members of a population to an idle worker, so that neither core idles.

A sweep's populations rarely end together: three runs on two cores train as a population of
two in the launching process and one in the worker, and the worker idles for the last third
(measured on ``-m eta=0.025,0.25,2.5``: 6.3 s of 17 s). When a worker of the pool is idle, the
launching process's population hands half of its members (those with two epochs or more left)
over at an epoch's boundary (``train.fit_population(release=...)``). Each goes on in the worker
from its state there (``MemberState``, as a checkpoint holds it), with the others handed over
at once, exactly as it would have trained here, as the same run: the launching process releases
its record (``RunRecord.release``) and the worker claims it, then logs, checkpoints and ends it
(``execute.continue_runs``). If the worker fails, the launching process claims the runs back
and trains them on itself, from the states it handed over.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from nnexp.runner.job import Job
from nnexp.train.checkpoint import MemberState

log = logging.getLogger("nnexp.population")

MIN_EPOCHS_LEFT = 2  # a member with fewer epochs left finishes where it is
MIN_SECONDS_LEFT = 0.5  # ... or less training time (at the last epoch's pace): a hand-over costs ~0.1 s

#: per run handed over: its job, its state, its record's directory (None: untracked)
Handed = tuple[Job, MemberState, "str | None"]


class Spare(Protocol):
    """A worker pool's spare capacity, as the launching process's own task sees it
    (``runner.pool.WorkerPool.run(..., lend=True)``)."""

    def idle(self) -> bool:
        """A worker has nothing to do (no task waits for one)."""

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Future:
        """``fn(arg)`` on an idle worker."""


def eligible(job: Job) -> bool:
    """A run that can go on in another process: nothing of its own that lives in this one."""
    return not job.observers and job.on_start is None and job.fit is None


@dataclass
class HandOver:
    """One population's hand-overs (``release`` and ``released`` for ``fit_population``), and
    the results of the runs handed over (``collect``). ``detach(member)``: this process stops
    tracking the member's run and releases its record; returns the record's directory (None
    untracked). ``continue_runs(handed)``: trains runs handed over (in a worker, or here)."""

    jobs: list[Job]
    spare: Spare
    detach: Callable[[int], str | None]
    continue_runs: Callable[[Sequence[Handed]], list]
    handed: dict[int, Handed] = field(default_factory=dict)
    futures: list[tuple[list[int], Future]] = field(default_factory=list)
    _batch: list[int] = field(default_factory=list)

    def release(self, left: dict[int, int], epoch_seconds: float) -> list[int]:
        """Half of the members training (those with the most epochs left, at least
        ``MIN_EPOCHS_LEFT`` and ``MIN_SECONDS_LEFT`` of training), when a worker is idle."""
        if not self.spare.idle():
            return []
        worth = [i for i, n in left.items()
                 if n >= MIN_EPOCHS_LEFT and n * epoch_seconds >= MIN_SECONDS_LEFT and eligible(self.jobs[i])]
        candidates = sorted(worth, key=lambda i: (-left[i], i))
        self._batch = candidates[:len(left) // 2]
        if self._batch:
            log.info("a worker is idle: %d of %d runs go on there (%s)", len(self._batch), len(left),
                     ", ".join(f"eta={self.jobs[i].config.eta:g} seed={self.jobs[i].config.seed}"
                               for i in self._batch))
        return list(self._batch)

    def released(self, i: int, state: MemberState) -> None:
        self.handed[i] = (self.jobs[i], state, self.detach(i))
        if all(k in self.handed for k in self._batch):  # the batch's last member: one task for them all
            batch, self._batch = self._batch, []
            self.futures.append((batch, self.spare.submit(self.continue_runs, [self.handed[k] for k in batch])))

    def collect(self) -> dict[int, Any]:
        """Each run handed over: its RunResult, from its worker or, if the worker failed, from
        this process, which claims the run back and trains it from the state it handed over."""
        out = {}
        for batch, future in self.futures:
            try:
                results = future.result()
            except Exception as exc:  # noqa: BLE001 - the worker died or failed: the runs go on here
                log.warning("the worker given %d run(s) failed (%s): they go on in this process", len(batch),
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                results = self.continue_runs([self.handed[k] for k in batch])
            out.update(zip(batch, results))
        return out
