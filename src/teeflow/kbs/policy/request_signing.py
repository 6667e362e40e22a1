"""Party-signed HTTP requests: RFC 9421 HTTP Message Signatures with a party's Ed25519 key.

A party proves that it sent an HTTP request (a compute job, an upload, an audit read) by
signing it with the Ed25519 key the agreement in force lists for it. The signature is an
RFC 9421 signature made and checked by the maintained ``http-message-signatures`` library
(pyauth); this module only fixes the profile and adds the policy the library leaves to its
caller (who the key belongs to, freshness against an injected clock, replay, the body).

**Profile** (every member is required; anything else is refused)::

    Signature-Input: teeflow=("@method" "@target-uri" "content-digest");created=1733500000;
        expires=1733500060;nonce="<22 b64url chars>";keyid="alice";alg="ed25519";
        tag="teeflow-party/v1"
    Signature: teeflow=:<64-byte Ed25519 signature, base64>:
    Content-Digest: sha-256=:<SHA-256 of the body, base64>:      (RFC 9530; also for b"")

* ``keyid`` is the party's name; its key is the agreement's ``parties[name].sign_key``
  (resolved per request, so a key the agreement in force no longer lists stops working);
* ``alg`` is ``ed25519`` (RFC 9421 §3.3.6); ``tag`` is :data:`SIGNATURE_TAG`;
* covered components: ``@method``, ``@target-uri`` (scheme, authority, path and query, RFC
  9421 §2.2.2) and ``content-digest`` (RFC 9530 §2, SHA-256), so method, URL and body are
  all signed;
* freshness: ``created`` is not in the future (beyond :data:`MAX_CLOCK_SKEW`), the request
  is at most ``max_age`` old (default :data:`DEFAULT_MAX_AGE`, 60 s), ``expires`` is not
  past and ``expires - created`` is at most ``max_age``; time comes from an injected clock;
* replay: a (keyid, nonce) pair is accepted once while its signature can still be fresh
  (:class:`NonceCache`, bounded; a full cache refuses new requests rather than forget).

**Signing** (:class:`PartyRequestAuth`): an ``httpx.Auth`` — pass ``auth=`` to
``httpx.Client`` or to one request; it adds ``Content-Digest``, ``Signature-Input`` and
``Signature``.

**Verifying** (:class:`RequestVerifier`): :meth:`RequestVerifier.verify_headers` checks
everything but the body (call it before reading a streamed body, so an unsigned upload is
refused before a byte is read); :meth:`RequestVerifier.check_content` then compares the
SHA-256 of the body as read with the signed ``Content-Digest``.
:meth:`RequestVerifier.verify` does both for a body already in memory, and
:meth:`RequestVerifier.dependency` is a FastAPI dependency that reads a bounded body and
returns the :class:`SignedRequest`. Every refusal is a :class:`RequestSignatureError`
(HTTP 401; :class:`RequestReplayed` for a replay); the HTTP adapters render it as their
RFC 7807 problem.

Residual: the nonce cache is per process, so a request captured within its ``max_age``
could be replayed to *another* server of the same federation whose URL is the same (the
signed ``@target-uri`` names the server the party meant).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final

import http_sf
import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from http_message_signatures import (
    HTTPMessageSignaturesException,
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    InvalidSignature,
    algorithms,
)

from teeflow.errors import ParseError, VerificationError
from teeflow.kbs.policy.canonical import b64url_decode, b64url_encode

__all__ = [
    "COVERED_COMPONENTS",
    "DEFAULT_MAX_AGE",
    "MAX_CLOCK_SKEW",
    "SIGNATURE_LABEL",
    "SIGNATURE_TAG",
    "NonceCache",
    "PartyRequestAuth",
    "RequestReplayed",
    "RequestSignatureError",
    "RequestVerifier",
    "SignedRequest",
    "agreement_party_keys",
    "sign_request",
]

#: Label of the signature in ``Signature-Input``/``Signature`` (not itself signed).
SIGNATURE_LABEL: Final = "teeflow"
#: Signed ``tag`` parameter: the application profile (RFC 9421 §2.3).
SIGNATURE_TAG: Final = "teeflow-party/v1"
#: Components every signature must cover.
COVERED_COMPONENTS: Final = ("@method", "@target-uri", "content-digest")
#: Default freshness window (and the signer's ``expires - created``).
DEFAULT_MAX_AGE: Final = timedelta(seconds=60)
#: Tolerated clock difference between party and server.
MAX_CLOCK_SKEW: Final = timedelta(seconds=5)
_MAX_SIGNATURE_HEADER = 4096
_MAX_KEYID = 63
_NONCE_BYTES = 16


class RequestSignatureError(VerificationError):
    """A request is unsigned, wrongly signed, stale, by no party of the agreement in force, or
    its body differs from its signed digest. HTTP adapters answer ``status`` (401)."""

    status: ClassVar[int] = 401


class RequestReplayed(RequestSignatureError):
    """The request's (keyid, nonce) was already accepted (a replay)."""


@dataclass(frozen=True)
class SignedRequest:
    """A verified request signature.

    Attributes:
        party: the signing party (the ``keyid``), a party of the agreement in force.
        nonce: the signed nonce (base64url).
        created: when the party signed (UTC).
        content_sha256: the signed SHA-256 of the body (32 bytes).
    """

    party: str
    nonce: str
    created: datetime
    content_sha256: bytes


@dataclass
class _Message:
    """The message view ``http-message-signatures`` reads (method, absolute URL, headers)."""

    method: str
    url: str
    headers: Any


class _Keys(HTTPSignatureKeyResolver):
    def __init__(self, public: Mapping[str, Ed25519PublicKey],
                 private: Mapping[str, Ed25519PrivateKey]) -> None:
        self._public = public
        self._private = private

    def resolve_public_key(self, key_id: str) -> Ed25519PublicKey | None:
        return self._public.get(key_id)

    def resolve_private_key(self, key_id: str) -> Ed25519PrivateKey:
        return self._private[key_id]


class _ClockedVerifier(HTTPMessageVerifier):
    """The library's verifier with the time checks on an injected clock."""

    max_clock_skew = MAX_CLOCK_SKEW
    require_created = True

    def __init__(self, *, now: datetime, max_age: timedelta, **kw: Any) -> None:
        super().__init__(**kw)
        self._now = now
        self._max_age = max_age

    def validate_created_and_expires(self, sig_input: Any, max_age: Any = None) -> None:
        params = sig_input.params
        for name in ("created", "expires", "nonce", "keyid", "tag", "alg"):
            if name not in params:
                raise InvalidSignature(f'signature lacks the "{name}" parameter')
        created, expires = params["created"], params["expires"]
        if type(created) is not int or type(expires) is not int:
            raise InvalidSignature("created/expires must be integers")
        if not 0 <= created <= expires <= 2**40:
            raise InvalidSignature("created/expires out of range")
        now = self._now.timestamp()
        skew = self.max_clock_skew.total_seconds()
        if created > now + skew:
            raise InvalidSignature("signature created in the future")
        if now - skew > created + self._max_age.total_seconds():
            raise InvalidSignature("signature is too old")
        if expires < now - skew:
            raise InvalidSignature("signature expired")
        if expires - created > self._max_age.total_seconds():
            raise InvalidSignature("signature validity longer than allowed")


def sign_request(
    request: httpx.Request, party: str, key: Ed25519PrivateKey, *,
    now: datetime | None = None, nonce: str | None = None,
    max_age: timedelta = DEFAULT_MAX_AGE,
) -> None:
    """Sign ``request`` in place for ``party`` (module docstring, profile).

    Args:
        request: an httpx request whose body is already read (``request.content``).
        party: the signing party's name (``keyid``).
        key: its Ed25519 private key.
        now: signing time (UTC; default the wall clock); nonce: default 16 random bytes.
        max_age: ``expires - created``.

    Raises:
        RequestSignatureError: the request cannot be signed (e.g. non-ASCII URL).
    """
    now = now or datetime.now(UTC)
    created = datetime.fromtimestamp(int(now.timestamp()), UTC)
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519,
                               key_resolver=_Keys({}, {party: key}))
    for name in ("content-digest", "signature", "signature-input"):
        if name in request.headers:
            del request.headers[name]
    message = _Message(request.method, str(request.url), request.headers)
    try:
        signer.sign(
            message, key_id=party, created=created, expires=created + max_age,
            nonce=nonce or b64url_encode(os.urandom(_NONCE_BYTES)), label=SIGNATURE_LABEL,
            tag=SIGNATURE_TAG, covered_component_ids=COVERED_COMPONENTS, body=request.content,
        )
    except HTTPMessageSignaturesException as exc:
        raise RequestSignatureError(f"cannot sign the request: {exc}") from None


class PartyRequestAuth(httpx.Auth):
    """httpx authentication that signs every request for a party (module docstring).

    Args:
        party: the party name; key: its Ed25519 private key.
        clock: time source (UTC; default the wall clock).
    """

    requires_request_body = True

    def __init__(self, party: str, key: Ed25519PrivateKey, *,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.party = party
        self._key = key
        self._clock = clock or (lambda: datetime.now(UTC))

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Sign ``request`` and send it (httpx's auth protocol)."""
        sign_request(request, self.party, self._key, now=self._clock())
        yield request


class NonceCache:
    """Remembers accepted (keyid, nonce) pairs until their signatures can no longer be fresh.

    Args:
        max_entries: bound on remembered pairs; when full of unexpired pairs, new requests
            are refused (fail closed) instead of forgetting a pair.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._max = max(1, max_entries)
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, keyid: str, nonce: str, *, until: float, now: float) -> None:
        """Record a pair, valid until the POSIX time ``until``.

        Raises:
            RequestReplayed: the pair was already recorded and has not expired.
            RequestSignatureError: the cache is full of unexpired pairs.
        """
        with self._lock:
            key = (keyid, nonce)
            seen = self._seen.get(key)
            if seen is not None and seen >= now:
                raise RequestReplayed("request replayed (nonce already used)")
            if len(self._seen) >= self._max:
                for k in [k for k, t in self._seen.items() if t < now]:
                    del self._seen[k]
            if len(self._seen) >= self._max:
                raise RequestSignatureError("too many signed requests in flight; retry later")
            self._seen[key] = until

    def __len__(self) -> int:
        return len(self._seen)


def agreement_party_keys(parties: Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    """``{name: Ed25519 public key}`` from an agreement's ``parties`` (each with a base64url
    ``sign_key``); malformed keys are left out."""
    out: dict[str, Ed25519PublicKey] = {}
    for name, spec in parties.items():
        try:
            out[name] = Ed25519PublicKey.from_public_bytes(
                b64url_decode(getattr(spec, "sign_key", ""), length=32))
        except (ParseError, ValueError):
            continue
    return out


def _content_sha256(value: str) -> bytes:
    """The SHA-256 member of a Content-Digest value (RFC 9530 §2)."""
    try:
        parsed = http_sf.parse(value.encode("ascii"), tltype="dictionary")
    except (ValueError, TypeError, UnicodeEncodeError):
        raise RequestSignatureError("malformed Content-Digest") from None
    member = parsed.get("sha-256") if isinstance(parsed, dict) else None
    if not isinstance(member, tuple) or not isinstance(member[0], bytes) or len(member[0]) != 32:
        raise RequestSignatureError("Content-Digest has no sha-256 member")
    return member[0]


class RequestVerifier:
    """Verifies party-signed requests (module docstring).

    Args:
        party_keys: returns ``{party name: Ed25519 public key}`` of the agreement in force
            (called per request; e.g. ``lambda: agreement_party_keys(agreement.parties)``).
        max_age: freshness window.
        clock: time source (UTC; default the wall clock).
        nonces: the replay cache (default a fresh :class:`NonceCache`).
    """

    def __init__(
        self, party_keys: Callable[[], Mapping[str, Ed25519PublicKey]], *,
        max_age: timedelta = DEFAULT_MAX_AGE, clock: Callable[[], datetime] | None = None,
        nonces: NonceCache | None = None,
    ) -> None:
        self._party_keys = party_keys
        self.max_age = max_age
        self._clock = clock or (lambda: datetime.now(UTC))
        self.nonces = nonces or NonceCache()

    def verify_headers(self, method: str, url: str,
                       headers: Iterable[tuple[str, str]] | Any) -> SignedRequest:
        """Check signature, key, freshness and replay; not the body (:meth:`check_content`).

        Args:
            method: the HTTP method (upper case); url: the absolute request URL as received;
            headers: an object with ``items()`` giving every field line (e.g. Starlette's
                ``request.headers``) or a list of ``(name, value)``.

        Returns:
            The :class:`SignedRequest` (the nonce is now used up).

        Raises:
            RequestSignatureError: unsigned, malformed, wrong key or signature, unknown party,
                stale, or uncovered components; RequestReplayed: a replay.
        """
        fields = _Fields(headers)
        sig_input = fields.get("signature-input")
        signature = fields.get("signature")
        if sig_input is None or signature is None:
            raise RequestSignatureError("the request is not signed by a party")
        if len(sig_input) > _MAX_SIGNATURE_HEADER or len(signature) > _MAX_SIGNATURE_HEADER:
            raise RequestSignatureError("signature headers too long")
        if fields.get("content-digest") is None:
            raise RequestSignatureError("the request has no Content-Digest")
        now = self._clock()
        keys = self._party_keys()
        verifier = _ClockedVerifier(now=now, max_age=self.max_age,
                                    signature_algorithm=algorithms.ED25519,
                                    key_resolver=_Keys(keys, {}))
        try:
            results = verifier.verify(_Message(method, url, fields), max_age=self.max_age,
                                      expect_tag=SIGNATURE_TAG,
                                      require_components=COVERED_COMPONENTS)
        except (InvalidSignature, HTTPMessageSignaturesException) as exc:
            text = str(exc) or "the signature does not verify"
            if "resolve verification key" in text:
                text = "the signing key is not a party key of the agreement in force"
            raise RequestSignatureError(f"request signature refused: {text[:200]}") from None
        if len(results) != 1:
            raise RequestSignatureError("exactly one party signature is required")
        params = results[0].parameters
        keyid, nonce = params.get("keyid"), params.get("nonce")
        if not isinstance(keyid, str) or keyid not in keys or len(keyid) > _MAX_KEYID:
            raise RequestSignatureError("the signing key is not a party key of the agreement")
        if params.get("alg") != algorithms.ED25519.algorithm_id:
            raise RequestSignatureError("the signature algorithm must be ed25519")
        if not isinstance(nonce, str) or not 16 <= len(nonce) <= 128:
            raise RequestSignatureError("the signature nonce is missing or malformed")
        created = int(params["created"])
        digest = _content_sha256(results[0].covered_components['"content-digest"'])
        self.nonces.remember(
            keyid, nonce, now=now.timestamp(),
            until=created + self.max_age.total_seconds() + 2 * MAX_CLOCK_SKEW.total_seconds())
        return SignedRequest(party=keyid, nonce=nonce,
                             created=datetime.fromtimestamp(created, UTC),
                             content_sha256=digest)

    @staticmethod
    def check_content(signed: SignedRequest, sha256: bytes) -> None:
        """Compare the SHA-256 (32 bytes) of the body as read with the signed digest.

        Raises:
            RequestSignatureError: they differ.
        """
        if not hmac.compare_digest(signed.content_sha256, sha256):
            raise RequestSignatureError("the body differs from its signed Content-Digest")

    def verify(self, method: str, url: str, headers: Iterable[tuple[str, str]] | Any,
               body: bytes) -> SignedRequest:
        """:meth:`verify_headers` then :meth:`check_content` for ``body`` (bytes).

        Raises:
            RequestSignatureError, RequestReplayed: as those methods.
        """
        signed = self.verify_headers(method, url, headers)
        self.check_content(signed, hashlib.sha256(body).digest())
        return signed

    def dependency(self, *, max_body: int = 64 * 1024,
                   on_error: Callable[[RequestSignatureError], Exception] | None = None,
                   ) -> Callable[[Any], Awaitable[SignedRequest]]:
        """A FastAPI dependency: verify the request, reading its body (at most ``max_body``
        bytes; Starlette keeps it for the route's own ``await request.body()``).

        Args:
            max_body: body bound (bytes); a longer body is refused as unsigned content.
            on_error: maps a refusal to the exception the app renders (e.g. its RFC 7807
                problem); default: raise the :class:`RequestSignatureError` itself.
        """
        import inspect

        from starlette.requests import Request  # only where a server is built

        async def dependency(request: Any) -> SignedRequest:
            try:
                signed = self.verify_headers(request.method, str(request.url), request.headers)
                declared = request.headers.get("content-length", "0")
                # ASCII digits only (str.isdigit also accepts e.g. "¹", which int() refuses)
                if not (declared.isascii() and declared.isdigit() and len(declared) <= 20) or (
                    int(declared) > max_body
                ):
                    raise RequestSignatureError(f"signed body larger than {max_body} bytes")
                body = await request.body()
                if len(body) > max_body:
                    raise RequestSignatureError(f"signed body larger than {max_body} bytes")
                self.check_content(signed, hashlib.sha256(body).digest())
            except RequestSignatureError as exc:
                raise (on_error(exc) if on_error is not None else exc) from None
            return signed

        # FastAPI reads the parameter's type from the signature: it injects the request
        dependency.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                               annotation=Request)],
            return_annotation=SignedRequest)
        return dependency


class _Fields:
    """Read-only field lines for the library (``items()`` with every line, in order)."""

    def __init__(self, headers: Iterable[tuple[str, str]] | Any) -> None:
        raw = headers.items() if hasattr(headers, "items") else headers
        self._items = [(str(k), str(v)) for k, v in list(raw)[:256]]

    def items(self) -> list[tuple[str, str]]:
        return self._items

    def __iter__(self) -> Any:
        return iter(dict.fromkeys(k for k, _ in self._items))

    def __contains__(self, name: object) -> bool:
        return any(k.lower() == str(name).lower() for k, _ in self._items)

    def get(self, name: str) -> str | None:
        values = [v for k, v in self._items if k.lower() == name]
        return ", ".join(values) if values else None
