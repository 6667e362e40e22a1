"""teeflow.sealing: sealed blobs (chunked AES-256-GCM STREAM) and HPKE key wrapping.

- :func:`seal` / :func:`unseal` — in-memory sealed blobs bound to associated data.
- :func:`seal_file` / :func:`unseal_file` (:mod:`teeflow.sealing.stream`) — the same
  format, streamed in O(chunk size) memory; unsealed output appears only after the whole
  stream authenticated.
- :func:`wrap_key` / :func:`unwrap_key` — RFC 9180 HPKE base mode,
  DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
- :func:`generate_key`, :func:`key_id`, :func:`read_key_file`, :func:`write_key_file`.

Every failure raises :class:`teeflow.errors.SealingError` (a malformed key *file* raises
:class:`teeflow.errors.ParseError`). Byte formats: ``docs/formats.md``.
"""

from __future__ import annotations

from teeflow.sealing.blob import (
    DEFAULT_CHUNK_SIZE,
    HEADER_SIZE,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    SealedHeader,
    parse_header,
    seal,
    seal_into,
    sealed_size,
    unseal,
    unseal_into,
    unsealed_size,
)
from teeflow.sealing.hpke import unwrap_key, wrap_key
from teeflow.sealing.keys import (
    KEY_SIZE,
    encode_key_file,
    generate_key,
    key_id,
    parse_key_file,
    read_key_file,
    write_key_file,
)
from teeflow.sealing.stream import seal_file, unseal_file

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "HEADER_SIZE",
    "KEY_SIZE",
    "MAX_CHUNK_SIZE",
    "MIN_CHUNK_SIZE",
    "SealedHeader",
    "encode_key_file",
    "generate_key",
    "key_id",
    "parse_header",
    "parse_key_file",
    "read_key_file",
    "seal",
    "seal_file",
    "seal_into",
    "sealed_size",
    "unseal",
    "unseal_file",
    "unseal_into",
    "unsealed_size",
    "unwrap_key",
    "wrap_key",
    "write_key_file",
]
