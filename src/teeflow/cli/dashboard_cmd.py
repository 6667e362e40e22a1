"""``teeflow dashboard``: serve a party's read-only web view of its federation.

    teeflow dashboard --party NAME [--kbs URL] [--pin FILE] [--listen 127.0.0.1:8470]
                      [--aggregator http://HOST:PORT ...] [--service https://HOST:PORT ...]

See :mod:`teeflow.dashboard.model` for what is read and verified, and ``docs/dashboard.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from teeflow.errors import KbsError

if TYPE_CHECKING:
    import uvicorn

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``dashboard`` command to the root app."""

    @app.command("dashboard")
    def dashboard(
        party: Annotated[str, typer.Option(
            "--party", help="Party whose key signs every KBS read (keys in "
            "$TEEFLOW_HOME/parties/NAME; only parties may read the audit log).")],
        kbs: Annotated[str | None, typer.Option(
            "--kbs", help="KBS URL (default: the pin's).")] = None,
        pin: Annotated[Path | None, typer.Option(
            "--pin", help="Pin file from 'teeflow kbs verify' (default: $TEEFLOW_HOME).")] = None,
        listen: Annotated[str, typer.Option(
            "--listen", help="HOST:PORT to serve the page on (plain HTTP: keep it on loopback; "
            "port 0: any).")] = "127.0.0.1:8470",
        aggregator: Annotated[list[str] | None, typer.Option(
            "--aggregator", help="Base URL of an aggregator's --metrics-listen endpoint "
            "(http://HOST:PORT) for live per-round charts; repeatable.")] = None,
        service: Annotated[list[str] | None, typer.Option(
            "--service", help="Base URL of an aggregator service ('teeflow aggregator serve', "
            "https://HOST:PORT): its sessions' rounds, read with party-signed requests from "
            "an attested aggregator only; repeatable.")] = None,
        refresh: Annotated[float, typer.Option(
            "--refresh", min=0.2, max=3600.0,
            help="Least seconds between two reads of the KBS.")] = 1.0,
    ) -> None:
        """Serve the party's read-only dashboard (federation, workloads, sessions, audit)."""
        from teeflow.dashboard.app import make_dashboard_server
        from teeflow.dashboard.model import DashboardSource
        from teeflow.kbs.api.server import parse_listen
        from teeflow.kbs.client.pinning import default_pin_path
        from teeflow.kbs.client.sdk import KbsClient
        from teeflow.kbs.policy.parties import PartyKeys

        host, port = parse_listen(listen)
        pin_path = pin if pin is not None else default_pin_path()
        if not pin_path.is_file():
            raise KbsError(f"no pin file at {pin_path}: run 'teeflow kbs verify' first")
        for url in aggregator or []:
            if not url.startswith(("http://", "https://")):
                raise KbsError(f"--aggregator expects http://HOST:PORT, got {url!r}")
        for url in service or []:
            if not url.startswith("https://"):
                raise KbsError(f"--service expects https://HOST:PORT, got {url!r}")
        keys = PartyKeys.load(party)
        with KbsClient(kbs, pin_path, party=keys) as client:
            source = DashboardSource(client, aggregator or [], services=service or [],
                                     keys=keys, min_interval=refresh)
            source.start_polling()
            try:
                server = make_dashboard_server(source, party=party, host=host, port=port)
                shown = f"[{host}]" if ":" in host else host

                def announce() -> None:
                    sockets = server.servers[0].sockets if server.servers else []
                    bound = sockets[0].getsockname()[1] if sockets else port
                    typer.echo(f"dashboard of {party} at http://{shown}:{bound}/ "
                               "(read-only; Ctrl-C stops)", err=True)

                _serve(server, announce)
            finally:
                source.close()


def _serve(server: uvicorn.Server, on_started: Callable[[], None]) -> None:
    """Run ``server`` in this thread, calling ``on_started`` once it listens."""
    import threading
    import time

    def watch() -> None:
        for _ in range(600):
            if server.started:
                on_started()
                return
            if server.should_exit:
                return
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    server.run()
