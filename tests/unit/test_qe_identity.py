"""Intel Enclave Identity parsing, QE report matching and TCB status convergence."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from teeflow.attestation.dcap.collateral import converge_tcb_status
from teeflow.attestation.dcap.qe_identity import (
    match_qe_report,
    parse_enclave_identity,
    verify_enclave_identity_signature,
)
from teeflow.attestation.evidence import TcbEvaluation, TcbStatus
from teeflow.errors import ParseError, VerificationError

KEY = ec.generate_private_key(ec.SECP256R1())
MRSIGNER = bytes.fromhex("8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff")


def _cert() -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test TCB Signing")])
    t0 = datetime(2020, 1, 1, tzinfo=UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(KEY.public_key())
        .serial_number(1)
        .not_valid_before(t0)
        .not_valid_after(t0 + timedelta(days=3650))
        .sign(KEY, hashes.SHA256())
    )


CERT = _cert()

IDENTITY: dict[str, Any] = {
    "id": "QE",
    "version": 2,
    "issueDate": "2025-06-19T10:01:18Z",
    "nextUpdate": "2025-07-19T10:01:18Z",
    "tcbEvaluationDataNumber": 17,
    "miscselect": "00000000",
    "miscselectMask": "FFFFFFFF",
    "attributes": "11000000000000000000000000000000",
    "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
    "mrsigner": MRSIGNER.hex().upper(),
    "isvprodid": 1,
    "tcbLevels": [
        {"tcb": {"isvsvn": 8}, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": "UpToDate"},
        {
            "tcb": {"isvsvn": 6},
            "tcbDate": "2021-11-10T00:00:00Z",
            "tcbStatus": "OutOfDate",
            "advisoryIDs": ["INTEL-SA-00615"],
        },
        {"tcb": {"isvsvn": 2}, "tcbDate": "2019-05-15T00:00:00Z", "tcbStatus": "Revoked"},
    ],
}


def body(inner_obj: dict[str, Any]) -> bytes:
    inner = json.dumps(inner_obj, separators=(",", ":")).encode()
    r, s = decode_dss_signature(KEY.sign(inner, ec.ECDSA(hashes.SHA256())))
    sig = (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex().encode()
    return b'{"enclaveIdentity":' + inner + b',"signature":"' + sig + b'"}'


@dataclass(frozen=True)
class Report:
    """Stand-in with the EnclaveReport fields QE matching reads."""

    misc_select: int = 0
    attributes: bytes = bytes.fromhex("15000000000000000700000000000000")
    mr_signer: bytes = MRSIGNER
    isv_prod_id: int = 1
    isv_svn: int = 10


def test_parse_fields_and_signature() -> None:
    ident = parse_enclave_identity(body(IDENTITY))
    assert (ident.id, ident.version, ident.tcb_evaluation_data_number) == ("QE", 2, 17)
    assert ident.issue_date == datetime(2025, 6, 19, 10, 1, 18, tzinfo=UTC)
    assert ident.mrsigner == MRSIGNER and ident.isvprodid == 1
    assert ident.miscselect_mask == b"\xff" * 4
    assert ident.attributes_mask == bytes.fromhex("fbffffffffffffff0000000000000000")
    assert [lv.isvsvn for lv in ident.tcb_levels] == [8, 6, 2]
    assert ident.tcb_levels[1].advisory_ids == ("INTEL-SA-00615",)
    verify_enclave_identity_signature(ident, CERT)


def test_tampered_identity_fails_signature() -> None:
    data = body(IDENTITY).replace(b'"isvprodid":1', b'"isvprodid":2')
    ident = parse_enclave_identity(data)
    assert ident.isvprodid == 2
    with pytest.raises(VerificationError):
        verify_enclave_identity_signature(ident, CERT)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("version", 3),
        ("id", "XE"),
        ("mrsigner", "00" * 31),
        ("miscselect", "0000"),
        ("attributesMask", "zz" * 16),
        ("isvprodid", 70000),
        ("tcbLevels", []),
        (
            "tcbLevels",
            [{"tcb": {"isvsvn": 1}, "tcbDate": "2019-05-15T00:00:00Z", "tcbStatus": "Bad"}],
        ),
        ("tcbLevels", [{"tcb": {}, "tcbDate": "2019-05-15T00:00:00Z", "tcbStatus": "UpToDate"}]),
    ],
)
def test_structural_errors(key: str, value: Any) -> None:
    with pytest.raises(ParseError):
        parse_enclave_identity(body({**IDENTITY, key: value}))
    missing = {k: v for k, v in IDENTITY.items() if k != key}
    with pytest.raises(ParseError):
        parse_enclave_identity(body(missing))


def test_wrong_wrapper_key_is_parse_error() -> None:
    data = body(IDENTITY).replace(b'"enclaveIdentity"', b'"tcbInfo"', 1)
    with pytest.raises(ParseError):
        parse_enclave_identity(data)


def test_match_selects_first_level_at_or_below_isvsvn() -> None:
    ident = parse_enclave_identity(body(IDENTITY))
    assert match_qe_report(ident, Report(isv_svn=10)).status is TcbStatus.UP_TO_DATE
    assert match_qe_report(ident, Report(isv_svn=8)).status is TcbStatus.UP_TO_DATE
    ev = match_qe_report(ident, Report(isv_svn=7))
    assert ev.status is TcbStatus.OUT_OF_DATE and ev.advisory_ids == ("INTEL-SA-00615",)
    assert ev.tcb_date == datetime(2021, 11, 10, tzinfo=UTC)
    # A revoked level is reported, not raised: the appraisal decides.
    assert match_qe_report(ident, Report(isv_svn=2)).status is TcbStatus.REVOKED
    with pytest.raises(VerificationError, match="no QE TCB level"):
        match_qe_report(ident, Report(isv_svn=1))


def test_match_masks() -> None:
    ident = parse_enclave_identity(body(IDENTITY))
    # Bit 2 of attributes byte 0 is masked out (FB), bytes 8.. are masked out entirely.
    assert match_qe_report(ident, Report(attributes=bytes.fromhex("15" + "00" * 7 + "ff" * 8)))
    masked_misc = parse_enclave_identity(body({**IDENTITY, "miscselectMask": "FEFFFFFF"}))
    assert match_qe_report(masked_misc, Report(misc_select=1))


@pytest.mark.parametrize(
    ("report", "field"),
    [
        (Report(mr_signer=b"\x00" * 32), "MRSIGNER"),
        (Report(isv_prod_id=2), "ISVPRODID"),
        (Report(misc_select=1), "MISCSELECT"),
        (Report(misc_select=0x100), "MISCSELECT"),
        (Report(attributes=bytes.fromhex("13000000000000000700000000000000")), "ATTRIBUTES"),
        (Report(attributes=bytes.fromhex("11000000000000010000000000000000")), "ATTRIBUTES"),
    ],
)
def test_mismatches_name_the_field(report: Report, field: str) -> None:
    ident = parse_enclave_identity(body(IDENTITY))
    with pytest.raises(VerificationError, match=field):
        match_qe_report(ident, report)


def test_miscselect_uses_report_byte_order() -> None:
    # miscselect "01000000" is the little-endian byte image of the u32 value 1.
    ident = parse_enclave_identity(body({**IDENTITY, "miscselect": "01000000"}))
    assert match_qe_report(ident, Report(misc_select=1))
    with pytest.raises(VerificationError, match="MISCSELECT"):
        match_qe_report(ident, Report(misc_select=0x01000000))


# ------------------------------------------------------------------ convergence (Intel QVL)

S = TcbStatus
D1 = datetime(2024, 3, 13, tzinfo=UTC)
D2 = datetime(2021, 11, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("platform", "qe", "expected"),
    [
        (S.UP_TO_DATE, S.UP_TO_DATE, S.UP_TO_DATE),
        (S.SW_HARDENING_NEEDED, S.UP_TO_DATE, S.SW_HARDENING_NEEDED),
        (S.CONFIGURATION_NEEDED, S.UP_TO_DATE, S.CONFIGURATION_NEEDED),
        (
            S.CONFIGURATION_AND_SW_HARDENING_NEEDED,
            S.UP_TO_DATE,
            S.CONFIGURATION_AND_SW_HARDENING_NEEDED,
        ),
        (S.OUT_OF_DATE, S.UP_TO_DATE, S.OUT_OF_DATE),
        (S.OUT_OF_DATE_CONFIGURATION_NEEDED, S.UP_TO_DATE, S.OUT_OF_DATE_CONFIGURATION_NEEDED),
        (S.REVOKED, S.UP_TO_DATE, S.REVOKED),
        (S.UP_TO_DATE, S.OUT_OF_DATE, S.OUT_OF_DATE),
        (S.SW_HARDENING_NEEDED, S.OUT_OF_DATE, S.OUT_OF_DATE),
        (S.CONFIGURATION_NEEDED, S.OUT_OF_DATE, S.OUT_OF_DATE_CONFIGURATION_NEEDED),
        (
            S.CONFIGURATION_AND_SW_HARDENING_NEEDED,
            S.OUT_OF_DATE,
            S.OUT_OF_DATE_CONFIGURATION_NEEDED,
        ),
        (S.OUT_OF_DATE, S.OUT_OF_DATE, S.OUT_OF_DATE),
        (S.OUT_OF_DATE_CONFIGURATION_NEEDED, S.OUT_OF_DATE, S.OUT_OF_DATE_CONFIGURATION_NEEDED),
        (S.REVOKED, S.OUT_OF_DATE, S.REVOKED),
        (S.UP_TO_DATE, S.REVOKED, S.REVOKED),
        (S.CONFIGURATION_NEEDED, S.REVOKED, S.REVOKED),
        (S.OUT_OF_DATE, S.REVOKED, S.REVOKED),
    ],
)
def test_converge_table(platform: TcbStatus, qe: TcbStatus, expected: TcbStatus) -> None:
    out = converge_tcb_status(TcbEvaluation(platform, D1), TcbEvaluation(qe, D2))
    assert out.status is expected
    assert out.tcb_date == D2  # the earlier of the two dates


def test_converge_advisories_platform_first_deduplicated() -> None:
    platform = TcbEvaluation(
        S.CONFIGURATION_AND_SW_HARDENING_NEEDED, D1, ("INTEL-SA-00289", "INTEL-SA-00615")
    )
    qe = TcbEvaluation(S.OUT_OF_DATE, None, ("INTEL-SA-00615", "INTEL-SA-00477"))
    out = converge_tcb_status(platform, qe)
    assert out.advisory_ids == ("INTEL-SA-00289", "INTEL-SA-00615", "INTEL-SA-00477")
    assert out.tcb_date == D1
    assert converge_tcb_status(replace(platform, tcb_date=None), qe).tcb_date is None
