"""Data keys: generation, key ids and the key-file format."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from teeflow.errors import ParseError, SealingError
from teeflow.sealing import (
    encode_key_file,
    generate_key,
    key_id,
    parse_key_file,
    read_key_file,
    write_key_file,
)

KEY = bytes(range(32))


def test_generate_key_uses_rng() -> None:
    assert generate_key(lambda n: b"\x07" * n) == b"\x07" * 32
    assert generate_key() != generate_key()
    with pytest.raises(SealingError):
        generate_key(lambda n: b"\x07" * (n - 1))


def test_key_id_is_stable_public_and_distinct() -> None:
    assert key_id(KEY) == key_id(bytearray(KEY))
    assert len(key_id(KEY)) == 16
    assert key_id(KEY) != key_id(bytes(32))
    assert KEY[:16] not in key_id(KEY)
    with pytest.raises(SealingError):
        key_id(b"short")


def test_key_file_encoding() -> None:
    text = encode_key_file(KEY)
    assert text == "teeflow-key:v1:" + base64.urlsafe_b64encode(KEY).decode().rstrip("=") + "\n"
    assert len(text) == len("teeflow-key:v1:") + 43 + 1
    assert parse_key_file(text.encode()) == KEY
    assert parse_key_file(text.encode().rstrip(b"\n")) == KEY
    assert parse_key_file(text.encode().replace(b"\n", b"\r\n")) == KEY


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"teeflow-key:v2:" + b"A" * 43,
        b"teeflow-key:v1:" + b"A" * 42,
        b"teeflow-key:v1:" + b"A" * 44,
        b"teeflow-key:v1:" + b"A" * 42 + b"=",
        b"teeflow-key:v1:" + b"A" * 42 + b"B",  # non-zero padding bits: non-canonical
        b"teeflow-key:v1:" + b"A" * 42 + b"+",  # not base64url
        b" teeflow-key:v1:" + b"A" * 43,
        b"teeflow-key:v1:" + b"A" * 43 + b"\n\n",
        b"teeflow-key:v1:" + b"A" * 43 + b"\nmore",
        b"\x00" * 32,
        b"x" * 10_000,
    ],
)
def test_key_file_rejects_malformed(bad: bytes) -> None:
    with pytest.raises(ParseError):
        parse_key_file(bad)


def test_write_and_read_key_file(tmp_path: Path) -> None:
    path = tmp_path / "data.key"
    write_key_file(path, KEY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path) == KEY
    with pytest.raises(SealingError, match="exists"):
        write_key_file(path, bytes(32))
    assert read_key_file(path) == KEY
    write_key_file(path, bytes(32), force=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path) == bytes(32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.key"]


def test_key_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SealingError, match="cannot read key file"):
        read_key_file(tmp_path / "missing")
    with pytest.raises(SealingError):
        write_key_file(tmp_path / "no-dir" / "k", KEY)
    with pytest.raises(SealingError):
        write_key_file(tmp_path / "no-dir" / "k", KEY, force=True)
    with pytest.raises(SealingError):
        write_key_file(tmp_path / "k", b"short")
    (tmp_path / "garbage").write_bytes(b"not a key")
    with pytest.raises(ParseError):
        read_key_file(tmp_path / "garbage")
