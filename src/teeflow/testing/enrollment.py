"""Enrollments for tests: add a party's signed enrollment to teeflow runtime-data claims.

A workload acts for a party only with that party's enrollment
(:mod:`teeflow.kbs.policy.enrollment`); tests that build RCAR requests by hand use
:func:`with_enrollment` to sign one with the party's real keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from teeflow.kbs.policy.enrollment import issue_enrollment
from teeflow.kbs.policy.parties import PartyKeys

__all__ = ["with_enrollment"]


def with_enrollment(
    claims: Mapping[str, Any],
    keys: PartyKeys,
    *,
    now: datetime,
    federation: str = "study",
    expires: timedelta = timedelta(days=1),
    **options: Any,
) -> dict[str, Any]:
    """``claims`` plus ``enrollment``: a token signed by ``keys`` for ``claims["role"]``
    (``options``: ``session``, ``uses``, ``workload_key``, ``role`` — see
    :func:`~teeflow.kbs.policy.enrollment.issue_enrollment`)."""
    role = options.pop("role", claims.get("role", "client"))
    token = issue_enrollment(
        keys, federation=federation, role=role, now=now, expires=expires, **options
    )
    return {**claims, "enrollment": token}
