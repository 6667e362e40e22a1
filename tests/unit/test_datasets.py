"""teeflow.datasets: IDX parsing (real MNIST files + malformed input), checksums, download
injection, digits, and data specs."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teeflow.datasets import (
    MNIST_FILES,
    DatasetError,
    gunzip_bounded,
    load_client_data,
    load_digits,
    load_mnist,
    parse_data_spec,
    parse_idx,
)
from teeflow.datasets.mnist import MIRRORS
from teeflow.datasets.spec import DataSpec
from teeflow.errors import FLError, ParseError

SHARED = Path(os.environ.get("TEEFLOW_SHARED", Path(__file__).resolve().parents[3] / "shared"))
MNIST_DIR = SHARED / "data" / "mnist"
DATA_README = SHARED / "data" / "README.md"


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    if not all((MNIST_DIR / f.filename).is_file() for f in MNIST_FILES.values()):
        pytest.skip(f"MNIST files not found in {MNIST_DIR} (set TEEFLOW_SHARED)")
    return MNIST_DIR


def idx(dims: tuple[int, ...], payload: bytes | None = None, dtype: int = 0x08) -> bytes:
    n = int(np.prod(dims)) if dims else 0
    body = payload if payload is not None else bytes(i % 256 for i in range(n))
    return b"\0\0" + bytes([dtype, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + body


# -- real MNIST ---------------------------------------------------------------------------


def test_pinned_checksums_match_the_shared_readme() -> None:
    if not DATA_README.is_file():
        pytest.skip(f"{DATA_README} not found")
    text = DATA_README.read_text()
    for spec in MNIST_FILES.values():
        line = next(ln for ln in text.splitlines() if f"`mnist/{spec.filename}`" in ln)
        assert spec.md5 in line and spec.sha256 in line
    published = {
        "train-images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    assert {k: v.md5 for k, v in MNIST_FILES.items()} == published


def test_real_files_have_the_published_md5(mnist_dir: Path) -> None:
    for spec in MNIST_FILES.values():
        blob = (mnist_dir / spec.filename).read_bytes()
        assert hashlib.md5(blob, usedforsecurity=False).hexdigest() == spec.md5


def test_load_real_mnist(mnist_dir: Path) -> None:
    data = load_mnist(mnist_dir)
    assert data.train.x.shape == (60000, 28, 28) and data.test.x.shape == (10000, 28, 28)
    assert data.train.x.dtype == np.uint8 and data.train.y.dtype == np.int64
    assert list(np.bincount(data.train.y)) == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
    assert list(np.bincount(data.test.y)) == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert list(data.train.y[:10]) == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert list(data.test.y[:10]) == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert int(data.test.x[0].astype(np.int64).sum()) == 18454
    assert int(data.train.x.max()) == 255
    feats = data.test.subset(np.arange(5, dtype=np.int64)).features()
    assert feats.dtype == np.float32 and feats.min() >= 0.0 and feats.max() <= 1.0


def test_real_idx_header_parses_exactly(mnist_dir: Path) -> None:
    raw = gunzip_bounded((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert len(raw) == 10008
    assert parse_idx(raw).shape == (10000,)
    with pytest.raises(ParseError):
        parse_idx(raw + b"\0")
    with pytest.raises(ParseError):
        parse_idx(raw[:-1])


def test_missing_files_without_download_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="download=True"):
        load_mnist(tmp_path)


def test_download_uses_injected_fetch_and_checks_md5(mnist_dir: Path, tmp_path: Path) -> None:
    for spec in MNIST_FILES.values():
        if spec.filename != "t10k-labels-idx1-ubyte.gz":
            shutil.copy(mnist_dir / spec.filename, tmp_path / spec.filename)
    good = (mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()
    calls: list[str] = []

    def fetch(url: str) -> bytes:
        calls.append(url)
        if url.startswith(MIRRORS[0]):
            return good[:-1] + bytes([good[-1] ^ 1])  # corrupt on mirror 1: fall through
        return good

    data = load_mnist(tmp_path, download=True, fetch=fetch)
    assert len(data.test) == 10000
    assert calls == [m + "t10k-labels-idx1-ubyte.gz" for m in MIRRORS[:2]]
    assert (tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes() == good
    calls.clear()
    load_mnist(tmp_path, download=True, fetch=fetch)  # present now: no network
    assert calls == []


def test_download_fails_when_every_mirror_is_bad(tmp_path: Path) -> None:
    def fetch(url: str) -> bytes:
        if "lecun" in url:
            raise DatasetError("offline")
        return b"not the file"

    with pytest.raises(DatasetError, match="could not download"):
        load_mnist(tmp_path, download=True, fetch=fetch)
    assert not any(tmp_path.iterdir())


def test_corrupt_file_on_disk_is_refused(mnist_dir: Path, tmp_path: Path) -> None:
    for spec in MNIST_FILES.values():
        shutil.copy(mnist_dir / spec.filename, tmp_path / spec.filename)
    target = tmp_path / "t10k-labels-idx1-ubyte.gz"
    blob = bytearray(target.read_bytes())
    blob[100] ^= 1
    target.chmod(0o644)
    target.write_bytes(bytes(blob))
    with pytest.raises(DatasetError, match="MD5"):
        load_mnist(tmp_path)


# -- IDX and gzip parsing -----------------------------------------------------------------


def test_parse_idx_round_trip() -> None:
    arr = parse_idx(idx((3, 2, 4)))
    assert arr.shape == (3, 2, 4) and arr.dtype == np.uint8
    assert arr.ravel().tolist() == list(range(24))


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\0\0\x08",
        b"\x01\0\x08\x01" + struct.pack(">I", 0),  # magic prefix not zero
        idx((2,), dtype=0x0D),  # float elements
        idx((2,), dtype=0x09),  # signed bytes
        b"\0\0\x08\x00",  # 0 dimensions
        idx((1, 1, 1, 1, 1)),  # 5 dimensions
        b"\0\0\x08\x02" + struct.pack(">I", 3),  # truncated dims
        idx((4,))[:-1],  # truncated payload
        idx((4,)) + b"\0",  # trailing byte
        b"\0\0\x08\x03" + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1),  # huge
    ],
)
def test_malformed_idx_is_a_parse_error(blob: bytes) -> None:
    with pytest.raises(ParseError):
        parse_idx(blob)


def test_parse_idx_is_bounded() -> None:
    with pytest.raises(ParseError, match="limit"):
        parse_idx(idx((100,)), max_bytes=50)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_parse_idx_is_total(blob: bytes) -> None:
    try:
        arr = parse_idx(blob)
    except ParseError:
        return
    assert arr.dtype == np.uint8 and arr.size == len(blob) - 4 - 4 * arr.ndim


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_idx_header_is_rejected_or_consistent(data: st.DataObject) -> None:
    good = idx((3, 5))
    pos = data.draw(st.integers(0, 11))
    value = data.draw(st.integers(0, 255))
    blob = bytearray(good)
    blob[pos] = value
    try:
        arr = parse_idx(bytes(blob))
    except ParseError:
        return
    assert int(np.prod(arr.shape)) == len(blob) - 4 - 4 * arr.ndim


def test_gunzip_bounded() -> None:
    payload = idx((10, 10))
    assert gunzip_bounded(gzip.compress(payload)) == payload
    bomb = gzip.compress(b"\0" * (1 << 20))
    with pytest.raises(ParseError, match="exceeds"):
        gunzip_bounded(bomb, max_bytes=1000)
    with pytest.raises(ParseError, match="truncated"):
        gunzip_bounded(gzip.compress(payload)[:-10])
    with pytest.raises(ParseError, match="trailing"):
        gunzip_bounded(gzip.compress(payload) + b"junk")
    with pytest.raises(ParseError):
        gunzip_bounded(zlib.compress(payload))  # zlib, not gzip
    with pytest.raises(ParseError):
        gunzip_bounded(b"")


# -- digits and data specs ----------------------------------------------------------------


def test_digits_is_offline_deterministic_and_split() -> None:
    a, b = load_digits(seed=3), load_digits(seed=3)
    assert len(a.train) + len(a.test) == 1797
    assert a.train.feature_shape == (8, 8)
    assert np.array_equal(a.test.y, b.test.y) and np.array_equal(a.test.x, b.test.x)
    feats = a.train.features()
    assert feats.dtype == np.float32 and feats.min() >= 0.0 and feats.max() == 1.0
    # stratified: every class in the test split
    assert set(np.unique(a.test.y).tolist()) == set(range(10))
    c = load_digits(seed=4)
    assert not np.array_equal(a.test.y, c.test.y) or not np.array_equal(a.test.x, c.test.x)


def test_data_spec_round_trip() -> None:
    text = "digits?clients=3&index=2&partition=dirichlet&alpha=0.3&seed=7"
    spec = parse_data_spec(text)
    assert spec == DataSpec(
        dataset="digits", clients=3, index=2, partition="dirichlet", alpha=0.3, seed=7
    )
    assert parse_data_spec(spec.to_string()) == spec
    assert parse_data_spec("mnist:/d/m?download=true").download is True
    assert parse_data_spec("digits").to_string() == "digits"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "cifar",
        "digits?clients=2&index=2",
        "digits?clients=0",
        "digits?alpha=-1",
        "digits?alpha=nan",
        "digits?bogus=1",
        "digits?seed=1&seed=2",
        "digits?seed",
        "mnist",
        "digits:/x",
        "mnist:/x?download=maybe",
        "digits?" + "a" * 5000,
    ],
)
def test_bad_data_specs(text: str) -> None:
    with pytest.raises(ParseError):
        parse_data_spec(text)


def test_client_data_covers_the_data_set() -> None:
    full = load_client_data("digits?seed=5")
    parts = [load_client_data(f"digits?clients=3&index={i}&seed=5") for i in range(3)]
    assert sum(len(p.train) for p in parts) == len(full.train)
    assert sum(len(p.test) for p in parts) == len(full.test)
    assert sorted(np.concatenate([p.train.y for p in parts]).tolist()) == sorted(
        full.train.y.tolist()
    )


def test_npz_spec(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 255, (20, 4, 4), dtype=np.uint8),
        y_train=np.arange(20) % 10,
        x_test=np.zeros((5, 4, 4), np.uint8),
        y_test=np.arange(5),
        scale=np.float64(1 / 255),
    )
    data = load_client_data(f"npz:{path}?clients=2&index=1")
    assert len(data.train) == 10 and data.train.feature_shape == (4, 4)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros(3))
    with pytest.raises(DatasetError, match="missing"):
        load_client_data(f"npz:{bad}")
    obj = tmp_path / "obj.npz"
    np.savez(
        obj,
        x_train=np.array([{"a": 1}], dtype=object),
        y_train=np.zeros(1, np.int64),
        x_test=np.zeros(1),
        y_test=np.zeros(1, np.int64),
    )
    with pytest.raises(DatasetError):
        load_client_data(f"npz:{obj}")  # object arrays need pickle: refused


def test_dataset_error_is_an_fl_error() -> None:
    assert issubclass(DatasetError, FLError)


def test_digits_load_without_scikit_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14, item 10: the digits ship with teeflow (no scikit-learn/scipy, 194 MB); the
    arrays are the UCI test part, pinned by digest."""
    import hashlib
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn → ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    ds = load_digits(test_fraction=0.2, seed=0)
    x = np.concatenate([ds.train.x, ds.test.x])
    y = np.concatenate([ds.train.y, ds.test.y])
    assert x.shape == (1797, 8, 8) and x.dtype == np.uint8 and int(x.max()) == 16
    assert np.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    order = np.lexsort(np.column_stack([x.reshape(len(x), -1), y]).T)  # content order
    digest = hashlib.sha256(x[order].tobytes() + y[order].astype(np.uint8).tobytes())
    assert digest.hexdigest() == DIGITS_CONTENT_SHA256


def test_install_has_no_scikit_learn_and_an_spdx_license() -> None:
    """Issue 14, item 10: `pip install teeflow` pulls neither scikit-learn nor scipy, and the
    licence is an SPDX expression with license-files (no setuptools deprecation warning)."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    deps = " ".join(project["dependencies"]).lower()
    assert "scikit-learn" not in deps and "scipy" not in deps
    assert project["license"] == "Apache-2.0"
    for name in project["license-files"]:
        assert (root / name).is_file()


#: SHA-256 of the 1,797 digits sorted by content (pixels then label), = scikit-learn's copy
DIGITS_CONTENT_SHA256 = "e52e0683ca9dcd0da8d5ced82235db5870211a04a30588ec0cff58d38267538d"
