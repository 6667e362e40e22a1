"""Real Intel collateral (TCB Info, QE Identity, CRLs, issuer chains) from ../shared/testdata.

Expectations come from ``manifest.json`` (per-file ``expected`` facts and the per-quote
``pairings`` of quote + collateral set + fixed verification time), so held-out sets that
follow the same layout are covered too. Skips when the vectors are absent.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from teeflow.attestation.dcap.chain import check_crl, load_pem_chain, verify_chain
from teeflow.attestation.dcap.collateral import (
    IntelCollateral,
    converge_tcb_status,
    verify_collateral,
)
from teeflow.attestation.dcap.qe_identity import (
    match_qe_report,
    parse_enclave_identity,
    verify_enclave_identity_signature,
)
from teeflow.attestation.dcap.tcb_info import (
    parse_tcb_info,
    select_platform_tcb,
    select_tdx_module_tcb,
    verify_tcb_info_signature,
)
from teeflow.attestation.evidence import TcbStatus
from teeflow.attestation.trust import TrustAnchor, intel_sgx_root_ca
from teeflow.errors import CollateralError, ParseError, VerificationError

pytestmark = pytest.mark.vectors

REAL_NOW = datetime(2026, 11, 21, tzinfo=UTC)
PHALA_SGX = "sgx/collateral/sgx_00A067110000_2025-06-19_phala"
PHALA_TIME = datetime(2025, 7, 1, tzinfo=UTC)
ROOT = intel_sgx_root_ca()


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


def collateral_dirs(base: Path) -> list[Path]:
    return sorted(
        p for tee in ("sgx", "tdx") for p in (base / tee / "collateral").glob("*") if p.is_dir()
    )


def pairings(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    out = []
    for name, entry in manifest["files"].items():
        expected = entry.get("expected")
        if isinstance(expected, dict):
            for pairing in expected.get("pairings", []):
                out.append((name, expected["fields"], pairing))
    return out


@dataclass(frozen=True)
class QeReport:
    misc_select: int
    attributes: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int


def qe_report(fields: dict[str, Any]) -> QeReport:
    qe = fields["qe_report"]
    return QeReport(
        misc_select=qe["miscselect"],
        attributes=bytes.fromhex(qe["attributes"]),
        mr_signer=bytes.fromhex(qe["mrsigner"]),
        isv_prod_id=qe["isv_prod_id"],
        isv_svn=qe["isv_svn"],
    )


def pck_crl_chain_for(base: Path, crl: x509.CertificateRevocationList) -> bytes:
    """The PCK CRL issuer chain of a set, or one from a sibling set with the same issuer."""
    for path in sorted(base.glob("*/collateral/*/pck_crl_issuer_chain.pem")):
        data = path.read_bytes()
        if load_pem_chain(data)[0].subject == crl.issuer:
            return data
    pytest.skip(f"no PCK CRL issuer chain for {crl.issuer.rfc4514_string()}")


def load_set(base: Path, rel: str, tcb_chain: str | None = None) -> IntelCollateral:
    d = base / rel
    pck_crl = d / "pck_crl.der"
    pck_chain = d / "pck_crl_issuer_chain.pem"
    tcb_file = d / "tcb_info_issuer_chain.pem"
    chain_bytes = (base / tcb_chain).read_bytes() if tcb_chain else None
    return IntelCollateral.from_bytes(
        tcb_info=(d / "tcb_info.json").read_bytes(),
        qe_identity=(d / "qe_identity.json").read_bytes(),
        pck_crl=pck_crl.read_bytes(),
        root_ca_crl=(d / "root_ca_crl.der").read_bytes(),
        pck_crl_issuer_chain=pck_chain.read_bytes()
        if pck_chain.is_file()
        else pck_crl_chain_for(base, x509.load_der_x509_crl(pck_crl.read_bytes())),
        tcb_info_issuer_chain=tcb_file.read_bytes() if tcb_file.is_file() else chain_bytes,
        source=rel,
    )


def is_complete(d: Path) -> bool:
    return all(
        (d / f).is_file()
        for f in ("tcb_info.json", "qe_identity.json", "pck_crl.der", "root_ca_crl.der")
    )


# ------------------------------------------------------------------ every set on disk


def test_every_collateral_set_parses_and_verifies(attestation_dir: Path) -> None:
    dirs = collateral_dirs(attestation_dir)
    assert dirs, "no collateral sets found"
    for d in dirs:
        info = parse_tcb_info((d / "tcb_info.json").read_bytes())
        assert d.name.split("_")[1].lower() == info.fmspc.hex(), d
        assert d.name.startswith(info.id.lower()), d
        # Signed by the set's issuer chain, else by a shipped Intel TCB Signing certificate.
        col_chain = d / "tcb_info_issuer_chain.pem"
        if col_chain.is_file():
            chain = load_pem_chain(col_chain.read_bytes())
            verify_tcb_info_signature(info, chain[0])
            verify_chain(chain, [ROOT], info.issue_date)
        ident_file = d / "qe_identity.json"
        if ident_file.is_file():
            ident = parse_enclave_identity(ident_file.read_bytes())
            assert ident.id == ("QE" if info.id == "SGX" else "TD_QE")
            if col_chain.is_file():
                verify_enclave_identity_signature(ident, load_pem_chain(col_chain.read_bytes())[0])
        if is_complete(d):
            col = load_set(attestation_dir, str(d.relative_to(attestation_dir)))
            with pytest.raises(CollateralError, match="collateral expired"):
                verify_collateral(col, [ROOT], REAL_NOW)


def test_manifest_facts_of_collateral_files(
    attestation_dir: Path, manifest: dict[str, Any]
) -> None:
    checked = 0
    for name, entry in manifest["files"].items():
        exp = entry.get("expected") or {}
        if "/collateral/" not in name or not (attestation_dir / name).is_file():
            continue
        data = (attestation_dir / name).read_bytes()
        if name.endswith("tcb_info.json"):
            info = parse_tcb_info(data)
            assert (info.id, info.version) == (exp["id"], exp["version"])
            assert info.fmspc.hex() == exp["fmspc"].lower() and info.pce_id.hex() == exp["pceId"]
            assert info.tcb_evaluation_data_number == exp["tcbEvaluationDataNumber"]
            assert (info.issue_date, info.next_update) == (
                ts(exp["issueDate"]),
                ts(exp["nextUpdate"]),
            )
        elif name.endswith("qe_identity.json"):
            ident = parse_enclave_identity(data)
            assert (ident.id, ident.version) == (exp["id"], exp["version"])
            assert ident.tcb_evaluation_data_number == exp["tcbEvaluationDataNumber"]
            assert (ident.issue_date, ident.next_update) == (
                ts(exp["issueDate"]),
                ts(exp["nextUpdate"]),
            )
        elif name.endswith(".der"):
            crl = x509.load_der_x509_crl(data)
            assert exp["issuer"] in crl.issuer.rfc4514_string()
            assert crl.last_update_utc == ts(exp["this_update"])
            assert crl.next_update_utc == ts(exp["next_update"])
            assert len(list(crl)) == exp["revoked_entries"]
            issuer = (
                ROOT.certificate
                if name.endswith("root_ca_crl.der")
                else load_pem_chain(pck_crl_chain_for(attestation_dir, crl))[0]
            )
            check_crl(crl, issuer, crl.last_update_utc)
        else:
            continue
        checked += 1
    assert checked >= 10


# ------------------------------------------------------------------ quote/collateral pairings


def test_pairings_at_fixed_time(attestation_dir: Path, manifest: dict[str, Any]) -> None:
    seen = 0
    for quote, fields, p in pairings(manifest):
        d = attestation_dir / p["collateral_set"]
        if not d.is_dir():
            continue
        seen += 1
        now = ts(p["fixed_verification_time"])
        info = parse_tcb_info((d / "tcb_info.json").read_bytes())
        chain = load_pem_chain((attestation_dir / p["tcb_info_issuer_chain"]).read_bytes())
        verify_tcb_info_signature(info, chain[0])
        assert verify_chain(chain, [ROOT], now) is ROOT

        tcb = fields["pck_cert"]["tcb"]
        comps = bytes.fromhex(tcb["cpusvn"])
        tee = bytes.fromhex(fields["body"]["tee_tcb_svn"]) if info.id == "TDX" else None
        want = p["platform_tcb_level"]
        if want["status"] == "NO_MATCHING_TCB_LEVEL":
            with pytest.raises(VerificationError, match="no matching TCB level"):
                select_platform_tcb(info, comps, tcb["pcesvn"], tee)
        else:
            ev = select_platform_tcb(info, comps, tcb["pcesvn"], tee)
            assert ev.status == TcbStatus(want["status"]), quote
            assert ev.tcb_date == ts(want["tcb_date"]), quote
            assert list(ev.advisory_ids) == want["advisory_ids"], quote
        module = p.get("tdx_module_identity")
        if isinstance(module, dict) and tee is not None:
            mev = select_tdx_module_tcb(info, tee)
            assert mev is not None and mev.status == TcbStatus(module["status"]), quote
            assert mev.tcb_date == ts(module["tcb_date"]), quote

        if "qe_identity" in p:
            ident = parse_enclave_identity((d / "qe_identity.json").read_bytes())
            verify_enclave_identity_signature(ident, chain[0])
            qev = match_qe_report(ident, qe_report(fields))
            assert qev.status == TcbStatus(p["qe_tcb_status"]["status"]), quote
            assert qev.tcb_date == ts(p["qe_tcb_status"]["tcb_date"]), quote

        if is_complete(d):
            col = load_set(attestation_dir, p["collateral_set"], p["tcb_info_issuer_chain"])
            assert verify_collateral(col, [ROOT], now) is ROOT
            assert verify_collateral(col, [ROOT], now) is ROOT  # cached
            with pytest.raises(CollateralError, match="collateral expired"):
                verify_collateral(col, [ROOT], REAL_NOW)
    if not seen:
        pytest.skip("no quote/collateral pairing present")


# ------------------------------------------------------------------ phala SGX set (README)


@pytest.fixture()
def phala(attestation_dir: Path) -> Path:
    d = attestation_dir / PHALA_SGX
    if not d.is_dir():
        pytest.skip(f"{PHALA_SGX} not present")
    return d


def test_phala_from_dir_fields_and_verification(phala: Path) -> None:
    col = IntelCollateral.from_dir(phala)
    assert col.source == str(phala)
    assert col.tcb_info.fmspc == bytes.fromhex("00a067110000")
    assert col.tcb_info.tcb_evaluation_data_number == 17
    assert col.tcb_info.issue_date == ts("2025-06-19T10:56:11Z")
    assert col.tcb_info.next_update == ts("2025-07-19T10:56:11Z")
    assert col.qe_identity.id == "QE" and col.qe_identity.next_update == ts("2025-07-19T10:01:18Z")
    assert col.qe_identity_issuer_chain == col.tcb_info_issuer_chain
    assert verify_collateral(col, [ROOT], PHALA_TIME) is ROOT
    with pytest.raises(CollateralError, match="collateral expired: tcbInfo nextUpdate"):
        verify_collateral(col, [ROOT], REAL_NOW)
    # QE identity expires before the TCB Info.
    with pytest.raises(CollateralError, match="qeIdentity"):
        verify_collateral(col, [ROOT], ts("2025-07-19T10:30:00Z"))
    with pytest.raises(CollateralError, match="not yet valid"):
        verify_collateral(col, [ROOT], ts("2025-06-19T10:30:00Z"))


def test_phala_platform_and_qe_tcb(phala: Path) -> None:
    col = IntelCollateral.from_dir(phala)
    platform = select_platform_tcb(
        col.tcb_info, bytes.fromhex("0b0b0202ff0100000000000000000000"), 13
    )
    assert platform.status is TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED
    assert platform.advisory_ids == ("INTEL-SA-00289", "INTEL-SA-00615")
    report = QeReport(
        misc_select=0,
        attributes=bytes.fromhex("1500000000000000e700000000000000"),
        mr_signer=bytes.fromhex("8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff"),
        isv_prod_id=1,
        isv_svn=10,
    )
    qe = match_qe_report(col.qe_identity, report)
    assert qe.status is TcbStatus.UP_TO_DATE
    final = converge_tcb_status(platform, qe)
    assert final.status is TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED
    assert final.advisory_ids == ("INTEL-SA-00289", "INTEL-SA-00615")
    old_qe = match_qe_report(
        col.qe_identity, QeReport(0, report.attributes, report.mr_signer, 1, 7)
    )
    assert old_qe.status is TcbStatus.OUT_OF_DATE
    assert (
        converge_tcb_status(platform, old_qe).status is TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED
    )


def _copy(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in skip:
            shutil.copy(f, dst / f.name)
    return dst


@pytest.mark.parametrize(
    "name",
    [
        "tcb_info.json",
        "qe_identity.json",
        "pck_crl.der",
        "root_ca_crl.der",
        "pck_crl_issuer_chain.pem",
    ],
)
def test_from_dir_missing_file_is_named(phala: Path, tmp_path: Path, name: str) -> None:
    d = _copy(phala, tmp_path / "set", skip=(name,))
    with pytest.raises(CollateralError, match=name.replace(".", r"\.")):
        IntelCollateral.from_dir(d)


def test_from_dir_malformed_file(phala: Path, tmp_path: Path) -> None:
    d = _copy(phala, tmp_path / "set")
    (d / "qe_identity.json").write_bytes(b'{"enclaveIdentity":')
    with pytest.raises(CollateralError, match="qe_identity"):
        IntelCollateral.from_dir(d)


def test_from_dir_uses_shipped_signing_certificate(phala: Path, tmp_path: Path) -> None:
    d = _copy(phala, tmp_path / "set", skip=("tcb_info_issuer_chain.pem",))
    col = IntelCollateral.from_dir(d)
    assert (
        col.tcb_info_issuer_chain[0].subject.rfc4514_string().endswith("CN=Intel SGX TCB Signing")
    )
    # Issued 2025-06-19: the re-issued (2025-2032) certificate is the one valid then.
    assert col.tcb_info_issuer_chain[0].not_valid_after_utc.year == 2032
    assert verify_collateral(col, [ROOT], PHALA_TIME) is ROOT


def test_shipped_certificate_for_2023_set(attestation_dir: Path) -> None:
    rel = "tdx/collateral/tdx_50806F000000_2023-06-18_gtg"
    if not (attestation_dir / rel).is_dir():
        pytest.skip(f"{rel} not present")
    col = load_set(attestation_dir, rel)  # no issuer chains in this set
    assert col.tcb_info_issuer_chain[0].not_valid_after_utc.year == 2025
    assert verify_collateral(col, [ROOT], ts("2023-07-01T01:00:00Z")) is ROOT


# ------------------------------------------------------------------ tamper and wrong roots


def test_case_change_inside_signed_object_breaks_signature(phala: Path) -> None:
    data = (phala / "tcb_info.json").read_bytes()
    tampered = data.replace(b'"fmspc":"00A067110000"', b'"fmspc":"00a067110000"')
    assert tampered != data
    info = parse_tcb_info(tampered)
    assert info.fmspc == parse_tcb_info(data).fmspc  # same parsed value, other bytes
    chain = load_pem_chain((phala / "tcb_info_issuer_chain.pem").read_bytes())
    with pytest.raises(VerificationError):
        verify_tcb_info_signature(info, chain[0])


@pytest.mark.parametrize("file", ["tcb_info.json", "qe_identity.json"])
def test_any_byte_change_in_signed_object_is_rejected(phala: Path, file: str) -> None:
    data = (phala / file).read_bytes()
    key = b'"tcbInfo":' if file == "tcb_info.json" else b'"enclaveIdentity":'
    start = data.index(key) + len(key)
    end = data.rindex(b',"signature"')
    chain = load_pem_chain((phala / "tcb_info_issuer_chain.pem").read_bytes())
    parse = parse_tcb_info if file == "tcb_info.json" else parse_enclave_identity
    check = (
        verify_tcb_info_signature if file == "tcb_info.json" else verify_enclave_identity_signature
    )
    for pos in range(start, end, 37):
        for replacement in (b"0", b"1", b" "):
            if data[pos : pos + 1] == replacement:
                continue
            mutated = data[:pos] + replacement + data[pos + 1 :]
            try:
                doc = parse(mutated)
            except ParseError:
                continue
            with pytest.raises(VerificationError):
                check(doc, chain[0])  # type: ignore[arg-type]


def test_tampered_collateral_fails_verify_collateral(phala: Path) -> None:
    parts = {
        "tcb_info": (phala / "tcb_info.json").read_bytes(),
        "qe_identity": (phala / "qe_identity.json").read_bytes(),
        "pck_crl": (phala / "pck_crl.der").read_bytes(),
        "root_ca_crl": (phala / "root_ca_crl.der").read_bytes(),
        "pck_crl_issuer_chain": (phala / "pck_crl_issuer_chain.pem").read_bytes(),
        "tcb_info_issuer_chain": (phala / "tcb_info_issuer_chain.pem").read_bytes(),
    }
    for key, old, new in [
        ("tcb_info", b'"tcbEvaluationDataNumber":17', b'"tcbEvaluationDataNumber":18'),
        ("qe_identity", b'"isvprodid":1', b'"isvprodid":2'),
    ]:
        col = IntelCollateral.from_bytes(**{**parts, key: parts[key].replace(old, new)})
        with pytest.raises(CollateralError, match="signature"):
            verify_collateral(col, [ROOT], PHALA_TIME)
    # A flipped bit in the PCK CRL signature.
    crl = bytearray(parts["pck_crl"])
    crl[-5] ^= 1
    col = IntelCollateral.from_bytes(**{**parts, "pck_crl": bytes(crl)})
    with pytest.raises(CollateralError):
        verify_collateral(col, [ROOT], PHALA_TIME)


def test_wrong_root_is_rejected(phala: Path, attestation_dir: Path) -> None:
    col = IntelCollateral.from_dir(phala)
    nvidia = attestation_dir / "roots" / "nvidia_device_identity_ca.pem"
    others = [TrustAnchor(certificate=load_pem_chain(nvidia.read_bytes())[0], name="NVIDIA")]
    with pytest.raises(VerificationError, match="trusted root"):
        verify_collateral(col, others, PHALA_TIME)
    # A look-alike root (same name, other key) inside the chain is not trusted either.
    key = ec.generate_private_key(ec.SECP256R1())
    real = ROOT.certificate
    fake = (
        x509.CertificateBuilder()
        .subject_name(real.subject)
        .issuer_name(real.subject)
        .public_key(key.public_key())
        .serial_number(real.serial_number)
        .not_valid_before(real.not_valid_before_utc)
        .not_valid_after(real.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .sign(key, hashes.SHA256())
    )
    chain = [col.tcb_info_issuer_chain[0], fake]
    with pytest.raises(VerificationError):
        verify_chain(chain, [ROOT], PHALA_TIME)
    with pytest.raises(VerificationError, match="trusted root"):
        verify_chain(col.tcb_info_issuer_chain, [TrustAnchor(fake, "fake")], PHALA_TIME)
