"""Progress output of the FL workloads (``aggregator run``, ``client run``): human or JSON.

Both workloads report progress as events ``emit(event, fields)`` (``round``, ``task-failed``,
``done``, ``error``, ...; ``docs/fl.md``). :class:`EventPrinter` writes each event as one line:

- default, for people: ``2026-12-07 12:31:02Z  round 1  clients=alice,bob train_loss=0.2345
  eval_accuracy=0.9100 seconds=3.21`` (UTC time, the event name, then its fields; floats
  with 4 decimals, lists comma-joined, digests shortened to 16 hex digits); an ``error``
  event reads ``ERROR (code) Type: message``;
- ``--json``, for machines (and :mod:`teeflow.fl.session`): ``{"event": ..., "time":
  "2026-12-07T12:31:02.123456Z", ...fields}``, one JSON object per line (RFC 8259).

:func:`format_event` gives the human line of one event without its time; the local federation
(:mod:`teeflow.fl.session`) uses it to write readable, timestamped workload logs.
No event carries data or key material: the workloads emit names, digests, counts, metrics and
error messages only.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["EventPrinter", "format_event", "format_time", "no_initial_model"]

_HEX_DIGEST = 64
_SKIP = frozenset({"event", "time", "_time"})


def format_time(when: datetime) -> str:
    """``YYYY-MM-DD HH:MM:SSZ`` of a timezone-aware ``when`` (converted to UTC)."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, str):
        if len(value) == _HEX_DIGEST and all(c in "0123456789abcdef" for c in value):
            return value[:16] + "…"
        return value if value and " " not in value else json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return ",".join(_value(v) for v in value) or "-"
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return str(value)


def format_event(event: Mapping[str, Any]) -> str:
    """The human-readable line of one event (``{"event": name, **fields}``), without time.

    ``error`` events read ``ERROR (code) Type: message``; ``round`` events put the round
    number after the name; other fields follow as ``key=value``.
    """
    name = str(event.get("event", "?"))
    if name == "error":
        return (
            f"ERROR ({event.get('code', 'error')}) {event.get('type', 'Error')}: "
            f"{event.get('message', '')}"
        )
    head = name
    fields = {k: v for k, v in event.items() if k not in _SKIP}
    if "round" in fields and name in ("round", "round-start", "committed", "task"):
        head = f"{name} {fields.pop('round')}"
    parts = [f"{k}={_value(v)}" for k, v in fields.items()]
    return "  ".join([head, " ".join(parts)]) if parts else head


class EventPrinter:
    """An ``emit(event, fields)`` callable that prints each event as one line (module
    docstring): human-readable by default, JSON with ``json_mode``.

    Args:
        json_mode: one JSON object per line instead of the human format.
        stream: where to write (default ``sys.stdout``, looked up at each call); flushed after
            every line so that a reader sees events as they happen.
        clock: the current time (timezone-aware; injected for tests).
    """

    def __init__(
        self,
        *,
        json_mode: bool = False,
        stream: TextIO | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.json_mode = json_mode
        self._stream = stream
        self._clock = clock or (lambda: datetime.now(UTC))

    def __call__(self, event: str, fields: Mapping[str, Any]) -> None:
        """Print ``event`` with ``fields`` (one line)."""
        now = self._clock().astimezone(UTC)
        if self.json_mode:
            stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            line = json.dumps({"event": event, "time": stamp, **fields}, default=str)
        else:
            line = f"{format_time(now)}  {format_event({'event': event, **fields})}"
        stream = self._stream or sys.stdout
        stream.write(line + "\n")
        stream.flush()


def no_initial_model(failures: Mapping[str, str], *, limit: int = 1500) -> str:
    """The aggregator's error when no client produced an initial model, naming each tried
    client's reported failure (``party: Type: message``, as the client sent it — type and
    message only, never data), at most ``limit`` characters.
    """
    if not failures:
        return (
            "no client produced an initial model: no client was connected to ask (check "
            "that clients run and reach this aggregator; their own output says why not)"
        )
    reasons = "; ".join(f"{party}: {why}" for party, why in sorted(failures.items()))
    text = f"no client produced an initial model (package init function) — {reasons}"
    return text if len(text) <= limit else text[: limit - 1] + "…"
