"""``quote show|verify`` for AMD SEV-SNP ATTESTATION_REPORTs (1184 bytes).

Pipeline: :func:`teeflow.attestation.snp.parse_report` → the verifier registry
(:func:`teeflow.attestation.registry.verify_primary`, i.e. :func:`teeflow.attestation.snp.verify`:
endorsement certificate from ``--certs``: a VCEK/VLEK, DER or PEM, optionally followed by
its ASK/ASVK and ARK; default intermediates and anchors: AMD's shipped ASK/ASVK and pinned
ARK of the product; ``--product``; one AMD KDS CRL with ``--crl``) →
:func:`teeflow.attestation.snp.appraise` with an ``SnpPolicy`` (``--policy`` file,
``--allow-debug``, ``--allow-emulated``).

Emulated reports: when ``$TEEFLOW_HOME/emulation/snp/`` exists (it is never created here)
and the endorsement certificate was issued by its emulated ASK, that emulated ARK is the
only anchor; without ``--certs`` a report whose CHIP_ID is the emulated platform's uses
the emulated VCEK. Appraisal denies emulated evidence unless ``--allow-emulated``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from teeflow.cli.evidence.common import Options, Outcome, read_file
from teeflow.errors import Error, ParseError

__all__ = ["EmulatedSnpAnchors", "existing_emulated_snp", "snp_fields", "verify_snp"]


@dataclass(frozen=True)
class EmulatedSnpAnchors:
    """The public half of this machine's emulated SEV-SNP platform."""

    anchor: Any  # TrustAnchor (emulated=True)
    ask: x509.Certificate
    vcek: x509.Certificate
    chip_id: bytes


def existing_emulated_snp() -> EmulatedSnpAnchors | None:
    """Read ``$TEEFLOW_HOME/emulation/snp`` (certificates only) without creating it.

    Returns None when absent or when it does not hold a teeflow emulated ARK.
    """
    from cryptography.hazmat.primitives import hashes

    from teeflow.attestation.trust import TrustAnchor
    from teeflow.platform.emulated_authority import teeflow_home
    from teeflow.platform.emulated_snp import EMULATED_ARK_CN

    directory = teeflow_home() / "emulation" / "snp"
    try:
        if not (directory / "authority.json").is_file():
            return None
        meta = json.loads((directory / "authority.json").read_text())
        ark, ask, vcek = (
            x509.load_pem_x509_certificate((directory / f"{n}.pem").read_bytes())
            for n in ("ark", "ask", "vcek")
        )
        chip_id = bytes.fromhex(meta["chip_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    cns = ark.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if not cns or cns[0].value != EMULATED_ARK_CN:
        return None
    fp = ark.fingerprint(hashes.SHA256()).hex()
    anchor = TrustAnchor(ark, name=f"{EMULATED_ARK_CN} ({fp[:16]})", emulated=True)
    return EmulatedSnpAnchors(anchor=anchor, ask=ask, vcek=vcek, chip_id=chip_id)


def snp_fields(report: Any) -> dict[str, Any]:
    """The ``quote show`` fields of an SEV-SNP report (hex byte strings, decoded policy/TCB)."""
    p = report.policy
    fields: dict[str, Any] = {
        "version": report.version,
        "tee": "snp",
        "guest_svn": report.guest_svn,
        "vmpl": report.vmpl,
        "signature_algo": report.signature_algo,
        "signing_key": report.signing_key.name,
        "product": str(report.product) if report.product is not None else None,
        "policy": f"{p.raw:#x}",
        "policy_decoded": {
            "abi_major": p.abi_major,
            "abi_minor": p.abi_minor,
            "smt_allowed": p.smt_allowed,
            "migrate_ma": p.migrate_ma,
            "debug_allowed": p.debug_allowed,
            "single_socket": p.single_socket,
        },
        "debug": bool(p.debug_allowed),
        "platform_info": f"{report.platform_info.raw:#x}",
        "measurement": report.measurement.hex(),
        "host_data": report.host_data.hex(),
        "id_key_digest": report.id_key_digest.hex(),
        "author_key_digest": report.author_key_digest.hex(),
        "family_id": report.family_id.hex(),
        "image_id": report.image_id.hex(),
        "report_id": report.report_id.hex(),
        "chip_id": report.chip_id.hex(),
        "report_data": report.report_data.hex(),
    }
    for name in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"):
        tcb = getattr(report, name)
        fields[name] = {"raw": f"{tcb.raw:#018x}", **tcb.components()}
    fields["current_fw"] = str(report.current_version)
    fields["committed_fw"] = str(report.committed_version)
    return fields


def _snp_policy(opts: Options) -> Any:
    from teeflow.attestation.snp import SnpPolicy

    policy = SnpPolicy.from_file(opts.policy_file) if opts.policy_file else SnpPolicy()
    updates: dict[str, Any] = {}
    if opts.allow_emulated:
        updates["allow_emulated"] = True
    if opts.allow_debug:
        updates["allow_debug"] = True
    return policy.model_copy(update=updates) if updates else policy


def _crl(opts: Options) -> x509.CertificateRevocationList | None:
    from teeflow.cli.evidence.common import load_crls

    crls = load_crls(opts.crl)
    if len(crls) > 1:
        raise ParseError("SEV-SNP takes one AMD KDS CRL (--crl given more than once)")
    return crls[0] if crls else None


def _endorsement(
    report: Any, opts: Options
) -> tuple[x509.Certificate, list[x509.Certificate] | None, list[Any] | None]:
    """(endorsement certificate, intermediates or None, anchors or None = AMD's)."""
    from teeflow.attestation.snp import load_certificates

    emulated = existing_emulated_snp()
    if opts.certs is None:
        if emulated is not None and report.chip_id == emulated.chip_id:
            return emulated.vcek, [emulated.ask], [emulated.anchor]
        raise ParseError("SEV-SNP evidence needs --certs (the VCEK or VLEK certificate)")
    certs = load_certificates(read_file(opts.certs, "certificate file", 64 * 1024))
    leaf, rest = certs[0], certs[1:] or None
    if emulated is not None and leaf.issuer == emulated.ask.subject:
        return leaf, rest or [emulated.ask], [emulated.anchor]
    return leaf, rest, None


def verify_snp(data: bytes, opts: Options) -> Outcome:
    """Parse, verify and appraise an SEV-SNP report (never raises for evidence problems)."""
    from teeflow.attestation.registry import SnpChain, verify_primary
    from teeflow.attestation.snp import appraise, parse_report

    policy = _snp_policy(opts)
    crl = _crl(opts)
    out = Outcome()
    try:
        report = parse_report(data)
    except ParseError as exc:
        out.errors.append(f"parse: {exc}")
        return out
    out.fields = snp_fields(report)
    out.extra = _extra(out.fields)
    try:
        leaf, intermediates, anchors = _endorsement(report, opts)
        verified = verify_primary(
            "snp",
            data,
            anchors=anchors or [],
            snp_endorsements=SnpChain(leaf, tuple(intermediates or ()), crl),
            now=opts.at,
            snp_product=opts.product,
        ).evidence
    except Error as exc:
        out.errors.append(f"{exc.code}: {exc}")
        return out
    out.verified = True
    out.emulated = verified.emulated
    out.extra.update(
        product=str(verified.product),
        signing_key=verified.signing_key.name,
        reported_tcb={"raw": f"{verified.reported_tcb.raw:#018x}"}
        | verified.reported_tcb.components(),
        crl_checked=verified.crl_checked,
    )
    result = appraise(verified, policy)
    out.accepted = result.accepted
    out.status = str(result.status)
    out.tee = result.tee
    out.errors.extend(f"policy: {v}" for v in result.violations)
    return out


def _extra(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "measurement": fields["measurement"],
        "host_data": fields["host_data"],
        "vmpl": fields["vmpl"],
        "policy": fields["policy"],
        "guest_svn": fields["guest_svn"],
        "reported_tcb": fields["reported_tcb"],
        "chip_id": fields["chip_id"],
        "signing_key": fields["signing_key"],
        "product": fields["product"],
    }
