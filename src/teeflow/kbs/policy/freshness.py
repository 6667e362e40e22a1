"""The agreement's ``attestation`` section: how fresh a workload's evidence must be (issue 11:
``max_age``)."""

from __future__ import annotations

from teeflow.kbs.policy.canonical import DocumentModel

__all__ = ["AttestationTerms"]


class AttestationTerms(DocumentModel):
    """The ``attestation`` section."""
