"""Where nnexp keeps things on this machine: its cache directory (downloads, decoded datasets,
the empty tracking store new stores are copied from)."""

from __future__ import annotations

import os
from pathlib import Path


def env_path(var: str) -> Path | None:
    """The path in environment variable ``var`` (None if unset or blank)."""
    value = os.environ.get(var, "").strip()
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """``$NNEXP_CACHE_DIR``, else ``$XDG_CACHE_HOME/nnexp``, else ``~/.cache/nnexp`` (not created)."""
    explicit = env_path("NNEXP_CACHE_DIR")
    if explicit is not None:
        return explicit
    xdg = env_path("XDG_CACHE_HOME")
    return (xdg if xdg is not None else Path.home() / ".cache") / "nnexp"
