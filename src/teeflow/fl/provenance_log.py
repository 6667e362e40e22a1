"""Building a provenance log (the aggregator's side of :mod:`teeflow.fl.provenance`).

:class:`ProvenanceLog` signs each entry with the aggregator instance's attested P-256 key and
re-verifies the whole chain before accepting an entry, so it never holds an invalid log. A
restarted instance continues the log of its checkpoint with a *new* key: it first appends a
``handover`` entry (:meth:`ProvenanceLog.handover`) naming its KBS-issued certificate and the
certificate it takes over from; only then may it append rounds.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from teeflow.attestation.policy import normalize_hex
from teeflow.errors import FLError, ParseError
from teeflow.fl.provenance import (
    GENESIS_HASH,
    PROVENANCE_DOMAIN,
    CertificateCheck,
    ClientRecord,
    ProvenanceEntry,
    ProvenanceError,
    RoundTrustRecord,
    certificate_fingerprint,
    embedded_certificate,
    entry_hash,
    save_provenance,
    verify_provenance,
)
from teeflow.fl.provenance_records import DetectionRecord, PrivacyRecord
from teeflow.hazmat.ecdsa import der_to_raw_signature
from teeflow.kbs.policy.canonical import format_validation_error
from teeflow.kbs.policy.training import TrainingTerms

__all__ = ["ProvenanceLog"]

Kind = Literal["session-start", "round", "handover", "final"]


def _hex32(value: bytes | str, what: str) -> str:
    try:
        if isinstance(value, bytes | bytearray):
            if len(value) != 32:
                raise ValueError("expected 32 bytes")
            return bytes(value).hex()
        return normalize_hex(value, length=32)
    except ValueError as exc:
        raise FLError(f"{what}: {exc}") from None


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class ProvenanceLog:
    """Builds a signed chain.

    Args:
        signing_key: this aggregator instance's attested P-256 key (the private key of its
            workload certificate; it stays in this process).
        entries: an existing log to continue (after a restart, from the sealed checkpoint);
            it is verified first, anchored at its own session-start certificate.
        certify: the check of hand-over certificates (:data:`~teeflow.fl.provenance.
            CertificateCheck`, e.g. :func:`teeflow.fl.outputs.aggregator_certificate_check`);
            needed to continue a log that has a hand-over and to append one.

    Raises:
        FLError: the key is not P-256.
        ProvenanceError: ``entries`` do not verify.
    """

    def __init__(
        self,
        signing_key: ec.EllipticCurvePrivateKey,
        entries: Sequence[ProvenanceEntry] = (),
        *,
        certify: CertificateCheck | None = None,
    ) -> None:
        if not isinstance(signing_key, ec.EllipticCurvePrivateKey) or not isinstance(
            signing_key.curve, ec.SECP256R1
        ):
            raise FLError("the provenance signing key must be ECDSA P-256")
        self._key = signing_key
        self._certify = certify
        self._entries: list[ProvenanceEntry] = list(entries)
        self._segment: x509.Certificate | None = None  # certificate of the current segment
        if self._entries:
            self._segment = self._verify(self._entries)[-1]

    def _verify(self, entries: Sequence[ProvenanceEntry]) -> tuple[x509.Certificate, ...]:
        return verify_provenance(entries, embedded_certificate(entries), certify=self._certify)

    @property
    def entries(self) -> tuple[ProvenanceEntry, ...]:
        """The entries so far, oldest first."""
        return tuple(self._entries)

    @property
    def needs_handover(self) -> bool:
        """True when the log's current segment is signed by another key (a resumed log):
        :meth:`handover` must come before any other entry."""
        if self._segment is None:
            return False
        key = self._segment.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)  # verify_provenance checked it
        return _spki(key) != _spki(self._key.public_key())

    def append(
        self,
        kind: Kind,
        *,
        session: str,
        agreement_digest: bytes | str,
        aggregator_measurement: bytes | str,
        package_digest: bytes | str,
        aggregate_digest: bytes | str,
        aggregator_certificate: str | None = None,
        round: int | None = None,
        clients: Iterable[ClientRecord | Mapping[str, str]] = (),
        update_digests: Mapping[str, bytes | str] | None = None,
        weights: Mapping[str, int] | None = None,
        clipped: Iterable[str] = (),
        handover_from: str | None = None,
        metrics: Mapping[str, float] | None = None,
        training: TrainingTerms | None = None,
        detection: DetectionRecord | None = None,
        privacy: PrivacyRecord | None = None,
        trust: RoundTrustRecord | None = None,
        agreement_in_force: bytes | str | None = None,
    ) -> ProvenanceEntry:
        """Sign and append one entry; the result keeps the whole log valid.

        Raises:
            FLError: a field is invalid, the log needs a hand-over first, or the entry would
                break a rule of :func:`~teeflow.fl.provenance.verify_provenance` (nothing is
                appended then).
        """
        if kind != "handover" and self.needs_handover:
            raise FLError(
                "this log continues another aggregator instance's: append a handover first"
            )
        measurement = (
            aggregator_measurement.hex()
            if isinstance(aggregator_measurement, bytes)
            else aggregator_measurement
        )
        fields: dict[str, Any] = {
            "seq": len(self._entries) + 1,
            "kind": kind,
            "session": session,
            "agreement_digest": _hex32(agreement_digest, "agreement_digest"),
            "aggregator_measurement": measurement,
            "aggregator_certificate": aggregator_certificate,
            "package_digest": _hex32(package_digest, "package_digest"),
            "round": round,
            "clients": [c if isinstance(c, ClientRecord) else dict(c) for c in clients],
            "update_digests": {
                p: _hex32(d, f"update digest of {p}") for p, d in (update_digests or {}).items()
            },
            "weights": dict(weights or {}),
            "clipped": sorted(clipped),
            "handover_from": handover_from,
            "aggregate_digest": _hex32(aggregate_digest, "aggregate_digest"),
            "metrics": {k: float(v) for k, v in (metrics or {}).items()},
            "training": training,
            "detection": detection,
            "privacy": privacy,
            "trust": trust,
            "agreement_in_force": None
            if agreement_in_force is None
            else _hex32(agreement_in_force, "agreement_in_force"),
            "prev_hash": self._entries[-1].hash if self._entries else GENESIS_HASH,
            "hash": GENESIS_HASH,
            "signature": "0" * 128,
        }
        try:
            draft = ProvenanceEntry.model_validate(fields)
            digest = entry_hash(draft)
        except ValidationError as exc:
            raise FLError(f"invalid provenance entry: {format_validation_error(exc)}") from None
        except ParseError as exc:
            raise FLError(f"invalid provenance entry: {exc}") from None
        der = self._key.sign(PROVENANCE_DOMAIN + bytes.fromhex(digest), ec.ECDSA(hashes.SHA256()))
        entry = draft.model_copy(
            update={"hash": digest, "signature": der_to_raw_signature(der).hex()}
        )
        try:
            certificates = self._verify([*self._entries, entry])
        except ProvenanceError as exc:
            raise FLError(f"entry refused: {exc.reason}") from None
        self._entries.append(entry)
        self._segment = certificates[-1]
        return entry

    def _common(self) -> dict[str, Any]:
        if not self._entries:
            raise FLError("the log has no session-start entry")
        s = self._entries[0]
        current = [e for e in self._entries if e.aggregator_certificate is not None][-1]
        return {
            "session": s.session,
            "agreement_digest": s.agreement_digest,
            "aggregator_measurement": current.aggregator_measurement,
            "package_digest": s.package_digest,
        }

    def start(
        self,
        *,
        session: str,
        agreement_digest: bytes | str,
        aggregator_measurement: bytes | str,
        aggregator_certificate: str,
        package_digest: bytes | str,
        initial_digest: bytes | str,
        training: TrainingTerms | None = None,
    ) -> ProvenanceEntry:
        """Append the ``session-start`` entry (``initial_digest``: the initial global model;
        ``training``: the agreement's training terms the session runs under).

        Raises:
            FLError: as :meth:`append` (e.g. the log is not empty).
        """
        return self.append(
            "session-start",
            session=session,
            agreement_digest=agreement_digest,
            aggregator_measurement=aggregator_measurement,
            aggregator_certificate=aggregator_certificate,
            package_digest=package_digest,
            aggregate_digest=initial_digest,
            training=training,
        )

    def handover(
        self,
        *,
        aggregator_certificate: str,
        aggregator_measurement: bytes | str,
        agreement_in_force: bytes | str | None = None,
    ) -> ProvenanceEntry:
        """Append a ``handover`` entry: this instance (``aggregator_certificate``, whose key
        must be the signing key; ``aggregator_measurement``, its attested measurement) takes
        over the log at its last round; ``agreement_in_force``: the digest its certificate is
        bound to when an agreement update was accepted during the session (issue 11).

        Raises:
            FLError: nothing to take over (no round yet, or the log is final), the
                certificate is not for the signing key, or :meth:`append`'s reasons (the
                certificate check refuses the certificate, or there is none).
        """
        rounds = [e for e in self._entries if e.kind == "round"]
        if not rounds or self._entries[-1].kind == "final" or self._segment is None:
            raise FLError("a hand-over needs a log with a committed round and no final entry")
        try:
            pem = aggregator_certificate.encode("ascii")
            key = x509.load_pem_x509_certificate(pem).public_key()
        except (ValueError, UnicodeEncodeError):
            raise FLError("the hand-over certificate is not a PEM certificate") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or _spki(key) != _spki(
            self._key.public_key()
        ):
            raise FLError("the hand-over certificate is not for this instance's signing key")
        return self.append(
            "handover",
            **{**self._common(), "aggregator_measurement": aggregator_measurement},
            aggregator_certificate=aggregator_certificate,
            round=rounds[-1].round,
            handover_from=certificate_fingerprint(self._segment),
            aggregate_digest=self._entries[-1].aggregate_digest,
            agreement_in_force=agreement_in_force,
        )

    def record_round(
        self,
        round: int,
        *,
        clients: Iterable[ClientRecord | Mapping[str, str]],
        update_digests: Mapping[str, bytes | str],
        aggregate_digest: bytes | str,
        weights: Mapping[str, int] | None = None,
        clipped: Iterable[str] = (),
        metrics: Mapping[str, float] | None = None,
        detection: DetectionRecord | None = None,
        privacy: PrivacyRecord | None = None,
        trust: RoundTrustRecord | None = None,
    ) -> ProvenanceEntry:
        """Append a ``round`` entry (session fields copied from the current segment);
        ``weights``: the FedAvg weight used per party, ``clipped``: the parties whose
        ``num_examples`` was clipped to the agreement's cap; ``detection``/``privacy``: the
        round's outlier detection and DP records; ``trust``: the round's live trust record
        (agreement in force, attestation ages, drops; issue 11).

        Raises:
            FLError: as :meth:`append`.
        """
        return self.append(
            "round",
            **self._common(),
            round=round,
            clients=clients,
            update_digests=update_digests,
            weights=weights,
            clipped=clipped,
            aggregate_digest=aggregate_digest,
            metrics=metrics,
            detection=detection,
            privacy=privacy,
            trust=trust,
        )

    def finish(self, *, metrics: Mapping[str, float] | None = None) -> ProvenanceEntry:
        """Append the ``final`` entry naming the last aggregate as the released model.

        Raises:
            FLError: as :meth:`append`.
        """
        rounds = [e for e in self._entries if e.kind == "round"]
        last = self._entries[-1] if self._entries else None
        return self.append(
            "final",
            **self._common(),
            round=rounds[-1].round if rounds else None,
            aggregate_digest=last.aggregate_digest if last else GENESIS_HASH,
            metrics=metrics,
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the log as JSON lines (atomic replace). See
        :func:`~teeflow.fl.provenance.save_provenance`."""
        save_provenance(self._entries, path)
