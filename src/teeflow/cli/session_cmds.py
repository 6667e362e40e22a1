"""CLI of the session control plane and the local simulation.

``register(app)`` adds::

    teeflow aggregator serve --enrollment TOKEN --pin FILE [--listen HOST:PORT]
        [--transport-listen HOST:PORT] [--state-dir DIR] --platform P ...
    teeflow session start --url URL --party NAME --package REF --rounds N [--name S]
        [--min-clients K] [--wait-clients W] [--train-config JSON] [--package-file SEALED]
        [--follow] [--json]
    teeflow session ls --url URL --party NAME [--json]
    teeflow session logs SESSION --url URL --party NAME [--follow] [--json]
    teeflow session stop SESSION --url URL --party NAME [--json]
    teeflow simulate PACKAGE [--clients 3] [--rounds 3] [--train-config JSON] [--json]

Like Flower's ``flwr run/ls/log/stop``; the service is :mod:`teeflow.fl.service`, the
client :class:`teeflow.Party` (:meth:`~teeflow.api.party.Party.sessions`). Every request is
signed with the party's key; the service must prove it is an attested aggregator of the
agreement in force before a request is sent.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from teeflow.cli.agreement_submit_cmd import find_group
from teeflow.cli.enrollment_cmds import EnrollmentOption
from teeflow.cli.output import JsonOption
from teeflow.cli.platform_options import (
    GpuOption,
    GramineRootOption,
    PlatformOption,
    TsmRootOption,
    platform_options,
)
from teeflow.errors import FLError, ParseError

__all__ = ["register"]

UrlOption = Annotated[str, typer.Option(
    "--url", envvar="TEEFLOW_AGGREGATOR_URL",
    help="https://HOST:PORT of the aggregator service (teeflow aggregator serve); "
         "env TEEFLOW_AGGREGATOR_URL.")]
PartyOption = Annotated[str, typer.Option(
    "--party", envvar="TEEFLOW_PARTY",
    help="Your party name (keys in $TEEFLOW_HOME/parties/NAME sign every request).")]
PinOption = Annotated[Path | None, typer.Option(
    "--pin", help="KBS pin file (default: $TEEFLOW_HOME/pin.json, from teeflow kbs verify).")]


def _control(url: str, party: str, pin: Path | None) -> Any:
    import teeflow
    from teeflow.kbs.client.pinning import default_pin_path

    p = teeflow.Party.load(party, pin=pin or default_pin_path())
    return p, p.sessions(url)


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _print_event(out: Console, e: Any, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(e.model_dump(), default=str))
        return
    fields = " ".join(f"{k}={v}" for k, v in e.fields.items()
                      if not isinstance(v, dict | list) or k == "clients")
    out.print(f"{e.time[11:23]}  {e.event:<16} {fields}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add ``aggregator serve``, the ``session`` group and ``simulate`` to ``app``."""
    out = Console()
    sess = typer.Typer(help="Start, list, follow and stop FL sessions on an aggregator "
                            "service (party-signed requests).", no_args_is_help=True)
    app.add_typer(sess, name="session")

    @find_group(app, "aggregator").command("serve")
    def aggregator_serve(
        enrollment: EnrollmentOption,
        pin: Annotated[Path, typer.Option("--pin", help="KBS pin file.")],
        kbs: Annotated[str | None, typer.Option(
            "--kbs", help="KBS URL (default: the pin's).")] = None,
        listen: Annotated[str, typer.Option(
            "--listen", help="HOST:PORT of the control API (HTTPS).")] = "127.0.0.1:8460",
        transport_listen: Annotated[str, typer.Option(
            "--transport-listen",
            help="HOST:PORT the sessions' clients dial (port 0: a free port per session, "
                 "shown by 'session ls').")] = "127.0.0.1:8450",
        state_dir: Annotated[Path, typer.Option(
            "--state-dir", help="Checkpoints, provenance and sealed models "
                                "(sessions/<id>/).")] = Path("aggregator-service"),
        manifest: Annotated[Path | None, typer.Option(
            "--manifest", help="Workload manifest (default: the built-in one).")] = None,
        seed: Annotated[int, typer.Option("--seed", help="Strategy seed.")] = 0,
        platform: PlatformOption = "auto",
        tsm_root: TsmRootOption = None,
        gramine_root: GramineRootOption = None,
        gpu: GpuOption = "none",
        as_json: JsonOption = False,
        metrics_listen: Annotated[str | None, typer.Option(
            "--metrics-listen", help="HOST:PORT of a plain-HTTP Prometheus /metrics listener "
            "(not authenticated: loopback or the monitoring network; default: none; "
            "docs/metrics.md).")] = None,
    ) -> None:
        """Run the aggregator as a service: attest once, then run the sessions parties
        submit (teeflow session start), one after another, until Ctrl-C."""
        if not os.environ.get("TEEFLOW_DEBUG"):
            os.environ.setdefault("GRPC_VERBOSITY", "NONE")
        import socket

        from teeflow.fl.service import ServiceOptions, SessionService
        from teeflow.fl.workload import parse_listen

        host, port = parse_listen(listen)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(128)  # connections wait in the backlog until the server accepts
        except OSError as exc:
            sock.close()
            raise FLError(f"cannot listen on {listen}: {exc.strerror or exc} "
                          "(choose another --listen)") from None
        service = SessionService(ServiceOptions(
            pin=pin, enrollment=enrollment, kbs_url=kbs, listen=listen,
            transport_listen=transport_listen, state_dir=state_dir,
            platform=platform_options(platform, tsm_root, gramine_root), manifest=manifest,
            gpu=gpu, seed=seed, metrics_listen=metrics_listen))
        try:
            service.start()
            info = service.info()
            bound = sock.getsockname()[1]
            url = f"https://{f'[{host}]' if ':' in host else host}:{bound}"
            if as_json:
                typer.echo(json.dumps({"event": "serving", "url": url, **info}), nl=True)
            else:
                out.print(f"aggregator service at {url} (measurement "
                          f"{str(info['measurement'])[:16]}…, agreement "
                          f"{info['agreement_digest'][:16]}…); Ctrl-C stops", highlight=False)
            sys.stdout.flush()
            server = service.make_server()
            # uvicorn shuts down gracefully, restores these handlers and re-raises the signal:
            # make that a normal exit, so the running session is stopped and the KBS client
            # closed below
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, _exit_cleanly)
            server.run(sockets=[sock])
        finally:
            service.close()
            sock.close()

    @sess.command("start")
    def start(
        url: UrlOption,
        party: PartyOption,
        package: Annotated[str, typer.Option(
            "--package", help="Package name (or digest) in the agreement.")],
        rounds: Annotated[int, typer.Option(
            "--rounds", help="Rounds (at most the agreement's training.rounds).")],
        name: Annotated[str | None, typer.Option(
            "--name", help="Session name (default: generated).")] = None,
        min_clients: Annotated[int | None, typer.Option(
            "--min-clients", help="Fewest updates per round (default: the agreed "
                                  "training.min_clients; never below it).")] = None,
        wait_clients: Annotated[int | None, typer.Option(
            "--wait-clients", help="Clients to wait for before round 1.")] = None,
        train_config: Annotated[str | None, typer.Option(
            "--train-config", help="The package's training config, a JSON object.")] = None,
        package_file: Annotated[Path | None, typer.Option(
            "--package-file", help="Sealed package (teeflow package publish) the service "
                                   "hands to clients; without it clients bring their own.")
        ] = None,
        round_timeout: Annotated[float, typer.Option(
            "--round-timeout", help="Seconds per round.")] = 300.0,
        connect_timeout: Annotated[float, typer.Option(
            "--connect-timeout", help="Seconds to wait for the clients.")] = 120.0,
        follow: Annotated[bool, typer.Option(
            "--follow", help="Then print its events until it ends.")] = False,
        pin: PinOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Start a session (checked by the service against the agreement's training terms)."""
        from teeflow.fl.control import sealed_package_field
        from teeflow.fl.sessions import SessionRequest

        try:
            config = json.loads(train_config) if train_config else {}
        except ValueError:
            raise ParseError("--train-config must be a JSON object") from None
        request = SessionRequest.model_validate({
            "package": package, "rounds": rounds, "name": name, "min_clients": min_clients,
            "wait_clients": wait_clients, "train_config": config,
            "round_timeout": round_timeout, "connect_timeout": connect_timeout,
            "sealed_package": sealed_package_field(package_file) if package_file else None})
        p, ctl = _control(url, party, pin)
        with p, ctl:
            info = ctl.start(request)
            if as_json and not follow:
                typer.echo(info.model_dump_json())
            elif not as_json:
                out.print(f"session [bold]{info.id}[/] {info.state} "
                          f"({info.package}, {info.rounds} rounds)")
            if follow:
                for e in ctl.follow(info.id):
                    _print_event(out, e, as_json)

    @sess.command("ls")
    def ls(url: UrlOption, party: PartyOption, pin: PinOption = None,
           as_json: JsonOption = False) -> None:
        """List the service's sessions, newest first."""
        p, ctl = _control(url, party, pin)
        with p, ctl:
            sessions = ctl.sessions()
        if as_json:
            typer.echo(json.dumps([s.model_dump() for s in sessions]))
            return
        table = Table("session", "state", "round", "package", "by", "clients dial", "accuracy")
        for s in sessions:
            acc = s.metrics.get("eval_accuracy")
            table.add_row(s.id, s.state, f"{s.round}/{s.rounds}", s.package, s.submitted_by,
                          s.address or "", "" if acc is None else f"{acc:.4f}")
        out.print(table)

    @sess.command("logs")
    def logs(
        session: Annotated[str, typer.Argument(help="Session id (teeflow session ls).")],
        url: UrlOption, party: PartyOption,
        follow: Annotated[bool, typer.Option(
            "--follow", "-f", help="Keep printing until the session ends.")] = False,
        pin: PinOption = None, as_json: JsonOption = False,
    ) -> None:
        """Print a session's events (timestamped; --json: one object per line)."""
        p, ctl = _control(url, party, pin)
        with p, ctl:
            events = ctl.follow(session) if follow else ctl.events(session)[0]
            for e in events:
                _print_event(out, e, as_json)

    @sess.command("stop")
    def stop(
        session: Annotated[str, typer.Argument(help="Session id (teeflow session ls).")],
        url: UrlOption, party: PartyOption, pin: PinOption = None, as_json: JsonOption = False,
    ) -> None:
        """Stop a session: a queued one is dropped, a running one ends before its next round."""
        p, ctl = _control(url, party, pin)
        with p, ctl:
            info = ctl.stop(session)
        if as_json:
            typer.echo(info.model_dump_json())
        else:
            out.print(f"session {info.id}: stop requested ({info.state})", highlight=False)

    @app.command("simulate")
    def simulate(
        package: Annotated[Path, typer.Argument(help="Package folder or built archive.")],
        clients: Annotated[int, typer.Option("--clients", help="Clients (parties), 1..64.")] = 3,
        rounds: Annotated[int, typer.Option("--rounds", help="Rounds, 1..1000.")] = 3,
        train_config: Annotated[str | None, typer.Option(
            "--train-config", help="The package's training config, a JSON object.")] = None,
        data: Annotated[str, typer.Option(
            "--data", help="Client data spec; {clients} and {index} are filled in.")] = (
            "digits?clients={clients}&index={index}&seed=7"),
        workdir: Annotated[Path | None, typer.Option(
            "--workdir", help="Keep the study here (sealed model, logs); default: a "
                              "temporary folder, deleted.")] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Run one FL session of PACKAGE in this process on the emulated platform (KBS,
        aggregator and clients; real protocol, no hardware) — for developing train()."""
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
        import logging

        from rich.progress import Progress

        from teeflow.fl.simulation import simulate as run

        try:
            config = json.loads(train_config) if train_config else {}
        except ValueError:
            raise ParseError("--train-config must be a JSON object") from None
        logging.getLogger("teeflow").setLevel(logging.ERROR)  # emulation warnings: known
        with Progress(console=Console(stderr=True), transient=as_json) as bar:
            task = bar.add_task("attesting", total=rounds + 1)

            def on_event(event: str, fields: dict[str, Any]) -> None:
                if event == "round":
                    acc = fields.get("eval_accuracy")
                    note = "" if acc is None else f" accuracy {acc:.4f}"
                    bar.update(task, advance=1,
                               description=f"round {fields.get('round')}{note}")
                elif event == "listening":
                    bar.update(task, description="clients attesting")

            result = run(package, clients=clients, rounds=rounds, train_config=config,
                         data=data, workdir=workdir, on_event=on_event)
        summary = {"rounds": result.rounds, "seconds": round(result.seconds, 3),
                   "digest": result.digest, "history": result.history,
                   "client_failures": result.client_failures,
                   "model": None if result.model_path is None else str(result.model_path)}
        if as_json:
            typer.echo(json.dumps(summary, default=str))
            return
        for h in result.history:
            out.print(f"round {h['round']}: " + ", ".join(
                f"{k} {v:.4f}" for k, v in sorted(h.items())
                if isinstance(v, float) and k.startswith(("eval_acc", "eval_loss", "train_loss"))),
                highlight=False)
        out.print(f"{result.rounds} rounds in {result.seconds:.1f} s", highlight=False)
