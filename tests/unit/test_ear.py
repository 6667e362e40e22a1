"""EAR issue/verify: round trips, tampering, algorithm confusion, time and nonce checks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey

from teeflow import __version__
from teeflow.attestation.appraisal import AttestationResult, EarStatus, TrustworthinessVector
from teeflow.attestation.ear import (
    EAR_PROFILE,
    encode_nonce,
    generate_ear_signing_key,
    issue_ear,
    verify_ear,
)
from teeflow.errors import VerificationError

NOW = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)
NONCE = bytes(range(32))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_result(
    *,
    violations: tuple[str, ...] = (),
    warnings: tuple[str, ...] = (),
    tv: TrustworthinessVector | None = None,
    emulated: bool = False,
) -> AttestationResult:
    claims: dict[str, Any] = {"mrenclave": "33" * 32, "isv_svn": 0, "advisories": ("A", "B")}
    if emulated:
        claims["teeflow.emulated"] = True
    return AttestationResult(
        tee="emulated-sgx" if emulated else "sgx",
        violations=violations,
        warnings=warnings,
        trust_vector=tv or TrustworthinessVector(executables=2, hardware=2, configuration=2),
        claims=claims,
        policy_id="sha256:" + "00" * 32,
        verified_at=NOW,
    )


@pytest.fixture(scope="module")
def key() -> ECKey:
    return generate_ear_signing_key()


@pytest.fixture(scope="module")
def public(key: ECKey) -> ECKey:
    return ECKey.import_key(key.as_dict(private=False))


def test_round_trip_single_result(key: ECKey, public: ECKey) -> None:
    token = issue_ear(make_result(), signing_key=key, now=NOW, nonce=NONCE)
    ear = verify_ear(token, public, now=NOW + timedelta(minutes=1), nonce=NONCE)
    assert ear.profile == EAR_PROFILE
    assert ear.issued_at == NOW
    assert ear.expires_at == NOW + timedelta(minutes=5)
    assert dict(ear.verifier_id) == {"developer": "teeflow", "build": f"teeflow {__version__}"}
    assert ear.nonce == b64(NONCE)
    assert list(ear.submods) == ["cpu0"]
    sub = ear.submods["cpu0"]
    assert sub.status is EarStatus.AFFIRMING
    assert sub.trust_vector == TrustworthinessVector(executables=2, hardware=2, configuration=2)
    assert sub.policy_id == "sha256:" + "00" * 32
    assert sub.tee == "sgx"
    assert sub.claims["mrenclave"] == "33" * 32
    assert sub.claims["advisories"] == ["A", "B"]
    assert sub.violations == () and sub.warnings == ()
    assert not sub.emulated and not ear.emulated
    assert ear.status is EarStatus.AFFIRMING


def test_token_layout(key: ECKey) -> None:
    token = issue_ear(
        make_result(emulated=True, warnings=("w",)), signing_key=key, now=NOW, nonce=None
    )
    header_b64, payload_b64, _ = token.split(".")
    header = json.loads(unb64(header_b64))
    payload = json.loads(unb64(payload_b64))
    assert header["alg"] == "ES256"
    assert header["kid"] == key.kid
    assert payload["eat_profile"] == "tag:github.com,2023:veraison/ear"
    assert payload["exp"] - payload["iat"] == 300
    assert "eat_nonce" not in payload
    sub = payload["submods"]["cpu0"]
    assert sub["ear.status"] == "warning"
    # draft-ietf-rats-ear: an appraisal extension MUST be a map -> one "teeflow" map
    assert not [k for k in sub if k.startswith("teeflow.")]
    assert sub["teeflow"]["emulated"] is True
    assert sub["teeflow"]["tee"] == "emulated-sgx"
    assert isinstance(sub["teeflow"]["violations"], list)
    assert sub["teeflow"]["claims"]["teeflow.emulated"] is True
    assert sub["ear.trustworthiness-vector"] == {
        "configuration": 2,
        "executables": 2,
        "hardware": 2,
    }


def test_multiple_submods_and_overall_status(key: ECKey, public: ECKey) -> None:
    results = {
        "cpu0": make_result(),
        "cpu1": make_result(emulated=True, warnings=("emulated",)),
        "gpu0": make_result(violations=("bad",), tv=TrustworthinessVector(hardware=96)),
    }
    token = issue_ear(
        results, signing_key=key, now=NOW, extra_claims={"teeflow.session": "s1"}, nonce=None
    )
    ear = verify_ear(token, public, now=NOW, nonce=None)
    assert {n: s.status for n, s in ear.submods.items()} == {
        "cpu0": EarStatus.AFFIRMING,
        "cpu1": EarStatus.WARNING,
        "gpu0": EarStatus.CONTRAINDICATED,
    }
    assert ear.status is EarStatus.CONTRAINDICATED
    assert ear.emulated
    assert ear.submods["gpu0"].violations == ("bad",)
    assert ear.claims["teeflow.session"] == "s1"


@pytest.mark.parametrize(
    ("tv", "violations", "warnings", "status"),
    [
        (TrustworthinessVector(hardware=2, executables=2), (), (), "affirming"),
        (TrustworthinessVector(hardware=32, executables=2), (), (), "warning"),
        (TrustworthinessVector(hardware=2, executables=2), (), ("w",), "warning"),
        (TrustworthinessVector(hardware=2, executables=96), ("v",), (), "contraindicated"),
        (TrustworthinessVector(), (), (), "none"),
    ],
)
def test_status_per_trust_vector(
    key: ECKey,
    public: ECKey,
    tv: TrustworthinessVector,
    violations: tuple[str, ...],
    warnings: tuple[str, ...],
    status: str,
) -> None:
    result = make_result(tv=tv, violations=violations, warnings=warnings)
    token = issue_ear(result, signing_key=key, now=NOW, nonce=None)
    ear = verify_ear(token, public, now=NOW, nonce=None)
    assert ear.submods["cpu0"].status == status
    assert ear.submods["cpu0"].trust_vector == tv


def test_string_nonce(key: ECKey, public: ECKey) -> None:
    token = issue_ear(make_result(), signing_key=key, now=NOW, nonce="rp-challenge-123")
    assert verify_ear(token, public, now=NOW, nonce="rp-challenge-123").nonce == "rp-challenge-123"
    # The same nonce given as bytes or as its base64url text verifies equally.
    token = issue_ear(make_result(), signing_key=key, now=NOW, nonce=NONCE)
    verify_ear(token, public, now=NOW, nonce=encode_nonce(NONCE))


def test_private_key_also_verifies(key: ECKey) -> None:
    token = issue_ear(make_result(), signing_key=key, now=NOW, nonce=None)
    verify_ear(token, key, now=NOW, nonce=None)


# ---------------------------------------------------------------- rejections


def test_tampered_payload(key: ECKey, public: ECKey) -> None:
    token = issue_ear(make_result(violations=("v",), tv=TrustworthinessVector(hardware=96)),
                      signing_key=key, now=NOW, nonce=None)  # fmt: skip
    h, p, s = token.split(".")
    payload = json.loads(unb64(p))
    payload["submods"]["cpu0"]["ear.status"] = "affirming"
    forged = ".".join([h, b64(json.dumps(payload).encode()), s])
    with pytest.raises(VerificationError, match="signature"):
        verify_ear(forged, public, now=NOW, nonce=None)


def test_tampered_signature(key: ECKey, public: ECKey) -> None:
    token = issue_ear(make_result(), signing_key=key, now=NOW, nonce=None)
    h, p, s = token.split(".")
    sig = bytearray(unb64(s))
    sig[10] ^= 0x01
    with pytest.raises(VerificationError):
        verify_ear(".".join([h, p, b64(bytes(sig))]), public, now=NOW, nonce=None)


def test_wrong_key(key: ECKey) -> None:
    token = issue_ear(make_result(), signing_key=key, now=NOW, nonce=None)
    other = generate_ear_signing_key()
    with pytest.raises(VerificationError, match="signature"):
        verify_ear(token, other, now=NOW, nonce=None)


def _claims(**overrides: Any) -> dict[str, Any]:
    iat = int(NOW.timestamp())
    claims: dict[str, Any] = {
        "eat_profile": EAR_PROFILE,
        "iat": iat,
        "exp": iat + 300,
        "ear.verifier-id": {"developer": "x", "build": "y"},
        "submods": {"cpu0": {"ear.status": "affirming"}},
    }
    for k, v in overrides.items():
        if v is None:
            claims.pop(k.replace("__", "."), None)
        else:
            claims[k.replace("__", ".")] = v
    return claims


def test_alg_none_rejected(public: ECKey) -> None:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64(json.dumps(_claims()).encode())
    for token in (f"{header}.{payload}.", f"{header}.{payload}.{b64(b'x')}"):
        with pytest.raises(VerificationError):
            verify_ear(token, public, now=NOW, nonce=None)


def test_hs256_rejected(public: ECKey) -> None:
    claims = _claims()
    oct_key = OctKey.import_key(b"0" * 32)
    token = jwt.encode({"alg": "HS256"}, claims, oct_key, algorithms=["HS256"])
    with pytest.raises(VerificationError):
        verify_ear(token, public, now=NOW, nonce=None)
    # Key confusion: HMAC keyed with the public key's JSON must not verify either.
    header = b64(json.dumps({"alg": "HS256"}).encode())
    payload = b64(json.dumps(claims).encode())
    secret = json.dumps(public.as_dict()).encode()
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    with pytest.raises(VerificationError):
        verify_ear(f"{header}.{payload}.{b64(mac)}", public, now=NOW, nonce=None)


def test_other_ec_alg_rejected() -> None:
    p384 = ECKey.generate_key("P-384")
    token = jwt.encode({"alg": "ES384"}, _claims(), p384, algorithms=["ES384"])
    with pytest.raises(ValueError, match="P-256"):
        verify_ear(token, p384, now=NOW, nonce=None)  # type: ignore[arg-type]
    p256 = generate_ear_signing_key()
    with pytest.raises(VerificationError):
        verify_ear(token, p256, now=NOW, nonce=None)


@pytest.mark.parametrize("garbage", ["", "a.b", "a.b.c", "....", "é.é.é", "x" * 70000])
def test_malformed_tokens(public: ECKey, garbage: str) -> None:
    with pytest.raises(VerificationError):
        verify_ear(garbage, public, now=NOW, nonce=None)


def test_expiry_and_leeway(key: ECKey, public: ECKey) -> None:
    token = issue_ear(
        make_result(), signing_key=key, now=NOW, ttl=timedelta(seconds=60), nonce=None
    )
    verify_ear(token, public, now=NOW + timedelta(seconds=59), nonce=None)
    with pytest.raises(VerificationError, match="expired"):
        verify_ear(token, public, now=NOW + timedelta(seconds=60), nonce=None)
    verify_ear(
        token, public, now=NOW + timedelta(seconds=60), leeway=timedelta(seconds=5), nonce=None
    )
    with pytest.raises(VerificationError, match="expired"):
        verify_ear(
            token, public, now=NOW + timedelta(days=1), leeway=timedelta(seconds=5), nonce=None
        )


def test_not_yet_valid(key: ECKey, public: ECKey) -> None:
    token = issue_ear(make_result(), signing_key=key, now=NOW, nonce=None)
    with pytest.raises(VerificationError, match="future"):
        verify_ear(token, public, now=NOW - timedelta(seconds=10), nonce=None)
    verify_ear(
        token, public, now=NOW - timedelta(seconds=10), leeway=timedelta(seconds=10), nonce=None
    )


def test_nonce_checks(key: ECKey, public: ECKey) -> None:
    token = issue_ear(make_result(), signing_key=key, now=NOW, nonce=NONCE)
    with pytest.raises(VerificationError, match="does not match"):
        verify_ear(token, public, now=NOW, nonce=bytes(32))
    without = issue_ear(make_result(), signing_key=key, now=NOW, nonce=None)
    with pytest.raises(VerificationError, match="no eat_nonce"):
        verify_ear(without, public, now=NOW, nonce=NONCE)
    verify_ear(without, public, now=NOW, nonce=None)  # nonce not requested


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"eat_profile": "tag:example.com,2024:other"}, "eat_profile"),
        ({"eat_profile": None}, "eat_profile"),
        ({"iat": None}, "iat"),
        ({"iat": "1751371200"}, "iat"),
        ({"exp": None}, "exp"),
        ({"exp": True}, "exp"),
        ({"ear__verifier-id": None}, "verifier-id"),
        ({"ear__verifier-id": {"developer": "x"}}, "verifier-id"),
        ({"submods": None}, "submods"),
        ({"submods": {}}, "submods"),
        ({"submods": {"cpu0": {}}}, "ear.status"),
        ({"submods": {"cpu0": {"ear.status": "great"}}}, "ear.status"),
        ({"submods": {"cpu0": {"ear.status": "affirming",
                               "ear.trustworthiness-vector": {"hw": 2}}}},
         "unknown trustworthiness claim"),
        ({"submods": {"cpu0": {"ear.status": "affirming", "teeflow": {"emulated": "yes"}}}},
         "emulated"),
        ({"submods": {"cpu0": {"ear.status": "affirming", "teeflow": "sgx"}}}, "must be a map"),
        ({"submods": {"cpu0": {"ear.status": "affirming", "teeflow": {"tee": 1}}}}, "tee"),
        ({"submods": {"cpu0": {"ear.status": "affirming", "teeflow": {"violations": "x"}}}},
         "violations"),
        ({"eat_nonce": 12345}, "eat_nonce"),
        ({"exp": 10**30}, "out of range"),
    ],
)  # fmt: skip
def test_missing_or_malformed_claims(
    key: ECKey, public: ECKey, overrides: dict[str, Any], fragment: str
) -> None:
    token = jwt.encode({"alg": "ES256", "kid": key.kid}, _claims(**overrides), key,
                       algorithms=["ES256"])  # fmt: skip
    with pytest.raises(VerificationError, match=fragment):
        verify_ear(token, public, now=NOW, nonce=None)


def test_issue_argument_checks(key: ECKey, public: ECKey) -> None:
    with pytest.raises(ValueError, match="private"):
        issue_ear(make_result(), signing_key=public, now=NOW, nonce=None)
    with pytest.raises(ValueError, match="timezone"):
        issue_ear(make_result(), signing_key=key, now=datetime(2025, 7, 1), nonce=None)
    with pytest.raises(ValueError, match="ttl"):
        issue_ear(make_result(), signing_key=key, now=NOW, ttl=timedelta(0), nonce=None)
    with pytest.raises(ValueError, match="at least one"):
        issue_ear({}, signing_key=key, now=NOW, nonce=None)
    with pytest.raises(ValueError, match="nonce"):
        issue_ear(make_result(), signing_key=key, now=NOW, nonce=b"short")
    with pytest.raises(ValueError, match="extra_claims"):
        issue_ear(make_result(), signing_key=key, now=NOW, extra_claims={"exp": 1}, nonce=None)
    with pytest.raises(ValueError, match="P-256"):
        issue_ear(make_result(), signing_key=OctKey.import_key(b"0" * 32), now=NOW, nonce=None)  # type: ignore[arg-type]
