"""Party-signed HTTP requests (RFC 9421 profile of teeflow.kbs.policy.request_signing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import ClassVar

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from http_message_signatures import HTTPMessageSigner, algorithms

from teeflow.kbs.policy.request_signing import (
    SIGNATURE_TAG,
    NonceCache,
    PartyRequestAuth,
    RequestReplayed,
    RequestSignatureError,
    RequestVerifier,
    sign_request,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)
URL = "https://127.0.0.1:8443/v1/compute/jobs?x=1"
KEY = Ed25519PrivateKey.generate()


def _verifier(now: datetime = NOW, **kw: object) -> RequestVerifier:
    return RequestVerifier(lambda: {"alice": KEY.public_key()}, clock=lambda: now, **kw)  # type: ignore[arg-type]


def _signed(body: bytes = b'{"a":1}', *, method: str = "POST", url: str = URL,
            at: datetime = NOW, key: Ed25519PrivateKey = KEY, party: str = "alice",
            nonce: str | None = None) -> httpx.Request:
    req = httpx.Request(method, url, content=body)
    sign_request(req, party, key, now=at, nonce=nonce)
    return req


def _check(v: RequestVerifier, req: httpx.Request, *, method: str | None = None,
           url: str | None = None, body: bytes | None = None) -> object:
    return v.verify(method or req.method, url or str(req.url), list(req.headers.items()),
                    req.content if body is None else body)


def test_round_trip_names_the_party_and_the_body_digest() -> None:
    req = _signed()
    assert {"content-digest", "signature-input", "signature"} <= set(req.headers)
    assert 'tag="teeflow-party/v1"' in req.headers["signature-input"]
    signed = _check(_verifier(), req)
    assert signed.party == "alice" and signed.created == NOW  # type: ignore[attr-defined]


def test_replay_is_refused() -> None:
    v, req = _verifier(), _signed()
    _check(v, req)
    with pytest.raises(RequestReplayed):
        _check(v, req)


@pytest.mark.parametrize("at", [NOW - timedelta(seconds=70), NOW + timedelta(seconds=30)])
def test_stale_or_future_signatures_are_refused(at: datetime) -> None:
    with pytest.raises(RequestSignatureError):
        _check(_verifier(), _signed(at=at))


def test_tampering_is_refused() -> None:
    for kw in ({"method": "PUT"}, {"url": URL.replace("x=1", "x=2")},
               {"url": URL.replace("8443", "9443")}, {"body": b'{"a":2}'}):
        with pytest.raises(RequestSignatureError):
            _check(_verifier(), _signed(), **kw)  # type: ignore[arg-type]


def test_wrong_key_and_unknown_party_are_refused() -> None:
    with pytest.raises(RequestSignatureError, match="does not verify"):
        _check(_verifier(), _signed(key=Ed25519PrivateKey.generate()))
    with pytest.raises(RequestSignatureError, match="not a party key"):
        _check(_verifier(), _signed(party="mallory"))


def test_unsigned_and_malformed_requests_are_refused() -> None:
    plain = httpx.Request("POST", URL, content=b"x")
    with pytest.raises(RequestSignatureError, match="not signed"):
        _check(_verifier(), plain)
    req = _signed()
    req.headers["signature-input"] = "teeflow=(garbage"
    with pytest.raises(RequestSignatureError):
        _check(_verifier(), req)


def test_a_signature_not_covering_the_profile_is_refused() -> None:
    """Signed with the right key but covering only @method (body and URL unsigned)."""
    req = httpx.Request("POST", URL, content=b"x", headers={"content-digest": "sha-256=:" +
                        "LCa0a2j/xo/5m0U8HTBBNBNCLXBkg7+g+YpeiGJm564=:"})
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519,
                               key_resolver=_Resolver())
    signer.sign(_Msg(req), key_id="alice", created=NOW, expires=NOW + timedelta(seconds=30),
                nonce="n" * 22, tag=SIGNATURE_TAG, label="teeflow",
                covered_component_ids=("@method",), use_existing_digest=True)
    with pytest.raises(RequestSignatureError, match="not covered"):
        _check(_verifier(), req)


def test_nonce_cache_is_bounded_and_fails_closed() -> None:
    cache = NonceCache(max_entries=2)
    cache.remember("a", "n1", until=100.0, now=0.0)
    cache.remember("a", "n2", until=100.0, now=0.0)
    with pytest.raises(RequestSignatureError, match="too many"):
        cache.remember("a", "n3", until=100.0, now=0.0)
    cache.remember("a", "n3", until=300.0, now=200.0)  # expired pairs make room
    assert len(cache) == 1


def test_httpx_auth_signs_each_request() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    auth = PartyRequestAuth("alice", KEY, clock=lambda: NOW)
    with httpx.Client(transport=httpx.MockTransport(handler), auth=auth) as http:
        http.get("https://kbs.example/v1/audit")
        http.post("https://kbs.example/v1/x", content=b"body")
    v = _verifier()
    for req in seen:
        v.verify(req.method, str(req.url), list(req.headers.items()), req.content)
    assert seen[0].headers["signature-input"] != seen[1].headers["signature-input"]


class _Resolver:
    def resolve_private_key(self, key_id: str) -> Ed25519PrivateKey:
        return KEY

    def resolve_public_key(self, key_id: str) -> None:
        return None


class _Msg:
    def __init__(self, req: httpx.Request) -> None:
        self.method, self.url, self.headers = req.method, str(req.url), req.headers


def test_dependency_refuses_a_non_ascii_content_length_typed() -> None:
    """``Content-Length: ¹`` passes ``str.isdigit`` but not ``int``: a typed refusal, not a
    500 (ValueError) from the party-signed request dependency."""
    import asyncio

    req = _signed()

    class _Fake:
        method = req.method
        url = str(req.url)
        headers: ClassVar[dict[str, str]] = {**dict(req.headers), "content-length": "\u00b9"}

        async def body(self) -> bytes:
            return req.content

    dep = _verifier().dependency(max_body=1024)
    with pytest.raises(RequestSignatureError):
        asyncio.run(dep(_Fake()))
    ok = _Fake()
    ok.headers = dict(req.headers)  # type: ignore[misc]  # the untouched request
    assert asyncio.run(_verifier().dependency(max_body=1024)(ok)).party == "alice"
