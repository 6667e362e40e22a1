"""Open Inference Protocol (KServe v2 / Triton / MLServer) REST messages: tensors in JSON and
the binary tensor extension.

Specs: KServe "Open Inference Protocol (V2)" REST (``/v2/models/{name}/infer``: ``id``,
``parameters``, ``inputs[]``/``outputs[]`` of ``{name, shape, datatype, data, parameters}``)
and Triton's "Binary Tensor Data Extension": when the body carries binary tensors, the
``Inference-Header-Content-Length`` header gives the length ``n`` of the JSON header; bytes
``n..`` are the tensors' raw little-endian row-major data, in the order of the tensors whose
``parameters.binary_data_size`` is set. A request asks for binary outputs with
``parameters.binary_data_output: true`` (or per output ``parameters.binary_data: true``).

:func:`decode_request` and :func:`encode_response` are bounded and total: JSON depth and
size, tensor count, element counts, shapes (``prod(shape) == len(data)``) and binary sizes
(``binary_data_size == prod(shape) * itemsize``, the sizes add up to the tail exactly) are all
checked; anything else raises :class:`OipError` (HTTP 400). ``BYTES`` tensors are not
supported (numeric models only).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from teeflow.errors import ParseError

__all__ = [
    "DATATYPES",
    "HEADER_LENGTH",
    "MAX_ELEMENTS",
    "MAX_TENSORS",
    "InferRequest",
    "InferResponse",
    "OipError",
    "datatype_of",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
]

#: The binary tensor extension's header (Triton).
HEADER_LENGTH = "Inference-Header-Content-Length"
#: Most tensors in one request or response.
MAX_TENSORS = 64
#: Most elements in one tensor.
MAX_ELEMENTS = 1 << 26
_MAX_HEADER = 16 << 20
_MAX_DIMS = 8
_DIGITS = re.compile(r"[0-9]{1,12}")  # ASCII only: str.isdigit() accepts "¹"
#: OIP datatype → numpy dtype (little-endian).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}


class OipError(ParseError):
    """A malformed OIP message (HTTP 400)."""


def datatype_of(array: NDArray[Any]) -> str:
    """The OIP datatype name of a numpy array.

    Raises:
        OipError: no OIP datatype for its dtype.
    """
    for name, dt in DATATYPES.items():
        if array.dtype.kind == dt.kind and array.dtype.itemsize == dt.itemsize:
            return name
    raise OipError(f"no OIP datatype for numpy dtype {array.dtype}")


@dataclass
class InferRequest:
    """A decoded inference request: ``inputs`` by name (numpy), the request ``id`` and
    ``parameters``, the requested output names (empty = all) and whether binary outputs
    were asked for."""

    inputs: dict[str, NDArray[Any]]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    binary_outputs: bool = False


@dataclass
class InferResponse:
    """An inference response: model name/version, request id, outputs by name."""

    model_name: str
    outputs: dict[str, NDArray[Any]]
    id: str | None = None
    model_version: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def _json(raw: bytes) -> dict[str, Any]:
    if len(raw) > _MAX_HEADER:
        raise OipError(f"inference header larger than {_MAX_HEADER} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise OipError("the inference header is not JSON") from None
    if not isinstance(doc, dict):
        raise OipError("the inference header must be a JSON object")
    return doc


def _split(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    if header_length is None:
        return _json(body), b""
    if not _DIGITS.fullmatch(header_length) or int(header_length) > len(body):
        raise OipError(f"{HEADER_LENGTH} is not a length within the body")
    n = int(header_length)
    return _json(body[:n]), body[n:]


def _tensors(doc: Mapping[str, Any], key: str, tail: bytes) -> dict[str, NDArray[Any]]:
    items = doc.get(key)
    if not isinstance(items, list) or not 0 < len(items) <= MAX_TENSORS:
        raise OipError(f"{key} must be a list of 1..{MAX_TENSORS} tensors")
    out: dict[str, NDArray[Any]] = {}
    offset = 0
    for t in items:
        if not isinstance(t, dict):
            raise OipError("a tensor must be an object")
        name, shape, dtname = t.get("name"), t.get("shape"), t.get("datatype")
        if not isinstance(name, str) or not 0 < len(name) <= 256 or name in out:
            raise OipError("tensor names must be unique strings of 1..256 characters")
        if dtname not in DATATYPES:
            raise OipError(f"tensor {name[:64]}: unsupported datatype {str(dtname)[:16]}")
        if (not isinstance(shape, list) or len(shape) > _MAX_DIMS
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_ELEMENTS
                           for d in shape)):
            raise OipError(f"tensor {name[:64]}: shape must be ≤ {_MAX_DIMS} non-negative ints")
        count = math.prod(shape)
        if count > MAX_ELEMENTS:
            raise OipError(f"tensor {name[:64]}: more than {MAX_ELEMENTS} elements")
        dt = DATATYPES[dtname]
        params = t.get("parameters") or {}
        if not isinstance(params, dict):
            raise OipError(f"tensor {name[:64]}: parameters must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size != count * dt.itemsize:
                raise OipError(f"tensor {name[:64]}: binary_data_size does not match its shape")
            if offset + size > len(tail):
                raise OipError(f"tensor {name[:64]}: binary data past the end of the body")
            arr = np.frombuffer(tail, dtype=dt, count=count, offset=offset).reshape(shape)
            offset += size
        else:
            data = t.get("data")
            if not isinstance(data, list):
                raise OipError(f"tensor {name[:64]}: data must be a list")
            try:
                arr = np.asarray(data, dtype=dt)
            except (ValueError, TypeError, OverflowError):
                raise OipError(f"tensor {name[:64]}: data are not {dtname} values") from None
            if arr.size != count:
                raise OipError(f"tensor {name[:64]}: {arr.size} values for shape {shape}")
            arr = arr.reshape(shape)
        out[name] = arr
    if offset != len(tail):
        raise OipError("the binary tensor sizes do not add up to the body")
    return out


def decode_request(body: bytes, header_length: str | None = None) -> InferRequest:
    """Decode ``POST /v2/models/{name}/infer`` (JSON, or JSON + binary tensors when
    ``header_length`` — the :data:`HEADER_LENGTH` header — is given).

    Raises:
        OipError: malformed or out of bounds (module docstring).
    """
    doc, tail = _split(body, header_length)
    params = doc.get("parameters") or {}
    rid = doc.get("id")
    if not isinstance(params, dict) or (rid is not None and not isinstance(rid, str)):
        raise OipError("id must be a string and parameters an object")
    wanted = doc.get("outputs") or []
    if not isinstance(wanted, list) or len(wanted) > MAX_TENSORS:
        raise OipError("outputs must be a list of requested outputs")
    names: list[str] = []
    binary = bool(params.get("binary_data_output", False))
    for o in wanted:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise OipError("a requested output needs a name")
        names.append(o["name"][:256])
        p = o.get("parameters") or {}
        binary = binary or (isinstance(p, dict) and p.get("binary_data") is True)
    return InferRequest(_tensors(doc, "inputs", tail), rid[:256] if rid else None, params,
                        tuple(names), binary)


def _encode(doc: dict[str, Any], key: str, tensors: Mapping[str, NDArray[Any]],
            binary: bool) -> tuple[bytes, int | None]:
    items: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, arr in tensors.items():
        a = np.ascontiguousarray(arr)
        dtname = datatype_of(a)
        a = a.astype(DATATYPES[dtname], copy=False)
        item: dict[str, Any] = {"name": name, "shape": list(a.shape), "datatype": dtname}
        if binary:
            raw = a.tobytes()
            item["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            item["data"] = a.ravel().tolist()
        items.append(item)
    header = json.dumps({**doc, key: items}, separators=(",", ":")).encode("utf-8")
    if not binary:
        return header, None
    return header + b"".join(chunks), len(header)


def encode_response(resp: InferResponse, *, binary: bool = False) -> tuple[bytes, int | None]:
    """Encode a response → ``(body, header length or None)``; with ``binary`` every output
    is sent with the binary extension (set :data:`HEADER_LENGTH` to the length).

    Raises:
        OipError: an output has no OIP datatype.
    """
    doc: dict[str, Any] = {"model_name": resp.model_name}
    if resp.model_version is not None:
        doc["model_version"] = resp.model_version
    if resp.id is not None:
        doc["id"] = resp.id
    if resp.parameters:
        doc["parameters"] = resp.parameters
    return _encode(doc, "outputs", resp.outputs, binary)


def encode_request(inputs: Mapping[str, NDArray[Any]], *, binary: bool = True,
                   id: str | None = None, parameters: Mapping[str, Any] | None = None,
                   binary_outputs: bool | None = None) -> tuple[bytes, int | None]:
    """Encode an inference request → ``(body, header length or None)`` (the client side).

    Raises:
        OipError: an input has no OIP datatype.
    """
    params = dict(parameters or {})
    if binary_outputs if binary_outputs is not None else binary:
        params["binary_data_output"] = True
    doc: dict[str, Any] = {}
    if id is not None:
        doc["id"] = id
    if params:
        doc["parameters"] = params
    return _encode(doc, "inputs", inputs, binary)


def decode_response(body: bytes, header_length: str | None = None) -> InferResponse:
    """Decode an inference response (the client side).

    Raises:
        OipError: malformed.
    """
    doc, tail = _split(body, header_length)
    name = doc.get("model_name")
    if not isinstance(name, str):
        raise OipError("a response needs model_name")
    params = doc.get("parameters") or {}
    rid = doc.get("id")
    return InferResponse(name, _tensors(doc, "outputs", tail),
                         rid if isinstance(rid, str) else None,
                         doc.get("model_version") if isinstance(doc.get("model_version"), str)
                         else None, params if isinstance(params, dict) else {})
