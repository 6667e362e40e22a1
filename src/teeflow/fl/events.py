"""Typed progress events of an FL session (the aggregator's ``emit(event, fields)`` stream).

The aggregator reports progress as ``emit(name, fields)`` (the CLI prints each as one JSON line
``{"event": name, ...fields}``; :mod:`teeflow.fl.session` reads them back). :class:`Event` is the
typed form: ``name`` is one of :data:`EVENT_NAMES` and ``round`` is lifted out of the fields
when present. :class:`EventLog` is a sink that records typed events (tests and embedders use it
instead of parsing JSON lines); :func:`event_from` converts one ``(name, fields)`` pair.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

from teeflow.errors import FLError

__all__ = ["EVENT_NAMES", "Event", "EventLog", "EventName", "event_from"]

#: Every event the aggregator and its hub emit.
EventName = Literal[
    "platform",
    "attested",
    "listening",
    "training",
    "client-connected",
    "client-disconnected",
    "client-dropped",
    "handover",
    "resumed",
    "init-failed",
    "initial-model",
    "round-start",
    "round-retry",
    "weight-clipped",
    "evaluate-skipped",
    "outlier-scores",
    "client-flagged",
    "client-excluded",
    "client-removed",
    "dp-round",
    "dp-budget-exhausted",
    "round",
    "committed",
    "done",
]
EVENT_NAMES: frozenset[str] = frozenset(get_args(EventName))


@dataclass(frozen=True)
class Event:
    """One progress event.

    Attributes:
        name: the event (one of :data:`EventName`; other names only from non-strict
            :func:`event_from`, e.g. events a newer component added).
        round: the round it belongs to (None: session-level).
        fields: the other fields, read-only (JSON values).
    """

    name: str
    round: int | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)


def event_from(name: str, fields: Mapping[str, Any], *, strict: bool = False) -> Event:
    """The typed form of ``emit(name, fields)``.

    Raises:
        FLError: ``round`` is not an integer, or (``strict``) ``name`` is not in
            :data:`EVENT_NAMES`.
    """
    if strict and name not in EVENT_NAMES:
        raise FLError(f"unknown progress event {name[:64]!r}")
    rest = {k: v for k, v in fields.items() if k != "round"}
    r = fields.get("round")
    if r is not None and (isinstance(r, bool) or not isinstance(r, int)):
        raise FLError(f"event {name}: round must be an integer")
    return Event(name, r, MappingProxyType(rest))


class EventLog:
    """A thread-safe sink for ``emit`` that keeps the typed events (bounded: ``limit``, the
    oldest are dropped first). Use as ``Aggregator(options, emit=log)``."""

    def __init__(self, limit: int = 100_000) -> None:
        self._events: list[Event] = []
        self._limit = limit
        self._lock = threading.Lock()

    def __call__(self, name: str, fields: dict[str, Any]) -> None:
        """Record one event (non-strict :func:`event_from`).

        Raises:
            FLError: a ``round`` field that is not an integer.
        """
        event = event_from(name, fields)
        with self._lock:
            self._events.append(event)
            del self._events[: max(0, len(self._events) - self._limit)]

    def __iter__(self) -> Iterator[Event]:
        with self._lock:
            return iter(list(self._events))

    def named(self, name: EventName) -> list[Event]:
        """The events called ``name``, oldest first."""
        return [e for e in self if e.name == name]
