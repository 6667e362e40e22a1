"""Prometheus metric families of teeflow's services (``docs/metrics.md``).

One class per component, each registering its families in a
:class:`prometheus_client.CollectorRegistry` of its own (one per server, so several servers
in one process, as in tests, never share counters):

* :class:`KbsMetrics` - ``teeflow_kbs_*``: attestations by TEE and result, denials by kind
  and reason class, key releases, enrollment uses, certificates, counter steps, audit head.
* :class:`AggregatorMetrics` - ``teeflow_fl_*``: rounds, round seconds, clients connected /
  dropped, update bytes, re-attestations, the last round's aggregate metrics.
* :class:`HttpMetrics` - ``teeflow_<component>_requests_total`` / ``_request_seconds``:
  requests served by route template, method and status (KBS, compute worker, serving).

Label values are bounded: every label takes its value from a fixed vocabulary through
:func:`bounded` (anything else becomes ``"other"``), so no secret, nonce, session name or
resource id can reach a label (a metrics scrape is readable by whoever reaches the port).

Spec: Prometheus data model and naming (https://prometheus.io/docs/concepts/data_model/,
https://prometheus.io/docs/practices/naming/); counters get the ``_total`` suffix from
:mod:`prometheus_client`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "AGGREGATE_METRIC_NAMES",
    "DENIAL_REASONS",
    "HTTP_METHODS",
    "OTHER",
    "AggregatorMetrics",
    "HttpMetrics",
    "KbsMetrics",
    "bounded",
    "denial_reason",
    "new_registry",
]

#: The label value of everything outside a label's vocabulary.
OTHER = "other"
#: Methods counted by name (others: ``other``).
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})
#: Aggregate metric names exported as ``teeflow_fl_round_metric{name=...}`` (others dropped).
AGGREGATE_METRIC_NAMES = frozenset(
    {
        "accuracy",
        "loss",
        "train_accuracy",
        "train_loss",
        "val_accuracy",
        "val_loss",
        "eval_accuracy",
        "eval_loss",
    }
)
#: Denial reason classes, in the order :func:`denial_reason` tries them: ``(class, pattern)``
#: matched case-insensitively against the denial's reasons (the full reasons stay in the
#: audit log, ``teeflow kbs audit show``).
DENIAL_REASONS: tuple[tuple[str, str], ...] = (
    ("nonce", r"\bnonce\b"),
    ("session", r"unknown session|malformed session|session cookie"),
    ("enrollment", r"enrollment"),
    ("emulated", r"emulat"),
    ("measurement", r"measurement|mrenclave|mrsigner|mrtd|rtmr|launch digest"),
    ("tcb", r"\btcb\b|svn|revoked|out.of.date|microcode|advisor"),
    ("freshness", r"expired|too old|max.age|fresh|stale"),
    ("evidence", r"evidence|quote|report|signature|certificate|collateral|chain"),
    ("agreement", r"no (federation )?agreement|agreement (changed|superseded)|other agreement"),
    ("scope", r"scope|namespace"),
    ("policy", r"polic|grant|not allowed|may not|denied|not a reader|role"),
    ("integrity", r"integrity|tamper|rollback|rolled back"),
)
_REASON_PATTERNS = tuple((name, re.compile(p, re.IGNORECASE)) for name, p in DENIAL_REASONS)
_DENIAL_CLASSES = frozenset(name for name, _ in DENIAL_REASONS)
_AUDIT_KINDS = frozenset(
    {"agreement", "attestation", "release", "certificate", "counter", "resource",
     "enrollment", "store", "recovery-shares"}
)
_ROLES = frozenset({"aggregator", "client", "compute", "kbs", "serve", "app"})
_DECISIONS = frozenset({"accept", "deny", "info"})
#: Cached (route, method, status) series of HttpMetrics (hostile methods are not cached).
_MAX_CHILDREN = 1024
_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ROUND_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
_BYTES_BUCKETS = tuple(float(4**k * 1024) for k in range(1, 11))  # 4 KiB .. 1 GiB


def new_registry() -> CollectorRegistry:
    """A fresh registry without the process/platform collectors of the global one."""
    return CollectorRegistry(auto_describe=True)


def bounded(value: object, allowed: Iterable[str] | frozenset[str]) -> str:
    """``value`` if it is one of ``allowed``, else :data:`OTHER` (label values stay bounded)."""
    vocabulary = allowed if isinstance(allowed, frozenset) else frozenset(allowed)
    return value if isinstance(value, str) and value in vocabulary else OTHER


def denial_reason(reasons: Iterable[str]) -> str:
    """The class of a denial (one of :data:`DENIAL_REASONS`' names, or ``other``): the first
    class whose pattern matches any of ``reasons`` (at most 16 reasons of 256 characters
    are looked at)."""
    texts = [r[:256] for r in list(reasons)[:16] if isinstance(r, str)]
    for name, pattern in _REASON_PATTERNS:
        if any(pattern.search(t) for t in texts):
            return name
    return OTHER


class HttpMetrics:
    """Requests served by an HTTP service (``teeflow_<component>_requests_total`` and
    ``teeflow_<component>_request_seconds``), by route *template* (never the concrete path,
    which can carry resource ids), method and status code.

    Args:
        registry: where the families are registered.
        component: ``kbs``, ``compute``, ``serve`` or ``aggregator`` (the session service's
            control API): the metric name prefix.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        component: Literal["kbs", "compute", "serve", "aggregator"],
    ) -> None:
        self.registry = registry
        self.requests = Counter(
            f"teeflow_{component}_requests",
            "HTTP requests served, by route template, method and status code.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.seconds = Histogram(
            f"teeflow_{component}_request_seconds",
            "Time to serve an HTTP request (seconds), by route template.",
            ["route"],
            buckets=_SECONDS_BUCKETS,
            registry=registry,
        )
        #: (route, method, status) -> the two child series (labels() once per series)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request (``route``: the matched route template, or ``unmatched``)."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:  # label values are bounded: routes, methods, codes
            code = str(status) if 100 <= status <= 599 else OTHER
            children = (
                self.requests.labels(route, bounded(method, HTTP_METHODS), code),
                self.seconds.labels(route),
            )
            if len(self._children) < _MAX_CHILDREN:
                self._children[key] = children
        children[0].inc()
        children[1].observe(max(0.0, seconds))


class KbsMetrics:
    """The KBS's decision metrics, fed by :meth:`observe_entry` with every committed audit
    entry's public fields (the audit log is the single record of KBS decisions).

    Args:
        registry: where the families are registered.
        tees: the TEE types the KBS accepts (label vocabulary of ``tee``).
    """

    def __init__(self, registry: CollectorRegistry, tees: Iterable[str]) -> None:
        self._tees = frozenset(tees)
        self._entry_series: dict[tuple[str, str], Any] = {}
        self.attestations = Counter(
            "teeflow_kbs_attestations",
            "Attestations appraised, by declared TEE type, workload role and result "
            "(accept|deny); a workload's re-attestations show as its role's rate.",
            ["tee", "role", "result"],
            registry=registry,
        )
        self.denials = Counter(
            "teeflow_kbs_denials",
            "Denied requests, by decision kind and reason class (docs/metrics.md).",
            ["kind", "reason"],
            registry=registry,
        )
        self.key_releases = Counter(
            "teeflow_kbs_key_releases",
            "Resources (keys) released to attested workloads.",
            registry=registry,
        )
        self.enrollment_uses = Counter(
            "teeflow_kbs_enrollment_uses",
            "Accepted attestations that used a party's enrollment, by workload role.",
            ["role"],
            registry=registry,
        )
        self.certificates = Counter(
            "teeflow_kbs_certificates_issued",
            "Workload certificates issued.",
            registry=registry,
        )
        self.counter_steps = Counter(
            "teeflow_kbs_counter_steps",
            "Rollback-counter increments accepted (one per committed FL round).",
            registry=registry,
        )
        self.audit_entries = Counter(
            "teeflow_kbs_audit_entries",
            "Audit entries committed, by kind and decision.",
            ["kind", "decision"],
            registry=registry,
        )
        self.audit_head = Gauge(
            "teeflow_kbs_audit_head_seq",
            "Sequence number of the newest audit entry this process committed.",
            registry=registry,
        )

    def observe_entry(
        self, *, seq: int, kind: str, decision: str, reasons: Iterable[str], data: object
    ) -> None:
        """Count one committed audit entry (see the class docstring)."""
        facts = data if isinstance(data, dict) else {}
        kind_label = bounded(kind, _AUDIT_KINDS)
        key = (kind_label, bounded(decision, _DECISIONS))
        entries = self._entry_series.get(key)
        if entries is None:  # both labels bounded vocabularies
            entries = self._entry_series[key] = self.audit_entries.labels(*key)
        entries.inc()
        self.audit_head.set(max(seq, 0))
        if decision == "deny":
            self.denials.labels(kind_label, denial_reason(reasons)).inc()
        if kind == "attestation" and decision in ("accept", "deny"):
            tee, role = bounded(facts.get("tee"), self._tees), bounded(facts.get("role"), _ROLES)
            self.attestations.labels(tee, role, decision).inc()
            if decision == "accept" and facts.get("enrollment_id"):
                self.enrollment_uses.labels(role).inc()
        elif decision == "accept" and kind == "release":
            self.key_releases.inc()
        elif decision == "accept" and kind == "certificate":
            self.certificates.inc()
        elif decision == "accept" and kind == "counter":
            self.counter_steps.inc()


class AggregatorMetrics:
    """The FL aggregator's metrics, fed by :meth:`observe` with its progress events
    (``round``, ``round-retry``, ``client-connected``, ``client-disconnected``,
    ``client-dropped``, ``update-received``, ``reattested``; others are ignored).

    Args:
        registry: where the families are registered.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rounds = Counter(
            "teeflow_fl_rounds",
            "FL rounds by outcome (committed|retried).",
            ["outcome"],
            registry=registry,
        )
        self.round_seconds = Histogram(
            "teeflow_fl_round_seconds",
            "Duration of a committed round, training and evaluation included (seconds).",
            buckets=_ROUND_BUCKETS,
            registry=registry,
        )
        self.current_round = Gauge(
            "teeflow_fl_round", "The last committed round.", registry=registry
        )
        self.round_clients = Gauge(
            "teeflow_fl_round_clients",
            "Clients whose update the last committed round aggregated.",
            registry=registry,
        )
        self.round_metric = Gauge(
            "teeflow_fl_round_metric",
            "Aggregate metrics of the last committed round (docs/metrics.md lists the names).",
            ["name"],
            registry=registry,
        )
        self.clients_connected = Gauge(
            "teeflow_fl_clients_connected", "Clients connected now.", registry=registry
        )
        self.connections = Counter(
            "teeflow_fl_client_connections",
            "Attested client connections accepted.",
            registry=registry,
        )
        self.dropped = Counter(
            "teeflow_fl_clients_dropped",
            "Clients dropped from a round (failure, deadline or disconnect).",
            registry=registry,
        )
        self.update_bytes = Counter(
            "teeflow_fl_update_bytes",
            "Bytes of results received from clients, by task kind (init|train|evaluate).",
            ["kind"],
            registry=registry,
        )
        self.update_size = Histogram(
            "teeflow_fl_update_size_bytes",
            "Size of one training update (bytes).",
            buckets=_BYTES_BUCKETS,
            registry=registry,
        )
        self.reattestations = Counter(
            "teeflow_fl_reattestations",
            "Re-attestations to the KBS after the attestation token expired.",
            registry=registry,
        )

    def observe(self, event: str, fields: dict[str, object]) -> None:
        """Update the metrics for one progress event (never raises on odd field values)."""
        if event == "round":
            self.rounds.labels("committed").inc()
            seconds, r, clients = fields.get("seconds"), fields.get("round"), fields.get("clients")
            if isinstance(seconds, int | float):
                self.round_seconds.observe(max(0.0, float(seconds)))
            if isinstance(r, int):
                self.current_round.set(r)
            if isinstance(clients, list):
                self.round_clients.set(len(clients))
            for name in AGGREGATE_METRIC_NAMES:
                value = fields.get(name)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self.round_metric.labels(name).set(float(value))
        elif event == "round-retry":
            self.rounds.labels("retried").inc()
        elif event == "client-connected":
            self.connections.inc()
            self.clients_connected.inc()
        elif event == "client-disconnected":
            self.clients_connected.dec()
        elif event == "client-dropped":
            self.dropped.inc()
        elif event == "update-received":
            size, kind = fields.get("bytes"), bounded(fields.get("kind"), _TASK_KINDS)
            if isinstance(size, int) and size >= 0:
                self.update_bytes.labels(kind).inc(size)
                if kind == "train":
                    self.update_size.observe(size)
        elif event == "reattested":
            self.reattestations.inc()


_TASK_KINDS = frozenset({"init", "train", "evaluate"})
