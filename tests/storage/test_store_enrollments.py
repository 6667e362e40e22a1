"""KbsStore enrollment uses and revocations, on memory://, a SQLite file and PostgreSQL.

A use is counted in the transaction that consumes the nonce, binds the token and audits the
attestation: a refused use writes nothing (the nonce stays unused), the N+1th use of an
N-use enrollment is refused, concurrent uses of the last one admit exactly one, and a
revocation refuses every later use.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from store_helpers import D1, T0, Backend, clock, race

from teeflow.kbs.service.audit import AuditLog, verify_audit_chain
from teeflow.kbs.store.interface import (
    EnrollmentUse,
    EnrollmentUseRefused,
    KbsStore,
    StorageInputError,
    TokenBinding,
)

KEY = Ed25519PrivateKey.generate()


def _attest(store: KbsStore, sid: str, use: EnrollmentUse) -> None:
    store.create_session(sid, b"n" * 32, "sgx", T0 + timedelta(minutes=1))
    token = TokenBinding(D1, '{"role":"client"}', T0 + timedelta(minutes=5))
    store.consume_nonce_and_audit(
        sid, T0, AuditLog(store, KEY, clock()).builder("attestation", "s", "accept"),
        token=token, enrollment=use,
    )


def test_uses_are_counted_and_bounded(store: KbsStore) -> None:
    use = EnrollmentUse("alice/" + "a" * 22, 2)
    assert store.get_enrollment(use.key) is None
    _attest(store, "s1", use)
    _attest(store, "s2", use)
    assert store.get_enrollment(use.key).uses == 2  # type: ignore[union-attr]
    with pytest.raises(EnrollmentUseRefused) as exc:
        _attest(store, "s3", use)
    assert exc.value.reason == "exhausted"
    assert not store.get_session("s3").consumed  # type: ignore[union-attr]  # nothing written
    assert len(store.audit_entries(limit=100)) == 2
    unlimited = EnrollmentUse("alice/" + "b" * 22, None)
    for i in range(3):
        _attest(store, f"u{i}", unlimited)
    assert store.get_enrollment(unlimited.key).uses == 3  # type: ignore[union-attr]


def test_revocation_refuses_later_uses(store: KbsStore) -> None:
    log = AuditLog(store, KEY, clock())
    use = EnrollmentUse("bob/" + "c" * 22, None)
    _attest(store, "s1", use)
    rec, _entry = store.revoke_enrollment_and_audit(
        use.key, b"revocation-jws", T0, log.builder("enrollment", use.key, "accept"))
    assert rec.revoked_at == T0 and rec.revocation == b"revocation-jws" and rec.uses == 1
    again, _ = store.revoke_enrollment_and_audit(  # idempotent: the first is kept
        use.key, b"other", T0 + timedelta(seconds=5), log.builder("enrollment", use.key, "accept"))
    assert again.revoked_at == T0 and again.revocation == b"revocation-jws"
    with pytest.raises(EnrollmentUseRefused) as exc:
        _attest(store, "s2", use)
    assert exc.value.reason == "revoked"
    # a revocation of an enrollment never used yet is kept too
    fresh = EnrollmentUse("bob/" + "d" * 22, 5)
    store.revoke_enrollment_and_audit(fresh.key, b"r", T0, log.builder("enrollment", "x", "accept"))
    with pytest.raises(EnrollmentUseRefused):
        _attest(store, "s3", fresh)
    verify_audit_chain(store.audit_entries(limit=100), KEY.public_key())
    with pytest.raises(StorageInputError):
        store.revoke_enrollment_and_audit("k", b"x" * 5000, T0, log.builder("e", "x", "accept"))
    with pytest.raises(StorageInputError):
        _attest(store, "s4", EnrollmentUse("k", 0))


def test_concurrent_last_use_admits_one(backend: Backend) -> None:
    store = backend.open()
    try:
        use = EnrollmentUse("alice/" + "e" * 22, 1)
        for i in range(6):
            store.create_session(f"c{i}", b"n" * 32, "sgx", T0 + timedelta(minutes=1))

        def attempt(i: int) -> None:
            store.consume_nonce_and_audit(
                f"c{i}", T0, AuditLog(store, KEY, clock()).builder("attestation", "s", "accept"),
                token=TokenBinding(D1, "{}", T0 + timedelta(minutes=5)), enrollment=use)

        ok, errors = race(6, attempt)
        assert len(ok) == 1 and len(errors) == 5
        assert all(isinstance(e, EnrollmentUseRefused) for e in errors), errors
        assert store.get_enrollment(use.key).uses == 1  # type: ignore[union-attr]
    finally:
        store.close()
