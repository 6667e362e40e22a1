"""Property tests: the DCAP quote parser is total and round-trips what it accepts.

Any input gives a ``Quote`` or ``ParseError`` (never IndexError, struct.error, ValueError
...), and an accepted quote re-serialises to exactly the bytes it was parsed from. Inputs:
random bytes, random bytes behind a plausible header, and random mutations / truncations /
splices of the real quotes in ../shared/testdata/attestation.
"""

from __future__ import annotations

import os
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teeflow.attestation.dcap.quote import Quote, parse_quote
from teeflow.attestation.sgx import parse_quote as parse_sgx_quote
from teeflow.attestation.sgx import verify
from teeflow.attestation.trust import intel_sgx_root_ca
from teeflow.errors import Error, ParseError

_SHARED = Path(
    os.environ.get("TEEFLOW_SHARED", Path(__file__).resolve().parents[2].parent / "shared")
)
_DIR = _SHARED / "testdata" / "attestation"
_NAMES = sorted(p.relative_to(_DIR).as_posix() for p in _DIR.glob("*/*quote*.bin"))
REAL = {name: (_DIR / name).read_bytes() for name in _NAMES}
pytestmark = [
    # Mutated certificates make cryptography warn (negative serials, odd attribute lengths).
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
needs_vectors = pytest.mark.skipif(not REAL, reason=f"real quotes not found under {_DIR}")


def check_total(data: bytes) -> Quote | None:
    try:
        q = parse_quote(data)
    except ParseError:
        return None
    assert q.to_bytes() == data[: q.parsed_length]
    assert q.parsed_length + q.trailing_bytes == len(data)
    assert len(q.report_data) == 64
    try:
        parse_sgx_quote(data)
    except ParseError:
        assert q.tee_type != 0
    return q


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=6000))
def test_random_bytes(data: bytes) -> None:
    check_total(data)


@settings(max_examples=400, deadline=None)
@given(
    version=st.sampled_from([3, 4, 5, 2, 6]),
    tee=st.sampled_from([0, 0x81, 0x80]),
    key_type=st.sampled_from([2, 3, 0]),
    rest=st.binary(max_size=2000),
    sizes=st.lists(st.integers(0, 5000), max_size=6),
)
def test_plausible_header(
    version: int, tee: int, key_type: int, rest: bytes, sizes: list[int]
) -> None:
    header = struct.pack("<HHIHH", version, key_type, tee, 1, 1) + bytes(36)
    body = bytes(384 if tee == 0 else 584)
    if version == 5:
        body = struct.pack("<HI", 1 if tee == 0 else 2, len(body)) + body
    lengths = b"".join(struct.pack("<I", n) for n in sizes)
    check_total(header + body + lengths + rest)


mutation = st.tuples(st.integers(0, 10_000), st.integers(0, 255))


@needs_vectors
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(_NAMES or ["-"]),
    edits=st.lists(mutation, max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 10_000)),
    splice=st.one_of(st.none(), st.tuples(st.integers(0, 10_000), st.binary(max_size=64))),
)
def test_mutated_real_quotes(
    name: str, edits: list[tuple[int, int]], cut: int | None, splice: tuple[int, bytes] | None
) -> None:
    data = bytearray(REAL[name])
    for pos, value in edits:
        data[pos % len(data)] = value
    if splice is not None:
        pos = splice[0] % (len(data) + 1)
        data[pos:pos] = splice[1]
    if cut is not None:
        del data[cut % (len(data) + 1) :]
    check_total(bytes(data))


@needs_vectors
def test_every_truncation_of_real_quotes() -> None:
    for name, data in REAL.items():
        q = parse_quote(data)
        for n in range(q.parsed_length):
            with pytest.raises(ParseError):
                parse_quote(data[:n])
        for n in range(q.parsed_length, len(data) + 1):
            assert parse_quote(data[:n]).trailing_bytes == n - q.parsed_length, name


@needs_vectors
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from([n for n in _NAMES if n.startswith("sgx/")] or ["-"]),
    edits=st.lists(mutation, min_size=1, max_size=3),
)
def test_verify_fails_closed_on_mutations(name: str, edits: list[tuple[int, int]]) -> None:
    """Mutated SGX quotes: parse or verify raises a teeflow error (or nothing changed)."""
    original = REAL[name]
    data = bytearray(original)
    for pos, value in edits:
        data[pos % len(data)] = value
    try:
        q = parse_sgx_quote(bytes(data))
        verify(
            q,
            anchors=[intel_sgx_root_ca()],
            collateral=None,
            now=datetime(2025, 6, 1, tzinfo=UTC),
            signatures_only=True,
        )
    except Error:
        return
    # Accepted: only possible if the edits left the signed/checked bytes unchanged.
    assert bytes(data) == original
