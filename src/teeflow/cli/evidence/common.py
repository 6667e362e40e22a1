"""Shared pieces of ``teeflow quote show|verify``: options, outcome, the JSON report.

Every evidence type produces an :class:`Outcome`; :func:`verify_report` turns it into the
one JSON object ``quote verify --json`` prints. Its keys are those of the SGX contract
(issue 2 §5: ``verified``, ``accepted``, ``tee``, ``tcb_status``, ``advisories``,
``mrenclave``, ``mrsigner``, ``isv_prod_id``, ``isv_svn``, ``report_data``, ``errors`` and
the SGX extras ``status``, ``emulated``, ``qe_tcb_status``, ``debug``, ``pck_fmspc``,
``verified_at``) for every type — ``null`` where a field does not apply — plus
``evidence_type`` and the type's own fields (``mrtd``/``rtmrs``… for TDX, ``measurement``…
for SNP, ``arch``/``fwid``… for GPUs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from cryptography import x509

from teeflow.errors import ParseError

__all__ = [
    "MAX_EVIDENCE_BYTES",
    "SGX_KEYS",
    "Options",
    "Outcome",
    "load_crls",
    "parse_time",
    "read_file",
    "reject_options",
    "verify_report",
]

#: Largest evidence file read (bytes; the nvtrust 8-GPU JSON is ~100 KiB).
MAX_EVIDENCE_BYTES = 4 << 20

#: Keys of the SGX JSON report (in order); present for every evidence type.
SGX_KEYS = (
    "verified",
    "accepted",
    "status",
    "tee",
    "emulated",
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
    "errors",
)


@dataclass
class Options:
    """The ``quote verify`` options, as given (each evidence type reads what applies)."""

    collateral: Path | None = None
    crl: list[Path] = field(default_factory=list)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    policy_file: Path | None = None
    accept_tcb: list[str] = field(default_factory=list)
    accept_advisory: list[str] = field(default_factory=list)
    allow_emulated: bool = False
    allow_debug: bool = False
    signatures_only: bool = False
    certs: Path | None = None
    product: str | None = None
    nonce: str | None = None


@dataclass
class Outcome:
    """What verification + appraisal found (``fields`` = the type's parsed fields)."""

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
    extra: dict[str, Any] = field(default_factory=dict)


def read_file(path: Path, what: str, limit: int = MAX_EVIDENCE_BYTES) -> bytes:
    """Read at most ``limit`` bytes of ``path``.

    Raises:
        ParseError: unreadable or larger than ``limit``.
    """
    try:
        size = path.stat().st_size
        if size > limit:
            raise ParseError(f"{path}: {size} bytes is larger than any {what} ({limit})")
        return path.read_bytes()
    except OSError as exc:
        raise ParseError(f"cannot read {path}: {exc.strerror}") from None


def parse_time(value: str | None) -> datetime:
    """``--at`` as an aware UTC datetime (default: now). Naive times are taken as UTC.

    Raises:
        typer.BadParameter: not ISO 8601.
    """
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


def load_crls(paths: list[Path]) -> list[x509.CertificateRevocationList]:
    """Load DER or PEM X.509 CRLs.

    Raises:
        ParseError: unreadable, or not a CRL.
    """
    crls = []
    for path in paths:
        data = read_file(path, "CRL", 1 << 20)
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                crls.append(x509.load_pem_x509_crl(data))
            else:
                crls.append(x509.load_der_x509_crl(data))
        except ValueError:
            raise ParseError(f"{path}: not a DER or PEM X.509 CRL") from None
    return crls


def reject_options(kind: str, opts: Options, names: tuple[str, ...]) -> None:
    """Refuse options that do not apply to ``kind`` (``names``: Options attributes).

    Raises:
        typer.BadParameter: one of them was given.
    """
    for name in names:
        value = getattr(opts, name)
        if value not in (None, False, []):
            flag = "--" + name.replace("_file", "").replace("_", "-")
            raise typer.BadParameter(f"{flag} does not apply to {kind} evidence")


def verify_report(
    out: Outcome, at: datetime, kind: str | None, default_tee: str | None = None
) -> dict[str, Any]:
    """The ``quote verify --json`` object (see the module docstring for the keys)."""
    f = out.fields
    report: dict[str, Any] = {
        "verified": out.verified,
        "accepted": out.verified and out.accepted,
        "status": out.status,
        "tee": out.tee or f.get("tee", default_tee),
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
    if kind is not None:
        report["evidence_type"] = kind
    report.update(out.extra)
    return report
