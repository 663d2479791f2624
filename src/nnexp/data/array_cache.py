"""Decoded datasets kept as raw ``.npy`` arrays in the cache (``cache_dir()/arrays/<key>/``) and
read back memory-mapped: a process (a sweep's worker, a study's trial, a test) gets the pixels in
milliseconds instead of decompressing the IDX files or importing sklearn.

The key names what was decoded (the source files' SHA-256s, or the sklearn release), so a
changed source is decoded afresh. A folder appears complete or not at all (written aside, then
renamed); one that cannot be read is decoded again with one warning, and a cache that cannot be
written is only a slower start.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from nnexp.config.paths import cache_dir

logger = logging.getLogger(__name__)

_COMPLETE = "complete"  # written last: the folder's arrays are all there


def cached_arrays(key: str, decode: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays ``decode()`` returns (read-only), from the cache when they were decoded before
    (memory-mapped), else decoded now and kept for the next process."""
    folder = cache_dir() / "arrays" / key
    if (folder / _COMPLETE).exists():
        try:
            # plain read-only arrays over the mapping (not np.memmap: no subclass on every result)
            return {p.stem: np.asarray(np.load(p, mmap_mode="r", allow_pickle=False))
                    for p in sorted(folder.glob("*.npy"))}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring the damaged array cache %s (%s): decoding the dataset again", folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
    arrays = decode()
    _keep(folder, arrays)
    for a in arrays.values():
        a.flags.writeable = False  # as read back: arrays shared through the cache are never written
    return arrays


def _keep(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    except OSError:
        return  # a read-only cache: every process decodes, nothing is lost
    try:
        for name, a in arrays.items():
            np.save(aside / f"{name}.npy", np.ascontiguousarray(a), allow_pickle=False)
        (aside / _COMPLETE).write_text("")
        os.rename(aside, folder)  # atomic; another process may have kept the same arrays first
    except OSError:
        pass
    finally:
        shutil.rmtree(aside, ignore_errors=True)
