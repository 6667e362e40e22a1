"""Who may call the served model, how often, and the usage count (the agreement's
``serving`` section, :mod:`teeflow.kbs.policy.serving`); RFC 7807 problems of the server.

**Callers.** A request acts for a party when it is RFC 9421 party-signed with the party's
agreement key (:mod:`teeflow.kbs.policy.request_signing`; the signature covers the outer
body, so a signed end-to-end request is bound to its ciphertext) and the party's
``signed: true``; or when it presents an API key whose SHA-256 the agreement lists for the
party (inside the envelope, or ``Authorization: Bearer``). A party that ``serving.callers``
does not name, an unknown key or a missing credential is refused (401/403). An agreement
without a ``serving`` section lets every party call with a signature and nobody with a key.

**Quotas.** Per party and server instance: ``max_requests`` (lifetime count) and a token
bucket of ``rate`` requests/second and ``burst`` tokens; an exhausted quota is refused with
429 (:class:`QuotaExceeded`). Refused and answered requests are counted per party
(:meth:`AccessControl.take_batch`) for the signed usage batches in the KBS audit log.

**Problems**: ``application/problem+json`` bodies ``{type, title, status, detail}`` with
``type = https://teeflow.dev/problems/serve/<Class>``.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from teeflow.errors import Error
from teeflow.kbs.policy.serving import CallerTerms, ServingTerms, api_key_digest

__all__ = [
    "SERVE_PREFIX",
    "AccessControl",
    "BadRequest",
    "Forbidden",
    "InferenceFailed",
    "ModelNotFound",
    "NotReady",
    "PlaintextRefused",
    "QuotaExceeded",
    "ServeError",
    "Unauthorized",
    "UnknownSession",
]

#: ``type`` prefix of the server's problem documents.
SERVE_PREFIX = "https://teeflow.dev/problems/serve"


class ServeError(Error):
    """Root of the serving workload's HTTP errors; ``status`` is the HTTP status."""

    status: ClassVar[int] = 500

    def to_problem(self) -> dict[str, Any]:
        """RFC 7807 body: ``type``, ``title``, ``status``, ``detail`` (public text only)."""
        return {
            "type": f"{SERVE_PREFIX}/{type(self).__name__}",
            "title": (type(self).__doc__ or "").split("\n")[0],
            "status": self.status,
            "detail": str(self)[:1024],
        }


class BadRequest(ServeError):
    """The request is not a well-formed inference request."""

    status = 400


class UnknownSession(BadRequest):
    """The end-to-end session is unknown or expired (set up a new one)."""


class Unauthorized(ServeError):
    """The request carries no valid party signature or API key."""

    status = 401


class Forbidden(ServeError):
    """The caller is not allowed to use this model."""

    status = 403


class PlaintextRefused(Forbidden):
    """The agreement requires end-to-end encrypted requests (serving.require_e2e)."""


class ModelNotFound(ServeError):
    """No such model on this server."""

    status = 404


class QuotaExceeded(ServeError):
    """The caller's request quota or rate is exhausted."""

    status = 429


class InferenceFailed(ServeError):
    """The model failed on this input."""

    status = 500


class NotReady(ServeError):
    """The server is not ready (model not loaded)."""

    status = 503


class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens, self.at = tokens, at


class AccessControl:
    """Caller identification, quotas and usage counts (module docstring). Thread-safe.

    Args:
        terms: the agreement's ``serving`` section, or None.
        parties: names of the agreement's parties.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, terms: ServingTerms | None, parties: list[str], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.terms = terms
        self._callers: dict[str, CallerTerms] = (
            dict(terms.callers) if terms is not None else {p: CallerTerms() for p in parties})
        self._keys = {d: p for p, c in self._callers.items() for d in c.api_keys}
        self._clock = clock
        self._lock = threading.Lock()
        self._used: dict[str, int] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._answered: dict[str, int] = {}
        self._refused: dict[str, int] = {}
        self._pending = 0

    @property
    def require_e2e(self) -> bool:
        """Whether plaintext requests are refused."""
        return self.terms is not None and self.terms.require_e2e

    @property
    def batch_size(self) -> int:
        """Requests per usage batch."""
        return self.terms.usage_batch if self.terms is not None else 100

    def identify(self, *, signed_party: str | None, api_key: str | None) -> str:
        """The party a request acts for.

        Raises:
            Unauthorized: no credential, or an API key the agreement does not list.
            Forbidden: a signing party that may not call (not in ``serving.callers`` or
                ``signed: false``).
        """
        if signed_party is not None:
            terms = self._callers.get(signed_party)
            if terms is None or not terms.signed:
                self.refused(signed_party)
                raise Forbidden(f"party {signed_party} may not call this model")
            return signed_party
        if api_key is not None:
            want = api_key_digest(api_key)
            for digest, party in self._keys.items():
                if hmac.compare_digest(digest, want):
                    return party
            raise Unauthorized("unknown API key")
        raise Unauthorized("sign the request as a party (RFC 9421) or present an API key")

    def admit(self, party: str) -> None:
        """Charge one request to ``party``'s quotas.

        Raises:
            QuotaExceeded: ``max_requests`` reached or the rate bucket is empty.
        """
        terms = self._callers[party]
        with self._lock:
            used = self._used.get(party, 0)
            if terms.max_requests is not None and used >= terms.max_requests:
                self._refused_locked(party)
                raise QuotaExceeded(f"{party} has used its {terms.max_requests} requests")
            if terms.rate is not None:
                cap = float(terms.burst or max(1, math.ceil(terms.rate)))
                now = self._clock()
                b = self._buckets.setdefault(party, _Bucket(cap, now))
                b.tokens = min(cap, b.tokens + (now - b.at) * terms.rate)
                b.at = now
                if b.tokens < 1.0:
                    self._refused_locked(party)
                    raise QuotaExceeded(f"{party} exceeds {terms.rate:g} requests/s")
                b.tokens -= 1.0
            self._used[party] = used + 1

    def answered(self, party: str) -> bool:
        """Count an answered request; True when a usage batch is due."""
        with self._lock:
            self._answered[party] = self._answered.get(party, 0) + 1
            self._pending += 1
            return self._pending >= self.batch_size

    def refused(self, party: str) -> None:
        """Count a refused request of a known party."""
        with self._lock:
            self._refused_locked(party)

    def _refused_locked(self, party: str) -> None:
        self._refused[party] = self._refused.get(party, 0) + 1
        self._pending += 1

    def take_batch(self) -> tuple[dict[str, int], dict[str, int]] | None:
        """``(answered, refused)`` counts since the last batch (reset), or None if empty."""
        with self._lock:
            if not self._pending:
                return None
            out = (dict(self._answered), dict(self._refused))
            self._answered.clear()
            self._refused.clear()
            self._pending = 0
            return out

    def restore(self, answered: dict[str, int], refused: dict[str, int]) -> None:
        """Put back counts of a batch that could not be written (retried with the next)."""
        with self._lock:
            for p, n in answered.items():
                self._answered[p] = self._answered.get(p, 0) + n
            for p, n in refused.items():
                self._refused[p] = self._refused.get(p, 0) + n
            self._pending += sum(answered.values()) + sum(refused.values())
