"""KBS wire models (Trustee KBS 0.4.0 shapes), the REPORT_DATA binding, the problem catalog
and the collateral providers."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from joserfc.jwk import ECKey
from pydantic import ValidationError

from teeflow.attestation.binding import runtime_data_digest
from teeflow.attestation.dcap.quote import parse_quote
from teeflow.kbs.api import problems
from teeflow.kbs.protocol import (
    MAX_ADDITIONAL_EVIDENCE_CHARS,
    MAX_ATTEST_BODY_BYTES,
    MAX_AUTH_BODY_BYTES,
    AttestRequest,
    AuthRequest,
    Challenge,
    CompositeEvidence,
    SgxEvidence,
    TeePubKey,
    decode_json,
    is_counter_name,
    is_resource_path,
)
from teeflow.kbs.service.collateral import (
    CollateralProvider,
    CompositeCollateralProvider,
    DirectoryCollateralProvider,
    EmulatedCollateralProvider,
    quote_fmspc,
)
from teeflow.testing.evidence import DEFAULT_NOW, emulated_authority, make_emulated_quote

KEY = ECKey.generate_key("P-256", private=True)
JWK = dict(KEY.as_dict(private=False), alg="ECDH-ES+A256KW")
NONCE = base64.b64encode(b"\x07" * 32).decode()


def attestation_json(**runtime_extra: Any) -> dict[str, Any]:
    return {
        "runtime-data": {"nonce": NONCE, "tee-pubkey": JWK, **runtime_extra},
        "tee-evidence": {"primary_evidence": {"quote": "AAAA"}, "additional_evidence": ""},
    }


# -- Request / Challenge ----------------------------------------------------------------------


def test_trustee_request_shape() -> None:
    # what guest-components' kbs_protocol client sends (extra-params lists hash algorithms)
    body = json.dumps({"version": "0.4.0", "tee": "sgx",
                       "extra-params": {"supported-hash-algorithms": ["sha256", "sha384"]}})
    req = decode_json(AuthRequest, body, max_bytes=MAX_AUTH_BODY_BYTES)
    assert (req.version, req.tee) == ("0.4.0", "sgx")
    assert req.to_wire()["extra-params"] == {"supported-hash-algorithms": ["sha256", "sha384"]}
    # the older form with extra-params "" and without it
    assert AuthRequest.model_validate({"version": "0.4.0", "tee": "sgx", "extra-params": ""})
    assert AuthRequest.model_validate({"version": "0.4.0", "tee": "sgx"}).extra_params == ""


@pytest.mark.parametrize(
    "doc",
    [
        {"version": "0.4.0", "tee": "sgx", "surprise": 1},
        {"version": "0.4.0", "tee": "SGX"},
        {"version": "0.4.0", "tee": "x" * 33},
        {"version": "0" * 33, "tee": "sgx"},
        {"version": "0.4.0", "tee": "sgx", "extra-params": {"a": "b" * 5000}},
        {"tee": "sgx"},
    ],
)
def test_request_bounds(doc: dict[str, Any]) -> None:
    with pytest.raises(problems.InvalidRequest):
        decode_json(AuthRequest, json.dumps(doc), max_bytes=MAX_AUTH_BODY_BYTES)


def test_challenge_wire_names() -> None:
    assert Challenge(nonce="bm9uY2U=").to_wire() == {"nonce": "bm9uY2U=", "extra-params": ""}


def test_decode_json_errors() -> None:
    with pytest.raises(problems.PayloadTooLarge) as exc:
        decode_json(AuthRequest, b" " * (MAX_AUTH_BODY_BYTES + 1), max_bytes=MAX_AUTH_BODY_BYTES)
    assert exc.value.status == 413
    for body in (b"", b"{", b"[]", b"\xff\xfe", b'{"version": 1, "tee": "sgx"}'):
        with pytest.raises(problems.InvalidRequest) as bad:
            decode_json(AuthRequest, body, max_bytes=MAX_AUTH_BODY_BYTES)
        assert bad.value.status == 400


# -- Attestation -------------------------------------------------------------------------------


def test_attestation_composite_and_bare_shapes() -> None:
    req = AttestRequest.model_validate(attestation_json())
    assert isinstance(req.tee_evidence, CompositeEvidence)
    assert req.composite().additional_evidence == ""
    bare = AttestRequest.model_validate(
        {"runtime-data": {"nonce": NONCE, "tee-pubkey": JWK}, "tee-evidence": {"quote": "AAAA"}})
    assert isinstance(bare.tee_evidence, SgxEvidence)
    assert bare.composite().primary_evidence == {"quote": "AAAA"}
    with_init = dict(attestation_json(), **{"init-data": {"format": "toml", "body": "x = 1"}})
    assert AttestRequest.model_validate(with_init).init_data is not None


def test_runtime_data_is_kept_exactly_for_the_binding() -> None:
    claims = {"role": "client", "party": "alice", "package_digest": "ab" * 32,
              "function": "train", "resources": ["a/b/c"]}
    doc = attestation_json(teeflow=claims)
    req = AttestRequest.model_validate_json(json.dumps(doc))
    rd = req.runtime_data
    assert rd.tee_pubkey.as_jwk() == JWK
    assert rd.teeflow_members() == claims  # unset members stay absent, nothing normalised
    assert rd.to_wire()["tee-pubkey"]["alg"] == "ECDH-ES+A256KW"
    no_alg = {k: v for k, v in JWK.items() if k != "alg"}
    rd2 = AttestRequest.model_validate(attestation_json() | {
        "runtime-data": {"nonce": NONCE, "tee-pubkey": no_alg}}).runtime_data
    assert rd2.tee_pubkey.as_jwk() == no_alg


@pytest.mark.parametrize(
    "change",
    [
        {"tee-pubkey": dict(JWK, kty="RSA")},
        {"tee-pubkey": dict(JWK, crv="P-384")},
        {"tee-pubkey": dict(JWK, x=JWK["y"])},  # not on the curve
        {"tee-pubkey": dict(JWK, x=JWK["x"][:-1])},
        {"tee-pubkey": dict(JWK, d="AAAA")},  # private member refused
        {"tee-pubkey": dict(JWK, alg="RSA1_5")},
        {"teeflow": {"role": "root"}},
        {"teeflow": {"role": "client", "package_digest": "AB" * 32}},  # upper case
        {"teeflow": {"role": "client", "resources": ["a/b"]}},
        {"teeflow": {"role": "client", "resources": [f"a/b/c{i}" for i in range(65)]}},
        {"teeflow": {"role": "client", "extra": 1}},
        {"surprise": 1},
        {"nonce": "n" * 129},
    ],
)
def test_runtime_data_refusals(change: dict[str, Any]) -> None:
    doc = attestation_json()
    doc["runtime-data"] = {**doc["runtime-data"], **change}
    with pytest.raises(ValidationError):
        AttestRequest.model_validate(doc)


def test_evidence_bounds() -> None:
    big = attestation_json()
    # bound raised from 64 KiB to 192 KiB for GPU evidence (8 GPUs in Trustee's shape)
    big["tee-evidence"]["additional_evidence"] = "x" * (MAX_ADDITIONAL_EVIDENCE_CHARS + 1)
    with pytest.raises(ValidationError):
        AttestRequest.model_validate(big)
    with pytest.raises(problems.PayloadTooLarge):
        decode_json(AttestRequest, b"{" + b" " * MAX_ATTEST_BODY_BYTES + b"}",
                    max_bytes=MAX_ATTEST_BODY_BYTES)
    with pytest.raises(ValueError, match="base64"):
        SgxEvidence(quote="not base64!").quote_bytes()
    assert SgxEvidence(quote=base64.b64encode(b"q").decode()).quote_bytes() == b"q"


def test_tee_pubkey_to_cryptography_key() -> None:
    pub = TeePubKey.model_validate(JWK)
    assert pub.public_key().public_numbers() == KEY.public_key.public_numbers()  # type: ignore[union-attr]


# -- the REPORT_DATA binding (Trustee compatibility) -----------------------------------------------


def test_canonical_json_matches_trustee_vector() -> None:
    # attestation-service/src/lib.rs test vector: SHA-384 of serde_json_canonicalizer output
    doc = {"b": 1, "a": "test", "c": {"d": "e"}}
    assert hashlib.sha384(rfc8785.dumps(doc)).hexdigest() == (
        "e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c"
        "4597480a186427c813ca941da78870c3")


def test_binding_without_teeflow_is_trustees() -> None:
    # guest-components kbs_protocol: {"tee-pubkey", "nonce", "additional-evidence": ""}
    trustee = {"tee-pubkey": JWK, "nonce": NONCE, "additional-evidence": ""}
    expected = hashlib.sha384(rfc8785.dumps(trustee)).digest() + bytes(16)
    assert runtime_data_digest(tee_pubkey=JWK, nonce=NONCE) == expected
    ae = '{"sampledevice":{"evidence":"x"}}'
    with_ae = hashlib.sha384(rfc8785.dumps(dict(trustee, **{"additional-evidence": ae})))
    assert runtime_data_digest(tee_pubkey=JWK, nonce=NONCE, additional_evidence=ae)[:48] == (
        with_ae.digest())
    assert runtime_data_digest(tee_pubkey=JWK, nonce=NONCE, teeflow={"role": "client"}) != expected


# -- problems ----------------------------------------------------------------------------


def test_problem_catalog() -> None:
    uris = list(problems.PROBLEM_TYPES)
    assert len(uris) == len(set(uris)) == 16  # + RequestUnsigned (issue 10)
    trustee = {c.name for c in problems.PROBLEM_TYPES.values()
               if c.prefix == problems.TRUSTEE_PREFIX}
    assert trustee == {"AttestationError", "InvalidRequestPath", "PolicyDeny", "TokenNotFound",
                       "TokenVerifierError"}
    assert problems.PolicyDeny.type_uri() == (
        "https://github.com/confidential-containers/kbs/errors/PolicyDeny")
    statuses = {c.status for c in problems.PROBLEM_TYPES.values()}
    assert statuses == {400, 401, 403, 404, 409, 413, 503}
    exc = problems.AttestationFailed("denied: x", ["x", "y"])
    body = exc.to_dict()
    assert body == {"type": problems.AttestationFailed.type_uri(), "title": "Attestation failed",
                    "status": 401, "detail": "denied: x"}
    assert exc.reasons == ["x", "y"] and "reasons" not in body
    assert problems.PolicyDeny().detail == "Access denied by policy"
    assert len(problems.InvalidRequest("z" * 5000).detail) == problems.MAX_DETAIL_CHARS
    assert isinstance(exc, problems.KbsProblem)


def test_path_and_counter_names() -> None:
    assert is_resource_path("alice/dataset-key/v1")
    for bad in ("a/b", "a/b/c/d", "../b/c", "a//c", ".a/b/c", "a/b/c\n", 5, "é/b/c"):
        assert not is_resource_path(bad)
    assert is_counter_name("session/s-1/round") and not is_counter_name("a/../b")


# -- collateral providers ----------------------------------------------------------------


def test_collateral_providers(tmp_path: Path) -> None:
    authority = emulated_authority()
    quote = parse_quote(make_emulated_quote(b"x", now=DEFAULT_NOW)[0])
    fmspc = quote_fmspc(quote)
    assert fmspc is not None and len(fmspc) == 6

    emu = EmulatedCollateralProvider(authority)
    assert isinstance(emu, CollateralProvider)
    got = emu.for_quote(quote, now=DEFAULT_NOW)
    assert got is not None and got.tcb_info.fmspc == fmspc
    assert emu.for_quote(quote, now=DEFAULT_NOW, anchor=authority.trust_anchor()) is not None
    from teeflow.attestation.trust import intel_sgx_root_ca

    assert emu.for_quote(quote, now=DEFAULT_NOW, anchor=intel_sgx_root_ca()) is None

    one = authority.write_collateral_dir(tmp_path / "sets" / "one", now=DEFAULT_NOW)
    by_dir = DirectoryCollateralProvider([one])
    assert by_dir.fmspcs == (fmspc,)
    coll = by_dir.for_quote(quote, now=DEFAULT_NOW)
    assert coll is not None and coll.tcb_info.fmspc == fmspc
    parent = DirectoryCollateralProvider([tmp_path / "sets"])  # subdirectories are scanned
    assert parent.for_quote(quote, now=DEFAULT_NOW) is not None
    empty = DirectoryCollateralProvider([])
    assert empty.for_quote(quote, now=DEFAULT_NOW) is None
    assert CompositeCollateralProvider([empty, by_dir]).for_quote(quote, now=DEFAULT_NOW) is coll
    from teeflow.errors import CollateralError

    with pytest.raises(CollateralError):
        DirectoryCollateralProvider([tmp_path / "missing"])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tcb_info.json").write_text("{}")
    with pytest.raises(CollateralError):
        DirectoryCollateralProvider([tmp_path / "broken"])
