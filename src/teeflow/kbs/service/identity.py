"""The KBS's own key set, sealed to its platform identity (DESIGN trust flow step 1).

On first start the KBS generates (:func:`load_or_create_kbs_keys`):

* ``hpke`` — X25519 key; data owners wrap data keys to it (RFC 9180, :mod:`teeflow.sealing`);
* ``ca`` — the federation CA (P-256, :class:`teeflow.kbs.ca.authority.FederationCA`);
* ``ear`` — the EAR signing key (joserfc ``ECKey`` P-256, ES256);
* ``tls_key`` / ``tls_certificate`` — P-256 key and a self-signed server certificate
  (:mod:`teeflow.kbs.service.tls_certificate`)
  (SAN ``localhost`` and ``127.0.0.1`` by default, 30 days); the certificate (never the
  key) is regenerated when less than one day of validity is left or the host names change;
* ``audit`` — Ed25519 key signing the audit log (:mod:`teeflow.kbs.service.audit`);
* ``storage_key`` (also ``KbsKeys.storage``) — 32 random bytes for encrypting and
  authenticating stored rows.

State file ``<state_dir>/kbs-keys.sealed`` (directory 0700, file 0600, written atomically:
temporary file, fsync, ``link``/``replace``, directory fsync) is a teeflow sealed blob
(:func:`teeflow.sealing.seal`) with ``aad = b"teeflow-kbs-keys-v1"`` under
``sealer.sealing_key(measurement, purpose=b"kbs-state")`` of this UTF-8 JSON object::

    {"format": "teeflow-kbs-keys/1", "federation": <name>, "measurement": <hex>,
     "hpke_private_key": <b64url raw 32>, "ca_private_key": <PKCS#8 PEM>,
     "ca_certificate": <PEM>, "ear_private_jwk": <JWK object>, "tls_private_key": <PKCS#8 PEM>,
     "tls_certificate": <PEM>, "audit_private_key": <b64url raw 32>,
     "storage_key": <b64url 32>}

Another measurement or another platform (emulation authority, CPU) derives another sealing
key, so it cannot open the file: :class:`SealingError`.

Binding into the KBS's evidence. :meth:`KbsKeys.public_bundle` is (all values strings)::

    {"format": "teeflow-kbs-public/1", "federation": <name>,
     "hpke_public_key": <b64url of the raw 32-byte X25519 key>,
     "ca_certificate": <PEM>, "ear_public_jwk": {"kty","crv","x","y","kid"},
     "tls_certificate": <PEM>, "tls_spki_sha256": <hex SHA-256 of the TLS key's SPKI DER>,
     "audit_public_key": <b64url of the raw 32-byte Ed25519 key>}

and::

    binding_digest = SHA-256( RFC 8785 canonical JSON of
        {"format": "teeflow-kbs-binding/1", "kbs": <public bundle>,
         "agreement_digest": <lower-case hex of the active agreement digest, or null>} )
    REPORT_DATA (64 bytes) = binding_digest || SHA-256(nonce)

where ``nonce`` is the raw nonce bytes the party chose. A party recomputes both halves with
:func:`kbs_report_data` from the bundle the KBS served, the agreement digest it expects and
its nonce, and compares them with the REPORT_DATA of the verified evidence.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from teeflow._fs import atomic_write, ensure_private_dir, fsync_dir
from teeflow.attestation.ear import generate_ear_signing_key
from teeflow.errors import KbsError, ParseError, SealingError
from teeflow.kbs.ca.authority import FederationCA
from teeflow.kbs.policy.canonical import b64url_decode, b64url_encode, canonical_json
from teeflow.kbs.policy.parties import NAME_PATTERN
from teeflow.kbs.service.tls_certificate import (
    normalise_hosts,
    san_hosts,
    tls_certificate,
)
from teeflow.platform.sealing import PlatformSealer
from teeflow.sealing import seal, unseal

__all__ = [
    "BINDING_FORMAT",
    "CA_RENEW_BEFORE",
    "KEYS_AAD",
    "KEYS_FILE",
    "PUBLIC_FORMAT",
    "SEALING_PURPOSE",
    "TLS_RENEW_BEFORE",
    "KbsKeys",
    "generate_kbs_keys",
    "kbs_binding_digest",
    "kbs_report_data",
    "load_or_create_kbs_keys",
    "parse_key_state",
    "renew_kbs_keys",
    "serialise_key_state",
    "store_kbs_keys",
]

KEYS_FILE = "kbs-keys.sealed"
KEYS_AAD = b"teeflow-kbs-keys-v1"
SEALING_PURPOSE = b"kbs-state"
STATE_FORMAT = "teeflow-kbs-keys/1"
PUBLIC_FORMAT = "teeflow-kbs-public/1"
BINDING_FORMAT = "teeflow-kbs-binding/1"
TLS_RENEW_BEFORE = timedelta(days=1)
CA_LIFETIME = timedelta(days=365)
#: The CA certificate (same key) is renewed when less than this is left.
CA_RENEW_BEFORE = timedelta(days=7)
#: Largest sealed state file read (bytes).
MAX_STATE_BYTES = 1 << 20
_UNSEAL_FAILED = (
    "cannot unseal KBS state: different platform identity or measurement "
    "(or the sealed file was modified)"
)
_STATE_KEYS = frozenset(
    {
        "format",
        "federation",
        "measurement",
        "hpke_private_key",
        "ca_private_key",
        "ca_certificate",
        "ear_private_jwk",
        "tls_private_key",
        "tls_certificate",
        "audit_private_key",
        "storage_key",
    }
)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


@dataclass(frozen=True)
class KbsKeys:
    """The KBS key set (module docstring). Private fields are hidden from ``repr``."""

    federation: str
    hpke: X25519PrivateKey = field(repr=False)
    ca: FederationCA = field(repr=False)
    ear: ECKey = field(repr=False)
    tls_key: ec.EllipticCurvePrivateKey = field(repr=False)
    tls_certificate: x509.Certificate = field(repr=False)
    audit: Ed25519PrivateKey = field(repr=False)
    storage_key: bytes = field(repr=False)

    @property
    def storage(self) -> bytes:
        """The 32-byte storage key (``storage_key``): authenticates store rows."""
        return self.storage_key

    def hpke_public_key(self) -> bytes:
        """Raw 32-byte X25519 public key (owners wrap data keys to it)."""
        return self.hpke.public_key().public_bytes_raw()

    def tls_spki_sha256(self) -> str:
        """Lower-case hex SHA-256 of the TLS key's SubjectPublicKeyInfo DER."""
        spki = self.tls_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(spki).hexdigest()

    def tls_certificate_pem(self) -> bytes:
        """The TLS server certificate as PEM."""
        return self.tls_certificate.public_bytes(serialization.Encoding.PEM)

    def tls_private_key_pem(self) -> bytes:
        """The TLS private key, unencrypted PKCS#8 PEM (secret: for the TLS server only)."""
        return _key_pem(self.tls_key).encode("ascii")

    def public_bundle(self) -> dict[str, Any]:
        """The public keys, as described in the module docstring (a fresh dict)."""
        return {
            "format": PUBLIC_FORMAT,
            "federation": self.federation,
            "hpke_public_key": b64url_encode(self.hpke_public_key()),
            "ca_certificate": _pem(self.ca.certificate),
            "ear_public_jwk": dict(self.ear.as_dict(private=False)),
            "tls_certificate": _pem(self.tls_certificate),
            "tls_spki_sha256": self.tls_spki_sha256(),
            "audit_public_key": b64url_encode(self.audit.public_key().public_bytes_raw()),
        }

    def binding_digest(self, agreement_digest: bytes | None) -> bytes:
        """:func:`kbs_binding_digest` of :meth:`public_bundle` (32 bytes).

        Raises:
            KbsError: ``agreement_digest`` is neither None nor 32 bytes.
        """
        return kbs_binding_digest(self.public_bundle(), agreement_digest)

    def report_data(self, nonce: bytes, agreement_digest: bytes | None) -> bytes:
        """The 64-byte REPORT_DATA of the KBS evidence: :func:`kbs_report_data`.

        Raises:
            KbsError: as :func:`kbs_report_data`.
        """
        return kbs_report_data(self.public_bundle(), agreement_digest, nonce)


def kbs_binding_digest(bundle: Mapping[str, Any], agreement_digest: bytes | None) -> bytes:
    """SHA-256 of RFC 8785 JSON ``{"format": "teeflow-kbs-binding/1", "kbs": bundle,
    "agreement_digest": hex or null}`` (32 bytes). Usable by parties on a received bundle.

    Raises:
        KbsError: ``agreement_digest`` is neither None nor 32 bytes, or ``bundle`` is not
            canonical-JSON serialisable.
    """
    if agreement_digest is not None and (
        not isinstance(agreement_digest, bytes) or len(agreement_digest) != 32
    ):
        raise KbsError("agreement digest must be 32 bytes or None")
    doc = {
        "format": BINDING_FORMAT,
        "kbs": dict(bundle),
        "agreement_digest": None if agreement_digest is None else agreement_digest.hex(),
    }
    try:
        return hashlib.sha256(canonical_json(doc)).digest()
    except ParseError as exc:
        raise KbsError(f"KBS public bundle: {exc}") from None


def kbs_report_data(
    bundle: Mapping[str, Any], agreement_digest: bytes | None, nonce: bytes
) -> bytes:
    """``kbs_binding_digest(bundle, agreement_digest) || SHA-256(nonce)`` (64 bytes).

    Raises:
        KbsError: ``nonce`` not 1..1024 bytes, or as :func:`kbs_binding_digest`.
    """
    if not isinstance(nonce, bytes) or not 1 <= len(nonce) <= 1024:
        raise KbsError("nonce must be 1..1024 bytes")
    return kbs_binding_digest(bundle, agreement_digest) + hashlib.sha256(nonce).digest()


# -- generation ---------------------------------------------------------------------------


def _generate(
    federation: str, hosts: Sequence[str], now: datetime, rng: Callable[[int], bytes]
) -> KbsKeys:
    tls_key = ec.generate_private_key(ec.SECP256R1())
    return KbsKeys(
        federation=federation,
        hpke=X25519PrivateKey.from_private_bytes(rng(32)),
        ca=FederationCA.generate(federation, now=now, lifetime=CA_LIFETIME),
        ear=generate_ear_signing_key(),
        tls_key=tls_key,
        tls_certificate=tls_certificate(tls_key, federation, hosts, now),
        audit=Ed25519PrivateKey.from_private_bytes(rng(32)),
        storage_key=rng(32),
    )


# -- (de)serialisation --------------------------------------------------------------------


def _serialise(keys: KbsKeys, measurement: bytes) -> bytes:
    doc = {
        "format": STATE_FORMAT,
        "federation": keys.federation,
        "measurement": measurement.hex(),
        "hpke_private_key": b64url_encode(keys.hpke.private_bytes_raw()),
        "ca_private_key": _key_pem(keys.ca.private_key),
        "ca_certificate": _pem(keys.ca.certificate),
        "ear_private_jwk": dict(keys.ear.as_dict(private=True)),
        "tls_private_key": _key_pem(keys.tls_key),
        "tls_certificate": _pem(keys.tls_certificate),
        "audit_private_key": b64url_encode(keys.audit.private_bytes_raw()),
        "storage_key": b64url_encode(keys.storage_key),
    }
    return json.dumps(doc, sort_keys=True).encode("utf-8")


def _str(doc: Mapping[str, Any], name: str) -> str:
    value = doc[name]
    if not isinstance(value, str):
        raise ParseError(f"KBS state: {name} must be a string")
    return value


def serialise_key_state(keys: KbsKeys, measurement: bytes) -> bytes:
    """The state document (module docstring) of ``keys`` recording ``measurement`` (32
    bytes): UTF-8 JSON holding every private key — seal it before it leaves memory."""
    return _serialise(keys, measurement)


def parse_key_state(data: bytes) -> tuple[KbsKeys, bytes]:
    """Parse a state document (:func:`serialise_key_state`) whatever measurement it records.

    Returns ``(keys, recorded measurement)``.

    Raises:
        ParseError: malformed document or key material.
    """
    try:
        recorded = bytes.fromhex(_str(json.loads(data.decode("utf-8")), "measurement"))
    except (UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError):
        raise ParseError("KBS state: not a JSON document with a measurement") from None
    if len(recorded) != 32:
        raise ParseError("KBS state: measurement must be 32 bytes")
    return _deserialise(data, recorded), recorded


def generate_kbs_keys(
    federation: str,
    *,
    now: datetime,
    rng: Callable[[int], bytes] = os.urandom,
    tls_hosts: Sequence[str] = ("localhost", "127.0.0.1"),
) -> KbsKeys:
    """A fresh key set (module docstring) for ``federation``.

    Raises:
        KbsError: bad federation name or TLS hosts.
    """
    if not isinstance(federation, str) or not NAME_PATTERN.fullmatch(federation):
        raise KbsError("federation must be a DNS-label name")
    return _generate(federation, normalise_hosts(tls_hosts), now.astimezone(UTC), rng)


def store_kbs_keys(
    state_dir: Path,
    keys: KbsKeys,
    *,
    sealer: PlatformSealer,
    measurement: bytes,
    rng: Callable[[int], bytes] = os.urandom,
) -> None:
    """Seal ``keys`` to (platform, ``measurement``) and replace ``<state_dir>/kbs-keys.sealed``
    (after a recovery or an upgrade).

    Raises:
        KbsError: I/O failure or bad measurement.
        PlatformError: from ``sealer``.
    """
    if not isinstance(measurement, bytes) or len(measurement) != 32:
        raise KbsError("measurement must be 32 bytes")
    state_dir = Path(state_dir)
    _prepare_dir(state_dir)
    key = sealer.sealing_key(measurement, purpose=SEALING_PURPOSE)
    blob = seal(_serialise(keys, measurement), key, aad=KEYS_AAD, rng=rng)
    _write_state(state_dir / KEYS_FILE, blob, replace=True)


def renew_kbs_keys(keys: KbsKeys, *, now: datetime, tls_hosts: Sequence[str]) -> KbsKeys | None:
    """A copy with renewed CA/TLS certificates (same keys) when needed, else None.

    Raises:
        KbsError: bad TLS hosts.
    """
    return _renew(keys, normalise_hosts(tls_hosts), now.astimezone(UTC))


def _deserialise(data: bytes, measurement: bytes) -> KbsKeys:
    """Parse the unsealed state document. Raises ``ParseError`` (malformed) or
    ``SealingError`` (recorded measurement differs)."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ParseError("KBS state: not a JSON document") from None
    if not isinstance(doc, dict) or set(doc) != _STATE_KEYS:
        raise ParseError("KBS state: unexpected members")
    if doc["format"] != STATE_FORMAT:
        raise ParseError("KBS state: unknown format")
    if _str(doc, "measurement") != measurement.hex():
        raise SealingError(_UNSEAL_FAILED)
    federation = _str(doc, "federation")
    try:
        tls_key = serialization.load_pem_private_key(
            _str(doc, "tls_private_key").encode(), password=None
        )
        tls_cert = x509.load_pem_x509_certificate(_str(doc, "tls_certificate").encode())
        jwk = doc["ear_private_jwk"]
        if not isinstance(jwk, dict):
            raise ParseError("KBS state: ear_private_jwk must be an object")
        ear = ECKey.import_key(jwk)
        ca = FederationCA.from_pem(_str(doc, "ca_certificate"), _str(doc, "ca_private_key"))
        keys = KbsKeys(
            federation=federation,
            hpke=X25519PrivateKey.from_private_bytes(
                b64url_decode(doc["hpke_private_key"], length=32)
            ),
            ca=ca,
            ear=ear,
            tls_key=tls_key,  # type: ignore[arg-type]  # checked below
            tls_certificate=tls_cert,
            audit=Ed25519PrivateKey.from_private_bytes(
                b64url_decode(doc["audit_private_key"], length=32)
            ),
            storage_key=b64url_decode(doc["storage_key"], length=32),
        )
    except (ValueError, TypeError, UnsupportedAlgorithm, JoseError, KbsError) as exc:
        raise ParseError(f"KBS state: invalid key material ({exc.__class__.__name__})") from None
    if not isinstance(tls_key, ec.EllipticCurvePrivateKey) or tls_key.curve.name != "secp256r1":
        raise ParseError("KBS state: TLS key must be P-256")
    if not ear.is_private or ear.curve_name != "P-256":
        raise ParseError("KBS state: EAR key must be a private P-256 key")
    if ca.federation != federation:
        raise ParseError("KBS state: CA federation differs from the recorded federation")
    return keys


# -- storage ------------------------------------------------------------------------------


def _write_state(path: Path, data: bytes, *, replace: bool) -> bool:
    """Write ``data`` to ``path`` (0600) atomically. With ``replace=False`` the file is only
    created: returns False (and writes nothing) if it already exists."""
    try:
        written = atomic_write(path, data, replace=replace)
    except OSError as exc:
        raise KbsError(f"cannot write {path}: {exc.strerror or exc}") from None
    if written:
        fsync_dir(path.parent)
    return written


def _prepare_dir(state_dir: Path) -> None:
    try:
        ensure_private_dir(state_dir)
    except OSError as exc:
        raise KbsError(f"cannot prepare KBS state directory {state_dir}: {exc.strerror}") from None


def _read_state(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_STATE_BYTES + 1)
    except OSError as exc:
        raise KbsError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_STATE_BYTES:
        raise SealingError(f"{path} is larger than {MAX_STATE_BYTES} bytes")
    return data


def _renew(keys: KbsKeys, hosts: list[str], now: datetime) -> KbsKeys | None:
    """A copy with renewed CA/TLS certificates (same keys) when needed, else None."""
    ca = keys.ca
    tls = keys.tls_certificate
    changed = False
    if now + CA_RENEW_BEFORE >= ca.certificate.not_valid_after_utc:
        ca = ca.renewed(now=now, lifetime=CA_LIFETIME)
        changed = True
    if (
        now + TLS_RENEW_BEFORE >= tls.not_valid_after_utc
        or now < tls.not_valid_before_utc
        or san_hosts(tls) != hosts
    ):
        tls = tls_certificate(keys.tls_key, keys.federation, hosts, now)
        changed = True
    if not changed:
        return None
    return KbsKeys(
        federation=keys.federation,
        hpke=keys.hpke,
        ca=ca,
        ear=keys.ear,
        tls_key=keys.tls_key,
        tls_certificate=tls,
        audit=keys.audit,
        storage_key=keys.storage_key,
    )


def load_or_create_kbs_keys(
    state_dir: Path,
    *,
    sealer: PlatformSealer,
    measurement: bytes,
    federation: str,
    now: datetime,
    rng: Callable[[int], bytes] = os.urandom,
    tls_hosts: Sequence[str] = ("localhost", "127.0.0.1"),
) -> KbsKeys:
    """Load the sealed KBS key set from ``state_dir``, or create it on first start.

    Args:
        state_dir: the KBS state directory (created 0700; tightened to 0700 if looser).
        sealer: the platform's sealing-key provider.
        measurement: the KBS's own 32-byte measurement (MRENCLAVE).
        federation: federation name (DNS label); must match the stored key set.
        now: timezone-aware time for certificate validity and renewal.
        rng: source of the X25519, Ed25519 and storage key bytes and of the sealing salt
            (EC keys and serial numbers come from the OS generator through ``cryptography``).
        tls_hosts: DNS names / IP addresses of the TLS certificate.

    Returns the same keys on every later start; CA/TLS certificates are renewed with their
    existing keys when close to expiry (CA: 7 days, TLS: 1 day) or when ``tls_hosts``
    change, and the state file is rewritten.

    Raises:
        SealingError: the state cannot be unsealed (another measurement or platform, or a
            modified file), or it is larger than 1 MiB.
        ParseError: the unsealed state is malformed.
        KbsError: bad arguments, federation mismatch, I/O errors.
        PlatformError: from ``sealer`` (bad measurement, platform key unavailable).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise KbsError("'now' must be a timezone-aware datetime")
    t = now.astimezone(UTC)
    if not isinstance(federation, str) or not NAME_PATTERN.fullmatch(federation):
        raise KbsError("federation must be a DNS-label name")
    if not isinstance(measurement, bytes) or len(measurement) != 32:
        raise KbsError("measurement must be 32 bytes")
    hosts = normalise_hosts(tls_hosts)
    state_dir = Path(state_dir)
    _prepare_dir(state_dir)
    path = state_dir / KEYS_FILE
    key = sealer.sealing_key(measurement, purpose=SEALING_PURPOSE)

    if not path.exists():
        keys = _generate(federation, hosts, t, rng)
        blob = seal(_serialise(keys, measurement), key, aad=KEYS_AAD, rng=rng)
        if _write_state(path, blob, replace=False):
            return keys
        # another process created the state first: use its keys

    try:
        plain = unseal(_read_state(path), key, aad=KEYS_AAD)
    except SealingError:
        raise SealingError(_UNSEAL_FAILED) from None
    keys = _deserialise(plain, measurement)
    if keys.federation != federation:
        raise KbsError(
            f"KBS state in {state_dir} belongs to federation {keys.federation!r}, "
            f"not {federation!r}"
        )
    renewed = _renew(keys, hosts, t)
    if renewed is not None:
        blob = seal(_serialise(renewed, measurement), key, aad=KEYS_AAD, rng=rng)
        _write_state(path, blob, replace=True)
        keys = renewed
    return keys
