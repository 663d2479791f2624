"""Downloads through pooch, tried on each mirror in turn.

pooch streams a file into a temporary file next to its destination, checks the published MD5
and only then renames it into place: an interrupted or wrong download never leaves a file that
a later load would take as good. The next mirror is the only retry: pooch's own retries wait
1 s, 2 s, ... and ask the same server again, and a load that cannot download must stop within
a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import shutil
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from nnexp.config.errors import ChecksumError, DataError, DataNotFoundError
from nnexp.data import catalog

logger = logging.getLogger(__name__)

#: Seconds to wait for a mirror to connect or send data.
DOWNLOAD_TIMEOUT = 10.0


def _reason(exc: BaseException) -> str:
    """The root cause of ``exc`` on one line (requests wraps it in urllib3's errors)."""
    response = getattr(exc, "response", None)
    if response is not None:  # requests' HTTPError: the server answered with an error status
        return f"HTTP {response.status_code} {' '.join(str(response.reason).split())}"
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    if isinstance(exc, http.client.IncompleteRead):  # urllib3's is a subclass, counting bytes as ints
        got = exc.partial if isinstance(exc.partial, int) else len(exc.partial)
        return f"cut short after {got} bytes, {exc.expected} more expected"
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return " ".join(text.split()) or type(exc).__name__


@contextlib.contextmanager
def _quiet(log: logging.Logger) -> Iterator[None]:
    """pooch's logger (its own, outside ``logging``'s tree) says only warnings meanwhile."""
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _copy_local(url: str, output_file: str, _pooch) -> None:
    """A pooch downloader for ``file://`` mirrors: a local or mounted copy of the files."""
    try:
        shutil.copyfile(urllib.request.url2pathname(urllib.parse.urlsplit(url).path), output_file)
    except OSError as e:
        raise DataNotFoundError(f"cannot download {url}: {_reason(e)}") from e


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    md5: str | None = None,
    progress: bool = False,
    timeout: float = DOWNLOAD_TIMEOUT,
) -> str:
    """Download ``url`` (http, https or file) to ``dest`` atomically; return the file's SHA-256.

    If ``md5`` is given the download must match it, else :class:`ChecksumError`. Network
    failures raise :class:`DataNotFoundError`. On any failure ``dest`` is left untouched and
    no partial file remains. A ``dest`` that already matches ``md5`` is kept, not downloaded.
    """
    import pooch  # here: pooch imports requests and tqdm, which loading local files never needs

    dest = Path(dest)
    if url.startswith("file:"):
        downloader = _copy_local
    else:
        downloader = pooch.HTTPDownloader(progressbar=progress, timeout=timeout)
    known_hash = None if md5 is None else f"md5:{md5.lower()}"
    try:
        with _quiet(pooch.get_logger()):
            pooch.retrieve(url, known_hash, fname=dest.name, path=dest.parent, downloader=downloader)
        with open(dest, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        if e.errno is None:  # requests' errors are OSErrors without an errno
            raise DataNotFoundError(f"cannot download {url}: {_reason(e)}") from e
        raise DataError(
            f"cannot write into {dest.parent} ({_reason(e)}): set NNEXP_CACHE_DIR to a writable directory"
        ) from e
    except ValueError as e:  # pooch's hash check
        raise ChecksumError(f"{url} does not match the published md5 {md5}") from e


def _from_mirrors(dest: Path, mirrors: Sequence[str], md5: str, progress: bool, timeout: float) -> None:
    """Download ``dest.name`` from the first mirror that serves it with the right MD5."""
    failures: list[str] = []
    mismatch = False
    for mirror in mirrors:
        url = (mirror if mirror.endswith("/") else mirror + "/") + dest.name
        try:
            download_file(url, dest, md5=md5, progress=progress, timeout=timeout)
        except (ChecksumError, DataNotFoundError) as e:
            mismatch = mismatch or isinstance(e, ChecksumError)
            failures.append(str(e))
        else:
            logger.info("downloaded %s into %s", url, dest.parent)
            return
    # the distinct reasons only (e.g. one DNS failure for all mirrors), to keep one short line
    reasons = dict.fromkeys(f.rsplit(": ", 1)[-1] for f in failures)
    detail = "; ".join(reasons) if reasons else "no mirrors configured"
    if mismatch:
        raise ChecksumError(f"no mirror served a verified {dest.name} ({detail})")
    raise DataNotFoundError(f"no mirror served {dest.name} ({detail})")


def fetch(
    name: str,
    dest_dir: str | os.PathLike,
    *,
    mirrors: Sequence[str] | None = None,
    progress: bool = False,
    timeout: float = DOWNLOAD_TIMEOUT,
) -> dict[str, Path]:
    """Download the missing IDX files of dataset ``name`` into ``dest_dir``; return all four paths.

    Each file is tried on every mirror in turn (``MIRRORS[name]`` unless ``mirrors`` is given)
    and must match its published MD5. Stops at the first file that no mirror delivers:
    :class:`ChecksumError` if some mirror served wrong bytes, else :class:`DataNotFoundError`.
    """
    name = catalog.canonical_name(name)
    if name not in catalog.CHECKSUMS:
        raise DataError(f"dataset {name} is not downloadable")
    mirrors = tuple(catalog.MIRRORS[name] if mirrors is None else mirrors)
    dest_dir = Path(dest_dir)
    fresh_dir = not dest_dir.exists()
    paths = {key: dest_dir / key for key in catalog.IDX_FILES}
    for key, dest in paths.items():
        if dest.is_file():
            continue
        try:
            _from_mirrors(dest, mirrors, catalog.CHECKSUMS[name][key].md5, progress, timeout)
        except DataError:
            if fresh_dir:
                with contextlib.suppress(OSError):
                    dest_dir.rmdir()  # only succeeds if nothing was downloaded into it
            raise
    return paths
