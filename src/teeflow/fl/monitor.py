"""The aggregator's metrics and progress endpoint (``--metrics-listen HOST:PORT``).

:func:`monitor_aggregator` wraps the aggregator's progress sink: every event still goes to the
original sink, and also updates :class:`teeflow.observability.metrics.AggregatorMetrics` and a
:class:`Progress` record. With an address, a :class:`teeflow.observability.http.MetricsServer`
serves them while the session runs::

    GET /metrics       Prometheus text format (teeflow_fl_*; docs/metrics.md)
    GET /v1/progress   {"format": "teeflow-progress/1", "session", "state", "round",
                        "rounds": [{"round", "clients": [party, ...], "seconds", "digest",
                                    "metrics": {name: number}}, ...],
                        "clients": [party, ...], "dropped": [{"round", "party"}, ...],
                        "measurement", "emulated", "agreement_digest", "package_digest"}

The progress document holds what the signed provenance log of the session records anyway
(party names, aggregate metrics, model digests) and no model, update or client data; the
dashboard (``teeflow dashboard --aggregator URL``, ``docs/dashboard.md``) reads it for the live
charts and checks the digests against the KBS's rollback counter. Bind it to loopback or a
network only the parties reach: it is not authenticated, like any Prometheus target.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from teeflow.errors import FLError

__all__ = ["MAX_ROUNDS", "PROGRESS_FORMAT", "PROGRESS_PATH", "Progress", "monitor_aggregator"]

#: Format label of the progress document.
PROGRESS_FORMAT = "teeflow-progress/1"
#: Path of the progress document.
PROGRESS_PATH = "/v1/progress"
#: Most rounds kept in the progress document (the newest).
MAX_ROUNDS = 10_000
_ROUND_KEYS = frozenset({"round", "clients", "seconds", "digest"})
_ATTESTED_KEYS = ("measurement", "emulated", "agreement_digest", "package_digest")

Emit = Callable[[str, dict[str, Any]], None]


class Progress:
    """The session's progress as the aggregator reports it (thread-safe)."""

    def __init__(self, session: str) -> None:
        self._lock = threading.Lock()
        self._doc: dict[str, Any] = {
            "format": PROGRESS_FORMAT,
            "session": session,
            "state": "starting",
            "round": 0,
            "rounds": [],
            "clients": [],
            "dropped": [],
        }

    def observe(self, event: str, fields: dict[str, Any]) -> None:
        """Update the record for one progress event."""
        with self._lock:
            doc = self._doc
            if event == "attested":
                for key in _ATTESTED_KEYS:
                    doc[key] = fields.get(key)
            elif event == "listening":
                doc["state"] = "running"
            elif event == "round":
                metrics = {
                    k: float(v)
                    for k, v in fields.items()
                    if k not in _ROUND_KEYS and isinstance(v, int | float)
                    and not isinstance(v, bool)
                }
                clients = fields.get("clients")
                doc["rounds"].append(
                    {
                        "round": fields.get("round"),
                        "clients": list(clients) if isinstance(clients, list) else [],
                        "seconds": fields.get("seconds"),
                        "digest": fields.get("digest"),
                        "metrics": metrics,
                    }
                )
                del doc["rounds"][:-MAX_ROUNDS]
                if isinstance(fields.get("round"), int):
                    doc["round"] = fields["round"]
            elif event == "client-connected":
                party = fields.get("party")
                if isinstance(party, str) and party not in doc["clients"]:
                    doc["clients"].append(party)
            elif event == "client-disconnected":
                party = fields.get("party")
                if party in doc["clients"]:
                    doc["clients"].remove(party)
            elif event == "client-dropped":
                doc["dropped"].append({"round": fields.get("round"), "party": fields.get("party")})
                del doc["dropped"][:-MAX_ROUNDS]

    def finish(self, ok: bool) -> None:
        """Mark the session finished (``ok``) or failed."""
        with self._lock:
            self._doc["state"] = "finished" if ok else "failed"

    def snapshot(self) -> dict[str, Any]:
        """A copy of the progress document (module docstring)."""
        with self._lock:
            doc = dict(self._doc)
            doc["rounds"] = [dict(r) for r in doc["rounds"]]
            doc["clients"] = list(doc["clients"])
            doc["dropped"] = list(doc["dropped"])
            return doc


@contextmanager
def monitor_aggregator(listen: str | None, session: str, emit: Emit) -> Iterator[Emit]:
    """Yield the progress sink to use instead of ``emit`` while the session runs: it forwards
    to ``emit`` and updates the metrics and the :class:`Progress`, served on ``listen``
    (``HOST:PORT``; port 0 picks one, reported as a ``metrics-listening {host, port}`` event)
    until the block ends. ``listen`` None yields ``emit`` itself.

    Raises:
        FLError: ``listen`` is malformed or cannot be bound.
    """
    if listen is None:
        yield emit
        return
    from teeflow.fl.workload import parse_listen  # imported only when serving: lean aggregator
    from teeflow.observability.http import MetricsServer
    from teeflow.observability.metrics import AggregatorMetrics, new_registry

    host, port = parse_listen(listen)
    registry = new_registry()
    metrics = AggregatorMetrics(registry)
    progress = Progress(session)
    try:
        server = MetricsServer(registry, host, port, documents={PROGRESS_PATH: progress.snapshot})
    except OSError as exc:
        raise FLError(f"--metrics-listen {listen}: {exc.strerror or exc}") from None

    def observed(event: str, fields: dict[str, Any]) -> None:
        emit(event, fields)
        metrics.observe(event, fields)
        progress.observe(event, fields)

    ok = False
    try:
        emit("metrics-listening", {"host": host, "port": server.port})
        yield observed
        ok = True
    finally:
        progress.finish(ok)
        server.close()
