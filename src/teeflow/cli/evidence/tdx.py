"""``quote show|verify`` for Intel TDX DCAP quotes (v4 TD report 1.0, v5 TD 1.0/1.5).

Pipeline: :func:`teeflow.attestation.tdx.parse_quote` → the verifier registry
(:func:`teeflow.attestation.registry.verify_primary`, i.e. :func:`teeflow.attestation.tdx.verify`:
Intel SGX Root CA + this machine's emulation root when it exists; TDX collateral from
``--collateral``; ``--crl``; ``--signatures-only``) → :func:`teeflow.attestation.tdx.appraise`
with a ``TdxPolicy`` (``--policy`` file + the same overrides as SGX).

A collateral directory without ``pck_crl_issuer_chain.pem`` (as published by some sources)
takes the PCK CRL's issuer chain from the quote's own PCK chain (PCK CA, root): the CRL's
signature is then checked against that CA, which is itself checked up to the pinned root.
Without ``tcb_info_issuer_chain.pem`` the shipped Intel TCB Signing certificate is used
(``IntelCollateral.from_bytes``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from teeflow.cli.evidence.common import Options, Outcome, load_crls, read_file
from teeflow.cli.evidence.sgx import dcap_anchors, pck_fmspc
from teeflow.errors import CollateralError, Error, ParseError

__all__ = ["load_tdx_collateral", "tdx_fields", "tdx_policy", "verify_tdx"]

_COLLATERAL_LIMIT = 1 << 20


def tdx_fields(quote: Any) -> dict[str, Any]:
    """The ``quote show`` fields of a TDX quote (TD report 1.0 / 1.5 members, hex)."""
    from teeflow.attestation.dcap.quote import TdReport15
    from teeflow.attestation.tdx.abi import is_debug, td_report

    body = td_report(quote)
    fields: dict[str, Any] = {
        "version": quote.header.version,
        "tee": "tdx",
        "tee_type": quote.header.tee_type,
        "att_key_type": quote.header.att_key_type,
        "qe_svn": quote.header.qe_svn,
        "pce_svn": quote.header.pce_svn,
        "qe_vendor_id": quote.header.qe_vendor_id.hex(),
        "td_report": "1.5" if isinstance(body, TdReport15) else "1.0",
        "mrtd": body.mr_td.hex(),
        "rtmrs": [r.hex() for r in body.rtmrs],
        "mrseam": body.mr_seam.hex(),
        "mrsignerseam": body.mr_signer_seam.hex(),
        "seam_attributes": body.seam_attributes.hex(),
        "td_attributes": body.td_attributes.hex(),
        "xfam": body.xfam.hex(),
        "tee_tcb_svn": body.tee_tcb_svn.hex(),
        "mrconfigid": body.mr_config_id.hex(),
        "mrowner": body.mr_owner.hex(),
        "mrownerconfig": body.mr_owner_config.hex(),
        "debug": is_debug(body),
        "report_data": body.report_data.hex(),
    }
    if isinstance(body, TdReport15):
        fields["tee_tcb_svn2"] = body.tee_tcb_svn2.hex()
        fields["mrservicetd"] = body.mr_service_td.hex()
    fields["pck_fmspc"] = pck_fmspc(quote)
    fields["parsed_length"] = quote.parsed_length
    fields["trailing_bytes"] = quote.trailing_bytes
    return fields


def tdx_policy(opts: Options) -> Any:
    """The ``TdxPolicy``: ``--policy`` file (or defaults) with the command-line overrides.

    Raises:
        ParseError: the policy file is malformed.
    """
    from teeflow.attestation.tdx import TdxPolicy

    policy = TdxPolicy.from_file(opts.policy_file) if opts.policy_file else TdxPolicy()
    updates: dict[str, Any] = {}
    if opts.accept_tcb:
        updates["accepted_tcb_statuses"] = set(opts.accept_tcb)
    if opts.accept_advisory:
        updates["accepted_advisories"] = set(opts.accept_advisory) | set(
            policy.accepted_advisories or ()
        )
    if opts.allow_emulated:
        updates["allow_emulated"] = True
    if opts.allow_debug:
        updates["allow_debug"] = True
    if opts.signatures_only:
        updates["require_collateral"] = False
    if updates:
        policy = TdxPolicy.model_validate({**policy.model_dump(), **updates})
    return policy


def load_tdx_collateral(directory: Path, quote: Any) -> Any:
    """``IntelCollateral`` from ``directory`` (see the module docstring for the fallbacks).

    Raises:
        CollateralError: a required file is missing or malformed.
        VerificationError: the quote's PCK chain is malformed (fallback issuer chain).
    """
    from cryptography.hazmat.primitives.serialization import Encoding

    from teeflow.attestation.dcap.collateral import IntelCollateral
    from teeflow.attestation.dcap.verify_common import decode_pck_chain

    if (directory / "pck_crl_issuer_chain.pem").is_file():
        return IntelCollateral.from_dir(directory)

    def need(name: str) -> bytes:
        path = directory / name
        if not path.is_file():
            raise CollateralError(f"collateral file missing: {path}")
        try:
            return read_file(path, "collateral file", _COLLATERAL_LIMIT)
        except ParseError as exc:
            raise CollateralError(str(exc)) from None

    def optional(name: str) -> bytes | None:
        return need(name) if (directory / name).is_file() else None

    certs = decode_pck_chain(quote.pck_chain_pem)
    return IntelCollateral.from_bytes(
        tcb_info=need("tcb_info.json"),
        qe_identity=need("qe_identity.json"),
        pck_crl=need("pck_crl.der"),
        root_ca_crl=need("root_ca_crl.der"),
        pck_crl_issuer_chain=b"".join(c.public_bytes(Encoding.PEM) for c in certs[1:]),
        tcb_info_issuer_chain=optional("tcb_info_issuer_chain.pem"),
        qe_identity_issuer_chain=optional("qe_identity_issuer_chain.pem"),
        source=str(directory),
    )


def verify_tdx(data: bytes, opts: Options) -> Outcome:
    """Parse, verify and appraise a TDX quote (never raises for evidence problems)."""
    from teeflow.attestation import tdx
    from teeflow.attestation.registry import verify_primary

    policy = tdx_policy(opts)
    crls = load_crls(opts.crl)
    out = Outcome()
    try:
        quote = tdx.parse_quote(data)
    except ParseError as exc:
        out.errors.append(f"parse: {exc}")
        return out
    out.fields = tdx_fields(quote)
    out.extra = _extra(out.fields, relaunch_advised=None)
    try:
        collateral = load_tdx_collateral(opts.collateral, quote) if opts.collateral else None
        verified = verify_primary(
            "tdx",
            data,
            anchors=dcap_anchors(),
            collateral=collateral,
            now=opts.at,
            crls=crls,
            signatures_only=opts.signatures_only,
        ).evidence
    except Error as exc:
        out.errors.append(f"{exc.code}: {exc}")
        return out
    out.verified = True
    out.emulated = verified.emulated
    out.tcb_status = str(verified.tcb_status) if verified.tcb_status else None
    out.qe_tcb_status = str(verified.qe_tcb.status) if verified.qe_tcb else None
    out.advisories = list(verified.advisory_ids)
    out.extra = _extra(
        out.fields,
        relaunch_advised=verified.relaunch_advised if verified.collateral_verified else None,
    )
    if verified.platform_tcb is not None:
        out.extra["platform_tcb_status"] = str(verified.platform_tcb.status)
    if verified.module_tcb is not None:
        out.extra["module_tcb_status"] = str(verified.module_tcb.status)
    out.extra["module_identity"] = verified.module_identity_id
    result = tdx.appraise(verified, policy)
    out.accepted = result.accepted
    out.status = str(result.status)
    out.tee = result.tee
    out.errors.extend(f"policy: {v}" for v in result.violations)
    return out


def _extra(fields: dict[str, Any], *, relaunch_advised: bool | None) -> dict[str, Any]:
    return {
        "mrtd": fields["mrtd"],
        "rtmrs": fields["rtmrs"],
        "mrseam": fields["mrseam"],
        "td_attributes": fields["td_attributes"],
        "xfam": fields["xfam"],
        "tee_tcb_svn": fields["tee_tcb_svn"],
        "relaunch_advised": relaunch_advised,
    }
