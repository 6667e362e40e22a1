"""CLI commands: ``teeflow kbs serve|verify|measurement``, ``teeflow kbs audit verify|show``.

* ``teeflow kbs serve --db URL --listen 127.0.0.1:PORT [--platform NAME] [--tsm-root DIR]
  [--gramine-root DIR] [--state-dir DIR] [--federation NAME] [--collateral-dir DIR]
  [--sealing platform|recovery-only] (--expect-agreement DIGEST|FILE |
  --insecure-first-agreement)`` — run the KBS (:func:`teeflow.kbs.api.server.serve`) until
  Ctrl-C / SIGTERM, on any platform (its evidence is of that platform's TEE).
  ``--federation`` is needed at the first start in a state directory only; one of the
  agreement options while the store holds no agreement (bootstrap: the first agreement is
  fixed, and bound in the evidence).
* ``teeflow kbs verify URL (--reference-values FILE | --expect-measurement HEX...)
  [--allow-emulated] [-o PIN] [--expect-agreement HEX]`` — verify the KBS's evidence (any
  TEE) as a party and write the pin file (default ``$TEEFLOW_HOME/kbs.pin.json``) that every
  later party command uses. FILE is the agreement (``workloads.kbs``), a workload spec
  ``{sgx|tdx|snp: ...}`` or one platform's values.
* ``teeflow kbs measurement [--manifest] [--platform NAME] [--json]`` — the KBS measurement
  of the installed teeflow (:func:`teeflow.kbs.service.self_attestation.kbs_measurement`);
  with ``--platform`` the ``workloads.kbs`` reference values of an emulated platform.
* ``teeflow kbs audit verify --party NAME [--pin PIN] [--expect-head HEX]`` — fetch the
  whole audit log (reads signed by the party: only parties may read it) and verify its hash
  chain and signatures with the pinned audit key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from teeflow.cli.output import JsonOption
from teeflow.cli.platform_options import (
    GramineRootOption,
    PlatformOption,
    TsmRootOption,
    platform_options,
    warn_if_emulated,
)
from teeflow.errors import KbsError

__all__ = ["register"]

_PinOption = Annotated[
    Path | None,
    typer.Option("--pin", help="Pin file from 'teeflow kbs verify' (default: $TEEFLOW_HOME)."),
]


def _pin_path(pin: Path | None) -> Path:
    from teeflow.kbs.client.pinning import (
        default_pin_path,
    )

    path = pin if pin is not None else default_pin_path()
    if not path.is_file():
        raise KbsError(f"no pin file at {path}: run 'teeflow kbs verify' first")
    return path


def _agreement_digest(value: str | None) -> bytes | None:
    """``--expect-agreement``: 64 hex digits, or an agreement file whose digest is taken.

    Raises:
        KbsError: neither; ParseError: the file is not an agreement.
    """
    if value is None:
        return None
    if len(value) == 64:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    path = Path(value)
    if not path.is_file():
        raise KbsError("--expect-agreement needs an agreement digest (64 hex) or file")
    from teeflow.kbs.policy.agreement import FederationAgreement, digest

    return digest(FederationAgreement.load(path))


def register(app: typer.Typer) -> None:
    """Add the ``kbs`` command group to the root app."""
    kbs = typer.Typer(name="kbs", help="Key Broker Service: serve, verify, measurement, audit.")

    @kbs.command("serve")
    def serve_cmd(
        db: Annotated[str, typer.Option("--db", help="sqlite:///kbs.db or postgresql+psycopg://")],
        listen: Annotated[
            str, typer.Option("--listen", help="HOST:PORT to listen on (TLS).")
        ] = "127.0.0.1:8443",
        platform: PlatformOption = "auto",
        tsm_root: TsmRootOption = None,
        gramine_root: GramineRootOption = None,
        state_dir: Annotated[
            Path | None,
            typer.Option("--state-dir", help="Sealed key directory (default $TEEFLOW_HOME/kbs)."),
        ] = None,
        federation: Annotated[
            str | None, typer.Option("--federation", help="Federation name (first start).")
        ] = None,
        collateral_dir: Annotated[
            list[Path] | None,
            typer.Option("--collateral-dir", help="Intel collateral directory (repeat)."),
        ] = None,
        log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
        sev_guest_dev: Annotated[
            Path,
            typer.Option(
                "--sev-guest-dev",
                help="SEV-SNP guest device for the derived sealing key (--platform sev-snp).",
            ),
        ] = Path("/dev/sev-guest"),
        expect_agreement: Annotated[
            str | None,
            typer.Option(
                "--expect-agreement",
                help="The first agreement this KBS accepts: its digest (64 hex) or the "
                "agreement file. Its evidence binds it until then, so parties see it "
                "before uploading. Needed while the store has no agreement.",
            ),
        ] = None,
        insecure_first_agreement: Annotated[
            bool,
            typer.Option(
                "--insecure-first-agreement",
                help="Accept ANY first agreement: whoever submits first founds the "
                "federation (development only).",
            ),
        ] = False,
        sealing: Annotated[
            str,
            typer.Option(
                "--sealing",
                help="platform: seal the KBS keys with the platform's sealing key (Gramine "
                "_sgx_mrenclave, SNP derived key; TDX has none); recovery-only: no sealing "
                "key, the keys come back only from the parties' recovery shares after a "
                "restart (TDX always; SEV-SNP without /dev/sev-guest, e.g. the stand-in).",
            ),
        ] = "platform",
        default_role: Annotated[
            str | None,
            typer.Option(
                "--default-role",
                help="Workload role appraised for plain Trustee attesters (no 'teeflow' member "
                "in runtime-data); needs reference values in the agreement.",
            ),
        ] = None,
    ) -> None:
        """Run the KBS with TLS until interrupted (recovery mode when its state must be
        recovered from the parties' shares)."""
        from teeflow.kbs.api.recovery_runtime import RecoveryRuntime
        from teeflow.kbs.api.server import KbsRuntime, serve

        options = platform_options(platform, tsm_root, gramine_root)

        def recovering(rt: RecoveryRuntime, url: str) -> None:
            status = rt.coordinator.status()
            typer.secho(
                f"teeflow KBS at {url} in RECOVERY MODE ({status['reason']})",
                fg=typer.colors.YELLOW,
                err=True,
            )
            typer.echo(f"  recovery id {status['recovery_id']}")
            typer.echo(
                f"  waiting for {status['k']} of {status['n']} parties: "
                f"teeflow kbs recover {url} --party NAME --agreement FILE"
            )

        def ready(runtime: KbsRuntime, url: str) -> None:
            typer.echo(f"teeflow KBS for federation {runtime.federation} at {url}")
            typer.echo(f"  measurement     {runtime.measurement.hex()}")
            typer.echo(f"  tls_spki_sha256 {runtime.keys.tls_spki_sha256()}")
            typer.echo(f"  state           {runtime.state_dir}")
            typer.echo(f"  platform        {runtime.tee} (attester {runtime.attester})")
            warn_if_emulated(options)

        serve(
            db,
            listen=listen,
            platform=options,
            state_dir=state_dir,
            federation=federation,
            collateral_dirs=collateral_dir or [],
            log_level=log_level,
            on_ready=ready,
            on_recovery=recovering,
            sev_guest_dev=sev_guest_dev,
            expect_agreement=_agreement_digest(expect_agreement),
            insecure_first_agreement=insecure_first_agreement,
            sealing=sealing,
            default_role=default_role,
        )

    @kbs.command("verify")
    def verify_cmd(
        url: Annotated[str, typer.Argument(help="KBS base URL, https://HOST:PORT.")],
        reference_values: Annotated[
            Path | None,
            typer.Option(
                "--reference-values",
                help="KBS reference values: the agreement (workloads.kbs), {sgx|tdx|snp: ...} "
                "or one platform's values.",
            ),
        ] = None,
        expect_measurement: Annotated[
            list[str] | None,
            typer.Option(
                "--expect-measurement",
                help="Instead of --reference-values: an accepted KBS measurement (repeat): "
                "64 hex = SGX MRENCLAVE, 96 hex = TDX MRTD / SNP MEASUREMENT.",
            ),
        ] = None,
        allow_emulated: Annotated[
            bool, typer.Option("--allow-emulated", help="Accept an EMULATED KBS (development).")
        ] = False,
        output: Annotated[
            Path | None, typer.Option("-o", "--output", help="Pin file to write.")
        ] = None,
        expect_agreement: Annotated[
            str | None,
            typer.Option("--expect-agreement", help="Agreement digest the KBS must enforce."),
        ] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Verify the KBS's evidence and write its pin file."""
        from teeflow.kbs.client.pinning import (
            default_pin_path,
        )
        from teeflow.kbs.client.verification import verify_kbs
        from teeflow.kbs.policy.kbs_reference import (
            load_reference_values,
            reference_values_for_measurements,
        )

        expected = None
        if expect_agreement is not None:
            try:
                expected = bytes.fromhex(expect_agreement)
            except ValueError:
                raise KbsError("--expect-agreement must be 64 hex digits") from None
            if len(expected) != 32:
                raise KbsError("--expect-agreement must be 64 hex digits")
        if (reference_values is None) == (not expect_measurement):
            raise KbsError(
                "give the KBS reference values: --reference-values FILE (the agreement) or "
                "--expect-measurement HEX (not both)"
            )
        values = (
            load_reference_values(reference_values)
            if reference_values is not None
            else reference_values_for_measurements(expect_measurement or [])
        )
        pin = verify_kbs(
            url, values, allow_emulated=allow_emulated, expected_agreement_digest=expected
        )
        path = pin.save(output if output is not None else default_pin_path())
        if as_json:
            typer.echo(json.dumps({
                "url": pin.url, "federation": pin.federation, "tee": pin.tee,
                "measurement": pin.measurement, "tls_spki_sha256": pin.tls_spki_sha256,
                "agreement_digest": pin.agreement_digest, "emulated": pin.emulated,
                "pin": str(path),
            }, indent=2))
            return
        typer.echo(f"KBS at {pin.url} verified (federation {pin.federation})")
        typer.echo(f"  tee              {pin.tee}")
        typer.echo(f"  measurement      {pin.measurement}")
        typer.echo(f"  tls_spki_sha256  {pin.tls_spki_sha256}")
        typer.echo(f"  agreement        {pin.agreement_digest or '- (none yet)'}")
        if pin.emulated:
            typer.secho(
                "  !!! EMULATED TEE: the KBS has NO hardware protection !!!",
                fg=typer.colors.RED,
                bold=True,
            )
        typer.echo(f"pin written to {path}")

    @kbs.command("measurement")
    def measurement_cmd(
        manifest: Annotated[
            bool, typer.Option("--manifest", help="Print the KBS workload manifest (YAML).")
        ] = False,
        platform: Annotated[
            str | None,
            typer.Option(
                "--platform",
                help="Print the KBS reference values (workloads.kbs) for this platform: "
                "emulated-sgx MRENCLAVE, emulated-tdx MRTD, emulated-snp MEASUREMENT. "
                "Hardware platforms measure their image (docs/deploy.md).",
            ),
        ] = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print one JSON object (the values with --platform).")
        ] = False,
    ) -> None:
        """Print the KBS measurement of the installed teeflow (emulated MRENCLAVE), or with
        --platform its reference values for that platform."""
        import yaml

        from teeflow.kbs.service.self_attestation import kbs_manifest, kbs_reference_values
        from teeflow.workload.manifest import measurement

        if platform is not None:
            values = {"kbs": kbs_reference_values(platform)}
            if as_json:
                typer.echo(json.dumps(values, sort_keys=True))
            else:
                typer.echo(f"# workloads.kbs of the agreement for a KBS on {platform}")
                typer.echo(yaml.safe_dump(values, sort_keys=True), nl=False)
            return
        doc = kbs_manifest()
        if as_json:
            typer.echo(json.dumps({"measurement": measurement(doc).hex()}))
        elif manifest:
            typer.echo(doc.to_yaml(), nl=False)
        else:
            typer.echo(measurement(doc).hex())

    audit = typer.Typer(name="audit", help="The KBS audit log.")

    @audit.command("verify")
    def audit_verify(
        party: Annotated[str, typer.Option(
            "--party", help="Party whose key signs the reads (only parties may read the "
            "audit log; keys in $TEEFLOW_HOME/parties/NAME).")],
        pin: _PinOption = None,
        expect_head: Annotated[
            str | None,
            typer.Option("--expect-head", help="Hash (hex) the log must end with (truncation)."),
        ] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Fetch the audit log and verify its chain with the pinned audit key."""
        from teeflow.kbs.client.sdk import KbsClient
        from teeflow.kbs.policy.parties import PartyKeys
        from teeflow.kbs.service.audit import verify_audit_chain

        with KbsClient(None, _pin_path(pin), party=PartyKeys.load(party)) as client:
            entries = client.audit()
            if expect_head is not None:
                try:
                    head = bytes.fromhex(expect_head)
                except ValueError:
                    raise KbsError("--expect-head must be hex") from None
                verify_audit_chain(entries, client.pin.audit_public(), expected_head=head)
        denies = sum(1 for e in entries if e.decision == "deny")
        if as_json:
            typer.echo(json.dumps({
                "verified": True, "entries": len(entries), "denials": denies,
                "head_seq": entries[-1].seq if entries else None,
                "head_hash": entries[-1].hash.hex() if entries else None,
            }))
            return
        typer.echo(f"audit log verified: {len(entries)} entries ({denies} denials)")
        if entries:
            typer.echo(f"head seq {entries[-1].seq} hash {entries[-1].hash.hex()}")

    from teeflow.cli.kbs_audit_cmds import register_audit_show

    register_audit_show(audit, _pin_path)
    kbs.add_typer(audit, name="audit")
    from teeflow.cli.kbs_recovery_cmds import register_recovery

    register_recovery(kbs)
    app.add_typer(kbs, name="kbs")
