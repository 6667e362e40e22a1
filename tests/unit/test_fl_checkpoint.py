"""Sealed checkpoints and the rollback rules against the KBS counter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from teeflow.errors import FLError, ParseError, SealingError
from teeflow.fl.arrays import encode_arrays
from teeflow.fl.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    RollbackError,
    check_against_counter,
    counter_name,
    decode_checkpoint,
    encode_checkpoint,
    open_checkpoint,
    seal_checkpoint,
)
from teeflow.kbs.protocol import CounterState
from teeflow.sealing import generate_key

KEY = generate_key()


def ckpt(round: int, session: str = "s1", value: float = 0.0) -> Checkpoint:
    return Checkpoint(
        session=session,
        round=round,
        arrays=encode_arrays({"w": np.full((3, 2), value + round, np.float32)}),
        strategy_state=encode_arrays({}),
        provenance=(),
        agreement_digest="ab" * 32,
        package_digest="cd" * 32,
        metrics=({"eval_accuracy": 0.5},),
    )


def counter(
    c: Checkpoint | None, value: int | None = None, digest: str | None = None
) -> CounterState:
    return CounterState(
        name="session/s1",
        value=value if value is not None else c.round,
        digest=digest or c.arrays_digest.hex(),
    )


def test_round_trip() -> None:
    c = ckpt(3)
    back = open_checkpoint(seal_checkpoint(c, KEY), KEY, "s1")
    assert back == c
    assert decode_checkpoint(encode_checkpoint(c)) == c


def test_tamper_wrong_key_and_other_session_do_not_open() -> None:
    blob = bytearray(seal_checkpoint(ckpt(1), KEY))
    with pytest.raises(SealingError):
        open_checkpoint(bytes(blob), generate_key(), "s1")
    with pytest.raises(SealingError):
        open_checkpoint(bytes(blob), KEY, "s2")
    blob[-20] ^= 1
    with pytest.raises(SealingError):
        open_checkpoint(bytes(blob), KEY, "s1")


@pytest.mark.parametrize("cut", [0, 5, 11, 40, -1])
def test_malformed_plaintext_is_a_parse_error(cut: int) -> None:
    raw = encode_checkpoint(ckpt(1))
    with pytest.raises(ParseError):
        decode_checkpoint(raw[:cut] if cut >= 0 else raw + b"x")


def _with_header(raw: bytes, change: dict, magic: bytes | None = None) -> bytes:
    n = int.from_bytes(raw[8:12], "big")
    header = json.loads(raw[12 : 12 + n])
    header.update(change)
    new = json.dumps(header).encode()
    return (magic or raw[:8]) + len(new).to_bytes(4, "big") + new + raw[12 + n :]


def test_a_checkpoint_holds_no_key_section() -> None:
    """Attack (P/H): version-1 checkpoints carried the provenance signing key; a key section,
    or a version-1 file, is refused now."""
    raw = encode_checkpoint(ckpt(1))
    assert b"PRIVATE KEY" not in raw
    n = int.from_bytes(raw[8:12], "big")
    assert set(json.loads(raw[12 : 12 + n])["sizes"]) == {"arrays", "state", "provenance"}
    pem = b"-----BEGIN PRIVATE KEY-----\nMIGHAgEA\n-----END PRIVATE KEY-----\n"
    sizes = json.loads(raw[12 : 12 + n])["sizes"]
    with pytest.raises(ParseError, match="exactly arrays, state, provenance"):
        decode_checkpoint(_with_header(raw, {"sizes": {**sizes, "key": len(pem)}}) + pem)
    old = _with_header(raw, {"format": "teeflow-checkpoint/1"}, magic=b"TFCKPT\x00\x01")
    with pytest.raises(ParseError, match="magic"):
        decode_checkpoint(old)


def test_arrays_digest_is_checked() -> None:
    c = ckpt(1)
    raw = bytearray(encode_checkpoint(c))
    start = raw.index(c.arrays)
    raw[start + len(c.arrays) - 1] ^= 0x40  # last byte of the array data
    with pytest.raises(ParseError):
        decode_checkpoint(bytes(raw))


def test_counter_rules() -> None:
    c1, c2 = ckpt(1), ckpt(2)
    assert check_against_counter(None, None, "s1") is False
    assert check_against_counter(c2, counter(c2), "s1") is True
    with pytest.raises(RollbackError, match=r"round 1.*round 2"):
        check_against_counter(c1, counter(c2), "s1")
    with pytest.raises(CheckpointError, match="never committed"):
        check_against_counter(c2, counter(c1), "s1")
    with pytest.raises(CheckpointError, match="digest"):
        check_against_counter(c2, counter(c2, digest="00" * 32), "s1")
    with pytest.raises(CheckpointError, match="missing"):
        check_against_counter(None, counter(c2), "s1")
    with pytest.raises(CheckpointError, match="never stepped"):
        check_against_counter(c1, None, "s1")
    assert not issubclass(CheckpointError, RollbackError) and issubclass(RollbackError, FLError)


class FakeCounter:
    def __init__(self) -> None:
        self.state: CounterState | None = None
        self.fail = False

    def increment(self, expected: int, digest: bytes) -> None:
        value = 0 if self.state is None else self.state.value
        if self.fail or value != expected:
            raise FLError("conflict")
        self.state = CounterState(name="session/s1", value=expected + 1, digest=digest.hex())


def test_store_commit_load_and_rollback(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "s1.ckpt", KEY, "s1")
    kbs = FakeCounter()
    assert store.load(kbs.state) is None
    store.commit(ckpt(1), kbs.increment)
    old = (tmp_path / "s1.ckpt").read_bytes()
    store.commit(ckpt(2), kbs.increment)
    loaded = store.load(kbs.state)
    assert loaded is not None and loaded.round == 2
    (tmp_path / "s1.ckpt").write_bytes(old)  # the host presents the older file
    with pytest.raises(RollbackError):
        store.load(kbs.state)


def test_failed_increment_keeps_the_previous_round(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "s1.ckpt", KEY, "s1")
    kbs = FakeCounter()
    store.commit(ckpt(1), kbs.increment)
    kbs.fail = True
    with pytest.raises(FLError, match="conflict"):
        store.commit(ckpt(2), kbs.increment)
    kbs.fail = False
    loaded = store.load(kbs.state)  # the written-but-uncommitted round 2 is dropped
    assert loaded is not None and loaded.round == 1
    assert not store.next_path.exists()


def test_crash_after_the_counter_step_recovers_the_next_file(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "s1.ckpt", KEY, "s1")
    kbs = FakeCounter()
    store.commit(ckpt(1), kbs.increment)
    c2 = ckpt(2)
    store.next_path.write_bytes(seal_checkpoint(c2, KEY))  # written ...
    kbs.increment(1, c2.arrays_digest)  # ... committed, then the process died before rename
    loaded = store.load(kbs.state)
    assert loaded is not None and loaded.round == 2 and not store.next_path.exists()


def test_counter_names() -> None:
    assert counter_name("study-1") == "session/study-1"
    for bad in ("", "-x", "a/b", "x" * 64):
        with pytest.raises(FLError):
            counter_name(bad)
