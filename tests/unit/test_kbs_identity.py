"""Platform sealing keys and the KBS key set sealed to its platform identity."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import ssl
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from teeflow.attestation.ear import generate_ear_signing_key
from teeflow.errors import KbsError, ParseError, PlatformError, SealingError
from teeflow.kbs.ca.authority import FederationCA, WorkloadIdentity, verify_workload_certificate
from teeflow.kbs.policy.canonical import b64url_decode
from teeflow.kbs.service.identity import (
    KEYS_AAD,
    KEYS_FILE,
    SEALING_PURPOSE,
    KbsKeys,
    kbs_binding_digest,
    kbs_report_data,
    load_or_create_kbs_keys,
)
from teeflow.platform.emulated import EmulationAuthority
from teeflow.platform.sealing import EmulatedSealer, GramineSealer, PlatformSealer
from teeflow.sealing import seal, unseal

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
MEASUREMENT = hashlib.sha256(b"teeflow kbs workload").digest()
OTHER_MEASUREMENT = hashlib.sha256(b"another workload").digest()


@pytest.fixture(scope="module")
def authority() -> EmulationAuthority:
    return EmulationAuthority.generate(NOW)


@pytest.fixture(scope="module")
def sealer(authority: EmulationAuthority) -> EmulatedSealer:
    return EmulatedSealer(authority)


# -- sealing secret and sealers -------------------------------------------------------------


def test_sealing_secret_is_stable_per_authority(tmp_path: Path) -> None:
    a = EmulationAuthority.load_or_create(tmp_path / "home", now=NOW)
    again = EmulationAuthority.load_or_create(tmp_path / "home", now=NOW)
    other = EmulationAuthority.load_or_create(tmp_path / "home2", now=NOW)
    assert len(a.sealing_secret()) == 32
    assert a.sealing_secret() == again.sealing_secret()
    assert a.sealing_secret() != other.sealing_secret()
    assert EmulatedSealer(a).sealing_key(MEASUREMENT, purpose=b"x") == EmulatedSealer(
        again
    ).sealing_key(MEASUREMENT, purpose=b"x")


def test_emulated_sealer_derivation(authority: EmulationAuthority, sealer: EmulatedSealer) -> None:
    key = sealer.sealing_key(MEASUREMENT, purpose=b"kbs-state")
    expected = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"teeflow-emulated-sealing-v1",
        info=b"kbs-state" + MEASUREMENT,
    ).derive(authority.sealing_secret())
    assert key == expected
    assert sealer.sealing_key(MEASUREMENT, purpose=b"kbs-state") == key  # deterministic
    assert sealer.sealing_key(OTHER_MEASUREMENT, purpose=b"kbs-state") != key
    assert sealer.sealing_key(MEASUREMENT, purpose=b"other") != key
    other = EmulatedSealer(EmulationAuthority.generate(NOW))
    assert other.sealing_key(MEASUREMENT, purpose=b"kbs-state") != key
    assert isinstance(sealer, PlatformSealer)
    assert repr(sealer) == "EmulatedSealer(<emulation authority>)"


@pytest.mark.parametrize(
    ("measurement", "purpose"),
    [(b"\x00" * 31, b"p"), (b"\x00" * 33, b"p"), (b"\x00" * 32, b""), (b"\x00" * 32, b"x" * 256)],
)
def test_sealer_argument_checks(
    sealer: EmulatedSealer, tmp_path: Path, measurement: bytes, purpose: bytes
) -> None:
    with pytest.raises(PlatformError):
        sealer.sealing_key(measurement, purpose=purpose)
    (tmp_path / "_sgx_mrenclave").write_bytes(b"k" * 16)
    with pytest.raises(PlatformError):
        GramineSealer(tmp_path).sealing_key(measurement, purpose=purpose)


def test_gramine_sealer_reads_the_mrenclave_key(tmp_path: Path) -> None:
    (tmp_path / "_sgx_mrenclave").write_bytes(bytes(range(16)))
    gramine = GramineSealer(keys_dir=tmp_path)
    assert isinstance(gramine, PlatformSealer)
    key = gramine.sealing_key(MEASUREMENT, purpose=b"kbs-state")
    expected = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"teeflow-gramine-sealing-v1",
        info=b"kbs-state" + MEASUREMENT,
    ).derive(bytes(range(16)))
    assert key == expected
    assert gramine.sealing_key(MEASUREMENT, purpose=b"kbs-state") == key
    assert gramine.sealing_key(MEASUREMENT, purpose=b"other") != key
    (tmp_path / "_sgx_mrenclave").write_bytes(bytes(range(1, 17)))  # another enclave / CPU
    assert gramine.sealing_key(MEASUREMENT, purpose=b"kbs-state") != key


@pytest.mark.parametrize("content", [None, b"", b"k" * 15, b"k" * 17])
def test_gramine_sealer_refuses_missing_or_wrong_size_key(
    tmp_path: Path, content: bytes | None
) -> None:
    if content is not None:
        (tmp_path / "_sgx_mrenclave").write_bytes(content)
    with pytest.raises(PlatformError):
        GramineSealer(tmp_path).sealing_key(MEASUREMENT, purpose=b"kbs-state")


# -- KBS key set ------------------------------------------------------------------------------


def _load(state: Path, sealer: PlatformSealer, **kw: Any) -> KbsKeys:
    args: dict[str, Any] = {
        "sealer": sealer,
        "measurement": MEASUREMENT,
        "federation": "acme",
        "now": NOW,
    }
    args.update(kw)
    return load_or_create_kbs_keys(state, **args)


def _private_fingerprint(keys: KbsKeys) -> tuple[bytes, ...]:
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    return (
        keys.hpke.private_bytes_raw(),
        keys.audit.private_bytes_raw(),
        keys.storage_key,
        keys.ca.private_key.private_bytes(pem, pkcs8, none),
        keys.tls_key.private_bytes(pem, pkcs8, none),
        json.dumps(keys.ear.as_dict(private=True), sort_keys=True).encode(),
    )


def test_created_once_with_private_permissions(tmp_path: Path, sealer: EmulatedSealer) -> None:
    state = tmp_path / "kbs-state"
    keys = _load(state, sealer)
    path = state / KEYS_FILE
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in state.iterdir()) == [KEYS_FILE]  # no temp files left
    blob = path.read_bytes()
    again = _load(state, sealer)
    assert path.read_bytes() == blob  # nothing rewritten when nothing changed
    assert again.public_bundle() == keys.public_bundle()
    assert _private_fingerprint(again) == _private_fingerprint(keys)
    assert keys.ca.federation == "acme" and keys.federation == "acme"
    assert len(keys.storage_key) == 32
    secret = keys.storage_key.hex()
    assert secret not in repr(keys)
    assert "PRIVATE" not in repr(keys)


def test_sealed_file_format(tmp_path: Path, sealer: EmulatedSealer) -> None:
    keys = _load(tmp_path / "s", sealer)
    key = sealer.sealing_key(MEASUREMENT, purpose=SEALING_PURPOSE)
    doc = json.loads(unseal((tmp_path / "s" / KEYS_FILE).read_bytes(), key, aad=KEYS_AAD))
    assert doc["format"] == "teeflow-kbs-keys/1"
    assert doc["measurement"] == MEASUREMENT.hex()
    assert b64url_decode(doc["storage_key"]) == keys.storage_key
    with pytest.raises(SealingError):
        unseal((tmp_path / "s" / KEYS_FILE).read_bytes(), key, aad=b"other aad")


def test_existing_loose_directory_is_tightened(tmp_path: Path, sealer: EmulatedSealer) -> None:
    state = tmp_path / "loose"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    _load(state, sealer)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_refused_with_another_measurement_or_platform(
    tmp_path: Path, sealer: EmulatedSealer
) -> None:
    state = tmp_path / "s"
    _load(state, sealer)
    with pytest.raises(SealingError, match="different platform identity or measurement"):
        _load(state, sealer, measurement=OTHER_MEASUREMENT)
    other_platform = EmulatedSealer(EmulationAuthority.generate(NOW))
    with pytest.raises(SealingError, match="different platform identity or measurement"):
        _load(state, other_platform)


@pytest.mark.parametrize("where", ["header", "middle", "tag", "truncate", "append", "empty"])
def test_tampered_state_file(tmp_path: Path, sealer: EmulatedSealer, where: str) -> None:
    state = tmp_path / "s"
    _load(state, sealer)
    path = state / KEYS_FILE
    data = bytearray(path.read_bytes())
    if where == "header":
        data[40] ^= 0x01
    elif where == "middle":
        data[len(data) // 2] ^= 0x80
    elif where == "tag":
        data[-1] ^= 0x01
    elif where == "truncate":
        data = data[:-20]
    elif where == "append":
        data += b"\x00"
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(SealingError):
        _load(state, sealer)


def test_state_of_another_federation(tmp_path: Path, sealer: EmulatedSealer) -> None:
    _load(tmp_path / "s", sealer)
    with pytest.raises(KbsError, match="federation"):
        _load(tmp_path / "s", sealer, federation="other")


def test_malformed_but_authentic_state_is_a_parse_error(
    tmp_path: Path, sealer: EmulatedSealer
) -> None:
    state = tmp_path / "s"
    _load(state, sealer)
    key = sealer.sealing_key(MEASUREMENT, purpose=SEALING_PURPOSE)
    for plain in (b"not json", b"[]", json.dumps({"format": "teeflow-kbs-keys/1"}).encode()):
        (state / KEYS_FILE).write_bytes(seal(plain, key, aad=KEYS_AAD))
        with pytest.raises(ParseError):
            _load(state, sealer)


def test_argument_checks(tmp_path: Path, sealer: EmulatedSealer) -> None:
    with pytest.raises(KbsError):
        _load(tmp_path / "a", sealer, measurement=b"\x00" * 31)
    with pytest.raises(KbsError):
        _load(tmp_path / "b", sealer, federation="Bad Name")
    with pytest.raises(KbsError):
        _load(tmp_path / "c", sealer, now=NOW.replace(tzinfo=None))
    with pytest.raises(KbsError):
        _load(tmp_path / "d", sealer, tls_hosts=["bad host!"])


def test_tls_certificate_renewed_near_expiry_with_the_same_key(
    tmp_path: Path, sealer: EmulatedSealer
) -> None:
    state = tmp_path / "s"
    keys = _load(state, sealer)
    tls = keys.tls_certificate
    assert tls.not_valid_after_utc == NOW + timedelta(days=30)
    still = _load(state, sealer, now=tls.not_valid_after_utc - timedelta(days=2))
    assert still.tls_certificate == tls
    later = tls.not_valid_after_utc - timedelta(hours=12)
    renewed = _load(state, sealer, now=later)
    assert renewed.tls_certificate != tls
    assert renewed.tls_certificate.not_valid_after_utc == later + timedelta(days=30)
    assert renewed.tls_spki_sha256() == keys.tls_spki_sha256()
    assert _private_fingerprint(renewed) == _private_fingerprint(keys)
    assert _load(state, sealer, now=later).tls_certificate == renewed.tls_certificate  # persisted
    hosts = _load(state, sealer, now=later, tls_hosts=["kbs.example", "10.1.2.3"])
    san = hosts.tls_certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    assert san.get_values_for_type(x509.DNSName) == ["kbs.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    assert hosts.tls_spki_sha256() == keys.tls_spki_sha256()


def test_ca_certificate_renewed_near_expiry_old_leaves_still_verify(
    tmp_path: Path, sealer: EmulatedSealer
) -> None:
    state = tmp_path / "s"
    keys = _load(state, sealer)
    ca_cert = keys.ca.certificate
    late = ca_cert.not_valid_after_utc - timedelta(days=3)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    ident = WorkloadIdentity("client", "p1", "22" * 32, "ab" * 32, "sgx", False)
    leaf = keys.ca.issue(leaf_key.public_key(), ident, now=late - timedelta(hours=1))
    renewed = _load(state, sealer, now=late)
    assert renewed.ca.certificate != ca_cert
    assert verify_workload_certificate(leaf, renewed.ca.certificate, now=late) == ident


def test_tls_certificate_serves_https_on_loopback(tmp_path: Path, sealer: EmulatedSealer) -> None:
    now = datetime.now(UTC)  # OpenSSL checks validity against the wall clock
    keys = _load(tmp_path / "s", sealer, now=now)
    cert_file = tmp_path / "tls.pem"
    cert_file.write_bytes(keys.tls_certificate_pem() + keys.tls_private_key_pem())
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cadata=keys.tls_certificate_pem().decode())
    errors: list[BaseException] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                conn.settimeout(10)
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hi")
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        port = listener.getsockname()[1]
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.recv(2) == b"hi"
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            spki = (
                x509.load_der_x509_certificate(der)
                .public_key()
                .public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
            assert hashlib.sha256(spki).hexdigest() == keys.tls_spki_sha256()
        thread.join(10)
    assert not errors


# -- public bundle and binding digest -------------------------------------------------------


@pytest.fixture(scope="module")
def kbs_keys(tmp_path_factory: pytest.TempPathFactory, sealer: EmulatedSealer) -> KbsKeys:
    return _load(tmp_path_factory.mktemp("kbs"), sealer)


def test_public_bundle_contents(kbs_keys: KbsKeys) -> None:
    bundle = kbs_keys.public_bundle()
    assert set(bundle) == {
        "format",
        "federation",
        "hpke_public_key",
        "ca_certificate",
        "ear_public_jwk",
        "tls_certificate",
        "tls_spki_sha256",
        "audit_public_key",
    }
    assert b64url_decode(bundle["hpke_public_key"]) == kbs_keys.hpke_public_key()
    assert bundle["ca_certificate"].encode() == kbs_keys.ca.certificate_pem()
    assert "d" not in bundle["ear_public_jwk"]
    assert bundle["ear_public_jwk"]["crv"] == "P-256"
    assert bundle["ear_public_jwk"]["kid"] == kbs_keys.ear.kid
    assert (
        b64url_decode(bundle["audit_public_key"]) == kbs_keys.audit.public_key().public_bytes_raw()
    )
    assert "PRIVATE" not in json.dumps(bundle)


def test_binding_digest_definition(kbs_keys: KbsKeys) -> None:
    agreement = hashlib.sha256(b"agreement").digest()
    expected = hashlib.sha256(
        rfc8785.dumps(
            {
                "format": "teeflow-kbs-binding/1",
                "kbs": kbs_keys.public_bundle(),
                "agreement_digest": agreement.hex(),
            }
        )
    ).digest()
    assert kbs_keys.binding_digest(agreement) == expected
    assert kbs_binding_digest(kbs_keys.public_bundle(), agreement) == expected
    nonce = os.urandom(32)
    rd = kbs_keys.report_data(nonce, agreement)
    assert rd == expected + hashlib.sha256(nonce).digest()
    assert kbs_report_data(kbs_keys.public_bundle(), agreement, nonce) == rd
    assert len(rd) == 64


def test_binding_digest_changes_with_every_public_key(kbs_keys: KbsKeys) -> None:
    agreement = hashlib.sha256(b"agreement v1").digest()
    base = kbs_keys.binding_digest(agreement)
    assert kbs_keys.binding_digest(agreement) == base
    assert kbs_keys.binding_digest(None) != base
    assert kbs_keys.binding_digest(hashlib.sha256(b"agreement v2").digest()) != base
    new_tls = ec.generate_private_key(ec.SECP256R1())
    variants: dict[str, dict[str, Any]] = {
        "hpke": {"hpke": X25519PrivateKey.generate()},
        "ca": {"ca": FederationCA.generate("acme", now=NOW)},
        "ear": {"ear": generate_ear_signing_key()},
        "tls": {"tls_key": new_tls},
        "audit": {"audit": Ed25519PrivateKey.generate()},
    }
    seen = {base}
    for name, change in variants.items():
        digest = dataclasses.replace(kbs_keys, **change).binding_digest(agreement)
        assert digest not in seen, name
        seen.add(digest)
    # the storage key is secret and not part of the binding
    same = dataclasses.replace(kbs_keys, storage_key=os.urandom(32))
    assert same.binding_digest(agreement) == base


def test_binding_argument_checks(kbs_keys: KbsKeys) -> None:
    with pytest.raises(KbsError):
        kbs_keys.binding_digest(b"\x00" * 31)
    with pytest.raises(KbsError):
        kbs_keys.binding_digest("ab" * 32)  # type: ignore[arg-type]
    with pytest.raises(KbsError):
        kbs_keys.report_data(b"", None)
    with pytest.raises(KbsError):
        kbs_binding_digest({"x": float("nan")}, None)
