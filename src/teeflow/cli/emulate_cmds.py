"""``teeflow emulate quote|info|export|trust|tsm|gramine``: emulated platforms (NOT hardware).

``quote`` writes a real-format DCAP quote v3 for a workload manifest (or a raw measurement),
creating or refreshing ``$TEEFLOW_HOME/emulation`` on the way; ``--collateral-out DIR``
also writes the emulated collateral so ``teeflow quote verify --collateral DIR`` works.
``info`` shows where the emulation root lives, its fingerprint and the other sites' roots
this home trusts. ``export DIR`` writes this home's root certificate and public collateral;
``trust DIR`` (another site) trusts that root by its certificate — several sites under
emulation, no private key copied (:mod:`teeflow.platform.emulated_trust`). ``tsm DIR --tee
tdx|sev-snp`` and ``gramine DIR`` serve stand-ins of the kernel's configfs-tsm tree and of
Gramine's ``/dev/attestation`` (FUSE, :mod:`teeflow.testing.standins`) so the real attesters
run against emulated evidence (``--tsm-root DIR`` / ``--gramine-root DIR``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from teeflow.cli.output import JsonOption
from teeflow.errors import PlatformError
from teeflow.platform.emulated import EmulationAuthority, emulated_sgx_quote
from teeflow.platform.emulated_authority import atomic_write, teeflow_home
from teeflow.workload import WorkloadManifest, verify_trusted_files

__all__ = ["register"]

emulate_app = typer.Typer(
    help="Emulated platforms and interface stand-ins: real-format evidence under a local "
    "root (NOT hardware).",
    no_args_is_help=True,
)
console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

_BANNER = (
    "[bold red]EMULATED — not hardware.[/] Evidence from this root must never be trusted as a TEE."
)


def register(app: typer.Typer) -> None:
    """Add the ``emulate`` command group to the root app."""
    app.add_typer(emulate_app, name="emulate")


def _hex(value: str, what: str, max_len: int) -> bytes:
    text = value.strip().removeprefix("0x")
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise PlatformError(f"{what} is not hexadecimal") from None
    if len(data) > max_len:
        raise PlatformError(f"{what} must be at most {max_len} bytes, got {len(data)}")
    return data


@emulate_app.command("quote")
def quote_cmd(
    *,
    manifest_path: Annotated[
        Path | None,
        typer.Option(
            "--manifest", "-m", help="Workload manifest (default: $TEEFLOW_WORKLOAD_MANIFEST)."
        ),
    ] = None,
    measurement_hex: Annotated[
        str | None,
        typer.Option("--measurement", help="Raw 32-byte MRENCLAVE (hex) instead of a manifest."),
    ] = None,
    report_data_hex: Annotated[
        str, typer.Option("--report-data", help="REPORT_DATA, up to 64 bytes hex (zero-padded).")
    ] = "",
    output: Annotated[Path, typer.Option("-o", "--output", help="Quote file to write.")],
    collateral_out: Annotated[
        Path | None,
        typer.Option("--collateral-out", help="Also write the emulated collateral directory here."),
    ] = None,
    base_dir: Annotated[
        Path | None,
        typer.Option("--base-dir", help="Base directory of the manifest's trusted files."),
    ] = None,
    verify_files: Annotated[
        bool,
        typer.Option(
            "--verify-files/--no-verify-files", help="Re-hash trusted files before quoting."
        ),
    ] = True,
    isv_prod_id: Annotated[
        int, typer.Option("--isv-prod-id", help="ISVPRODID of the workload.")
    ] = 0,
    isv_svn: Annotated[int, typer.Option("--isv-svn", help="ISVSVN of the workload.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Produce an emulated SGX DCAP quote v3 for a workload."""
    report_data = _hex(report_data_hex, "--report-data", 64)
    manifest: WorkloadManifest | None = None
    measurement: bytes | None = None
    if measurement_hex is not None:
        if manifest_path is not None:
            raise PlatformError("give either --manifest or --measurement, not both")
        measurement = _hex(measurement_hex, "--measurement", 32)
        if len(measurement) != 32:
            raise PlatformError("--measurement must be 32 bytes (64 hex characters)")
    elif manifest_path is not None:
        manifest = WorkloadManifest.load(manifest_path)
        if verify_files:
            base = base_dir if base_dir is not None else manifest_path.resolve().parent
            verify_trusted_files(manifest, base)
    now = datetime.now(UTC)
    authority = EmulationAuthority.load_or_create(now=now)
    quote, mrenclave = emulated_sgx_quote(
        report_data,
        authority=authority,
        measurement=measurement,
        manifest=manifest,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
    )
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PlatformError(f"cannot create {output.parent}: {exc.strerror}") from None
    atomic_write(output, quote, mode=0o644)
    if collateral_out is not None:
        authority.write_collateral_dir(collateral_out, now)
    if as_json:
        typer.echo(json.dumps({
            "quote": str(output), "bytes": len(quote), "mrenclave": mrenclave.hex(),
            "mrsigner": authority.mrsigner.hex(), "emulated": True,
            "collateral": str(collateral_out) if collateral_out is not None else None,
        }))
        return
    err_console.print(_BANNER)
    console.print(f"wrote [bold]{output}[/] ({len(quote)} bytes)")
    console.print(f"mrenclave {mrenclave.hex()}")
    console.print(f"mrsigner  {authority.mrsigner.hex()}")
    if collateral_out is not None:
        console.print(f"collateral written to [bold]{collateral_out}[/]")


@emulate_app.command("export")
def export_cmd(
    *,
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="Folder to write the public bundle into.")
    ],
    as_json: JsonOption = False,
) -> None:
    """Write this home's emulation root certificate and public collateral (no private key)
    for other sites to trust with `teeflow emulate trust DIR`."""
    from teeflow.platform.emulated_trust import export_public

    fingerprint = export_public(directory, now=datetime.now(UTC))
    if as_json:
        typer.echo(json.dumps({"directory": str(directory), "root_sha256": fingerprint}))
        return
    err_console.print(_BANNER)
    console.print(f"wrote the public emulation bundle to [bold]{directory}[/]")
    console.print(f"root SHA-256 {fingerprint} (compare it with the other site out of band)")
    console.print(f"on each other site: teeflow emulate trust {directory}")


@emulate_app.command("trust")
def trust_cmd(
    *,
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="Bundle written by `teeflow emulate export`.")
    ],
    as_json: JsonOption = False,
) -> None:
    """Trust another site's emulation root by its certificate (EMULATED evidence only; the
    agreement must still say allow_emulated: true)."""
    from teeflow.platform.emulated_trust import trust_public

    root = trust_public(directory, now=datetime.now(UTC))
    until_by_tee = {
        tee: files.next_update.isoformat() for tee, files in sorted(root.collateral.items())
    }
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "root_sha256": root.fingerprint,
                    "stored": str(root.directory),
                    "collateral": until_by_tee,
                }
            )
        )
        return
    err_console.print(_BANNER)
    console.print(f"trusting emulation root {root.fingerprint} (stored in {root.directory})")
    for tee, until in until_by_tee.items():
        console.print(f"  {tee} collateral valid until {until} (export and trust again after)")


@emulate_app.command("info")
def info_cmd(
    *,
    as_json: JsonOption = False,
    create: Annotated[
        bool, typer.Option("--create", help="Create the emulation authority if it does not exist.")
    ] = False,
) -> None:
    """Show the emulation root: location, fingerprint, validity (EMULATED — not hardware)."""
    directory = teeflow_home() / "emulation"
    now = datetime.now(UTC)
    if create:
        EmulationAuthority.load_or_create(now=now)
    anchor = EmulationAuthority.existing_trust_anchor()
    if anchor is None:
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "directory": str(directory),
                        "exists": False,
                        "trusted_roots": _trusted_fingerprints(),
                    }
                )
            )
            return
        console.print(_BANNER)
        console.print(
            f"no emulation authority at {directory} "
            "(created by `teeflow emulate quote` or `teeflow emulate info --create`)"
        )
        _print_trusted()
        return
    authority = EmulationAuthority.load_or_create(now=now)
    files = authority.collateral_files(now)
    root = authority.root_certificate
    doc = {
        "directory": str(directory),
        "exists": True,
        "emulated": True,
        "root_subject": root.subject.rfc4514_string(),
        "root_sha256": authority.fingerprint,
        "root_not_after": root.not_valid_after_utc.isoformat(),
        "mrsigner": authority.mrsigner.hex(),
        "collateral_next_update": files.next_update.isoformat(),
        "trusted_roots": _trusted_fingerprints(),
    }
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    console.print(_BANNER)
    console.print(f"directory        {doc['directory']}")
    console.print(f"root subject     {doc['root_subject']}")
    console.print(f"root SHA-256     {doc['root_sha256']}")
    console.print(f"root valid until {doc['root_not_after']}")
    console.print(f"workload MRSIGNER {doc['mrsigner']}")
    console.print(f"collateral until {doc['collateral_next_update']}")
    _print_trusted()


def _trusted_fingerprints() -> list[str]:
    from teeflow.platform.emulated_trust import trusted_roots

    return [r.fingerprint for r in trusted_roots()]


def _print_trusted() -> None:
    from teeflow.platform.emulated_trust import trusted_roots

    for root in trusted_roots():
        console.print(f"trusted root     {root.fingerprint} ({root.directory})")


def _standin_measurement(
    measurement_hex: str | None, manifest_path: Path | None, base_dir: Path | None
) -> bytes:
    if (measurement_hex is None) == (manifest_path is None):
        raise PlatformError("give exactly one of --measurement HEX or --manifest FILE")
    if measurement_hex is not None:
        return _hex(measurement_hex, "--measurement", 48)
    from teeflow.workload import measurement as workload_measurement

    assert manifest_path is not None
    manifest = WorkloadManifest.load(manifest_path)
    if base_dir is not None:
        verify_trusted_files(manifest, base_dir)
    return workload_measurement(manifest)


def _serve(
    platform: str, mountpoint: Path, measurement: bytes, rtmrs: list[str], with_parent: bool
) -> None:
    from teeflow.testing.standins import build_standin, serve_standin

    values = [bytes(48)] * 4
    for spec in rtmrs:
        index, _, value = spec.partition("=")
        if index not in ("0", "1", "2", "3"):
            raise PlatformError("--rtmr takes I=HEX with I in 0..3")
        values[int(index)] = _hex(value, f"--rtmr {index}", 48).ljust(48, b"\x00")
    standin = build_standin(platform, measurement, rtmrs=values)
    err_console.print(
        f"[bold red]EMULATED — not hardware.[/] {standin.info['interface']} stand-in for "
        f"{platform} at {mountpoint} (evidence tee {standin.info['tee']}); stop with Ctrl-C"
    )
    serve_standin(standin, mountpoint, exit_with_parent=with_parent)


_MEASUREMENT_HELP = (
    "Measurement to present (hex): a 32-byte workload measurement, or for tdx/sev-snp the "
    "48-byte MRTD / MEASUREMENT itself."
)
_MANIFEST_HELP = "Workload manifest whose measurement to present (instead of --measurement)."
_PARENT_HELP = "Stop (and unmount) when the parent process exits (for launchers: demo, tests)."


@emulate_app.command("tsm")
def tsm_cmd(
    directory: Annotated[
        Path, typer.Argument(help="Empty folder to mount the report tree on (--tsm-root).")
    ],
    *,
    tee: Annotated[str, typer.Option("--tee", help="tdx or sev-snp (the provider).")],
    measurement_hex: Annotated[
        str | None, typer.Option("--measurement", help=_MEASUREMENT_HELP)
    ] = None,
    manifest_path: Annotated[
        Path | None, typer.Option("--manifest", "-m", help=_MANIFEST_HELP)
    ] = None,
    base_dir: Annotated[
        Path | None,
        typer.Option("--base-dir", help="Re-hash the manifest's trusted files under this folder."),
    ] = None,
    rtmr: Annotated[
        list[str] | None,
        typer.Option("--rtmr", help="TDX RTMR value I=HEX (I in 0..3; repeatable; default zero)."),
    ] = None,
    exit_with_parent: Annotated[
        bool, typer.Option("--exit-with-parent", help=_PARENT_HELP)
    ] = False,
) -> None:
    """Serve a configfs-tsm report tree (FUSE) answering inblob writes with EMULATED
    TDX quotes / SEV-SNP reports, until Ctrl-C or SIGTERM (then unmounted)."""
    if tee not in ("tdx", "sev-snp"):
        raise PlatformError(f"--tee must be tdx or sev-snp, not {tee!r}")
    if rtmr and tee != "tdx":
        raise PlatformError("--rtmr applies to --tee tdx only")
    m = _standin_measurement(measurement_hex, manifest_path, base_dir)
    _serve(tee, directory, m, rtmr or [], exit_with_parent)


@emulate_app.command("gramine")
def gramine_cmd(
    directory: Annotated[
        Path, typer.Argument(help="Empty folder to mount /dev/attestation on (--gramine-root).")
    ],
    *,
    measurement_hex: Annotated[
        str | None, typer.Option("--measurement", help="MRENCLAVE to present (32 bytes hex).")
    ] = None,
    manifest_path: Annotated[
        Path | None, typer.Option("--manifest", "-m", help=_MANIFEST_HELP)
    ] = None,
    base_dir: Annotated[
        Path | None,
        typer.Option("--base-dir", help="Re-hash the manifest's trusted files under this folder."),
    ] = None,
    exit_with_parent: Annotated[
        bool, typer.Option("--exit-with-parent", help=_PARENT_HELP)
    ] = False,
) -> None:
    """Serve a Gramine /dev/attestation tree (FUSE) with EMULATED DCAP quotes and sealing
    keys, until Ctrl-C or SIGTERM (then unmounted)."""
    m = _standin_measurement(measurement_hex, manifest_path, base_dir)
    _serve("gramine-sgx", directory, m, [], exit_with_parent)
