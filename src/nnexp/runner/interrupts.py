"""Ctrl-C and SIGTERM during a run: caught from before its record exists, held back while a
store write is in progress, so an interrupted run always ends recorded as KILLED."""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager

log = logging.getLogger("nnexp.run")


class Terminated(KeyboardInterrupt):
    """SIGTERM received: ends the run like Ctrl-C, recorded as KILLED (a KeyboardInterrupt, so
    that libraries that clean up after Ctrl-C, e.g. Optuna failing the running trial, do so too)."""


INTERRUPTIONS = (KeyboardInterrupt, Terminated)


class Interrupts:
    """SIGTERM -> ``Terminated`` and Ctrl-C -> ``KeyboardInterrupt`` in the main thread.

    Inside ``deferred()`` (the store writes) an interruption waits until the write is done,
    so it never cuts a database transaction in half. Only the first interruption raises: a
    second one while the run is being recorded is ignored."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.depth = 0
        self.pending: int | None = None
        self.raised = False
        self.previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False

    def _raise(self, signum: int):
        self.raised = True
        raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()

    def _handler(self, signum, frame):
        if self.raised:
            log.warning("interrupted again: still recording the interrupted run")
        elif self.depth:
            self.pending = signum
        else:
            self._raise(signum)

    @contextmanager
    def deferred(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None and not self.raised:
                self._raise(self.pending)

    def guard(self, observer):
        """The observer with its store writes deferred-interruptible."""
        def guarded(record, net=None):
            with self.deferred():
                return observer(record, net)
        return guarded


@contextmanager
def interruptions_deferred():
    """Hold Ctrl-C and SIGTERM back over a store write, under whichever ``Interrupts`` handles
    them in this process (the one installed last); without one, nothing to hold back."""
    active = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    if not isinstance(active, Interrupts):
        yield
        return
    with active.deferred():
        yield
