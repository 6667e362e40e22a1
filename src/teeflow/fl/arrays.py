"""Named float32 arrays ↔ safetensors bytes, and their digests (models and updates on the wire).

Format: safetensors (Hugging Face, https://huggingface.co/docs/safetensors, "Format"):
``u64 little-endian N`` ‖ ``N`` bytes of JSON header ``{name: {"dtype", "shape",
"data_offsets": [begin, end]}}`` padded with spaces ‖ the tensor bytes (little-endian,
row-major). Bytes are produced by the ``safetensors`` package's numpy API, which orders tensors
deterministically (by alignment, then name), so equal arrays always give equal bytes.

**Canonical bytes and digests.** :func:`encode_arrays` writes no ``__metadata__`` and sorts the
names; :func:`arrays_digest` is ``SHA-256(encode_arrays(arrays))``. :func:`decode_arrays`
accepts only canonical bytes (it re-encodes and compares), so for any accepted ``data``,
``sha256(data) == arrays_digest(decode_arrays(data))``: the digest of an update names its
content, never its encoding.

**Bounded parsing.** Before anything is allocated, the header is parsed by this module
(length, UTF-8, JSON without duplicate keys, exactly the three fields per tensor, dtype allowed,
shape and offsets consistent, tensors contiguous and covering the data exactly) against
:class:`ArrayLimits` (most tensors, most total bytes, header size, name length, rank). Only then
does ``safetensors.numpy.load`` build the arrays. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy
from numpy.typing import NDArray

from teeflow.errors import FLError, ParseError

__all__ = [
    "DEFAULT_LIMITS",
    "DTYPES",
    "ArrayDict",
    "ArrayLimits",
    "Arrays",
    "TensorInfo",
    "arrays_digest",
    "arrays_nbytes",
    "check_compatible",
    "decode_arrays",
    "encode_arrays",
    "read_header",
]

#: Named float32 arrays (read-only view of a model or an update).
Arrays = Mapping[str, NDArray[np.float32]]
#: A mutable mapping of named arrays (what decoders and strategies return).
ArrayDict = dict[str, NDArray[np.float32]]

#: safetensors dtype codes this module knows, with their numpy dtypes.
DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]*")
_FIELDS = frozenset({"dtype", "shape", "data_offsets"})


@dataclass(frozen=True)
class ArrayLimits:
    """Bounds for encoding and decoding.

    Attributes:
        max_tensors: most named arrays.
        max_total_bytes: most tensor bytes in total.
        max_header_bytes: largest JSON header.
        max_name_chars: longest name.
        max_dims: highest rank.
        dtypes: safetensors dtype codes allowed (default: ``F32`` only).
    """

    max_tensors: int = 10_000
    max_total_bytes: int = 1 << 30
    max_header_bytes: int = 16 << 20
    max_name_chars: int = 256
    max_dims: int = 8
    dtypes: frozenset[str] = field(default_factory=lambda: frozenset({"F32"}))


#: The limits used when none are given (float32 only, ≤ 10,000 tensors, ≤ 1 GiB).
DEFAULT_LIMITS = ArrayLimits()


@dataclass(frozen=True)
class TensorInfo:
    """One header entry: name, dtype code, shape and byte range inside the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _code_of(dtype: np.dtype[Any]) -> str | None:
    for code, dt in DTYPES.items():
        if dt == dtype.newbyteorder("<") or dt == dtype:
            return code
    return None


def _check_name(name: object, limits: ArrayLimits) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= limits.max_name_chars:
        raise ParseError(f"array name must be 1..{limits.max_name_chars} characters")
    if not _NAME.fullmatch(name) or name.startswith("__"):
        raise ParseError(f"array name {name[:64]!r} has characters outside [A-Za-z0-9_.:/-]")
    return name


def encode_arrays(arrays: Arrays, *, limits: ArrayLimits = DEFAULT_LIMITS) -> bytes:
    """Canonical safetensors bytes of ``arrays`` (names sorted, no metadata).

    Args:
        arrays: name → numpy array (any memory layout; copied to C order little-endian).
        limits: bounds; the dtype of each array must be in ``limits.dtypes``.

    Raises:
        ParseError: a bad name, a value that is not a numpy array, a dtype not allowed, too
            many tensors, too many bytes or too high a rank.
    """
    if len(arrays) > limits.max_tensors:
        raise ParseError(f"{len(arrays)} arrays exceed the limit of {limits.max_tensors}")
    prepared: dict[str, np.ndarray[Any, Any]] = {}
    total = 0
    for name in sorted(arrays):
        _check_name(name, limits)
        value = arrays[name]
        if not isinstance(value, np.ndarray):
            raise ParseError(f"array {name!r} is not a numpy array")
        code = _code_of(value.dtype)
        if code is None or code not in limits.dtypes:
            raise ParseError(
                f"array {name!r} has dtype {value.dtype}, allowed: "
                f"{', '.join(sorted(limits.dtypes))}"
            )
        if value.ndim > limits.max_dims:
            raise ParseError(f"array {name!r} has rank {value.ndim} > {limits.max_dims}")
        total += value.nbytes
        if total > limits.max_total_bytes:
            raise ParseError(f"arrays exceed {limits.max_total_bytes} bytes")
        prepared[name] = np.asarray(value, dtype=DTYPES[code], order="C")  # keeps 0-d
    return safetensors.numpy.save(prepared)


def arrays_digest(arrays: Arrays, *, limits: ArrayLimits = DEFAULT_LIMITS) -> bytes:
    """SHA-256 (32 bytes) of :func:`encode_arrays` of ``arrays``.

    Raises:
        ParseError: see :func:`encode_arrays`.
    """
    return hashlib.sha256(encode_arrays(arrays, limits=limits)).digest()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ParseError(f"safetensors header: duplicate key {key[:64]!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> None:
    raise ParseError(f"safetensors header: {name} is not JSON")


def _int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ParseError(f"safetensors header: {what} must be a non-negative integer")
    return value


def read_header(data: bytes, *, limits: ArrayLimits = DEFAULT_LIMITS) -> list[TensorInfo]:
    """Parse and check the safetensors header of ``data`` without touching the tensor bytes.

    Returns:
        The entries ordered by ``begin`` offset.

    Raises:
        ParseError: truncated, header too large or not UTF-8 JSON, duplicate keys,
            ``__metadata__`` present, a bad name, unknown fields, dtype not in
            ``limits.dtypes``, rank or count or total size over the limits, offsets that do
            not match the shape, overlap, gaps, or trailing bytes.
    """
    if len(data) < 8:
        raise ParseError("safetensors: shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > limits.max_header_bytes:
        raise ParseError(f"safetensors: header of {n} bytes exceeds {limits.max_header_bytes}")
    if len(data) < 8 + n:
        raise ParseError("safetensors: truncated header")
    try:
        text = bytes(data[8 : 8 + n]).decode("utf-8")
        header = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ParseError("safetensors: header is not UTF-8") from None
    except (ValueError, RecursionError):
        raise ParseError("safetensors: header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ParseError("safetensors: header must be a JSON object")
    if "__metadata__" in header:
        raise ParseError("safetensors: __metadata__ is not accepted (not canonical)")
    if len(header) > limits.max_tensors:
        raise ParseError(f"safetensors: {len(header)} tensors exceed {limits.max_tensors}")
    infos = []
    for name, entry in header.items():
        _check_name(name, limits)
        if not isinstance(entry, dict) or set(entry) != _FIELDS:
            raise ParseError(f"safetensors: tensor {name!r} must have exactly {sorted(_FIELDS)}")
        dtype = entry["dtype"]
        if not isinstance(dtype, str) or dtype not in DTYPES or dtype not in limits.dtypes:
            raise ParseError(f"safetensors: tensor {name!r} dtype {str(dtype)[:16]!r} not allowed")
        shape = entry["shape"]
        if not isinstance(shape, list) or len(shape) > limits.max_dims:
            raise ParseError(
                f"safetensors: tensor {name!r} shape must be a list of rank <= {limits.max_dims}"
            )
        dims = tuple(_int(d, f"tensor {name!r} shape") for d in shape)
        size = DTYPES[dtype].itemsize
        for d in dims:
            size *= d
            if size > limits.max_total_bytes:
                raise ParseError(f"safetensors: tensor {name!r} exceeds the size limit")
        offsets = entry["data_offsets"]
        if not isinstance(offsets, list) or len(offsets) != 2:
            raise ParseError(f"safetensors: tensor {name!r} data_offsets must be [begin, end]")
        begin, end = (_int(o, f"tensor {name!r} data_offsets") for o in offsets)
        if end < begin or end - begin != size:
            raise ParseError(f"safetensors: tensor {name!r} offsets do not match its shape")
        infos.append(TensorInfo(name, dtype, dims, begin, end))
    infos.sort(key=lambda t: (t.begin, t.end))
    pos = 0
    for info in infos:
        if info.begin != pos:
            raise ParseError(f"safetensors: tensor {info.name!r} overlaps or leaves a gap")
        pos = info.end
        if pos > limits.max_total_bytes:
            raise ParseError(f"safetensors: tensors exceed {limits.max_total_bytes} bytes")
    if len(data) - 8 - n != pos:
        raise ParseError(
            f"safetensors: data section is {len(data) - 8 - n} bytes, header describes {pos}"
        )
    return infos


def decode_arrays(data: bytes, *, limits: ArrayLimits = DEFAULT_LIMITS) -> ArrayDict:
    """Decode canonical safetensors bytes into named arrays (bounded, never pickled).

    Args:
        data: the bytes (e.g. an update received from a client).
        limits: bounds and allowed dtypes (default float32 only).

    Returns:
        name → writable numpy array (a copy).

    Raises:
        ParseError: any check of :func:`read_header` fails, the safetensors library refuses
            the bytes, or the bytes are not the canonical encoding of their arrays.
    """
    read_header(data, limits=limits)
    try:
        arrays = safetensors.numpy.load(bytes(data))
    except (safetensors.SafetensorError, ValueError, TypeError):
        raise ParseError("safetensors: the library refused the bytes") from None
    out: ArrayDict = {name: np.array(arrays[name], copy=True) for name in sorted(arrays)}
    if encode_arrays(out, limits=limits) != data:
        raise ParseError("safetensors: bytes are not in canonical form")
    return out


def arrays_nbytes(arrays: Arrays) -> int:
    """Total bytes of the arrays' elements."""
    return sum(int(v.nbytes) for v in arrays.values())


def check_compatible(reference: Arrays, other: Arrays, *, who: str = "update") -> None:
    """Check that ``other`` has exactly ``reference``'s names and shapes, float32, finite.

    Raises:
        FLError: names differ, a shape or dtype differs, or a value is NaN/infinite
            (the message names the array, never its values).
    """
    if set(reference) != set(other):
        missing = sorted(set(reference) - set(other))[:3]
        extra = sorted(set(other) - set(reference))[:3]
        raise FLError(f"{who}: array names differ (missing {missing}, unexpected {extra})")
    for name, ref in reference.items():
        value = other[name]
        if not isinstance(value, np.ndarray) or value.shape != ref.shape:
            raise FLError(f"{who}: array {name!r} has the wrong shape")
        if value.dtype != np.float32:
            raise FLError(f"{who}: array {name!r} is not float32")
        if not bool(np.isfinite(value).all()):
            raise FLError(f"{who}: array {name!r} holds NaN or infinite values")
