"""Issue 14, item 5 (and 4): the FL workloads' output — timestamped human lines by default,
JSON lines with --json; the client's final ``ok``; the aggregator's error names the clients'
failures; help text on every option of ``aggregator run`` / ``client run``."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import typer

from teeflow.cli.main import app
from teeflow.fl.client import Client, ClientOptions
from teeflow.fl.console import EventPrinter, format_event, no_initial_model
from teeflow.fl.entry import aggregator_parser, client_parser

NOW = datetime(2026, 12, 7, 12, 31, 2, 123456, tzinfo=UTC)


def test_human_lines_are_timestamped_and_json_lines_carry_the_time() -> None:
    out = io.StringIO()
    EventPrinter(stream=out, clock=lambda: NOW)(
        "round", {"round": 1, "clients": ["alice", "bob"], "eval_accuracy": 0.91234}
    )
    assert out.getvalue() == (
        "2026-12-07 12:31:02Z  round 1  clients=alice,bob eval_accuracy=0.9123\n"
    )
    out = io.StringIO()
    EventPrinter(json_mode=True, stream=out, clock=lambda: NOW)("done", {"ok": True})
    assert json.loads(out.getvalue()) == {
        "event": "done",
        "time": "2026-12-07T12:31:02.123456Z",
        "ok": True,
    }
    line = format_event(
        {"event": "error", "code": "fl", "type": "FLError", "message": "no client"}
    )
    assert line == "ERROR (fl) FLError: no client"
    assert format_event({"event": "committed", "round": 2, "digest": "ab" * 32}) == (
        "committed 2  digest=abababababababab…"
    )


def test_the_aggregator_error_names_each_clients_failure() -> None:
    text = no_initial_model(
        {"bob": "init task of bob failed: FLError: unknown model 'x'", "alice": "disconnected"}
    )
    assert text.startswith("no client produced an initial model")
    assert "alice: disconnected; bob: init task of bob failed: FLError: unknown model" in text
    assert "no client was connected" in no_initial_model({})
    assert len(no_initial_model({"a": "x" * 5000})) == 1500


@dataclass
class _Task:
    kind: str
    round: int
    task_id: int
    config: dict[str, Any] = field(default_factory=dict)
    arrays: bytes | None = b"not arrays"


@dataclass
class _Bye:
    ok: bool
    reason: str


class _Stream:
    """A stand-in of AggregatorStream: two tasks, then a Goodbye(ok=True)."""

    def __init__(self) -> None:
        self.failures: list[tuple[int, str]] = []
        self.goodbye = _Bye(True, "session complete")

    def tasks(self) -> Iterator[_Task]:
        yield _Task("train", 1, 1)
        yield _Task("evaluate", 1, 2)

    def send_failure(self, task_id: int, reason: str) -> None:
        self.failures.append((task_id, reason))


def test_a_client_with_failed_tasks_does_not_report_ok(tmp_path: Path) -> None:
    """Attack on the report (item 5): a client whose tasks all failed used to end with
    ``"ok": true`` when the session itself completed."""
    events: list[tuple[str, dict[str, Any]]] = []
    client = Client(
        ClientOptions(party="bob", pin=tmp_path / "pin", aggregator="h:1", data="digits"),
        lambda e, f: events.append((e, dict(f))),
    )
    stream = _Stream()
    result = client._serve(stream, tmp_path, "s1")  # type: ignore[arg-type]
    assert [r.split(":")[0] for _, r in stream.failures] == ["ParseError", "ParseError"]
    assert result.failed == 2 and result.ok is False
    done = events[-1]
    assert done[0] == "done" and done[1]["ok"] is False and done[1]["session_ok"] is True


def _params(path: list[str]) -> list[click.Parameter]:
    group = typer.main.get_command(app)
    ctx = click.Context(group)
    cmd: Any = group
    for name in path:
        cmd = cmd.get_command(ctx, name)
    return list(cmd.params)


def test_every_workload_option_has_help_and_json() -> None:
    for path in (["aggregator", "run"], ["client", "run"]):
        params = _params(path)
        assert "--json" in [o for p in params for o in getattr(p, "opts", [])]
        for p in params:
            if isinstance(p, click.Option):
                assert p.help, f"{' '.join(path)} {p.opts[0]} has no help text"
    for parser in (aggregator_parser(), client_parser()):
        assert "--json" in parser._option_string_actions
        for action in parser._actions:
            if action.option_strings and action.dest not in ("help", "command"):
                assert action.help, f"{parser.prog} {action.option_strings[0]}: no help"
