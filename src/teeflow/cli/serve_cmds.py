"""CLI: ``teeflow serve`` (the attested model server) and ``teeflow model publish --serve``.

``teeflow serve --model FILE.serve --kbs URL --pin FILE --platform P --enrollment TOKEN
[--package PKG] [--listen HOST:PORT]`` runs :func:`teeflow.serve.server.serve` (``docs/serve.md``).
``teeflow model publish MODEL --party NAME --serve`` seals a model the party holds for the
serving role (:func:`teeflow.fl.publish.publish_serving_model`); :func:`register` adds it to
the ``model`` group, so it must run after :func:`teeflow.cli.fl_cmds.register`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from teeflow.cli.agreement_submit_cmd import find_group
from teeflow.cli.enrollment_cmds import EnrollmentOption
from teeflow.cli.output import JsonOption
from teeflow.cli.platform_options import (
    GramineRootOption,
    PlatformOption,
    TsmRootOption,
    platform_options,
    warn_if_emulated,
)
from teeflow.errors import ParseError

__all__ = ["register"]

_PinOpt = Annotated[
    Path | None, typer.Option("--pin", help="KBS pin file (default: $TEEFLOW_HOME/kbs.pin.json).")
]


def _print_measurement(value: bool) -> None:
    if value:
        from teeflow.serve.workload import serve_measurement

        typer.echo(serve_measurement().hex())
        raise typer.Exit(0)


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the root app and ``publish`` to the ``model`` group."""

    @app.command("serve")
    def serve(
        model: Annotated[Path, typer.Option(
            "--model", help="Sealed serving model (teeflow model publish --serve, or the "
            "aggregator's SESSION.serve).")],
        enrollment: EnrollmentOption,
        kbs: Annotated[str | None, typer.Option("--kbs", help="KBS URL (default: pin's).")] = None,
        pin: _PinOpt = None,
        package: Annotated[Path | None, typer.Option(
            "--package", help="Compute package (.tar) whose predict serves the model.")] = None,
        listen: Annotated[str, typer.Option("--listen", help="HOST:PORT to serve HTTPS on.")
                          ] = "127.0.0.1:8443",
        config: Annotated[str | None, typer.Option(
            "--config", help='JSON config given to predict, e.g. {"model": "cnn"}.')] = None,
        log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")
                             ] = "info",
        platform: PlatformOption = "auto",
        tsm_root: TsmRootOption = None,
        gramine_root: GramineRootOption = None,
        measurement: Annotated[bool, typer.Option(
            "--measurement", is_eager=True, callback=_print_measurement,
            help="Print the serving workload's measurement (emulated platforms; the "
            "agreement's workloads.serve) and exit.")] = False,
    ) -> None:
        """Serve a sealed model over the Open Inference Protocol (role serve) until
        interrupted: attests, gets the model key from the KBS, unseals in memory."""
        from teeflow.kbs.client.pinning import default_pin_path
        from teeflow.kbs.policy.enrollment import load_enrollment
        from teeflow.serve.server import serve as run
        from teeflow.serve.workload import ServeWorkload

        try:
            cfg = json.loads(config) if config else {}
        except ValueError:
            raise ParseError("--config must be a JSON object") from None
        if not isinstance(cfg, dict):
            raise ParseError("--config must be a JSON object")
        options = platform_options(platform, tsm_root, gramine_root)

        def ready(w: ServeWorkload) -> None:
            warn_if_emulated(options)
            ident = w.certificate
            typer.echo(f"serving model {w.name} ({w.header.digest}) on https://{listen}")
            typer.echo(f"certificate {ident.subject.rfc4514_string() if ident else '-'}")

        run(kbs, pin or default_pin_path(), model, package=package, listen=listen,
            platform=options, enrollment=load_enrollment(enrollment), config=cfg,
            on_ready=ready, log_level=log_level)

    model_grp = find_group(app, "model")

    @model_grp.command("publish")
    def publish(
        model_file: Annotated[Path, typer.Argument(help="Sealed model file (SESSION.model).")],
        party: Annotated[str, typer.Option("--party", help="Publishing party (its keys); "
                                           "must be in outputs.serve.")],
        serve_flag: Annotated[bool, typer.Option(
            "--serve", help="Seal for the attested serving role (the only target today).")
        ] = False,
        kbs: Annotated[str | None, typer.Option("--kbs", help="KBS URL (default: pin's).")] = None,
        pin: _PinOpt = None,
        output: Annotated[Path | None, typer.Option(
            "-o", "--output", help="Sealed serving model (default MODEL.serve).")] = None,
        name: Annotated[str | None, typer.Option(
            "--name", help="Model name served (default: the file's stem).")] = None,
        package: Annotated[str | None, typer.Option(
            "--package", help="Package (name or digest) whose predict serves it.")] = None,
        onnx: Annotated[bool, typer.Option(
            "--onnx", help="MODEL is an ONNX file the party holds (served by onnxruntime).")
        ] = False,
        key_dir: Annotated[Path | None, typer.Option("--dir", help="Party key folder.")] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Re-seal a model the party holds for the serving role and store its key in the
        KBS (released only to attested serve workloads with the agreed measurement)."""
        from teeflow.fl.publish import publish_serving_model
        from teeflow.kbs.client.pinning import default_pin_path
        from teeflow.kbs.client.sdk import KbsClient
        from teeflow.kbs.policy.parties import PartyKeys

        if not serve_flag:
            raise ParseError("say where to publish: --serve (the attested serving role)")
        keys = PartyKeys.load_dir(key_dir, party) if key_dir else PartyKeys.load(party)
        with KbsClient(kbs, pin or default_pin_path()) as client:
            out, path = publish_serving_model(model_file, client, keys, out_path=output,
                                              name=name, package=package, onnx=onnx)
        if as_json:
            typer.echo(json.dumps({"serving_model": str(out), "resource": path}))
        else:
            typer.echo(f"sealed for serving: {out}")
            typer.echo(f"resource {path} stored (role serve)")
