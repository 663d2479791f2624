"""Datasets for the experiments: MNIST, Fashion-MNIST (IDX files) and sklearn's 8x8 digits.

Every dataset is returned as :class:`Splits` with the book's split
(training = first 50,000 training images, validation = last 10,000, test = t10k),
pixels scaled to [0, 1] and labels as int64 class indices.

Where IDX files are looked for, in order:

1. the ``data_dir`` argument (an error if it lacks the files),
2. ``$NNEXP_DATA_DIR``,
3. :func:`cache_dir`,
4. system copies (Debian's ``dataset-fashion-mnist`` package for Fashion-MNIST),
5. a download from the mirrors into ``cache_dir()/<name>/``.

A directory ``D`` may hold the files as ``D/<name>/<files>`` or ``D/<files>``.
Local files that do not match the official checksums are used, with a warning,
and recorded as ``verified=False``.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from nnexp.config.errors import ChecksumError, DataError, DataNotFoundError, IdxFormatError

logger = logging.getLogger(__name__)

__all__ = [
    "CATALOG",
    "DATASETS",
    "DatasetFacts",
    "DataFile",
    "Split",
    "Splits",
    "cache_dir",
    "download_file",
    "expand",
    "fetch",
    "first_n",
    "load",
    "only_classes",
    "read_idx",
    "sample",
]

@dataclass(frozen=True)
class DatasetFacts:
    """What is known of a dataset before reading it: the one place these numbers live."""

    name: str
    title: str
    n_inputs: int  # pixels per image
    n_train: int  # training images in the book's split
    n_validation: int
    n_classes: int = 10


CATALOG = MappingProxyType({
    "mnist": DatasetFacts("mnist", "MNIST", 784, 50_000, 10_000),
    "fashion_mnist": DatasetFacts("fashion_mnist", "Fashion-MNIST", 784, 50_000, 10_000),
    "digits": DatasetFacts("digits", "digits", 64, 1_197, 300),  # sklearn's 1,797 8x8 images
})
DATASETS = tuple(CATALOG)

#: The four IDX files of MNIST and Fashion-MNIST, in the order recorded in ``Splits.files``.
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


_TITLES = MappingProxyType({name: facts.title for name, facts in CATALOG.items()})

#: Sub-directory names accepted under a data directory D (besides D itself).
_SUBDIRS = MappingProxyType({"mnist": ("mnist",), "fashion_mnist": ("fashion_mnist", "fashion-mnist")})


@dataclass(frozen=True)
class _Official:
    md5: str  # the published MD5 of the upstream gzip file
    sha256: frozenset[str]  # SHA-256s of byte-exact official copies (upstream or distribution repacks)


#: Official checksums of the gzip files. A file is "verified" if its MD5 equals ``md5``
#: or its SHA-256 is in ``sha256``.
CHECKSUMS: Mapping[str, Mapping[str, _Official]] = MappingProxyType(
    {
        "mnist": MappingProxyType(
            {
                "train-images-idx3-ubyte.gz": _Official(
                    "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                    frozenset({"440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"}),
                ),
                "train-labels-idx1-ubyte.gz": _Official(
                    "d53e105ee54ea40749a09fcbcd1e9432",
                    frozenset({"3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"}),
                ),
                "t10k-images-idx3-ubyte.gz": _Official(
                    "9fb629c4189551a2d022fa330f9573f3",
                    frozenset({"8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"}),
                ),
                "t10k-labels-idx1-ubyte.gz": _Official(
                    "ec29112dd5afa0611ce80d1b7f02629c",
                    frozenset({"f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"}),
                ),
            }
        ),
        # Upstream MD5s (zalandoresearch/fashion-mnist) and the SHA-256s of Debian's
        # recompressed copies (package dataset-fashion-mnist 0.0~git20200523.55506a9-1).
        "fashion_mnist": MappingProxyType(
            {
                "train-images-idx3-ubyte.gz": _Official(
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    frozenset({"b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"}),
                ),
                "train-labels-idx1-ubyte.gz": _Official(
                    "25c81989df183df01b3e8a0aad5dffbe",
                    frozenset({"0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"}),
                ),
                "t10k-images-idx3-ubyte.gz": _Official(
                    "bef4ecab320f06d8554ea6380940ec79",
                    frozenset({"cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"}),
                ),
                "t10k-labels-idx1-ubyte.gz": _Official(
                    "bb300cfdad3c16e7a12a480ee83cd310",
                    frozenset({"8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"}),
                ),
            }
        ),
    }
)

#: Download mirrors, tried in order; a file's URL is ``mirror + file name``.
#: (The Fashion-MNIST S3 *website* endpoint only speaks plain HTTP.)
MIRRORS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "mnist": (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        "fashion_mnist": (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        ),
    }
)

#: Directories where operating-system packages install the files (checked before downloading).
SYSTEM_DIRS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"fashion_mnist": ("/usr/share/datasets/fashion-mnist",)}
)

#: Seconds to wait for a mirror to connect or send data.
DOWNLOAD_TIMEOUT = 10.0

_CHUNK = 1 << 20
_IDX_TYPES = MappingProxyType(
    {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
)
_MAX_IDX_BYTES = 1 << 36  # anything larger is a corrupt header, not a dataset


# --------------------------------------------------------------------------- containers


@dataclass(frozen=True)
class Split:
    """``x``: (n, n_in) floats in [0, 1]; ``y``: (n,) int64 labels. ``derived``: what users of
    the split computed from it once and keep with it (e.g. training's evaluation form)."""

    x: np.ndarray
    y: np.ndarray
    derived: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        xs, ys = np.shape(self.x), np.shape(self.y)
        if len(xs) != 2 or len(ys) != 1 or xs[0] != ys[0]:
            raise DataError(f"Split needs x of shape (n, n_in) and y of shape (n,), got x {xs} and y {ys}")

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class DataFile:
    name: str
    path: str
    sha256: str
    verified: bool


@dataclass(frozen=True)
class Splits:
    name: str
    source: str
    train: Split
    validation: Split
    test: Split
    n_classes: int
    files: tuple[DataFile, ...]

    @property
    def n_inputs(self) -> int:
        return int(self.train.x.shape[1])

    def digest(self) -> str:
        """One SHA-256 identifying the data: over the files' SHA-256s, or, without files, the arrays."""
        h = hashlib.sha256()
        if self.files:
            for f in self.files:
                h.update(f.sha256.encode("ascii") + b"\n")
        else:
            for split in (self.train, self.validation, self.test):
                for a in (split.x, split.y):
                    a = np.ascontiguousarray(a)
                    h.update(f"{a.dtype.str}{a.shape}\n".encode("ascii"))
                    h.update(memoryview(a).cast("B"))
        return h.hexdigest()


# --------------------------------------------------------------------------- helpers


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {_one_line(exc.reason)}"
    if isinstance(exc, urllib.error.URLError):
        return _one_line(exc.reason)
    return _one_line(exc) or type(exc).__name__


def _env_path(var: str) -> Path | None:
    value = os.environ.get(var, "").strip()
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """``$NNEXP_CACHE_DIR``, else ``$XDG_CACHE_HOME/nnexp``, else ``~/.cache/nnexp`` (not created)."""
    explicit = _env_path("NNEXP_CACHE_DIR")
    if explicit is not None:
        return explicit
    xdg = _env_path("XDG_CACHE_HOME")
    return (xdg if xdg is not None else Path.home() / ".cache") / "nnexp"


def _canonical_name(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return key


def _float_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise DataError(f"invalid dtype {dtype!r} for the data: use float32 or float64") from e
    if dt.kind != "f":
        raise DataError(f"invalid dtype {dt} for the data: pixels need a floating dtype such as float32 or float64")
    return dt


# --------------------------------------------------------------------------- IDX


def _read_exact(f, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        b = f.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _parse_idx(f, path: str, file_size: int | None) -> np.ndarray:
    head = _read_exact(f, 4)
    if len(head) < 4:
        raise IdxFormatError(f"{path}: truncated IDX file: {len(head)} bytes, shorter than the 4-byte magic number")
    if head[0] != 0 or head[1] != 0:
        raise IdxFormatError(
            f"{path}: not an IDX file: magic number 0x{head.hex()} does not start with 0x0000"
        )
    if head[2] not in _IDX_TYPES:
        raise IdxFormatError(
            f"{path}: wrong IDX magic number 0x{head.hex()}: unknown data type 0x{head[2]:02x} (0x08 = unsigned byte)"
        )
    ndim = head[3]
    if ndim == 0:
        raise IdxFormatError(f"{path}: wrong IDX magic number 0x{head.hex()}: zero dimensions")
    raw_dims = _read_exact(f, 4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise IdxFormatError(f"{path}: truncated IDX header: {ndim} dimensions declared but the file ends inside them")
    shape = struct.unpack(f">{ndim}I", raw_dims)
    dtype = np.dtype(_IDX_TYPES[head[2]])
    count = 1
    for d in shape:
        count *= d
    nbytes = count * dtype.itemsize
    header = 4 + 4 * ndim
    if file_size is not None and file_size - header != nbytes:
        what = "truncated IDX file" if file_size - header < nbytes else "extra bytes in IDX file"
        raise IdxFormatError(
            f"{path}: {what}: shape {shape} needs {nbytes} data bytes after the header, found {file_size - header}"
        )
    if nbytes > _MAX_IDX_BYTES:
        raise IdxFormatError(f"{path}: implausible IDX dimensions {shape} ({nbytes} bytes): corrupt header")
    out = np.empty(shape, dtype=dtype)
    buf = memoryview(out.reshape(-1).view(np.uint8))
    pos = 0
    while pos < nbytes:
        n = f.readinto(buf[pos : min(pos + _CHUNK, nbytes)])
        if not n:
            break
        pos += n
    if pos < nbytes:
        raise IdxFormatError(
            f"{path}: truncated IDX file: shape {shape} needs {nbytes} data bytes after the header, found {pos}"
        )
    if f.read(1):
        raise IdxFormatError(f"{path}: extra bytes in IDX file after the {nbytes} data bytes of shape {shape}")
    if not dtype.isnative:
        out = out.astype(dtype.newbyteorder("="))
    return out


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw (detected from its content), as a writable array.

    Raises :class:`IdxFormatError` naming the file for a wrong magic number, truncated or corrupt
    data, or bytes beyond the declared dimensions.
    """
    path = os.fspath(path)
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError as e:
        raise DataNotFoundError(f"IDX file {path} does not exist") from e
    except OSError as e:
        raise DataError(f"cannot read IDX file {path}: {_reason(e)}") from e
    with raw:
        is_gzip = raw.peek(2)[:2] == b"\x1f\x8b"
        try:
            if is_gzip:
                with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                    return _parse_idx(gz, path, None)
            return _parse_idx(raw, path, os.fstat(raw.fileno()).st_size)
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise IdxFormatError(f"{path}: corrupt or truncated gzip data ({_reason(e)})") from e
        except OSError as e:
            if is_gzip:
                raise IdxFormatError(f"{path}: corrupt or truncated gzip data ({_reason(e)})") from e
            raise DataError(f"cannot read IDX file {path}: {_reason(e)}") from e


# --------------------------------------------------------------------------- checksums


def _hash_file(path: Path) -> tuple[str, str]:
    md5 = hashlib.md5(usedforsecurity=False)
    sha = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                md5.update(chunk)
                sha.update(chunk)
    except OSError as e:
        raise DataError(f"cannot read {path}: {_reason(e)}") from e
    return md5.hexdigest(), sha.hexdigest()


def _matches(official: _Official, md5: str, sha256: str) -> bool:
    return md5 == official.md5 or sha256 in official.sha256


def _describe(name: str, paths: Mapping[str, Path]) -> tuple[DataFile, ...]:
    """Hash the local files and check them against the official checksums.

    A file that matches another dataset's (or another file's) official checksum is refused;
    one that matches nothing is accepted with a warning and ``verified=False``.
    """
    hashes = {key: _hash_file(paths[key]) for key in IDX_FILES}
    verified = {key: _matches(CHECKSUMS[name][key], *hashes[key]) for key in IDX_FILES}
    for key in IDX_FILES:
        if verified[key]:
            continue
        for other_name, table in CHECKSUMS.items():
            for other_key, official in table.items():
                if (other_name, other_key) != (name, key) and _matches(official, *hashes[key]):
                    raise DataError(
                        f"{paths[key]} is the official {_TITLES[other_name]} file {other_key}, not {_TITLES[name]} "
                        f"{key}: point data_dir / NNEXP_DATA_DIR at a directory holding the {_TITLES[name]} files"
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


# --------------------------------------------------------------------------- download


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    md5: str | None = None,
    progress: bool = False,
    timeout: float = DOWNLOAD_TIMEOUT,
) -> str:
    """Download ``url`` to ``dest`` atomically; return the file's SHA-256.

    The data are streamed into a ``.part`` file next to ``dest``; if ``md5`` is given it must
    match, else :class:`ChecksumError`. Network failures raise :class:`DataNotFoundError`.
    On any failure the partial file is removed and ``dest`` is left untouched.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise DataError(
            f"cannot write into {dest.parent} ({_reason(e)}): set NNEXP_CACHE_DIR to a writable directory"
        ) from e
    tmp = Path(tmp_name)
    done = False
    try:
        h_md5 = hashlib.md5(usedforsecurity=False)
        h_sha = hashlib.sha256()
        received = 0
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": "nnexp-data/1 (python urllib)"})
            try:
                response = urllib.request.urlopen(request, timeout=timeout)
            except (OSError, ValueError, http.client.HTTPException) as e:
                raise DataNotFoundError(f"cannot download {url}: {_reason(e)}") from e
            with response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                bar = None
                if progress:
                    from tqdm import tqdm

                    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name)
                try:
                    while True:
                        try:
                            chunk = response.read(_CHUNK)
                        except (OSError, http.client.HTTPException) as e:
                            raise DataNotFoundError(f"download of {url} failed: {_reason(e)}") from e
                        if not chunk:
                            break
                        try:
                            out.write(chunk)
                        except OSError as e:
                            raise DataError(f"cannot write {tmp}: {_reason(e)}") from e
                        h_md5.update(chunk)
                        h_sha.update(chunk)
                        received += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                finally:
                    if bar is not None:
                        bar.close()
        if total is not None and received != total:
            raise DataNotFoundError(f"download of {url} was cut short: {received} of {total} bytes")
        got = h_md5.hexdigest()
        if md5 is not None and got != md5.lower():
            raise ChecksumError(f"{url} has md5 {got}, not the published {md5.lower()}")
        os.replace(tmp, dest)
        done = True
        return h_sha.hexdigest()
    finally:
        if not done:
            tmp.unlink(missing_ok=True)


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
    name = _canonical_name(name)
    if name not in CHECKSUMS:
        raise DataError(f"dataset {name} is not downloadable")
    mirrors = tuple(MIRRORS[name] if mirrors is None else mirrors)
    dest_dir = Path(dest_dir)
    fresh_dir = not dest_dir.exists()
    paths = {}
    for key in IDX_FILES:
        dest = dest_dir / key
        paths[key] = dest
        if dest.is_file():
            continue
        failures: list[str] = []
        mismatch = False
        for mirror in mirrors:
            url = mirror if mirror.endswith("/") else mirror + "/"
            url += key
            try:
                download_file(url, dest, md5=CHECKSUMS[name][key].md5, progress=progress, timeout=timeout)
            except ChecksumError as e:
                mismatch = True
                failures.append(str(e))
            except DataNotFoundError as e:
                failures.append(str(e))
            else:
                logger.info("downloaded %s into %s", url, dest_dir)
                break
        else:
            if fresh_dir:
                try:
                    dest_dir.rmdir()  # only succeeds if nothing was downloaded into it
                except OSError:
                    pass
            # the distinct reasons only (e.g. one DNS failure for all mirrors), to keep one short line
            reasons = dict.fromkeys(f.rsplit(": ", 1)[-1] for f in failures)
            detail = "; ".join(reasons) if reasons else "no mirrors configured"
            if mismatch:
                raise ChecksumError(f"no mirror served a verified {key} ({detail})")
            raise DataNotFoundError(f"no mirror served {key} ({detail})")
    return paths


# --------------------------------------------------------------------------- locating files


def _scan(directory: Path, name: str) -> tuple[dict[str, Path] | None, list[Path]]:
    """Find the four files in ``directory/<name>`` or ``directory``; also return the dirs searched."""
    searched = [directory / sub for sub in _SUBDIRS[name]] + [directory]
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
    title = _TITLES[name]
    env = os.environ.get("NNEXP_DATA_DIR", "").strip() or "unset"
    extra = " or `apt-get install dataset-fashion-mnist`," if name == "fashion_mnist" else ""
    return (
        f"{title} is not in NNEXP_DATA_DIR ({env}) or the cache, and the download failed ({reason}): "
        f"set NNEXP_DATA_DIR (or dataset.data_dir=) to a directory with the four IDX files "
        f"({IDX_FILES[0]}, ...),{extra} or connect to the internet to download them into {target}; "
        f"offline, try dataset=digits"
    )


def _locate(name: str, data_dir, download: bool, progress: bool) -> tuple[dict[str, Path], Path]:
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        if not d.is_dir():
            raise DataNotFoundError(f"data_dir {d} does not exist or is not a directory")
        found, searched = _scan(d, name)
        if found is None:
            raise DataNotFoundError(
                f"data_dir {d} does not hold the {_TITLES[name]} IDX files ({', '.join(IDX_FILES)}); "
                f"looked in {', '.join(str(s) for s in searched)}"
            )
        return found, next(iter(found.values())).parent

    candidates = []
    env = _env_path("NNEXP_DATA_DIR")
    if env is not None:
        candidates.append(env)
    cache = cache_dir()
    candidates.append(cache)
    candidates.extend(Path(p) for p in SYSTEM_DIRS.get(name, ()))
    for d in candidates:
        found, _ = _scan(d, name)
        if found is not None:
            return found, next(iter(found.values())).parent
        logger.debug("%s: no complete set of IDX files under %s", name, d)

    target = cache / _SUBDIRS[name][0]
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


# --------------------------------------------------------------------------- loading


def _load_idx_dataset(name: str, paths: dict[str, Path], source: Path, dtype: np.dtype) -> Splits:
    files = _describe(name, paths)

    def pair(images_key: str, labels_key: str) -> tuple[np.ndarray, np.ndarray]:
        ip, lp = paths[images_key], paths[labels_key]
        images, labels = read_idx(ip), read_idx(lp)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise IdxFormatError(
                f"{ip}: expected unsigned-byte images of shape (n, rows, cols), got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise IdxFormatError(
                f"{lp}: expected unsigned-byte labels of shape (n,), got {labels.dtype} {labels.shape}"
            )
        if images.shape[0] != labels.shape[0]:
            raise IdxFormatError(
                f"{ip} holds {images.shape[0]} images but {lp} holds {labels.shape[0]} labels: "
                "the files do not belong together"
            )
        if labels.size and labels.max() >= 10:
            raise IdxFormatError(f"{lp}: label {int(labels.max())} is outside 0..9")
        return images.reshape(images.shape[0], -1), labels

    def split(images: np.ndarray, labels: np.ndarray) -> Split:
        x = np.divide(images, 255, dtype=dtype)  # new C-contiguous array, exact division
        return Split(x=x, y=labels.astype(np.int64))

    train_images, train_labels = pair("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
    n_validation = CATALOG[name].n_validation  # taken from the end of the training file (the book's split)
    n_train = train_images.shape[0] - n_validation
    if n_train <= 0:
        raise IdxFormatError(
            f"{paths['train-images-idx3-ubyte.gz']}: {train_images.shape[0]} training images, "
            f"need more than {n_validation} for the validation split"
        )
    train = split(train_images[:n_train], train_labels[:n_train])
    validation = split(train_images[n_train:], train_labels[n_train:])
    del train_images
    test = split(*pair("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"))
    if test.x.shape[1] != train.x.shape[1]:
        raise IdxFormatError(
            f"{paths['t10k-images-idx3-ubyte.gz']}: images of {test.x.shape[1]} pixels, "
            f"but the training images have {train.x.shape[1]}"
        )
    logger.info(
        "loaded %s from %s: %d train, %d validation, %d test, %s",
        name, source, len(train), len(validation), len(test), dtype,
    )
    return Splits(
        name=name,
        source=str(source.resolve()),
        train=train,
        validation=validation,
        test=test,
        n_classes=10,
        files=files,
    )


def _load_digits(dtype: np.dtype) -> Splits:
    from sklearn.datasets import load_digits  # lazy: sklearn is slow to import

    bunch = load_digits()
    x = np.asarray(bunch.data)
    y = np.asarray(bunch.target, dtype=np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    x = np.divide(x[order], 16, dtype=dtype)
    y = y[order]
    facts = CATALOG["digits"]
    n_train, n_val = facts.n_train, facts.n_train + facts.n_validation
    cuts = ((0, n_train), (n_train, n_val), (n_val, len(y)))
    train, validation, test = (Split(x=x[a:b].copy(), y=y[a:b].copy()) for a, b in cuts)
    return Splits(
        name="digits",
        source="sklearn.datasets.load_digits",
        train=train,
        validation=validation,
        test=test,
        n_classes=10,
        files=(),
    )


def load(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    dtype=np.float64,
    download: bool = True,
    progress: bool = False,
) -> Splits:
    """Load dataset ``name`` (one of :data:`DATASETS`) with the book's train/validation/test split.

    ``data_dir`` (if given) must hold the IDX files; otherwise ``$NNEXP_DATA_DIR``, the cache
    and system directories are searched, then the files are downloaded into the cache
    (unless ``download=False``). ``digits`` ignores ``data_dir`` and ``download``.
    """
    key = _canonical_name(name)
    dt = _float_dtype(dtype)
    if key == "digits":
        return _load_digits(dt)
    paths, source = _locate(key, data_dir, download, progress)
    return _load_idx_dataset(key, paths, source, dt)


# --------------------------------------------------------------------------- subsets


def _count(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise DataError(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


def first_n(split: Split, n: int) -> Split:
    """The first ``n`` examples (views, no copy)."""
    n = _count(n, "the number of examples")
    if n > len(split):
        raise DataError(f"asked for the first {n} examples of a split that has only {len(split)}")
    return Split(x=split.x[:n], y=split.y[:n])


def only_classes(split: Split, classes: Sequence[int]) -> Split:
    """The examples whose label is in ``classes``, in their original order; labels unchanged."""
    wanted = np.asarray(list(classes), dtype=np.int64)
    if wanted.size == 0:
        raise DataError("only_classes needs at least one class label")
    keep = np.isin(split.y, wanted)
    return Split(x=split.x[keep], y=split.y[keep])


def sample(split: Split, m: int, rng: np.random.Generator) -> Split:
    """``m`` distinct examples drawn with ``rng``, kept in their original order."""
    m = _count(m, "the sample size")
    if m > len(split):
        raise DataError(f"cannot sample {m} examples without replacement from a split of {len(split)}")
    idx = np.sort(rng.choice(len(split), size=m, replace=False))
    return Split(x=split.x[idx], y=split.y[idx])


def expand(split: Split, shape: tuple[int, int] = (28, 28)) -> Split:
    """The book's expanded data: every image followed by its shifts one pixel up, down, left and right.

    Vacated pixels are zero. Returns ``5 * len(split)`` rows in the order
    [image, up, down, left, right] for each image; labels repeated accordingly.
    """
    rows, cols = (int(s) for s in shape)
    n, n_in = split.x.shape
    if rows * cols != n_in:
        raise DataError(f"cannot expand images of {n_in} pixels as shape {rows}x{cols}")
    img = split.x.reshape(n, rows, cols)
    out = np.zeros((n, 5, rows, cols), dtype=split.x.dtype)
    out[:, 0] = img
    out[:, 1, :-1, :] = img[:, 1:, :]  # up
    out[:, 2, 1:, :] = img[:, :-1, :]  # down
    out[:, 3, :, :-1] = img[:, :, 1:]  # left
    out[:, 4, :, 1:] = img[:, :, :-1]  # right
    return Split(x=out.reshape(5 * n, n_in), y=np.repeat(split.y, 5))
