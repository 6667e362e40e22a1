"""Real NVIDIA H100 evidence (Trustee transcript + nvtrust 8xH100 list) against the README.

* every transcript parses to the manifest's fields and verifies (SPDM signature, chain to
  the pinned NVIDIA Device Identity CA, FWID) at fixed times after 2022-03-01, and is
  rejected before the Provisioner ICA's notBefore;
* single-bit flips in a fixed-seed sample of the signed values and of the signature:
  ``VerificationError``; flips of framing bytes: ``ParseError`` or ``VerificationError``;
* another root, an imitation root, swapped chains, tampered certificates:
  ``VerificationError``;
* appraisal with the README nonce accepts, a wrong nonce is a violation; composite with
  an emulated SGX CPU report binding the GPU evidence digest.
"""

from __future__ import annotations

import base64
import random
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from teeflow.attestation import sgx
from teeflow.attestation.composite import (
    GPU_EVIDENCE_CLAIM,
    RuntimeData,
    appraise_composite,
    composite_accepted,
    gpu_evidence_claim,
)
from teeflow.attestation.nvidia import (
    GpuEvidence,
    GpuPolicy,
    appraise_gpu,
    load_nvtrust_evidence,
    load_trustee_evidence,
    parse_transcript,
    verify,
)
from teeflow.attestation.trust import TrustAnchor, intel_sgx_root_ca
from teeflow.attestation.trust.nvidia import (
    NVIDIA_DEVICE_IDENTITY_CA_SHA256,
    nvidia_device_identity_ca,
)
from teeflow.errors import ParseError, VerificationError
from teeflow.testing.evidence import make_emulated_quote

pytestmark = [pytest.mark.vectors, pytest.mark.filterwarnings("ignore::UserWarning")]

TRUSTEE = "nvidia/trustee_hopper_attestation_report.hex"
NVTRUST = "nvidia/nvtrust_gpu_evidence_8xH100.json"
TIMES = [
    datetime(2022, 3, 2, tzinfo=UTC),
    datetime(2025, 6, 1, tzinfo=UTC),
    datetime(2026, 11, 21, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 0, tzinfo=UTC),
]
NOW = TIMES[1]
SAMPLES = 64


def trustee(attestation_dir: Path, manifest: dict[str, Any]) -> tuple[GpuEvidence, dict[str, Any]]:
    expected = manifest["files"][TRUSTEE]["expected"]
    ev = load_trustee_evidence(
        (attestation_dir / TRUSTEE).read_text(),
        (attestation_dir / expected["cert_chain_file"]).read_bytes(),
    )
    return ev, expected


def nvtrust(attestation_dir: Path, manifest: dict[str, Any]) -> list[tuple[GpuEvidence, Any]]:
    entries = manifest["files"][NVTRUST]["expected"]["entries"]
    loaded = load_nvtrust_evidence((attestation_dir / NVTRUST).read_bytes())
    assert len(loaded) == len(entries) == 8
    return list(zip(loaded, entries, strict=True))


def all_evidence(attestation_dir: Path, manifest: dict[str, Any]) -> list[tuple[GpuEvidence, str]]:
    ev, expected = trustee(attestation_dir, manifest)
    out = [(ev, expected["request_nonce"])]
    out += [(e, x["request_nonce"]) for e, x in nvtrust(attestation_dir, manifest)]
    return out


def test_pinned_root_matches_shared_copy(attestation_dir: Path, manifest: dict[str, Any]) -> None:
    shared = x509.load_pem_x509_certificate(
        (attestation_dir / "roots/nvidia_device_identity_ca.pem").read_bytes()
    )
    anchor = nvidia_device_identity_ca()
    assert anchor.certificate == shared
    expected = manifest["files"]["roots/nvidia_device_identity_ca.pem"]["expected"]
    assert anchor.fingerprint == expected["sha256_der"] == NVIDIA_DEVICE_IDENTITY_CA_SHA256
    assert anchor.certificate.serial_number == int(expected["serial"], 16)


def test_trustee_fields_and_verification(attestation_dir: Path, manifest: dict[str, Any]) -> None:
    ev, x = trustee(attestation_dir, manifest)
    t = ev.transcript
    assert len(t.raw) == x["length"] and t.request.version == int(x["spdm_version"], 16)
    assert t.request.nonce.hex() == x["request_nonce"]
    assert t.response.number_of_blocks == x["number_of_blocks"] == len(t.response.blocks)
    assert len(t.response.measurement_record) == x["measurement_record_length"]
    assert len(t.response.opaque_data) == x["opaque_length"]
    nonce = bytes.fromhex(x["request_nonce"])
    for now in TIMES:
        v = verify(ev, now=now, nonce=nonce)
        assert v.fwid.digest.hex() == x["leaf_fwid"]
        assert [
            c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
            for c in v.certificates
        ] == x["chain_subjects"]
        assert v.anchor is nvidia_device_identity_ca() and v.arch == "HOPPER"
        assert v.leaf.not_valid_after_utc.isoformat().startswith("9999-12-31")
    assert v.driver_version == "550.90.07" and v.vbios_version == "96.00.9F.00.01"


def test_nvtrust_entries(attestation_dir: Path, manifest: dict[str, Any]) -> None:
    for ev, x in nvtrust(attestation_dir, manifest):
        t = ev.transcript
        assert ev.source == f"nvtrust[{x['index']}]" and ev.declared_arch == x["arch"]
        assert len(t.raw) == x["length"] and len(t.response.opaque_data) == x["opaque_length"]
        assert t.request.nonce.hex() == x["request_nonce"] == x["nonce"]
        for now in (TIMES[0], TIMES[-1]):
            v = verify(ev, now=now, nonce=bytes.fromhex(x["nonce"]))
            assert v.fwid.digest.hex() == x["leaf_fwid"]
            assert v.arch == x["arch"]
            assert v.driver_version == x["driver_version"]
            assert v.vbios_version == x["vbios_version"]


def test_rejected_before_provisioner_ica(attestation_dir: Path, manifest: dict[str, Any]) -> None:
    for ev, _ in all_evidence(attestation_dir, manifest):
        with pytest.raises(VerificationError, match="not valid"):
            verify(ev, now=datetime(2022, 2, 28, tzinfo=UTC))


def test_appraisal_nonce(attestation_dir: Path, manifest: dict[str, Any]) -> None:
    for ev, nonce_hex in all_evidence(attestation_dir, manifest):
        v = verify(ev, now=NOW)
        ok = appraise_gpu(v, GpuPolicy(nonce=nonce_hex, allowed_fwids=(v.fwid.digest.hex(),)))
        assert ok.accepted and ok.claims["nonce"] == nonce_hex
        bad = appraise_gpu(v, GpuPolicy(nonce="00" * 32))
        assert "GPU evidence nonce does not match the expected nonce" in bad.violations
        with pytest.raises(VerificationError, match="nonce"):
            verify(ev, now=NOW, nonce=b"\0" * 32)


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _value_regions(ev: GpuEvidence) -> dict[str, tuple[int, int]]:
    """Byte ranges of signed values (no framing) and of the signature."""
    t = ev.transcript
    regions = {"request nonce": (4, 36)}
    pos = 37 + 8
    for i, block in enumerate(t.response.blocks):
        regions[f"block {i} value"] = (pos + 7, pos + 7 + len(block.value))
        pos += 7 + len(block.value)
    regions["response nonce"] = (pos, pos + 32)
    opaque = pos + 34
    regions["opaque data"] = (opaque, opaque + len(t.response.opaque_data))
    regions["signature"] = (len(t.raw) - 96, len(t.raw))
    assert t.raw[pos : pos + 32] == t.response.nonce
    return regions


def test_bit_flips(attestation_dir: Path, manifest: dict[str, Any]) -> None:
    cases = all_evidence(attestation_dir, manifest)
    for ev, _ in (cases[0], cases[1]):
        verify(ev, now=NOW)
        rng = random.Random(f"teeflow-nvidia-{ev.source}")
        wrong: list[tuple[str, int, str]] = []
        regions = _value_regions(ev)
        chosen = ["request nonce", "response nonce", "opaque data", "signature"]
        chosen += rng.sample([r for r in regions if r.startswith("block")], 4)
        for name in chosen:
            start, end = regions[name]
            bits = range(start * 8, end * 8)
            for bit in rng.sample(bits, min(SAMPLES, len(bits))):
                try:
                    verify(
                        replace(ev, transcript=parse_transcript(_flip(ev.transcript.raw, bit))),
                        now=NOW,
                    )
                except VerificationError:
                    continue
                except Exception as exc:
                    wrong.append((name, bit, type(exc).__name__))
                    continue
                wrong.append((name, bit, "accepted"))
        # Framing bytes (request header, slot, response header): rejected one way or another.
        for byte in [*range(4), 36, *range(37, 45)]:
            for b in range(8):
                try:
                    mutated = parse_transcript(_flip(ev.transcript.raw, byte * 8 + b))
                    verify(replace(ev, transcript=mutated), now=NOW)
                except (ParseError, VerificationError):
                    continue
                wrong.append(("framing", byte * 8 + b, "accepted"))
        assert wrong == []


def _pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def test_chain_attacks(attestation_dir: Path, manifest: dict[str, Any]) -> None:
    cases = all_evidence(attestation_dir, manifest)
    ev, _ = cases[0]
    with pytest.raises(VerificationError, match="trusted root"):
        verify(ev, now=NOW, anchors=[intel_sgx_root_ca()])
    certs = x509.load_pem_x509_certificates(ev.certificate_chain_pem)
    # Without the root certificate the chain still ends at the pinned anchor.
    verify(replace(ev, certificate_chain_pem=_pem(certs[:-1])), now=NOW)
    # An imitation root: same subject, attacker's key, re-signed identity CA.
    fake_key = ec.generate_private_key(ec.SECP384R1())
    root = certs[-1]
    fake_root = (
        x509.CertificateBuilder()
        .subject_name(root.subject)
        .issuer_name(root.subject)
        .public_key(fake_key.public_key())
        .serial_number(root.serial_number)
        .not_valid_before(root.not_valid_before_utc)
        .not_valid_after(root.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(fake_key, hashes.SHA384())
    )
    with pytest.raises(VerificationError):
        verify(replace(ev, certificate_chain_pem=_pem([*certs[:-1], fake_root])), now=NOW)
    fake_anchor = TrustAnchor(fake_root, "attacker root")
    with pytest.raises(VerificationError):
        verify(
            replace(ev, certificate_chain_pem=_pem([*certs[:-1], fake_root])),
            now=NOW,
            anchors=[fake_anchor],
        )
    # Another device's chain (nvtrust entry) for the Trustee transcript, and vice versa.
    other, _ = cases[1]
    with pytest.raises(VerificationError, match="signature"):
        verify(replace(ev, certificate_chain_pem=other.certificate_chain_pem), now=NOW)
    with pytest.raises(VerificationError, match="signature"):
        verify(replace(cases[2][0], certificate_chain_pem=other.certificate_chain_pem), now=NOW)
    # A tampered leaf certificate (one bit in its DER): decoding or signature fails.
    der = bytearray(certs[0].public_bytes(serialization.Encoding.DER))
    der[200] ^= 0x01
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(der))
    pem += b"-----END CERTIFICATE-----\n" + _pem(certs[1:])
    with pytest.raises(VerificationError):
        verify(replace(ev, certificate_chain_pem=pem), now=NOW)


def test_composite_with_real_gpu(attestation_dir: Path, manifest: dict[str, Any]) -> None:
    ev, x = trustee(attestation_dir, manifest)
    now = datetime(2025, 6, 20, 12, tzinfo=UTC)
    v = verify(ev, now=now)
    gpu = appraise_gpu(v, GpuPolicy(nonce=x["request_nonce"]))
    runtime = RuntimeData(
        tee_pubkey={"kty": "OKP", "crv": "X25519", "x": "AAAA"},
        nonce="n0nce",
        teeflow={GPU_EVIDENCE_CLAIM: gpu_evidence_claim([v.evidence_digest])},
    )
    quote, anchor, collateral = make_emulated_quote(runtime.report_data(), now=now)
    cpu_v = sgx.verify(sgx.parse_quote(quote), anchors=[anchor], collateral=collateral, now=now)
    cpu = sgx.appraise(cpu_v, sgx.SgxPolicy(allow_emulated=True))
    results = appraise_composite(
        cpu,
        {"gpu0": gpu},
        gpu_evidence_digests={"gpu0": v.evidence_digest},
        cpu_report_data=cpu_v.report.report_data,
        runtime_data=runtime,
    )
    assert composite_accepted(results)
    assert results["gpu0"].claims["fwid"] == x["leaf_fwid"]
