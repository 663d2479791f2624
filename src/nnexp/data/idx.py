"""The IDX file format of MNIST and Fashion-MNIST (gzip-compressed or raw), read into NumPy arrays.

An IDX file is a 4-byte magic number (0, 0, data type, number of dimensions), one big-endian
uint32 per dimension, then the values in C order, big-endian.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from types import MappingProxyType

import numpy as np

from nnexp.config.errors import DataError, DataNotFoundError, IdxFormatError

_IDX_TYPES = MappingProxyType(
    {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
)
_MAX_IDX_BYTES = 1 << 36  # anything larger is a corrupt header, not a dataset
_CHUNK = 1 << 20  # bytes decompressed per read


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


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
    """Parse the IDX stream ``f``; ``file_size`` (raw files only) lets a wrong size fail before reading."""
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
    out = np.empty(shape, dtype=dtype)  # e.g. (60000, 28, 28) images or (60000,) labels
    buf = memoryview(out.reshape(-1).view(np.uint8))  # (nbytes,) filled in place
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
