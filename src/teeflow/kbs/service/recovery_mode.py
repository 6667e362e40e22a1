"""Loading the KBS key set on start, recovery mode, and keeping the share set current.

**Start** (:func:`load_kbs_state`): with a platform sealing key, ``kbs-keys.sealed`` is
unsealed as before (:func:`teeflow.kbs.service.identity.load_or_create_kbs_keys`). When it
does not unseal (new host, upgraded measurement) or cannot exist (TDX: no sealing key) and a
recovery record exists (:mod:`teeflow.kbs.service.recovery`), the KBS starts in **recovery
mode** (:class:`NeedsRecovery`). Without a record, a state that does not unseal is an
error as before (:class:`~teeflow.errors.SealingError`), and a first start creates the keys
(on TDX they stay in memory until the first share set exists: a TDX KBS restarted before an
agreement is in force starts over with new keys).

**Recovery mode** (:class:`RecoveryCoordinator`): the KBS makes an ephemeral X25519 key and
an ephemeral TLS key, and serves only its evidence and ``/v1/recovery``. Evidence::

    {"format": "teeflow-kbs-recovery-evidence/1", "tee": TEE,
     "primary_evidence": <Trustee primary evidence of TEE, as in RCAR
                          (teeflow.kbs.service.evidence): {"quote": ...} for SGX/TDX,
                          {"attestation_report": ..., "cert_chain": ...} for SNP>,
     "recovery": {"format": "teeflow-kbs-recovery-public/1", "federation": NAME,
                  "recovery_id": <hex>, "hpke_public_key": <b64url X25519>,
                  "tls_certificate": <PEM>, "tls_spki_sha256": <hex>}}
    REPORT_DATA = SHA-256(RFC 8785 {"format": "teeflow-kbs-recovery-binding/1",
                                    "recovery": <bundle>}) || SHA-256(nonce)

Each party verifies that evidence against the KBS reference values of the agreement *it*
holds in force, then submits its share HPKE-sealed to ``hpke_public_key`` and signed
(:class:`~teeflow.kbs.service.recovery.RecoverySubmission`). With ``k`` valid shares the
secret is recombined, the recovery copy opened, and :func:`finish_recovery` reseals the key
set to the (new) platform identity. The caller then checks the agreement in force names the
running KBS and audits the recovery (:func:`audit_recovery`).

**Normal mode** (:class:`RecoveryManager`): whenever an agreement is in force whose parties,
keys or recovery ``k`` differ from the current record, a new share set is made and the
recovery copy rewritten; the record is served at ``GET /v1/recovery/record``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding
from pydantic import ValidationError

from teeflow._fs import ensure_private_dir
from teeflow.errors import KbsError, ParseError, SealingError, VerificationError
from teeflow.kbs.api.problems import Conflict, InvalidRequest, PolicyDeny, ServiceUnavailable
from teeflow.kbs.policy.agreement import FederationAgreement, WorkloadRole
from teeflow.kbs.policy.canonical import b64url_decode, b64url_encode, canonical_json
from teeflow.kbs.service.identity import (
    KEYS_FILE,
    KbsKeys,
    generate_kbs_keys,
    load_or_create_kbs_keys,
    parse_key_state,
    renew_kbs_keys,
    serialise_key_state,
    store_kbs_keys,
)
from teeflow.kbs.service.recovery import (
    SUBMIT_INFO,
    RecoveryRecord,
    RecoverySubmission,
    combine_shares,
    create_share_set,
    load_recovery_file,
    open_recovery_state,
    record_matches,
    seal_recovery_state,
    share_digest,
    submission_aad,
    verify_submission_signature,
    write_recovery_file,
)
from teeflow.kbs.service.self_attestation import spki_sha256
from teeflow.kbs.service.tls_certificate import make_tls_certificate
from teeflow.platform.sealing import PlatformSealer
from teeflow.sealing.hpke import unwrap_key

__all__ = [
    "RECOVERY_BINDING_FORMAT",
    "RECOVERY_EVIDENCE_FORMAT",
    "RECOVERY_PUBLIC_FORMAT",
    "Loaded",
    "NeedsRecovery",
    "RecoveryCoordinator",
    "RecoveryManager",
    "audit_recovery_data",
    "finish_recovery",
    "kbs_named_by",
    "load_kbs_state",
    "recovery_report_data",
]

RECOVERY_EVIDENCE_FORMAT = "teeflow-kbs-recovery-evidence/1"
RECOVERY_PUBLIC_FORMAT = "teeflow-kbs-recovery-public/1"
RECOVERY_BINDING_FORMAT = "teeflow-kbs-recovery-binding/1"
_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    """The key set is available (unsealed, created, or generated in memory on TDX)."""

    keys: KbsKeys


@dataclass(frozen=True)
class NeedsRecovery:
    """The key set must be recovered from the parties' shares (module docstring)."""

    record: RecoveryRecord
    blob: bytes
    reason: str


def load_kbs_state(
    state_dir: Path,
    *,
    sealer: PlatformSealer | None,
    measurement: bytes,
    federation: str,
    now: datetime,
    rng: Callable[[int], bytes] = os.urandom,
    tls_hosts: Sequence[str] = ("localhost", "127.0.0.1"),
) -> Loaded | NeedsRecovery:
    """Decide how the KBS starts (module docstring).

    Raises:
        SealingError: the sealed state does not unseal and there is no recovery record.
        ParseError: a malformed state or recovery file.
        KbsError, PlatformError: as :func:`load_or_create_kbs_keys`.
    """
    state_dir = Path(state_dir)
    try:
        ensure_private_dir(state_dir)
    except OSError as exc:
        raise KbsError(f"cannot prepare KBS state directory {state_dir}: {exc.strerror}") from None
    found = load_recovery_file(state_dir)
    sealed = state_dir / KEYS_FILE
    args: dict[str, Any] = {
        "measurement": measurement,
        "federation": federation,
        "now": now,
        "rng": rng,
        "tls_hosts": tls_hosts,
    }
    if sealer is not None and (sealed.exists() or found is None):
        try:
            return Loaded(load_or_create_kbs_keys(state_dir, sealer=sealer, **args))
        except SealingError:
            if found is None:
                raise
            return NeedsRecovery(found[0], found[1], "the sealed state does not unseal here")
    if found is not None:
        why = "no platform sealing key" if sealer is None else "no sealed state on this host"
        return NeedsRecovery(found[0], found[1], why)
    return Loaded(generate_kbs_keys(federation, now=now, rng=rng, tls_hosts=tls_hosts))


def finish_recovery(
    state_dir: Path,
    *,
    needs: NeedsRecovery,
    secret: bytes,
    sealer: PlatformSealer | None,
    measurement: bytes,
    federation: str,
    now: datetime,
    tls_hosts: Sequence[str],
    rng: Callable[[int], bytes] = os.urandom,
) -> tuple[KbsKeys, bytes]:
    """Open the recovery copy with the recombined ``secret``, reseal the key set to this
    platform and ``measurement``, rewrite the recovery copy (same record: the parties'
    shares stay valid). Returns ``(keys, measurement recorded before)``.

    Raises:
        SealingError: the secret does not open the copy.
        ParseError: malformed state.
        KbsError: another federation, I/O failure.
    """
    plain = open_recovery_state(needs.blob, secret, needs.record)
    keys, previous = parse_key_state(plain)
    if keys.federation != federation:
        raise KbsError(f"recovered state belongs to federation {keys.federation!r}")
    renewed = renew_kbs_keys(keys, now=now, tls_hosts=tls_hosts)
    keys = renewed if renewed is not None else keys
    if sealer is not None:
        store_kbs_keys(state_dir, keys, sealer=sealer, measurement=measurement, rng=rng)
    blob = seal_recovery_state(serialise_key_state(keys, measurement), secret, needs.record)
    write_recovery_file(state_dir, needs.record, blob)
    return keys, previous


def kbs_named_by(agreement: FederationAgreement, tee: str, measurement: str) -> bool | None:
    """Whether ``agreement.workloads.kbs`` names ``measurement`` (lower-case hex) for ``tee``:
    SGX MRENCLAVE, TDX MRTD, SNP MEASUREMENT. None when the agreement has no KBS values for
    that platform."""
    spec = agreement.workloads.get(WorkloadRole.KBS)
    if spec is None:
        return None
    family = tee.removeprefix("emulated-")
    if family == "sgx" and spec.sgx is not None:
        return measurement in spec.sgx.mrenclave
    if family == "tdx" and spec.tdx is not None:
        return measurement in spec.tdx.mrtd
    if family == "snp" and spec.snp is not None:
        return measurement in spec.snp.measurement
    return None


def recovery_report_data(bundle: dict[str, Any], nonce: bytes) -> bytes:
    """``SHA-256(binding JSON) || SHA-256(nonce)`` (64 bytes, module docstring).

    Raises:
        KbsError: ``nonce`` not 1..1024 bytes; ParseError: bundle not canonical JSON.
    """
    if not isinstance(nonce, bytes) or not 1 <= len(nonce) <= 1024:
        raise KbsError("nonce must be 1..1024 bytes")
    doc = {"format": RECOVERY_BINDING_FORMAT, "recovery": bundle}
    return hashlib.sha256(canonical_json(doc)).digest() + hashlib.sha256(nonce).digest()


class RecoveryCoordinator:
    """Recovery mode (module docstring): collects shares until ``k`` recombine the secret.

    Args:
        needs: the record and sealed copy (:func:`load_kbs_state`).
        federation: the federation name.
        primary_evidence: ``primary_evidence(report_data: 64 bytes) -> mapping``: this KBS's
            platform evidence in Trustee's ``primary_evidence`` shape for ``tee``.
        tee: the RCAR evidence type (``sgx``, ``tdx``, ``snp``, ``emulated-sgx``, ...).
        now: creation time of the ephemeral TLS certificate.
        tls_hosts: names/IPs of that certificate.
        on_recovered: called once (with no arguments) when the secret is recombined.
    """

    def __init__(
        self,
        needs: NeedsRecovery,
        *,
        federation: str,
        primary_evidence: Callable[[bytes], dict[str, Any]],
        tee: str,
        now: datetime,
        tls_hosts: Sequence[str] = ("localhost", "127.0.0.1"),
        on_recovered: Callable[[], None] | None = None,
    ) -> None:
        self.needs = needs
        self._record = needs.record
        self._recovery_id = needs.record.recovery_id().hex()
        self._primary = primary_evidence
        self._tee = tee
        self._hpke = X25519PrivateKey.generate()
        self.tls_key = ec.generate_private_key(ec.SECP256R1())
        self.tls_certificate = make_tls_certificate(self.tls_key, federation, tls_hosts, now)
        self._bundle = {
            "format": RECOVERY_PUBLIC_FORMAT,
            "federation": federation,
            "recovery_id": self._recovery_id,
            "hpke_public_key": b64url_encode(self._hpke.public_key().public_bytes_raw()),
            "tls_certificate": self.tls_certificate.public_bytes(Encoding.PEM).decode("ascii"),
            "tls_spki_sha256": spki_sha256(self.tls_certificate),
        }
        self._shares: dict[str, bytes] = {}
        self.used: list[str] = []
        self._secret: bytes | None = None
        self._lock = threading.Lock()
        self._on_recovered = on_recovered
        self.done = threading.Event()

    @property
    def secret(self) -> bytes:
        """The recombined secret.

        Raises:
            KbsError: not recovered yet.
        """
        if self._secret is None:
            raise KbsError("the KBS is not recovered yet")
        return self._secret

    def recovery_public_key(self) -> X25519PublicKey:
        """The ephemeral X25519 key parties seal their shares to (bound in the evidence)."""
        return self._hpke.public_key()

    def public_bundle(self) -> dict[str, Any]:
        """The recovery bundle bound into the evidence (a fresh dict)."""
        return dict(self._bundle)

    def evidence(self, nonce: bytes) -> dict[str, Any]:
        """The recovery evidence document for ``nonce`` (module docstring).

        Raises:
            KbsError: bad nonce; PlatformError: the attester failed.
        """
        primary = self._primary(recovery_report_data(self._bundle, nonce))
        return {
            "format": RECOVERY_EVIDENCE_FORMAT,
            "tee": self._tee,
            "primary_evidence": primary,
            "recovery": self.public_bundle(),
        }

    def status(self) -> dict[str, Any]:
        """``{"mode": "recovery"|"recovered", "recovery_id", "federation",
        "agreement_version", "agreement_digest", "k", "n", "parties", "submitted"}``."""
        with self._lock:
            submitted = sorted(self._shares) if not self.done.is_set() else list(self.used)
        return {
            "mode": "recovered" if self.done.is_set() else "recovery",
            "recovery_id": self._recovery_id,
            "federation": self._record.federation,
            "agreement_version": self._record.agreement_version,
            "agreement_digest": self._record.agreement_digest,
            "k": self._record.k,
            "n": len(self._record.parties),
            "parties": sorted(self._record.parties),
            "submitted": submitted,
            "reason": self.needs.reason,
        }

    def submit(self, body: bytes) -> dict[str, Any]:
        """Accept one party's share (module docstring); returns :meth:`status`.

        Raises:
            InvalidRequest: malformed submission.
            PolicyDeny: unknown party, bad signature, sealed to another key, or a share
                that does not match the record.
            Conflict: another share set (``recovery_id``), or already recovered.
            ServiceUnavailable: the shares recombine but do not open the state (a modified
                recovery file); the collected shares are dropped.
        """
        try:
            sub = RecoverySubmission.model_validate_json(body)
        except ValidationError:
            raise InvalidRequest("malformed recovery submission") from None
        entry = self._record.parties.get(sub.party)
        if entry is None:
            raise PolicyDeny(f"{sub.party} holds no share in this recovery set")
        if sub.recovery_id != self._recovery_id:
            raise Conflict("the share belongs to another recovery set: fetch the current record")
        try:
            verify_submission_signature(sub, entry.sign_key)
        except VerificationError:
            raise PolicyDeny("the submission signature does not verify") from None
        mine = self._bundle["hpke_public_key"]
        if not hmac.compare_digest(sub.recipient, mine):
            raise PolicyDeny("the share is sealed to another key than this KBS's recovery key")
        try:
            share = unwrap_key(
                b64url_decode(sub.sealed_share),
                self._hpke,
                info=SUBMIT_INFO,
                aad=submission_aad(sub.recovery_id, sub.party, sub.recipient),
            )
        except (SealingError, ParseError):
            raise PolicyDeny("the share does not open with this KBS's recovery key") from None
        expected = entry.share_digest
        if share_digest(bytes.fromhex(self._record.set_id), entry.index, share) != expected:
            raise PolicyDeny("the share does not match the recovery record")
        with self._lock:
            if self.done.is_set():
                raise Conflict("the KBS is already recovered")
            self._shares[sub.party] = share
            if len(self._shares) >= self._record.k:
                self._recombine()
        return self.status()

    def _recombine(self) -> None:
        try:
            secret = combine_shares(self._record, self._shares)
            open_recovery_state(self.needs.blob, secret, self._record)
        except (KbsError, SealingError):
            self._shares.clear()
            _LOG.error("recovery shares recombined but the recovery copy does not open")
            raise ServiceUnavailable("the recovery copy does not open (modified file?)") from None
        self._secret = secret
        self.used = sorted(self._shares)[: self._record.k]
        self._shares.clear()
        self.done.set()
        _LOG.info("recovery secret recombined from %d shares", self._record.k)
        if self._on_recovered is not None:
            self._on_recovered()


class RecoveryManager:
    """Normal mode (module docstring): keeps the share set matching the agreement in force.

    Args:
        state_dir: the KBS state directory.
        keys: the running key set.
        measurement: the running KBS measurement (recorded in the recovery copy).
        rng: randomness for the secret, set id and sealing.
        on_created: called with each new record after it is written (the KBS appends a
            ``recovery-shares`` audit entry naming the recovery id, so parties can check
            the share set they saved is the current one).
    """

    def __init__(
        self,
        state_dir: Path,
        keys: KbsKeys,
        measurement: bytes,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        on_created: Callable[[RecoveryRecord], None] | None = None,
    ) -> None:
        self._dir = Path(state_dir)
        self._on_created = on_created
        self._keys = keys
        self._measurement = measurement
        self._rng = rng
        self._lock = threading.Lock()
        found = load_recovery_file(self._dir)
        self._record: RecoveryRecord | None = None if found is None else found[0]

    def record(self) -> RecoveryRecord | None:
        """The current record (None before the first agreement)."""
        return self._record

    def ensure(self, agreement: FederationAgreement, agreement_digest: bytes) -> RecoveryRecord:
        """Make a new share set unless the current one fits ``agreement``; returns it.

        Raises:
            KbsError: I/O failure or too many parties; SealingError: a bad recipient key.
        """
        with self._lock:
            if self._record is not None and record_matches(self._record, agreement):
                return self._record
            made = create_share_set(agreement, agreement_digest, rng=self._rng)
            state = serialise_key_state(self._keys, self._measurement)
            blob = seal_recovery_state(state, made.secret, made.record, rng=self._rng)
            write_recovery_file(self._dir, made.record, blob)
            self._record = made.record
            _LOG.info(
                "recovery share set %s: %d of %d parties (agreement v%d)",
                made.record.recovery_id().hex()[:16],
                made.record.k,
                len(made.record.parties),
                agreement.version,
            )
            if self._on_created is not None:
                self._on_created(made.record)
            return made.record

    def status(self) -> dict[str, Any]:
        """``{"mode": "normal", "recovery_id", "k", "n", "parties", ...}`` (None values
        before the first share set)."""
        rec = self._record
        return {
            "mode": "normal",
            "recovery_id": None if rec is None else rec.recovery_id().hex(),
            "federation": self._keys.federation,
            "agreement_version": None if rec is None else rec.agreement_version,
            "agreement_digest": None if rec is None else rec.agreement_digest,
            "k": None if rec is None else rec.k,
            "n": None if rec is None else len(rec.parties),
            "parties": [] if rec is None else sorted(rec.parties),
            "submitted": [],
            "reason": None,
        }


def audit_recovery_data(
    record: RecoveryRecord, previous: bytes, current: bytes, parties: Sequence[str]
) -> dict[str, Any]:
    """The public facts of a recovery for the audit log (``kbs-recovery`` entry)::

        {"recovery_id", "from_measurement", "to_measurement", "upgrade": bool, "k",
         "parties": [names whose shares were used]}
    """
    return {
        "recovery_id": record.recovery_id().hex(),
        "from_measurement": previous.hex(),
        "to_measurement": current.hex(),
        "upgrade": previous != current,
        "k": record.k,
        "parties": sorted(parties),
    }
