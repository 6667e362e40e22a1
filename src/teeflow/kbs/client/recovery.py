"""Party side of KBS recovery (:mod:`teeflow.kbs.service.recovery`).

* :func:`fetch_share` — over the pinned TLS connection of a verified KBS, fetch the share-set
  record, open this party's share with its recipient key (checking the record's digest) and
  return a :class:`ShareFile`; :meth:`ShareFile.save` writes it 0600 (``teeflow kbs
  recovery-share save``). The file keeps the share *sealed* (only the party's recipient key
  opens it).
* :func:`recover` — ``teeflow kbs recover``: fetch the recovering KBS's evidence with a fresh
  nonce, verify it against the KBS reference values of the agreement **the party holds in
  force** (a KBS whose measurement that agreement does not name gets no share), check that
  its TLS key and recovery id are the bound ones, then submit the share HPKE-sealed to the
  KBS's attested recovery key and signed with the party's Ed25519 key, over a connection
  pinned to the attested TLS key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from teeflow._fs import atomic_write, ensure_private_dir
from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import KbsError, ParseError, PolicyViolation, VerificationError
from teeflow.kbs.client.pinning import (
    Pin,
    fetch_kbs_evidence,
    http_client,
    pinned_tls_context,
    send,
)
from teeflow.kbs.policy.agreement import FederationAgreement, WorkloadRole
from teeflow.kbs.policy.canonical import b64url_decode, format_validation_error
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.kbs.service.collateral import CollateralProvider, SnpEndorsementProvider
from teeflow.kbs.service.evidence import VerifyInputs, evidence_type
from teeflow.kbs.service.recovery import (
    RecoveryRecord,
    open_party_share,
    sign_submission,
)
from teeflow.kbs.service.recovery_mode import (
    RECOVERY_EVIDENCE_FORMAT,
    RECOVERY_PUBLIC_FORMAT,
    recovery_report_data,
)
from teeflow.kbs.service.self_attestation import spki_sha256

__all__ = [
    "SHARE_FILE_FORMAT",
    "ShareFile",
    "default_share_path",
    "fetch_share",
    "recover",
    "verify_recovery_evidence",
]

SHARE_FILE_FORMAT = "teeflow-kbs-recovery-share/1"
_MAX_FILE = 4 << 20
_MAX_EVIDENCE = 256 * 1024


class ShareFile(BaseModel):
    """A party's saved share: ``{"format", "party", "recovery_id", "record"}`` (the record
    holds the share sealed to the party's recipient key)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    format: str = Field(pattern=r"^teeflow-kbs-recovery-share/1$")
    party: str = Field(min_length=1, max_length=63)
    recovery_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    record: dict[str, Any]

    def parsed_record(self) -> RecoveryRecord:
        """The record, validated, whose recovery id must equal ``recovery_id``.

        Raises:
            ParseError: malformed or another recovery id.
        """
        record = RecoveryRecord.parse(self.record)
        if record.recovery_id().hex() != self.recovery_id:
            raise ParseError("share file: the record does not match its recovery id")
        return record

    def save(self, path: Path) -> Path:
        """Write the file (0600; its directory 0700 when created).

        Raises:
            KbsError: I/O failure.
        """
        path = Path(path)
        try:
            ensure_private_dir(path.parent)
            atomic_write(path, self.model_dump_json().encode("utf-8"), replace=True)
        except OSError as exc:
            raise KbsError(f"cannot write {path}: {exc.strerror or exc}") from None
        return path

    @classmethod
    def load(cls, path: Path) -> ShareFile:
        """Read and validate a share file.

        Raises:
            ParseError: malformed; KbsError: unreadable.
        """
        try:
            with Path(path).open("rb") as fh:
                raw = fh.read(_MAX_FILE + 1)
        except OSError as exc:
            raise KbsError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            share = cls.model_validate_json(raw[:_MAX_FILE])
        except ValidationError as exc:
            raise ParseError(f"{path}: {format_validation_error(exc)}") from None
        share.parsed_record()
        return share


def default_share_path(party: str, home: Path | None = None) -> Path:
    """``$TEEFLOW_HOME/parties/<party>/kbs-recovery-share.json``."""
    from teeflow.kbs.policy.parties import party_dir

    return party_dir(party, home) / "kbs-recovery-share.json"


def fetch_share(pin: Pin, keys: PartyKeys, *, timeout: float = 10.0) -> ShareFile:
    """Fetch the share-set record from the pinned KBS and check this party's share opens.

    Raises:
        KbsError: transport failure, or the party holds no share / another recipient key.
        SealingError: the share does not open or does not match its digest.
        ParseError: malformed record.
    """
    with http_client(pin.url, pinned_tls_context(pin.tls_spki_sha256), timeout) as http:
        _, body = send(http, "GET", "/v1/recovery/record", limit=_MAX_FILE)
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise ParseError("the recovery record is not JSON") from None
    record = RecoveryRecord.parse(doc)
    if record.federation != pin.federation:
        raise KbsError("the recovery record is for another federation")
    open_party_share(record, keys.name, keys.recipient_key)
    return ShareFile(
        format=SHARE_FILE_FORMAT,
        party=keys.name,
        recovery_id=record.recovery_id().hex(),
        record=record.model_dump(mode="json"),
    )


def verify_recovery_evidence(
    document: bytes,
    *,
    nonce: bytes,
    agreement: FederationAgreement,
    allow_emulated: bool,
    anchors: Sequence[TrustAnchor],
    collateral: CollateralProvider,
    now: datetime,
    observed_tls_spki: Sequence[str],
    snp_endorsements: SnpEndorsementProvider | None = None,
) -> dict[str, Any]:
    """Verify a recovering KBS's evidence (any TEE the KBS attests: the RCAR adapters of
    :mod:`teeflow.kbs.service.evidence`) against ``agreement.workloads.kbs``, with
    REPORT_DATA pinned to the recovery bundle and ``nonce``; returns the recovery bundle.

    Raises:
        ParseError: malformed document or evidence.
        VerificationError: the evidence does not verify, the declared TEE differs from the
            evidence, or the TLS key / federation binding differs.
        PolicyViolation: the agreement does not name this KBS (measurement, TCB, debug...),
            has no KBS reference values for the TEE, or the evidence is emulated while the
            party or the agreement does not allow it.
    """
    try:
        doc = json.loads(document)
        bundle, tee, primary = doc["recovery"], doc["tee"], doc["primary_evidence"]
        if doc.get("format") != RECOVERY_EVIDENCE_FORMAT or not isinstance(bundle, dict):
            raise ParseError("not recovery evidence (is the KBS in recovery mode?)")
        if bundle.get("format") != RECOVERY_PUBLIC_FORMAT or not isinstance(primary, dict):
            raise ParseError("unknown recovery bundle or evidence shape")
        cert = x509.load_pem_x509_certificate(str(bundle["tls_certificate"]).encode("ascii"))
    except (ValueError, KeyError, TypeError, RecursionError):
        raise ParseError("recovery evidence is malformed") from None
    spki = spki_sha256(cert)
    if spki != bundle.get("tls_spki_sha256") or any(s != spki for s in observed_tls_spki):
        raise VerificationError("the recovering KBS's TLS key is not the one its evidence binds")
    if bundle.get("federation") != agreement.federation:
        raise VerificationError("the recovering KBS serves another federation")
    adapter = evidence_type(tee) if isinstance(tee, str) else None
    if adapter is None:
        raise PolicyViolation("unsupported KBS evidence", [f"unsupported tee {tee!r}"])
    emulated_ok = allow_emulated and agreement.allow_emulated
    if tee.startswith("emulated-") and not emulated_ok:
        raise PolicyViolation("the KBS is EMULATED", ["emulated evidence refused"])
    inputs = VerifyInputs(
        anchors=[a for a in anchors if emulated_ok or not a.emulated],
        collateral=collateral,
        snp_endorsements=snp_endorsements,
        now=now,
    )
    verified = adapter.verify(primary, inputs)
    result = adapter.appraise(
        verified, agreement, WorkloadRole.KBS, recovery_report_data(bundle, nonce)
    )
    if result.violations:
        raise PolicyViolation(
            "the recovering KBS is not the one the agreement names: "
            + "; ".join(result.violations),
            list(result.violations),
        )
    if result.tee != tee:
        raise VerificationError(f"the KBS declared {tee} but its evidence is {result.tee}")
    return bundle


def recover(
    url: str,
    share: ShareFile,
    keys: PartyKeys,
    agreement: FederationAgreement,
    *,
    allow_emulated: bool = False,
    anchors: Sequence[TrustAnchor],
    collateral: CollateralProvider,
    now: datetime | None = None,
    rng: Callable[[int], bytes] = os.urandom,
    timeout: float = 10.0,
    snp_endorsements: SnpEndorsementProvider | None = None,
) -> dict[str, Any]:
    """Verify the recovering KBS at ``url`` and submit this party's share (module docstring).
    Returns the KBS's recovery status after the submission.

    Raises:
        ParseError, VerificationError, PolicyViolation: as :func:`verify_recovery_evidence`.
        KbsError: transport failure, another share set (fetch the current share), or the
            KBS refused the submission (its problem type).
        SealingError: the saved share does not open with this party's key.
    """
    when = now if now is not None else datetime.now(UTC)
    base = url.rstrip("/")
    record = share.parsed_record()
    own = open_party_share(record, keys.name, keys.recipient_key)
    nonce = rng(32)
    body, observed = fetch_kbs_evidence(base, nonce, timeout=timeout, limit=_MAX_EVIDENCE)
    bundle = verify_recovery_evidence(
        body,
        nonce=nonce,
        agreement=agreement,
        allow_emulated=allow_emulated,
        anchors=anchors,
        collateral=collateral,
        now=when,
        observed_tls_spki=observed,
        snp_endorsements=snp_endorsements,
    )
    if bundle.get("recovery_id") != share.recovery_id:
        raise KbsError(
            "the KBS recovers another share set than the saved share: fetch the current one"
        )
    recipient = X25519PublicKey.from_public_bytes(
        b64url_decode(bundle["hpke_public_key"], length=32)
    )
    submission = sign_submission(
        keys.sign_key,
        party=keys.name,
        recovery_id=share.recovery_id,
        recipient=recipient,
        share=own,
    )
    ctx = pinned_tls_context(str(bundle["tls_spki_sha256"]))
    with http_client(base, ctx, timeout) as http:
        _, answer = send(
            http,
            "POST",
            "/v1/recovery/shares",
            content=submission.model_dump_json().encode("utf-8"),
            headers={"Content-Type": "application/json"},
            limit=_MAX_EVIDENCE,
        )
    try:
        status: dict[str, Any] = json.loads(answer)
    except (ValueError, RecursionError):
        raise ParseError("the KBS recovery status is not JSON") from None
    return status
