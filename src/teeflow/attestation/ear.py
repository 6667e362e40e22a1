"""EAT Attestation Results (EAR) as signed JWTs: :func:`issue_ear` and :func:`verify_ear`.

Format: draft-ietf-rats-ear (EAT Attestation Results), JWT serialisation, with the profile
``tag:github.com,2023:veraison/ear`` (the claim names deployed by Veraison: ``ear.status``,
``ear.trustworthiness-vector``, ``ear.appraisal-policy-id``, ``ear.verifier-id``), on top of
EAT (RFC 9711: ``eat_profile``, ``eat_nonce``, ``submods``) and JWT (RFC 7519: ``iat``,
``exp``). Signed with ES256 (ECDSA P-256 / SHA-256, RFC 7518 §3.4) through ``joserfc``;
the header carries the signing key's ``kid`` (its RFC 7638 thumbprint by default).

Token shape (one submodule per appraised TEE; a single result is named ``cpu0``)::

    {"eat_profile": "tag:github.com,2023:veraison/ear",
     "iat": 1751328000, "exp": 1751328300,
     "ear.verifier-id": {"developer": "teeflow", "build": "teeflow 0.1.0"},
     "eat_nonce": "<base64url, no padding>",
     "submods": {"cpu0": {
         "ear.status": "warning",
         "ear.trustworthiness-vector": {"configuration": 2, "executables": 2, "hardware": 32, ...},
         "ear.appraisal-policy-id": "sha256:…",
         "teeflow": {                        # the teeflow appraisal extension (one map)
             "tee": "sgx",
             "claims": {"mrenclave": "…", "tcb_status": "…", ...},
             "violations": [], "warnings": ["…"],
             "emulated": true                # only for emulated evidence
         }
     }}}

teeflow's appraisal facts are one appraisal extension, the map ``teeflow``
(:data:`EXTENSION`): draft-ietf-rats-ear §3.2 ("An EAR appraisal extension MUST be a map")
— no dotted ``teeflow.*`` keys in a submodule.

Time is injected (``now``); nothing here reads the wall clock.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from teeflow import __version__
from teeflow.attestation.appraisal import AttestationResult, EarStatus, TrustworthinessVector
from teeflow.errors import ParseError, VerificationError

__all__ = [
    "EAR_ALGORITHM",
    "EAR_PROFILE",
    "EXTENSION",
    "MAX_EAR_BYTES",
    "Ear",
    "EarSubmod",
    "default_verifier_id",
    "encode_nonce",
    "generate_ear_signing_key",
    "issue_ear",
    "verify_ear",
]

#: ``eat_profile`` of the EAR JWT profile teeflow issues and accepts.
EAR_PROFILE = "tag:github.com,2023:veraison/ear"
#: Name of teeflow's appraisal extension (a map) in every submodule.
EXTENSION = "teeflow"
#: The only JWS algorithm issued and accepted.
EAR_ALGORITHM = "ES256"
#: Upper bound on an EAR token's length (characters) accepted by :func:`verify_ear`.
MAX_EAR_BYTES = 64 * 1024

_NONCE_MIN, _NONCE_MAX = 8, 64  # bytes, RFC 9711 §4.1 (eat_nonce byte-string size)
_RESERVED = {"eat_profile", "iat", "exp", "ear.verifier-id", "eat_nonce", "submods"}


def default_verifier_id() -> dict[str, str]:
    """``ear.verifier-id`` for this build: ``{"developer": "teeflow", "build": "teeflow X"}``."""
    return {"developer": "teeflow", "build": f"teeflow {__version__}"}


def generate_ear_signing_key() -> ECKey:
    """A fresh P-256 private key for signing EARs; ``kid`` = RFC 7638 thumbprint."""
    return ECKey.generate_key("P-256", private=True, auto_kid=True)


def _check_p256(key: object, *, private: bool) -> ECKey:
    if not isinstance(key, ECKey) or key.curve_name != "P-256":
        raise ValueError("EAR keys must be joserfc ECKey on P-256")
    if private and not key.is_private:
        raise ValueError("issuing an EAR needs the private key")
    return key


def _utc_seconds(now: datetime) -> int:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (UTC)")
    return int(now.timestamp())


def encode_nonce(nonce: str | bytes) -> str:
    """``eat_nonce`` JSON text for a nonce: bytes → base64url without padding (8..64 bytes);
    str → used verbatim (non-empty).

    Raises:
        ValueError: empty string, or bytes outside 8..64.
    """
    if isinstance(nonce, bytes | bytearray):
        if not _NONCE_MIN <= len(nonce) <= _NONCE_MAX:
            raise ValueError(f"nonce must be {_NONCE_MIN}..{_NONCE_MAX} bytes")
        return base64.urlsafe_b64encode(bytes(nonce)).rstrip(b"=").decode("ascii")
    if not isinstance(nonce, str) or not nonce:
        raise ValueError("nonce must be non-empty str or bytes")
    return nonce


def _submod(result: AttestationResult) -> dict[str, Any]:
    body: dict[str, Any] = {
        "ear.status": str(result.status),
        "ear.trustworthiness-vector": result.trust_vector.to_json(),
    }
    if result.policy_id is not None:
        body["ear.appraisal-policy-id"] = result.policy_id
    extension: dict[str, Any] = {
        "tee": result.tee,
        "claims": _thaw(result.claims),
        "violations": list(result.violations),
        "warnings": list(result.warnings),
    }
    if result.emulated:
        extension["emulated"] = True
    body[EXTENSION] = extension
    return body


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(v) for v in value]
    return value


def issue_ear(
    results: Mapping[str, AttestationResult] | AttestationResult,
    *,
    signing_key: ECKey,
    now: datetime,
    nonce: str | bytes | None,
    verifier_id: Mapping[str, str] | None = None,
    ttl: timedelta = timedelta(minutes=5),
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """Issue a signed EAR (compact JWS, ES256) for one or more Attestation Results.

    Args:
        results: one result (submodule ``cpu0``) or ``{submodule name: result}`` (non-empty).
        signing_key: P-256 private :class:`joserfc.jwk.ECKey`; its ``kid`` (or thumbprint)
            goes in the header.
        now: issuance time (timezone-aware); ``iat`` = ``now`` in whole seconds.
        nonce: the Relying Party's challenge (``eat_nonce``), see :func:`encode_nonce`;
            None (explicitly) for an EAR without freshness.
        verifier_id: ``ear.verifier-id`` (default :func:`default_verifier_id`).
        ttl: lifetime; ``exp = iat + ttl`` (must be positive).
        extra_claims: further top-level claims; may not override the EAR claims above.

    Returns:
        The JWT in compact serialisation (ASCII ``str``).

    Raises:
        ValueError: wrong key type/curve or public key, naive ``now``, non-positive ``ttl``,
            empty ``results``, bad nonce, or ``extra_claims`` colliding with EAR claims.
    """
    key = _check_p256(signing_key, private=True)
    iat = _utc_seconds(now)
    lifetime = int(ttl.total_seconds())
    if lifetime <= 0:
        raise ValueError("ttl must be at least one second")
    named = {"cpu0": results} if isinstance(results, AttestationResult) else dict(results)
    if not named:
        raise ValueError("at least one AttestationResult is needed")
    vid = dict(verifier_id) if verifier_id is not None else default_verifier_id()
    claims: dict[str, Any] = {
        "eat_profile": EAR_PROFILE,
        "iat": iat,
        "exp": iat + lifetime,
        "ear.verifier-id": vid,
        "submods": {str(name): _submod(result) for name, result in named.items()},
    }
    if nonce is not None:
        claims["eat_nonce"] = encode_nonce(nonce)
    if extra_claims:
        clash = _RESERVED.intersection(extra_claims)
        if clash:
            raise ValueError(f"extra_claims may not set {sorted(clash)}")
        claims.update(extra_claims)
    kid = key.kid or key.thumbprint()
    header = {"alg": EAR_ALGORITHM, "kid": kid, "typ": "JWT"}
    return jwt.encode(header, claims, key, algorithms=[EAR_ALGORITHM])


@dataclass(frozen=True)
class EarSubmod:
    """One appraised TEE inside an EAR.

    Attributes:
        status: ``ear.status``.
        trust_vector: ``ear.trustworthiness-vector`` (absent claims = 0).
        policy_id: ``ear.appraisal-policy-id`` or None.
        tee: ``teeflow`` map member ``tee``, or None (EARs from other issuers).
        claims: member ``claims`` (read-only; empty when absent).
        violations, warnings: members ``violations`` / ``warnings``.
        emulated: member ``emulated`` is true.
    """

    status: EarStatus
    trust_vector: TrustworthinessVector
    policy_id: str | None
    tee: str | None
    claims: Mapping[str, Any]
    violations: tuple[str, ...]
    warnings: tuple[str, ...]
    emulated: bool


@dataclass(frozen=True)
class Ear:
    """A verified EAR.

    Attributes:
        profile: ``eat_profile``.
        issued_at, expires_at: ``iat`` / ``exp`` as UTC datetimes.
        verifier_id: ``ear.verifier-id``.
        nonce: ``eat_nonce`` text or None.
        submods: submodule name → :class:`EarSubmod`.
        claims: every top-level claim as decoded (read-only).
    """

    profile: str
    issued_at: datetime
    expires_at: datetime
    verifier_id: Mapping[str, str]
    nonce: str | None
    submods: Mapping[str, EarSubmod]
    claims: Mapping[str, Any]

    @property
    def status(self) -> EarStatus:
        """The most severe ``ear.status`` among the submodules."""
        return max((s.status for s in self.submods.values()), key=lambda s: s.severity)

    @property
    def emulated(self) -> bool:
        """True if any submodule is emulated."""
        return any(s.emulated for s in self.submods.values())


def _str_list(value: object, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise VerificationError(f"EAR claim {name} must be a list of strings")
    return tuple(value)


def _parse_submod(name: str, body: object) -> EarSubmod:
    if not isinstance(body, Mapping):
        raise VerificationError(f"EAR submod {name!r} must be an object")
    raw_status = body.get("ear.status")
    try:
        status = EarStatus(str(raw_status))
    except ValueError:
        raise VerificationError(f"EAR submod {name!r}: missing or invalid ear.status") from None
    try:
        vector = TrustworthinessVector.from_json(body.get("ear.trustworthiness-vector", {}))
    except ParseError as exc:
        raise VerificationError(f"EAR submod {name!r}: {exc}") from None
    policy_id = body.get("ear.appraisal-policy-id")
    if policy_id is not None and not isinstance(policy_id, str):
        raise VerificationError(f"EAR submod {name!r}: ear.appraisal-policy-id must be a string")
    extension = body.get(EXTENSION, {})
    if not isinstance(extension, Mapping):
        raise VerificationError(f"EAR submod {name!r}: appraisal extension teeflow must be a map")
    tee = extension.get("tee")
    claims = extension.get("claims", {})
    if tee is not None and not isinstance(tee, str):
        raise VerificationError(f"EAR submod {name!r}: teeflow.tee must be a string")
    if not isinstance(claims, Mapping):
        raise VerificationError(f"EAR submod {name!r}: teeflow.claims must be an object")
    emulated = extension.get("emulated", False)
    if not isinstance(emulated, bool):
        raise VerificationError(f"EAR submod {name!r}: teeflow.emulated must be a boolean")
    return EarSubmod(
        status=status,
        trust_vector=vector,
        policy_id=policy_id,
        tee=tee,
        claims=MappingProxyType(dict(claims)),
        violations=_str_list(extension.get("violations"), "teeflow.violations"),
        warnings=_str_list(extension.get("warnings"), "teeflow.warnings"),
        emulated=emulated,
    )


def _int_claim(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise VerificationError(f"EAR claim {name} missing or not an integer")
    return value


def _to_datetime(seconds: int, name: str) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise VerificationError(f"EAR claim {name} out of range") from None


def verify_ear(
    token: str | bytes,
    key: ECKey,
    *,
    now: datetime,
    nonce: str | bytes | None,
    leeway: timedelta = timedelta(0),
) -> Ear:
    """Verify an EAR JWT's signature, profile, lifetime and nonce; return the parsed view.

    Args:
        token: compact JWS (at most :data:`MAX_EAR_BYTES`).
        key: the Verifier's P-256 public (or private) :class:`joserfc.jwk.ECKey`.
        now: verification time (timezone-aware).
        nonce: expected ``eat_nonce`` (same encoding as :func:`issue_ear`); required keyword:
            pass None explicitly to skip the freshness check.
        leeway: tolerated clock skew (>= 0) for ``iat`` and ``exp``.

    Returns:
        :class:`Ear`.

    Raises:
        VerificationError: malformed token; ``alg`` other than ES256 (``none``, ``HS256``,
            ...); bad signature or wrong key; ``eat_profile`` not :data:`EAR_PROFILE`; missing
            or malformed ``iat``/``exp``/``ear.verifier-id``/``submods``/``ear.status``;
            expired (``now >= exp + leeway``); issued in the future (``iat > now + leeway``);
            nonce missing or different.
        ValueError: ``key`` not a P-256 ECKey, naive ``now``, negative ``leeway``.
    """
    _check_p256(key, private=False)
    now_s = _utc_seconds(now)
    skew = int(leeway.total_seconds())
    if skew < 0:
        raise ValueError("leeway must not be negative")
    if isinstance(token, bytes):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise VerificationError("EAR token is not ASCII") from None
    if len(token) > MAX_EAR_BYTES:
        raise VerificationError(f"EAR token longer than {MAX_EAR_BYTES} bytes")
    try:
        decoded = jwt.decode(token, key, algorithms=[EAR_ALGORITHM])
    except JoseError as exc:
        raise VerificationError(f"EAR token rejected: {exc.error}") from None
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise VerificationError("EAR token is malformed") from None
    if decoded.header.get("alg") != EAR_ALGORITHM:  # defence in depth
        raise VerificationError("EAR token alg must be ES256")
    claims = decoded.claims
    if not isinstance(claims, Mapping):
        raise VerificationError("EAR payload is not a JSON object")
    if claims.get("eat_profile") != EAR_PROFILE:
        raise VerificationError(f"EAR eat_profile is not {EAR_PROFILE}")
    iat = _int_claim(claims, "iat")
    exp = _int_claim(claims, "exp")
    if now_s >= exp + skew:
        raise VerificationError("EAR expired")
    if iat > now_s + skew:
        raise VerificationError("EAR issued in the future (iat after now)")
    vid = claims.get("ear.verifier-id")
    if not (
        isinstance(vid, Mapping)
        and isinstance(vid.get("developer"), str)
        and isinstance(vid.get("build"), str)
    ):
        raise VerificationError("EAR ear.verifier-id missing or malformed")
    token_nonce = claims.get("eat_nonce")
    if token_nonce is not None and not isinstance(token_nonce, str):
        raise VerificationError("EAR eat_nonce must be a string")
    if nonce is not None:
        try:
            expected = encode_nonce(nonce)
        except ValueError:
            raise VerificationError("expected nonce is malformed") from None
        if token_nonce is None:
            raise VerificationError("EAR has no eat_nonce")
        if not hmac.compare_digest(token_nonce.encode(), expected.encode()):
            raise VerificationError("EAR eat_nonce does not match")
    raw_submods = claims.get("submods")
    if not isinstance(raw_submods, Mapping) or not raw_submods:
        raise VerificationError("EAR submods missing or empty")
    submods = {str(n): _parse_submod(str(n), body) for n, body in raw_submods.items()}
    return Ear(
        profile=EAR_PROFILE,
        issued_at=_to_datetime(iat, "iat"),
        expires_at=_to_datetime(exp, "exp"),
        verifier_id=MappingProxyType({k: str(v) for k, v in vid.items()}),
        nonce=token_nonce,
        submods=MappingProxyType(submods),
        claims=MappingProxyType(dict(claims)),
    )
