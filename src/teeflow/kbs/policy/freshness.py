"""The agreement's ``attestation`` section: how fresh a workload's evidence must be (issue 11).

::

    attestation:
      max_age: 10m        # a duration (1..86400 s: "90s", "10m", "2h") or "per_round"

``max_age`` bounds the age of the evidence behind every certificate a running workload uses:

* every workload re-attests to the KBS (fresh RCAR nonce) at least that often, and the KBS
  issues workload certificates that expire with it (``lifetime = max_age``, never more than
  the CA's 24 h cap) — :meth:`AttestationTerms.certificate_lifetime`;
* ``per_round``: in each round's admission, before the round's global model is sent, the
  aggregator has every connected client (answering a nonce issued for that round) and itself
  re-attest unless their certificate was issued after the previous round's admission ended
  (a client that just joined); certificates keep the CA's default lifetime and the aggregator
  refuses an update under one issued before that bound (precise definition: ``docs/fl.md``
  "Live trust").

The aggregator refuses an update whose client certificate is older than ``max_age`` or was
issued under an older agreement version (:mod:`teeflow.fl.trust`). Without the section the
agreement sets no bound beyond the CA's certificate lifetime (24 h) and nothing changes in the
agreement digest (:data:`~teeflow.kbs.policy.agreement.OPTIONAL_SECTIONS`).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import StringConstraints, field_validator

from teeflow.errors import ParseError
from teeflow.kbs.policy.canonical import DocumentModel

__all__ = ["MAX_AGE_LIMIT", "PER_ROUND", "AttestationTerms", "parse_max_age"]

#: The literal ``max_age`` value that asks for re-attestation before every round.
PER_ROUND = "per_round"
#: The longest ``max_age`` (the federation CA's longest workload certificate lifetime).
MAX_AGE_LIMIT = timedelta(hours=24)

_DURATION = re.compile(r"([1-9][0-9]{0,5})(s|m|h)")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


def parse_max_age(text: str) -> timedelta | None:
    """Parse a ``max_age`` value: ``per_round`` → None; ``<n>s|m|h`` → the duration.

    Bounded and total: at most 8 characters, 1 s ≤ duration ≤ 24 h.

    Raises:
        ParseError: anything else (message says what is accepted).
    """
    if text == PER_ROUND:
        return None
    m = _DURATION.fullmatch(text) if isinstance(text, str) and len(text) <= 8 else None
    if m is None:
        raise ParseError(
            f"attestation.max_age must be a duration like 90s, 10m or 2h, or {PER_ROUND!r}"
        )
    value = timedelta(seconds=int(m.group(1)) * _UNIT_SECONDS[m.group(2)])
    if value > MAX_AGE_LIMIT:
        raise ParseError("attestation.max_age must be at most 24h (the certificate lifetime cap)")
    return value


class AttestationTerms(DocumentModel):
    """The ``attestation`` section (module docstring).

    Attributes:
        max_age: ``per_round`` or a duration ``<n>s``/``<n>m``/``<n>h`` in 1 s..24 h; stored
            as written (the digest covers the text).
    """

    max_age: Annotated[str, StringConstraints(max_length=16)] = PER_ROUND

    @field_validator("max_age")
    @classmethod
    def _bounded(cls, value: str) -> str:
        try:
            parse_max_age(value)
        except ParseError as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def per_round(self) -> bool:
        """True when workloads must re-attest before every round."""
        return self.max_age == PER_ROUND

    @property
    def max_age_delta(self) -> timedelta | None:
        """The duration, or None for ``per_round``."""
        return parse_max_age(self.max_age)

    def certificate_lifetime(self, default: timedelta) -> timedelta:
        """Lifetime of a workload certificate issued under these terms: ``max_age`` (capped at
        ``default``), or ``default`` for ``per_round`` (the aggregator enforces that one)."""
        age = self.max_age_delta
        return default if age is None else min(age, default)
