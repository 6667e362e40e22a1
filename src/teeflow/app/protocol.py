"""Wire formats of partitioned applications: sealed requests, signed replies, announcements.

Subjects (NATS; ``<app>`` is the application's DNS-label name)::

    tfapp.<app>.req              requests (captured by the application's JetStream stream)
    tfapp.<app>.announce.<i>     replica i's announcement (captured by the stream as well)
    tfapp.<app>.reply.<client>   signed replies for one client (core NATS, not stored)

**Keys.** The KBS releases one 32-byte application secret ``S`` to attested replicas
(:func:`teeflow.kbs.policy.apps.app_key_path`). :class:`AppKeys` derives with HKDF-SHA256
(RFC 5869; salt empty): the X25519 HPKE key (info ``teeflow-app/1 hpke``) that clients seal
requests to, and the 32-byte snapshot sealing key (info ``teeflow-app/1 state``).

**Request** (:func:`seal_request` / :func:`open_request`). The plaintext is the canonical
JSON (RFC 8785) object ``{"app", "body", "client", "key", "reply_key", "seq", "sig"}``:
``key`` the client's Ed25519 public key (base64url), ``client`` its id
(:func:`client_id`: the first 16 bytes of SHA-256(key), hex), ``seq`` the client's
sequence number (1..2**53-1, strictly increasing per client), ``reply_key`` 32 random
bytes the replies are encrypted under, ``body`` the app request (JSON), and ``sig`` the
Ed25519 signature over ``"teeflow-app-request/1\\0" || canonical JSON of the other
members``. It is sealed with HPKE (RFC 9180 §6.1 single-shot, base mode,
DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) to the application key with
``info = "teeflow-app-request/1\\0" || app || "\\0" || client``. Wire: the JSON object
``{"v": 1, "client", "enc"}`` (``enc`` base64url of the HPKE output), at most the
agreement's ``max_request_bytes``. The host sees the client id and the size, nothing else.

**Reply** (:func:`sign_reply` / :func:`check_reply`). A replica encrypts the reply's
canonical JSON with AES-256-GCM-SIV (RFC 8452) under the request's ``reply_key`` with a
zero nonce and associated data ``"teeflow-app-reply/1\\0" || app || "\\0" || client ||
"\\0" || seq`` — deterministic (each key encrypts the replies to one request only, and
GCM-SIV is nonce-misuse resistant), so honest replicas produce byte-identical ciphertexts
— and signs ``"teeflow-app-reply/1\\0" || canonical JSON {"app", "client", "position",
"reply", "seq"}`` (``position``: the request's JetStream sequence) with its certificate's
P-256 key (ECDSA-SHA256, DER). Wire: ``{"v": 1, "app", "replica", "client", "seq",
"position", "reply", "sig"}``.

**Announcement** (:func:`sign_announcement` / :func:`check_announcement`): replica ``i``
publishes ``{"v": 1, "app", "replica", "certificate" (PEM), "hpke_public" (base64url),
"sig"}``, the signature over ``"teeflow-app-announce/1\\0" || canonical JSON {"app",
"hpke_public", "replica"}`` by the certificate's key. Clients accept a replica only when its
certificate chains to the federation CA with role ``app``, the agreement in force and an
agreed ``app`` measurement (:func:`check_replica_certificate`).

Every parser is bounded and total: malformed input raises :class:`~teeflow.errors.ParseError`,
a bad signature or certificate :class:`~teeflow.errors.VerificationError`, a ciphertext that
does not open :class:`~teeflow.errors.SealingError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from teeflow.errors import ParseError, SealingError, VerificationError
from teeflow.kbs.ca.authority import WorkloadIdentity, verify_workload_certificate
from teeflow.kbs.policy.agreement import FederationAgreement, WorkloadRole
from teeflow.kbs.policy.canonical import canonical_json

__all__ = [
    "MAX_REPLY_BYTES",
    "MAX_SEQ",
    "Announcement",
    "AppKeys",
    "OpenedRequest",
    "SignedReply",
    "announce_subject",
    "check_announcement",
    "check_replica_certificate",
    "check_reply",
    "client_id",
    "decrypt_reply",
    "open_request",
    "reply_subject",
    "request_subject",
    "seal_request",
    "sign_announcement",
    "sign_reply",
]

#: Largest reply (or announcement) message (bytes).
MAX_REPLY_BYTES = 256 * 1024
#: Largest client sequence number (2**53 - 1, exact in I-JSON).
MAX_SEQ = 2**53 - 1
_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
_REQ = b"teeflow-app-request/1\0"
_REPLY = b"teeflow-app-reply/1\0"
_ANNOUNCE = b"teeflow-app-announce/1\0"
_CLIENT_HEX = 32


def request_subject(app: str) -> str:
    """``tfapp.<app>.req``."""
    return f"tfapp.{app}.req"


def announce_subject(app: str, replica: int | str) -> str:
    """``tfapp.<app>.announce.<replica>`` (``*`` for all)."""
    return f"tfapp.{app}.announce.{replica}"


def reply_subject(app: str, client: str) -> str:
    """``tfapp.<app>.reply.<client>``."""
    return f"tfapp.{app}.reply.{client}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(value: object, what: str, limit: int) -> bytes:
    if not isinstance(value, str) or len(value) > limit * 4 // 3 + 4:
        raise ParseError(f"{what}: expected base64url text of at most {limit} bytes")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise ParseError(f"{what}: not base64url") from None


def _json(raw: bytes, limit: int, what: str) -> dict[str, Any]:
    if not isinstance(raw, bytes | bytearray | memoryview) or len(raw) > limit:
        raise ParseError(f"{what}: not bytes or larger than {limit} bytes")
    try:
        value = json.loads(bytes(raw))
    except (ValueError, RecursionError):
        raise ParseError(f"{what}: not JSON") from None
    if not isinstance(value, dict):
        raise ParseError(f"{what}: not a JSON object")
    return value


def _seq(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SEQ:
        raise ParseError(f"sequence numbers are integers 1..{MAX_SEQ}")
    return value


def _client(value: object) -> str:
    if (
        not isinstance(value, str)
        or len(value) != _CLIENT_HEX
        or any(c not in "0123456789abcdef" for c in value)
    ):
        raise ParseError("client ids are 32 lower-case hex characters")
    return value


def _replica(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1024:
        raise ParseError("replica indexes are integers 0..1023")
    return value


def client_id(public_key: Ed25519PublicKey) -> str:
    """A client's id: the first 16 bytes of SHA-256 of its raw Ed25519 key, hex (32 chars)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:16].hex()


@dataclass(frozen=True)
class AppKeys:
    """The keys derived from an application secret (module docstring).

    Attributes:
        hpke: the X25519 private key requests are sealed to.
        state: the 32-byte snapshot sealing key.
    """

    hpke: X25519PrivateKey
    state: bytes

    @classmethod
    def from_secret(cls, secret: bytes) -> AppKeys:
        """Derive the keys from the 32-byte application secret.

        Raises:
            SealingError: ``secret`` is not 32 bytes.
        """
        if not isinstance(secret, bytes) or len(secret) != 32:
            raise SealingError("the application secret must be 32 bytes")

        def derive(info: bytes) -> bytes:
            return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(secret)

        return cls(X25519PrivateKey.from_private_bytes(derive(b"teeflow-app/1 hpke")),
                   derive(b"teeflow-app/1 state"))

    def public_bytes(self) -> bytes:
        """The raw 32-byte X25519 public key clients seal to."""
        return self.hpke.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )


def _request_info(app: str, client: str) -> bytes:
    return _REQ + app.encode() + b"\0" + client.encode()


def seal_request(
    *,
    app: str,
    app_public: X25519PublicKey,
    client_key: Ed25519PrivateKey,
    seq: int,
    body: Any,
    reply_key: bytes,
) -> bytes:
    """The wire request (module docstring) for ``body`` (a JSON value).

    Args:
        app: application name.
        app_public: the application's X25519 key (from f+1 matching announcements).
        client_key: the client's Ed25519 key.
        seq: the client's next sequence number (1..2**53-1).
        body: the app request (an I-JSON value: RFC 8785 canonical form).
        reply_key: 32 fresh random bytes (the replies are encrypted under it).

    Raises:
        ParseError: bad ``seq`` or a body that is not canonical JSON.
        SealingError: HPKE failed.
    """
    public = client_key.public_key()
    cid = client_id(public)
    raw_public = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    inner: dict[str, Any] = {
        "app": app, "body": body, "client": cid, "key": _b64(raw_public),
        "reply_key": _b64(reply_key), "seq": _seq(seq),
    }  # fmt: skip
    signed = canonical_json(inner)  # ParseError: the body is not an I-JSON value
    inner["sig"] = _b64(client_key.sign(_REQ + signed))
    try:
        enc = _SUITE.encrypt(canonical_json(inner), app_public, info=_request_info(app, cid))
    except (ValueError, TypeError):
        raise SealingError("HPKE encryption of the request failed") from None
    return json.dumps({"v": 1, "client": cid, "enc": _b64(enc)}).encode()


@dataclass(frozen=True)
class OpenedRequest:
    """A request a replica opened: client id, sequence number, body, reply key, and the
    SHA-256 of the wire message (its identity)."""

    client: str
    seq: int
    body: Any
    reply_key: bytes
    digest: bytes


def open_request(raw: bytes, *, app: str, keys: AppKeys, max_bytes: int) -> OpenedRequest:
    """Open and authenticate a wire request (module docstring).

    Raises:
        ParseError: malformed message or plaintext, or larger than ``max_bytes``.
        SealingError: the HPKE ciphertext does not open (another key, app or client id).
        VerificationError: the client signature is bad, or the key is not the client id's.
    """
    outer = _json(raw, max_bytes, "request")
    if set(outer) != {"v", "client", "enc"} or outer["v"] != 1:
        raise ParseError("request: expected exactly v=1, client, enc")
    cid = _client(outer["client"])
    enc = _unb64(outer["enc"], "request enc", max_bytes)
    try:
        plain = _SUITE.decrypt(enc, keys.hpke, info=_request_info(app, cid))
    except (InvalidTag, ValueError, TypeError):
        raise SealingError("request does not open under the application key") from None
    inner = _json(plain, max_bytes, "request plaintext")
    if set(inner) != {"app", "body", "client", "key", "reply_key", "seq", "sig"}:
        raise ParseError("request plaintext: unexpected members")
    if inner["app"] != app or inner["client"] != cid:
        raise VerificationError("request names another application or client")
    seq = _seq(inner["seq"])
    reply_key = _unb64(inner["reply_key"], "reply_key", 32)
    if len(reply_key) != 32:
        raise ParseError("reply_key must be 32 bytes")
    raw_key = _unb64(inner["key"], "client key", 32)
    sig = _unb64(inner.pop("sig"), "client signature", 64)
    try:
        public = Ed25519PublicKey.from_public_bytes(raw_key)
        public.verify(sig, _REQ + canonical_json(inner))
    except (InvalidSignature, ValueError):
        raise VerificationError("request signature does not verify") from None
    if client_id(public) != cid:
        raise VerificationError("request key is not the client id's key")
    return OpenedRequest(cid, seq, inner["body"], reply_key, hashlib.sha256(bytes(raw)).digest())


def _reply_aad(app: str, client: str, seq: int) -> bytes:
    return _REPLY + f"{app}\0{client}\0{seq}".encode()


@dataclass(frozen=True)
class SignedReply:
    """A replica's signed reply (module docstring); ``reply`` is the ciphertext."""

    app: str
    replica: int
    client: str
    seq: int
    position: int
    reply: bytes
    sig: bytes

    def signed_bytes(self) -> bytes:
        """What the signature covers."""
        return _REPLY + canonical_json(
            {"app": self.app, "client": self.client, "position": self.position,
             "reply": _b64(self.reply), "seq": self.seq}
        )  # fmt: skip

    def to_wire(self) -> bytes:
        """The JSON wire form."""
        return json.dumps(
            {"v": 1, "app": self.app, "replica": self.replica, "client": self.client,
             "seq": self.seq, "position": self.position, "reply": _b64(self.reply),
             "sig": _b64(self.sig)}
        ).encode()  # fmt: skip

    @classmethod
    def from_wire(cls, raw: bytes) -> SignedReply:
        """Parse the wire form. Raises ParseError."""
        d = _json(raw, MAX_REPLY_BYTES, "reply")
        if set(d) != {"v", "app", "replica", "client", "seq", "position", "reply", "sig"}:
            raise ParseError("reply: unexpected members")
        if d["v"] != 1 or not isinstance(d["app"], str) or len(d["app"]) > 63:
            raise ParseError("reply: bad version or app")
        position = d["position"]
        if not isinstance(position, int) or isinstance(position, bool) or position < 1:
            raise ParseError("reply: bad position")
        return cls(d["app"], _replica(d["replica"]), _client(d["client"]), _seq(d["seq"]),
                   position, _unb64(d["reply"], "reply", MAX_REPLY_BYTES),
                   _unb64(d["sig"], "reply signature", 256))  # fmt: skip


def sign_reply(
    *,
    app: str,
    replica: int,
    request: OpenedRequest,
    position: int,
    reply: Any,
    key: ec.EllipticCurvePrivateKey,
) -> SignedReply:
    """Encrypt ``reply`` (a JSON value) under the request's reply key and sign it.

    Raises:
        ParseError: the reply is not an I-JSON value (RFC 8785).
    """
    plain = canonical_json(reply)  # ParseError: not an I-JSON value
    ct = AESGCMSIV(request.reply_key).encrypt(
        bytes(12), plain, _reply_aad(app, request.client, request.seq)
    )
    unsigned = SignedReply(app, replica, request.client, request.seq, position, ct, b"")
    sig = key.sign(unsigned.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    return SignedReply(app, replica, request.client, request.seq, position, ct, sig)


def check_reply(reply: SignedReply, public_key: ec.EllipticCurvePublicKey) -> None:
    """Verify a reply's signature with the replica's certificate key.

    Raises:
        VerificationError: it does not verify.
    """
    try:
        public_key.verify(reply.sig, reply.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise VerificationError(f"reply of replica {reply.replica} does not verify") from None


def decrypt_reply(reply: SignedReply, reply_key: bytes) -> Any:
    """The reply's JSON value.

    Raises:
        SealingError: it does not decrypt under ``reply_key``. ParseError: not JSON.
    """
    try:
        plain = AESGCMSIV(reply_key).decrypt(
            bytes(12), reply.reply, _reply_aad(reply.app, reply.client, reply.seq)
        )
    except InvalidTag:
        raise SealingError("reply does not decrypt under the request's reply key") from None
    try:
        return json.loads(plain)
    except ValueError:
        raise ParseError("reply plaintext is not JSON") from None


@dataclass(frozen=True)
class Announcement:
    """A replica's announcement (module docstring)."""

    app: str
    replica: int
    certificate: x509.Certificate
    hpke_public: bytes
    sig: bytes

    def signed_bytes(self) -> bytes:
        """What the signature covers."""
        return _ANNOUNCE + canonical_json(
            {"app": self.app, "hpke_public": _b64(self.hpke_public), "replica": self.replica}
        )

    def to_wire(self) -> bytes:
        """The JSON wire form."""
        pem = self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
        return json.dumps(
            {"v": 1, "app": self.app, "replica": self.replica, "certificate": pem,
             "hpke_public": _b64(self.hpke_public), "sig": _b64(self.sig)}
        ).encode()  # fmt: skip

    @classmethod
    def from_wire(cls, raw: bytes) -> Announcement:
        """Parse the wire form. Raises ParseError."""
        d = _json(raw, MAX_REPLY_BYTES, "announcement")
        if set(d) != {"v", "app", "replica", "certificate", "hpke_public", "sig"} or d["v"] != 1:
            raise ParseError("announcement: unexpected members or version")
        if not isinstance(d["app"], str) or not isinstance(d["certificate"], str):
            raise ParseError("announcement: bad app or certificate")
        try:
            cert = x509.load_pem_x509_certificate(d["certificate"].encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise ParseError("announcement: certificate is not PEM") from None
        public = _unb64(d["hpke_public"], "hpke_public", 32)
        if len(public) != 32:
            raise ParseError("announcement: hpke_public must be 32 bytes")
        return cls(d["app"], _replica(d["replica"]), cert, public,
                   _unb64(d["sig"], "announcement signature", 256))  # fmt: skip


def sign_announcement(
    *, app: str, replica: int, certificate: x509.Certificate, keys: AppKeys,
    key: ec.EllipticCurvePrivateKey,
) -> Announcement:  # fmt: skip
    """Replica ``replica``'s signed announcement of the application key."""
    unsigned = Announcement(app, replica, certificate, keys.public_bytes(), b"")
    sig = key.sign(unsigned.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    return Announcement(app, replica, certificate, unsigned.hpke_public, sig)


def check_replica_certificate(
    cert: x509.Certificate,
    *,
    ca: x509.Certificate,
    agreement: FederationAgreement,
    now: datetime,
) -> WorkloadIdentity:
    """A replica certificate's identity, once it is checked: issued by the federation CA
    (``ca``), valid at ``now``, role ``app``, the agreement's digest, an agreed ``app``
    measurement for its platform, and emulated only if the agreement allows emulation.

    Raises:
        VerificationError: any check fails.
    """
    identity = verify_workload_certificate(
        cert, ca, now=now, expected_agreement_digest=agreement.digest().hex(),
        required_role=WorkloadRole.APP.value,
    )  # fmt: skip
    if identity.emulated and not agreement.allow_emulated:
        raise VerificationError("emulated replica evidence, and the agreement forbids it")
    platform = identity.tee.removeprefix("emulated-")
    values = agreement.reference_values(WorkloadRole.APP, platform)
    if values is None:
        raise VerificationError(f"the agreement names no app reference values for {platform}")
    field = {"sgx": "mrenclave", "tdx": "mrtd"}.get(platform, "measurement")
    listed = {m.lower() for m in getattr(values, field)}
    if listed and identity.measurement.lower() not in listed:
        raise VerificationError("replica measurement is not an agreed app measurement")
    return identity


def check_announcement(
    ann: Announcement,
    *,
    app: str,
    ca: x509.Certificate,
    agreement: FederationAgreement,
    now: datetime,
) -> ec.EllipticCurvePublicKey:
    """Verify an announcement (certificate as :func:`check_replica_certificate`, then its
    signature); returns the replica's signing key.

    Raises:
        VerificationError: another application, a bad certificate or signature.
    """
    if ann.app != app:
        raise VerificationError("announcement of another application")
    check_replica_certificate(ann.certificate, ca=ca, agreement=agreement, now=now)
    public = ann.certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise VerificationError("replica certificate key is not an EC key")
    try:
        public.verify(ann.sig, ann.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise VerificationError("announcement signature does not verify") from None
    return public
