"""CLI of the FL runtime: ``aggregator``, ``client``, ``package`` and ``model`` groups.

``register(app)`` adds::

    teeflow aggregator run --enrollment TOKEN --kbs URL --pin FILE --session NAME --rounds N
        --min-clients K [--listen HOST:PORT] ...   (rule: the agreement's training section)
    teeflow aggregator measurement [--manifest FILE]
    teeflow client run --enrollment TOKEN --party NAME --kbs URL --pin FILE
        --aggregator HOST:PORT --data SPEC ...
    teeflow client measurement [--manifest FILE]
    teeflow package build DIR -o pkg.tar
    teeflow package publish pkg.tar --kbs URL --pin FILE --party NAME [-o pkg.tar.sealed]
    teeflow model verify MODEL PROVENANCE --ca CA.pem [--agreements HISTORY | --pin PIN] [--json]
    teeflow model open MODEL --party NAME [-o out.safetensors]

``aggregator run`` and ``client run`` print one JSON object per line on stdout (``{"event":
..., ...}``; the last is ``done`` or ``error``) — :mod:`teeflow.fl.session` reads them. The
module also runs standalone (``python -m teeflow.cli.fl_cmds aggregator run ...``);
:mod:`teeflow.fl.session` starts workloads through the leaner :mod:`teeflow.fl.entry` (same
options, no typer/rich), so the aggregator process loads only what it needs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from teeflow.cli.enrollment_cmds import EnrollmentOption
from teeflow.cli.output import JsonOption, echo_json
from teeflow.cli.platform_options import (
    GpuOption,
    GramineRootOption,
    PlatformOption,
    TsmRootOption,
    platform_options,
)
from teeflow.errors import Error, ParseError
from teeflow.fl.console import EventPrinter
from teeflow.fl.entry import METRICS_LISTEN_HELP

__all__ = ["main", "register"]


#: ``aggregator run`` / ``client run``: one JSON object per event line
#: ``--manifest`` of the FL workloads (aggregator and client).
_ManifestOption = Annotated[
    Path | None,
    typer.Option("--manifest", help="Gramine manifest whose trusted files are measured."),
]
#: ``--package-ref`` of the FL workloads.
_PackageRefOption = Annotated[
    str | None,
    typer.Option("--package-ref", help="Agreement package NAME or DIGEST (default: the only one)."),
]
JsonLinesOption = Annotated[
    bool,
    typer.Option(
        "--json", help="One JSON object per line (for scripts); default: timestamped text."
    ),
]


def _quiet_grpc() -> None:
    # gRPC logs an ERROR line per handshake because workload certificates carry no DNS name
    # for SNI (see teeflow.fl.transport.tls); keep stderr for real problems.
    if not os.environ.get("TEEFLOW_DEBUG"):
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")


def _json_config(text: str | None, what: str) -> dict[str, Any]:
    if not text:
        return {}
    from teeflow.fl.transport.framing import decode_config

    try:
        return dict(decode_config(text))
    except ParseError as exc:
        raise ParseError(f"{what}: {exc}") from None


def _fail(printer: EventPrinter, exc: Error) -> None:
    # human mode: the root CLI prints the error (with what to do) on stderr
    if printer.json_mode:
        printer("error", {"code": exc.code, "type": type(exc).__name__, "message": str(exc)})


def register(app: typer.Typer) -> None:
    """Add the ``aggregator``, ``client``, ``package`` and ``model`` groups to ``app``."""
    agg = typer.Typer(help="The attested FL aggregator workload.", no_args_is_help=True)
    cli = typer.Typer(help="The attested FL client workload.", no_args_is_help=True)
    pkg = typer.Typer(help="Compute packages: build and publish.", no_args_is_help=True)
    model = typer.Typer(help="Final models: verify provenance, open.", no_args_is_help=True)
    app.add_typer(agg, name="aggregator")
    app.add_typer(cli, name="client")
    app.add_typer(pkg, name="package")
    app.add_typer(model, name="model")

    @agg.command("run")
    def aggregator_run(
        enrollment: EnrollmentOption,
        pin: Annotated[Path, typer.Option("--pin", help="KBS pin file.")],
        session: Annotated[str, typer.Option("--session", help="Session name.")],
        rounds: Annotated[int, typer.Option("--rounds", help="Rounds to run (in all).")],
        min_clients: Annotated[int, typer.Option("--min-clients", help="K: fewest updates.")],
        kbs: Annotated[str | None, typer.Option("--kbs", help="KBS URL (default: pin).")] = None,
        fraction_fit: Annotated[
            float | None,
            typer.Option(
                "--fraction-fit",
                help="Consistency check: refused unless it is the agreement's "
                "training.fraction_fit (default: the agreement's).",
            ),
        ] = None,
        strategy: Annotated[
            str | None,
            typer.Option(
                "--strategy",
                help="Consistency check: refused unless it is the agreement's "
                "training.strategy.name (the rule and its parameters come from the agreement).",
            ),
        ] = None,
        listen: Annotated[str, typer.Option("--listen", help="HOST:PORT (0: any).")] = (
            "127.0.0.1:8450"
        ),
        state_dir: Annotated[
            Path,
            typer.Option("--state-dir", help="Folder of checkpoints and the provenance log."),
        ] = Path("aggregator-state"),
        checkpoint: Annotated[
            Path | None,
            typer.Option("--checkpoint", help="Resume from this checkpoint file."),
        ] = None,
        out: Annotated[Path | None, typer.Option("--out", help="Model output folder.")] = None,
        package: Annotated[
            Path | None, typer.Option("--package", help="Sealed package to hand to clients.")
        ] = None,
        package_ref: _PackageRefOption = None,
        wait_clients: Annotated[
            int | None,
            typer.Option("--wait-clients", help="Clients to wait for before round 1 (default K)."),
        ] = None,
        connect_timeout: Annotated[
            float, typer.Option("--connect-timeout", help="Seconds to wait for clients.")
        ] = 120.0,
        round_timeout: Annotated[
            float, typer.Option("--round-timeout", help="Seconds a round may take.")
        ] = 300.0,
        train_config: Annotated[
            str | None,
            typer.Option("--train-config", help="JSON object sent with every train task."),
        ] = None,
        evaluate_config: Annotated[
            str | None,
            typer.Option("--evaluate-config", help="JSON object sent with every evaluate task."),
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of client selection.")] = 0,
        manifest: _ManifestOption = None,
        platform: PlatformOption = "auto",
        tsm_root: TsmRootOption = None,
        gramine_root: GramineRootOption = None,
        gpu: GpuOption = "none",
        metrics_listen: Annotated[
            str | None, typer.Option("--metrics-listen", help=METRICS_LISTEN_HELP)
        ] = None,
        as_json: JsonLinesOption = False,
    ) -> None:
        """Run the aggregator (attests as role aggregator). Prints one timestamped line per
        event (rounds, clients, failures); --json prints JSON lines for scripts."""
        _quiet_grpc()
        printer = EventPrinter(json_mode=as_json)
        from teeflow.fl.aggregator import Aggregator, AggregatorOptions

        try:
            options = AggregatorOptions(
                pin=pin,
                session=session,
                rounds=rounds,
                min_clients=min_clients,
                kbs_url=kbs,
                fraction_fit=fraction_fit,
                strategy=strategy,
                listen=listen,
                state_dir=state_dir,
                checkpoint=checkpoint,
                out_dir=out,
                package=package,
                package_ref=package_ref,
                wait_clients=wait_clients,
                connect_timeout=connect_timeout,
                round_timeout=round_timeout,
                train_config=_json_config(train_config, "--train-config"),
                evaluate_config=_json_config(evaluate_config, "--evaluate-config"),
                seed=seed,
                manifest=manifest,
                platform=platform_options(platform, tsm_root, gramine_root),
                enrollment=enrollment,
                gpu=gpu,
                metrics_listen=metrics_listen,
            )
            Aggregator(options, printer).run()
        except Error as exc:
            _fail(printer, exc)
            raise

    @agg.command("measurement")
    def aggregator_measurement(
        manifest: _ManifestOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Print the aggregator measurement (hex) for the agreement's workloads.aggregator."""
        from teeflow.fl.workload import fl_measurement

        mr = fl_measurement("aggregator", manifest).hex()
        if as_json:
            echo_json({"role": "aggregator", "measurement": mr})
            return
        typer.echo(mr)

    @cli.command("run")
    def client_run(
        enrollment: EnrollmentOption,
        party: Annotated[str, typer.Option("--party", help="The party it acts for (enrolled).")],
        pin: Annotated[Path, typer.Option("--pin", help="KBS pin file.")],
        aggregator: Annotated[
            str, typer.Option("--aggregator", help="Aggregator address HOST:PORT.")
        ],
        data: Annotated[
            str,
            typer.Option("--data", help="Data spec (teeflow.datasets), e.g. digits?index=0."),
        ],
        kbs: Annotated[
            str | None, typer.Option("--kbs", help="KBS URL (default: the pin's).")
        ] = None,
        package_file: Annotated[
            Path | None,
            typer.Option(
                "--package-file", help="Sealed package file (default: sent by the aggregator)."
            ),
        ] = None,
        package_ref: _PackageRefOption = None,
        workdir: Annotated[
            Path | None,
            typer.Option("--workdir", help="Where the package is unpacked (default: a temp dir)."),
        ] = None,
        manifest: _ManifestOption = None,
        connect_timeout: Annotated[
            float, typer.Option("--connect-timeout", help="Seconds to reach the aggregator.")
        ] = 60.0,
        threads: Annotated[
            int, typer.Option("--threads", help="torch threads (0: the library default).")
        ] = 1,
        session: Annotated[
            str | None, typer.Option("--session", help="Session to join (bound in its claims).")
        ] = None,
        platform: PlatformOption = "auto",
        tsm_root: TsmRootOption = None,
        gramine_root: GramineRootOption = None,
        gpu: GpuOption = "none",
        rejoin: Annotated[
            int,
            typer.Option(
                "--rejoin",
                min=0,
                help="Times a client the aggregator dropped (e.g. a missed re-attestation) "
                "attests again and reconnects; a KBS refusal ends it.",
            ),
        ] = 3,
        as_json: JsonLinesOption = False,
    ) -> None:
        """Run a client (attests as role client for PARTY; dials out). Prints one timestamped
        line per event; --json prints JSON lines. Exits 1 if any of its tasks failed."""
        _quiet_grpc()
        printer = EventPrinter(json_mode=as_json)
        from teeflow.fl.client import Client, ClientOptions

        try:
            result = Client(
                ClientOptions(
                    party=party,
                    pin=pin,
                    aggregator=aggregator,
                    data=data,
                    kbs_url=kbs,
                    package_file=package_file,
                    package_ref=package_ref,
                    workdir=workdir,
                    manifest=manifest,
                    connect_timeout=connect_timeout,
                    threads=threads,
                    session=session,
                    platform=platform_options(platform, tsm_root, gramine_root),
                    enrollment=enrollment,
                    gpu=gpu,
                    rejoin=rejoin,
                ),
                printer,
            ).run()
        except Error as exc:
            _fail(printer, exc)
            raise
        if not result.ok:
            raise typer.Exit(1)

    @cli.command("measurement")
    def client_measurement(
        manifest: _ManifestOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Print the client measurement (hex) for the agreement's workloads.client."""
        from teeflow.fl.workload import fl_measurement

        mr = fl_measurement("client", manifest).hex()
        if as_json:
            echo_json({"role": "client", "measurement": mr})
            return
        typer.echo(mr)

    @pkg.command("build")
    def package_build(
        directory: Annotated[Path, typer.Argument(help="Package folder (teeflow.yaml).")],
        output: Annotated[Path, typer.Option("-o", "--output", help="Archive file to write.")],
        no_check: Annotated[
            bool,
            typer.Option(
                "--no-check",
                help="Skip importing the entrypoints in a child process (e.g. building on a "
                "machine without the package's requirements).",
            ),
        ] = False,
        as_json: JsonOption = False,
    ) -> None:
        """Pack a folder deterministically, check that every entrypoint/function imports (in a
        separate process), and print the SHA-256 digest for the agreement."""
        from teeflow.fl.package import build_package, load_manifest
        from teeflow.fl.package_check import check_entrypoints

        archive, d = build_package(directory)
        checked = [] if no_check else check_entrypoints(archive, d)
        try:
            output.write_bytes(archive)
        except OSError as exc:
            raise ParseError(f"cannot write {output}: {exc.strerror or exc}") from None
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "name": load_manifest(directory).name,
                        "digest": d.hex(),
                        "archive": str(output),
                        "size": len(archive),
                        "checked": checked,
                    }
                )
            )
            return
        typer.echo(f"{d.hex()}  {output}")

    @pkg.command("publish")
    def package_publish(
        archive: Annotated[Path, typer.Argument(help="Package archive (package build).")],
        pin: Annotated[Path, typer.Option("--pin", help="KBS pin file.")],
        party: Annotated[str, typer.Option("--party", help="Publishing party (its keys).")],
        kbs: Annotated[
            str | None, typer.Option("--kbs", help="KBS URL (default: the pin's).")
        ] = None,
        output: Annotated[
            Path | None,
            typer.Option("-o", "--output", help="Sealed package file (default ARCHIVE.sealed)."),
        ] = None,
        key_dir: Annotated[Path | None, typer.Option("--dir", help="Party key folder.")] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Seal the package and upload its key (attested clients only). The checkpoint key is
        generated by the KBS per session; no party holds it."""
        from teeflow.fl.publish import publish_package
        from teeflow.kbs.client.sdk import KbsClient
        from teeflow.kbs.policy.parties import PartyKeys

        keys = PartyKeys.load_dir(key_dir, party) if key_dir else PartyKeys.load(party)
        with KbsClient(kbs, pin) as client:
            done = publish_package(archive, client, keys, sealed_path=output)
        if as_json:
            echo_json(
                {
                    "name": done.name,
                    "digest": done.digest,
                    "sealed": str(done.sealed_path),
                    "key_resource": done.package_key_path,
                }
            )
            return
        typer.echo(f"package {done.name} {done.digest} sealed to {done.sealed_path}")
        typer.echo(f"resource {done.package_key_path} stored (role client)")

    @model.command("verify")
    def model_verify(
        model_file: Annotated[Path, typer.Argument(help="Sealed model file.")],
        provenance: Annotated[Path, typer.Argument(help="Provenance log (JSON lines).")],
        ca: Annotated[Path, typer.Option("--ca", help="Federation CA (PEM) or a KBS pin.")],
        party: Annotated[
            str | None,
            typer.Option(
                "--party",
                help=(
                    "Recipient party whose keys authenticate the encrypted payload (AEAD "
                    "tags + digest). Default: the first model recipient whose keys are in "
                    "$TEEFLOW_HOME; none: only the payload's length and binding are checked."
                ),
            ),
        ] = None,
        key_dir: Annotated[
            Path | None, typer.Option("--dir", help="Party key folder (with --party).")
        ] = None,
        agreements: Annotated[
            Path | None,
            typer.Option(
                "--agreements",
                help="Agreement history file (teeflow agreement history -o FILE): check every "
                "round's participants against the agreement in force for that round.",
            ),
        ] = None,
        pin: Annotated[
            Path | None,
            typer.Option(
                "--pin",
                help="KBS pin: fetch the agreement history from the pinned KBS instead of "
                "--agreements.",
            ),
        ] = None,
        kbs: Annotated[
            str | None, typer.Option("--kbs", help="KBS URL (default: the pin's).")
        ] = None,
        as_json: Annotated[
            bool,
            typer.Option(
                "--json",
                help="Print one JSON object: session, rounds, digests, payload check, the "
                "training terms (rule, parameters, outliers, dp), ε per round and in total, "
                "outlier decisions, and (with --agreements/--pin) each round's agreement "
                "version, participants and drops.",
            ),
        ] = False,
    ) -> None:
        """Re-check the provenance chain, every signature against its aggregator certificate
        (federation CA, role aggregator, agreed measurement; hand-overs included), the final
        digest and the encrypted payload (its AEAD tags when a recipient's keys are at hand);
        show the agreed training rule and the privacy spent; with --agreements/--pin also
        every round's participants against the agreement in force (fails naming the round)."""
        from teeflow.fl.history import check_rounds, load_history
        from teeflow.fl.outputs import read_model_header, verify_model
        from teeflow.fl.provenance import verified_training
        from teeflow.kbs.policy.parties import PartyKeys

        data = _read_model(model_file)
        keys: PartyKeys | None = None
        if party is not None:
            keys = PartyKeys.load_dir(key_dir, party) if key_dir else PartyKeys.load(party)
        else:
            keys = _recipient_keys(read_model_header(data).recipients)
        checked = verify_model(data, provenance, _load_ca(ca), party_keys=keys)
        training = verified_training(checked.entries)
        history = None
        if agreements is not None:
            history = load_history(agreements)
        elif pin is not None:
            from teeflow.kbs.client.sdk import KbsClient

            with KbsClient(kbs, pin) as client:
                history = client.agreement_history()
        rounds = check_rounds(checked.entries, history) if history is not None else None
        payload = (
            f"payload authenticated with {keys.name}'s key (AEAD tags, digest)"
            if keys is not None
            else "payload length and binding checked; AEAD tags NOT checked (no recipient "
            "key here: pass --party NAME)"
        )
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "verified": True,
                        "session": checked.header.session,
                        "rounds": checked.rounds,
                        "model_digest": checked.header.arrays_digest,
                        "agreement_digest": checked.header.agreement_digest,
                        "aggregator_measurement": checked.aggregator.measurement,
                        "handovers": checked.handovers,
                        "emulated": checked.aggregator.emulated,
                        "payload_authenticated": checked.payload_authenticated,
                        "payload_authenticated_by": keys.name if keys is not None else None,
                        "agreements_checked": rounds is not None,
                        "round_checks": [r.as_json() for r in rounds or []],
                        **training,
                    },
                    sort_keys=True,
                )
            )
            return
        terms = training.get("training") or {}
        rule = terms.get("strategy", {})
        eps = training.get("privacy", {}).get("epsilon_total")
        typer.echo(
            f"verified: session {checked.header.session}, {checked.rounds} rounds, model "
            f"{checked.header.arrays_digest}, aggregator {checked.aggregator.measurement}"
            + (f", {checked.handovers} hand-over(s)" if checked.handovers else "")
            + (" (EMULATED TEE)" if checked.aggregator.emulated else "")
            + (f"; rule {rule.get('name')} {rule.get('params', {})}" if rule else "")
            + (f"; ε spent {eps:.4g}" if isinstance(eps, float) else "")
            + f"; {payload}"
        )
        for r in rounds or []:
            version = "unrecorded" if r.version is None else f"v{r.version}"
            drops = "".join(f"; dropped {p}: {why}" for p, why in sorted(r.dropped.items()))
            typer.echo(f"  round {r.round}: agreement {version}, {', '.join(r.clients)}{drops}")

    @model.command("open")
    def model_open(
        model_file: Annotated[Path, typer.Argument(help="Sealed model file.")],
        party: Annotated[str, typer.Option("--party", help="Recipient party (its keys).")],
        output: Annotated[
            Path | None,
            typer.Option("-o", "--output", help="Safetensors file (default MODEL.safetensors)."),
        ] = None,
        key_dir: Annotated[Path | None, typer.Option("--dir", help="Party key folder.")] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Decrypt the model for an authorised recipient; write safetensors (mode 0600)."""
        from teeflow._fs import atomic_write
        from teeflow.fl.arrays import encode_arrays
        from teeflow.fl.outputs import open_model
        from teeflow.kbs.policy.parties import PartyKeys

        keys = PartyKeys.load_dir(key_dir, party) if key_dir else PartyKeys.load(party)
        arrays = open_model(model_file, keys)
        target = output or model_file.with_suffix(".safetensors")
        try:
            atomic_write(target, encode_arrays(arrays), mode=0o600)  # plaintext: owner only
        except OSError as exc:
            raise ParseError(f"cannot write {target}: {exc.strerror or exc}") from None
        if as_json:
            echo_json({"arrays": len(arrays), "path": str(target)})
            return
        typer.echo(f"{len(arrays)} arrays written to {target}")


def _read_model(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ParseError(f"cannot read {path}: {exc.strerror or exc}") from None


def _recipient_keys(recipients: dict[str, str]) -> Any:
    """The keys of the first recipient (sorted) found in ``$TEEFLOW_HOME``, else None."""
    from teeflow.kbs.policy.parties import PartyKeys, party_dir

    for name in sorted(recipients):
        try:
            if party_dir(name).is_dir():
                return PartyKeys.load(name)
        except Error:
            continue
    return None


def _load_ca(path: Path) -> Any:
    from cryptography import x509

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ParseError(f"cannot read {path}: {exc.strerror or exc}") from None
    if raw.lstrip().startswith(b"{"):
        from teeflow.kbs.client.pinning import Pin

        return Pin.load(path).ca()
    try:
        return x509.load_pem_x509_certificate(raw)
    except ValueError:
        raise ParseError(f"{path} is not a PEM certificate") from None


def main(argv: list[str] | None = None) -> None:
    """Standalone entry point (``python -m teeflow.cli.fl_cmds``): these groups only."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)

    @app.callback()
    def _root() -> None:
        """teeflow FL workloads."""

    register(app)
    try:
        app(argv if argv is not None else sys.argv[1:], standalone_mode=True)
    except Error as exc:
        if os.environ.get("TEEFLOW_DEBUG"):
            raise
        sys.stderr.write(f"error ({exc.code}): {exc}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
