"""Where the IDX files of a dataset are found, and whether they are the official ones.

Search order:

1. the ``data_dir`` argument (an error if it lacks the files),
2. ``$NNEXP_DATA_DIR``,
3. :func:`cache_dir`,
4. system copies (Debian's ``dataset-fashion-mnist`` package for Fashion-MNIST),
5. a download from the mirrors into ``cache_dir()/<name>/``.

A directory ``D`` may hold the files as ``D/<name>/<files>`` or ``D/<files>``, gzipped or not.
Local files that do not match the official checksums are used, with a warning, and recorded as
``verified=False``; a file that is another dataset's official file is refused.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from nnexp.config.errors import ChecksumError, DataError, DataNotFoundError
from nnexp.config.paths import cache_dir, env_path
from nnexp.data import catalog
from nnexp.data.catalog import CATALOG, IDX_FILES, SUBDIRS
from nnexp.data.download import fetch
from nnexp.data.splits import DataFile

logger = logging.getLogger(__name__)


def _scan(directory: Path, name: str) -> tuple[dict[str, Path] | None, list[Path]]:
    """Find the four files in ``directory/<name>`` or ``directory``; also return the dirs searched."""
    searched = [directory / sub for sub in SUBDIRS[name]] + [directory]
    for d in searched:
        if not d.is_dir():
            continue
        found = {}
        for key in IDX_FILES:
            for candidate in (d / key, d / key.removesuffix(".gz")):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(IDX_FILES):
            return found, searched
    return None, searched


def _not_found(name: str, target: Path, reason: str) -> str:
    title = CATALOG[name].title
    env = os.environ.get("NNEXP_DATA_DIR", "").strip() or "unset"
    extra = " or `apt-get install dataset-fashion-mnist`," if name == "fashion_mnist" else ""
    return (
        f"{title} is not in NNEXP_DATA_DIR ({env}) or the cache, and the download failed ({reason}): "
        f"set NNEXP_DATA_DIR (or dataset.data_dir=) to a directory with the four IDX files "
        f"({IDX_FILES[0]}, ...),{extra} or connect to the internet to download them into {target}; "
        f"offline, try dataset=digits"
    )


def locate(name: str, data_dir, download: bool, progress: bool) -> tuple[dict[str, Path], Path]:
    """The four files of dataset ``name`` (IDX file name -> path) and the directory they are in."""
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        if not d.is_dir():
            raise DataNotFoundError(f"data_dir {d} does not exist or is not a directory")
        found, searched = _scan(d, name)
        if found is None:
            raise DataNotFoundError(
                f"data_dir {d} does not hold the {CATALOG[name].title} IDX files ({', '.join(IDX_FILES)}); "
                f"looked in {', '.join(str(s) for s in searched)}"
            )
        return found, next(iter(found.values())).parent

    env = env_path("NNEXP_DATA_DIR")
    cache = cache_dir()
    candidates = [env] if env is not None else []
    candidates += [cache, *(Path(p) for p in catalog.SYSTEM_DIRS.get(name, ()))]
    for d in candidates:
        found, _ = _scan(d, name)
        if found is not None:
            return found, next(iter(found.values())).parent
        logger.debug("%s: no complete set of IDX files under %s", name, d)

    target = cache / SUBDIRS[name][0]
    if not download:
        raise DataNotFoundError(_not_found(name, target, "download=False"))
    try:
        found = fetch(name, target, progress=progress)
    except ChecksumError as e:
        raise ChecksumError(
            f"{e}; retry later or set NNEXP_DATA_DIR (or dataset.data_dir=) to a directory holding the IDX files"
        ) from e
    except DataNotFoundError as e:
        raise DataNotFoundError(_not_found(name, target, str(e))) from e
    return found, target


def _hash_file(path: Path) -> tuple[str, str]:
    """(MD5, SHA-256) of the file at ``path``."""
    try:
        with open(path, "rb") as f:
            md5 = hashlib.file_digest(f, lambda: hashlib.md5(usedforsecurity=False))
            f.seek(0)
            sha = hashlib.file_digest(f, "sha256")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    return md5.hexdigest(), sha.hexdigest()


def describe(name: str, paths: Mapping[str, Path]) -> tuple[DataFile, ...]:
    """Hash the local files and check them against the official checksums.

    A file that matches another dataset's (or another file's) official checksum is refused;
    one that matches nothing is accepted with a warning and ``verified=False``.
    """
    hashes = {key: _hash_file(paths[key]) for key in IDX_FILES}
    verified = {key: catalog.CHECKSUMS[name][key].matches(*hashes[key]) for key in IDX_FILES}
    for key in IDX_FILES:
        if verified[key]:
            continue
        for other_name, table in catalog.CHECKSUMS.items():
            for other_key, official in table.items():
                if (other_name, other_key) != (name, key) and official.matches(*hashes[key]):
                    raise DataError(
                        f"{paths[key]} is the official {CATALOG[other_name].title} file {other_key}, not "
                        f"{CATALOG[name].title} {key}: point data_dir / NNEXP_DATA_DIR at a directory holding "
                        f"the {CATALOG[name].title} files"
                    )
    for key in IDX_FILES:
        if not verified[key]:
            logger.warning(
                "%s: %s does not match the official checksum (sha256 %s); using it as an unverified local copy",
                name,
                paths[key],
                hashes[key][1],
            )
    return tuple(
        DataFile(name=paths[key].name, path=str(paths[key].resolve()), sha256=hashes[key][1], verified=verified[key])
        for key in IDX_FILES
    )
