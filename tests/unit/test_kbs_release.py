"""Resource upload and release: grants, the release decision, the JWE response, auditing."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from joserfc import jwe
from joserfc.jwk import ECKey
from test_kbs_service import CLAIMS, NOW, PARTIES, PATH, PKG, PKG_OTHER, Harness

from teeflow.errors import KbsError
from teeflow.kbs.api.problems import (
    Conflict,
    GrantRejected,
    InvalidRequest,
    InvalidRequestPath,
    NoAgreement,
    PolicyDeny,
)
from teeflow.kbs.protocol import TeePubKey, sign_resource_upload
from teeflow.kbs.service.release import RELEASE_DENIED_DETAIL, decide, open_jwe, seal_for_tee
from teeflow.kbs.store import open_store


@pytest.fixture()
def h() -> Iterator[Harness]:
    store = open_store("memory://")
    yield Harness(store)
    store.close()


def _release_denied(h: Harness, claims: dict[str, Any], needle: str, *, path: str = PATH) -> None:
    w = h.attest(claims=claims)
    before = h.store.get_resource(path)
    with pytest.raises(PolicyDeny) as exc:
        h.service.get_resource(h.session(w), path)
    assert exc.value.status == 403
    assert exc.value.to_dict() == PolicyDeny(RELEASE_DENIED_DETAIL).to_dict()  # constant body
    deny = h.denies("release")[-1]
    assert deny.subject == path and any(needle in r for r in deny.reasons), deny.reasons
    after = h.store.get_resource(path)
    assert (after is None and before is None) or (
        after is not None and before is not None and after.release_count == before.release_count
    )
    h.verify_audit()


def test_wrong_function_claim_denied(h: Harness) -> None:
    h.service.put_resource(h.upload(os.urandom(32)))
    _release_denied(h, {**CLAIMS, "function": "validate"}, "function validate not granted")


def test_package_not_granted_denied(h: Harness) -> None:
    h.service.put_resource(h.upload(os.urandom(32)))
    claims = {**CLAIMS, "package_digest": PKG_OTHER, "function": "mean"}
    _release_denied(h, claims, f"package {PKG_OTHER} not granted")


def test_recipient_not_granted_denied(h: Harness) -> None:
    h.service.put_resource(h.upload(os.urandom(32)))
    _release_denied(h, {**CLAIMS, "recipients": ["alice", "bob"]}, "recipient bob not granted")


def test_resource_not_claimed_denied(h: Harness) -> None:
    h.service.put_resource(h.upload(os.urandom(32)))
    _release_denied(h, {**CLAIMS, "resources": []}, "not claimed in the attested runtime data")


def test_expired_grant_denied(h: Harness) -> None:
    grant = h.grant(not_after=NOW + timedelta(minutes=2))
    h.service.put_resource(h.upload(os.urandom(32), grant=grant))
    w = h.attest()
    h.clock.now = NOW + timedelta(minutes=3)  # token (5 min) still valid, grant expired
    with pytest.raises(PolicyDeny):
        h.service.get_resource(h.session(w), PATH)
    assert any("grant expired" in r for r in h.denies("release")[-1].reasons)


def test_max_releases_enforced(h: Harness) -> None:
    key = os.urandom(32)
    h.service.put_resource(h.upload(key, grant=h.grant(max_releases=2)))
    w = h.attest()
    s = h.session(w)
    assert open_jwe(h.service.get_resource(s, PATH), w.key) == key
    assert open_jwe(h.service.get_resource(s, PATH), w.key) == key
    with pytest.raises(PolicyDeny):
        h.service.get_resource(s, PATH)
    assert any("release limit reached (2 of 2)" in r for r in h.denies("release")[-1].reasons)
    assert h.service.resource_info(PATH).release_count == 2  # type: ignore[union-attr]


def test_missing_and_forbidden_resources_are_indistinguishable(h: Harness) -> None:
    h.service.put_resource(h.upload(os.urandom(32)))
    w = h.attest(claims={**CLAIMS, "resources": [PATH, "bob/dataset-key/v1"]})
    s = h.session(w)
    with pytest.raises(PolicyDeny) as missing:
        h.service.get_resource(s, "bob/dataset-key/v1")
    other = h.attest(claims={**CLAIMS, "function": "validate"})
    with pytest.raises(PolicyDeny) as forbidden:
        h.service.get_resource(h.session(other), PATH)
    assert missing.value.to_dict() == forbidden.value.to_dict()
    assert str(missing.value) == str(forbidden.value)
    assert h.denies("release")[0].reasons == ["resource does not exist"]
    with pytest.raises(InvalidRequestPath) as bad:
        h.service.get_resource(s, "../etc/passwd")
    assert bad.value.status == 404


def test_grant_cannot_widen_the_agreement_measurements(h: Harness) -> None:
    with pytest.raises(GrantRejected, match="not allowed by the agreement"):
        h.service.put_resource(h.upload(os.urandom(32), grant=h.grant(mrenclave=["ab" * 32])))
    assert h.store.get_resource(PATH) is None


# -- uploads ---------------------------------------------------------------------------------


def test_upload_refusals_list_every_reason_and_write_nothing(h: Harness) -> None:
    bad = h.grant(packages=["ee" * 32], recipients=["carol"], roles=["client", "compute"])
    with pytest.raises(GrantRejected) as exc:
        h.service.put_resource(h.upload(os.urandom(32), grant=bad))
    reasons = exc.value.reasons
    assert any("package" in r and "not in the agreement" in r for r in reasons)
    assert any("recipient carol" in r for r in reasons)
    assert any("role compute has no workload" in r for r in reasons)
    assert exc.value.status == 403 and h.store.get_resource(PATH) is None
    assert h.denies("resource")[-1].reasons == reasons


def test_upload_signature_binds_the_wrapped_key(h: Harness) -> None:
    good = h.upload(os.urandom(32))
    forged = good.model_copy(update={"wrapped_key": h.upload(os.urandom(32)).wrapped_key})
    with pytest.raises(GrantRejected, match="upload signature of alice does not verify"):
        h.service.put_resource(forged)
    # bob re-signs alice's grant as his own upload: owner mismatch
    mallory = sign_resource_upload(PATH, good.wrapped_key_bytes(), good.signed_grant,
                                   PARTIES["bob"])
    with pytest.raises(GrantRejected, match="not the uploader bob"):
        h.service.put_resource(mallory)
    assert h.store.get_resource(PATH) is None


def test_wrapped_key_must_unwrap_for_this_path(h: Harness) -> None:
    with pytest.raises(InvalidRequest, match="does not unwrap"):
        h.service.put_resource(h.upload(os.urandom(32), aad_path="alice/other/v1"))
    assert h.store.get_resource(PATH) is None


def test_replacement_rules(h: Harness) -> None:
    first = h.upload(os.urandom(32))
    h.service.put_resource(first)
    with pytest.raises(Conflict, match="newer grant"):
        h.service.put_resource(first)  # replay of the same upload
    older = h.grant(created_at=NOW - timedelta(days=2))
    with pytest.raises(Conflict):
        h.service.put_resource(h.upload(os.urandom(32), grant=older))
    newer = h.grant(created_at=NOW - timedelta(hours=1))
    info = h.service.put_resource(h.upload(os.urandom(32), grant=newer))
    assert info.generation == 2 and info.release_count == 0
    bob_grant = h.grant(owner="bob", created_at=NOW - timedelta(minutes=1))
    # issue 10: alice/... is alice's namespace, so bob is refused before the store is read
    with pytest.raises(GrantRejected, match="belongs to party alice"):
        h.service.put_resource(h.upload(os.urandom(32), owner="bob", grant=bob_grant))


def test_upload_without_agreement() -> None:
    h = Harness(open_store("memory://"))
    from teeflow.kbs.service.core import KbsService

    svc = KbsService(open_store("memory://"), h.keys, clock=h.clock, anchors=[],
                     collateral=h.service._ctx.collateral)
    with pytest.raises(NoAgreement):
        svc.put_resource(h.upload(os.urandom(32)))


# -- the decision function -------------------------------------------------------------------------


def test_decide_is_pure_and_lists_every_reason(h: Harness) -> None:
    h.service.put_resource(h.upload(os.urandom(32), grant=h.grant(max_releases=1)))
    record = h.store.get_resource(PATH)
    assert record is not None
    from teeflow.kbs.service.release import stored_grant

    grant = stored_grant(record).grant  # type: ignore[union-attr]
    session = h.session(h.attest(claims={**CLAIMS, "function": "validate",
                                          "recipients": ["bob"]}))
    d = decide(session=session, path=PATH, record=record, grant=grant,
               agreement_digest=h.agreement_digest, now=NOW)
    assert not d.allowed and d.releases_so_far == 0
    assert {"function validate not granted", "recipient bob not granted"} <= set(d.reasons)
    d2 = decide(session=session, path=PATH, record=record, grant=grant,
                agreement_digest=b"\x00" * 32, now=NOW)
    assert "session was appraised under another agreement" in d2.reasons
    assert decide(session=session, path=PATH, record=None, grant=None,
                  agreement_digest=h.agreement_digest, now=NOW).reasons == (
        "resource does not exist",)


# -- the JWE response ------------------------------------------------------------------------------


def _key_pair() -> tuple[ECKey, TeePubKey]:
    key = ECKey.generate_key("P-256", private=True)
    return key, TeePubKey.model_validate(dict(key.as_dict(private=False), alg="ECDH-ES+A256KW"))


def test_jwe_is_trustee_flattened_form() -> None:
    key, pub = _key_pair()
    text = seal_for_tee(b"secret data key!", pub)
    body = json.loads(text)
    assert set(body) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}
    header_bytes = base64.urlsafe_b64decode(body["protected"] + "==")
    header = json.loads(header_bytes)
    # Trustee's client re-serialises the parsed header (serde, sorted map) to compute the AAD
    expected = json.dumps(
        {"alg": "ECDH-ES+A256KW", "enc": "A256GCM",
         "epk": {k: header["epk"][k] for k in sorted(header["epk"])}},
        separators=(",", ":"),
    ).encode()
    assert header_bytes == expected
    assert list(header["epk"]) == ["crv", "kty", "x", "y"] and header["epk"]["crv"] == "P-256"
    assert len(base64.urlsafe_b64decode(body["encrypted_key"] + "==")) == 40  # A256KW(32)
    assert len(base64.urlsafe_b64decode(body["iv"] + "==")) == 12
    assert open_jwe(text, key) == b"secret data key!"
    # standard flattened JSON decryption agrees
    obj = jwe.decrypt_json(body, key, algorithms=["ECDH-ES+A256KW", "A256GCM"])
    assert obj.plaintext == b"secret data key!"


def test_jwe_tamper_and_wrong_key_rejected() -> None:
    key, pub = _key_pair()
    body = json.loads(seal_for_tee(b"k" * 32, pub))
    other, _ = _key_pair()
    with pytest.raises(KbsError):
        open_jwe(json.dumps(body), other)
    for field in ("ciphertext", "tag", "iv", "encrypted_key"):
        raw = bytearray(base64.urlsafe_b64decode(body[field] + "=="))
        raw[0] ^= 1
        bad = dict(body, **{field: base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()})
        with pytest.raises(KbsError):
            open_jwe(json.dumps(bad), key)
    with pytest.raises(KbsError):
        open_jwe(json.dumps(dict(body, aad="eA")), key)
    with pytest.raises(KbsError):
        open_jwe("{}", key)
    with pytest.raises(KbsError):
        seal_for_tee(b"x" * (64 * 1024 + 1), pub)


def test_release_uses_the_package_claim(h: Harness) -> None:
    """A compute workload style grant: no package and no function claimed."""
    g = h.grant(packages=[], functions=[])
    key = os.urandom(32)
    h.service.put_resource(h.upload(key, grant=g))
    claims = {"role": "client", "party": "alice", "resources": [PATH], "recipients": ["alice"]}
    w = h.attest(claims=claims)
    assert open_jwe(h.service.get_resource(h.session(w), PATH), w.key) == key
    _release_denied(h, CLAIMS, f"package {PKG} not granted")


def test_data_key_unwrapped_once_and_a_replacement_gets_its_own(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Releases of one stored key unwrap it once; a replacement (another wrapped key under a
    newer grant) is unwrapped afresh, so the old data key is never released again."""
    import teeflow.kbs.service.resources as resources

    calls: list[bytes] = []
    real = resources.unwrap_key

    def counting(wrapped: bytes, *args: Any, **kw: Any) -> bytes:
        calls.append(wrapped)
        return real(wrapped, *args, **kw)

    monkeypatch.setattr(resources, "unwrap_key", counting)
    old_key, new_key = os.urandom(32), os.urandom(32)
    h.service.put_resource(h.upload(old_key, grant=h.grant(max_releases=10)))
    w = h.attest()
    s = h.session(w)
    assert [open_jwe(h.service.get_resource(s, PATH), w.key) for _ in range(3)] == [old_key] * 3
    assert len(calls) == 2  # the upload's unwrap check, then the first release only
    h.service.put_resource(h.upload(new_key, grant=h.grant(
        max_releases=10, created_at=NOW - timedelta(hours=1))))  # fmt: skip
    assert open_jwe(h.service.get_resource(s, PATH), w.key) == new_key
    assert len(calls) == 4  # the replacement's check and its first release


def test_concurrent_releases_of_one_resource_all_succeed(tmp_path: Any) -> None:
    """16 threads releasing one resource on SQLite: every release succeeds and is counted.
    Before releases of one path were serialised in the KBS process, each queued release
    decided on a count the ones ahead of it moved on, won an attempt with probability about
    1/16, and some ran out of attempts (503 ServiceUnavailable)."""
    import threading

    from teeflow.kbs.store import open_store as open_sql

    store = open_sql(f"sqlite:///{tmp_path / 'kbs.db'}", bytes(32))
    h = Harness(store)
    key = os.urandom(32)
    h.service.put_resource(h.upload(key, grant=h.grant(max_releases=10_000)))
    w = h.attest()
    s = h.session(w)
    threads, each = 16, 20
    barrier = threading.Barrier(threads)
    failures: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        for _ in range(each):
            try:
                h.service.get_resource(s, PATH)
            except Exception as exc:  # collected and reported below
                failures.append(exc)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(120)
    assert failures == []
    record = store.get_resource(PATH)
    assert record is not None and record.release_count == threads * each
    assert len([e for e in h.store.audit_entries(0, 10_000) if e.kind == "release"]) == 320
    h.verify_audit()
    store.close()
