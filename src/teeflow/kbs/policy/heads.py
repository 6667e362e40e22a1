"""Signed KBS state heads: the wire format shared by the KBS and its clients (adversary H).

The KBS's state log is its hash-chained audit log (:mod:`teeflow.kbs.service.audit`): every
state change (agreement, resource upload, release count, counter step, attestation) appends
an entry in the same store transaction. The *head* of that log - ``seq`` (1, 2, ...; 0 when
empty) and the entry ``hash`` (32 bytes; 32 zero bytes when empty) - names the state. The KBS
signs it with its audit key (Ed25519, RFC 8032) and sends it with every response that depends
on state, in the response header :data:`HEAD_HEADER`::

    KBS-State-Head: <seq decimal>.<hash lower-case hex>.<signature base64url, no padding>

    signature = Ed25519(audit key, HEAD_DOMAIN || SHA-256(audit public key, raw 32 bytes)
                        || seq as 8 bytes big-endian || hash)

The audit public key is the KBS identity a party pinned (:class:`teeflow.kbs.client.pinning.Pin`),
so a head of one KBS never verifies as another's. A party remembers the highest head it has
seen per KBS and refuses a lower one (a rolled-back store) or another hash at the same ``seq``
(a forked store): :mod:`teeflow.kbs.client.heads`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from teeflow.errors import ParseError, VerificationError

__all__ = [
    "EMPTY_HASH",
    "HEAD_DOMAIN",
    "HEAD_HEADER",
    "StateHead",
    "parse_head",
    "sign_head",
]

#: Response header carrying the signed head.
HEAD_HEADER = "KBS-State-Head"
#: Signing domain of a head.
HEAD_DOMAIN = b"teeflow-kbs-head-v1\0"
#: ``hash`` of the head of an empty log.
EMPTY_HASH = bytes(32)
_HEADER = re.compile(r"([0-9]{1,19})\.([0-9a-f]{64})\.([A-Za-z0-9_-]{86})")


@dataclass(frozen=True, slots=True)
class StateHead:
    """A KBS state head: ``seq`` (0 = empty log) and the audit entry ``hash`` (32 bytes)."""

    seq: int
    hash: bytes

    def message(self, audit_public_key: Ed25519PublicKey) -> bytes:
        """The signed bytes (module docstring)."""
        return _message(_kbs_id(audit_public_key.public_bytes_raw()), self)

    def text(self) -> str:
        """``seq.hash`` for messages and files."""
        return f"{self.seq}.{self.hash.hex()}"


@functools.lru_cache(maxsize=64)
def _kbs_id(audit_public_raw: bytes) -> bytes:
    return hashlib.sha256(audit_public_raw).digest()


def _message(kbs_id: bytes, head: StateHead) -> bytes:
    return HEAD_DOMAIN + kbs_id + struct.pack(">Q", head.seq) + head.hash


def sign_head(head: StateHead, audit_key: Ed25519PrivateKey, *, kbs_id: bytes | None = None) -> str:
    """The :data:`HEAD_HEADER` value of ``head`` signed with the KBS audit key (``kbs_id``:
    SHA-256 of its raw public key when the caller keeps it, else computed)."""
    if kbs_id is None:
        kbs_id = _kbs_id(audit_key.public_key().public_bytes_raw())
    sig = audit_key.sign(_message(kbs_id, head))
    return f"{head.text()}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode('ascii')}"


def parse_head(value: str, audit_public_key: Ed25519PublicKey) -> StateHead:
    """Parse and verify a :data:`HEAD_HEADER` value with the pinned audit key.

    Raises:
        ParseError: not ``seq.hash.signature``.
        VerificationError: the signature is not the KBS's over this head.
    """
    m = _HEADER.fullmatch(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise ParseError(f"malformed {HEAD_HEADER} header")
    seq = int(m.group(1))
    if seq >= 1 << 63:
        raise ParseError(f"{HEAD_HEADER} sequence number out of range")
    try:
        sig = base64.urlsafe_b64decode(m.group(3) + "==")
    except (binascii.Error, ValueError):
        raise ParseError(f"malformed {HEAD_HEADER} signature") from None
    head = StateHead(seq, bytes.fromhex(m.group(2)))
    try:
        audit_public_key.verify(sig, head.message(audit_public_key))
    except InvalidSignature:
        raise VerificationError(f"the {HEAD_HEADER} signature is not the pinned KBS's") from None
    return head
