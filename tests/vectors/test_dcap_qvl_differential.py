"""Differential test: teeflow and dcap-qvl (Phala, Rust) agree on accept/reject and TCB status.

For every real SGX quote in ../shared (with the Phala collateral — the only time-consistent
set; the others then fail both verifiers on FMSPC) and for an emulated quote with its
emulated collateral and root (dcap-qvl's ``verify_with_root_ca``), we compare the genuine
quote and >= 2,000 mutated variants: single-bit flips (anywhere and in the signed region),
truncations, appended bytes and structural field swaps.

Documented disagreements (teeflow is stricter; never the other way round):

* ``pem-encoding``: teeflow decodes the PCK chain strictly (PEM blocks separated only by line
  breaks, canonical base64, only NUL padding after the last block), so any bit flip in the
  certification data is rejected; dcap-qvl's PEM reader ignores some flips (a NUL padding
  byte turned into another byte, a flipped line break). The certificate bytes are identical,
  so both are "right"; teeflow refuses malleable encodings.
* ``nested-length``: a flip that shrinks the certification-data size field leaves unparsed
  bytes inside the declared signature data. teeflow requires nested structures to fill
  their enclosing declared length exactly (no unauthenticated slack inside the quote);
  dcap-qvl ignores the leftover bytes and still finds the PCK chain.
"""

from __future__ import annotations

import random
import struct
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from teeflow.attestation.dcap.collateral import IntelCollateral
from teeflow.attestation.sgx import parse_quote, verify
from teeflow.attestation.trust import TrustAnchor, intel_sgx_root_ca
from teeflow.errors import Error

qvl = pytest.importorskip("dcap_qvl", reason="dcap-qvl (dev dependency) not installed")

from teeflow.testing.dcap_qvl import qvl_collateral_from_dir, qvl_verdict  # noqa: E402
from teeflow.testing.evidence import emulated_authority, make_emulated_quote  # noqa: E402

PHALA_SET = "sgx/collateral/sgx_00A067110000_2025-06-19_phala"
AT = datetime(2025, 7, 1, tzinfo=UTC)
SGX_QUOTES = [
    "sgx/phala_sgx_quote_v3.bin",
    "sgx/mobilecoin_hw_quote_v3.bin",
    "sgx/trustee_occlum_quote_v3.bin",
    "sgx/oe_qve_thread_test_sgx_quote_v3.bin",
]
MUTATIONS_PER_ACCEPTED_QUOTE = 900
MUTATIONS_PER_REJECTED_QUOTE = 60


def teeflow_verdict(
    raw: bytes, anchors: list[TrustAnchor], collateral: IntelCollateral, at: datetime
) -> tuple[bool, str | None]:
    try:
        verified = verify(parse_quote(raw), anchors=anchors, collateral=collateral, now=at)
    except Error:
        return False, None
    return True, str(verified.tcb_status)


def _regions(raw: bytes) -> dict[str, tuple[int, int]]:
    """Byte ranges of a v3 SGX quote's parts (from its own length fields)."""
    auth_len = struct.unpack_from("<H", raw, 1012)[0]
    cert_start = 1014 + auth_len
    cert_size = struct.unpack_from("<I", raw, cert_start + 2)[0]
    return {
        "header": (0, 48),
        "body": (48, 432),
        "signature": (436, 500),
        "attestation_key": (500, 564),
        "qe_report": (564, 948),
        "qe_report_signature": (948, 1012),
        "qe_auth_data": (1014, cert_start),
        "cert_data": (cert_start + 6, cert_start + 6 + cert_size),
    }


def mutate(raw: bytes, rng: random.Random) -> tuple[str, str, bytes]:
    """One mutated variant: (kind, region, bytes)."""
    regions = _regions(raw)
    kind = rng.choices(
        ["flip", "flip-region", "truncate", "append", "swap"], weights=[30, 45, 10, 5, 10]
    )[0]
    data = bytearray(raw)
    if kind == "flip":
        bit = rng.randrange(len(raw) * 8)
        data[bit // 8] ^= 1 << (bit % 8)
        where = next(
            (n for n, (lo, hi) in regions.items() if lo <= bit // 8 < hi), "length-fields"
        )
        return kind, where, bytes(data)
    if kind == "flip-region":
        name = rng.choice(sorted(regions))
        lo, hi = regions[name]
        if hi <= lo:
            name, (lo, hi) = "body", regions["body"]
        bit = rng.randrange(lo * 8, hi * 8)
        data[bit // 8] ^= 1 << (bit % 8)
        return kind, name, bytes(data)
    if kind == "truncate":
        return kind, "any", raw[: rng.randrange(len(raw))]
    if kind == "append":
        return kind, "trailer", raw + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    # swap two same-sized signed/signature fields
    pairs = [
        ("signature", "qe_report_signature"),
        ("body", "qe_report"),
        ("attestation_key", "signature"),
    ]
    a, b = rng.choice(pairs)
    (alo, ahi), (blo, bhi) = regions[a], regions[b]
    chunk_a, chunk_b = bytes(data[alo:ahi]), bytes(data[blo:bhi])
    data[alo:ahi], data[blo:bhi] = chunk_b, chunk_a
    return kind, f"{a}<->{b}", bytes(data)


def _allowed_disagreement(region: str, ours: bool, theirs: bool) -> str | None:
    if not ours and theirs and region == "cert_data":
        return "pem-encoding"
    if not ours and theirs and region == "length-fields":
        return "nested-length"
    return None


def _compare(
    raw: bytes,
    *,
    anchors: list[TrustAnchor],
    collateral: IntelCollateral,
    qvl_col: Any,
    root_der: bytes | None,
    at: datetime,
    count: int,
    seed: int,
) -> Counter[str]:
    now_secs = int(at.timestamp())
    stats: Counter[str] = Counter()
    rng = random.Random(seed)
    ours = teeflow_verdict(raw, anchors, collateral, at)
    theirs = qvl_verdict(raw, qvl_col, now_secs, root_der)
    assert ours == theirs, f"genuine quote: teeflow {ours} vs dcap-qvl {theirs}"
    for _ in range(count):
        kind, region, variant = mutate(raw, rng)
        ours = teeflow_verdict(variant, anchors, collateral, at)
        theirs = qvl_verdict(variant, qvl_col, now_secs, root_der)
        stats["variants"] += 1
        if ours == theirs:
            if ours[0] and kind != "append":
                stats["agree-accept-mutated"] += 1  # a real mutation passed both verifiers
            stats["agree-accept" if ours[0] else "agree-reject"] += 1
            continue
        reason = _allowed_disagreement(region, ours[0], theirs[0])
        assert reason is not None, (
            f"disagreement on {kind} in {region}: teeflow {ours} vs dcap-qvl {theirs}"
        )
        stats[f"documented:{reason}"] += 1
    return stats


@pytest.mark.vectors
@pytest.mark.slow
def test_real_sgx_quotes_agree_with_dcap_qvl(attestation_dir: Path) -> None:
    collateral = IntelCollateral.from_dir(attestation_dir / PHALA_SET)
    qvl_col = qvl_collateral_from_dir(attestation_dir / PHALA_SET)
    total: Counter[str] = Counter()
    for i, name in enumerate(SGX_QUOTES):
        raw = (attestation_dir / name).read_bytes()
        accepted = name.startswith("sgx/phala")
        total += _compare(
            raw,
            anchors=[intel_sgx_root_ca()],
            collateral=collateral,
            qvl_col=qvl_col,
            root_der=None,
            at=AT,
            count=MUTATIONS_PER_ACCEPTED_QUOTE if accepted else MUTATIONS_PER_REJECTED_QUOTE,
            seed=1000 + i,
        )
    assert total["variants"] >= MUTATIONS_PER_ACCEPTED_QUOTE
    assert total["agree-reject"] > 0
    assert total["agree-accept-mutated"] == 0


@pytest.mark.slow
def test_emulated_quote_agrees_with_dcap_qvl() -> None:
    now = datetime(2026, 11, 21, tzinfo=UTC)
    raw, anchor, collateral = make_emulated_quote(b"differential", now=now)
    root_der = anchor.certificate.public_bytes(Encoding.DER)
    with tempfile.TemporaryDirectory() as tmp:
        emulated_authority().write_collateral_dir(Path(tmp), now=now)
        qvl_col = qvl_collateral_from_dir(Path(tmp))
    stats = _compare(
        raw,
        anchors=[anchor],
        collateral=collateral,
        qvl_col=qvl_col,
        root_der=root_der,
        at=now,
        count=1200,
        seed=7,
    )
    assert stats["variants"] == 1200
    # only bytes appended after the quote's declared end are accepted (by both verifiers)
    assert stats["agree-accept-mutated"] == 0
