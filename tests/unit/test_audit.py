"""Audit log: hash chain + Ed25519 signatures; every tamper is an AuditChainError at its seq."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from teeflow.errors import ParseError, VerificationError
from teeflow.kbs.service.audit import (
    AUDIT_DOMAIN,
    AuditChainError,
    AuditError,
    AuditLog,
    audit_entry_from_json,
    audit_entry_hash,
    audit_entry_to_json,
    audit_hash_input,
    verify_audit_chain,
)
from teeflow.kbs.store.interface import (
    GENESIS_HASH,
    AuditEntry,
    StorageConflict,
)
from teeflow.kbs.store.memory import (
    MemoryStore,
)

T0 = datetime(2026, 3, 1, 8, 30, 0, 250000, tzinfo=UTC)
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def _clock(start: datetime = T0) -> Callable[[], datetime]:
    ticks = iter(range(10**9))
    return lambda: start + timedelta(seconds=next(ticks))


def _chain(n: int = 5) -> list[AuditEntry]:
    log = AuditLog(MemoryStore(), KEY, _clock())
    kinds = ["agreement", "attestation", "release", "certificate", "counter"]
    return [
        log.append(
            kinds[i % 5],
            f"subject-{i}",
            ["accept", "deny", "info"][i % 3],
            [f"reason {i}"],
            {"i": i, "measurement_digest": "ab" * 32, "nested": {"ok": [True, None, 1.5]}},
        )
        for i in range(n)
    ]


def test_chain_verifies_and_links() -> None:
    entries = _chain()
    verify_audit_chain(entries, KEY.public_key())
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].prev_hash == GENESIS_HASH
    for prev, cur in itertools.pairwise(entries):
        assert cur.prev_hash == prev.hash
    for e in entries:
        assert e.hash == audit_entry_hash(e)
        KEY.public_key().verify(e.signature, AUDIT_DOMAIN + e.hash)  # raises if wrong
        assert len(e.signature) == 64
    verify_audit_chain(entries, KEY.public_key(), expected_head=entries[-1].hash)
    verify_audit_chain(entries[2:], KEY.public_key(), after=entries[1])
    verify_audit_chain([], KEY.public_key())


def test_hash_input_is_documented_canonical_json() -> None:
    e = _chain(1)[0]
    expected = {
        "format": "teeflow-audit/1",
        "seq": 1,
        "time": "2026-03-01T08:30:00.250000Z",
        "kind": "agreement",
        "subject": "subject-0",
        "decision": "accept",
        "reasons": ["reason 0"],
        "data": e.data,
        "prev_hash": "00" * 32,
    }
    # ASCII-only, integer-and-simple-float data: JCS equals sorted compact json.dumps
    text = json.dumps(expected, sort_keys=True, separators=(",", ":")).encode()
    fields = {k: getattr(e, k) for k in ("seq", "time", "kind", "subject", "decision")}
    got = audit_hash_input(**fields, reasons=e.reasons, data=e.data, prev_hash=e.prev_hash)
    assert got == text
    assert e.hash == hashlib.sha256(text).digest()


def _flip(value: bytes) -> bytes:
    return bytes([value[0] ^ 1]) + value[1:]


TAMPERS: dict[str, Callable[[AuditEntry], AuditEntry]] = {
    "seq": lambda e: replace(e, seq=e.seq + 10),
    "time": lambda e: replace(e, time=e.time + timedelta(microseconds=1)),
    "kind": lambda e: replace(e, kind="tampered"),
    "subject": lambda e: replace(e, subject=e.subject + "x"),
    "decision": lambda e: replace(e, decision="accept" if e.decision != "accept" else "deny"),
    "reasons": lambda e: replace(e, reasons=[*e.reasons, "extra"]),
    "reasons-drop": lambda e: replace(e, reasons=[]),
    "data": lambda e: replace(e, data={**e.data, "i": -1}),
    "data-nested": lambda e: replace(e, data={**e.data, "nested": {"ok": [False, None, 1.5]}}),
    "prev_hash": lambda e: replace(e, prev_hash=_flip(e.prev_hash)),
    "hash": lambda e: replace(e, hash=_flip(e.hash)),
    "signature": lambda e: replace(e, signature=_flip(e.signature)),
    "signature-short": lambda e: replace(e, signature=e.signature[:-1]),
}


@pytest.mark.parametrize("index", range(5))
@pytest.mark.parametrize("field", sorted(TAMPERS))
def test_any_field_flip_is_detected_at_its_seq(field: str, index: int) -> None:
    entries = _chain()
    entries[index] = TAMPERS[field](entries[index])
    with pytest.raises(AuditChainError) as info:
        verify_audit_chain(entries, KEY.public_key())
    assert info.value.seq == entries[index].seq
    assert isinstance(info.value, VerificationError)
    assert f"seq {entries[index].seq}" in str(info.value)


@pytest.mark.parametrize("index", range(4))
def test_deletion_is_detected(index: int) -> None:
    entries = _chain()
    del entries[index]
    with pytest.raises(AuditChainError) as info:
        verify_audit_chain(entries, KEY.public_key())
    assert info.value.seq == index + 2  # the entry after the hole


def test_truncation_detected_only_against_known_head() -> None:
    entries = _chain()
    head = entries[-1].hash
    verify_audit_chain(entries[:-1], KEY.public_key())  # a prefix is a valid chain ...
    with pytest.raises(AuditChainError) as info:  # ... but not the one we saw before
        verify_audit_chain(entries[:-1], KEY.public_key(), expected_head=head)
    assert info.value.seq is None


@pytest.mark.parametrize(("i", "j"), [(0, 1), (1, 3), (3, 4)])
def test_reordering_is_detected(i: int, j: int) -> None:
    entries = _chain()
    entries[i], entries[j] = entries[j], entries[i]
    with pytest.raises(AuditChainError) as info:
        verify_audit_chain(entries, KEY.public_key())
    assert info.value.seq == entries[i].seq


def test_insertions_are_detected() -> None:
    entries = _chain()
    # a duplicate
    dup = [*entries[:3], entries[2], *entries[3:]]
    with pytest.raises(AuditChainError) as info:
        verify_audit_chain(dup, KEY.public_key())
    assert info.value.seq == 3
    # a well-formed entry signed by another key, re-linking the rest is impossible without
    # the KBS key: the forged entry itself fails its signature check
    forged_store = MemoryStore()
    for e in entries[:2]:
        forged_store.append_audit(e)  # same prefix
    forger = AuditLog(forged_store, Ed25519PrivateKey.generate(), _clock())
    forged = forger.append("release", "repo/key/stolen", "accept")
    with pytest.raises(AuditChainError) as info:
        verify_audit_chain([*entries[:2], forged, *entries[2:]], KEY.public_key())
    assert info.value.seq == 3 and "signature" in str(info.value)


def test_wrong_public_key_rejected() -> None:
    with pytest.raises(AuditChainError) as info:
        verify_audit_chain(_chain(), Ed25519PrivateKey.generate().public_key())
    assert info.value.seq == 1


def test_page_must_link_to_anchor() -> None:
    entries = _chain()
    with pytest.raises(AuditChainError) as info:
        verify_audit_chain(entries[3:], KEY.public_key(), after=entries[1])
    assert info.value.seq == 4


def test_json_round_trip() -> None:
    entries = _chain()
    wire = json.loads(json.dumps([audit_entry_to_json(e) for e in entries]))
    back = [audit_entry_from_json(obj) for obj in wire]
    assert back == entries
    verify_audit_chain(back, KEY.public_key())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o.pop("hash"),
        lambda o: o.update(extra=1),
        lambda o: o.update(seq="1"),
        lambda o: o.update(seq=True),
        lambda o: o.update(seq=0),
        lambda o: o.update(time="2026-03-01T08:30:00Z"),
        lambda o: o.update(time="2026-13-01T08:30:00.000000Z"),
        lambda o: o.update(hash="AB" * 32),
        lambda o: o.update(prev_hash="00"),
        lambda o: o.update(signature=""),
        lambda o: o.update(reasons=[1]),
        lambda o: o.update(data=[]),
        lambda o: o.update(kind=None),
    ],
)
def test_from_json_rejects_malformed(mutate: Callable[[dict[str, Any]], Any]) -> None:
    obj = audit_entry_to_json(_chain(1)[0])
    mutate(obj)
    with pytest.raises(ParseError):
        audit_entry_from_json(obj)
    with pytest.raises(ParseError):
        audit_entry_from_json([obj])


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("Bad Kind", "s", "info"), {}),
        (("", "s", "info"), {}),
        (("release", "", "info"), {}),
        (("release", "s" * 257, "info"), {}),
        (("release", "s", "maybe"), {}),
        (("release", "s", "info", "a single string"), {}),
        (("release", "s", "info", ["r"] * 65), {}),
        (("release", "s", "info", [1]), {}),
        (("release", "s", "info"), {"data": {"bytes": b"raw"}}),
        (("release", "s", "info"), {"data": {"big": 2**60}}),
        (("release", "s", "info"), {"data": {"nan": float("nan")}}),
        (("release", "s", "info"), {"data": ["not", "an", "object"]}),
        (("release", "s", "info"), {"data": {1: "non-string key"}}),
        (("release", "s", "info"), {"data": {"x": "y" * 70_000}}),
        (("release", "s", "info"), {"data": {"private_key": "..."}}),
        (("release", "s", "info"), {"data": {"token": "eyJ..."}}),
        (("release", "s", "info"), {"data": {"outer": [{"Wrapped_Key": "..."}]}}),
        (("release", "s", "info"), {"data": {"client_secret": "..."}}),
        (("release", "s", "info"), {"data": {"key": "..."}}),
    ],
)
def test_append_rejects_bad_entries(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    store = MemoryStore()
    log = AuditLog(store, KEY, _clock())
    with pytest.raises(AuditError):
        log.append(*args, **kwargs)
    assert store.last_audit() is None


def test_public_digests_are_allowed() -> None:
    log = AuditLog(MemoryStore(), KEY, _clock())
    e = log.append(
        "release",
        "repo/key/a",
        "accept",
        data={"token_digest": "aa", "wrapped_key_sha256": "bb", "key_fingerprint": "cc"},
    )
    assert set(e.data) == {"token_digest", "wrapped_key_sha256", "key_fingerprint"}


def test_data_is_normalised_and_copied() -> None:
    store = MemoryStore()
    log = AuditLog(store, KEY, _clock())
    data: dict[str, Any] = {"list": (1, 2), "float": 1.0}
    e = log.append("counter", "fl/round", "info", data=data)
    data["list"] = "mutated"
    assert e.data == {"list": [1, 2], "float": 1}
    assert store.last_audit() == e
    verify_audit_chain(store.audit_entries(), KEY.public_key())


def test_clock_must_be_aware_and_is_stored_in_utc() -> None:
    with pytest.raises(AuditError):
        AuditLog(MemoryStore(), KEY, lambda: datetime(2026, 1, 1)).append("x", "s", "info")
    plus5 = timezone(timedelta(hours=5))
    e = AuditLog(MemoryStore(), KEY, lambda: T0.astimezone(plus5)).append("x", "s", "info")
    assert e.time == T0 and e.time.tzinfo == UTC


def test_signing_key_must_be_ed25519() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    with pytest.raises(AuditError):
        AuditLog(MemoryStore(), ec.generate_private_key(ec.SECP256R1()), _clock())  # type: ignore[arg-type]


class _FlakyStore(MemoryStore):
    """Reports a conflict for the first ``failures`` appends (another writer won)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.attempts = 0

    def append_audit(self, entry: AuditEntry) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise StorageConflict("simulated concurrent append")
        super().append_audit(entry)


def test_append_retries_on_conflict() -> None:
    store = _FlakyStore(failures=3)
    e = AuditLog(store, KEY, _clock(), max_attempts=4).append("x", "s", "info")
    assert store.attempts == 4 and e.seq == 1


def test_append_gives_up_after_max_attempts() -> None:
    store = _FlakyStore(failures=10)
    with pytest.raises(StorageConflict):
        AuditLog(store, KEY, _clock(), max_attempts=3).append("x", "s", "info")
    assert store.attempts == 3 and store.last_audit() is None


def test_two_writers_on_one_store_keep_one_chain() -> None:
    store = MemoryStore()
    logs = [AuditLog(store, KEY, _clock(), max_attempts=1000) for _ in range(2)]
    barrier = threading.Barrier(2)

    def run(log: AuditLog) -> None:
        barrier.wait()
        for _ in range(50):
            log.append("counter", "c", "info")

    threads = [threading.Thread(target=run, args=(log,)) for log in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = store.audit_entries()
    assert len(entries) == 100
    verify_audit_chain(entries, KEY.public_key())


_JSON_LEAVES = (
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
)  # fmt: skip
_SAFE_KEYS = st.text(min_size=1, max_size=8).map(lambda k: "k" + k)  # never secret-looking


@settings(max_examples=300, deadline=None)
@given(
    subject=st.text(min_size=1, max_size=40),
    reasons=st.lists(st.text(max_size=30), max_size=4),
    data=st.dictionaries(
        _SAFE_KEYS,
        st.recursive(_JSON_LEAVES, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(_SAFE_KEYS, inner, max_size=3), max_leaves=8),
        max_size=5,
    ),
    seq=st.integers(1, 2**53 - 1),
    prev=st.binary(min_size=32, max_size=32),
    micros=st.integers(0, 10**12),
)
def test_built_entries_hash_exactly_the_canonical_input(
    subject: str, reasons: list[str], data: dict[str, Any], seq: int, prev: bytes, micros: int
) -> None:
    """The builder splices seq/time/prev_hash into canonical text made before the store's
    lock; the result must be byte-identical to RFC 8785 of the whole entry."""
    when = T0 + timedelta(microseconds=micros)
    log = AuditLog(MemoryStore(), KEY, lambda: when)
    try:
        build = log.builder("release", subject, "accept", reasons, data)
    except AuditError:
        return  # not I-JSON (rfc8785 refuses it): nothing to compare
    entry = build(seq, prev)
    assert entry.hash == audit_entry_hash(entry)
    assert entry.hash == hashlib.sha256(audit_hash_input(
        seq=seq, time=when, kind="release", subject=subject, decision="accept",
        reasons=reasons, data=json.loads(json.dumps(data)), prev_hash=prev,
    )).digest()  # fmt: skip
    verify_audit_chain([entry], KEY.public_key(), after=replace(entry, seq=seq - 1, hash=prev))
