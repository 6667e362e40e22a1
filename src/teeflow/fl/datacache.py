"""A shared, verified cache of decoded data sets for the clients of one machine.

Ten clients of a local federation each used to read the four MNIST ``.gz`` files, check them
and decompress 55 MB — ten times the same CPU work and ten private copies of the same pixels.
With this cache the first client that needs a data set decodes it once (under an exclusive
lock, so the others wait instead of repeating the work) and writes it as raw ``.npy`` arrays
with a manifest; every client then maps those arrays read-only (``numpy.load(mmap_mode="r")``:
the page cache holds one copy for all processes).

Integrity:

- the *source* is still checked by every client: the four ``.gz`` files must match the
  published MD5 and the pinned SHA-256 (:data:`teeflow.datasets.mnist.MNIST_FILES`) before the
  cache is used, and the cache entry is named by those SHA-256s (a different source never
  finds it);
- the entry is written to a temporary folder, flushed, and renamed into place (atomic: a reader
  sees all of it or nothing); its ``manifest.json`` records dtype, shape and the SHA-256 of each
  decoded array, computed when the entry was made from the checked source;
- a reader re-hashes every array it maps and compares with the manifest; any mismatch (or
  unreadable entry) is logged and the client falls back to decoding the checked source itself
  (the broken entry is replaced).

Layout: ``<cache>/mnist-<key>/{manifest.json, x_train.npy, y_train.npy, x_test.npy,
y_test.npy}`` with ``key`` = SHA-256 over the four source SHA-256s (first 32 hex digits).
``<cache>`` is ``$TEEFLOW_DATA_CACHE`` if set (``off`` disables the cache), else
``$TEEFLOW_HOME/cache/datasets`` (``~/.teeflow/cache/datasets``).

Data sets other than MNIST (``digits``, ``npz``) are small and load as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from teeflow.datasets import Dataset, DataSpec, Split, parse_data_spec
from teeflow.datasets import load_client_data as _load_uncached
from teeflow.datasets.base import DatasetError
from teeflow.datasets.partition import iid_partition, partition

__all__ = [
    "CACHE_FORMAT",
    "cache_dir",
    "load_client_data",
    "load_mnist_cached",
    "read_entry",
    "write_entry",
]

_LOG = logging.getLogger("teeflow.fl.datacache")
CACHE_FORMAT = "teeflow-array-cache/1"
_NAMES = ("x_train", "y_train", "x_test", "y_test")
_MAX_MANIFEST_BYTES = 1 << 16


def cache_dir() -> Path | None:
    """The cache folder (module docstring), or None when ``TEEFLOW_DATA_CACHE=off``."""
    env = os.environ.get("TEEFLOW_DATA_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "no") else Path(env)
    home = os.environ.get("TEEFLOW_HOME")
    base = Path(home) if home else Path.home() / ".teeflow"
    return base / "cache" / "datasets"


def _digest(arr: NDArray[Any]) -> str:
    data: Any = np.ascontiguousarray(arr)
    return hashlib.sha256(memoryview(data).cast("B")).hexdigest()


def write_entry(folder: Path, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> None:
    """Write ``arrays`` (name → array) and a manifest (with ``meta``) as the cache entry
    ``folder``, atomically: built in a temporary sibling, flushed, renamed into place. An entry
    that appeared meanwhile (another writer) is kept.

    Raises:
        OSError: the folder cannot be written.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        entries = {}
        for name, arr in arrays.items():
            a = np.ascontiguousarray(arr)
            with (tmp / f"{name}.npy").open("wb") as fh:
                np.save(fh, a, allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
            entries[name] = {"dtype": a.dtype.str, "shape": list(a.shape), "sha256": _digest(a)}
        manifest = {"format": CACHE_FORMAT, **meta, "arrays": entries}
        with (tmp / "manifest.json").open("w", encoding="utf-8") as fh:
            json.dump(manifest, fh, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.rename(tmp, folder)
        except OSError:
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_entry(folder: Path, expect: dict[str, Any]) -> dict[str, NDArray[Any]]:
    """Map the arrays of the cache entry ``folder`` read-only and verify them.

    Args:
        folder: the entry.
        expect: manifest fields that must match (e.g. the source digests).

    Returns:
        name → read-only memory-mapped array, each with the dtype, shape and SHA-256 the
        manifest records.

    Raises:
        DatasetError: missing or malformed entry, a manifest field differs from ``expect``,
            or an array does not match its manifest.
    """
    try:
        raw = (folder / "manifest.json").read_bytes()[: _MAX_MANIFEST_BYTES + 1]
        if len(raw) > _MAX_MANIFEST_BYTES:
            raise DatasetError(f"{folder}: manifest too large")
        manifest = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{folder}: no readable manifest ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise DatasetError(f"{folder}: not a {CACHE_FORMAT} entry")
    for key, value in expect.items():
        if manifest.get(key) != value:
            raise DatasetError(f"{folder}: manifest {key!r} differs")
    entries = manifest.get("arrays")
    if not isinstance(entries, dict):
        raise DatasetError(f"{folder}: manifest lists no arrays")
    out: dict[str, NDArray[Any]] = {}
    for name, info in entries.items():
        if not isinstance(name, str) or not name.isidentifier() or not isinstance(info, dict):
            raise DatasetError(f"{folder}: malformed manifest entry")
        try:
            arr = np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{folder}: cannot map {name} ({type(exc).__name__})") from None
        if (
            arr.dtype.str != info.get("dtype")
            or list(arr.shape) != info.get("shape")
            or _digest(arr) != info.get("sha256")
        ):
            raise DatasetError(f"{folder}: {name} does not match its manifest")
        out[name] = arr
    return out


def _source_digests(directory: Path) -> dict[str, str]:
    """SHA-256 of each MNIST source file after checking its published MD5 and pinned SHA-256.

    Raises:
        DatasetError: a file is missing, unreadable, too large or does not match.
    """
    from teeflow.datasets.mnist import MAX_GZ_BYTES, MNIST_FILES

    out = {}
    for key, spec in MNIST_FILES.items():
        path = directory / spec.filename
        try:
            with path.open("rb") as fh:
                blob = fh.read(MAX_GZ_BYTES + 1)
        except OSError as exc:
            raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
        if len(blob) > MAX_GZ_BYTES:
            raise DatasetError(f"{path} larger than {MAX_GZ_BYTES} bytes")
        if hashlib.md5(blob, usedforsecurity=False).hexdigest() != spec.md5:
            raise DatasetError(f"{path}: MD5 differs from the published value")
        sha = hashlib.sha256(blob).hexdigest()
        if sha != spec.sha256:
            raise DatasetError(f"{path}: SHA-256 differs from the recorded value")
        out[key] = sha
    return out


_MEMO: dict[tuple[str, str], Dataset] = {}
_SHARES: dict[tuple[str, str], Dataset] = {}


def load_mnist_cached(directory: str | os.PathLike[str], cache: Path | None) -> Dataset:
    """MNIST from ``directory`` through the cache ``cache`` (module docstring); as
    :func:`teeflow.datasets.mnist.load_mnist` but with read-only memory-mapped arrays.

    Raises:
        DatasetError: the source files are missing or do not match their checksums; see
            :func:`~teeflow.datasets.mnist.load_mnist`.
        ParseError: see :func:`~teeflow.datasets.mnist.load_mnist`.
    """
    from teeflow.datasets.mnist import load_mnist

    root = Path(directory)
    if cache is None:
        return load_mnist(root)
    checked = _MEMO.get((str(cache), str(root.resolve())))
    if checked is not None:  # this process checked and mapped it already
        return checked
    sources = _source_digests(root)  # every client process checks the source files
    key = hashlib.sha256("".join(sources[k] for k in sorted(sources)).encode()).hexdigest()[:32]
    memo = _MEMO.get((str(cache), key))
    if memo is not None:
        return memo
    folder = cache / f"mnist-{key}"
    expect = {"dataset": "mnist", "sources": sources}
    try:
        arrays = read_entry(folder, expect)
    except DatasetError as first:
        arrays = _build(folder, expect, root, first)
    ds = Dataset(
        "mnist",
        Split(arrays["x_train"], arrays["y_train"], 1.0 / 255.0),
        Split(arrays["x_test"], arrays["y_test"], 1.0 / 255.0),
    )
    _MEMO[(str(cache), key)] = ds
    _MEMO[(str(cache), str(root.resolve()))] = ds
    return ds


def _build(
    folder: Path, expect: dict[str, Any], root: Path, why: DatasetError
) -> dict[str, NDArray[Any]]:
    from teeflow.datasets.mnist import load_mnist

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = (folder.parent / f"{folder.name}.lock").open("a+b")
    except OSError as exc:
        _LOG.warning("data cache %s not usable (%s): decoding the source", folder.parent, exc)
        return _arrays(load_mnist(root))
    with lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
        try:  # another client may have built it while this one waited
            return read_entry(folder, expect)
        except DatasetError as again:
            if folder.exists():
                _LOG.warning("data cache entry refused (%s; first: %s): rebuilding", again, why)
                _discard(folder)
        ds = load_mnist(root)
        arrays = _arrays(ds)
        try:
            write_entry(folder, arrays, expect)
            return read_entry(folder, expect)
        except (OSError, DatasetError) as exc:
            _LOG.warning("cannot write the data cache %s (%s): using the source", folder, exc)
            return arrays


def _arrays(ds: Dataset) -> dict[str, NDArray[Any]]:
    return {
        "x_train": ds.train.x,
        "y_train": ds.train.y,
        "x_test": ds.test.x,
        "y_test": ds.test.y,
    }


def _discard(folder: Path) -> None:
    trash = folder.with_name(f".{folder.name}.bad-{os.getpid()}")
    with contextlib.suppress(OSError):
        os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def load_client_data(spec: DataSpec | str, *, cache: Path | bool | None = True) -> Dataset:
    """This client's share of the data set ``spec`` names — exactly what
    :func:`teeflow.datasets.load_client_data` returns, with MNIST read through the shared
    cache (``cache``: a folder, ``True`` for :func:`cache_dir`, ``False``/None for none).

    Raises:
        ParseError: a malformed spec string.
        DatasetError: the data cannot be loaded or partitioned as asked.
    """
    s = parse_data_spec(spec) if isinstance(spec, str) else spec
    folder = cache_dir() if cache is True else (cache or None)
    if s.dataset != "mnist" or folder is None or s.download:
        return _load_uncached(s)
    memo_key = (str(folder), s.to_string())
    share = _SHARES.get(memo_key)
    if share is not None:  # a client runs two tasks per round on the same share
        return share
    full = load_mnist_cached(os.fspath(s.path or ""), folder)
    if s.clients == 1:
        share = full
    else:
        train_parts = partition(
            full.train.y,
            s.clients,
            scheme=s.partition,
            alpha=s.alpha,
            seed=s.seed,
            min_size=s.min_size,
        )
        test_parts = iid_partition(len(full.test), s.clients, seed=s.seed, min_size=0)
        share = Dataset(
            full.name,
            full.train.subset(train_parts[s.index]),
            full.test.subset(test_parts[s.index]),
            full.num_classes,
        )
    if len(_SHARES) >= 8:
        _SHARES.clear()
    _SHARES[memo_key] = share
    return share
