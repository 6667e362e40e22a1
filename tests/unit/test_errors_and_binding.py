"""The error tree and the RCAR report-data binding."""

from __future__ import annotations

import hashlib

import pytest
import rfc8785

from teeflow import errors
from teeflow.attestation.binding import check_report_data, runtime_data_digest

JWK = {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
       "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}


def test_every_error_derives_from_root_with_unique_code() -> None:
    classes = [getattr(errors, n) for n in errors.__all__]
    assert all(issubclass(c, errors.Error) for c in classes)
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes))
    assert issubclass(errors.CollateralError, errors.VerificationError)
    assert not issubclass(errors.ParseError, errors.VerificationError)


def test_policy_violation_keeps_every_reason() -> None:
    exc = errors.PolicyViolation("denied", ["a", "b"])
    assert exc.violations == ["a", "b"]
    assert errors.PolicyViolation("only").violations == ["only"]


def test_binding_is_sha384_of_canonical_json_zero_padded() -> None:
    got = runtime_data_digest(tee_pubkey=JWK, nonce="bm9uY2U=")
    # Trustee's kbs_protocol binds exactly these three members ("" without additional evidence)
    expected = hashlib.sha384(
        rfc8785.dumps({"tee-pubkey": JWK, "nonce": "bm9uY2U=", "additional-evidence": ""})
    ).digest()
    assert got == expected + b"\0" * 16
    # member order does not matter (RFC 8785), content does
    reordered = dict(reversed(list(JWK.items())))
    assert runtime_data_digest(tee_pubkey=reordered, nonce="bm9uY2U=") == got
    assert runtime_data_digest(tee_pubkey=JWK, nonce="bm9uY2V=") != got
    with_claims = runtime_data_digest(tee_pubkey=JWK, nonce="bm9uY2U=", teeflow={"role": "client"})
    assert with_claims != got


def test_check_report_data() -> None:
    rd = runtime_data_digest(tee_pubkey=JWK, nonce="x")
    check_report_data(rd, rd)
    flipped = bytes([rd[0] ^ 1]) + rd[1:]
    with pytest.raises(errors.VerificationError):
        check_report_data(flipped, rd)
    with pytest.raises(errors.VerificationError):
        check_report_data(rd[:63], rd)


def test_non_json_runtime_data_is_a_parse_error() -> None:
    with pytest.raises(errors.ParseError):
        runtime_data_digest(tee_pubkey={"x": float("nan")}, nonce="n")
