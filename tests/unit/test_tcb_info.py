"""Intel TCB Info parsing, exact-bytes signatures and TCB-level selection (synthetic bodies)."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from teeflow.attestation.dcap.tcb_info import (
    parse_tcb_info,
    select_platform_tcb,
    select_tdx_module_tcb,
    split_signed_body,
    verify_tcb_info_signature,
)
from teeflow.attestation.evidence import TcbStatus
from teeflow.errors import ParseError, VerificationError

KEY = ec.generate_private_key(ec.SECP256R1())


def _cert(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test TCB Signing")])
    t0 = datetime(2020, 1, 1, tzinfo=UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(t0)
        .not_valid_after(t0 + timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )


CERT = _cert(KEY)


def sign(inner: bytes, key: ec.EllipticCurvePrivateKey = KEY) -> str:
    r, s = decode_dss_signature(key.sign(inner, ec.ECDSA(hashes.SHA256())))
    return (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex()


def body(inner: bytes, *, wrapper: str = "tcbInfo") -> bytes:
    return (
        b'{"' + wrapper.encode() + b'":' + inner + b',"signature":"' + sign(inner).encode() + b'"}'
    )


def level_v3(
    sgx: list[int], pcesvn: int, status: str, tdx: list[int] | None = None, **kw: Any
) -> dict[str, Any]:
    tcb: dict[str, Any] = {"sgxtcbcomponents": [{"svn": v} for v in sgx], "pcesvn": pcesvn}
    if tdx is not None:
        tcb["tdxtcbcomponents"] = [{"svn": v} for v in tdx]
    return {"tcb": tcb, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": status, **kw}


def info_v3(levels: list[dict[str, Any]], *, tee: str = "SGX", **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": tee,
        "version": 3,
        "issueDate": "2025-06-19T10:56:11Z",
        "nextUpdate": "2025-07-19T10:56:11Z",
        "fmspc": "00A067110000",
        "pceId": "0000",
        "tcbType": 0,
        "tcbEvaluationDataNumber": 17,
    }
    if tee == "TDX":
        obj["tdxModule"] = {
            "mrsigner": "00" * 48,
            "attributes": "00" * 8,
            "attributesMask": "FF" * 8,
        }
    obj.update(extra)
    obj["tcbLevels"] = levels
    return obj


SGX_LEVELS = [
    level_v3(
        [11, 11, 2, 2, 255, 1, 12] + [0] * 9,
        13,
        "SWHardeningNeeded",
        advisoryIDs=["INTEL-SA-00615"],
    ),
    level_v3(
        [11, 11, 2, 2, 255, 1, 0] + [0] * 9,
        13,
        "ConfigurationAndSWHardeningNeeded",
        advisoryIDs=["INTEL-SA-00289", "INTEL-SA-00615"],
    ),
    level_v3([10, 10, 2, 2, 255, 1, 0] + [0] * 9, 13, "OutOfDate"),
    level_v3([0] * 16, 5, "Revoked"),
]


def sgx_body(levels: list[dict[str, Any]] = SGX_LEVELS) -> bytes:
    return body(json.dumps(info_v3(levels), separators=(",", ":")).encode())


# ------------------------------------------------------------------ parsing


def test_parse_v3_sgx_fields_and_signature() -> None:
    info = parse_tcb_info(sgx_body())
    assert (info.id, info.version, info.tcb_type, info.tcb_evaluation_data_number) == (
        "SGX",
        3,
        0,
        17,
    )
    assert info.fmspc == bytes.fromhex("00a067110000") and info.pce_id == b"\0\0"
    assert info.issue_date == datetime(2025, 6, 19, 10, 56, 11, tzinfo=UTC)
    assert info.next_update == datetime(2025, 7, 19, 10, 56, 11, tzinfo=UTC)
    assert info.tdx_module is None and info.tdx_module_identities == ()
    assert [lv.status for lv in info.tcb_levels] == [
        TcbStatus.SW_HARDENING_NEEDED,
        TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED,
        TcbStatus.OUT_OF_DATE,
        TcbStatus.REVOKED,
    ]
    assert info.tcb_levels[0].sgx_components[:7] == (11, 11, 2, 2, 255, 1, 12)
    assert info.tcb_levels[1].advisory_ids == ("INTEL-SA-00289", "INTEL-SA-00615")
    assert info.tcb_levels[0].tdx_components is None
    verify_tcb_info_signature(info, CERT)


def test_parse_v2() -> None:
    tcb = {f"sgxtcbcomp{i:02d}svn": i for i in range(1, 17)} | {"pcesvn": 7}
    inner = {
        "version": 2,
        "issueDate": "2019-09-01T00:00:00Z",
        "nextUpdate": "2019-10-01T00:00:00Z",
        "fmspc": "00906ea10000",
        "pceId": "0000",
        "tcbType": 0,
        "tcbEvaluationDataNumber": 5,
        "tcbLevels": [{"tcb": tcb, "tcbDate": "2019-05-15T00:00:00Z", "tcbStatus": "OutOfDate"}],
    }
    info = parse_tcb_info(body(json.dumps(inner).encode()))
    assert info.id == "SGX" and info.version == 2
    assert info.tcb_levels[0].sgx_components == tuple(range(1, 17))
    assert info.tcb_levels[0].pcesvn == 7 and info.tcb_levels[0].advisory_ids == ()
    verify_tcb_info_signature(info, CERT)


def test_signature_covers_exact_bytes_not_a_reserialisation() -> None:
    # Whitespace, key order, escapes and non-ASCII text must survive byte for byte.
    obj = info_v3(SGX_LEVELS[:1], note='brace } quote " backslash \\ ünïcode')
    inner = json.dumps(obj, indent=2, ensure_ascii=False).encode()
    assert json.dumps(json.loads(inner)).encode() != inner
    sig = sign(inner)
    data = b'{ "signature" : "' + sig.encode() + b'" ,\n  "tcbInfo" :\t' + inner + b"\n}\n"
    signed, parsed, raw = split_signed_body(data, "tcbInfo")
    assert signed == inner and parsed["note"] == obj["note"] and raw.hex() == sig
    verify_tcb_info_signature(parse_tcb_info(data), CERT)


def test_tamper_inside_signed_object_fails() -> None:
    data = sgx_body()
    info = parse_tcb_info(
        data.replace(b'"tcbEvaluationDataNumber":17', b'"tcbEvaluationDataNumber":18')
    )
    assert info.tcb_evaluation_data_number == 18
    with pytest.raises(VerificationError):
        verify_tcb_info_signature(info, CERT)
    with pytest.raises(VerificationError):
        verify_tcb_info_signature(
            parse_tcb_info(data), _cert(ec.generate_private_key(ec.SECP256R1()))
        )


def test_parse_tdx_v3_with_module_identities() -> None:
    ident = {
        "id": "TDX_01",
        "mrsigner": "00" * 48,
        "attributes": "00" * 8,
        "attributesMask": "FF" * 8,
        "tcbLevels": [
            {"tcb": {"isvsvn": 4}, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": "UpToDate"},
            {
                "tcb": {"isvsvn": 2},
                "tcbDate": "2023-08-09T00:00:00Z",
                "tcbStatus": "OutOfDate",
                "advisoryIDs": ["INTEL-SA-01036"],
            },
        ],
    }
    levels = [
        level_v3([2] * 16, 11, "UpToDate", tdx=[5, 0, 3] + [0] * 13),
        level_v3([2] * 16, 11, "OutOfDate", tdx=[0] * 16),
    ]
    info = parse_tcb_info(
        body(json.dumps(info_v3(levels, tee="TDX", tdxModuleIdentities=[ident])).encode())
    )
    assert info.id == "TDX" and info.tdx_module is not None
    assert info.tdx_module.attributes_mask == b"\xff" * 8
    assert info.tdx_module_identities[0].id == "TDX_01"
    assert info.tcb_levels[0].tdx_components == (5, 0, 3, *[0] * 13)
    tee = [4, 1, 3] + [0] * 13
    # With module identities and TEE_TCB_SVN[1] > 0 the comparison starts at index 2.
    assert select_platform_tcb(info, [2] * 16, 11, tee).status is TcbStatus.UP_TO_DATE
    assert (
        select_platform_tcb(info, [2] * 16, 11, [4, 0, 3] + [0] * 13).status
        is TcbStatus.OUT_OF_DATE
    )
    module = select_tdx_module_tcb(info, tee)
    assert module is not None and module.status is TcbStatus.UP_TO_DATE
    module = select_tdx_module_tcb(info, [3, 1] + [0] * 14)
    assert module is not None and module.advisory_ids == ("INTEL-SA-01036",)
    assert select_tdx_module_tcb(info, [3, 0] + [0] * 14) is None
    with pytest.raises(VerificationError, match="TDX_0A"):
        select_tdx_module_tcb(info, [3, 10] + [0] * 14)
    with pytest.raises(VerificationError, match="no matching TDX module"):
        select_tdx_module_tcb(info, [1, 1] + [0] * 14)
    with pytest.raises(VerificationError):
        select_platform_tcb(info, [2] * 16, 11)  # TDX TCB Info needs TEE_TCB_SVN


def _mutate(obj: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    obj = json.loads(json.dumps(obj))
    target = obj
    for p in path[:-1]:
        target = target[p]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return obj


BASE = info_v3(SGX_LEVELS)


@pytest.mark.parametrize(
    "inner",
    [
        _mutate(BASE, ("tcbLevels", 0, "tcbStatus"), "Unknown"),
        _mutate(BASE, ("tcbLevels", 0, "tcbStatus"), "uptodate"),
        _mutate(BASE, ("version",), 4),
        _mutate(BASE, ("version",), True),
        _mutate(BASE, ("id",), "SEV"),
        _mutate(BASE, ("fmspc",), "00A0671100"),
        _mutate(BASE, ("fmspc",), "00A06711000G"),
        _mutate(BASE, ("pceId",), 0),
        _mutate(BASE, ("issueDate",), "yesterday"),
        _mutate(BASE, ("issueDate",), "2025-06-19T10:56:11"),
        _mutate(BASE, ("nextUpdate",), KeyError),
        _mutate(BASE, ("tcbLevels",), []),
        _mutate(BASE, ("tcbLevels", 0, "tcb", "sgxtcbcomponents"), [{"svn": 1}] * 15),
        _mutate(BASE, ("tcbLevels", 0, "tcb", "sgxtcbcomponents", 3), {"svn": 256}),
        _mutate(BASE, ("tcbLevels", 0, "tcb", "pcesvn"), -1),
        _mutate(BASE, ("tcbLevels", 0, "advisoryIDs"), [1]),
        _mutate(BASE, ("tcbLevels", 0), "level"),
        _mutate(info_v3(SGX_LEVELS, tee="TDX"), ("tdxModule",), KeyError),
    ],
)
def test_structural_errors_are_parse_errors(inner: dict[str, Any]) -> None:
    with pytest.raises(ParseError):
        parse_tcb_info(body(json.dumps(inner).encode()))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[]",
        b"\xff\xfe",
        b'{"tcbInfo":{},"signature":"00"}',
        b'{"tcbInfo":[],"signature":"' + b"00" * 64 + b'"}',
        b'{"tcbInfo":{"a":1,"a":2},"signature":"' + b"00" * 64 + b'"}',
        b'{"tcbInfo":{},"tcbInfo":{},"signature":"' + b"00" * 64 + b'"}',
        b'{"tcbInfo":{"a":NaN},"signature":"' + b"00" * 64 + b'"}',
        b'{"tcbInfo":{},"signature":"' + b"00" * 64 + b'","extra":1}',
        b'{"tcbInfo":{},"signature":"' + b"00" * 64 + b'"} trailing',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"tcbInfo":{"pad":"' + b"a" * (1024 * 1024) + b'"},"signature":""}',
    ],
)
def test_malformed_bodies_are_parse_errors(data: bytes) -> None:
    with pytest.raises(ParseError):
        parse_tcb_info(data)


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(min_value=0), byte=st.integers(min_value=0, max_value=255))
def test_parser_is_total_under_byte_mutation(pos: int, byte: int) -> None:
    data = bytearray(sgx_body())
    data[pos % len(data)] = byte
    with contextlib.suppress(ParseError):
        parse_tcb_info(bytes(data))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=256))
def test_parser_is_total_on_random_bytes(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_tcb_info(data)


# ------------------------------------------------------------------ TCB level selection


def test_select_first_matching_level_in_order() -> None:
    info = parse_tcb_info(sgx_body())
    cpusvn = [11, 11, 2, 2, 255, 1, 0] + [0] * 9
    ev = select_platform_tcb(info, cpusvn, 13)
    assert ev.status is TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED
    assert ev.advisory_ids == ("INTEL-SA-00289", "INTEL-SA-00615")
    assert ev.tcb_date == datetime(2024, 3, 13, tzinfo=UTC)
    assert select_platform_tcb(info, [11, 11, 2, 2, 255, 1, 12] + [0] * 9, 13).status is (
        TcbStatus.SW_HARDENING_NEEDED
    )
    # Higher SVNs still match the first level they dominate.
    assert select_platform_tcb(info, [255] * 16, 65535).status is TcbStatus.SW_HARDENING_NEEDED
    # PCESVN below every non-revoked level falls to the last one.
    assert select_platform_tcb(info, cpusvn, 12).status is TcbStatus.REVOKED
    # One component lower than the level -> next level.
    assert (
        select_platform_tcb(info, [10, 11, 2, 2, 255, 1] + [0] * 10, 13).status
        is TcbStatus.OUT_OF_DATE
    )


def test_no_matching_level() -> None:
    info = parse_tcb_info(sgx_body(SGX_LEVELS[:3]))
    with pytest.raises(VerificationError, match="no matching TCB level"):
        select_platform_tcb(info, [11, 11, 2, 2, 254, 1] + [0] * 10, 13)
    with pytest.raises(VerificationError, match="no matching TCB level"):
        select_platform_tcb(info, [255] * 16, 12)


@pytest.mark.parametrize(
    ("comps", "pcesvn", "tdx"),
    [
        ([0] * 15, 1, None),
        ([0] * 16 + [0], 1, None),
        ([256] + [0] * 15, 1, None),
        ([0] * 16, -1, None),
        ([0] * 16, True, None),
        ([0] * 16, 1, [0] * 16),
    ],
)
def test_select_rejects_bad_inputs(comps: list[int], pcesvn: int, tdx: list[int] | None) -> None:
    info = parse_tcb_info(sgx_body())
    with pytest.raises(VerificationError):
        select_platform_tcb(info, comps, pcesvn, tdx)
