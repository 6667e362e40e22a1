"""The agreement's ``serving`` section: how the attested model server serves (issue 12:
``require_e2e``, callers, quotas)."""

from __future__ import annotations

from teeflow.kbs.policy.canonical import DocumentModel

__all__ = ["ServingTerms"]


class ServingTerms(DocumentModel):
    """The ``serving`` section."""
