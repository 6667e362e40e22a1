"""Typed values for authorised compute: numpy arrays, tables, bytes and JSON ↔ bytes.

Every input a party seals and every result a worker seals is one *value*, encoded as::

    magic "TFCV" (4) ‖ version 1 (1) ‖ kind (1) ‖ 2 reserved zero bytes ‖ payload

with ``kind``:

=====  =========  =====================================================================
kind   name       payload
=====  =========  =====================================================================
1      ``array``  safetensors (one tensor named ``value``) — a single numpy array
2      ``arrays`` safetensors — a ``dict[str, numpy.ndarray]``
3      ``table``  Apache Arrow IPC *stream* format (``pyarrow.Table``)
4      ``bytes``  raw bytes
5      ``json``   RFC 8785 canonical JSON (numbers, strings, lists, objects; no NaN)
=====  =========  =====================================================================

The safetensors payload (Hugging Face safetensors "Format": ``u64 LE N`` ‖ JSON header ‖
tensor bytes) is written by this module directly into one pre-sized buffer (no
intermediate copies: a 128 MiB array costs one ``memcpy``) and read back **zero-copy**: the
header is validated by :func:`teeflow.fl.arrays.read_header` (bounded, strict, no
``__metadata__``) and each array is an ``np.frombuffer`` view of the decoded buffer. Nothing
is ever unpickled; Arrow IPC is parsed by pyarrow's IPC reader (no pickle either), which is
an optional dependency (``pip install teeflow[tables]``): without it sealing or opening a
table raises :class:`~teeflow.errors.ParseError` naming the missing package, and a table can
still be passed as ``dict[str, numpy.ndarray]`` of equal-length columns.

Errors: :class:`~teeflow.errors.ParseError` for anything malformed or over the limits.
"""

from __future__ import annotations

import importlib
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from teeflow.errors import ParseError
from teeflow.fl.arrays import DTYPES, ArrayLimits, read_header
from teeflow.kbs.policy.canonical import canonical_json

__all__ = [
    "KIND_ARRAY",
    "KIND_ARRAYS",
    "KIND_BYTES",
    "KIND_JSON",
    "KIND_NAMES",
    "KIND_TABLE",
    "MAGIC",
    "VALUE_HEADER_SIZE",
    "ValueLimits",
    "decode_value",
    "encode_value",
    "encoded_kind",
    "have_pyarrow",
]

MAGIC: Final = b"TFCV"
_VERSION: Final = 1
KIND_ARRAY: Final = 1
KIND_ARRAYS: Final = 2
KIND_TABLE: Final = 3
KIND_BYTES: Final = 4
KIND_JSON: Final = 5
#: kind code → name (as shown in lineage records).
KIND_NAMES: Final = {
    KIND_ARRAY: "array",
    KIND_ARRAYS: "arrays",
    KIND_TABLE: "table",
    KIND_BYTES: "bytes",
    KIND_JSON: "json",
}
_HEAD = struct.Struct(">4sBBH")
#: Bytes before the payload.
VALUE_HEADER_SIZE: Final = _HEAD.size  # 8
_SINGLE = "value"
_ALIGN = 8


@dataclass(frozen=True)
class ValueLimits:
    """Bounds on decoded values.

    Attributes:
        max_bytes: largest encoded value (bytes; default 4 GiB).
        max_tensors: most arrays in an ``arrays`` value.
        max_json_bytes: largest JSON value (bytes; default 16 MiB).
        max_json_depth: deepest JSON nesting.
    """

    max_bytes: int = 4 << 30
    max_tensors: int = 10_000
    max_json_bytes: int = 16 << 20
    max_json_depth: int = 64
    dtypes: frozenset[str] = field(default_factory=lambda: frozenset(DTYPES))

    def arrays(self) -> ArrayLimits:
        """The :class:`teeflow.fl.arrays.ArrayLimits` these limits imply."""
        return ArrayLimits(
            max_tensors=self.max_tensors,
            max_total_bytes=self.max_bytes,
            max_header_bytes=16 << 20,
            dtypes=self.dtypes,
        )


DEFAULT_VALUE_LIMITS = ValueLimits()


def have_pyarrow() -> bool:
    """True when ``pyarrow`` can be imported (tables supported)."""
    try:
        importlib.import_module("pyarrow")
    except ImportError:
        return False
    return True


def _pyarrow() -> Any:
    try:
        pa = importlib.import_module("pyarrow")
        importlib.import_module("pyarrow.ipc")
    except ImportError:
        raise ParseError("tables need pyarrow (pip install 'teeflow[tables]')") from None
    return pa


def _is_table(value: object) -> bool:
    mod = type(value).__module__
    return mod.startswith("pyarrow") and type(value).__name__ in ("Table", "RecordBatch")


# -- safetensors (direct, one copy) -----------------------------------------------------------


def _dtype_code(arr: np.ndarray[Any, Any]) -> str:
    for code, dt in DTYPES.items():
        if arr.dtype == dt or arr.dtype == dt.newbyteorder(">"):
            return code
    raise ParseError(f"arrays of dtype {arr.dtype} cannot be sealed (allowed: {sorted(DTYPES)})")


def _safetensors(arrays: Mapping[str, np.ndarray[Any, Any]], head: bytes) -> bytearray:
    """``head`` ‖ safetensors bytes of ``arrays`` (names sorted), built in one buffer."""
    prepared: list[tuple[str, str, np.ndarray[Any, Any]]] = []
    for name in sorted(arrays):
        arr = arrays[name]
        if not isinstance(name, str) or not isinstance(arr, np.ndarray):
            raise ParseError("arrays must map names (str) to numpy arrays")
        code = _dtype_code(arr)
        prepared.append((name, code, np.asarray(arr, dtype=DTYPES[code], order="C")))
    header: dict[str, Any] = {}
    pos = 0
    for name, code, arr in prepared:
        header[name] = {
            "dtype": code, "shape": list(arr.shape), "data_offsets": [pos, pos + arr.nbytes]
        }
        pos += arr.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(len(text) + 8) % _ALIGN)
    out = bytearray(len(head) + 8 + len(text) + pos)
    out[: len(head)] = head
    base = len(head)
    out[base : base + 8] = struct.pack("<Q", len(text))
    out[base + 8 : base + 8 + len(text)] = text
    start = base + 8 + len(text)
    view = memoryview(out)
    for _, _, arr in prepared:
        if arr.nbytes:
            view[start : start + arr.nbytes] = arr.reshape(-1).view(np.uint8).data
        start += arr.nbytes
    return out


def _read_safetensors(payload: memoryview, limits: ValueLimits) -> dict[str, np.ndarray[Any, Any]]:
    infos = read_header(payload, limits=limits.arrays())  # type: ignore[arg-type]
    (n,) = struct.unpack("<Q", payload[:8])
    base = 8 + n
    out: dict[str, np.ndarray[Any, Any]] = {}
    for info in infos:
        dtype = DTYPES[info.dtype]
        count = (info.end - info.begin) // dtype.itemsize
        arr = np.frombuffer(payload, dtype=dtype, count=count, offset=base + info.begin)
        out[info.name] = arr.reshape(info.shape)
    return out


# -- JSON -----------------------------------------------------------------------------------


def _plain(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON types (numpy scalars and 0-d arrays become numbers)."""
    if depth > 64:
        raise ParseError("JSON value nested too deeply")
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ParseError("JSON values must be finite numbers")
        return value
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return _plain(value.item(), depth + 1)
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise ParseError("JSON object keys must be strings")
        return {k: _plain(v, depth + 1) for k, v in value.items()}
    raise ParseError(f"cannot encode a {type(value).__name__} as a compute value")


def _depth_ok(value: Any, limit: int) -> bool:
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
    return True


# -- public API -----------------------------------------------------------------------------


def encode_value(value: Any) -> bytearray:
    """Encode a value (module docstring) into a new buffer.

    Args:
        value: ``numpy.ndarray`` (kind ``array``), ``dict[str, numpy.ndarray]`` (``arrays``),
            ``pyarrow.Table``/``RecordBatch`` (``table``), ``bytes``/``bytearray``/
            ``memoryview`` (``bytes``), or a JSON-compatible value — numbers (numpy scalars
            included), strings, lists, dicts (``json``).

    Returns:
        The encoded bytes (a ``bytearray``, so it can be sealed without another copy).

    Raises:
        ParseError: an unsupported type or dtype, non-finite JSON numbers, or a table
            without pyarrow installed.
    """

    def head(kind: int) -> bytes:
        return _HEAD.pack(MAGIC, _VERSION, kind, 0)

    if isinstance(value, np.ndarray):
        return _safetensors({_SINGLE: value}, head(KIND_ARRAY))
    if isinstance(value, Mapping) and value and all(
        isinstance(v, np.ndarray) and v.ndim > 0 for v in value.values()
    ):
        return _safetensors(value, head(KIND_ARRAYS))
    if _is_table(value):
        pa = _pyarrow()
        table = value if type(value).__name__ == "Table" else pa.Table.from_batches([value])
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        out = bytearray(head(KIND_TABLE))
        out += memoryview(sink.getvalue())
        return out
    if isinstance(value, bytes | bytearray | memoryview):
        out = bytearray(head(KIND_BYTES))
        out += value
        return out
    return bytearray(head(KIND_JSON)) + canonical_json(_plain(value))


def encoded_kind(data: bytes | bytearray | memoryview) -> str:
    """The kind name (``array``, ``arrays``, ``table``, ``bytes``, ``json``) of encoded bytes.

    Raises:
        ParseError: not an encoded value.
    """
    view = memoryview(data)
    if len(view) < VALUE_HEADER_SIZE:
        raise ParseError("compute value shorter than its 8-byte header")
    magic, version, kind, reserved = _HEAD.unpack_from(view)
    if magic != MAGIC or version != _VERSION or reserved != 0 or kind not in KIND_NAMES:
        raise ParseError("not a teeflow compute value (bad magic, version or kind)")
    return KIND_NAMES[kind]


def decode_value(
    data: bytes | bytearray | memoryview, *, limits: ValueLimits = DEFAULT_VALUE_LIMITS
) -> Any:
    """Decode :func:`encode_value` bytes (bounded; never unpickles).

    Arrays are zero-copy views of ``data`` (writable when ``data`` is a ``bytearray``).

    Raises:
        ParseError: bad header or kind, over ``limits``, malformed safetensors, Arrow IPC or
            JSON, or a table without pyarrow installed.
    """
    view = memoryview(data).cast("B")
    if len(view) > limits.max_bytes:
        raise ParseError(f"compute value larger than {limits.max_bytes} bytes")
    kind = encoded_kind(view)
    payload = view[VALUE_HEADER_SIZE:]
    if kind == "array":
        arrays = _read_safetensors(payload, limits)
        if set(arrays) != {_SINGLE}:
            raise ParseError("an array value holds exactly one tensor named 'value'")
        return arrays[_SINGLE]
    if kind == "arrays":
        return _read_safetensors(payload, limits)
    if kind == "bytes":
        return bytes(payload)
    if kind == "table":
        pa = _pyarrow()
        try:
            with pa.ipc.open_stream(pa.py_buffer(payload)) as reader:
                return reader.read_all()
        except (pa.ArrowException, ValueError, OSError):
            raise ParseError("table value is not a valid Arrow IPC stream") from None
    if len(payload) > limits.max_json_bytes:
        raise ParseError(f"JSON value larger than {limits.max_json_bytes} bytes")
    try:
        parsed = json.loads(bytes(payload).decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ParseError("JSON value is malformed") from None
    if not _depth_ok(parsed, limits.max_json_depth):
        raise ParseError("JSON value nested too deeply")
    return parsed


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")
