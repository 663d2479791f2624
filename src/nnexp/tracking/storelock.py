"""An inter-process lock beside a SQLite database file.

SQLite has no row locks, and its first use creates tables in several transactions: two
processes that pop the same waiting Optuna trial, or create a fresh MLflow store at the same
moment, race. Holding this lock around those short critical sections serialises them across
processes on one machine (the only place a SQLite file can be shared safely). Other stores
(PostgreSQL, an HTTP tracking server) have their own locking: the lock is then a no-op.
"""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Iterator


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URL (None for any other URL or in-memory)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path).expanduser()


def absolute_url(url: str) -> str:
    """``sqlite:///relative.db`` as ``sqlite:////abs/relative.db`` (the same file from any
    working directory); any other URL unchanged."""
    db = sqlite_path(url)
    if db is None or db.is_absolute():
        return url
    query = url.split("?", 1)[1] if "?" in url else ""
    return f"sqlite:///{db.resolve()}" + (f"?{query}" if query else "")


@contextlib.contextmanager
def sqlite_lock(url: str) -> Iterator[None]:
    """Hold an exclusive lock on ``DB.lock`` while inside (no-op unless ``url`` is a SQLite file)."""
    db = sqlite_path(url)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
