"""EmulatedSnp: real-format reports, emulated AMD chain, persistence, end-to-end appraisal."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from teeflow.attestation.snp import (
    SnpPolicy,
    SnpProduct,
    TcbMinimum,
    appraise,
    load_certificate,
    parse_report,
    verify,
)
from teeflow.attestation.snp.certs import AMD_OID_PREFIX
from teeflow.errors import PlatformError, VerificationError
from teeflow.platform.emulated_snp import EMULATED_ARK_CN, EmulatedSnp

NOW = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def emu() -> EmulatedSnp:
    return EmulatedSnp.generate(
        product=SnpProduct.GENOA, now=NOW, measurement=b"\x11" * 48, host_data=b"\x22" * 32,
        guest_svn=3, vmpl=1,
    )  # fmt: skip


def test_report_format(emu: EmulatedSnp) -> None:
    data = emu.report(b"\x01\x02")
    assert len(data) == 0x4A0
    r = parse_report(data)
    assert r.version == 3 and r.signature_algo == 1 and r.signing_key.name == "VCEK"
    assert r.product is SnpProduct.GENOA
    assert (r.measurement, r.host_data, r.guest_svn, r.vmpl) == (
        b"\x11" * 48, b"\x22" * 32, 3, 1,
    )  # fmt: skip
    assert r.report_data == b"\x01\x02" + bytes(62)
    assert not r.policy.debug_allowed and not r.policy.migrate_ma
    assert r.reported_tcb == r.current_tcb == r.committed_tcb == r.launch_tcb
    assert emu.report(b"x") != emu.report(b"x")  # fresh REPORT_ID and ECDSA nonce


def test_emulated_ark(emu: EmulatedSnp) -> None:
    ark = emu.ark_certificate
    cn = ark.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == EMULATED_ARK_CN == "teeflow EMULATED AMD ARK — not hardware"
    assert ark.subject == ark.issuer
    assert ark.public_key().key_size == 4096  # type: ignore[union-attr]
    assert emu.trust_anchor().emulated


def test_end_to_end_appraisal(emu: EmulatedSnp) -> None:
    chain = x509.load_pem_x509_certificates(emu.cert_chain_pem())
    assert chain == [emu.vcek_certificate, emu.ask_certificate, emu.ark_certificate]
    verified = verify(
        parse_report(emu.report(b"n" * 64)), endorsement_cert=chain[0],
        intermediates=chain[1:], anchors=[emu.trust_anchor()], now=NOW,
    )  # fmt: skip
    policy = SnpPolicy(
        measurements=("11" * 48,), report_data="6e" * 64, max_vmpl=1,
        min_tcb=TcbMinimum(snp=1), allow_emulated=True,
    )  # fmt: skip
    result = appraise(verified, policy)
    assert result.accepted and result.tee == "emulated-snp" and result.emulated
    denied = appraise(verified, policy.model_copy(update={"allow_emulated": False}))
    assert denied.violations == ("emulated evidence not allowed",)
    with pytest.raises(VerificationError):
        verify(parse_report(emu.report(b"")), endorsement_cert=chain[0], now=NOW)


def test_extension_encoding_matches_real_vcek(emu: EmulatedSnp, attestation_dir: Path) -> None:
    real = load_certificate((attestation_dir / "snp/azure_genoa_vcek.pem").read_bytes())

    def shapes(cert: x509.Certificate) -> dict[str, tuple[int, int]]:
        out = {}
        for ext in cert.extensions:
            if ext.oid.dotted_string.startswith(AMD_OID_PREFIX):
                value = ext.value.value  # type: ignore[attr-defined]
                out[ext.oid.dotted_string] = (
                    (value[0], len(value)) if len(value) != 64 else (-1, 64)
                )
        return out

    ours, theirs = shapes(emu.vcek_certificate), shapes(real)
    assert set(ours) == set(theirs)
    for oid in ours:
        assert ours[oid][0] == theirs[oid][0], oid  # same DER tag (or raw hwID)
    assert emu.vcek_certificate.signature_algorithm_oid == real.signature_algorithm_oid


def test_persistence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEEFLOW_HOME", str(tmp_path))
    first = EmulatedSnp.load_or_create(now=NOW)
    directory = tmp_path / "emulation" / "snp"
    assert first.directory == directory
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for f in directory.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name
    second = EmulatedSnp.load_or_create(measurement=b"\x01" * 48)
    assert second.ark_certificate == first.ark_certificate
    assert second.keys.chip_id == first.keys.chip_id and second.keys.tcb == first.keys.tcb
    verify(
        parse_report(second.report(b"")), endorsement_cert=second.vcek_certificate,
        intermediates=[second.ask_certificate], anchors=[first.trust_anchor()], now=NOW,
    )  # fmt: skip
    (directory / "authority.json").write_text('{"layout": 99}')
    with pytest.raises(PlatformError):
        EmulatedSnp.load_or_create()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"measurement": bytes(47)},
        {"host_data": bytes(31)},
        {"family_id": bytes(15)},
        {"id_key_digest": bytes(32)},
        {"guest_policy": 0x10000},
        {"vmpl": 4},
        {"guest_svn": -1},
    ],
)
def test_invalid_guest_fields(emu: EmulatedSnp, kwargs: dict[str, object]) -> None:
    with pytest.raises(PlatformError):
        EmulatedSnp(emu.keys, **kwargs)  # type: ignore[arg-type]


def test_report_data_limits(emu: EmulatedSnp) -> None:
    with pytest.raises(PlatformError):
        emu.report(bytes(65))
    with pytest.raises(PlatformError):
        emu.report("text")  # type: ignore[arg-type]
