"""``teeflow kbs audit show [--follow] [--json]``: read the KBS audit log.

Every read is signed by a party of the agreement in force (RFC 9421; only parties may read the
audit log) and every page is verified against the pinned audit key
(:func:`teeflow.kbs.service.audit.verify_audit_chain`: hashes, links, signatures) and against
the KBS state head this home saw before (:class:`teeflow.kbs.client.heads.HeadTracker`: a
rolled-back or forked log is refused). With ``--follow`` new entries are read every
``--interval`` seconds, each page linked to the last entry shown.

Output: one line per entry, ``SEQ TIME KIND DECISION SUBJECT  REASONS`` (denials show every
reason: this is where "Access denied by policy" is explained), or with ``--json`` one JSON
object per line (the ``GET /v1/audit`` entry form, see ``docs/kbs.md``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from teeflow.errors import KbsError
from teeflow.kbs.store.interface import AuditEntry

__all__ = ["register_audit_show"]

_MAX_SUBJECT = 48


def _line(entry: AuditEntry) -> str:
    time_text = entry.time.strftime("%Y-%m-%d %H:%M:%SZ")
    subject = entry.subject if len(entry.subject) <= _MAX_SUBJECT else (
        entry.subject[: _MAX_SUBJECT - 1] + "…")
    line = f"{entry.seq:>6} {time_text} {entry.kind:<12} {entry.decision:<6} {subject}"
    if entry.reasons:
        line += "  " + "; ".join(entry.reasons)
    return line


def register_audit_show(audit: typer.Typer, pin_path: Callable[[Path | None], Path]) -> None:
    """Add ``show`` to the ``teeflow kbs audit`` group (``pin_path``: the group's resolver of
    ``--pin``, ``Path | None -> Path``)."""

    @audit.command("show")
    def audit_show(
        party: Annotated[str, typer.Option(
            "--party", help="Party whose key signs the reads (only parties may read the "
            "audit log; keys in $TEEFLOW_HOME/parties/NAME).")],
        pin: Annotated[Path | None, typer.Option(
            "--pin", help="Pin file from 'teeflow kbs verify' (default: $TEEFLOW_HOME).")] = None,
        follow: Annotated[bool, typer.Option(
            "--follow", "-f", help="Keep reading new entries (Ctrl-C stops).")] = False,
        as_json: Annotated[bool, typer.Option(
            "--json", help="One JSON object per entry and line (the GET /v1/audit form).")] = False,
        kind: Annotated[str | None, typer.Option(
            "--kind", help="Only entries of this kind (attestation, release, agreement, "
            "certificate, counter, resource, enrollment, store).")] = None,
        denied: Annotated[bool, typer.Option(
            "--denied", help="Only denials (with every reason).")] = False,
        tail: Annotated[int | None, typer.Option(
            "--tail", min=1, help="Show only the last N entries read at start.")] = None,
        interval: Annotated[float, typer.Option(
            "--interval", min=0.2, max=3600.0, help="Seconds between reads with --follow.")] = 2.0,
        stop_after: Annotated[int | None, typer.Option(
            "--stop-after", min=1,
            help="Stop once this many entries were shown (scripts; default: no limit).")] = None,
    ) -> None:
        """Show the audit log, its hash chain verified with the pinned audit key."""
        from teeflow.kbs.client.sdk import KbsClient
        from teeflow.kbs.policy.parties import PartyKeys
        from teeflow.kbs.service.audit import audit_entry_to_json

        shown = 0

        def show(entries: list[AuditEntry]) -> bool:
            nonlocal shown
            for entry in entries:
                if (kind is not None and entry.kind != kind) or (
                    denied and entry.decision != "deny"
                ):
                    continue
                if as_json:
                    typer.echo(json.dumps(audit_entry_to_json(entry), separators=(",", ":")))
                else:
                    typer.echo(_line(entry))
                shown += 1
                if stop_after is not None and shown >= stop_after:
                    return False
            return True

        keys = PartyKeys.load(party)
        with KbsClient(None, pin_path(pin), party=keys) as client:
            entries = client.audit()
            if not as_json:
                head = entries[-1] if entries else None
                typer.echo(
                    f"# audit log: {len(entries)} entries, chain verified with the pinned "
                    "audit key"
                    + (f"; head seq {head.seq} hash {head.hash.hex()[:16]}…" if head else ""),
                    err=True,
                )
            more = show(entries[-tail:] if tail is not None else entries)
            last = entries[-1] if entries else None
            try:
                while follow and more:
                    time.sleep(interval)
                    new = client.audit(after=last)
                    if new:
                        last = new[-1]
                        more = show(new)
            except KeyboardInterrupt:
                pass
        if stop_after is not None and shown < stop_after and not follow:
            raise KbsError(f"only {shown} matching entries (--stop-after {stop_after})")
