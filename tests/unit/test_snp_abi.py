"""SEV-SNP ATTESTATION_REPORT parser: layouts, MBZ checks, TCB decoding, totality."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teeflow.attestation.snp.abi import (
    REPORT_SIZE,
    AttestationReport,
    FirmwareVersion,
    GuestPolicy,
    PlatformInfo,
    SigningKey,
    SnpProduct,
    TcbVersion,
    parse_report,
    product_from_cpuid,
    product_from_name,
)
from teeflow.errors import ParseError

MILAN_TCB = TcbVersion.from_components(SnpProduct.MILAN, bootloader=3, tee=0, snp=8, microcode=115)


def make(version: int = 3, **changes: object) -> AttestationReport:
    base = AttestationReport(
        version=version, guest_svn=7, policy=GuestPolicy.parse(0x30000),
        family_id=bytes(range(16)), image_id=bytes(range(16, 32)), vmpl=1,
        signature_algo=1, current_tcb=MILAN_TCB, platform_info=PlatformInfo(0x25),
        signer_info=0, report_data=bytes(range(64)), measurement=bytes(range(48)),
        host_data=b"\x11" * 32, id_key_digest=b"\x22" * 48, author_key_digest=b"\x33" * 48,
        report_id=b"\x44" * 32, report_id_ma=b"\xff" * 32, reported_tcb=MILAN_TCB,
        cpuid_family=0x19 if version >= 3 else None,
        cpuid_model=0x01 if version >= 3 else None,
        cpuid_stepping=0x01 if version >= 3 else None,
        chip_id=b"\x55" * 64, committed_tcb=MILAN_TCB,
        current_version=FirmwareVersion(1, 55, 29), committed_version=FirmwareVersion(1, 55, 28),
        launch_tcb=MILAN_TCB, launch_mit_vector=3 if version >= 5 else None,
        current_mit_vector=7 if version >= 5 else None,
        signature=bytes(range(1, 145)) + bytes(0x200 - 144),
    )  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("version", [2, 3, 4, 5])
def test_round_trip(version: int) -> None:
    report = make(version)
    data = report.to_bytes()
    assert len(data) == REPORT_SIZE
    assert parse_report(data) == report
    assert parse_report(bytearray(data)) == report
    assert report.signed_bytes == data[:0x2A0]


def test_field_offsets() -> None:
    data = make(5).to_bytes()
    assert data[0x50:0x90] == bytes(range(64))
    assert data[0x90:0xC0] == bytes(range(48))
    assert data[0x188:0x18B] == bytes([0x19, 0x01, 0x01])
    assert data[0x1A0:0x1E0] == b"\x55" * 64
    assert data[0x1E8:0x1F0] == bytes([29, 55, 1, 0, 28, 55, 1, 0])
    assert data[0x1F8:0x208] == (3).to_bytes(8, "little") + (7).to_bytes(8, "little")
    assert data[0x2A0 : 0x2A0 + 144] == bytes(range(1, 145))


def test_signature_components_little_endian() -> None:
    r = int.from_bytes(bytes(range(1, 49)), "little")
    s = int.from_bytes(bytes(range(100, 148)), "little")
    sig = r.to_bytes(72, "little") + s.to_bytes(72, "little") + bytes(0x200 - 144)
    report = parse_report(make(signature=sig).to_bytes())
    assert (report.signature_r, report.signature_s) == (r, s)


def test_version_specific_fields() -> None:
    v2 = parse_report(make(2).to_bytes())
    assert v2.cpuid_family is None and v2.product is None and v2.launch_mit_vector is None
    v3 = parse_report(make(3).to_bytes())
    assert v3.product is SnpProduct.MILAN and v3.launch_mit_vector is None
    v5 = parse_report(make(5).to_bytes())
    assert (v5.launch_mit_vector, v5.current_mit_vector) == (3, 7)


@pytest.mark.parametrize("version", [0, 1, 6, 0xFFFFFFFF])
def test_unknown_versions(version: int) -> None:
    data = bytearray(make(3).to_bytes())
    data[0:4] = version.to_bytes(4, "little")
    with pytest.raises(ParseError, match="version"):
        parse_report(bytes(data))


@pytest.mark.parametrize("length", [0, 1, REPORT_SIZE - 1, REPORT_SIZE + 1, 4096])
def test_wrong_length(length: int) -> None:
    with pytest.raises(ParseError):
        parse_report(bytes(length))


def test_not_bytes() -> None:
    with pytest.raises(ParseError):
        parse_report("x" * REPORT_SIZE)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("version", "offset"),
    [
        (3, 0x4C), (3, 0x4F), (2, 0x188), (3, 0x18B), (3, 0x19F), (3, 0x1EB), (3, 0x1EF),
        (3, 0x1F8), (3, 0x207), (5, 0x208), (5, 0x29F), (3, 0x2A0 + 0x90), (3, 0x49F),
    ],
)  # fmt: skip
def test_mbz_bytes(version: int, offset: int) -> None:
    data = bytearray(make(version).to_bytes())
    data[offset] = 0x80
    with pytest.raises(ParseError, match="zero"):
        parse_report(bytes(data))


def test_signature_tail_only_checked_for_ecdsa() -> None:
    data = bytearray(make(3, signature_algo=2).to_bytes())
    data[0x49F] = 1
    assert parse_report(bytes(data)).signature_algo == 2


@pytest.mark.parametrize("raw", [0x10000, 0x30000 | 1 << 26, 0x30000 | 1 << 63])
def test_policy_reserved_bits(raw: int) -> None:
    with pytest.raises(ParseError, match="policy"):
        GuestPolicy.parse(raw)
    data = bytearray(make().to_bytes())
    data[8:16] = raw.to_bytes(8, "little")
    with pytest.raises(ParseError):
        parse_report(bytes(data))


def test_policy_decoding() -> None:
    p = GuestPolicy.parse(0x3FF1F02)
    assert (p.abi_minor, p.abi_major) == (2, 0x1F)
    assert p.smt_allowed and p.reserved_bit17 and p.migrate_ma and p.debug_allowed
    assert p.single_socket and p.cxl_allowed and p.mem_aes_256_xts and p.rapl_dis
    assert p.ciphertext_hiding_dram and p.page_swap_disable
    q = GuestPolicy.parse(0x20000)
    assert not (q.smt_allowed or q.migrate_ma or q.debug_allowed or q.single_socket)


def test_platform_info_decoding() -> None:
    info = PlatformInfo(0xBF)
    assert info.smt_enabled and info.tsme_enabled and info.ecc_enabled and info.rapl_disabled
    assert info.ciphertext_hiding_dram_enabled and info.alias_check_complete and info.tio_enabled
    assert not PlatformInfo(0x40).smt_enabled


@pytest.mark.parametrize(("value", "key"), [(0, "VCEK"), (1, "VLEK"), (7, "NONE")])
def test_signing_key(value: int, key: str) -> None:
    report = parse_report(make(signer_info=value << 2 | 3).to_bytes())
    assert report.signing_key is SigningKey[key]
    assert report.author_key_en and report.mask_chip_key


@pytest.mark.parametrize("signer_info", [2 << 2, 6 << 2, 1 << 5, 1 << 31])
def test_signer_info_reserved(signer_info: int) -> None:
    with pytest.raises(ParseError):
        parse_report(make(signer_info=signer_info).to_bytes())


def test_tcb_layouts() -> None:
    legacy = TcbVersion(0x4405000000000002)
    assert legacy.components() == {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}
    assert legacy.fmc is None and legacy.reserved == bytes(4)
    turin = TcbVersion.from_components(
        SnpProduct.TURIN, bootloader=2, tee=3, snp=4, microcode=5, fmc=1
    )
    assert turin.raw.to_bytes(8, "little") == bytes([1, 2, 3, 4, 0, 0, 0, 5])
    assert turin.components() == {"bootloader": 2, "tee": 3, "snp": 4, "microcode": 5, "fmc": 1}
    assert turin.for_product(SnpProduct.MILAN).snp == 0
    with pytest.raises(ValueError):
        TcbVersion.from_components(SnpProduct.TURIN, bootloader=1, tee=1, snp=1, microcode=1)
    with pytest.raises(ValueError):
        TcbVersion.from_components(SnpProduct.MILAN, bootloader=1, tee=1, snp=1, microcode=1, fmc=1)
    with pytest.raises(ValueError):
        TcbVersion.from_components(SnpProduct.MILAN, bootloader=256, tee=1, snp=1, microcode=1)


def test_turin_report_decodes_tcb_with_turin_layout() -> None:
    tcb = TcbVersion.from_components(
        SnpProduct.TURIN, bootloader=2, tee=3, snp=4, microcode=5, fmc=1
    )
    data = make(
        3, cpuid_family=0x1A, cpuid_model=0x02, reported_tcb=tcb, current_tcb=tcb,
        committed_tcb=tcb, launch_tcb=tcb,
    ).to_bytes()  # fmt: skip
    report = parse_report(data)
    assert report.product is SnpProduct.TURIN
    assert report.reported_tcb.fmc == 1 and report.reported_tcb.snp == 4


@pytest.mark.parametrize(
    ("family", "model", "product"),
    [
        (0x19, 0x01, SnpProduct.MILAN), (0x19, 0x11, SnpProduct.GENOA),
        (0x19, 0xA0, SnpProduct.GENOA), (0x1A, 0x02, SnpProduct.TURIN),
        (0x19, 0x30, None), (0x17, 0x01, None), (0, 0, None),
    ],
)  # fmt: skip
def test_product_from_cpuid(family: int, model: int, product: SnpProduct | None) -> None:
    assert product_from_cpuid(family, model) is product


def test_product_from_name() -> None:
    assert product_from_name("Milan-B0") is SnpProduct.MILAN
    assert product_from_name("Genoa") is SnpProduct.GENOA
    assert product_from_name("Turin-B1") is SnpProduct.TURIN
    assert product_from_name("milan") is None and product_from_name("") is None


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=REPORT_SIZE + 8))
def test_parser_is_total_on_random_bytes(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_report(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, REPORT_SIZE - 1), st.integers(0, 255)), max_size=8))
def test_parser_is_total_on_mutations(edits: list[tuple[int, int]]) -> None:
    data = bytearray(make(3).to_bytes())
    for offset, value in edits:
        data[offset] = value
    try:
        report = parse_report(bytes(data))
    except ParseError:
        return
    assert report.to_bytes() == bytes(data)
