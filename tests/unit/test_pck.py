"""PCK certificate Intel SGX extension decoding (PCK profile 1.3.5)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import encoder
from pyasn1.type import univ

from teeflow.attestation.dcap.pck import (
    PckConfiguration,
    SgxType,
    parse_pck_extensions,
    parse_sgx_extension_value,
)
from teeflow.attestation.dcap.quote import parse_quote
from teeflow.attestation.sgx.verify import decode_pck_chain
from teeflow.errors import ParseError

SGX = "1.2.840.113741.1.13.1"


def entry(oid: str, value: Any) -> univ.Sequence:
    seq = univ.Sequence()
    seq.setComponentByPosition(0, univ.ObjectIdentifier(oid))
    seq.setComponentByPosition(1, value)
    return seq


def seq_of(*entries: univ.Sequence) -> univ.SequenceOf:
    out = univ.SequenceOf(componentType=univ.Sequence())
    for e in entries:
        out.append(e)
    return out


def tcb(
    comps: tuple[int, ...] = tuple(range(16)),
    pcesvn: int = 11,
    cpusvn: bytes = b"C" * 16,
    skip: int | None = None,
) -> univ.SequenceOf:
    items = [entry(f"{SGX}.2.{i}", univ.Integer(c)) for i, c in enumerate(comps, 1)]
    items.append(entry(f"{SGX}.2.17", univ.Integer(pcesvn)))
    items.append(entry(f"{SGX}.2.18", univ.OctetString(cpusvn)))
    if skip is not None:
        del items[skip]
    return seq_of(*items)


def ext(**override: Any) -> bytes:
    items = {
        "1": univ.OctetString(b"P" * 16),
        "2": tcb(),
        "3": univ.OctetString(b"\x00\x01"),
        "4": univ.OctetString(bytes.fromhex("00906ed50000")),
        "5": univ.Enumerated(1),
    }
    items.update(override)
    return encoder.encode(
        seq_of(*(entry(f"{SGX}.{k}", v) for k, v in items.items() if v is not None))
    )


def test_decode_full_extension() -> None:
    config = seq_of(
        entry(f"{SGX}.7.1", univ.Boolean(True)), entry(f"{SGX}.7.3", univ.Boolean(False))
    )
    e = parse_sgx_extension_value(ext(**{"6": univ.OctetString(b"I" * 16), "7": config}))
    assert e.ppid == b"P" * 16
    assert e.tcb_components == tuple(range(16))
    assert (e.pcesvn, e.cpusvn, e.pce_id) == (11, b"C" * 16, b"\x00\x01")
    assert e.fmspc.hex() == "00906ed50000" and e.sgx_type is SgxType.SCALABLE
    assert e.platform_instance_id == b"I" * 16
    assert e.configuration == PckConfiguration(True, None, False)


def test_optional_items_absent() -> None:
    e = parse_sgx_extension_value(ext())
    assert e.platform_instance_id is None and e.configuration is None


@pytest.mark.parametrize(
    "override",
    [
        {"1": None},  # PPID missing
        {"2": None},  # TCB missing
        {"4": None},  # FMSPC missing
        {"5": None},  # SGX type missing
        {"1": univ.OctetString(b"P" * 15)},  # PPID wrong size
        {"4": univ.OctetString(b"F" * 7)},
        {"3": univ.Integer(0)},  # PCE-ID wrong type
        {"5": univ.Enumerated(3)},  # unknown SGX type
        {"2": tcb(comps=(256,) + (0,) * 15)},  # component out of range
        {"2": tcb(pcesvn=70000)},
        {"2": tcb(cpusvn=b"C" * 15)},
        {"2": tcb(skip=3)},  # component 4 missing
        {"2": tcb(skip=16)},  # PCESVN missing
        {"2": univ.Integer(5)},  # TCB not a sequence
        {"6": univ.OctetString(b"I" * 3)},
        {"7": univ.Integer(1)},
    ],
)
def test_malformed_extension(override: dict[str, Any]) -> None:
    with pytest.raises(ParseError):
        parse_sgx_extension_value(ext(**override))


def test_malformed_der() -> None:
    good = ext()
    for bad in (b"", b"\x30", good[:-1], good + b"\x00", b"\x04\x02ab", b"\xff" * 10, bytes(5000)):
        with pytest.raises(ParseError):
            parse_sgx_extension_value(bad)
    dup = encoder.encode(
        seq_of(
            entry(f"{SGX}.1", univ.OctetString(b"P" * 16)),
            entry(f"{SGX}.1", univ.OctetString(b"P" * 16)),
        )
    )
    with pytest.raises(ParseError, match="duplicate"):
        parse_sgx_extension_value(dup)


def _cert(extension: bytes | None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2024, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2025, 1, 1, tzinfo=UTC))
    )
    if extension is not None:
        b = b.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX), extension), False
        )
    return b.sign(key, hashes.SHA256())


def test_certificate_entry_point() -> None:
    assert parse_pck_extensions(_cert(ext())).fmspc.hex() == "00906ed50000"
    with pytest.raises(ParseError, match="no Intel SGX extension"):
        parse_pck_extensions(_cert(None))
    with pytest.raises(ParseError):
        parse_pck_extensions(_cert(b"\x30\x03\x02\x01\x01"))


@pytest.mark.vectors
def test_real_pck_certificates(attestation_dir: Path, manifest: dict[str, Any]) -> None:
    n = 0
    for name, meta in manifest["files"].items():
        if not meta.get("kind", "").startswith("dcap_quote"):
            continue
        want = meta["expected"]["fields"]["pck_cert"]
        q = parse_quote((attestation_dir / name).read_bytes())
        assert q.pck_chain_pem is not None
        e = parse_pck_extensions(decode_pck_chain(q.pck_chain_pem)[0])
        assert e.fmspc.hex() == want["fmspc"]
        assert e.pce_id.hex() == want["pceid"]
        assert int(e.sgx_type) == want["sgx_type"]
        assert e.ppid.hex() == want["ppid"]
        assert e.pcesvn == want["tcb"]["pcesvn"]
        assert e.cpusvn.hex() == want["tcb"]["cpusvn"]
        assert e.tcb_components == tuple(want["tcb"][f"comp{i:02d}"] for i in range(1, 17))
        assert (e.configuration is not None) == (e.sgx_type != SgxType.STANDARD)
        n += 1
    assert n >= 4
