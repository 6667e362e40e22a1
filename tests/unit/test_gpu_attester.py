"""GPU attester (NVML) against the emulated NVIDIA stand-in; Trustee's evidence shape;
Blackwell leaves (FWID under 2.23.133.5.4.1.1); attack tests on the verifier side."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from teeflow.attestation.additional_evidence import (
    encode_additional_evidence,
    parse_additional_evidence,
)
from teeflow.attestation.nvidia import GpuPolicy, appraise_gpu, verify
from teeflow.attestation.nvidia.trustee import gpu_nonce, load_device_evidence_list
from teeflow.attestation.nvidia.verify import architecture_of, leaf_fwid
from teeflow.attestation.trust.nvidia import nvidia_device_identity_ca
from teeflow.errors import ParseError, PlatformError, VerificationError
from teeflow.platform.emulated_nvidia import EmulatedNvidiaAuthority, EmulatedNvml
from teeflow.platform.nvidia import GpuAttester, gpu_attester_for

NONCE = bytes(range(32))


def _now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture(scope="module")
def authority() -> EmulatedNvidiaAuthority:
    return EmulatedNvidiaAuthority.generate()


def _attest(authority: EmulatedNvidiaAuthority, arch: str, count: int = 1) -> dict[str, object]:
    gpus = [authority.device(arch, index=i) for i in range(count)]
    return GpuAttester(EmulatedNvml(gpus), kind="emulated").evidence(NONCE)


@pytest.mark.parametrize("arch", ["HOPPER", "BLACKWELL"])
def test_attester_round_trip(authority: EmulatedNvidiaAuthority, arch: str) -> None:
    evidence = _attest(authority, arch, count=2)
    devices = load_device_evidence_list(evidence)
    assert len(devices) == 2
    policy = GpuPolicy(allowed_architectures=frozenset({arch}), allow_emulated=True).with_nonce(
        NONCE
    )
    for dev in devices:
        verified = verify(dev, now=_now(), anchors=[authority.trust_anchor()], nonce=NONCE)
        assert verified.arch == arch and verified.emulated
        result = appraise_gpu(verified, policy)
        assert result.accepted, result.violations


def test_blackwell_leaf_fwid_under_alias_oid(authority: EmulatedNvidiaAuthority) -> None:
    gpu = authority.device("BLACKWELL")
    leaf = x509.load_pem_x509_certificates(gpu.chain_pem)[0]
    oids = {e.oid.dotted_string for e in leaf.extensions}
    assert "2.23.133.5.4.1.1" in oids and "2.23.133.5.4.1" not in oids
    fwid = leaf_fwid(leaf)
    assert fwid is not None and fwid.digest == gpu.fwid
    assert architecture_of(leaf) == "BLACKWELL"


def test_blackwell_not_accepted_by_hopper_only_policy(authority: EmulatedNvidiaAuthority) -> None:
    dev = load_device_evidence_list(_attest(authority, "BLACKWELL"))[0]
    verified = verify(dev, now=_now(), anchors=[authority.trust_anchor()], nonce=NONCE)
    result = appraise_gpu(verified, GpuPolicy(allow_emulated=True).with_nonce(NONCE))
    assert "GPU architecture BLACKWELL not allowed" in result.violations


def test_emulated_root_refused_unless_allowed(authority: EmulatedNvidiaAuthority) -> None:
    dev = load_device_evidence_list(_attest(authority, "HOPPER"))[0]
    # only NVIDIA's real root: the emulated chain does not verify at all
    with pytest.raises(VerificationError):
        verify(dev, now=_now(), anchors=[nvidia_device_identity_ca()], nonce=NONCE)
    verified = verify(dev, now=_now(), anchors=[authority.trust_anchor()], nonce=NONCE)
    result = appraise_gpu(verified, GpuPolicy().with_nonce(NONCE))
    assert not result.accepted
    assert any("emulat" in v for v in result.violations)


def test_tampered_gpu_evidence_refused(authority: EmulatedNvidiaAuthority) -> None:
    evidence = _attest(authority, "HOPPER")
    entry = evidence["device_evidence_list"][0]  # type: ignore[index]
    raw = bytearray(base64.b64decode(entry["evidence"]))
    raw[60] ^= 1  # inside the first measurement block
    entry["evidence"] = base64.b64encode(bytes(raw)).decode()
    dev = load_device_evidence_list(evidence)[0]
    with pytest.raises(VerificationError, match="signature"):
        verify(dev, now=_now(), anchors=[authority.trust_anchor()], nonce=NONCE)


def test_declared_arch_must_match_certificate(authority: EmulatedNvidiaAuthority) -> None:
    evidence = _attest(authority, "HOPPER")
    evidence["device_evidence_list"][0]["arch"] = "BLACKWELL"  # type: ignore[index]
    dev = load_device_evidence_list(evidence)[0]
    with pytest.raises(VerificationError, match="declared arch"):
        verify(dev, now=_now(), anchors=[authority.trust_anchor()])


def test_hex_evidence_accepted_as_trustee_does(authority: EmulatedNvidiaAuthority) -> None:
    evidence = _attest(authority, "HOPPER")
    entry = evidence["device_evidence_list"][0]  # type: ignore[index]
    entry["evidence"] = base64.b64decode(entry["evidence"]).hex()
    dev = load_device_evidence_list(evidence)[0]
    verify(dev, now=_now(), anchors=[authority.trust_anchor()], nonce=NONCE)


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        {},
        {"device_evidence_list": []},
        {"device_evidence_list": [{"arch": "LS10", "evidence": "00", "certificate": "AA=="}]},
        {"device_evidence_list": [{"arch": "HOPPER", "evidence": "!!", "certificate": "AA=="}]},
        {"device_evidence_list": ["x"]},
    ],
)
def test_device_list_parser_is_total(value: object) -> None:
    with pytest.raises(ParseError):
        load_device_evidence_list(value)


def test_additional_evidence_parsing() -> None:
    assert parse_additional_evidence("") == {}
    assert parse_additional_evidence("{}") == {}
    assert parse_additional_evidence('{"nvidia": {"a": 1}}') == {"nvidia": {"a": 1}}
    for bad in ("[]", "{", '{"nvidia":1,"nvidia":2}', '{"NV IDIA": 1}', "x" * 300_000,
                '{"nvidia":' + "[" * 40 + "]" * 40 + "}"):  # fmt: skip
        with pytest.raises(ParseError):
            parse_additional_evidence(bad)
    assert encode_additional_evidence({}) == ""
    assert json.loads(encode_additional_evidence({"nvidia": {"x": 1}})) == {"nvidia": {"x": 1}}


def test_gpu_nonce_is_trustee_device_report_data() -> None:
    import hashlib

    import rfc8785

    jwk = {"kty": "EC", "crv": "P-256", "x": "AA", "y": "BB"}
    doc = rfc8785.dumps({"tee-pubkey": jwk, "nonce": "bm9uY2U="})
    assert gpu_nonce(tee_pubkey=jwk, nonce="bm9uY2U=") == hashlib.sha384(doc).digest()[:32]


def test_attester_refuses_cc_off_and_devtools(authority: EmulatedNvidiaAuthority) -> None:
    gpus = [authority.device("HOPPER")]
    with pytest.raises(PlatformError, match="CC mode"):
        GpuAttester(EmulatedNvml(gpus, cc_enabled=False)).evidence(NONCE)
    with pytest.raises(PlatformError, match="devtools"):
        GpuAttester(EmulatedNvml(gpus, devtools=True)).evidence(NONCE)
    with pytest.raises(PlatformError, match="GPUs"):
        GpuAttester(EmulatedNvml([])).evidence(NONCE)
    with pytest.raises(PlatformError, match="32 bytes"):
        GpuAttester(EmulatedNvml(gpus)).evidence(b"short")


def test_gpu_attester_for(tmp_path: Path) -> None:
    assert gpu_attester_for("none") is None
    attester = gpu_attester_for("emulated-blackwell", home=tmp_path, count=2)
    assert attester is not None and attester.kind == "emulated" and attester.tee == "nvidia"
    assert len(attester.evidence(NONCE)["device_evidence_list"]) == 2
    assert (tmp_path / "emulation" / "nvidia" / "root.key.pem").stat().st_mode & 0o077 == 0
    again = EmulatedNvidiaAuthority.load_or_create(tmp_path)
    assert again.root == EmulatedNvidiaAuthority.load_or_create(tmp_path).root
    with pytest.raises(PlatformError, match="--gpu must be"):
        gpu_attester_for("cuda")


def test_role_entry_points_take_gpu() -> None:
    from teeflow.fl.entry import aggregator_parser, client_parser

    a = aggregator_parser().parse_args(
        ["--pin", "p", "--session", "s", "--rounds", "1", "--min-clients", "1",
         "--gpu", "emulated-hopper", "--enrollment", "e"]
    )  # fmt: skip
    c = client_parser().parse_args(
        ["--party", "alice", "--pin", "p", "--aggregator", "h:1", "--data", "d", "--gpu", "nvml",
         "--enrollment", "e"]
    )
    assert (a.gpu, c.gpu) == ("emulated-hopper", "nvml")
    plain = ["--party", "a", "--pin", "p", "--aggregator", "h:1", "--data", "d",
             "--enrollment", "e"]  # fmt: skip
    assert client_parser().parse_args(plain).gpu == "none"


def test_test_kit_stand_in_round_trip() -> None:
    from teeflow.attestation.additional_evidence import parse_additional_evidence
    from teeflow.testing.gpu import gpu_stand_in

    stand_in = gpu_stand_in("BLACKWELL", count=2)
    jwk = {"kty": "EC", "crv": "P-256", "x": "AA", "y": "BB"}
    text = stand_in.additional_evidence(tee_pubkey=jwk, nonce="bm9uY2U=")
    devices = load_device_evidence_list(parse_additional_evidence(text)["nvidia"])
    expected = gpu_nonce(tee_pubkey=jwk, nonce="bm9uY2U=")
    for dev in devices:
        verify(dev, now=_now(), anchors=[stand_in.anchor()], nonce=expected)
    assert stand_in.nvml.calls == ["report:0", "certificate:0", "report:1", "certificate:1"]
