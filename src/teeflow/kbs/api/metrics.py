"""``GET /metrics`` of the KBS (Prometheus text format; ``docs/metrics.md``).

The decision metrics (:class:`teeflow.observability.metrics.KbsMetrics`) are fed from the
audit log: every committed entry reaches :meth:`KbsMetrics.observe_entry` through
:meth:`teeflow.kbs.service.heads.HeadRecorder.add_listener`, so a metric counts exactly what
the signed audit log records (a request refused before any decision - a malformed body, an
unsigned read - is counted only in ``teeflow_kbs_requests_total``). Labels come from bounded
vocabularies: the TEE types of :data:`teeflow.kbs.protocol.SUPPORTED_TEES`, audit kinds,
decision classes; session digests, resource paths, parties and measurements never become
labels.
"""

from __future__ import annotations

from typing import Any

from teeflow.kbs.protocol import SUPPORTED_TEES
from teeflow.kbs.service.core import KbsService
from teeflow.kbs.store.interface import AuditEntry
from teeflow.observability.http import instrument
from teeflow.observability.metrics import HttpMetrics, KbsMetrics, new_registry

__all__ = ["install_metrics"]


def install_metrics(app: Any, service: KbsService) -> KbsMetrics:
    """Add ``GET /metrics`` and request counting to the KBS ``app`` and feed the decision
    metrics from ``service``'s committed audit entries; returns the decision metrics."""
    registry = new_registry()
    decisions = KbsMetrics(registry, SUPPORTED_TEES)

    def observe(entry: AuditEntry) -> None:
        decisions.observe_entry(
            seq=entry.seq,
            kind=entry.kind,
            decision=entry.decision,
            reasons=entry.reasons,
            data=entry.data,
        )

    service.heads.add_listener(observe)
    instrument(app, HttpMetrics(registry, "kbs"))
    return decisions
