"""``teeflow quote show|verify``: inspect and verify Intel DCAP SGX quotes.

``verify`` runs the same parse -> verify -> appraise pipeline the KBS runs and exits 0
only when the quote is verified AND accepted by the appraisal policy. ``--json`` prints
one object with stable keys (see :func:`_verify_report`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from cryptography import x509
from rich.console import Console
from rich.table import Table

from teeflow.errors import Error, ParseError

__all__ = ["register"]

quote_app = typer.Typer(help="Inspect and verify attestation evidence (Intel SGX DCAP quotes).")
console = Console()

MAX_EVIDENCE_BYTES = 1 << 20


def register(app: typer.Typer) -> None:
    """Add the ``quote`` command group to the root app."""
    app.add_typer(quote_app, name="quote")


def _read_evidence(path: Path) -> bytes:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ParseError(f"cannot read {path}: {exc.strerror}") from None
    if size > MAX_EVIDENCE_BYTES:
        raise ParseError(f"{path}: {size} bytes is larger than any quote ({MAX_EVIDENCE_BYTES})")
    return path.read_bytes()


def _parse_time(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"not an ISO 8601 time: {value!r}") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC)


def _pck_fmspc(quote: Any) -> str | None:
    """FMSPC from the PCK leaf certificate, or None when the chain cannot be read."""
    from teeflow.attestation.dcap.chain import load_pem_chain
    from teeflow.attestation.dcap.pck import parse_pck_extensions

    try:
        pem = quote.pck_chain_pem
        if not pem:
            return None
        certs = load_pem_chain(bytes(pem).rstrip(b"\0"))
        return parse_pck_extensions(certs[0]).fmspc.hex()
    except (Error, ValueError):
        return None


def _quote_fields(quote: Any) -> dict[str, Any]:
    body = quote.body
    fields: dict[str, Any] = {
        "version": quote.header.version,
        "tee": "sgx" if quote.header.tee_type == 0 else f"0x{quote.header.tee_type:x}",
        "tee_type": quote.header.tee_type,
        "att_key_type": quote.header.att_key_type,
        "qe_svn": quote.header.qe_svn,
        "pce_svn": quote.header.pce_svn,
        "qe_vendor_id": quote.header.qe_vendor_id.hex(),
    }
    if hasattr(body, "mr_enclave"):
        fields.update(
            mrenclave=body.mr_enclave.hex(),
            mrsigner=body.mr_signer.hex(),
            isv_prod_id=body.isv_prod_id,
            isv_svn=body.isv_svn,
            attributes=body.attributes.hex(),
            debug=bool(body.debug),
            misc_select=body.misc_select,
            cpu_svn=body.cpu_svn.hex(),
        )
    else:
        for name in ("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_seam", "td_attributes"):
            if hasattr(body, name):
                fields[name.replace("_", "")] = getattr(body, name).hex()
    fields["report_data"] = quote.report_data.hex()
    fields["pck_fmspc"] = _pck_fmspc(quote)
    fields["parsed_length"] = quote.parsed_length
    return fields


@quote_app.command("show")
def show(
    file: Path = typer.Argument(..., help="Quote file (binary DCAP quote)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Print the parsed fields of a quote (no verification)."""
    from teeflow.attestation.dcap.quote import parse_quote

    quote = parse_quote(_read_evidence(file))
    fields = _quote_fields(quote)
    if as_json:
        typer.echo(json.dumps(fields, indent=2))
        return
    table = Table(title=f"{file.name}: DCAP quote v{fields['version']} ({fields['tee']})")
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for key, value in fields.items():
        table.add_row(key, str(value))
    console.print(table)


@dataclass
class _Outcome:
    verified: bool = False
    accepted: bool = False
    errors: list[str] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    tcb_status: str | None = None
    qe_tcb_status: str | None = None
    advisories: list[str] = field(default_factory=list)
    emulated: bool = False
    status: str | None = None
    tee: str | None = None


def _anchors() -> list[Any]:
    """Intel SGX Root CA, plus this machine's emulation root when one exists.

    The emulation root is trusted only to *verify*; appraisal denies emulated evidence
    unless the policy allows it.
    """
    from teeflow.attestation.trust import intel_sgx_root_ca

    anchors: list[Any] = [intel_sgx_root_ca()]
    try:
        from teeflow.platform.emulated import EmulationAuthority

        existing = EmulationAuthority.existing_trust_anchor()
        if existing is not None:
            anchors.append(existing)
    except (ImportError, AttributeError, Error):
        pass
    return anchors


def _load_crls(paths: list[Path]) -> list[x509.CertificateRevocationList]:
    crls = []
    for path in paths:
        data = path.read_bytes()
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                crls.append(x509.load_pem_x509_crl(data))
            else:
                crls.append(x509.load_der_x509_crl(data))
        except ValueError:
            raise ParseError(f"{path}: not a DER or PEM X.509 CRL") from None
    return crls


def _load_policy(
    policy_file: Path | None,
    accept_tcb: list[str],
    accept_advisory: list[str],
    allow_emulated: bool,
    allow_debug: bool,
    signatures_only: bool,
) -> Any:
    from teeflow.attestation.sgx.policy import SgxPolicy

    policy = SgxPolicy.from_file(policy_file) if policy_file else SgxPolicy()
    updates: dict[str, Any] = {}
    if accept_tcb:
        updates["accepted_tcb_statuses"] = set(accept_tcb)
    if accept_advisory:
        updates["accepted_advisories"] = set(accept_advisory) | set(
            policy.accepted_advisories or ()
        )
    if allow_emulated:
        updates["allow_emulated"] = True
    if allow_debug:
        updates["allow_debug"] = True
    if signatures_only:
        updates["require_collateral"] = False
    if updates:
        policy = SgxPolicy.model_validate({**policy.model_dump(), **updates})
    return policy


def _run_verify(
    data: bytes,
    *,
    collateral_dir: Path | None,
    crls: list[x509.CertificateRevocationList],
    at: datetime,
    policy: Any,
    signatures_only: bool,
) -> _Outcome:
    from teeflow.attestation.dcap.collateral import IntelCollateral
    from teeflow.attestation.sgx import appraise, parse_quote, verify

    out = _Outcome()
    try:
        quote = parse_quote(data)
    except ParseError as exc:
        out.errors.append(f"parse: {exc}")
        return out
    out.fields = _quote_fields(quote)
    try:
        collateral = IntelCollateral.from_dir(collateral_dir) if collateral_dir else None
        verified = verify(
            quote,
            anchors=_anchors(),
            collateral=collateral,
            now=at,
            crls=crls,
            signatures_only=signatures_only and collateral is None,
        )
    except Error as exc:
        out.errors.append(f"{exc.code}: {exc}")
        return out
    out.verified = True
    out.emulated = verified.emulated
    out.tcb_status = str(verified.tcb_status) if verified.tcb_status else None
    out.qe_tcb_status = str(verified.qe_tcb.status) if verified.qe_tcb else None
    out.advisories = list(verified.advisory_ids)
    result = appraise(verified, policy)
    out.accepted = result.accepted
    out.status = str(result.status)
    out.tee = result.tee
    out.errors.extend(f"policy: {v}" for v in result.violations)
    return out


def _verify_report(out: _Outcome, at: datetime) -> dict[str, Any]:
    f = out.fields
    return {
        "verified": out.verified,
        "accepted": out.verified and out.accepted,
        "status": out.status,
        "tee": out.tee or f.get("tee", "sgx"),
        "emulated": out.emulated,
        "tcb_status": out.tcb_status,
        "qe_tcb_status": out.qe_tcb_status,
        "advisories": out.advisories,
        "mrenclave": f.get("mrenclave"),
        "mrsigner": f.get("mrsigner"),
        "isv_prod_id": f.get("isv_prod_id"),
        "isv_svn": f.get("isv_svn"),
        "debug": f.get("debug"),
        "report_data": f.get("report_data"),
        "pck_fmspc": f.get("pck_fmspc"),
        "verified_at": at.isoformat().replace("+00:00", "Z"),
        "errors": out.errors,
    }


@quote_app.command("verify")
def verify_cmd(
    file: Path = typer.Argument(..., help="Quote file (binary DCAP quote)."),
    collateral: Path | None = typer.Option(
        None, "--collateral", help="Directory of Intel PCS collateral (tcb_info.json, ...)."
    ),
    crl: list[Path] = typer.Option([], "--crl", help="Extra CRL (DER or PEM); repeatable."),
    at: str | None = typer.Option(None, "--at", help="Verification time, ISO 8601 (default: now)."),
    policy_file: Path | None = typer.Option(None, "--policy", help="SgxPolicy YAML/JSON file."),
    accept_tcb: list[str] = typer.Option(
        [], "--accept-tcb", help="Accepted TCB status (repeatable; default UpToDate)."
    ),
    accept_advisory: list[str] = typer.Option(
        [], "--accept-advisory", help="Accepted Intel advisory ID (repeatable)."
    ),
    allow_emulated: bool = typer.Option(
        False, "--allow-emulated", help="Accept evidence from the teeflow emulated TEE."
    ),
    allow_debug: bool = typer.Option(False, "--allow-debug", help="Accept debug enclaves."),
    signatures_only: bool = typer.Option(
        False,
        "--signatures-only",
        help="Without collateral: check quote, QE report and PCK chain only (tcb_status null).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Verify a quote and appraise it; exit 0 only when verified AND accepted."""
    when = _parse_time(at)
    policy = _load_policy(
        policy_file, accept_tcb, accept_advisory, allow_emulated, allow_debug, signatures_only
    )
    crls = _load_crls(crl)
    out = _run_verify(
        _read_evidence(file),
        collateral_dir=collateral,
        crls=crls,
        at=when,
        policy=policy,
        signatures_only=signatures_only,
    )
    report = _verify_report(out, when)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_report(file, report)
    raise typer.Exit(0 if report["accepted"] else 1)


def _print_report(file: Path, report: dict[str, Any]) -> None:
    ok = report["accepted"]
    verdict = "[green]ACCEPTED[/]" if ok else "[red]REJECTED[/]"
    console.print(f"{file.name}: {verdict}  (verified: {report['verified']})")
    if report["emulated"]:
        console.print("[bold yellow]EMULATED evidence — not hardware[/]")
    table = Table(show_header=False)
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key in (
        "tcb_status",
        "qe_tcb_status",
        "advisories",
        "mrenclave",
        "mrsigner",
        "isv_prod_id",
        "isv_svn",
        "debug",
        "report_data",
        "pck_fmspc",
        "verified_at",
    ):
        table.add_row(key, str(report[key]))
    console.print(table)
    for err in report["errors"]:
        console.print(f"  [red]✗[/] {err}", highlight=False)
