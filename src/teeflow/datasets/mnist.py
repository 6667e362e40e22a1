"""MNIST from the four original gzip IDX files: bounded IDX parser, checksums, optional download.

IDX format (LeCun, Cortes, Burges, "THE MNIST DATABASE of handwritten digits", section
"FILE FORMATS FOR THE MNIST DATABASE"): big-endian; a 4-byte magic ``00 00 TT NN`` where ``TT``
is the element type (``0x08`` = unsigned byte, the only type MNIST uses and the only one
accepted here) and ``NN`` the number of dimensions; then ``NN`` big-endian uint32 sizes; then
the elements in row-major order. The file length must equal the header plus the product of the
sizes exactly. MNIST labels are ``idx1`` (magic 2049), images ``idx3`` (magic 2051, 28x28).

Each ``.gz`` is checked against the published MD5 and, because MD5 is broken, also against the
SHA-256 recorded in ``../shared/data/README.md``, before it is decompressed (with a bound on the
decompressed size, so a gzip bomb cannot exhaust memory).

Downloads happen only when files are missing **and** ``download=True``; the network is a
callable ``fetch(url) -> bytes`` (default :func:`urllib_fetch`), so tests never use it.
"""

from __future__ import annotations

import hashlib
import os
import struct
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from teeflow._fs import atomic_write
from teeflow.datasets.base import Dataset, DatasetError, Split
from teeflow.errors import ParseError

__all__ = [
    "IDX_UBYTE",
    "MAX_GZ_BYTES",
    "MAX_IDX_BYTES",
    "MIRRORS",
    "MNIST_FILES",
    "Fetch",
    "MnistFile",
    "gunzip_bounded",
    "load_mnist",
    "parse_idx",
    "urllib_fetch",
]

#: IDX element type code for unsigned bytes.
IDX_UBYTE = 0x08
#: Largest decompressed IDX accepted (bytes); MNIST train images are 47,040,016.
MAX_IDX_BYTES = 64 << 20
#: Largest compressed file accepted (bytes); the largest MNIST file is 9,912,422.
MAX_GZ_BYTES = 16 << 20
#: Most IDX dimensions accepted.
MAX_IDX_DIMS = 4

#: Standard mirrors, tried in order (torchvision's S3 copy, Google's CVDF copy, the original).
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

#: ``fetch(url) -> bytes``: the injected network.
Fetch = Callable[[str], bytes]


@dataclass(frozen=True)
class MnistFile:
    """One of the four MNIST files with its pinned checksums (hex) and expected IDX shape."""

    filename: str
    md5: str
    sha256: str
    shape: tuple[int, ...]


#: The four files (``../shared/data/README.md``): MD5 = published, SHA-256 of the ``.gz``.
MNIST_FILES: dict[str, MnistFile] = {
    "train-images": MnistFile(
        "train-images-idx3-ubyte.gz",
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        (60000, 28, 28),
    ),
    "train-labels": MnistFile(
        "train-labels-idx1-ubyte.gz",
        "d53e105ee54ea40749a09fcbcd1e9432",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        (60000,),
    ),
    "t10k-images": MnistFile(
        "t10k-images-idx3-ubyte.gz",
        "9fb629c4189551a2d022fa330f9573f3",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        (10000, 28, 28),
    ),
    "t10k-labels": MnistFile(
        "t10k-labels-idx1-ubyte.gz",
        "ec29112dd5afa0611ce80d1b7f02629c",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        (10000,),
    ),
}


def parse_idx(data: bytes, *, max_bytes: int = MAX_IDX_BYTES) -> NDArray[np.uint8]:
    """Parse a decompressed IDX file of unsigned bytes.

    Args:
        data: the whole file (header + elements), at most ``max_bytes`` bytes.
        max_bytes: upper bound on ``len(data)``.

    Returns:
        A read-only uint8 array of the shape given in the header (a view of ``data``).

    Raises:
        ParseError: too large, truncated header, non-zero magic prefix, element type other
            than ``0x08``, 0 or more than 4 dimensions, or a length that is not exactly the
            header plus the product of the sizes.
    """
    if len(data) > max_bytes:
        raise ParseError(f"IDX: {len(data)} bytes exceeds the limit of {max_bytes}")
    if len(data) < 4:
        raise ParseError("IDX: truncated magic")
    zero, dtype, ndim = data[0:2], data[2], data[3]
    if zero != b"\0\0":
        raise ParseError("IDX: magic must start with two zero bytes")
    if dtype != IDX_UBYTE:
        raise ParseError(f"IDX: element type 0x{dtype:02x} not supported (only 0x08)")
    if not 1 <= ndim <= MAX_IDX_DIMS:
        raise ParseError(f"IDX: {ndim} dimensions (expected 1..{MAX_IDX_DIMS})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ParseError("IDX: truncated dimension sizes")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    count = 1
    for d in dims:
        count *= d
        if count > max_bytes:
            raise ParseError("IDX: declared size exceeds the limit")
    if len(data) - header != count:
        raise ParseError(
            f"IDX: header declares {count} elements but {len(data) - header} bytes follow"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def gunzip_bounded(data: bytes, *, max_bytes: int = MAX_IDX_BYTES) -> bytes:
    """Decompress one gzip member (RFC 1952), refusing output over ``max_bytes``.

    Raises:
        ParseError: not gzip, corrupt or truncated stream, trailing bytes, or output larger
            than ``max_bytes``.
    """
    dec = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = dec.decompress(data, max_bytes + 1)
    except zlib.error:
        raise ParseError("gzip: corrupt stream") from None
    if len(out) > max_bytes or dec.unconsumed_tail:
        raise ParseError(f"gzip: decompressed size exceeds {max_bytes} bytes")
    if not dec.eof:
        raise ParseError("gzip: truncated stream")
    if dec.unused_data:
        raise ParseError("gzip: trailing bytes after the stream")
    return out


def urllib_fetch(url: str, *, timeout: float = 60.0, max_bytes: int = MAX_GZ_BYTES) -> bytes:
    """Default network for :func:`load_mnist` (``http``/``https`` GET, bounded).

    Raises:
        DatasetError: bad scheme, network error, or a body larger than ``max_bytes``.
    """
    if not url.startswith(("https://", "http://")):
        raise DatasetError("only http(s) URLs can be fetched")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - scheme checked
            body: bytes = resp.read(max_bytes + 1)
    except OSError as exc:
        raise DatasetError(f"download of {url} failed: {exc}") from None
    if len(body) > max_bytes:
        raise DatasetError(f"download of {url} larger than {max_bytes} bytes")
    return body


def _check(spec: MnistFile, blob: bytes) -> str | None:
    """None if ``blob`` matches both pinned checksums, else the reason."""
    if hashlib.md5(blob, usedforsecurity=False).hexdigest() != spec.md5:
        return "MD5 differs from the published value"
    if hashlib.sha256(blob).hexdigest() != spec.sha256:
        return "SHA-256 differs from the recorded value"
    return None


def _read_file(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            blob = fh.read(MAX_GZ_BYTES + 1)
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(blob) > MAX_GZ_BYTES:
        raise DatasetError(f"{path} larger than {MAX_GZ_BYTES} bytes")
    return blob


def _write_atomic(path: Path, blob: bytes) -> None:
    try:
        atomic_write(path, blob)
    except OSError as exc:
        raise DatasetError(f"cannot write {path}: {exc.strerror or exc}") from None


def _download(spec: MnistFile, fetch: Fetch, mirrors: Sequence[str]) -> bytes:
    reasons = []
    for mirror in mirrors:
        url = mirror + spec.filename
        try:
            blob = fetch(url)
        except DatasetError as exc:
            reasons.append(str(exc))
            continue
        bad = _check(spec, blob)
        if bad is None:
            return blob
        reasons.append(f"{url}: {bad}")
    raise DatasetError(f"could not download {spec.filename}: " + "; ".join(reasons))


def _load_array(directory: Path, key: str, blobs: dict[str, bytes]) -> NDArray[np.uint8]:
    spec = MNIST_FILES[key]
    blob = blobs[key]
    bad = _check(spec, blob)
    if bad is not None:
        raise DatasetError(f"{directory / spec.filename}: {bad} (corrupt or not the original)")
    try:
        arr = parse_idx(gunzip_bounded(blob))
    except ParseError as exc:
        raise ParseError(f"{spec.filename}: {exc}") from None
    if arr.shape != spec.shape:
        raise ParseError(f"{spec.filename}: shape {arr.shape}, expected {spec.shape}")
    return arr


def load_mnist(
    directory: str | os.PathLike[str],
    *,
    download: bool = False,
    fetch: Fetch | None = None,
    mirrors: Sequence[str] = MIRRORS,
) -> Dataset:
    """Load MNIST (60,000 train + 10,000 test images, 28x28) from ``directory``.

    Args:
        directory: folder holding the four ``*-ubyte.gz`` files of :data:`MNIST_FILES`.
        download: when a file is missing, fetch it from ``mirrors`` (checked against the
            pinned checksums before it is written, atomically, into ``directory``). Without
            it a missing file is an error.
        fetch: the network, ``fetch(url) -> bytes`` (default :func:`urllib_fetch`); it
            should raise :class:`DatasetError` on failure.
        mirrors: base URLs, tried in order.

    Returns:
        ``Dataset("mnist", train, test)``: ``x`` uint8 ``(n, 28, 28)`` with ``scale=1/255``,
        ``y`` int64 ``(n,)``.

    Raises:
        DatasetError: files missing (and ``download`` false), unreadable, checksum
            mismatch, or every mirror failed.
        ParseError: a file with the right checksums that still does not parse (cannot
            happen for the originals) or labels outside ``0..9``.
    """
    root = Path(directory)
    missing = [k for k, s in MNIST_FILES.items() if not (root / s.filename).is_file()]
    blobs: dict[str, bytes] = {}
    if missing:
        if not download:
            names = ", ".join(MNIST_FILES[k].filename for k in missing)
            raise DatasetError(
                f"MNIST files missing in {root}: {names} (pass download=True to fetch them)"
            )
        getter = fetch if fetch is not None else urllib_fetch
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatasetError(f"cannot create {root}: {exc.strerror or exc}") from None
        for key in missing:
            blob = _download(MNIST_FILES[key], getter, mirrors)
            _write_atomic(root / MNIST_FILES[key].filename, blob)
            blobs[key] = blob
    for key, spec in MNIST_FILES.items():
        if key not in blobs:
            blobs[key] = _read_file(root / spec.filename)
    arrays = {key: _load_array(root, key, blobs) for key in MNIST_FILES}
    for key in ("train-labels", "t10k-labels"):
        if arrays[key].size and int(arrays[key].max()) > 9:
            raise ParseError(f"{MNIST_FILES[key].filename}: label outside 0..9")
    scale = 1.0 / 255.0
    train = Split(arrays["train-images"], arrays["train-labels"].astype(np.int64), scale)
    test = Split(arrays["t10k-images"], arrays["t10k-labels"].astype(np.int64), scale)
    return Dataset("mnist", train, test)
