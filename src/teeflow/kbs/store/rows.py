"""Row authentication of the KBS store under the KBS's sealed storage key (adversary H).

The host can read and write the KBS database (SQLite file, PostgreSQL). Every row the store
writes therefore carries a ``tag``: HMAC-SHA-256 (RFC 2104, ``cryptography``) under a key
derived from the KBS storage key (:attr:`teeflow.kbs.service.identity.KbsKeys.storage_key`,
sealed to the KBS's platform identity) over a canonical encoding of the table name, the
primary key and every other column of the row. A row whose tag does not verify - edited,
inserted, moved to another primary key or written under another key set - is refused with
:class:`~teeflow.kbs.store.interface.StorageTampered`.

Secrets are encrypted, not only authenticated: the wrapped data key of a resource and the
attested claims bound to a session (they name the session id) are AES-256-GCM ciphertexts
(NIST SP 800-38D; 96-bit random nonce, ``nonce || ciphertext || tag``) whose associated data
binds table, primary key, column and (resources) generation. Session ids are bearer
credentials: the store keeps only HMAC-SHA-256 of them (:meth:`RowAuth.session_key`), the
token only as its SHA-256 digest.

Keys (HKDF-SHA-256, RFC 5869, salt ``teeflow-kbs-store-v1``, from the 32-byte storage key):
``info=b"row-mac"`` (HMAC), ``info=b"row-enc"`` (AES-256-GCM), ``info=b"session-id"``
(session id hashing).

Canonical encoding (:func:`encode`): ``b"teeflow-kbs-row/1\\0"`` then each value as a type
byte and a length-prefixed body: ``n`` None; ``b`` bytes; ``s`` UTF-8 text; ``i`` signed
64-bit integer; ``t``/``f`` booleans; ``d`` a timezone-aware time as signed 64-bit
microseconds since the Unix epoch (UTC). Unambiguous: no two value lists share an encoding.

Authenticating rows does not stop the host from restoring an *older* authentic row or the
whole database: see :mod:`teeflow.kbs.service.heads` (signed state heads) and
``audit_seq`` / :meth:`KbsStore.check_state` for rollback detection.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from teeflow.kbs.store.interface import StorageInputError, StorageTampered

__all__ = ["KEY_BYTES", "ROW_FORMAT", "TAG_BYTES", "RowAuth", "Value", "encode"]

#: Length of the storage key (bytes).
KEY_BYTES = 32
#: Length of a row tag (HMAC-SHA-256, bytes).
TAG_BYTES = 32
#: Domain label of the canonical row encoding.
ROW_FORMAT = b"teeflow-kbs-row/1\0"
_SALT = b"teeflow-kbs-store-v1"
_NONCE_BYTES = 12
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: A column value the encoding accepts.
Value = bytes | str | int | bool | datetime | None


_LEN = struct.Struct(">I").pack
_I64 = struct.Struct(">q").pack
_US = timedelta(microseconds=1)


def encode(values: Sequence[Value]) -> bytes:
    """The canonical encoding of ``values`` (module docstring).

    Raises:
        StorageInputError: a value of another type, or a naive datetime.
    """
    out = [ROW_FORMAT]
    add = out.append
    for v in values:
        kind = type(v)
        if kind is bytes:
            add(b"b" + _LEN(len(v)))  # type: ignore[arg-type]
            add(v)  # type: ignore[arg-type]
        elif kind is str:
            raw = v.encode("utf-8", "surrogatepass")  # type: ignore[union-attr]
            add(b"s" + _LEN(len(raw)))
            add(raw)
        elif kind is int:
            add(b"i" + _I64(v))
        elif v is None:
            add(b"n")
        elif kind is bool:
            add(b"t" if v else b"f")
        elif isinstance(v, datetime):
            if v.tzinfo is None or v.utcoffset() is None:
                raise StorageInputError("row times must be timezone-aware")
            add(b"d" + _I64((v - _EPOCH) // _US))
        elif isinstance(v, bytearray | memoryview):
            raw = bytes(v)
            add(b"b" + _LEN(len(raw)))
            add(raw)
        elif isinstance(v, int):  # int subclasses (not bool: handled above)
            add(b"i" + _I64(int(v)))
        else:
            raise StorageInputError("unsupported row value type")
    return b"".join(out)


class RowAuth:
    """Tags, checks and encrypts store rows under one storage key (module docstring).

    Args:
        storage_key: the KBS storage key, 32 bytes.

    Raises:
        StorageInputError: the key is not 32 bytes.
    """

    __slots__ = ("_aead", "_id_key", "_ids", "_mac_key")

    def __init__(self, storage_key: bytes) -> None:
        if not isinstance(storage_key, bytes) or len(storage_key) != KEY_BYTES:
            raise StorageInputError(f"the storage key must be {KEY_BYTES} bytes")
        self._mac_key = self._derive(storage_key, b"row-mac")
        self._aead = AESGCM(self._derive(storage_key, b"row-enc"))
        self._id_key = self._derive(storage_key, b"session-id")
        self._ids: dict[str, str] = {}

    @staticmethod
    def _derive(key: bytes, info: bytes) -> bytes:
        return HKDF(hashes.SHA256(), 32, salt=_SALT, info=info).derive(key)

    @classmethod
    def ephemeral(cls) -> RowAuth:
        """A RowAuth under a fresh random key (volatile stores: nothing outlives the process)."""
        return cls(os.urandom(KEY_BYTES))

    def tag(self, table: str, values: Sequence[Value]) -> bytes:
        """HMAC-SHA-256 of ``encode([table, *values])`` (32 bytes); ``values`` start with the
        primary key and list every other column in the table's fixed order."""
        mac = crypto_hmac.HMAC(self._mac_key, hashes.SHA256())
        mac.update(encode([table, *values]))
        return mac.finalize()

    def check(self, table: str, values: Sequence[Value], tag: object) -> None:
        """Verify a row's ``tag`` (constant-time compare).

        Raises:
            StorageTampered: the tag is missing or does not match (names the table only).
        """
        if not isinstance(tag, bytes | bytearray | memoryview) or len(tag) != TAG_BYTES:
            raise StorageTampered(f"a {table} row has no valid authentication tag", table=table)
        if not hmac.compare_digest(self.tag(table, values), bytes(tag)):
            raise StorageTampered(f"a {table} row failed authentication", table=table)

    def seal(self, table: str, context: Sequence[Value], plaintext: bytes) -> bytes:
        """AES-256-GCM encryption of ``plaintext`` with associated data
        ``encode([table, *context])`` (``context``: primary key, column name, ...)."""
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, encode([table, *context]))

    def open(self, table: str, context: Sequence[Value], blob: bytes) -> bytes:
        """Decrypt :meth:`seal` output under the same ``context``.

        Raises:
            StorageTampered: the ciphertext does not authenticate.
        """
        if len(blob) < _NONCE_BYTES + 16:
            raise StorageTampered(f"a {table} ciphertext is truncated", table=table)
        try:
            return self._aead.decrypt(
                blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], encode([table, *context])
            )
        except InvalidTag:
            raise StorageTampered(
                f"a {table} ciphertext failed authentication", table=table
            ) from None

    def session_key(self, session_id: str) -> str:
        """The stored key of a session: lower-case hex HMAC-SHA-256 of its id (64 chars).
        The last few are memoised (one RCAR flow asks for the same id several times)."""
        hit = self._ids.get(session_id)
        if hit is not None:
            return hit
        mac = crypto_hmac.HMAC(self._id_key, hashes.SHA256())
        mac.update(session_id.encode("utf-8", "surrogatepass"))
        key = mac.finalize().hex()
        if len(self._ids) >= 1024:
            self._ids.clear()
        self._ids[session_id] = key
        return key
