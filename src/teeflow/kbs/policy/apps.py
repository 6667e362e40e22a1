"""The agreement's ``apps`` section: partitioned enclave applications (issue 15: replicas,
fault threshold, ordering stream)."""

from __future__ import annotations

from teeflow.kbs.policy.canonical import DocumentModel

__all__ = ["AppTerms"]


class AppTerms(DocumentModel):
    """One application of the ``apps`` section."""
