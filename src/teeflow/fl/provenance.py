"""Model provenance: the aggregator's hash-chained log, signed with attested P-256 keys.

One entry per event (format ``teeflow-provenance/2``)::

    kind "session-start" (seq 1): session, agreement_digest, aggregator_measurement,
        aggregator_certificate (PEM of the attested workload certificate), package_digest,
        aggregate_digest = the initial global model's digest
    kind "round" (round r = 1, 2, ...): + clients [{party, measurement}] (attested identities of
        the participants), update_digests {party: digest}, weights {party: FedAvg weight
        used}, clipped [parties whose num_examples was clipped to the agreement's cap],
        aggregate_digest (the new global model), metrics {name: number}
        and, from issue 11 on, trust {agreement_version, agreement_digest (the agreement in
        force for the round), attestation_age {party: seconds at round start},
        aggregator_attestation_age, dropped [{party, reason}]} — left out of the entry (and
        its hash) when absent, so earlier logs keep verifying
    optional (left out of the hashed body when unset): ``training`` on session-start (the
        agreement's training terms), ``detection`` and ``privacy`` on rounds
        (:mod:`teeflow.fl.provenance_records`)
    kind "handover" (an aggregator restart): round = the last committed round,
        aggregate_digest = the resumed model, aggregator_certificate = the new instance's
        certificate, aggregator_measurement = its measurement, handover_from = SHA-256 of the
        DER of the certificate it takes over from; signed by the *new* key
    kind "final" (last): round = the last round, aggregate_digest = the released model

**Signing keys.** Each aggregator instance signs with the private key of its own attested
workload certificate; the key never leaves the process and is never written to a checkpoint
(:mod:`teeflow.fl.checkpoint`). The log therefore falls into *segments*: session-start and
the entries after it are signed by the key of the session-start certificate; each
``handover`` entry (written by a restarted instance that resumed from the sealed checkpoint)
embeds the new instance's certificate and opens a segment signed by its key. A hand-over is
not signed by the old key (that instance is gone): what makes it trustworthy is that its
certificate was issued by the federation CA to an attested aggregator — checked through the
``certify`` callback of :func:`verify_provenance` (:func:`teeflow.fl.outputs.
aggregator_certificate_check` checks the CA chain, role ``aggregator``, agreement digest and
measurement) — and that only attested aggregators can open the checkpoint the log continues.

Every entry repeats session, agreement and package digest (they never change) and the
aggregator measurement (it changes only at a hand-over, to the new certificate's). Digests are
lower-case hex SHA-256 (models: :func:`teeflow.fl.arrays.arrays_digest`; packages:
:func:`teeflow.fl.package.package_digest`).

Entry hash = SHA-256 of the RFC 8785 canonical JSON of all fields except ``hash`` and
``signature``, plus ``"format": "teeflow-provenance/2"``; ``prev_hash`` is the previous
entry's hash (64 zeros for seq 1). Signature = ECDSA P-256 / SHA-256 (FIPS 186-5) over
``b"teeflow-provenance-v2\\0" || hash`` with the segment's key, stored as hex of the 64-byte
raw ``r || s``.

:func:`verify_provenance` re-checks everything and raises :class:`ProvenanceError` (a
:class:`~teeflow.errors.VerificationError`) naming the first bad entry. Truncation of the tail
is caught only with ``expected_final_digest`` (the log must then end with a ``final`` entry
whose digest is the model's). Whether the session-start certificate chains to the federation
CA is the caller's check (:func:`embedded_certificate`); hand-over certificates are checked by
``certify``, without which a log with a hand-over does not verify. The builder is
:class:`teeflow.fl.provenance_log.ProvenanceLog`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from teeflow.attestation.policy import Hex32, normalize_hex
from teeflow.errors import FLError, ParseError, VerificationError
from teeflow.fl.provenance_records import DetectionRecord, PrivacyRecord
from teeflow.hazmat.ecdsa import verify_p256_sha256
from teeflow.kbs.policy.canonical import canonical_json, format_validation_error
from teeflow.kbs.policy.parties import Name
from teeflow.kbs.policy.training import TrainingTerms

__all__ = [
    "GENESIS_HASH",
    "KINDS",
    "PROVENANCE_DOMAIN",
    "PROVENANCE_FORMAT",
    "CertificateCheck",
    "ClientRecord",
    "DropRecord",
    "ProvenanceEntry",
    "ProvenanceError",
    "RoundTrustRecord",
    "certificate_fingerprint",
    "embedded_certificate",
    "entry_hash",
    "entry_json",
    "load_provenance",
    "save_provenance",
    "verified_training",
    "verify_provenance",
]

PROVENANCE_FORMAT = "teeflow-provenance/2"
PROVENANCE_DOMAIN = b"teeflow-provenance-v2\0"
GENESIS_HASH = "0" * 64
KINDS = ("session-start", "round", "handover", "final")
#: Largest FedAvg weight recorded (= :data:`teeflow.fl.strategy.base.MAX_NUM_EXAMPLES`).
_MAX_WEIGHT = 2**53 - 1

#: ``certify(certificate, entry)``: raise :class:`~teeflow.errors.VerificationError` unless
#: ``certificate`` (embedded in ``entry``, a session-start or hand-over) is an attested
#: aggregator's for the entry's agreement and measurement.
CertificateCheck = Callable[[x509.Certificate, "ProvenanceEntry"], None]
MAX_ENTRIES = 100_000
MAX_LINE_BYTES = 1 << 20

Measurement = Annotated[
    str, BeforeValidator(lambda v: normalize_hex(v, length=None, max_length=64))
]
Signature = Annotated[str, Field(pattern=r"^[0-9a-f]{128}$")]


#: Entry fields left out of the hashed body (and the saved line) when unset.
#: members left out of the entry (and its hash) when unset, so earlier logs keep verifying
_OPTIONAL = ("training", "detection", "privacy", "trust", "agreement_in_force")


class ProvenanceError(VerificationError):
    """The provenance log does not verify; ``seq`` is the first bad entry (None: whole log)."""

    code = "fl-provenance"

    def __init__(self, seq: int | None, reason: str) -> None:
        super().__init__(
            ("provenance log" if seq is None else f"provenance entry {seq}") + f": {reason}"
        )
        self.seq = seq
        self.reason = reason


class ClientRecord(BaseModel):
    """An attested participant: party name (from its certificate) and workload measurement."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    party: Name
    measurement: Measurement


class DropRecord(BaseModel):
    """A participant dropped from a round: party and reason (≤ 300 characters)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    party: Name
    reason: Annotated[str, Field(max_length=300)]


Age = Annotated[float, Field(ge=0.0, le=1e9, allow_inf_nan=False)]


class RoundTrustRecord(BaseModel):
    """Live trust of one round (issue 11): the agreement in force (version and digest, which
    may differ from the session-start agreement after an update), the attestation age in
    seconds of every participant at round start and of the aggregator, and every drop."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agreement_version: int = Field(ge=1, le=2**31 - 1)
    agreement_digest: Hex32
    attestation_age: dict[Name, Age] = Field(default_factory=dict, max_length=100_000)
    aggregator_attestation_age: Age = 0.0
    dropped: tuple[DropRecord, ...] = Field(default=(), max_length=100_000)


class ProvenanceEntry(BaseModel):
    """One signed entry (fields as in the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int = Field(ge=1, le=2**53 - 1)
    kind: Literal["session-start", "round", "handover", "final"]
    session: Annotated[str, Field(min_length=1, max_length=128)]
    agreement_digest: Hex32
    aggregator_measurement: Measurement
    aggregator_certificate: Annotated[str, Field(max_length=16384)] | None = None
    package_digest: Hex32
    round: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None
    clients: tuple[ClientRecord, ...] = Field(default=(), max_length=100_000)
    update_digests: dict[Name, Hex32] = Field(default_factory=dict, max_length=100_000)
    weights: dict[Name, Annotated[int, Field(ge=0, le=_MAX_WEIGHT)]] = Field(
        default_factory=dict, max_length=100_000
    )
    clipped: tuple[Name, ...] = Field(default=(), max_length=100_000)
    handover_from: Hex32 | None = None
    agreement_in_force: Hex32 | None = None
    aggregate_digest: Hex32
    metrics: dict[Annotated[str, Field(min_length=1, max_length=64)], float] = Field(
        default_factory=dict, max_length=64
    )
    training: TrainingTerms | None = None
    detection: DetectionRecord | None = None
    privacy: PrivacyRecord | None = None
    trust: RoundTrustRecord | None = None
    prev_hash: Hex32
    hash: Hex32
    signature: Signature

    def body(self) -> dict[str, Any]:
        """The hashed JSON value (every field but ``hash``/``signature``, plus ``format``)."""
        value = self.model_dump(mode="json", exclude={"hash", "signature"})
        for optional in _OPTIONAL:
            if value.get(optional) is None:
                value.pop(optional, None)
        value["format"] = PROVENANCE_FORMAT
        return value


def entry_json(entry: ProvenanceEntry) -> dict[str, Any]:
    """The entry as saved (JSON value): every field, the optional ones only when set."""
    value = entry.model_dump(mode="json")
    for optional in _OPTIONAL:
        if value.get(optional) is None:
            value.pop(optional, None)
    return value


def entry_hash(entry: ProvenanceEntry) -> str:
    """Lower-case hex SHA-256 of the canonical JSON of :meth:`ProvenanceEntry.body`.

    Raises:
        ParseError: a metric is not I-JSON representable.
    """
    return hashlib.sha256(canonical_json(entry.body())).hexdigest()


def _hex32(value: bytes | str, what: str) -> str:
    try:
        if isinstance(value, bytes | bytearray):
            if len(value) != 32:
                raise ValueError("expected 32 bytes")
            return bytes(value).hex()
        return normalize_hex(value, length=32)
    except ValueError as exc:
        raise FLError(f"{what}: {exc}") from None


def _shape_problem(entry: ProvenanceEntry) -> str | None:
    """Per-kind field rules (None when the entry is well-formed)."""
    carries_cert = entry.kind in ("session-start", "handover")
    if carries_cert and entry.aggregator_certificate is None:
        return f"{entry.kind} needs the aggregator certificate"
    if not carries_cert and entry.aggregator_certificate is not None:
        return "only session-start and handover carry a certificate"
    if (entry.kind == "handover") != (entry.handover_from is not None):
        return "handover_from belongs to (and only to) a handover"
    if entry.kind != "handover" and entry.agreement_in_force is not None:
        return "agreement_in_force belongs to a handover"
    if entry.kind != "round" and (
        entry.clients or entry.update_digests or entry.weights or entry.clipped or entry.trust
    ):
        return f"{entry.kind} carries no clients, updates or weights"
    if entry.training is not None and entry.kind != "session-start":
        return "only session-start carries the training terms"
    if entry.kind != "round" and (entry.detection is not None or entry.privacy is not None):
        return f"{entry.kind} carries no detection or privacy record"
    if entry.kind == "session-start" and entry.round is not None:
        return "session-start carries no round"
    if entry.kind != "session-start" and entry.round is None:
        return f"{entry.kind} needs a round"
    if entry.kind == "round":
        parties = [c.party for c in entry.clients]
        if not parties or len(set(parties)) != len(parties):
            return "round needs distinct participating clients"
        if not entry.update_digests or not set(entry.update_digests) <= set(parties):
            return "update digests must come from participating clients"
        if not set(entry.weights) <= set(entry.update_digests):
            return "weights must be of aggregated updates"
        if len(set(entry.clipped)) != len(entry.clipped) or not set(entry.clipped) <= set(
            entry.weights
        ):
            return "clipped parties must be distinct and have a recorded weight"
        if entry.detection is not None and (
            not set(entry.detection.parties) <= set(parties)
            or set(entry.detection.excluded) & set(entry.weights)
        ):
            return "detection must name participants, and excluded updates carry no weight"
        if entry.trust is not None and not set(entry.trust.attestation_age) >= set(parties):
            return "trust must record the attestation age of every participant"
    if any(not math.isfinite(v) for v in entry.metrics.values()):
        return "metrics must be finite"
    return None


def _public_key_of(cert_pem: str) -> tuple[x509.Certificate, ec.EllipticCurvePublicKey]:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
        key = cert.public_key()
    except (ValueError, UnicodeEncodeError):
        raise ParseError("aggregator certificate is not a PEM X.509 certificate") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ParseError("aggregator certificate key is not ECDSA P-256")
    return cert, key


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def embedded_certificate(entries: Sequence[ProvenanceEntry]) -> x509.Certificate:
    """The aggregator certificate of the log's session-start entry (for chain checks).

    Raises:
        ProvenanceError: empty log, first entry not session-start, or unparsable certificate.
    """
    if not entries or entries[0].kind != "session-start" or not entries[0].aggregator_certificate:
        raise ProvenanceError(1 if entries else None, "no session-start certificate")
    try:
        return _public_key_of(entries[0].aggregator_certificate)[0]
    except ParseError as exc:
        raise ProvenanceError(entries[0].seq, str(exc)) from None


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """Lower-case hex SHA-256 of the certificate's DER (a hand-over's ``handover_from``)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _segment_certificate(
    entry: ProvenanceEntry,
) -> tuple[x509.Certificate, ec.EllipticCurvePublicKey]:
    try:
        return _public_key_of(entry.aggregator_certificate or "")
    except ParseError as exc:
        raise ProvenanceError(entry.seq, str(exc)) from None


def verify_provenance(
    entries: Sequence[ProvenanceEntry],
    key: ec.EllipticCurvePublicKey | x509.Certificate,
    *,
    expected_final_digest: bytes | str | None = None,
    certify: CertificateCheck | None = None,
) -> tuple[x509.Certificate, ...]:
    """Verify a whole provenance log (module docstring).

    Args:
        entries: the log, oldest first.
        key: the session-start aggregator's public key, or its certificate (then the
            session-start entry must embed exactly this certificate); with a bare key, the
            embedded certificate's key must equal it.
        expected_final_digest: digest of the model shipped with the log (32 bytes or hex);
            when given, the log must end with a ``final`` entry carrying it.
        certify: the check of every hand-over certificate (:data:`CertificateCheck`); a
            log with a hand-over does not verify without it. The session-start certificate
            is pinned by ``key`` and is the caller's to check.

    Returns:
        The certificate of each segment, session-start's first.

    Raises:
        ProvenanceError: the first entry that breaks a rule: sequence, kind order (one
            session-start first, rounds 1, 2, ... consecutive, hand-overs only after a
            round and naming it, at most one final, last), per-kind fields, changed
            session/agreement/package, a measurement changed outside a hand-over, a
            hand-over that does not name the certificate it replaces or whose certificate
            ``certify`` refuses, ``prev_hash``, hash, signature (by the segment's key),
            certificate/key mismatch, final digest different from the last round's
            aggregate or from ``expected_final_digest``.
    """
    if not entries:
        raise ProvenanceError(None, "empty log")
    first = entries[0]
    cert = embedded_certificate(entries)
    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    if isinstance(key, x509.Certificate):
        if key.public_bytes(serialization.Encoding.DER) != cert.public_bytes(
            serialization.Encoding.DER
        ):
            raise ProvenanceError(first.seq, "embedded certificate is not the given one")
    elif _spki(key) != _spki(pub):
        raise ProvenanceError(first.seq, "embedded certificate key is not the given key")
    certificates = [cert]
    measurement = first.aggregator_measurement
    prev = GENESIS_HASH
    last_round = 0
    last_aggregate = first.aggregate_digest
    for i, e in enumerate(entries):
        seq = i + 1
        if e.seq != seq:
            raise ProvenanceError(seq, f"sequence number {e.seq}, expected {seq}")
        if (e.kind == "session-start") != (i == 0):
            raise ProvenanceError(seq, "session-start must be exactly the first entry")
        if i and entries[i - 1].kind == "final":
            raise ProvenanceError(seq, "entry after the final entry")
        problem = _shape_problem(e)
        if problem:
            raise ProvenanceError(seq, problem)
        for name in ("session", "agreement_digest", "package_digest"):
            if getattr(e, name) != getattr(first, name):
                raise ProvenanceError(seq, f"{name} changed within the session")
        if e.kind == "handover":
            if e.round != last_round or last_round < 1:
                raise ProvenanceError(
                    seq, f"hand-over names round {e.round}, the last round was {last_round}"
                )
            if e.aggregate_digest != last_aggregate:
                raise ProvenanceError(seq, "hand-over digest is not the last round's aggregate")
            if e.handover_from != certificate_fingerprint(cert):
                raise ProvenanceError(seq, "hand-over does not name the certificate it replaces")
            new_cert, new_pub = _segment_certificate(e)
            if _spki(new_pub) == _spki(pub):
                raise ProvenanceError(seq, "hand-over to the same key")
            if certify is None:
                raise ProvenanceError(seq, "hand-over certificate not checked (no CA check given)")
            try:
                certify(new_cert, e)
            except VerificationError as exc:
                raise ProvenanceError(seq, f"hand-over certificate: {exc}") from None
            cert, pub, measurement = new_cert, new_pub, e.aggregator_measurement
            certificates.append(cert)
        elif e.aggregator_measurement != measurement:
            raise ProvenanceError(seq, "aggregator_measurement changed without a hand-over")
        if e.kind == "round":
            if e.round != last_round + 1:
                raise ProvenanceError(seq, f"round {e.round} after round {last_round}")
            last_round = e.round
        if e.kind == "final":
            if e.round != last_round:
                raise ProvenanceError(seq, f"final names round {e.round}, last was {last_round}")
            if e.aggregate_digest != last_aggregate:
                raise ProvenanceError(seq, "final digest differs from the last aggregate")
        last_aggregate = e.aggregate_digest
        if e.prev_hash != prev:
            raise ProvenanceError(seq, "prev_hash does not match the previous entry")
        try:
            digest = entry_hash(e)
        except ParseError as exc:
            raise ProvenanceError(seq, str(exc)) from None
        if digest != e.hash:
            raise ProvenanceError(seq, "hash does not match the entry's content")
        try:
            verify_p256_sha256(
                pub,
                bytes.fromhex(e.signature),
                PROVENANCE_DOMAIN + bytes.fromhex(e.hash),
                "signature",
            )
        except VerificationError:
            raise ProvenanceError(seq, "signature is invalid") from None
        prev = e.hash
    if expected_final_digest is not None:
        want = _hex32(expected_final_digest, "expected final digest")
        last = entries[-1]
        if last.kind != "final":
            raise ProvenanceError(last.seq, "log does not end with a final entry (truncated?)")
        if last.aggregate_digest != want:
            raise ProvenanceError(last.seq, "final digest is not the model's digest")
    return tuple(certificates)


def save_provenance(entries: Sequence[ProvenanceEntry], path: str | os.PathLike[str]) -> None:
    """Write ``entries`` as JSON lines (one compact JSON object per line), atomically.

    Raises:
        FLError: the file cannot be written.
    """
    target = Path(path)
    text = "".join(json.dumps(entry_json(e), separators=(",", ":")) + "\n" for e in entries)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent or Path(), prefix=f".{target.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except OSError as exc:
        raise FLError(f"cannot write {target}: {exc.strerror or exc}") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ParseError(f"duplicate key {key[:64]!r}")
        out[key] = value
    return out


def load_provenance(path: str | os.PathLike[str]) -> list[ProvenanceEntry]:
    """Read a JSON-lines log (structure only: call :func:`verify_provenance` next).

    Raises:
        ParseError: unreadable file, more than 100,000 entries, a line over 1 MiB, invalid
            UTF-8/JSON, duplicate keys, or an entry that does not fit
            :class:`ProvenanceEntry` (message gives the line number).
    """
    entries: list[ProvenanceEntry] = []
    try:
        with Path(path).open("rb") as fh:
            for number, line in enumerate(iter(lambda: fh.readline(MAX_LINE_BYTES + 1), b""), 1):
                if len(line) > MAX_LINE_BYTES:
                    raise ParseError(f"provenance line {number} longer than {MAX_LINE_BYTES}")
                if not line.strip():
                    continue
                if len(entries) >= MAX_ENTRIES:
                    raise ParseError(f"provenance log longer than {MAX_ENTRIES} entries")
                try:
                    value = json.loads(line.decode("utf-8"), object_pairs_hook=_no_duplicates)
                    entries.append(ProvenanceEntry.model_validate(value))
                except ParseError as exc:
                    raise ParseError(f"provenance line {number}: {exc}") from None
                except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                    detail = (
                        format_validation_error(exc)
                        if isinstance(exc, ValidationError)
                        else "not valid JSON"
                    )
                    raise ParseError(f"provenance line {number}: {detail}") from None
    except OSError as exc:
        raise ParseError(f"cannot read {path}: {exc.strerror or exc}") from None
    return entries


def verified_training(entries: Sequence[ProvenanceEntry]) -> dict[str, Any]:
    """What a *verified* log says about training (``teeflow model verify --json``).

    Returns:
        ``{"training": the session-start's training terms (JSON) or None, "privacy":
        {"epsilon_total", "delta", "budget_epsilon", "per_round": [{round, epsilon_round,
        epsilon_total, clip_norm, noise_multiplier, sampling_rate}]} (empty without DP),
        "outliers": [{round, flagged, excluded, removed, scores}] }``.
    """
    start = entries[0] if entries else None
    terms = start.training.model_dump(mode="json") if start and start.training else None
    per_round = [
        {"round": e.round, **e.privacy.model_dump(mode="json")}
        for e in entries
        if e.kind == "round" and e.privacy is not None
    ]
    privacy: dict[str, Any] = {}
    if per_round:
        last = per_round[-1]
        privacy = {
            "epsilon_total": last["epsilon_total"],
            "delta": last["delta"],
            "budget_epsilon": last["budget_epsilon"],
            "per_round": per_round,
        }
    outliers = [
        {
            "round": e.round,
            "flagged": list(e.detection.flagged),
            "excluded": list(e.detection.excluded),
            "removed": list(e.detection.removed),
            "scores": dict(e.detection.scores),
        }
        for e in entries
        if e.kind == "round" and e.detection is not None
    ]
    return {"training": terms, "privacy": privacy, "outliers": outliers}
