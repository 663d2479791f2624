"""Tests of nnexp.data on the real MNIST files, small hand-made IDX files and sklearn's digits."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from nnexp import data
from nnexp.config.errors import ChecksumError, DataError, DataNotFoundError, IdxFormatError

# SHA-256s of the files in the shared MNIST copy (from its README).
SHARED_SHA256 = {
    "train-images-idx3-ubyte.gz": "8e59d4e6322d5e291f26338633ee8015e1369ee4616a784cd934bc27c2948978",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
FILES = tuple(SHARED_SHA256)
LABEL_FILES = ("train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


# --------------------------------------------------------------------------- helpers & fixtures


def closed_port_url() -> str:
    """An http URL on localhost where nothing listens (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def idx_bytes(array: np.ndarray, type_byte: int = 0x08) -> bytes:
    array = np.asarray(array)
    header = bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(">u1" if type_byte == 0x08 else array.dtype.newbyteorder(">")).tobytes()


def write_gz(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload))
    return path


def make_fake_dataset(directory: Path, n_train: int = 10_004, n_test: int = 3, labels_train: int | None = None) -> Path:
    """A tiny well-formed dataset (2x2 images) with the four standard file names."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(123)
    n_lab = n_train if labels_train is None else labels_train
    write_gz(directory / FILES[0], idx_bytes(rng.integers(0, 256, (n_train, 2, 2), dtype=np.uint8)))
    write_gz(directory / FILES[1], idx_bytes(rng.integers(0, 10, n_lab, dtype=np.uint8)))
    write_gz(directory / FILES[2], idx_bytes(rng.integers(0, 256, (n_test, 2, 2), dtype=np.uint8)))
    write_gz(directory / FILES[3], idx_bytes(rng.integers(0, 10, n_test, dtype=np.uint8)))
    return directory


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the user's data dir or cache, a system copy, or the internet."""
    monkeypatch.delenv("NNEXP_DATA_DIR", raising=False)
    monkeypatch.setenv("NNEXP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(data.catalog, "MIRRORS", {"mnist": (closed_port_url(),), "fashion_mnist": (closed_port_url(),)})
    monkeypatch.setattr(data.catalog, "SYSTEM_DIRS", {})


@pytest.fixture(scope="session")
def mnist_dir(shared_data_dir) -> Path:
    sub = shared_data_dir / "mnist"
    return sub if (sub / FILES[0]).is_file() else shared_data_dir


@pytest.fixture(scope="module")
def mnist32(mnist_dir):
    return data.load("mnist", mnist_dir, dtype=np.float32)


# --------------------------------------------------------------------------- read_idx


def test_read_idx_raw_and_gzip(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = tmp_path / "images-idx3-ubyte"
    raw.write_bytes(idx_bytes(images))
    gz = write_gz(tmp_path / "images-idx3-ubyte.gz", idx_bytes(images))
    for path in (raw, gz, str(gz)):
        out = data.read_idx(path)
        assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
        np.testing.assert_array_equal(out, images)
        out[0, 0, 0] = 7  # writable
    labels = np.array([5, 0, 4], dtype=np.uint8)
    np.testing.assert_array_equal(data.read_idx(write_gz(tmp_path / "l.gz", idx_bytes(labels))), labels)


def test_read_idx_big_endian_int32(tmp_path):
    values = np.array([[1, -2], [70000, 3]], dtype=np.int32)
    path = tmp_path / "ints.idx"
    path.write_bytes(idx_bytes(values, type_byte=0x0C))
    out = data.read_idx(path)
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, values)


def _corrupt_cases():
    good = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    return {
        "truncated-raw": (False, good[:-5], "truncated"),
        "truncated-header": (False, good[:9], "truncated"),
        "empty": (False, b"", "truncated"),
        "wrong-magic": (False, b"\x12\x34" + good[2:], "magic"),
        "wrong-type": (False, good[:2] + b"\x07" + good[3:], "magic"),
        "extra-bytes": (False, good + b"\x00", "extra"),
        "truncated-gz-payload": (True, good[:-1], "truncated"),
        "extra-gz-payload": (True, good + b"xyz", "extra"),
    }


@pytest.mark.parametrize("case", list(_corrupt_cases()))
def test_read_idx_rejects_corrupt_files(tmp_path, case):
    compress, payload, word = _corrupt_cases()[case]
    path = tmp_path / f"bad-{case}-idx3-ubyte{'.gz' if compress else ''}"
    path.write_bytes(gzip.compress(payload) if compress else payload)
    with pytest.raises(IdxFormatError) as info:
        data.read_idx(path)
    message = str(info.value)
    assert path.name in message and word in message.lower() and "\n" not in message


def test_read_idx_rejects_broken_gzip(tmp_path):
    blob = gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8).reshape(10, 100)))
    cut = tmp_path / "cut-idx2-ubyte.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    flipped = tmp_path / "flipped-idx2-ubyte.gz"
    flipped.write_bytes(blob[:-8] + bytes([blob[-8] ^ 0xFF]) + blob[-7:])  # bad CRC
    for path in (cut, flipped):
        with pytest.raises(IdxFormatError, match=path.name):
            data.read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataNotFoundError, match="nope-idx1-ubyte.gz"):
        data.read_idx(tmp_path / "nope-idx1-ubyte.gz")


# --------------------------------------------------------------------------- MNIST


def test_mnist_splits_labels_and_checksums(mnist_dir, caplog):
    caplog.set_level(logging.WARNING, logger="nnexp.data")
    splits = data.load("mnist", mnist_dir)
    assert splits.name == "mnist" and splits.n_classes == 10 and splits.n_inputs == 784
    assert Path(splits.source) == mnist_dir.resolve()
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (50_000, 10_000, 10_000)
    for split in (splits.train, splits.validation, splits.test):
        assert split.x.dtype == np.float64 and split.x.flags.c_contiguous
        assert split.y.dtype == np.int64 and split.x.shape == (len(split), 784)
        assert split.x.min() == 0.0 and split.x.max() == 1.0
    assert splits.train.y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert splits.test.y[:6].tolist() == [7, 2, 1, 0, 4, 1]
    assert abs(splits.train.x.mean() - 0.1307) < 0.002  # the well-known MNIST pixel mean

    files = {f.name: f for f in splits.files}
    assert [f.name for f in splits.files] == list(FILES)
    assert {n: f.sha256 for n, f in files.items()} == SHARED_SHA256
    assert files["train-images-idx3-ubyte.gz"].verified is False
    assert all(files[n].verified for n in FILES[1:])
    assert files["t10k-labels-idx1-ubyte.gz"].path == str((mnist_dir / "t10k-labels-idx1-ubyte.gz").resolve())

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "train-images-idx3-ubyte.gz" in message and SHARED_SHA256[FILES[0]] in message and "\n" not in message


def test_mnist_float32_and_digest(mnist32, mnist_dir):
    assert mnist32.train.x.dtype == np.float32 and mnist32.test.x.dtype == np.float32
    assert 0.0 <= mnist32.validation.x.min() and mnist32.validation.x.max() <= 1.0
    # 255 / 255 and 0 / 255 are exact; a mid-grey pixel is the float32 nearest to k / 255
    raw = data.read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz").reshape(10_000, 784)
    np.testing.assert_array_equal(mnist32.test.x, (raw / 255.0).astype(np.float32))
    digest = mnist32.digest()
    import hashlib  # independently: SHA-256 over the four files' SHA-256s, one per line, in order

    files = [hashlib.sha256((mnist_dir / name).read_bytes()).hexdigest() for name in data.IDX_FILES]
    assert digest == hashlib.sha256("".join(f + "\n" for f in files).encode()).hexdigest()


def test_unknown_dataset_and_bad_dtype():
    with pytest.raises(DataError) as info:
        data.load("cifar10")
    assert all(name in str(info.value) for name in data.DATASETS)
    with pytest.raises(DataError, match="dtype"):
        data.load("digits", dtype=np.int32)


# --------------------------------------------------------------------------- where files come from


def test_nnexp_data_dir_is_used(monkeypatch, shared_data_dir, mnist_dir):
    monkeypatch.setenv("NNEXP_DATA_DIR", str(shared_data_dir))
    splits = data.load("mnist", dtype=np.float32)
    assert Path(splits.source) == mnist_dir.resolve()
    assert len(splits.train) == 50_000


def test_explicit_data_dir_wins(monkeypatch, tmp_path, shared_data_dir):
    fake = make_fake_dataset(tmp_path / "explicit" / "mnist")
    monkeypatch.setenv("NNEXP_DATA_DIR", str(shared_data_dir))
    splits = data.load("mnist", tmp_path / "explicit", dtype=np.float32)  # D/<name>/<files> layout
    assert Path(splits.source) == fake.resolve()
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (4, 10_000, 3)
    assert splits.n_inputs == 4 and not any(f.verified for f in splits.files)


def test_cache_dir_is_searched(tmp_path):
    make_fake_dataset(data.cache_dir() / "mnist")
    splits = data.load("mnist")
    assert Path(splits.source) == (tmp_path / "cache" / "mnist").resolve()


def test_explicit_empty_dir_is_an_error_without_download(tmp_path, monkeypatch, mnist_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(data.catalog, "MIRRORS", {"mnist": (mnist_dir.as_uri() + "/",)})  # would succeed for 3 files
    with pytest.raises(DataNotFoundError) as info:
        data.load("mnist", empty)
    assert str(empty) in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "cache").exists()
    with pytest.raises(DataNotFoundError, match="does not exist"):
        data.load("mnist", tmp_path / "missing")


def test_mismatched_counts_name_both_files(tmp_path):
    fake = make_fake_dataset(tmp_path / "d", labels_train=10_003)
    with pytest.raises(IdxFormatError) as info:
        data.load("mnist", fake)
    assert "train-images-idx3-ubyte.gz" in str(info.value) and "train-labels-idx1-ubyte.gz" in str(info.value)


def test_fashion_from_system_dir_and_wrong_dataset_refused(tmp_path, monkeypatch, mnist_dir, caplog):
    system = make_fake_dataset(tmp_path / "usr-share-fashion")
    monkeypatch.setattr(data.catalog, "SYSTEM_DIRS", {"fashion_mnist": (str(system),)})
    splits = data.load("fashion-mnist")
    assert splits.name == "fashion_mnist" and Path(splits.source) == system.resolve()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 4
    # MNIST files offered as Fashion-MNIST are recognised by their official checksums
    with pytest.raises(DataError, match="MNIST"):
        data.load("fashion_mnist", mnist_dir)


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("NNEXP_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("NNEXP_CACHE_DIR")
    assert data.cache_dir() == tmp_path / "xdg" / "nnexp"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "nnexp"


# --------------------------------------------------------------------------- download


def test_download_file_verifies(tmp_path, mnist_dir):
    dest = tmp_path / "dl" / "train-labels-idx1-ubyte.gz"
    url = (mnist_dir / "train-labels-idx1-ubyte.gz").as_uri()
    sha = data.download_file(url, dest, md5=data.CHECKSUMS["mnist"]["train-labels-idx1-ubyte.gz"].md5)
    assert sha == SHARED_SHA256["train-labels-idx1-ubyte.gz"] == sha256_of(dest)
    assert list(dest.parent.iterdir()) == [dest]


def test_download_checksum_mismatch_leaves_nothing(tmp_path, mnist_dir):
    dest = tmp_path / "dl" / "train-images-idx3-ubyte.gz"
    url = (mnist_dir / "train-images-idx3-ubyte.gz").as_uri()  # not the official bytes
    with pytest.raises(ChecksumError, match="md5"):
        data.download_file(url, dest, md5=data.CHECKSUMS["mnist"]["train-images-idx3-ubyte.gz"].md5)
    assert list(dest.parent.iterdir()) == []


def test_load_downloads_missing_files_into_cache(tmp_path, monkeypatch, mnist_dir):
    cache = data.cache_dir() / "mnist"
    cache.mkdir(parents=True)
    shutil.copy(mnist_dir / FILES[0], cache / FILES[0])  # the unofficial file is already local
    monkeypatch.setattr(data.catalog, "MIRRORS", {"mnist": (closed_port_url(), mnist_dir.as_uri())})
    splits = data.load("mnist", dtype=np.float32)
    assert Path(splits.source) == cache.resolve()
    assert sorted(p.name for p in cache.iterdir()) == sorted(FILES)
    for name in FILES[1:]:
        assert sha256_of(cache / name) == SHARED_SHA256[name]
    assert [f.verified for f in splits.files] == [False, True, True, True]
    assert splits.train.y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]


def test_load_refuses_mismatched_download(monkeypatch, mnist_dir):
    monkeypatch.setattr(data.catalog, "MIRRORS", {"mnist": (mnist_dir.as_uri() + "/",)})
    with pytest.raises(ChecksumError) as info:
        data.load("mnist")
    assert "train-images-idx3-ubyte.gz" in str(info.value) and "NNEXP_DATA_DIR" in str(info.value)
    assert not (data.cache_dir() / "mnist").exists()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


def test_fetch_over_http_tries_next_mirror(tmp_path, mnist_dir):
    served = tmp_path / "served"
    served.mkdir()
    for name in FILES[1:]:
        shutil.copy(mnist_dir / name, served / name)
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        dest = tmp_path / "dest"
        dest.mkdir()
        shutil.copy(mnist_dir / FILES[0], dest / FILES[0])
        paths = data.fetch("mnist", dest, mirrors=[base + "missing/", base], progress=True)
    finally:
        server.shutdown()
        server.server_close()
    assert [p.name for p in paths.values()] == list(FILES)
    assert all(sha256_of(dest / name) == SHARED_SHA256[name] for name in FILES)
    assert sorted(p.name for p in dest.iterdir()) == sorted(FILES)  # no partial or temporary files left


@pytest.mark.parametrize("failure", ["cut-short", "stalled"])
def test_interrupted_download_leaves_nothing_a_load_would_take(tmp_path, mnist_dir, failure):
    """A download that breaks off (connection closed, or silent past the timeout) half-way through
    a file leaves the cache as it was: no partial file under the IDX name, no temporary file."""
    payload = (mnist_dir / FILES[1]).read_bytes()
    release = threading.Event()

    class HalfThenFail(_QuietHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            if failure == "stalled":
                release.wait(10)
            self.close_connection = True

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(HalfThenFail, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cache = data.cache_dir() / "mnist"
    cache.mkdir(parents=True)
    shutil.copy(mnist_dir / FILES[0], cache / FILES[0])  # the first file is already there
    try:
        with pytest.raises(DataNotFoundError, match=FILES[1]):
            data.fetch("mnist", cache, mirrors=[f"http://127.0.0.1:{server.server_address[1]}/"], timeout=0.5)
    finally:
        release.set()
        server.shutdown()
        server.server_close()
    assert [p.name for p in cache.iterdir()] == [FILES[0]]
    assert sha256_of(cache / FILES[0]) == SHARED_SHA256[FILES[0]]
    with pytest.raises(DataNotFoundError, match="NNEXP_DATA_DIR"):
        data.load("mnist", download=False)


def test_unreachable_mirrors_fail_fast_with_guidance(tmp_path, monkeypatch):
    """Fast: each mirror is asked once for the first file, and the load stops there (observed as
    the requests a local server receives, not as a time)."""
    asked = []

    class Missing(_QuietHandler):
        def do_GET(self):
            asked.append(self.path)
            self.send_error(404)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Missing, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(data.catalog, "MIRRORS", {"mnist": (closed_port_url(), base + "/a/", base + "/b/")})
    try:
        with pytest.raises(DataNotFoundError) as info:
            data.load("mnist")
    finally:
        server.shutdown()
        server.server_close()
    assert asked == [f"/a/{FILES[0]}", f"/b/{FILES[0]}"]
    message = str(info.value)
    assert "\n" not in message
    for needle in ("NNEXP_DATA_DIR", "dataset.data_dir", str(data.cache_dir() / "mnist"), "dataset=digits"):
        assert needle in message
    with pytest.raises(DataNotFoundError, match="NNEXP_DATA_DIR"):
        data.load("mnist", download=False)


# --------------------------------------------------------------------------- subsets


def _indexed_split(n: int = 20, n_in: int = 4) -> data.Split:
    x = np.repeat(np.arange(n, dtype=np.float64)[:, None], n_in, axis=1)
    return data.Split(x=x, y=np.arange(n, dtype=np.int64) % 10)


def test_first_n(mnist32):
    small = data.first_n(mnist32.train, 1000)
    assert len(small) == 1000 and small.x.shape == (1000, 784)
    assert small.y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    np.testing.assert_array_equal(small.x, mnist32.train.x[:1000])
    with pytest.raises(DataError):
        data.first_n(mnist32.train, 50_001)


def test_only_classes_on_real_labels(mnist32):
    zeros_ones = data.only_classes(mnist32.train, [0, 1])
    assert set(np.unique(zeros_ones.y).tolist()) == {0, 1}
    assert len(zeros_ones) == 4932 + 5678  # zeros and ones among the first 50,000 MNIST images
    mask = (mnist32.train.y == 0) | (mnist32.train.y == 1)
    np.testing.assert_array_equal(zeros_ones.x, mnist32.train.x[mask])
    assert zeros_ones.x.flags.c_contiguous


def test_sample_reproducible_without_replacement():
    split = _indexed_split(50)
    a = data.sample(split, 30, np.random.default_rng(7))
    b = data.sample(split, 30, np.random.default_rng(7))
    c = data.sample(split, 30, np.random.default_rng(8))
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)
    rows = a.x[:, 0].astype(int)
    assert len(set(rows.tolist())) == 30  # no example twice
    np.testing.assert_array_equal(a.y, rows % 10)  # labels travel with their images
    with pytest.raises(DataError):
        data.sample(split, 51, np.random.default_rng(0))


def test_expand_hand_made_image():
    image = np.arange(1, 10, dtype=np.float64).reshape(1, 9) / 10  # 3x3: 1..9 tenths
    out = data.expand(data.Split(x=image, y=np.array([3])), shape=(3, 3))
    assert out.x.shape == (5, 9) and out.y.tolist() == [3] * 5
    shifted = (out.x * 10).round().astype(int).reshape(5, 3, 3)
    assert shifted[0].tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert shifted[1].tolist() == [[4, 5, 6], [7, 8, 9], [0, 0, 0]]  # up
    assert shifted[2].tolist() == [[0, 0, 0], [1, 2, 3], [4, 5, 6]]  # down
    assert shifted[3].tolist() == [[2, 3, 0], [5, 6, 0], [8, 9, 0]]  # left
    assert shifted[4].tolist() == [[0, 1, 2], [0, 4, 5], [0, 7, 8]]  # right


def test_expand_real_images(mnist32):
    part = data.first_n(mnist32.train, 200)
    big = data.expand(part)
    assert big.x.shape == (1000, 784) and big.x.dtype == np.float32
    np.testing.assert_array_equal(big.x[::5], part.x)
    np.testing.assert_array_equal(big.y, np.repeat(part.y, 5))
    ups = big.x[1::5].reshape(200, 28, 28)
    np.testing.assert_array_equal(ups[:, :27], part.x.reshape(200, 28, 28)[:, 1:])
    assert not ups[:, 27].any()
    with pytest.raises(DataError):
        data.expand(part, shape=(27, 28))


# --------------------------------------------------------------------------- digits & import


def test_digits_split_is_deterministic():
    a = data.load("digits")
    b = data.load("digits", dtype=np.float32)
    assert (len(a.train), len(a.validation), len(a.test)) == (1197, 300, 300)
    assert a.n_inputs == 64 and a.n_classes == 10 and a.files == ()
    assert a.source == "sklearn.datasets.load_digits"
    assert a.train.x.max() == 1.0 and a.train.x.min() == 0.0 and b.train.x.dtype == np.float32
    for split_a, split_b in ((a.train, b.train), (a.validation, b.validation), (a.test, b.test)):
        np.testing.assert_array_equal(split_a.y, split_b.y)
        np.testing.assert_array_equal(split_a.x, split_b.x.astype(np.float64))
    assert a.digest() == data.load("digits").digest()
    all_y = np.concatenate([a.train.y, a.validation.y, a.test.y])
    assert np.bincount(all_y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_import_is_light():
    code = "import sys, nnexp.data; bad = {'sklearn', 'mlflow', 'tqdm'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})


# --------------------------------------------------------------------------- the decoded-array cache


def _cache_folders(tmp_path) -> dict[str, Path]:
    """The array cache's folders by kind: "raw" (decoded bytes) or a dtype's name (scaled splits)."""
    folders = sorted((tmp_path / "cache" / "arrays").iterdir())
    return {("raw" if f.name.count("-") == 1 else f.name.rsplit("-", 1)[1]): f for f in folders}


def _mapped_from(a: np.ndarray) -> str | None:
    """The file ``a`` is a memory-mapped view of (None for an array in the process's memory)."""
    name = getattr(a.base, "filename", None)
    return None if name is None else str(name)


def test_a_dataset_is_decoded_once_then_read_from_the_array_cache(tmp_path, monkeypatch):
    d = make_fake_dataset(tmp_path / "d")
    first = data.load("mnist", d)  # decodes the IDX files, keeps the bytes and the scaled splits
    folders = _cache_folders(tmp_path)
    assert sorted(folders) == ["float64", "raw"]
    assert sorted(p.name for p in folders["raw"].iterdir()) == ["complete", "test_images.npy", "test_labels.npy",
                                                                 "train_images.npy", "train_labels.npy"]
    assert sorted(p.name for p in folders["float64"].iterdir()) == [
        "complete", "test_x.npy", "test_y.npy", "train_x.npy", "train_y.npy", "validation_x.npy", "validation_y.npy"]
    images = np.random.default_rng(123).integers(0, 256, (10_004, 4), dtype=np.uint8)  # as written to d
    np.testing.assert_array_equal(first.train.x, images[:4] / 255.0)
    np.testing.assert_array_equal(first.validation.x, images[4:] / 255.0)

    def no_decoding(path):
        raise AssertionError(f"{path} decoded again")

    monkeypatch.setattr(data.loaders, "read_idx", no_decoding)
    again = data.load("mnist", d)  # from the cache: read_idx would fail
    for part in ("train", "validation", "test"):
        a, b = getattr(first, part), getattr(again, part)
        assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
        assert b.x.dtype == np.float64 and b.y.dtype == np.int64
        assert _mapped_from(b.x) == str(folders["float64"] / f"{part}_x.npy")  # mapped, not scaled again
        assert not a.x.flags.writeable and not b.x.flags.writeable  # shared arrays: never written
    single = data.load("mnist", d, dtype=np.float32)  # another dtype: scaled from the kept bytes
    np.testing.assert_array_equal(single.train.x, np.divide(images[:4], 255, dtype=np.float32))
    assert sorted(_cache_folders(tmp_path)) == ["float32", "float64", "raw"]
    monkeypatch.undo()
    monkeypatch.setenv("NNEXP_CACHE_DIR", str(tmp_path / "cache"))
    other = data.load("mnist", make_fake_dataset(tmp_path / "e", n_test=4))  # other files: other keys
    assert len(other.test) == 4 and len(list((tmp_path / "cache" / "arrays").iterdir())) == 5


def test_a_loaded_splits_evaluation_form_is_made_once_per_machine(tmp_path):
    from nnexp.engine.network import EvaluationSet
    from nnexp.train import evaluation_form

    d = make_fake_dataset(tmp_path / "d")
    split = data.load("mnist", d).validation
    made = evaluation_form(split)  # made now, and kept under the split's key
    assert evaluation_form(split) is made  # within a process: one object per split
    read = evaluation_form(data.load("mnist", d).validation)  # a split loaded later reads it back
    fresh = EvaluationSet(np.array(read.source))  # the independent expectation, made from the pixels now
    np.testing.assert_array_equal(read.xt, fresh.xt)
    assert (read.cols is None) == (fresh.cols is None)
    (kept,) = [f for f in (tmp_path / "cache" / "arrays").iterdir() if f.name.endswith("-validation-evaluation")]
    assert _mapped_from(read.xt) == str(kept / "xt.npy")  # a later split maps it
    assert data.first_n(data.load("mnist", d).validation, 3).key is None  # a subset has its own form, not kept


@pytest.mark.parametrize("kind", ["raw", "float64"])
def test_a_damaged_array_cache_is_decoded_again_with_one_warning(tmp_path, caplog, kind):
    d = make_fake_dataset(tmp_path / "d")
    first = data.load("mnist", d)
    folder = _cache_folders(tmp_path)[kind]
    damaged = folder / ("train_images.npy" if kind == "raw" else "train_x.npy")
    damaged.write_bytes(b"\x93NUMPY truncated")
    with caplog.at_level(logging.WARNING):
        again = data.load("mnist", d)
    warnings = [r.getMessage() for r in caplog.records if "array cache" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(f"ignoring the damaged array cache {folder}")
    assert np.array_equal(first.train.x, again.train.x)
    assert np.load(damaged).shape[0] == (len(first.train) + len(first.validation) if kind == "raw"
                                         else len(first.train))  # rewritten


def test_digits_from_a_warm_cache_never_import_sklearn(tmp_path):
    code = ("import sys; from nnexp import data; s = data.load('digits'); "
            "print(len(s.train), len(s.validation), len(s.test), 'sklearn' in sys.modules, float(s.train.x.sum()))")
    env = {**os.environ, "NNEXP_CACHE_DIR": str(tmp_path / "cache")}
    cold = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    warm = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert cold.returncode == 0 and warm.returncode == 0, cold.stderr + warm.stderr
    n_cold, n_warm = cold.stdout.split(), warm.stdout.split()
    assert n_cold[:3] == n_warm[:3] == ["1197", "300", "300"]
    assert n_cold[3] == "True" and n_warm[3] == "False"  # decoded by sklearn once, then read back
    assert n_cold[4] == n_warm[4]  # the same pixels


def test_a_cache_that_cannot_be_written_only_costs_time(tmp_path, monkeypatch):
    d = make_fake_dataset(tmp_path / "d")
    blocked = tmp_path / "a-file"  # the cache's parent is a file: nothing can be written under it
    blocked.write_text("")
    monkeypatch.setenv("NNEXP_CACHE_DIR", str(blocked / "cache"))
    first, again = data.load("mnist", d), data.load("mnist", d)
    assert np.array_equal(first.train.x, again.train.x) and len(first.test) == 3
