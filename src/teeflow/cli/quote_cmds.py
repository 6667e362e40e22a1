"""``teeflow quote show|verify``: inspect and verify attestation evidence of any supported TEE.

The evidence type is detected from the file (:func:`teeflow.attestation.detect.detect_evidence`):
Intel SGX or TDX DCAP quote, AMD SEV-SNP report, NVIDIA GPU evidence (Trustee SPDM hex or
nvtrust JSON). ``verify`` runs the same parse -> verify -> appraise pipeline the KBS runs
and exits 0 only when the evidence is verified AND accepted by the appraisal policy, else 1.
``--json`` prints one object whose keys are those of the SGX contract (issue 2 §5) for
every type plus the type's own fields (see :mod:`teeflow.cli.evidence.common`). A file
whose type cannot be detected goes to the SGX pipeline, as before detection existed.
Documentation: ``docs/attestation.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from teeflow.cli.evidence.common import (
    MAX_EVIDENCE_BYTES,
    Options,
    Outcome,
    parse_time,
    read_file,
    reject_options,
    verify_report,
)
from teeflow.errors import ParseError

__all__ = ["register"]

quote_app = typer.Typer(
    help="Inspect and verify attestation evidence (SGX/TDX quotes, SEV-SNP reports, GPU)."
)
console = Console()

_NOT_FOR_DCAP = ("certs", "product", "nonce")
_NOT_FOR_SNP = ("collateral", "accept_tcb", "accept_advisory", "signatures_only", "nonce")
_NOT_FOR_GPU = (
    "collateral",
    "crl",
    "accept_tcb",
    "accept_advisory",
    "allow_debug",
    "signatures_only",
    "product",
)


def register(app: typer.Typer) -> None:
    """Add the ``quote`` command group to the root app."""
    app.add_typer(quote_app, name="quote")


def _detect(data: bytes) -> str | None:
    from teeflow.attestation.detect import detect_evidence

    try:
        return str(detect_evidence(data))
    except ParseError:
        return None


def _show_fields(data: bytes, kind: str | None) -> dict[str, Any]:
    """Parsed fields of ``data`` (raises ``ParseError`` when it does not parse)."""
    if kind == "tdx-quote":
        from teeflow.attestation.tdx import parse_quote as parse_tdx
        from teeflow.cli.evidence.tdx import tdx_fields

        return {"evidence_type": kind, **tdx_fields(parse_tdx(data))}
    if kind == "snp-report":
        from teeflow.attestation.snp import parse_report
        from teeflow.cli.evidence.snp import snp_fields

        return {"evidence_type": kind, **snp_fields(parse_report(data))}
    if kind == "nvidia-spdm-hex":
        from teeflow.attestation.nvidia import GpuEvidence, parse_transcript_hex
        from teeflow.cli.evidence.gpu import gpu_fields

        ev = GpuEvidence(parse_transcript_hex(data), b"", source="trustee")
        return {"evidence_type": kind, **gpu_fields(ev)}
    if kind in ("nvidia-nvtrust-json", "nvidia-trustee-json"):
        from teeflow.cli.evidence.gpu import gpu_fields, load_gpu_evidence

        gpus = [gpu_fields(ev) for ev in load_gpu_evidence(data, kind, None)]
        return {"evidence_type": kind, "tee": "nvidia-gpu", "gpu_count": len(gpus), "gpus": gpus}
    from teeflow.attestation.sgx import parse_quote as parse_sgx
    from teeflow.cli.evidence.sgx import quote_fields

    fields = quote_fields(parse_sgx(data))
    return {**fields, "evidence_type": kind} if kind else fields


@quote_app.command("show")
def show(
    file: Path = typer.Argument(..., help="Evidence file (quote, SNP report, GPU evidence)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Print the parsed fields of evidence (no verification); the type is detected."""
    data = read_file(file, "evidence", MAX_EVIDENCE_BYTES)
    kind = _detect(data)
    fields = _show_fields(data, kind)
    if as_json:
        typer.echo(json.dumps(fields, indent=2))
        return
    version = f" v{fields['version']}" if "version" in fields else ""
    table = Table(title=f"{file.name}: {kind or 'DCAP quote'}{version} ({fields['tee']})")
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for key, value in fields.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
    console.print(table)


def _run(data: bytes, kind: str | None, opts: Options) -> Outcome:
    if kind == "tdx-quote":
        from teeflow.cli.evidence.tdx import verify_tdx

        reject_options(kind, opts, _NOT_FOR_DCAP)
        return verify_tdx(data, opts)
    if kind == "snp-report":
        from teeflow.cli.evidence.snp import verify_snp

        reject_options(kind, opts, _NOT_FOR_SNP)
        return verify_snp(data, opts)
    if kind in ("nvidia-spdm-hex", "nvidia-nvtrust-json", "nvidia-trustee-json"):
        from teeflow.cli.evidence.gpu import verify_gpu

        reject_options(kind, opts, _NOT_FOR_GPU)
        return verify_gpu(data, kind, opts)
    from teeflow.cli.evidence.sgx import verify_sgx

    reject_options(kind or "sgx-quote", opts, _NOT_FOR_DCAP)
    return verify_sgx(data, opts)


@quote_app.command("verify")
def verify_cmd(
    file: Path = typer.Argument(..., help="Evidence file (quote, SNP report, GPU evidence)."),
    collateral: Path | None = typer.Option(
        None, "--collateral", help="SGX/TDX: directory of Intel PCS collateral (tcb_info.json…)."
    ),
    crl: list[Path] = typer.Option(
        [], "--crl", help="Extra CRL (DER or PEM); repeatable (SNP: one AMD KDS CRL)."
    ),
    at: str | None = typer.Option(None, "--at", help="Verification time, ISO 8601 (default: now)."),
    policy_file: Path | None = typer.Option(
        None, "--policy", help="Appraisal policy YAML/JSON (Sgx/Tdx/Snp/GpuPolicy by type)."
    ),
    accept_tcb: list[str] = typer.Option(
        [], "--accept-tcb", help="SGX/TDX: accepted TCB status (repeatable; default UpToDate)."
    ),
    accept_advisory: list[str] = typer.Option(
        [], "--accept-advisory", help="SGX/TDX: accepted Intel advisory ID (repeatable)."
    ),
    allow_emulated: bool = typer.Option(
        False, "--allow-emulated", help="Accept evidence from the teeflow emulated TEE."
    ),
    allow_debug: bool = typer.Option(
        False, "--allow-debug", help="Accept debug enclaves / TDs / SNP guests."
    ),
    signatures_only: bool = typer.Option(
        False,
        "--signatures-only",
        help="SGX/TDX without collateral: check quote, QE report and PCK chain only.",
    ),
    certs: Path | None = typer.Option(
        None,
        "--certs",
        help="SNP: VCEK/VLEK (PEM/DER, optionally + ASK/ARK); GPU hex: device PEM chain.",
    ),
    product: str | None = typer.Option(
        None, "--product", help="SNP: expected product line (Milan, Genoa, Turin)."
    ),
    nonce: str | None = typer.Option(
        None, "--nonce", help="GPU: the verifier's 32-byte nonce (hex) the evidence must carry."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Verify evidence and appraise it; exit 0 only when verified AND accepted."""
    opts = Options(
        collateral=collateral,
        crl=crl,
        at=parse_time(at),
        policy_file=policy_file,
        accept_tcb=accept_tcb,
        accept_advisory=accept_advisory,
        allow_emulated=allow_emulated,
        allow_debug=allow_debug,
        signatures_only=signatures_only,
        certs=certs,
        product=product,
        nonce=nonce,
    )
    data = read_file(file, "evidence", MAX_EVIDENCE_BYTES)
    kind = _detect(data)
    out = _run(data, kind, opts)
    default_tee = "sgx" if kind in (None, "sgx-quote") else None
    report = verify_report(out, opts.at, kind, default_tee)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_report(file, report)
    raise typer.Exit(0 if report["accepted"] else 1)


_HUMAN_KEYS = {
    "tdx-quote": ("mrtd", "rtmrs", "mrseam", "td_attributes", "relaunch_advised"),
    "snp-report": ("measurement", "host_data", "vmpl", "policy", "reported_tcb", "chip_id"),
    "nvidia-spdm-hex": ("arch", "fwid", "driver_version", "vbios_version", "nonce"),
    "nvidia-nvtrust-json": ("arch", "driver_version", "vbios_version", "nonce"),
    "nvidia-trustee-json": ("arch", "driver_version", "vbios_version", "nonce"),
}
_SGX_HUMAN = ("mrenclave", "mrsigner", "isv_prod_id", "isv_svn")


def _print_report(file: Path, report: dict[str, Any]) -> None:
    ok = report["accepted"]
    verdict = "[green]ACCEPTED[/]" if ok else "[red]REJECTED[/]"
    kind = report.get("evidence_type")
    console.print(f"{file.name}: {verdict}  (verified: {report['verified']}; {kind or 'sgx'})")
    if report["emulated"]:
        console.print("[bold yellow]EMULATED evidence — not hardware[/]")
    table = Table(show_header=False)
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    specific = _HUMAN_KEYS.get(kind or "", _SGX_HUMAN)
    keys = ("tee", "tcb_status", "qe_tcb_status", "advisories", *specific)
    for key in (*keys, "debug", "report_data", "pck_fmspc", "verified_at"):
        if key in report and (report[key] is not None or key in _SGX_HUMAN):
            value = report[key]
            table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
    for gpu in report.get("gpus", []):
        state = "ok" if gpu["accepted"] else ("verified" if gpu["verified"] else "FAILED")
        table.add_row(gpu["source"], f"{state}  fwid {gpu['fwid']}")
    console.print(table)
    for err in report["errors"]:
        console.print(f"  [red]✗[/] {err}", highlight=False)
