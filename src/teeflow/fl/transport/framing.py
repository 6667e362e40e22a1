"""Transport framing: chunked byte payloads, bounded reassembly, configs and metrics.

Arrays (canonical safetensors bytes, :mod:`teeflow.fl.arrays`) and the sealed compute package
travel as a header message announcing ``size`` (bytes) and ``sha256`` (32 bytes), followed by
``Chunk`` messages of at most :data:`CHUNK_SIZE` bytes each (the last may be shorter; an empty
payload has no chunk). The receiver refuses a header larger than its bound *before* receiving
anything (:class:`Reassembler`), refuses overflow, and checks the SHA-256 at the end — so a gRPC
message never exceeds :data:`MAX_MESSAGE_BYTES` whatever the model size, and memory is bounded
by the announced size.

Configs travel as JSON text (``Task.config_json``): an object of at most :data:`MAX_CONFIG_KEYS`
keys (1..64 characters) whose values are JSON scalars (string ≤ 4096 characters, finite number,
boolean), at most :data:`MAX_CONFIG_BYTES` bytes, duplicate keys refused. Metrics are
``map<string, double>`` checked by :func:`teeflow.fl.strategy.check_metrics`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

from teeflow.errors import FLError, ParseError
from teeflow.fl.strategy.base import Config

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_MAX_ARRAYS_BYTES",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_KEYS",
    "MAX_MESSAGE_BYTES",
    "Reassembler",
    "TransportError",
    "decode_config",
    "encode_config",
    "iter_chunks",
]

#: Payload bytes per ``Chunk`` message (1 MiB).
CHUNK_SIZE = 1 << 20
#: Largest JSON config (bytes).
MAX_CONFIG_BYTES = 64 * 1024
#: Most keys in a config.
MAX_CONFIG_KEYS = 256
#: gRPC max send/receive message length set on both sides: one chunk plus headers, or the
#: largest config (bytes).
MAX_MESSAGE_BYTES = CHUNK_SIZE + MAX_CONFIG_BYTES + 16 * 1024
#: Default bound on one reassembled payload (model, update, sealed package): 1 GiB.
DEFAULT_MAX_ARRAYS_BYTES = 1 << 30
_MAX_STRING = 4096


class TransportError(FLError):
    """The peer broke the FL transport protocol (framing, sizes, digests, identity)."""

    code = "fl-transport"


def iter_chunks(data: bytes, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Split ``data`` into consecutive slices of at most ``chunk_size`` bytes (none if empty).

    Raises:
        FLError: ``chunk_size`` < 1.
    """
    if chunk_size < 1:
        raise FLError("chunk size must be positive")
    view = memoryview(data)
    for start in range(0, len(view), chunk_size):
        yield bytes(view[start : start + chunk_size])


class Reassembler:
    """Collects the chunks of one payload announced as ``(size, sha256)``.

    Args:
        size: announced total size (bytes).
        sha256: announced SHA-256 of the payload (32 bytes).
        max_bytes: the receiver's bound for this kind of payload (bytes).
        chunk_size: largest chunk accepted (bytes).

    Raises:
        TransportError: ``size`` above ``max_bytes`` or ``sha256`` not 32 bytes.
    """

    def __init__(
        self, size: int, sha256: bytes, *, max_bytes: int, chunk_size: int = CHUNK_SIZE
    ) -> None:
        if not 0 <= size <= max_bytes:
            raise TransportError(f"payload of {size} bytes exceeds the bound of {max_bytes}")
        if len(sha256) != 32:
            raise TransportError("payload digest must be 32 bytes")
        self.size = size
        self.sha256 = bytes(sha256)
        self._chunk_size = chunk_size
        self._buf = bytearray()

    @property
    def complete(self) -> bool:
        """True once ``size`` bytes arrived."""
        return len(self._buf) == self.size

    def add(self, chunk: bytes) -> bool:
        """Append one chunk; return :attr:`complete`.

        Raises:
            TransportError: empty or oversized chunk, or more bytes than announced.
        """
        if not chunk or len(chunk) > self._chunk_size:
            raise TransportError("chunk is empty or larger than the chunk size")
        if len(self._buf) + len(chunk) > self.size:
            raise TransportError("more payload bytes than announced")
        self._buf += chunk
        return self.complete

    def result(self) -> bytes:
        """The payload, after checking its size and SHA-256.

        Raises:
            TransportError: incomplete, or the SHA-256 differs from the announced one.
        """
        if not self.complete:
            raise TransportError(f"payload incomplete: {len(self._buf)} of {self.size} bytes")
        data = bytes(self._buf)
        if hashlib.sha256(data).digest() != self.sha256:
            raise TransportError("payload SHA-256 differs from the announced digest")
        self._buf = bytearray()
        return data


def _check_value(key: str, value: object) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) > 2**53 - 1:
            raise ParseError(f"config {key!r}: integer out of the I-JSON range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ParseError(f"config {key!r}: number is not finite")
        return
    if isinstance(value, str):
        if len(value) > _MAX_STRING:
            raise ParseError(f"config {key!r}: string longer than {_MAX_STRING}")
        return
    raise ParseError(f"config {key!r}: values must be JSON scalars (string, number, boolean)")


def _check_config(doc: Mapping[str, Any]) -> Config:
    if len(doc) > MAX_CONFIG_KEYS:
        raise ParseError(f"config has more than {MAX_CONFIG_KEYS} keys")
    out: Config = {}
    for key, value in doc.items():
        if not isinstance(key, str) or not 1 <= len(key) <= 64:
            raise ParseError("config keys must be 1..64 character strings")
        _check_value(key, value)
        out[key] = value
    return out


def encode_config(config: Mapping[str, Any]) -> str:
    """Compact JSON text of a config (keys sorted).

    Raises:
        ParseError: not a valid config (see the module docstring) or larger than 64 KiB.
    """
    checked = _check_config(config)
    text = json.dumps(checked, sort_keys=True, separators=(",", ":"), allow_nan=False)
    if len(text.encode("utf-8")) > MAX_CONFIG_BYTES:
        raise ParseError(f"config larger than {MAX_CONFIG_BYTES} bytes")
    return text


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ParseError(f"duplicate config key {key[:64]!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> None:
    raise ParseError(f"config contains {name}")


def decode_config(text: str) -> Config:
    """Parse ``Task.config_json`` (bounded; total).

    Raises:
        ParseError: larger than 64 KiB, not JSON, duplicate keys, NaN/Infinity, not an
            object, or an invalid key or value.
    """
    if not isinstance(text, str) or len(text) > MAX_CONFIG_BYTES:
        raise ParseError(f"config is not text of at most {MAX_CONFIG_BYTES} bytes")
    if not text:
        return {}
    try:
        doc = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constants)
    except ParseError:
        raise
    except (ValueError, RecursionError):
        raise ParseError("config is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ParseError("config must be a JSON object")
    return _check_config(doc)
