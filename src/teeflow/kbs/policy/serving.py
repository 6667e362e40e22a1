"""The agreement's ``serving`` section: how the attested model server serves (issue 12).

::

    serving:
      require_e2e: true          # refuse plaintext OIP requests (HPKE envelopes only)
      usage_batch: 100           # requests per signed usage batch written to the KBS audit log
      callers:                   # who may call the served model; absent party = refused
        hospital-b:
          signed: true           # RFC 9421 party-signed requests (the party's agreement key)
          api_keys: [<64 hex>]   # SHA-256 of API keys the party may present (never the keys)
          max_requests: 10000    # lifetime quota per server instance (null = unbounded)
          rate: 50.0             # sustained requests/second (token bucket; null = unbounded)
          burst: 100             # bucket size (default: max(1, ceil(rate)))

API keys are stored hashed (:func:`api_key_digest`: SHA-256 of the UTF-8 key, lower-case hex),
so the signed agreement, which every party reads, never holds a usable key. A key is
presented as ``Authorization: Bearer <key>`` (RFC 6750) and compared by digest.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Self

from pydantic import Field, field_validator, model_validator

from teeflow.attestation.policy import Hex32
from teeflow.kbs.policy.canonical import DocumentModel, sorted_unique
from teeflow.kbs.policy.parties import Name

__all__ = ["API_KEY_PREFIX", "CallerTerms", "ServingTerms", "api_key_digest", "new_api_key"]

#: Prefix of keys :func:`new_api_key` makes (recognisable in secret scanners).
API_KEY_PREFIX = "tfk_"
_MAX_CALLERS = 1000


def api_key_digest(key: str) -> str:
    """SHA-256 (lower-case hex, 64 digits) of an API key's UTF-8 bytes: what the agreement
    stores (``serving.callers.<party>.api_keys``)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_api_key() -> str:
    """A fresh API key: :data:`API_KEY_PREFIX` + 32 random bytes, base64url (``secrets``)."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


class CallerTerms(DocumentModel):
    """One party's right to call the served model (module docstring).

    Attributes:
        signed: accept RFC 9421 requests signed with the party's agreement ``sign_key``.
        api_keys: SHA-256 digests (hex) of API keys that act for this party (≤ 64).
        max_requests: the most inference requests this party may make of one server
            instance (1..2**53-1) or None (unbounded).
        rate: sustained requests per second (0 < rate ≤ 100000) or None (unbounded).
        burst: token-bucket size (1..100000); default ``max(1, ceil(rate))``.
    """

    signed: bool = True
    api_keys: tuple[Hex32, ...] = Field(default=(), max_length=64)
    max_requests: int | None = Field(default=None, ge=1, le=2**53 - 1)
    rate: float | None = Field(default=None, gt=0.0, le=100_000.0)
    burst: int | None = Field(default=None, ge=1, le=100_000)

    @field_validator("api_keys", mode="after")
    @classmethod
    def _norm(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return sorted_unique(value)

    @model_validator(mode="after")
    def _some_way_in(self) -> Self:
        if not self.signed and not self.api_keys:
            raise ValueError("a caller needs signed: true or at least one api key digest")
        if self.burst is not None and self.rate is None:
            raise ValueError("burst needs a rate")
        return self


class ServingTerms(DocumentModel):
    """The ``serving`` section (module docstring).

    Attributes:
        require_e2e: refuse requests that are not HPKE envelopes (``docs/serve.md``).
        callers: party → :class:`CallerTerms`; a party not listed may not call.
        usage_batch: requests counted before the server writes a signed usage batch to the
            KBS audit log (1..100000; the rest is written at shutdown).
    """

    require_e2e: bool = False
    callers: dict[Name, CallerTerms] = Field(default_factory=dict, max_length=_MAX_CALLERS)
    usage_batch: int = Field(default=100, ge=1, le=100_000)
