"""KBS recovery shares: the parties together restore the KBS key set (MarbleRun's recovery
keys, multi-party; DESIGN glossary "recovery share").

**Share set** (:func:`create_share_set`). When an agreement is in force the KBS makes a
32-byte *recovery secret* ``S`` and splits it among the agreement's ``n`` parties, ``k``-of-``n``
(``k`` = ``agreement.recovery.k``, default ``n``), with Shamir secret sharing from
pycryptodome (``Crypto.Protocol.SecretSharing.Shamir``, GF(2^128), 16-byte secrets): the two
16-byte halves of ``S`` are shared with the same indices, and party number ``i`` (1-based,
parties sorted by name) gets ``share_i = half1_i || half2_i`` (32 bytes). Each share is
HPKE-sealed (:func:`teeflow.sealing.hpke.wrap_key`, RFC 9180 base mode) to the party's
``recipient_key`` from the agreement with ``info = b"teeflow/kbs/recovery-share/v1"`` and
``aad`` = RFC 8785 JSON ``{"federation", "set_id", "party", "index", "k", "n"}``.

**Record** (:class:`RecoveryRecord`, public, served at ``GET /v1/recovery/record``)::

    {"format": "teeflow-kbs-recovery/1", "federation": NAME, "set_id": <32 hex>,
     "agreement_version": V, "agreement_digest": <hex>, "k": K,
     "parties": {NAME: {"index": I, "sign_key": <b64url Ed25519>,
                        "recipient_key": <b64url X25519>, "share_digest": <hex>,
                        "sealed_share": <b64url wrapped share>}}}

    recovery_id  = SHA-256(RFC 8785 JSON of the record)
    share_digest = SHA-256(b"teeflow-kbs-recovery-share-v1\\0" || set_id || u8 index || share)

**Recovery copy of the state**: the key-set document
(:func:`teeflow.kbs.service.identity.serialise_key_state`) sealed
(:func:`teeflow.sealing.seal`) under ``HKDF-SHA256(S, salt=set_id, info=
b"teeflow-kbs-recovery-state-v1")`` with ``aad = b"teeflow-kbs-keys-recovery-v1\\0" ||
recovery_id``. Record and copy live together in ``<state_dir>/kbs-recovery.json`` (0600,
written atomically) as ``{"record": {...}, "state": <b64url sealed blob>}``, beside the
platform-sealed ``kbs-keys.sealed``.

**Submission** (:class:`RecoverySubmission`, ``POST /v1/recovery/shares`` to a KBS in
recovery mode)::

    {"format": "teeflow-kbs-recovery-submission/1", "party": NAME, "recovery_id": <hex>,
     "recipient": <b64url X25519 key of the recovering KBS>, "sealed_share": <b64url>,
     "signature": <b64url Ed25519>}

``sealed_share`` = ``wrap_key(share, recipient, info=b"teeflow/kbs/recovery-submit/v1",
aad=RFC 8785 {"recovery_id", "party", "recipient"})``; ``signature`` is the party's
``sign_key`` (from the record) over ``b"teeflow-recovery-submission-v1\\0" || SHA-256(RFC
8785 JSON of the submission without "signature")``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from Crypto.Protocol.SecretSharing import Shamir
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from teeflow._fs import atomic_write, ensure_private_dir, fsync_dir
from teeflow.errors import KbsError, ParseError, SealingError
from teeflow.kbs.policy.agreement import FederationAgreement
from teeflow.kbs.policy.canonical import (
    b64url_decode,
    b64url_encode,
    canonical_json,
    format_validation_error,
)
from teeflow.kbs.policy.parties import B64Key32, B64Sig64, Name, SignKey, verify_ed25519
from teeflow.sealing import seal, unseal
from teeflow.sealing.hpke import unwrap_key, wrap_key

__all__ = [
    "RECORD_FILE",
    "RECORD_FORMAT",
    "SHARE_INFO",
    "SUBMISSION_FORMAT",
    "SUBMIT_INFO",
    "RecoveryParty",
    "RecoveryRecord",
    "RecoverySubmission",
    "ShareSet",
    "combine_shares",
    "create_share_set",
    "load_recovery_file",
    "open_party_share",
    "open_recovery_state",
    "record_matches",
    "recovery_k",
    "seal_recovery_state",
    "share_aad",
    "share_digest",
    "sign_submission",
    "submission_aad",
    "verify_submission_signature",
    "write_recovery_file",
]

RECORD_FILE = "kbs-recovery.json"
RECORD_FORMAT = "teeflow-kbs-recovery/1"
SUBMISSION_FORMAT = "teeflow-kbs-recovery-submission/1"
SHARE_INFO = b"teeflow/kbs/recovery-share/v1"
SUBMIT_INFO = b"teeflow/kbs/recovery-submit/v1"
_SHARE_DOMAIN = b"teeflow-kbs-recovery-share-v1\0"
_SUBMISSION_DOMAIN = b"teeflow-recovery-submission-v1\0"
_STATE_INFO = b"teeflow-kbs-recovery-state-v1"
_STATE_AAD = b"teeflow-kbs-keys-recovery-v1\0"
_MAX_FILE_BYTES = 4 << 20
_MAX_PARTIES = 255
_SHARE_SIZE = 32
_HALF = 16
#: Wrapped share: 11-byte header + 32-byte enc + 32-byte share + 16-byte tag.
_WRAPPED_CHARS = 122
_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)


class RecoveryParty(BaseModel):
    """One party's entry of a :class:`RecoveryRecord`."""

    model_config = _STRICT

    index: int = Field(ge=1, le=_MAX_PARTIES)
    sign_key: SignKey
    recipient_key: B64Key32
    share_digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    sealed_share: str = Field(min_length=_WRAPPED_CHARS, max_length=_WRAPPED_CHARS)


class RecoveryRecord(BaseModel):
    """The public record of a share set (module docstring)."""

    model_config = _STRICT

    format: Literal["teeflow-kbs-recovery/1"]
    federation: Name
    set_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    agreement_version: int = Field(ge=1)
    agreement_digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    k: int = Field(ge=1, le=_MAX_PARTIES)
    parties: dict[Name, RecoveryParty] = Field(min_length=1, max_length=_MAX_PARTIES)

    def recovery_id(self) -> bytes:
        """SHA-256 of the RFC 8785 JSON of the record (32 bytes)."""
        return hashlib.sha256(canonical_json(self.model_dump(mode="json"))).digest()

    @classmethod
    def parse(cls, data: object) -> RecoveryRecord:
        """Validate a parsed record; indices must be 1..n, distinct, ``k`` ≤ n.

        Raises:
            ParseError: any schema or consistency problem.
        """
        try:
            record = cls.model_validate(data)
        except ValidationError as exc:
            raise ParseError(f"recovery record: {format_validation_error(exc)}") from None
        n = len(record.parties)
        if sorted(p.index for p in record.parties.values()) != list(range(1, n + 1)):
            raise ParseError("recovery record: party indices must be 1..n")
        if record.k > n:
            raise ParseError("recovery record: k exceeds the number of parties")
        return record


class RecoverySubmission(BaseModel):
    """A party's share for a KBS in recovery mode (module docstring)."""

    model_config = _STRICT

    format: Literal["teeflow-kbs-recovery-submission/1"]
    party: Name
    recovery_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    recipient: B64Key32
    sealed_share: str = Field(min_length=_WRAPPED_CHARS, max_length=_WRAPPED_CHARS)
    signature: B64Sig64

    def signing_input(self) -> bytes:
        """``domain || SHA-256(RFC 8785 JSON without "signature")`` (module docstring)."""
        body = self.model_dump(mode="json", exclude={"signature"})
        return _SUBMISSION_DOMAIN + hashlib.sha256(canonical_json(body)).digest()


# -- pieces shared by both sides -------------------------------------------------------------


def recovery_k(agreement: FederationAgreement) -> int:
    """``agreement.recovery.k``, or ``n`` (all parties) when the agreement sets none."""
    return agreement.recovery.k if agreement.recovery is not None else len(agreement.parties)


def share_aad(record_fields: Mapping[str, Any], party: str, index: int, n: int) -> bytes:
    """The HPKE ``aad`` of a party's sealed share (module docstring)."""
    return canonical_json(
        {
            "federation": record_fields["federation"],
            "set_id": record_fields["set_id"],
            "party": party,
            "index": index,
            "k": record_fields["k"],
            "n": n,
        }
    )


def submission_aad(recovery_id: str, party: str, recipient: str) -> bytes:
    """The HPKE ``aad`` of a submitted share (module docstring)."""
    return canonical_json({"recovery_id": recovery_id, "party": party, "recipient": recipient})


def share_digest(set_id: bytes, index: int, share: bytes) -> str:
    """Lower-case hex ``SHA-256(domain || set_id || u8 index || share)``."""
    return hashlib.sha256(_SHARE_DOMAIN + set_id + bytes([index]) + share).hexdigest()


def sign_submission(
    sign_key: Ed25519PrivateKey,
    *,
    party: str,
    recovery_id: str,
    recipient: X25519PublicKey,
    share: bytes,
) -> RecoverySubmission:
    """Seal ``share`` (32 bytes) to the recovering KBS's ``recipient`` key and sign it.

    Raises:
        SealingError: HPKE failure (e.g. a low-order key).
        ParseError: malformed party name or recovery id.
    """
    recipient_b64 = b64url_encode(recipient.public_bytes_raw())
    sealed = wrap_key(
        share,
        recipient,
        info=SUBMIT_INFO,
        aad=submission_aad(recovery_id, party, recipient_b64),
    )
    fields = {
        "format": SUBMISSION_FORMAT,
        "party": party,
        "recovery_id": recovery_id,
        "recipient": recipient_b64,
        "sealed_share": b64url_encode(sealed),
        "signature": b64url_encode(bytes(64)),
    }
    try:
        unsigned = RecoverySubmission.model_validate(fields)
    except ValidationError as exc:
        raise ParseError(f"recovery submission: {format_validation_error(exc)}") from None
    signature = sign_key.sign(unsigned.signing_input())
    return unsigned.model_copy(update={"signature": b64url_encode(signature)})


def verify_submission_signature(submission: RecoverySubmission, sign_key_b64: str) -> None:
    """Check the submission's Ed25519 signature with the party's ``sign_key``.

    Raises:
        VerificationError: it does not verify.
    """
    verify_ed25519(sign_key_b64, submission.signature, submission.signing_input())


# -- KBS side --------------------------------------------------------------------------------


class ShareSet:
    """A freshly made share set: the public ``record`` and the secret (KBS memory only)."""

    def __init__(self, record: RecoveryRecord, secret: bytes) -> None:
        self.record = record
        self._secret = secret

    def __repr__(self) -> str:
        return f"ShareSet(recovery_id={self.record.recovery_id().hex()[:16]}…)"

    @property
    def secret(self) -> bytes:
        """The 32-byte recovery secret (never logged, never written unsealed)."""
        return self._secret


def record_matches(record: RecoveryRecord, agreement: FederationAgreement) -> bool:
    """True when ``record`` still fits ``agreement``: same federation, parties, keys and k."""
    if record.federation != agreement.federation or record.k != recovery_k(agreement):
        return False
    if set(record.parties) != set(agreement.parties):
        return False
    return all(
        record.parties[name].sign_key == spec.sign_key
        and record.parties[name].recipient_key == spec.recipient_key
        for name, spec in agreement.parties.items()
    )


def create_share_set(
    agreement: FederationAgreement,
    agreement_digest: bytes,
    *,
    rng: Callable[[int], bytes] = os.urandom,
) -> ShareSet:
    """A new recovery secret, split ``recovery_k(agreement)``-of-n and sealed to each party
    (module docstring).

    Raises:
        KbsError: more than 255 parties.
        SealingError: a party's recipient key is unusable (HPKE failure).
    """
    names = sorted(agreement.parties)
    n, k = len(names), recovery_k(agreement)
    if n > _MAX_PARTIES:
        raise KbsError(f"recovery supports at most {_MAX_PARTIES} parties")
    secret = rng(_SHARE_SIZE)
    set_id = rng(16)
    halves = [Shamir.split(k, n, secret[i : i + _HALF]) for i in (0, _HALF)]
    base = {"federation": agreement.federation, "set_id": set_id.hex(), "k": k}
    parties: dict[str, dict[str, Any]] = {}
    for pos, name in enumerate(names):
        index = pos + 1
        (ia, a), (ib, b) = halves[0][pos], halves[1][pos]
        if ia != index or ib != index:  # pragma: no cover - pycryptodome numbers 1..n
            raise KbsError("unexpected share numbering from the secret-sharing library")
        share = bytes(a) + bytes(b)
        spec = agreement.parties[name]
        recipient = X25519PublicKey.from_public_bytes(b64url_decode(spec.recipient_key, length=32))
        sealed = wrap_key(share, recipient, info=SHARE_INFO, aad=share_aad(base, name, index, n))
        parties[name] = {
            "index": index,
            "sign_key": spec.sign_key,
            "recipient_key": spec.recipient_key,
            "share_digest": share_digest(set_id, index, share),
            "sealed_share": b64url_encode(sealed),
        }
    record = RecoveryRecord.parse(
        {
            "format": RECORD_FORMAT,
            "federation": agreement.federation,
            "set_id": set_id.hex(),
            "agreement_version": agreement.version,
            "agreement_digest": agreement_digest.hex(),
            "k": k,
            "parties": parties,
        }
    )
    return ShareSet(record, secret)


def open_party_share(record: RecoveryRecord, party: str, recipient_key: X25519PrivateKey) -> bytes:
    """A party opens its sealed share from ``record`` and checks it against the digest.

    Raises:
        KbsError: ``party`` is not in the record, or the record names another recipient key.
        SealingError: the share does not open with this key (sealed to another key, tampered).
    """
    entry = record.parties.get(party)
    if entry is None:
        raise KbsError(f"party {party!r} holds no share in this recovery set")
    mine = b64url_encode(recipient_key.public_key().public_bytes_raw())
    if entry.recipient_key != mine:
        raise KbsError(f"the recovery set seals {party}'s share to another recipient key")
    fields = record.model_dump(mode="json")
    share = unwrap_key(
        b64url_decode(entry.sealed_share),
        recipient_key,
        info=SHARE_INFO,
        aad=share_aad(fields, party, entry.index, len(record.parties)),
    )
    if share_digest(bytes.fromhex(record.set_id), entry.index, share) != entry.share_digest:
        raise SealingError("the recovery share does not match the record's digest")
    return share



def combine_shares(record: RecoveryRecord, shares: Mapping[str, bytes]) -> bytes:
    """Recombine the recovery secret from at least ``k`` verified shares (by party name).

    Raises:
        KbsError: fewer than ``k`` shares, an unknown party, or a share that does not match
            its digest in the record.
    """
    if len(shares) < record.k:
        raise KbsError(f"{len(shares)} of {record.k} required recovery shares")
    set_id = bytes.fromhex(record.set_id)
    points: list[tuple[int, bytes]] = []
    for name, share in sorted(shares.items()):
        entry = record.parties.get(name)
        if entry is None or len(share) != _SHARE_SIZE:
            raise KbsError("recovery share of an unknown party or of the wrong size")
        if share_digest(set_id, entry.index, share) != entry.share_digest:
            raise KbsError(f"the recovery share of {name} does not match the record")
        points.append((entry.index, share))
    chosen = points[: record.k]
    halves = [Shamir.combine([(i, s[o : o + _HALF]) for i, s in chosen]) for o in (0, _HALF)]
    return bytes(halves[0]) + bytes(halves[1])


def _state_key(secret: bytes, record: RecoveryRecord) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=bytes.fromhex(record.set_id), info=_STATE_INFO
    ).derive(secret)


def seal_recovery_state(
    state: bytes, secret: bytes, record: RecoveryRecord, *, rng: Callable[[int], bytes] = os.urandom
) -> bytes:
    """Seal the key-set document under the recovery secret (module docstring).

    Raises:
        SealingError: as :func:`teeflow.sealing.seal`.
    """
    return seal(state, _state_key(secret, record), aad=_STATE_AAD + record.recovery_id(), rng=rng)


def open_recovery_state(blob: bytes, secret: bytes, record: RecoveryRecord) -> bytes:
    """Open the recovery copy of the state.

    Raises:
        SealingError: wrong secret, another record, or a modified copy.
    """
    return unseal(blob, _state_key(secret, record), aad=_STATE_AAD + record.recovery_id())


def write_recovery_file(state_dir: Path, record: RecoveryRecord, blob: bytes) -> Path:
    """Write ``{"record", "state"}`` to ``<state_dir>/kbs-recovery.json`` (0600, atomic).

    Raises:
        KbsError: I/O failure.
    """
    path = Path(state_dir) / RECORD_FILE
    doc = {"record": record.model_dump(mode="json"), "state": b64url_encode(blob)}
    try:
        ensure_private_dir(state_dir)
        atomic_write(path, json.dumps(doc, sort_keys=True).encode("utf-8"), replace=True)
        fsync_dir(path.parent)
    except OSError as exc:
        raise KbsError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def load_recovery_file(state_dir: Path) -> tuple[RecoveryRecord, bytes] | None:
    """Read ``<state_dir>/kbs-recovery.json``: ``(record, sealed state)``, or None if absent.

    Raises:
        ParseError: malformed or larger than 4 MiB.
        KbsError: unreadable.
    """
    path = Path(state_dir) / RECORD_FILE
    try:
        with path.open("rb") as fh:
            raw = fh.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KbsError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_FILE_BYTES:
        raise ParseError(f"{path} is larger than {_MAX_FILE_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise ParseError(f"{path} is not JSON") from None
    if not isinstance(doc, dict) or set(doc) != {"record", "state"}:
        raise ParseError(f"{path}: expected {{record, state}}")
    state = doc["state"]
    if not isinstance(state, str):
        raise ParseError(f"{path}: state must be a string")
    try:
        blob = base64.urlsafe_b64decode(state + "=" * (-len(state) % 4))
    except (binascii.Error, ValueError):
        raise ParseError(f"{path}: state is not base64url") from None
    return RecoveryRecord.parse(doc["record"]), blob
