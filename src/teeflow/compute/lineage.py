"""Lineage of a sealed result: which inputs, function and worker produced it — signed,
bound to the job's attestation, and recorded in the KBS audit log.

**Record** (:class:`LineageRecord`) — made by the worker for every result::

    {"format": "teeflow-compute-lineage/1", "result_id": <32 hex>, "federation": ...,
     "agreement_digest": <hex>, "package": {"name", "digest"}, "function": "average",
     "inputs": [{"id": <owner>/teeu-input/<blob sha256>, "owner": ...}, ...],
     "recipients": [...], "result": {"kind": "array", "sealed_sha256": <hex>,
     "sealed_size": n}, "wrapped_keys": {<recipient>: <b64url HPKE-wrapped data key>},
     "worker": {"measurement", "tee", "emulated"}, "attestation_token": <EAR JWT>,
     "created_at": <RFC 3339 UTC>}

Its digest is ``SHA-256(RFC 8785 canonical JSON of the record)``. The worker signs
``b"teeflow-compute-lineage-v1\\0" || digest`` (ECDSA P-256, SHA-256, DER) with the job's
attested key and ships the job's workload certificate (:class:`SignedLineage`).

**Verification** (:func:`verify_lineage`, run by recipients before they open a result):
the certificate was issued by the pinned federation CA to role ``compute`` and was valid
when the record was made, with the record's measurement and agreement digest; the signature
verifies with its key; the EAR token verifies with the pinned KBS EAR key, carries that same
``tee-pubkey`` and attested claims equal to the record (role ``compute``, package digest,
function, the input ids in order, the recipients); the wrapped keys are exactly for the
recipients. So a verified record proves: the KBS appraised this worker, for this function over
these inputs and recipients, and the key that signed the record is the attested one.

**Audit** (:func:`lineage_from_audit`): the worker steps the KBS counter
``compute/<result_id>`` from 0 to 1 bound to the record digest (an existing KBS endpoint, so
the KBS audit log holds an entry ``counter:compute/<result_id>`` with ``bound_digest``).
Joining the verified audit log on that entry, the releases made to the job's token
(``release`` entries whose ``token_digest`` is SHA-256 of the token) and the uploads of those
resources (``resource`` entries: owner, ``grant_digest``) gives the independent lineage
``teeflow compute lineage`` shows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from teeflow.attestation.ear import verify_ear
from teeflow.compute.jobs import InputId, ResultId
from teeflow.errors import ParseError, VerificationError
from teeflow.kbs.ca.authority import verify_workload_certificate
from teeflow.kbs.client.pinning import Pin
from teeflow.kbs.policy.canonical import b64url_decode, b64url_encode, sha256_digest
from teeflow.kbs.store.interface import (
    AuditEntry,
)

__all__ = [
    "LINEAGE_DOMAIN",
    "LINEAGE_FORMAT",
    "RESULT_FORMAT",
    "AuditLineage",
    "InputLineage",
    "LineageRecord",
    "ResultRef",
    "SignedLineage",
    "counter_name",
    "lineage_digest",
    "lineage_from_audit",
    "sign_lineage",
    "verify_lineage",
]

LINEAGE_FORMAT: Final = "teeflow-compute-lineage/1"
RESULT_FORMAT: Final = "teeflow-compute-result/1"
LINEAGE_DOMAIN: Final = b"teeflow-compute-lineage-v1\x00"
_Hex32 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
_Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")]


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputLineage(_Doc):
    """One input of a job: its id (the KBS resource path, which names the sealed blob's
    SHA-256) and its owner."""

    id: InputId
    owner: _Name


class PackageRef(_Doc):
    """The compute package: its agreement name and digest."""

    name: Annotated[str, StringConstraints(max_length=64)]
    digest: _Hex32


class ResultInfo(_Doc):
    """The sealed result: value kind, SHA-256 and size (bytes) of the sealed blob."""

    kind: Literal["array", "arrays", "table", "bytes", "json"]
    sealed_sha256: _Hex32
    sealed_size: int = Field(ge=0)


class WorkerInfo(_Doc):
    """The worker as appraised by the KBS."""

    measurement: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32,128}$")]
    tee: Annotated[str, StringConstraints(max_length=32)]
    emulated: bool


class LineageRecord(_Doc):
    """The lineage record (module docstring)."""

    format: Literal["teeflow-compute-lineage/1"] = LINEAGE_FORMAT
    result_id: ResultId
    federation: Annotated[str, StringConstraints(max_length=63)]
    agreement_digest: _Hex32
    package: PackageRef
    function: Annotated[str, StringConstraints(max_length=128)]
    inputs: tuple[InputLineage, ...] = Field(min_length=1, max_length=64)
    recipients: tuple[_Name, ...] = Field(min_length=1, max_length=64)
    result: ResultInfo
    wrapped_keys: dict[_Name, Annotated[str, StringConstraints(max_length=512)]]
    worker: WorkerInfo
    attestation_token: Annotated[str, StringConstraints(max_length=64 * 1024)]
    created_at: AwareDatetime


class SignedLineage(_Doc):
    """A record, the job's workload certificate (PEM) and the signature (base64url DER)."""

    record: LineageRecord
    certificate: Annotated[str, StringConstraints(max_length=16 * 1024)]
    signature: Annotated[str, StringConstraints(max_length=256)]


class ResultRef(_Doc):
    """A shareable reference to a sealed result: where to fetch it and its signed lineage.

    Holds public values only (ciphertext digests, wrapped keys, a certificate)."""

    format: Literal["teeflow-compute-result/1"] = RESULT_FORMAT
    worker: Annotated[str, StringConstraints(pattern=r"^https://[^\s/?#]+$", max_length=512)]
    lineage: SignedLineage

    @property
    def result_id(self) -> str:
        """The result id."""
        return self.lineage.record.result_id

    @property
    def recipients(self) -> tuple[str, ...]:
        """Who can open it."""
        return self.lineage.record.recipients

    @classmethod
    def from_json(cls, text: str | bytes) -> ResultRef:
        """Parse a result reference (≤ 1 MiB).

        Raises:
            ParseError: malformed.
        """
        if len(text) > 1 << 20:
            raise ParseError("result reference larger than 1 MiB")
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ParseError(f"invalid result reference ({exc.error_count()} errors)") from None


def lineage_digest(record: LineageRecord) -> bytes:
    """SHA-256 (32 bytes) of the RFC 8785 canonical JSON of ``record``."""
    return sha256_digest(record.model_dump(mode="json"))


def counter_name(result_id: str) -> str:
    """The KBS counter recording a job: ``compute/<result_id>``."""
    return f"compute/{result_id}"


def sign_lineage(
    record: LineageRecord, certificate_pem: bytes, key: ec.EllipticCurvePrivateKey
) -> SignedLineage:
    """Sign ``record`` with the job's attested P-256 key (module docstring)."""
    sig = key.sign(LINEAGE_DOMAIN + lineage_digest(record), ec.ECDSA(hashes.SHA256()))
    return SignedLineage(
        record=record, certificate=certificate_pem.decode("ascii"), signature=b64url_encode(sig)
    )


def _same_key(jwk: Mapping[str, Any], key: ec.EllipticCurvePublicKey) -> bool:
    nums = key.public_numbers()
    try:
        x = int.from_bytes(b64url_decode(jwk.get("x"), length=32), "big")
        y = int.from_bytes(b64url_decode(jwk.get("y"), length=32), "big")
    except ParseError:
        return False
    return jwk.get("crv") == "P-256" and (x, y) == (nums.x, nums.y)


def verify_lineage(
    signed: SignedLineage, pin: Pin, *, agreement_digest: str | None = None
) -> LineageRecord:
    """Verify a signed lineage record against the pinned KBS (module docstring).

    Args:
        signed: the record with certificate and signature.
        pin: the verified KBS (federation CA, EAR key).
        agreement_digest: require this agreement (hex); default: the record's own, which
            the certificate and token must match.

    Returns:
        The verified record.

    Raises:
        VerificationError: any check fails.
    """
    record = signed.record
    when = record.created_at
    if agreement_digest is not None and record.agreement_digest != agreement_digest.lower():
        raise VerificationError("result was produced under another agreement")
    try:
        cert = x509.load_pem_x509_certificate(signed.certificate.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise VerificationError("lineage certificate is malformed") from None
    ident = verify_workload_certificate(
        cert, pin.ca(), now=when, expected_agreement_digest=record.agreement_digest,
        required_role="compute",
    )
    if ident.measurement != record.worker.measurement:
        raise VerificationError("lineage measurement differs from the certificate's")
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise VerificationError("lineage certificate key is not an EC key")
    try:
        key.verify(b64url_decode(signed.signature), LINEAGE_DOMAIN + lineage_digest(record),
                   ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ParseError, ValueError):
        raise VerificationError("lineage signature does not verify") from None
    try:
        ear_key = ECKey.import_key(dict(pin.ear_public_jwk))  # type: ignore[arg-type]
        ear = verify_ear(record.attestation_token, ear_key, now=when, nonce=None,
                         leeway=timedelta(seconds=60))
    except ValueError:
        raise VerificationError("the pinned EAR key is unusable") from None
    attested = ear.claims.get("teeflow.attested")
    pub = ear.claims.get("tee-pubkey")
    if not isinstance(attested, Mapping) or not isinstance(pub, Mapping):
        raise VerificationError("attestation token lacks teeflow claims")
    if not _same_key(pub, key):
        raise VerificationError("the certificate key is not the job's attested key")
    claims = attested.get("claims") or {}
    problems = []
    if attested.get("role") != "compute" or attested.get("measurement") != ident.measurement:
        problems.append("role/measurement")
    if attested.get("agreement_digest") != record.agreement_digest:
        problems.append("agreement")
    if claims.get("package_digest") != record.package.digest:
        problems.append("package")
    if claims.get("function") != record.function:
        problems.append("function")
    if list(claims.get("resources") or []) != [i.id for i in record.inputs]:
        problems.append("inputs")
    if list(claims.get("recipients") or []) != list(record.recipients):
        problems.append("recipients")
    if set(record.wrapped_keys) != set(record.recipients):
        problems.append("wrapped keys")
    if problems:
        raise VerificationError("lineage differs from the attested job: " + ", ".join(problems))
    return record


@dataclass(frozen=True)
class AuditLineage:
    """What the KBS audit log says about a result (:func:`lineage_from_audit`).

    Attributes:
        counter_seq: seq of the ``counter:compute/<id>`` entry binding the record digest.
        recorded_at: time of that entry (KBS clock).
        releases: ``(input id, release seq)`` for every input released to the job's token.
        grants: input id → ``(owner, grant digest)`` from the upload entries.
    """

    counter_seq: int
    recorded_at: datetime
    releases: tuple[tuple[str, int], ...]
    grants: dict[str, tuple[str, str]]


def lineage_from_audit(record: LineageRecord, entries: Sequence[AuditEntry]) -> AuditLineage:
    """Find ``record`` in a *verified* audit log (module docstring).

    Raises:
        VerificationError: no counter entry binds the record digest, an input was not
            released to the job's token, or an input's recorded owner is not the party
            whose signed upload the audit log shows.
    """
    subject = "counter:" + counter_name(record.result_id)
    want = lineage_digest(record).hex()
    counter = next(
        (e for e in entries if e.kind == "counter" and e.subject == subject
         and e.decision == "accept" and e.data.get("bound_digest") == want),
        None,
    )
    if counter is None:
        raise VerificationError("the KBS audit log does not record this result")
    token_digest = hashlib.sha256(record.attestation_token.encode("ascii")).hexdigest()
    released = {
        e.subject: e.seq for e in entries
        if e.kind == "release" and e.decision == "accept"
        and e.data.get("token_digest") == token_digest
    }
    missing = [i.id for i in record.inputs if i.id not in released]
    if missing:
        raise VerificationError(f"inputs not released to this job: {', '.join(missing)}")
    grants: dict[str, tuple[str, str]] = {}
    for e in entries:
        if e.kind == "resource" and e.decision == "accept" and e.subject in released \
                and e.seq < released[e.subject]:
            grants[e.subject] = (str(e.data.get("owner")), str(e.data.get("grant_digest")))
    # the owner is the party whose signed upload the KBS accepted (its grant's signer), not
    # the record's claim; the KBS keeps a party resource under its owner's name
    wrong = [i.id for i in record.inputs if i.id in grants and grants[i.id][0] != i.owner]
    if wrong:
        raise VerificationError(f"input owners differ from the audited uploads: {wrong}")
    return AuditLineage(
        counter_seq=counter.seq,
        recorded_at=counter.time,
        releases=tuple((i.id, released[i.id]) for i in record.inputs),
        grants=grants,
    )
