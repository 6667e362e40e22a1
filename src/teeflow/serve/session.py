"""End-to-end encrypted sessions: the ``session-v1`` scheme of the ``teeflow_e2e`` extension
(``docs/serve.md``, "Sessions").

The per-request scheme (:mod:`teeflow.serve.e2e`, ``hpke-v1``) pays an HPKE setup (two
X25519 operations per side) and an RFC 9421 signature per request. A session pays them once:

**Setup** (``POST /v2/models/{name}/session``, body the HPKE ciphertext, RFC 9421
party-signed or carrying an API key inside): the client seals, with the suite and the
attested key of :mod:`teeflow.serve.e2e` and ``info = "teeflow-serve/session/v1\\0" || model
name``::

    pt = u64 created (POSIX s) || u16 len(api_key) || api_key || secret (32 random bytes)

The server opens it (fresh within :data:`~teeflow.serve.e2e.MAX_ENVELOPE_AGE`, accepted
once), identifies the caller once (signature or API key, as for ``hpke-v1``) and binds the
session to that party. Both sides derive two AES-256-GCM keys with HKDF-SHA256 (RFC 5869)
from ``secret``, ``info = "teeflow-serve/session-keys/v1\\0" || SHA-256(setup ciphertext)``:
``k_req || k_resp`` (64 bytes). The server answers ``AESGCM(k_resp, nonce(0),
JSON {"session", "expires"}, aad = "teeflow-serve/session-ok/v1\\0" || model)``, which also
proves that the attested server holds ``secret`` (key confirmation).

**Requests**: sequence numbers ``seq = 1, 2, ...`` strictly increasing per session;
``nonce(seq) = 0x00000000 || u64 seq`` (unique per key, because the server accepts each
``seq`` of a session at most once and only above the last accepted one)::

    request  = AESGCM(k_req,  nonce(seq), u64 created || u32 header length || inner OIP body,
                      aad = "teeflow-serve/session-request/v1\\0" || model || "\\0"
                            || session id || u64 seq)
    response = AESGCM(k_resp, nonce(seq), u32 header length || inner OIP response body,
                      aad = "teeflow-serve/session-response/v1\\0" || session id || u64 seq)

carried like ``hpke-v1`` (one ``UINT8`` tensor :data:`~teeflow.serve.e2e.E2E_TENSOR`) with
request parameters ``teeflow_e2e = "session-v1"``, :data:`SESSION_PARAMETER` and
:data:`SEQ_PARAMETER`. A replayed or reordered request (``seq`` not above the last accepted
one), a request of another session (other keys), a changed byte (AEAD), a stale ``created``
or an expired session is refused; the caller's quota is charged per request.

Only AES-GCM (``cryptography``'s :class:`~cryptography.hazmat.primitives.ciphers.aead.AESGCM`),
HKDF and the HPKE suite of :mod:`teeflow.serve.e2e` are used; no primitive is implemented
here.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
import threading
import time
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from teeflow.errors import SealingError
from teeflow.serve.e2e import _SUITE, MAX_ENVELOPE_AGE

__all__ = [
    "MAX_SESSIONS_PER_PARTY",
    "SEQ_PARAMETER",
    "SESSION_LIFETIME",
    "SESSION_PARAMETER",
    "SESSION_SCHEME",
    "ServerSession",
    "SessionKeys",
    "SessionReplayed",
    "SessionTable",
    "SessionUnknown",
    "open_setup",
    "seal_setup",
]

#: The ``teeflow_e2e`` value of session requests.
SESSION_SCHEME = "session-v1"
#: Request parameter carrying the session id (URL-safe text).
SESSION_PARAMETER = "teeflow_session"
#: Request parameter carrying the sequence number (an integer ≥ 1).
SEQ_PARAMETER = "teeflow_seq"
#: Seconds a session lives after its setup (the client then sets up a new one).
SESSION_LIFETIME = 600
#: Open sessions kept per party; a party's oldest session is dropped beyond it.
MAX_SESSIONS_PER_PARTY = 64
_SETUP_INFO = b"teeflow-serve/session/v1\0"
_KEYS_INFO = b"teeflow-serve/session-keys/v1\0"
_OK_AAD = b"teeflow-serve/session-ok/v1\0"
_REQ_AAD = b"teeflow-serve/session-request/v1\0"
_RESP_AAD = b"teeflow-serve/session-response/v1\0"
_SECRET = 32
_MAX_API_KEY = 512
_NONE = 0xFFFFFFFF
_MAX_SEQ = (1 << 63) - 1


class SessionUnknown(SealingError):
    """No such session (never set up, expired, dropped, or the server restarted)."""


class SessionReplayed(SealingError):
    """A sequence number at or below the last accepted one (replayed or reordered)."""


def seal_setup(server_key: X25519PublicKey, model: str, *, api_key: str | None = None,
               created: int | None = None) -> tuple[bytes, bytes]:
    """The client's setup envelope → ``(HPKE ciphertext, the 32-byte session secret)``;
    ``created`` defaults to now (POSIX seconds).

    Raises:
        SealingError: API key too long, or an HPKE failure.
    """
    secret = os.urandom(_SECRET)
    api = (api_key or "").encode("utf-8")
    if len(api) > _MAX_API_KEY:
        raise SealingError(f"API key longer than {_MAX_API_KEY} bytes")
    when = int(time.time()) if created is None else created
    pt = struct.pack(">QH", when, len(api)) + api + secret
    try:
        return _SUITE.encrypt(pt, server_key, info=_SETUP_INFO + model.encode("utf-8")), secret
    except (ValueError, TypeError) as exc:
        raise SealingError(f"HPKE encryption failed ({type(exc).__name__})") from None


def open_setup(ciphertext: bytes, server_key: X25519PrivateKey, model: str
               ) -> tuple[bytes, str | None, int]:
    """Open a setup envelope (the server side) → ``(secret, API key or None, created)``.

    Raises:
        SealingError: wrong key or model, tampered, or malformed.
    """
    try:
        pt = _SUITE.decrypt(ciphertext, server_key, info=_SETUP_INFO + model.encode("utf-8"))
    except Exception:
        raise SealingError("the session setup does not open (tampered or wrong key)") from None
    if len(pt) < 10:
        raise SealingError("the session setup is too short")
    created, n = struct.unpack_from(">QH", pt)
    if len(pt) != 10 + n + _SECRET:
        raise SealingError("the session setup is malformed")
    try:
        api = pt[10 : 10 + n].decode("utf-8") if n else None
    except UnicodeDecodeError:
        raise SealingError("the session setup is malformed") from None
    return pt[10 + n :], api, created


def _nonce(seq: int) -> bytes:
    return b"\0\0\0\0" + struct.pack(">Q", seq)


class SessionKeys:
    """The two AES-256-GCM keys of one session, derived from the setup (module docstring).

    Args:
        secret: the 32-byte session secret; setup: the setup ciphertext; model: the model.
    """

    __slots__ = ("_req", "_resp", "model")

    def __init__(self, secret: bytes, setup: bytes, model: str) -> None:
        okm = HKDF(hashes.SHA256(), 64, salt=None,
                   info=_KEYS_INFO + hashlib.sha256(setup).digest()).derive(secret)
        self._req, self._resp = AESGCM(okm[:32]), AESGCM(okm[32:])
        self.model = model.encode("utf-8")

    def seal_ok(self, session: str, expires: int) -> bytes:
        """The server's setup answer (key confirmation): ``session`` id and ``expires``."""
        pt = struct.pack(">Q", expires) + session.encode("ascii")
        return self._resp.encrypt(_nonce(0), pt, _OK_AAD + self.model)

    def open_ok(self, answer: bytes) -> tuple[str, int]:
        """The client's check of :meth:`seal_ok` → ``(session id, expires)``.

        Raises:
            SealingError: it does not open (not the attested server, or changed).
        """
        try:
            pt = self._resp.decrypt(_nonce(0), answer, _OK_AAD + self.model)
            sid = pt[8:].decode("ascii")
        except (InvalidTag, UnicodeDecodeError):
            raise SealingError("the session answer does not open (tampered or wrong server)"
                               ) from None
        if len(pt) < 9:
            raise SealingError("the session answer is malformed")
        return sid, struct.unpack_from(">Q", pt)[0]

    def _req_aad(self, session: str, seq: int) -> bytes:
        return b"".join([_REQ_AAD, self.model, b"\0", session.encode("ascii"),
                         struct.pack(">Q", seq)])

    def _resp_aad(self, session: str, seq: int) -> bytes:
        return _RESP_AAD + session.encode("ascii") + struct.pack(">Q", seq)

    def seal_request(self, session: str, seq: int, body: bytes, header_length: int | None, *,
                     created: int | None = None) -> bytes:
        """Seal an inner OIP request as request ``seq`` (≥ 1) of ``session``."""
        if not 1 <= seq <= _MAX_SEQ:
            raise SealingError("sequence number out of range")
        when = int(time.time()) if created is None else created
        hl = _NONE if header_length is None else header_length
        return self._req.encrypt(_nonce(seq), struct.pack(">QI", when, hl) + body,
                                 self._req_aad(session, seq))

    def open_request(self, session: str, seq: int, ciphertext: bytes
                     ) -> tuple[bytes, str | None, int]:
        """Open request ``seq`` → ``(inner body, header length or None, created)``.

        Raises:
            SealingError: tampered, not of this session and sequence number, or ``seq``
                out of range.
        """
        if not 1 <= seq <= _MAX_SEQ:
            raise SealingError("sequence number out of range")
        try:
            pt = self._req.decrypt(_nonce(seq), ciphertext, self._req_aad(session, seq))
        except InvalidTag:
            raise SealingError("the session request does not open (tampered, or another "
                               "session or sequence number)") from None
        if len(pt) < 12:
            raise SealingError("the session request is too short")
        created, hl = struct.unpack_from(">QI", pt)
        return pt[12:], None if hl == _NONE else str(hl), created

    def seal_response(self, session: str, seq: int, body: bytes,
                      header_length: int | None) -> bytes:
        """Seal the inner OIP response to request ``seq``."""
        hl = _NONE if header_length is None else header_length
        return self._resp.encrypt(_nonce(seq), struct.pack(">I", hl) + body,
                                  self._resp_aad(session, seq))

    def open_response(self, session: str, seq: int, ciphertext: bytes
                      ) -> tuple[bytes, str | None]:
        """Open the response to request ``seq`` → ``(inner body, header length or None)``.

        Raises:
            SealingError: tampered, not the response to this request, or ``seq`` out of
                range.
        """
        if not 1 <= seq <= _MAX_SEQ:
            raise SealingError("sequence number out of range")
        try:
            pt = self._resp.decrypt(_nonce(seq), ciphertext, self._resp_aad(session, seq))
        except InvalidTag:
            raise SealingError("the session response does not open (tampered or swapped)"
                               ) from None
        if len(pt) < 4:
            raise SealingError("the session response is too short")
        hl = struct.unpack_from(">I", pt)[0]
        return pt[4:], None if hl == _NONE else str(hl)


@dataclass(eq=False)
class ServerSession:
    """One open session on the server: its keys, the party it acts for, when it expires
    (POSIX seconds) and the last accepted sequence number."""

    keys: SessionKeys
    party: str
    expires: float
    last_seq: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class SessionTable:
    """The server's open sessions (thread-safe; bounded per party, module docstring).

    Args:
        lifetime: seconds a session lives; per_party: sessions kept per party.
    """

    def __init__(self, *, lifetime: int = SESSION_LIFETIME,
                 per_party: int = MAX_SESSIONS_PER_PARTY) -> None:
        self.lifetime = lifetime
        self._per_party = max(1, per_party)
        self._lock = threading.Lock()
        self._sessions: dict[str, ServerSession] = {}
        self._by_party: dict[str, list[str]] = {}

    def open(self, keys: SessionKeys, party: str, *, now: float) -> tuple[str, int]:
        """A new session for ``party`` → ``(session id, expires)``; drops the party's
        expired sessions and, beyond the bound, its oldest one."""
        sid = secrets.token_urlsafe(16)
        expires = int(now) + self.lifetime
        with self._lock:
            ids = [s for s in self._by_party.get(party, [])
                   if s in self._sessions and self._sessions[s].expires > now]
            while len(ids) >= self._per_party:
                self._sessions.pop(ids.pop(0), None)
            for s in self._by_party.get(party, []):
                if s not in ids:
                    self._sessions.pop(s, None)
            ids.append(sid)
            self._by_party[party] = ids
            self._sessions[sid] = ServerSession(keys, party, float(expires))
        return sid, expires

    def accept(self, session: str, seq: int, ciphertext: bytes, *, now: float
               ) -> tuple[ServerSession, bytes, str | None]:
        """Open request ``seq`` of ``session`` and consume ``seq`` → ``(session, inner body,
        header length)``. ``seq`` is consumed only when the request opens and is fresh.

        Raises:
            SessionUnknown: no such (unexpired) session.
            SessionReplayed: ``seq`` is not above the last accepted one.
            SealingError: it does not open, or its ``created`` is stale.
        """
        with self._lock:
            entry = self._sessions.get(session)
        if entry is None or entry.expires <= now:
            raise SessionUnknown("no such session (expired or unknown): set up a new one")
        with entry.lock:
            if seq <= entry.last_seq:
                raise SessionReplayed("session request replayed or reordered (sequence "
                                      "number not above the last accepted one)")
            body, hl, created = entry.keys.open_request(session, seq, ciphertext)
            if abs(now - created) > MAX_ENVELOPE_AGE:
                raise SealingError("the session request is stale or from the future (clock?)")
            entry.last_seq = seq
        return entry, body, hl

    def __len__(self) -> int:
        return len(self._sessions)
