"""Enrollments: a party's signed statement that a workload instance acts for it in a role
(DESIGN Glossary "enrollment"; issue 10 "the party behind a workload must be proven").

A workload acts for a party only with that party's enrollment — FEDn's client token,
NVIDIA FLARE's enrollment token, Flower's node keys. The party signs, with its agreement
Ed25519 key, *which* federation, party and workload role, an optional session scope, a
validity window, an optional use count and a unique id, optionally bound to one workload
instance's public key. The workload sends the token in the RCAR runtime-data ``teeflow``
member (``enrollment``), so it is bound into REPORT_DATA with the attested key; the KBS
checks it at attestation and the party in the EAR, the session and the workload
certificate comes **only** from the enrollment.

**Format** — a JWS compact serialisation (RFC 7515 §7.1), versioned and canonical:

* protected header: exactly the RFC 8785 canonical JSON
  ``{"alg":"Ed25519","typ":"teeflow-enrollment+jwt"}`` (``Ed25519``: RFC 9864, the
  fully-specified EdDSA algorithm);
* payload: exactly the RFC 8785 canonical JSON of :class:`Enrollment`::

    {"cnf": {"jkt": "<RFC 7638 SHA-256 thumbprint of the workload key>"} | null,
     "exp": 1767225600, "fed": "study", "iat": 1767139200, "jti": "<16..64 base64url>",
     "party": "alice", "role": "client", "session": "s1" | null, "uses": 3 | null, "v": 1}

  (``cnf``/``jkt`` as RFC 7800 §3.1 and RFC 9449 §6.1; ``iat``/``exp`` NumericDates, whole
  seconds; ``uses`` null = unlimited within the validity window);
* signature: Ed25519 (RFC 8032) by ``party``'s agreement ``sign_key``, through joserfc.

A token whose header or payload is not byte-identical to the canonical form is refused, so
one enrollment has exactly one encoding. Tokens are at most :data:`MAX_ENROLLMENT_CHARS`
characters; a validity window is at most :data:`MAX_ENROLLMENT_LIFETIME`.

**Revocation** — the same format with ``typ`` ``teeflow-enrollment-revocation+jwt`` and
payload :class:`EnrollmentRevocation` ``{"fed", "iat", "jti", "party", "v"}``, signed by the
enrolling party; only that party's key can revoke its enrollments (the KBS keys uses and
revocations by :func:`use_key` = ``party/jti``).

**Who may enroll which role** (:data:`ENROLLING_PARTY_ROLES`): an ``aggregator`` by an
``aggregator-operator``, a ``compute`` worker by a ``compute-operator``, a ``client`` by a
``data-owner`` or ``model-owner``, a ``serve`` workload by a ``model-owner``, a ``kbs`` by a
``kbs-operator``, an ``app`` replica by a ``compute-operator`` (the party's roles in the
agreement in force).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey
from joserfc.jws import JWSRegistry
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from teeflow.errors import ParseError, PolicyViolation, VerificationError
from teeflow.kbs.policy.agreement import FederationAgreement, PartyRole, WorkloadRole
from teeflow.kbs.policy.canonical import (
    b64url_decode,
    b64url_encode,
    canonical_json,
    format_validation_error,
)
from teeflow.kbs.policy.parties import Name, PartyKeys

__all__ = [
    "ENROLLING_PARTY_ROLES",
    "ENROLLMENT_ALG",
    "ENROLLMENT_TYP",
    "ENROLLMENT_VERSION",
    "MAX_CLOCK_SKEW",
    "MAX_ENROLLMENT_CHARS",
    "MAX_ENROLLMENT_LIFETIME",
    "REVOCATION_TYP",
    "Confirmation",
    "Enrollment",
    "EnrollmentRevocation",
    "binding_problems",
    "enrollment_policy_problems",
    "issue_enrollment",
    "jwk_thumbprint",
    "load_enrollment",
    "read_enrollment",
    "read_revocation",
    "sign_revocation",
    "use_key",
    "verify_enrollment",
    "verify_enrollment_signature",
    "verify_revocation",
]

#: JWS ``alg`` of enrollments and revocations (RFC 9864 §2: EdDSA with Ed25519).
ENROLLMENT_ALG = "Ed25519"
#: JWS ``typ`` of an enrollment token.
ENROLLMENT_TYP = "teeflow-enrollment+jwt"
#: JWS ``typ`` of an enrollment revocation.
REVOCATION_TYP = "teeflow-enrollment-revocation+jwt"
#: Payload version (``v``).
ENROLLMENT_VERSION = 1
#: Largest token accepted (characters of the compact serialisation).
MAX_ENROLLMENT_CHARS = 2048
#: Longest validity window (``exp - iat``) of an enrollment.
MAX_ENROLLMENT_LIFETIME = timedelta(days=366)
#: How far ``iat`` may lie in the KBS's future (clocks of parties and KBS differ).
MAX_CLOCK_SKEW = timedelta(minutes=5)

#: Party roles (agreement ``parties.<name>.roles``) that may enroll each workload role.
ENROLLING_PARTY_ROLES: Mapping[str, frozenset[PartyRole]] = {
    WorkloadRole.AGGREGATOR: frozenset({PartyRole.AGGREGATOR_OPERATOR}),
    WorkloadRole.COMPUTE: frozenset({PartyRole.COMPUTE_OPERATOR}),
    WorkloadRole.CLIENT: frozenset({PartyRole.DATA_OWNER, PartyRole.MODEL_OWNER}),
    WorkloadRole.SERVE: frozenset({PartyRole.MODEL_OWNER}),
    WorkloadRole.KBS: frozenset({PartyRole.KBS_OPERATOR}),
    WorkloadRole.APP: frozenset({PartyRole.COMPUTE_OPERATOR}),
}

_REGISTRY = JWSRegistry(algorithms=[ENROLLMENT_ALG])
_MAX_NUMERIC_DATE = 2**53 - 1
_SEGMENTS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")

EnrollmentId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{16,64}$")]
SessionScope = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
Thumbprint = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{43}$")]
NumericDate = Annotated[int, Field(ge=0, le=_MAX_NUMERIC_DATE)]


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class Confirmation(_Payload):
    """``cnf`` (RFC 7800 §3.1): the workload key the enrollment is bound to.

    Attributes:
        jkt: RFC 7638 SHA-256 JWK thumbprint (base64url, 43 characters) of the workload's
            attested ``tee-pubkey`` (RFC 9449 §6.1 uses the same member).
    """

    jkt: Thumbprint


class Enrollment(_Payload):
    """The signed payload of an enrollment token (module docstring).

    Attributes:
        v: payload version (1).
        jti: unique id (random, base64url, 16..64 characters).
        fed: the federation (agreement ``federation``).
        party: the enrolling party (its key signs).
        role: the workload role the workload acts in.
        session: session scope (an FL session name), or None for any session.
        iat, exp: validity window, seconds since the epoch (UTC), ``iat < exp``.
        uses: how many attestations may use it (1..2**31-1), or None (no limit).
        cnf: the bound workload key, or None (any attested key).
    """

    v: Literal[1]
    jti: EnrollmentId
    fed: Name
    party: Name
    role: WorkloadRole
    session: SessionScope | None
    iat: NumericDate
    exp: NumericDate
    uses: Annotated[int, Field(ge=1, le=2**31 - 1)] | None
    cnf: Confirmation | None

    @property
    def issued_at(self) -> datetime:
        """``iat`` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.iat, UTC)

    @property
    def expires_at(self) -> datetime:
        """``exp`` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.exp, UTC)


class EnrollmentRevocation(_Payload):
    """The signed payload of a revocation: ``party`` revokes its enrollment ``jti``.

    Attributes:
        v: payload version (1).
        fed: the federation.
        party: the enrolling (and revoking) party.
        jti: the id of the revoked enrollment.
        iat: when the revocation was signed (seconds since the epoch).
    """

    v: Literal[1]
    fed: Name
    party: Name
    jti: EnrollmentId
    iat: NumericDate


def use_key(party: str, jti: str) -> str:
    """The KBS store key of an enrollment's uses and revocation: ``party/jti``."""
    return f"{party}/{jti}"


def jwk_thumbprint(jwk: Mapping[str, Any] | ECKey) -> str:
    """RFC 7638 SHA-256 thumbprint (base64url) of an EC P-256 public JWK.

    Raises:
        ParseError: not an EC P-256 key.
    """
    try:
        key = jwk if isinstance(jwk, ECKey) else ECKey.import_key(dict(jwk))
        if key.as_dict(private=False).get("crv") != "P-256":
            raise ParseError("the workload key must be an EC P-256 key")
        return str(key.thumbprint())
    except (JoseError, ValueError, TypeError, KeyError):
        raise ParseError("the workload key is not an EC P-256 JWK") from None


def _header(typ: str) -> bytes:
    return canonical_json({"alg": ENROLLMENT_ALG, "typ": typ})


def _sign(keys: PartyKeys, typ: str, payload: BaseModel) -> str:
    body = canonical_json(payload.model_dump(mode="json"))
    key = OKPKey.import_key(keys.sign_key)
    with warnings.catch_warnings():  # joserfc warns on any OKP use in some versions
        warnings.simplefilter("ignore")
        token = jws.serialize_compact(
            {"alg": ENROLLMENT_ALG, "typ": typ}, body, key, registry=_REGISTRY
        )
    if token.split(".", 1)[0] != b64url_encode(_header(typ)):  # pragma: no cover
        raise ParseError("the JWS library produced a non-canonical header")
    return token


def _now_utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ParseError("now must be timezone-aware")
    return now.astimezone(UTC)


def issue_enrollment(
    keys: PartyKeys,
    *,
    federation: str,
    role: str,
    now: datetime,
    expires: timedelta,
    session: str | None = None,
    uses: int | None = None,
    workload_key: Mapping[str, Any] | ECKey | None = None,
    rng: Callable[[int], bytes] = os.urandom,
) -> str:
    """Sign an enrollment token (party side: ``teeflow party enroll``).

    Args:
        keys: the enrolling party's keys (``keys.name`` becomes ``party``).
        federation: the agreement's federation name.
        role: workload role (``client``, ``aggregator``, ``compute``, ``serve``, ``kbs``).
        now: issue time (timezone-aware); ``iat`` is its whole seconds.
        expires: validity (1 s .. :data:`MAX_ENROLLMENT_LIFETIME`).
        session: session scope, or None for any session.
        uses: attestation budget (1..2**31-1), or None for no limit.
        workload_key: bind the token to this workload's EC P-256 public key (JWK or
            ``ECKey``), or None.
        rng: randomness for ``jti`` (16 bytes).

    Returns:
        The compact JWS (ASCII).

    Raises:
        ParseError: an invalid field (every problem named), a naive ``now``, a validity
            outside the bounds, or a workload key that is not EC P-256.
    """
    when = _now_utc(now)
    if not timedelta(seconds=1) <= expires <= MAX_ENROLLMENT_LIFETIME:
        raise ParseError(f"an enrollment is valid 1 s .. {MAX_ENROLLMENT_LIFETIME.days} days")
    iat = int(when.timestamp())
    doc = {
        "v": ENROLLMENT_VERSION,
        "jti": b64url_encode(rng(16)),
        "fed": federation,
        "party": keys.name,
        "role": role,
        "session": session,
        "iat": iat,
        "exp": iat + int(expires.total_seconds()),
        "uses": uses,
        "cnf": None if workload_key is None else {"jkt": jwk_thumbprint(workload_key)},
    }
    try:
        payload = Enrollment.model_validate(doc, strict=False)
    except ValidationError as exc:
        raise ParseError(f"invalid enrollment: {format_validation_error(exc)}") from None
    return _sign(keys, ENROLLMENT_TYP, payload)


def sign_revocation(
    keys: PartyKeys, *, federation: str, enrollment_id: str, now: datetime
) -> str:
    """Sign the revocation of enrollment ``enrollment_id`` (``teeflow party
    revoke-enrollment``); submit it to the KBS (``POST /v1/enrollments/revocations``).

    Raises:
        ParseError: invalid federation or id, or a naive ``now``.
    """
    doc = {
        "v": ENROLLMENT_VERSION,
        "fed": federation,
        "party": keys.name,
        "jti": enrollment_id,
        "iat": int(_now_utc(now).timestamp()),
    }
    try:
        payload = EnrollmentRevocation.model_validate(doc, strict=False)
    except ValidationError as exc:
        raise ParseError(f"invalid revocation: {format_validation_error(exc)}") from None
    return _sign(keys, REVOCATION_TYP, payload)


def _split(token: object, typ: str, what: str) -> tuple[bytes, str]:
    """Bounded structural parse: ``(payload bytes, token)``; the header must be canonical."""
    if not isinstance(token, str) or len(token) > MAX_ENROLLMENT_CHARS:
        raise ParseError(f"{what} is not a string of at most {MAX_ENROLLMENT_CHARS} characters")
    token = token.strip()
    if not _SEGMENTS.fullmatch(token):
        raise ParseError(f"{what} is not a JWS compact serialisation")
    header_b64, payload_b64, signature_b64 = token.split(".")
    if b64url_decode(header_b64) != _header(typ):
        raise ParseError(f"{what} header is not {{alg: {ENROLLMENT_ALG}, typ: {typ}}}")
    b64url_decode(signature_b64, length=64)
    return b64url_decode(payload_b64), token


def _payload(model: type[_Payload], raw: bytes, what: str) -> Any:
    try:
        parsed = model.model_validate_json(raw)
    except ValidationError as exc:
        raise ParseError(f"invalid {what}: {format_validation_error(exc)}") from None
    if canonical_json(parsed.model_dump(mode="json")) != raw:
        raise ParseError(f"{what} payload is not canonical JSON (RFC 8785)")
    return parsed


def read_enrollment(token: object) -> Enrollment:
    """Parse an enrollment token's structure (no signature check: see
    :func:`verify_enrollment`).

    Raises:
        ParseError: longer than :data:`MAX_ENROLLMENT_CHARS`, not a compact JWS, a header
            other than the canonical one, a payload that is not the canonical JSON of a
            valid :class:`Enrollment`, or ``iat >= exp``.
    """
    raw, _ = _split(token, ENROLLMENT_TYP, "enrollment")
    enrollment: Enrollment = _payload(Enrollment, raw, "enrollment")
    if enrollment.iat >= enrollment.exp:
        raise ParseError("enrollment iat must be before exp")
    return enrollment


def load_enrollment(path: Path | str) -> str:
    """Read an enrollment token file (``teeflow party enroll -o FILE``; the ``--enrollment``
    option of every role): at most :data:`MAX_ENROLLMENT_CHARS` characters, surrounding
    whitespace ignored, structure checked (:func:`read_enrollment`; the KBS checks the rest).

    Returns:
        The token text.

    Raises:
        ParseError: unreadable, too long, or not an enrollment token.
    """
    try:
        with Path(path).open("rb") as fh:
            raw = fh.read(MAX_ENROLLMENT_CHARS + 64)
    except OSError as exc:
        raise ParseError(f"cannot read enrollment {path}: {exc.strerror or exc}") from None
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ParseError(f"{path} is not an enrollment token (not ASCII)") from None
    read_enrollment(token)
    return token


def read_revocation(token: object) -> EnrollmentRevocation:
    """Parse a revocation's structure (no signature check).

    Raises:
        ParseError: as :func:`read_enrollment`.
    """
    raw, _ = _split(token, REVOCATION_TYP, "revocation")
    revocation: EnrollmentRevocation = _payload(EnrollmentRevocation, raw, "revocation")
    return revocation


def _verify_signature(token: str, agreement: FederationAgreement, party: str, what: str) -> None:
    spec = agreement.parties.get(party)
    if spec is None:
        raise PolicyViolation(
            f"{what} refused: {party} is not a party of the agreement",
            [f"{what} party {party} is not a party of the agreement"],
        )
    try:
        key = OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": spec.sign_key})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            jws.deserialize_compact(token, key, registry=_REGISTRY)
    except (JoseError, ValueError, TypeError):
        raise VerificationError(f"{what} signature of {party} does not verify") from None


def verify_enrollment(
    token: object, agreement: FederationAgreement, *, now: datetime
) -> Enrollment:
    """Check an enrollment token against the agreement in force at ``now``.

    Order: structure (:func:`read_enrollment`); the party is a party of ``agreement`` and
    its ``sign_key`` verifies the signature; then every policy reason: the federation is
    ``agreement.federation``, the party has a role that may enroll the workload role
    (:data:`ENROLLING_PARTY_ROLES`), ``iat <= now + MAX_CLOCK_SKEW``, ``now < exp``, and
    ``exp - iat <= MAX_ENROLLMENT_LIFETIME``. Use counts and revocations are the KBS store's
    (checked atomically with the attestation).

    Returns:
        The verified :class:`Enrollment`.

    Raises:
        ParseError: see :func:`read_enrollment`.
        VerificationError: the signature does not verify with the party's agreement key.
        PolicyViolation: the party is unknown, or any policy reason (all listed).
    """
    when = _now_utc(now)
    enrollment = verify_enrollment_signature(token, agreement)
    reasons = enrollment_policy_problems(enrollment, agreement, now=when)
    if reasons:
        raise PolicyViolation("enrollment refused: " + "; ".join(reasons), reasons)
    return enrollment


def verify_enrollment_signature(token: object, agreement: FederationAgreement) -> Enrollment:
    """The first half of :func:`verify_enrollment`: structure, and the party's signature with
    its ``sign_key`` in ``agreement`` (the result depends only on the token and the
    agreement, so a KBS may cache it per agreement).

    Raises:
        ParseError: see :func:`read_enrollment`.
        VerificationError: the signature does not verify with the party's agreement key.
        PolicyViolation: the party is not a party of the agreement.
    """
    enrollment = read_enrollment(token)
    assert isinstance(token, str)
    _verify_signature(token.strip(), agreement, enrollment.party, "enrollment")
    return enrollment


def enrollment_policy_problems(
    enrollment: Enrollment, agreement: FederationAgreement, *, now: datetime
) -> list[str]:
    """The second half of :func:`verify_enrollment`: every policy reason (federation, party
    role, validity window at ``now``) for a signature-checked enrollment; ``[]`` = valid."""
    when = _now_utc(now)
    reasons: list[str] = []
    if enrollment.party not in agreement.parties:
        return [f"enrollment party {enrollment.party} is not a party of the agreement"]
    if enrollment.fed != agreement.federation:
        reasons.append(
            f"enrollment is for federation {enrollment.fed}, not {agreement.federation}"
        )
    spec = agreement.parties[enrollment.party]
    allowed = ENROLLING_PARTY_ROLES.get(enrollment.role, frozenset())
    if not allowed & set(spec.roles):
        need = " or ".join(sorted(str(r) for r in allowed)) or "(none)"
        reasons.append(
            f"party {enrollment.party} may not enroll a {enrollment.role} workload (needs {need})"
        )
    if enrollment.issued_at > when + MAX_CLOCK_SKEW:
        reasons.append("enrollment is not valid yet (iat in the future)")
    if when >= enrollment.expires_at:
        reasons.append(f"enrollment expired at {enrollment.expires_at.isoformat()}")
    if enrollment.expires_at - enrollment.issued_at > MAX_ENROLLMENT_LIFETIME:
        reasons.append(f"enrollment validity exceeds {MAX_ENROLLMENT_LIFETIME.days} days")
    return reasons


def verify_revocation(
    token: object, agreement: FederationAgreement, *, now: datetime
) -> EnrollmentRevocation:
    """Check a revocation against the agreement in force: structure, the revoking party's
    signature, the federation, ``iat <= now + MAX_CLOCK_SKEW``.

    Raises:
        ParseError: malformed (see :func:`read_revocation`).
        VerificationError: the signature does not verify with the party's agreement key.
        PolicyViolation: unknown party, another federation, or a future ``iat``.
    """
    when = _now_utc(now)
    revocation = read_revocation(token)
    assert isinstance(token, str)
    _verify_signature(token.strip(), agreement, revocation.party, "revocation")
    reasons: list[str] = []
    if revocation.fed != agreement.federation:
        reasons.append(f"revocation is for federation {revocation.fed}")
    if datetime.fromtimestamp(revocation.iat, UTC) > when + MAX_CLOCK_SKEW:
        reasons.append("revocation iat is in the future")
    if reasons:
        raise PolicyViolation("revocation refused: " + "; ".join(reasons), reasons)
    return revocation


def binding_problems(
    enrollment: Enrollment,
    *,
    role: str,
    party: str | None,
    session: str | None,
    tee_pubkey: Mapping[str, Any],
) -> list[str]:
    """Every way an attestation does not match its (verified) enrollment.

    Args:
        enrollment: from :func:`verify_enrollment`.
        role: the role being appraised (claimed).
        party: the runtime-data ``party`` claim, or None (the enrollment supplies it).
        session: the runtime-data ``session`` claim, or None.
        tee_pubkey: the attested key (JWK as sent).

    Returns:
        ``[]`` when the role, the party claim, the session scope and the workload-key
        binding all match.
    """
    out: list[str] = []
    if enrollment.role != role:
        out.append(f"enrollment is for role {enrollment.role}, the workload claims {role}")
    if party is not None and party != enrollment.party:
        out.append(f"enrollment is by {enrollment.party}, the workload claims party {party}")
    if enrollment.session is not None and session != enrollment.session:
        out.append(f"enrollment is scoped to session {enrollment.session}")
    if enrollment.cnf is not None:
        try:
            thumbprint = jwk_thumbprint(tee_pubkey)
        except ParseError:
            thumbprint = ""
        if thumbprint != enrollment.cnf.jkt:
            out.append("enrollment is bound to another workload key")
    return out
