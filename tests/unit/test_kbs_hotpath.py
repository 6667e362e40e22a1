"""The KBS hot-path caches never widen what is allowed.

* verified bearer tokens are cached per process (``TokenCache``): a cached token is still
  refused once it expires or once its agreement is superseded;
* the active agreement is cached for ``agreement_refresh``: an agreement accepted by this
  process takes effect at once; one accepted by *another* KBS process on the same store
  stops releases and token bindings at once (re-checked inside the store transaction),
  and everything else within ``agreement_refresh``;
* attestation concludes in one store transaction: of concurrent attestations with one
  nonce exactly one gets a token, and each decision is audited once.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey
from test_kbs_service import NOW, PATH, Harness, agreement_doc, signed_agreement

from teeflow.kbs.api.problems import AttestationFailed, PolicyDeny, TokenVerifierError
from teeflow.kbs.service.core import KbsService
from teeflow.kbs.service.rcar import TokenCache
from teeflow.kbs.service.release import GrantCache, open_jwe
from teeflow.kbs.store import open_store


def _v2(h: Harness) -> Any:
    return signed_agreement(
        agreement_doc(version=2, previous=h.agreement_digest.hex(), outputs={"model": ["alice"]}),
        signers=("alice", "carol"),
    )


def _second_process(h: Harness, refresh: timedelta = timedelta(hours=1)) -> KbsService:
    """Another KBS process (same keys and store) whose agreement copy stays cached."""
    from teeflow.attestation.trust import intel_sgx_root_ca
    from teeflow.kbs.service.collateral import EmulatedCollateralProvider
    from teeflow.testing.evidence import emulated_authority

    authority = emulated_authority()
    return KbsService(
        h.store, h.keys, clock=h.clock, anchors=[intel_sgx_root_ca(), authority.trust_anchor()],
        collateral=EmulatedCollateralProvider(authority), agreement_refresh=refresh,
    )


@pytest.fixture(params=["memory", "sqlite"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'kbs.db'}"
    store = open_store(url, bytes(32))
    try:
        yield Harness(store)
    finally:
        store.close()


def test_cached_token_refused_after_expiry(h: Harness) -> None:
    w = h.attest()
    session = h.service.authorize(session_id=w.session_id, token=w.token)  # verified and cached
    assert h.service.authorize(session_id=w.session_id, token=w.token) == session  # cache hit
    h.clock.now = session.expires_at
    with pytest.raises(TokenVerifierError, match="expired"):
        h.service.authorize(session_id=w.session_id, token=w.token)


def test_cached_token_refused_at_once_after_agreement_update(h: Harness) -> None:
    w = h.attest()
    h.service.authorize(session_id=w.session_id, token=w.token)
    h.service.submit_agreement(_v2(h))  # no read of the agreement in between
    with pytest.raises(TokenVerifierError, match="agreement"):
        h.service.authorize(session_id=w.session_id, token=w.token)
    with pytest.raises(TokenVerifierError, match="agreement"):
        h.service.authorize(session_id=w.session_id, token=w.token)


def test_release_refused_at_once_when_another_process_changed_the_agreement(h: Harness) -> None:
    h.service.put_resource(h.upload(os.urandom(32)))
    other = _second_process(h)
    w = h.attest()
    # `other` caches agreement v1 for an hour
    session = other.authorize(session_id=w.session_id, token=w.token)
    h.service.submit_agreement(_v2(h))  # accepted by the first process
    with pytest.raises(PolicyDeny):
        other.get_resource(session, PATH)
    assert h.service.resource_info(PATH).release_count == 0  # type: ignore[union-attr]
    denied = h.denies("release")[-1]
    assert "session was appraised under another agreement" in denied.reasons
    h.verify_audit()


def test_token_not_bound_when_another_process_changed_the_agreement(h: Harness) -> None:
    other = _second_process(h)
    h.attest()
    sid, nonce = h.auth()
    other_current = other.current_agreement()  # caches v1 in `other`
    assert other_current is not None
    h.service.submit_agreement(_v2(h))
    key = ECKey.generate_key("P-256", private=True)
    with pytest.raises(AttestationFailed) as info:
        other.attest(sid, h.attest_request(nonce, key))
    assert info.value.reasons == ["the federation agreement changed during the attestation"]
    stored = h.store.get_session(sid)
    assert stored is not None and stored.consumed and stored.token_digest is None
    h.verify_audit()


def test_concurrent_attestations_with_one_nonce_get_one_token(h: Harness) -> None:
    sid, nonce = h.auth()
    requests = [h.attest_request(nonce, ECKey.generate_key("P-256", private=True))
                for _ in range(6)]
    barrier = threading.Barrier(len(requests))
    tokens: list[str] = []
    errors: list[Exception] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        barrier.wait()
        try:
            token = h.service.attest(sid, requests[i]).token
        except Exception as exc:
            with lock:
                errors.append(exc)
        else:
            with lock:
                tokens.append(token)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(tokens) == 1 and len(errors) == 5
    assert all(isinstance(e, AttestationFailed) for e in errors)
    assert all(e.reasons == ["nonce already used (replay)"] for e in errors)  # type: ignore[attr-defined]
    attests = [e for e in h.store.audit_entries(0, 1000) if e.kind == "attestation"]
    assert [e.decision for e in attests].count("accept") == 1
    assert h.service.authorize(session_id=sid, token=tokens[0]).session_id == sid
    h.verify_audit()


def test_refused_attestation_consumes_the_nonce_with_its_audit_entry(h: Harness) -> None:
    sid, nonce = h.auth()
    key = ECKey.generate_key("P-256", private=True)
    bad = h.attest_request(nonce, key, measurement=bytes.fromhex("0b" * 32))
    with pytest.raises(AttestationFailed):
        h.service.attest(sid, bad)
    with pytest.raises(AttestationFailed) as info:  # the same nonce again: a replay
        h.service.attest(sid, h.attest_request(nonce, key))
    assert info.value.reasons == ["nonce already used (replay)"]
    decisions = [e.decision for e in h.store.audit_entries(0, 100) if e.kind == "attestation"]
    assert decisions == ["deny", "deny"]
    h.verify_audit()


def test_token_with_another_sessions_cookie_is_refused(h: Harness) -> None:
    a, b = h.attest(), h.attest()
    with pytest.raises(TokenVerifierError, match="belong"):
        h.service.authorize(session_id=b.session_id, token=a.token)
    got = h.service.get_resource  # the right pair still works
    h.service.put_resource(h.upload(key := os.urandom(32)))
    body = got(h.service.authorize(session_id=a.session_id, token=a.token), PATH)
    assert open_jwe(body, a.key) == key


def test_token_cache_bounds() -> None:
    cache = TokenCache(max_entries=2)
    h_sessions = []
    store = open_store("memory://")
    try:
        h = Harness(store)
        for _ in range(3):
            w = h.attest()
            s = h.service.authorize(session_id=w.session_id, token=w.token)
            h_sessions.append((w.token, s))
            cache.put(w.token, s, NOW)
        assert cache.get(h_sessions[2][0], NOW) == h_sessions[2][1]
        assert cache.get("not a token", NOW) is None
        assert cache.get(h_sessions[2][0], h_sessions[2][1].expires_at) is None
    finally:
        store.close()


def test_grant_cache_follows_the_stored_bytes(h: Harness) -> None:
    h.service.put_resource(h.upload(os.urandom(32)))
    cache = GrantCache(max_entries=1)
    first = h.store.get_resource(PATH)
    signed = h.service.current_agreement()
    record = h.store.current_agreement()
    assert first is not None and signed is not None and record is not None
    args = (signed.agreement, record.digest)
    g1 = cache.get(first, *args)
    assert g1 is not None and cache.get(first, *args) is g1
    h.clock.now = NOW + timedelta(seconds=1)
    h.service.put_resource(h.upload(os.urandom(32), grant=h.grant(created_at=NOW)))
    second = h.store.get_resource(PATH)
    assert second is not None and second.generation == 2
    g2 = cache.get(second, *args)
    assert g2 is not None and g2.grant.id != g1.grant.id
    # re-verified on load: a widened grant (the signature no longer covers it) is refused
    widened = second.grant.replace(b'"max_releases":', b'"max_releases":9')
    forged = replace(second, grant=widened, grant_digest=second.grant_digest)
    assert widened != second.grant and cache.get(forged, *args) is None


def test_stale_resource_views_of_two_processes_respect_the_budget(h: Harness) -> None:
    """Each process decides on its own (possibly stale) view of the release count; the
    store's compare-and-increment keeps the total at max_releases."""
    key = os.urandom(32)
    h.service.put_resource(h.upload(key, grant=h.grant(max_releases=3)))
    other = _second_process(h, refresh=timedelta(0))
    services = [h.service, other, h.service, other, other, h.service]
    results: list[str] = []
    for svc in services:
        w = h.attest()
        try:
            body = svc.get_resource(svc.authorize(session_id=w.session_id, token=w.token), PATH)
        except PolicyDeny:
            results.append("deny")
        else:
            assert open_jwe(body, w.key) == key
            results.append("ok")
    assert results == ["ok", "ok", "ok", "deny", "deny", "deny"]
    assert h.service.resource_info(PATH).release_count == 3  # type: ignore[union-attr]
    # a replacement by the owner (through the first process) is seen by the second one
    h.clock.now = NOW + timedelta(seconds=1)
    h.service.put_resource(h.upload(key2 := os.urandom(32), grant=h.grant(created_at=NOW)))
    w = h.attest()
    session = other.authorize(session_id=w.session_id, token=w.token)
    assert open_jwe(other.get_resource(session, PATH), w.key) == key2
    h.verify_audit()
