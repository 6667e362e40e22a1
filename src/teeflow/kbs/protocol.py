"""KBS wire models (pydantic v2): RCAR messages compatible with Trustee KBS protocol 0.4.0,
and teeflow's ``/v1`` extension bodies.

Sources: Trustee ``kbs/docs/kbs_attestation_protocol.md`` and the ``kbs_types`` crate
(``Request``, ``Challenge``, ``RuntimeData``, ``CompositeEvidence``, ``Attestation``,
``Response``, ``ErrorInformation``); the SGX evidence shape of Trustee's attestation-service
SGX verifier (``{"quote": "<standard base64 of the DCAP quote>"}``); DESIGN "RCAR attestation
protocol". JSON member names are the exact wire names (``extra-params``, ``runtime-data``,
``tee-pubkey``, ``tee-evidence``, ``init-data``, ``primary_evidence``,
``additional_evidence``); Python attributes use snake case. Serialise with
``model_dump(by_alias=True)``.

Messages::

    POST /kbs/v0/auth    AuthRequest   {"version": "0.4.0", "tee": "sgx", "extra-params": ...}
                      -> Challenge     {"nonce": "<base64 of 32 bytes>", "extra-params": ""}
    POST /kbs/v0/attest  AttestRequest {"runtime-data": {"nonce", "tee-pubkey", "teeflow"?},
                                        "tee-evidence": {"primary_evidence": {"quote": "..."},
                                                         "additional_evidence": ""}}
                      -> AttestResponse {"token": "<EAR JWT>"}
    GET  /kbs/v0/resource/<repo>/<type>/<tag> -> JweResponse (flattened JWE JSON, RFC 7516 §7.2.2)

Bounds (DESIGN security invariant 4): every string and list has a maximum length, every
model refuses unknown members (``extra="forbid"``), request bodies have per-endpoint byte
limits (``MAX_*_BODY_BYTES``, enforced by :func:`decode_json`).

Runtime-data fidelity: the REPORT_DATA binding hashes the runtime data *as the attester
sent it*. These models never normalise values (hex must already be lower case; no
defaults are filled in), and :meth:`RuntimeData.binding_members` returns exactly the members
that were present, so the hash the KBS recomputes equals the attester's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Annotated, Any, Literal, Self, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from teeflow.attestation.additional_evidence import (
    MAX_ADDITIONAL_EVIDENCE_CHARS as _ADDITIONAL_CHARS,
)
from teeflow.kbs.api.problems import InvalidRequest, PayloadTooLarge
from teeflow.kbs.policy.canonical import (
    b64url_decode,
    b64url_encode,
    canonical_json,
    format_validation_error,
)
from teeflow.kbs.policy.grants import SignedGrant
from teeflow.kbs.policy.parties import B64Sig64, Name, PartyKeys

__all__ = [
    "EMULATED_TEES",
    "JWE_ALG",
    "JWE_ENC",
    "MAX_ADDITIONAL_EVIDENCE_CHARS",
    "MAX_ATTEST_BODY_BYTES",
    "MAX_AUTH_BODY_BYTES",
    "MAX_CLAIM_ITEMS",
    "MAX_CSR_BODY_BYTES",
    "MAX_EXTRA_PARAMS_BYTES",
    "MAX_QUOTE_BYTES",
    "MAX_REVOCATION_BODY_BYTES",
    "MAX_UPLOAD_BODY_BYTES",
    "NONCE_BYTES",
    "PROTOCOL_VERSION",
    "RESOURCE_UPLOAD_DOMAIN",
    "RESOURCE_WRAP_INFO",
    "SUPPORTED_TEES",
    "AttestRequest",
    "AttestResponse",
    "AttestedSession",
    "AuthRequest",
    "CertificateRequest",
    "CertificateResponse",
    "Challenge",
    "CompositeEvidence",
    "CounterIncrement",
    "CounterState",
    "Enrolled",
    "EnrollmentRevocationRequest",
    "InitData",
    "JweResponse",
    "ResourceInfo",
    "ResourceUpload",
    "RuntimeData",
    "SgxEvidence",
    "TeePubKey",
    "TeeflowClaims",
    "decode_json",
    "is_counter_name",
    "is_resource_path",
    "protocol_version_accepted",
    "resource_upload_digest",
    "resource_wrap_aad",
    "sign_resource_upload",
]

M = TypeVar("M", bound=BaseModel)

#: The only KBS protocol version accepted (Trustee ``kbs/src/attestation/backend.rs``: "=0.4.0").
PROTOCOL_VERSION = "0.4.0"


def protocol_version_accepted(version: str) -> bool:
    """True iff ``version`` satisfies Trustee's requirement ``=0.4.0``.

    Trustee parses the request's ``version`` with the Rust ``semver`` crate
    (``Version::parse``: strict SemVer 2.0.0, no ``v`` prefix, no leading zeros) and matches
    it against ``VersionReq "=0.4.0"``: major.minor.patch must be 0.4.0, a pre-release
    (``0.4.0-rc1``) does not match, and build metadata (``0.4.0+abc``) is ignored
    (SemVer 2.0.0 §10). The Python ``semver`` library implements the same grammar.
    """
    import semver  # the KBS checks versions; clients only send PROTOCOL_VERSION

    try:
        parsed = semver.Version.parse(version)
    except (ValueError, TypeError):
        return False
    return parsed.match("==" + PROTOCOL_VERSION)
#: Challenge nonce size before base64 (Trustee ``NONCE_SIZE_BYTES``).
NONCE_BYTES = 32
#: TEE types this KBS attests (``Request.tee``); anything else is refused. Evidence shapes
#: per type: :mod:`teeflow.kbs.service.evidence`.
SUPPORTED_TEES = frozenset({"sgx", "emulated-sgx", "tdx", "emulated-tdx", "snp", "emulated-snp"})
#: TEE types whose evidence must chain to an emulation root.
EMULATED_TEES = frozenset({"emulated-sgx", "emulated-tdx", "emulated-snp"})
#: Largest decoded DCAP quote (bytes); real SGX quotes with a PCK chain are ~5 KiB.
MAX_QUOTE_BYTES = 64 * 1024
#: Largest ``additional_evidence`` string (characters): up to 8 GPUs' evidence (see
#: :mod:`teeflow.attestation.additional_evidence`, which parses it).
MAX_ADDITIONAL_EVIDENCE_CHARS = _ADDITIONAL_CHARS
#: Largest canonical JSON of ``extra-params`` / ``primary_evidence`` metadata (bytes).
MAX_EXTRA_PARAMS_BYTES = 4096
#: Most entries in a teeflow claims list (resources, recipients).
MAX_CLAIM_ITEMS = 64
#: Request body limits (bytes) per endpoint.
MAX_AUTH_BODY_BYTES = 8 * 1024
MAX_ATTEST_BODY_BYTES = 256 * 1024
MAX_UPLOAD_BODY_BYTES = 128 * 1024
MAX_CSR_BODY_BYTES = 16 * 1024
MAX_REVOCATION_BODY_BYTES = 4 * 1024
#: JWE algorithms of resource responses (RFC 7518 §4.6 and §5.3), as Trustee's KBS uses for
#: EC ``tee-pubkey`` keys.
JWE_ALG = "ECDH-ES+A256KW"
JWE_ENC = "A256GCM"
#: HPKE ``info`` for data keys wrapped to the KBS key (:func:`teeflow.sealing.wrap_key`);
#: the ``aad`` is :func:`resource_wrap_aad` (the resource path).
RESOURCE_WRAP_INFO = b"teeflow/kbs/resource-key/v1"
#: Signing domain of a resource upload (Ed25519 by the owner over domain || digest).
RESOURCE_UPLOAD_DOMAIN = b"teeflow-resource-upload-v1\0"

_MAX_QUOTE_B64 = (MAX_QUOTE_BYTES + 2) // 3 * 4
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"
_B64URL_32 = r"^[A-Za-z0-9_-]{43}$"  # 32 bytes, base64url without padding

Str32 = Annotated[str, StringConstraints(min_length=1, max_length=32)]
TeeName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")]
LowerHex32 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
LowerHexDigest = Annotated[str, StringConstraints(pattern=r"^(?:[0-9a-f]{2}){16,64}$")]
ResourcePathStr = Annotated[
    str, StringConstraints(pattern=rf"^{_SEGMENT}/{_SEGMENT}/{_SEGMENT}$", max_length=400)
]
IdentStr = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")]
CounterName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._/-]{0,127}$")]
#: An FL session name (as :func:`teeflow.fl.checkpoint.counter_name` accepts).
SessionName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
#: An enrollment token (compact JWS, :data:`teeflow.kbs.policy.enrollment.MAX_ENROLLMENT_CHARS`).
EnrollmentToken = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$",
                           max_length=2048)
]
WorkloadRoleName = Literal["kbs", "aggregator", "client", "compute", "serve", "app"]


class _Wire(BaseModel):
    """Base of wire models: frozen, unknown members refused, aliases on input and output."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    def to_wire(self) -> dict[str, Any]:
        """JSON value with wire names, only the members that were set (or have defaults)."""
        return self.model_dump(mode="json", by_alias=True)


def _bounded_json(value: JsonValue, limit: int, what: str) -> JsonValue:
    try:
        size = len(canonical_json(value))
    except Exception:  # ParseError from canonical_json: not I-JSON
        raise ValueError(f"{what} is not I-JSON") from None
    if size > limit:
        raise ValueError(f"{what} larger than {limit} bytes")
    return value


# -- /kbs/v0/auth ----------------------------------------------------------------------------


class AuthRequest(_Wire):
    """Trustee ``Request``: protocol version, TEE type, extra parameters.

    ``tee`` is syntax-checked only; the service refuses unsupported TEEs with a typed
    problem (Trustee knows more TEE names than this KBS attests).
    """

    version: Str32
    tee: TeeName
    extra_params: JsonValue = Field(default="", alias="extra-params")

    @field_validator("extra_params")
    @classmethod
    def _bound(cls, value: JsonValue) -> JsonValue:
        return _bounded_json(value, MAX_EXTRA_PARAMS_BYTES, "extra-params")


class Challenge(_Wire):
    """Trustee ``Challenge``: the base64 nonce and ``extra-params`` (``""`` as Trustee)."""

    nonce: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    extra_params: JsonValue = Field(default="", alias="extra-params")


# -- /kbs/v0/attest --------------------------------------------------------------------------


class TeePubKey(_Wire):
    """The attester's ephemeral public key: an EC P-256 JWK (RFC 7517/7518 §6.2).

    ``alg`` is optional (Trustee attesters send ``"ECDH-ES+A256KW"``); ``kid`` optional.
    ``x``/``y`` must be 32-byte base64url values of a point on P-256.
    """

    kty: Literal["EC"]
    crv: Literal["P-256"]
    x: Annotated[str, StringConstraints(pattern=_B64URL_32)]
    y: Annotated[str, StringConstraints(pattern=_B64URL_32)]
    alg: Literal["ECDH-ES+A256KW"] | None = None
    kid: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None

    @model_validator(mode="after")
    def _on_curve(self) -> Self:
        self.public_key()
        return self

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The key as a ``cryptography`` object.

        Raises:
            ValueError: the point is not on P-256 (or not canonical base64url).
        """
        try:
            x = int.from_bytes(b64url_decode(self.x, length=32), "big")
            y = int.from_bytes(b64url_decode(self.y, length=32), "big")
            return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
        except Exception:  # ParseError (base64) or ValueError (not on the curve)
            raise ValueError("tee-pubkey is not a valid P-256 public key") from None

    def as_jwk(self) -> dict[str, Any]:
        """The JWK members exactly as received (unset optional members omitted)."""
        return self.model_dump(mode="json", exclude_unset=True)


class TeeflowClaims(_Wire):
    """teeflow's runtime-data extension, bound into REPORT_DATA with the key and nonce.

    Attributes:
        role: the workload role whose reference values apply.
        party: the party the workload acts for (a party of the agreement) or None.
        package_digest: SHA-256 of the compute package it runs (lower-case hex) or None.
        function: the entrypoint/function it will call, or None.
        resources: resource paths it will request (each release must be listed).
        recipients: parties its outputs will be sealed to.
        session: the FL session it serves (aggregator) or works in (client), or None;
            scopes its counters (``session/<session>``, :mod:`teeflow.kbs.policy.namespaces`)
            and must match a session-scoped enrollment.
        enrollment: the party's signed enrollment token
            (:mod:`teeflow.kbs.policy.enrollment`), at most 2048 characters; without one
            the KBS refuses the attestation, and ``party`` (if given) must equal the
            enrollment's party.
    """

    role: WorkloadRoleName
    party: Name | None = None
    package_digest: LowerHex32 | None = None
    function: IdentStr | None = None
    resources: tuple[ResourcePathStr, ...] = Field(default=(), max_length=MAX_CLAIM_ITEMS)
    recipients: tuple[Name, ...] = Field(default=(), max_length=MAX_CLAIM_ITEMS)
    session: SessionName | None = None
    enrollment: EnrollmentToken | None = None


class RuntimeData(_Wire):
    """Trustee ``RuntimeData`` (``nonce``, ``tee-pubkey``) plus optional ``teeflow`` claims."""

    nonce: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    tee_pubkey: TeePubKey = Field(alias="tee-pubkey")
    teeflow: TeeflowClaims | None = None

    def teeflow_members(self) -> dict[str, Any] | None:
        """The ``teeflow`` object exactly as received (for the binding), or None."""
        if self.teeflow is None:
            return None
        return self.teeflow.model_dump(mode="json", exclude_unset=True)


class SgxEvidence(_Wire):
    """Trustee SGX verifier evidence: ``{"quote": "<standard base64 DCAP quote>"}``."""

    quote: Annotated[str, StringConstraints(min_length=1, max_length=_MAX_QUOTE_B64)]

    def quote_bytes(self) -> bytes:
        """The decoded quote (RFC 4648 §4 base64, padding required).

        Raises:
            ValueError: not valid base64 or larger than :data:`MAX_QUOTE_BYTES`.
        """
        try:
            raw = base64.b64decode(self.quote, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("quote is not valid base64") from None
        if len(raw) > MAX_QUOTE_BYTES:
            raise ValueError(f"quote larger than {MAX_QUOTE_BYTES} bytes")
        return raw


class CompositeEvidence(_Wire):
    """Trustee ``CompositeEvidence``: primary TEE evidence + additional evidence JSON text.

    ``primary_evidence`` is a JSON object whose shape depends on the TEE (SGX:
    :class:`SgxEvidence`; TDX and SNP: :mod:`teeflow.kbs.service.evidence`);
    ``additional_evidence`` is ``""`` when there is none.
    """

    primary_evidence: dict[str, JsonValue]
    additional_evidence: Annotated[str, StringConstraints(max_length=MAX_ADDITIONAL_EVIDENCE_CHARS)]

    @field_validator("primary_evidence")
    @classmethod
    def _bound(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        _bounded_json(value, MAX_QUOTE_BYTES * 2, "primary_evidence")
        return value


class InitData(_Wire):
    """Trustee ``InitData`` (``format``, ``body``); accepted on the wire, refused by the
    service (SGX CONFIGID binding of init data is not supported)."""

    format: Str32
    body: Annotated[str, StringConstraints(max_length=64 * 1024)]


class AttestRequest(_Wire):
    """Trustee ``Attestation``. ``tee-evidence`` is the composite shape; the legacy bare
    SGX shape ``{"quote": ...}`` is also accepted (treated as ``additional_evidence: ""``)."""

    init_data: InitData | None = Field(default=None, alias="init-data")
    runtime_data: RuntimeData = Field(alias="runtime-data")
    tee_evidence: CompositeEvidence | SgxEvidence = Field(alias="tee-evidence")

    def composite(self) -> CompositeEvidence:
        """The evidence in composite form (a bare SGX object becomes its primary evidence)."""
        ev = self.tee_evidence
        if isinstance(ev, CompositeEvidence):
            return ev
        return CompositeEvidence(primary_evidence={"quote": ev.quote}, additional_evidence="")


class AttestResponse(_Wire):
    """``{"token": "<EAR JWT>"}``."""

    token: str


class JweResponse(_Wire):
    """Flattened JWE JSON serialisation (RFC 7516 §7.2.2) — Trustee ``kbs_types::Response``.

    All header parameters (``alg``, ``enc``, ``epk``) are in ``protected``; there is no
    ``aad`` member, so the AEAD additional data is ``ASCII(protected)``.
    """

    protected: str
    encrypted_key: str
    iv: str
    ciphertext: str
    tag: str
    aad: str | None = None


# -- teeflow extensions (/v1) ----------------------------------------------------------------


def resource_wrap_aad(path: str) -> bytes:
    """HPKE ``aad`` of a data key wrapped for resource ``path``: its UTF-8 bytes."""
    return path.encode("utf-8")


def resource_upload_digest(path: str, owner: str, wrapped_key: bytes, grant_digest: bytes) -> bytes:
    """SHA-256 of the RFC 8785 JSON ``{"path", "owner", "wrapped_key_sha256" (hex),
    "grant_digest" (hex)}`` — what the owner signs for :class:`ResourceUpload`."""
    doc = {
        "path": path,
        "owner": owner,
        "wrapped_key_sha256": hashlib.sha256(wrapped_key).hexdigest(),
        "grant_digest": grant_digest.hex(),
    }
    return hashlib.sha256(canonical_json(doc)).digest()


def sign_resource_upload(
    path: str, wrapped_key: bytes, signed_grant: SignedGrant, owner_keys: PartyKeys
) -> ResourceUpload:
    """Build and sign a :class:`ResourceUpload` (owner side, e.g. ``teeflow resource put``).

    Args:
        path: resource path ``repo/type/tag`` (must equal the grant's ``resource``).
        wrapped_key: the data key wrapped with :func:`teeflow.sealing.wrap_key` to the KBS
            HPKE key, ``info=RESOURCE_WRAP_INFO``, ``aad=resource_wrap_aad(path)``.
        signed_grant: the owner's signed grant for ``path``.
        owner_keys: the owner's party keys.
    """
    from teeflow.kbs.policy.grants import grant_digest  # local: keep the import surface small

    digest = resource_upload_digest(
        path, owner_keys.name, wrapped_key, grant_digest(signed_grant.grant)
    )
    signature = owner_keys.sign(RESOURCE_UPLOAD_DOMAIN + digest)
    return ResourceUpload(
        path=path,
        owner=owner_keys.name,
        wrapped_key=b64url_encode(wrapped_key),
        signed_grant=signed_grant,
        signature=b64url_encode(signature),
    )


class ResourceUpload(_Wire):
    """``PUT /v1/resources/<path>``: a wrapped data key with its grant.

    Attributes:
        path: resource path (Trustee ``<repository>/<type>/<tag>``).
        owner: the uploading party (must be the grant's owner).
        wrapped_key: base64url of the HPKE-wrapped data key (see :data:`RESOURCE_WRAP_INFO`).
        signed_grant: the owner's signed grant.
        signature: owner's Ed25519 signature (base64url) over
            ``RESOURCE_UPLOAD_DOMAIN || resource_upload_digest(...)`` — binds the wrapped
            key to the grant, so nobody can pair a published grant with another key.
    """

    path: ResourcePathStr
    owner: Name
    wrapped_key: Annotated[str, StringConstraints(min_length=1, max_length=12 * 1024)]
    signed_grant: SignedGrant
    signature: B64Sig64

    def wrapped_key_bytes(self) -> bytes:
        """The decoded wrapped key.

        Raises:
            ParseError: not canonical base64url.
        """
        return b64url_decode(self.wrapped_key)


class ResourceInfo(_Wire):
    """Public facts about a stored resource (never the wrapped key)."""

    path: str
    owner: str
    generation: int
    grant_id: str
    grant_digest: str
    not_after: AwareDatetime | None
    max_releases: int | None
    release_count: int


class CertificateRequest(_Wire):
    """``POST /v1/certificates``: a PEM PKCS#10 CSR whose key is the attested tee-pubkey."""

    csr: Annotated[str, StringConstraints(min_length=1, max_length=8 * 1024)]


class CertificateResponse(_Wire):
    """The issued workload certificate and the federation CA certificate (PEM)."""

    certificate: str
    ca: str


class CounterIncrement(_Wire):
    """``POST /v1/counters/<name>``: compare-and-increment from ``expected``, bound to
    ``digest`` (lower-case hex, 16..64 bytes)."""

    expected: int = Field(ge=0, le=(1 << 62))
    digest: LowerHexDigest


class CounterState(_Wire):
    """A counter's value and the digest bound to its last step."""

    name: CounterName
    value: int
    digest: str


class Enrolled(BaseModel):
    """The facts of the verified enrollment an attested session acts under.

    Attributes:
        id: the enrollment's ``jti``.
        party: the enrolling party — the session's party.
        session: the enrollment's session scope, or None.
        expires_at: the enrollment's expiry (UTC).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{16,64}$")]
    party: Name
    session: SessionName | None
    expires_at: AwareDatetime


class EnrollmentRevocationRequest(_Wire):
    """``POST /v1/enrollments/revocations``: a party-signed revocation (compact JWS, see
    :func:`teeflow.kbs.policy.enrollment.sign_revocation`)."""

    revocation: EnrollmentToken


class AttestedSession(BaseModel):
    """What an authorised request carries after its token or session was checked.

    Attributes:
        session_id: the RCAR session (None for a bearer token without a session).
        token_digest: SHA-256 of the EAR token (hex).
        tee: ``sgx``, ``tdx``, ``snp`` or their ``emulated-`` variants.
        emulated: the evidence chained to an emulation root.
        measurement: MRENCLAVE (SGX, 32 bytes), MRTD (TDX) or MEASUREMENT (SNP, 48) in hex.
        agreement_digest: digest (hex) of the agreement the evidence was appraised under.
        tee_pubkey: the attested ephemeral key (JWK as received).
        claims: the teeflow runtime-data claims, or None (plain Trustee attester under
            the service's default role).
        role: the appraised role (``claims.role`` or the default role).
        expires_at: token expiry (UTC).
        enrollment: the verified enrollment the workload acts under (its party is the
            session's party), or None (no party: no certificate, no key).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    session_id: str | None
    token_digest: str
    tee: str
    emulated: bool
    measurement: str
    agreement_digest: str
    tee_pubkey: TeePubKey
    claims: TeeflowClaims | None
    role: str
    expires_at: AwareDatetime
    enrollment: Enrolled | None = None

    @property
    def party(self) -> str | None:
        """The enrolled party (from the verified enrollment only), or None."""
        return None if self.enrollment is None else self.enrollment.party


_PATH_RE = re.compile(rf"{_SEGMENT}/{_SEGMENT}/{_SEGMENT}")
_COUNTER_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._/-]{0,127}")


def is_resource_path(path: object) -> bool:
    """True for a Trustee resource path ``<repository>/<type>/<tag>`` (each segment 1..128
    of ``A-Za-z0-9._-``, not starting with ``.``)."""
    return isinstance(path, str) and _PATH_RE.fullmatch(path) is not None


def is_counter_name(name: object) -> bool:
    """True for a counter name: 1..128 of ``A-Za-z0-9._/-``, not starting with ``.`` or
    ``/``, no ``..``."""
    return isinstance(name, str) and _COUNTER_RE.fullmatch(name) is not None and ".." not in name


def decode_json(model: type[M], body: bytes | str, *, max_bytes: int) -> M:
    """Parse and validate a request body.

    Args:
        model: the wire model class.
        body: raw body bytes (UTF-8 JSON) or text.
        max_bytes: the endpoint's limit.

    Raises:
        PayloadTooLarge: ``body`` is longer than ``max_bytes``.
        InvalidRequest: not JSON, or members/values invalid (the detail names every
            invalid field, never the values).
    """
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"request body larger than {max_bytes} bytes")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid {model.__name__}: {format_validation_error(exc)}") from None
