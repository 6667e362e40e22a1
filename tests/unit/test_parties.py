"""Party keys (teeflow.kbs.policy.parties) and the encoding helpers
(teeflow.kbs.policy.canonical)."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
import rfc8785
from cryptography.hazmat.primitives import serialization

from teeflow.errors import KbsError, ParseError, VerificationError
from teeflow.kbs.policy.canonical import (
    AGREEMENT_DOMAIN,
    GRANT_DOMAIN,
    b64url_decode,
    b64url_encode,
    canonical_json,
    sha256_digest,
    signing_input,
)
from teeflow.kbs.policy.parties import (
    PartyKeys,
    PartyPublic,
    party_dir,
    teeflow_home,
    verify_ed25519,
)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# -- canonical.py ---------------------------------------------------------------------------


def test_canonical_json_is_rfc8785_and_order_independent() -> None:
    a = {"b": [1, "x"], "a": {"z": True, "y": None}}
    b = {"a": {"y": None, "z": True}, "b": [1, "x"]}
    assert canonical_json(a) == canonical_json(b) == rfc8785.dumps(a)
    assert canonical_json(a) == b'{"a":{"y":null,"z":true},"b":[1,"x"]}'
    assert sha256_digest(a) == hashlib.sha256(canonical_json(a)).digest()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 2**60, {1: "x"}, b"bytes"])
def test_canonical_json_rejects_non_ijson(bad: object) -> None:
    with pytest.raises(ParseError):
        canonical_json({"v": bad})


def test_signing_input_domains() -> None:
    d = bytes(32)
    assert signing_input(AGREEMENT_DOMAIN, d) == b"teeflow-agreement-v1\0" + d
    assert signing_input(GRANT_DOMAIN, d) == b"teeflow-grant-v1\0" + d
    with pytest.raises(ParseError):
        signing_input(GRANT_DOMAIN, bytes(31))


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xff\xfe", bytes(range(32)), bytes(64)])
def test_b64url_round_trip(data: bytes) -> None:
    text = b64url_encode(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64url_decode(text) == data
    assert b64url_decode(text + "=" * (-len(text) % 4)) == data  # padding accepted


@pytest.mark.parametrize(
    "text",
    ["a+b/", "ab cd", "a", "AB==x", "AQ=", "AR", 12, "Zg=="[:-1] + "h"],
)
def test_b64url_rejects_malformed(text: object) -> None:
    # "AR" decodes to 0x01 with non-zero trailing bits: not the canonical encoding
    with pytest.raises(ParseError):
        b64url_decode(text)


def test_b64url_length_check() -> None:
    with pytest.raises(ParseError):
        b64url_decode(b64url_encode(bytes(31)), length=32)


# -- keys -----------------------------------------------------------------------------------


def test_generate_save_load_round_trip(tmp_path: Path) -> None:
    keys = PartyKeys.generate("hospital-a")
    d = tmp_path / "parties" / "hospital-a"
    pub_path = keys.save(d)
    assert pub_path == d / "hospital-a.pub.json"
    assert _mode(d) == 0o700
    assert _mode(d / "sign.ed25519.pem") == 0o600
    assert _mode(d / "recipient.x25519.pem") == 0o600
    assert (d / "sign.ed25519.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")

    loaded = PartyKeys.load("hospital-a", tmp_path)
    assert loaded.public() == keys.public()
    pub = PartyPublic.load(pub_path)
    assert pub == keys.public()
    doc = json.loads(pub_path.read_text())
    assert set(doc) == {"name", "sign_key", "recipient_key"}
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert b64url_decode(doc["sign_key"]) == keys.sign_key.public_key().public_bytes(*raw)
    assert b64url_decode(doc["recipient_key"]) == keys.recipient_key.public_key().public_bytes(*raw)
    # the loaded key signs, the public file verifies
    sig = loaded.sign(b"message")
    verify_ed25519(pub.sign_key, b64url_encode(sig), b"message")
    pub.sign_public_key().verify(sig, b"message")
    assert pub.recipient_public_key().public_bytes(*raw) == b64url_decode(pub.recipient_key)


def test_home_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TEEFLOW_HOME", str(tmp_path / "h"))
    assert teeflow_home() == tmp_path / "h"
    assert party_dir("bank") == tmp_path / "h" / "parties" / "bank"
    monkeypatch.delenv("TEEFLOW_HOME")
    assert teeflow_home() == Path.home() / ".teeflow"
    assert teeflow_home(tmp_path) == tmp_path


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    first = PartyKeys.generate("a")
    first.save(tmp_path)
    second = PartyKeys.generate("a")
    with pytest.raises(KbsError):
        second.save(tmp_path)
    assert PartyKeys.load_dir(tmp_path, "a").public() == first.public()
    second.save(tmp_path, overwrite=True)
    assert PartyKeys.load_dir(tmp_path, "a").public() == second.public()


def test_load_refuses_group_readable_key(tmp_path: Path) -> None:
    PartyKeys.generate("a").save(tmp_path)
    (tmp_path / "sign.ed25519.pem").chmod(0o640)
    with pytest.raises(KbsError):
        PartyKeys.load_dir(tmp_path, "a")


def test_load_missing_or_corrupt_keys(tmp_path: Path) -> None:
    with pytest.raises(ParseError):
        PartyKeys.load_dir(tmp_path, "a")
    PartyKeys.generate("a").save(tmp_path)
    key = tmp_path / "recipient.x25519.pem"
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ParseError):
        PartyKeys.load_dir(tmp_path, "a")


def test_load_swapped_key_types(tmp_path: Path) -> None:
    PartyKeys.generate("a").save(tmp_path)
    sign, rec = tmp_path / "sign.ed25519.pem", tmp_path / "recipient.x25519.pem"
    a, b = sign.read_bytes(), rec.read_bytes()
    sign.write_bytes(b)
    rec.write_bytes(a)
    with pytest.raises(ParseError):
        PartyKeys.load_dir(tmp_path, "a")


@pytest.mark.parametrize("name", ["", "Alice", "-a", "a-", "a_b", "a.b", "x" * 64, "ä"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(ParseError):
        PartyKeys.generate(name)


@pytest.mark.parametrize("name", ["a", "hospital-a", "0", "x" * 63, "a1-b2"])
def test_valid_names(name: str) -> None:
    assert PartyKeys.generate(name).public().name == name


def _pub_doc() -> dict[str, str]:
    return PartyKeys.generate("a").public().model_dump(mode="json")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(extra="x"),
        lambda d: d.update(sign_key=d["sign_key"][:-2]),
        lambda d: d.update(recipient_key=b64url_encode(bytes(33))),
        lambda d: d.update(sign_key=d["sign_key"].replace("-", "+").replace("_", "/") + "+"),
        lambda d: d.pop("recipient_key"),
        lambda d: d.update(name="A"),
    ],
)
def test_public_file_rejects_malformed(tmp_path: Path, mutate: object) -> None:
    doc = _pub_doc()
    mutate(doc)  # type: ignore[operator]
    p = tmp_path / "x.pub.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(ParseError):
        PartyPublic.load(p)


def test_public_file_bounded(tmp_path: Path) -> None:
    p = tmp_path / "big.pub.json"
    p.write_text(" " * 5000 + json.dumps(_pub_doc()))
    with pytest.raises(ParseError):
        PartyPublic.load(p)
    with pytest.raises(ParseError):
        PartyPublic.load(tmp_path / "missing.pub.json")


def test_public_key_normalised_from_padded_input() -> None:
    doc = _pub_doc()
    padded = dict(doc, sign_key=doc["sign_key"] + "=")
    assert PartyPublic.model_validate(padded) == PartyPublic.model_validate(doc)


def test_verify_ed25519_rejects_tampering() -> None:
    keys = PartyKeys.generate("a")
    pub = keys.public()
    sig = bytearray(keys.sign(b"m"))
    verify_ed25519(pub.sign_key, b64url_encode(bytes(sig)), b"m")
    with pytest.raises(VerificationError):
        verify_ed25519(pub.sign_key, b64url_encode(bytes(sig)), b"n")
    sig[0] ^= 1
    with pytest.raises(VerificationError):
        verify_ed25519(pub.sign_key, b64url_encode(bytes(sig)), b"m")
    with pytest.raises(VerificationError):
        verify_ed25519(pub.sign_key, "not-base64!", b"m")
    other = PartyKeys.generate("b").public()
    with pytest.raises(VerificationError):
        verify_ed25519(other.sign_key, b64url_encode(keys.sign(b"m")), b"m")
