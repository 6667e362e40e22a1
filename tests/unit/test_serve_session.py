"""End-to-end sessions (``session-v1``, :mod:`teeflow.serve.session`): setup, keys, the
server's session table, and the attacks a TLS-terminating proxy can try (no sockets)."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from teeflow.errors import SealingError
from teeflow.serve.e2e import E2E_SCHEMES, MAX_ENVELOPE_AGE
from teeflow.serve.session import (
    SESSION_SCHEME,
    SessionKeys,
    SessionReplayed,
    SessionTable,
    SessionUnknown,
    open_setup,
    seal_setup,
)

SERVER = X25519PrivateKey.generate()


def _pair(model: str = "mnist", api_key: str | None = None
          ) -> tuple[SessionKeys, SessionKeys, bytes]:
    """(client keys, server keys, setup ciphertext) of one setup."""
    now = int(time.time())
    ct, secret = seal_setup(SERVER.public_key(), model, api_key=api_key, created=now)
    got, api, created = open_setup(ct, SERVER, model)
    assert got == secret and api == api_key and created == now  # every field round-trips
    return SessionKeys(secret, ct, model), SessionKeys(got, ct, model), ct


def test_session_round_trip_and_key_confirmation() -> None:
    assert SESSION_SCHEME in E2E_SCHEMES
    client, server, _ = _pair(api_key="tfk_x")
    table = SessionTable()
    sid, expires = table.open(server, "bob", now=time.time())
    assert client.open_ok(server.seal_ok(sid, expires)) == (sid, expires)
    for seq in (1, 2, 5):  # gaps are allowed, going back is not
        ct = client.seal_request(sid, seq, b"body", 7)
        entry, body, hl = table.accept(sid, seq, ct, now=time.time())
        assert (entry.party, body, hl) == ("bob", b"body", "7")
        resp = entry.keys.seal_response(sid, seq, b"answer", None)
        assert client.open_response(sid, seq, resp) == (b"answer", None)
    # a session answer from a server that does not hold the secret does not open
    other, _, _ = _pair()
    with pytest.raises(SealingError):
        other.open_ok(server.seal_ok(sid, expires))


def test_setup_refuses_tampering_another_model_and_malformed() -> None:
    ct, _ = seal_setup(SERVER.public_key(), "mnist")
    with pytest.raises(SealingError):
        open_setup(ct, SERVER, "other-model")
    flipped = bytearray(ct)
    flipped[-1] ^= 1
    with pytest.raises(SealingError):
        open_setup(bytes(flipped), SERVER, "mnist")
    with pytest.raises(SealingError):
        open_setup(ct, X25519PrivateKey.generate(), "mnist")
    with pytest.raises(SealingError):
        seal_setup(SERVER.public_key(), "mnist", api_key="k" * 600)


def test_replayed_and_reordered_session_requests_are_refused() -> None:
    client, server, _ = _pair()
    table = SessionTable()
    sid, _ = table.open(server, "bob", now=time.time())
    first, second = (client.seal_request(sid, s, b"x", None) for s in (1, 2))
    table.accept(sid, 2, second, now=time.time())
    with pytest.raises(SessionReplayed):  # replay
        table.accept(sid, 2, second, now=time.time())
    with pytest.raises(SessionReplayed):  # reordered (held back by a proxy)
        table.accept(sid, 1, first, now=time.time())
    with pytest.raises(SealingError):  # relabelled with a fresh sequence number
        table.accept(sid, 3, second, now=time.time())
    for seq in (2**64, 2**63):  # out of range: refused, not a crash
        with pytest.raises(SealingError):
            table.accept(sid, seq, second, now=time.time())
    with pytest.raises(SealingError):
        client.open_response(sid, 2**64, second)


def test_tampered_request_fails_and_does_not_consume_its_sequence_number() -> None:
    client, server, _ = _pair()
    table = SessionTable()
    sid, _ = table.open(server, "bob", now=time.time())
    ct = client.seal_request(sid, 1, b"x" * 64, None)
    bad = bytearray(ct)
    bad[20] ^= 1
    with pytest.raises(SealingError) as err:
        table.accept(sid, 1, bytes(bad), now=time.time())
    assert not isinstance(err.value, SessionReplayed)
    with pytest.raises(SealingError):  # forged huge sequence number: refused, not consumed
        table.accept(sid, 2**40, bytes(bad), now=time.time())
    assert table.accept(sid, 1, ct, now=time.time())[1] == b"x" * 64


def test_cross_session_and_cross_model_requests_are_refused() -> None:
    a_client, a_server, _ = _pair()
    _, b_server, _ = _pair()
    table = SessionTable()
    a_id, _ = table.open(a_server, "bob", now=time.time())
    b_id, _ = table.open(b_server, "bob", now=time.time())
    ct = a_client.seal_request(a_id, 1, b"x", None)
    with pytest.raises(SealingError):  # A's request presented as B's
        table.accept(b_id, 1, ct, now=time.time())
    ct_b_label = a_client.seal_request(b_id, 1, b"x", None)  # A's key, B's id
    with pytest.raises(SealingError):
        table.accept(b_id, 1, ct_b_label, now=time.time())
    # the same secret, but the server serves another model: the request names the model
    ct_m, secret = seal_setup(SERVER.public_key(), "mnist")
    m_client = SessionKeys(secret, ct_m, "mnist")
    m_id, _ = table.open(SessionKeys(secret, ct_m, "other-model"), "bob", now=time.time())
    with pytest.raises(SealingError):
        table.accept(m_id, 1, m_client.seal_request(m_id, 1, b"x", None), now=time.time())
    assert table.accept(a_id, 1, ct, now=time.time())[1] == b"x"


def test_tampered_or_swapped_response_does_not_open() -> None:
    client, server, _ = _pair()
    table = SessionTable()
    sid, _ = table.open(server, "bob", now=time.time())
    resp = server.seal_response(sid, 1, b"answer", None)
    with pytest.raises(SealingError):  # the answer to another request of the session
        client.open_response(sid, 2, resp)
    with pytest.raises(SealingError):  # a request ciphertext reflected as the response
        client.open_response(sid, 1, client.seal_request(sid, 1, b"answer", None))
    bad = bytearray(resp)
    bad[0] ^= 1
    with pytest.raises(SealingError):
        client.open_response(sid, 1, bytes(bad))


def test_stale_request_unknown_and_expired_sessions_are_refused() -> None:
    client, server, _ = _pair()
    table = SessionTable(lifetime=100)
    now = time.time()
    sid, expires = table.open(server, "bob", now=now)
    assert expires == int(now) + 100
    stale = client.seal_request(sid, 1, b"x", None, created=int(now) - MAX_ENVELOPE_AGE - 10)
    with pytest.raises(SealingError):
        table.accept(sid, 1, stale, now=now)
    with pytest.raises(SessionUnknown):
        table.accept("A" * 22, 1, client.seal_request("A" * 22, 1, b"x", None), now=now)
    ct = client.seal_request(sid, 1, b"x", None)
    with pytest.raises(SessionUnknown):
        table.accept(sid, 1, ct, now=now + 101)


def test_sessions_are_bounded_per_party() -> None:
    table = SessionTable(per_party=2)
    now = time.time()
    ids = [table.open(_pair()[1], "bob", now=now)[0] for _ in range(3)]
    carol = table.open(_pair()[1], "carol", now=now)[0]
    assert len(table) == 3
    with pytest.raises(SessionUnknown):  # bob's oldest was dropped, carol's is untouched
        table.accept(ids[0], 1, b"\0" * 40, now=now)
    for sid in (ids[1], ids[2], carol):
        with pytest.raises(SealingError) as err:
            table.accept(sid, 1, b"\0" * 40, now=now)
        assert not isinstance(err.value, SessionUnknown)
