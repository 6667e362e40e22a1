"""``quote show|verify`` for Intel SGX DCAP quotes (the issue-2 §5 contract, unchanged).

Pipeline: :func:`teeflow.attestation.sgx.parse_quote` → the verifier registry
(:func:`teeflow.attestation.registry.verify_primary`, i.e. :func:`teeflow.attestation.sgx.verify`:
Intel SGX Root CA + this machine's emulation root, collateral from ``--collateral`` via
``IntelCollateral.from_dir``, extra ``--crl``) → :func:`teeflow.attestation.sgx.appraise`
with an ``SgxPolicy`` (``--policy`` file, then ``--accept-tcb``/``--accept-advisory``/
``--allow-emulated``/``--allow-debug``/``--signatures-only`` overrides).
"""

from __future__ import annotations

from typing import Any

from teeflow.cli.evidence.common import Options, Outcome, load_crls
from teeflow.errors import Error, ParseError

__all__ = ["dcap_anchors", "pck_fmspc", "quote_fields", "sgx_policy", "verify_sgx"]


def pck_fmspc(quote: Any) -> str | None:
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


def quote_fields(quote: Any) -> dict[str, Any]:
    """The ``quote show`` fields of an SGX quote (issue 2 §5)."""
    body = quote.body
    fields: dict[str, Any] = {
        "version": quote.header.version,
        "tee": "sgx" if quote.header.tee_type == 0 else f"0x{quote.header.tee_type:x}",
        "tee_type": quote.header.tee_type,
        "att_key_type": quote.header.att_key_type,
        "qe_svn": quote.header.qe_svn,
        "pce_svn": quote.header.pce_svn,
        "qe_vendor_id": quote.header.qe_vendor_id.hex(),
        "mrenclave": body.mr_enclave.hex(),
        "mrsigner": body.mr_signer.hex(),
        "isv_prod_id": body.isv_prod_id,
        "isv_svn": body.isv_svn,
        "attributes": body.attributes.hex(),
        "debug": bool(body.debug),
        "misc_select": body.misc_select,
        "cpu_svn": body.cpu_svn.hex(),
        "report_data": quote.report_data.hex(),
        "pck_fmspc": pck_fmspc(quote),
        "parsed_length": quote.parsed_length,
    }
    return fields


def dcap_anchors() -> list[Any]:
    """Intel SGX Root CA, plus this machine's emulation root when one exists (never created).

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


def sgx_policy(opts: Options) -> Any:
    """The ``SgxPolicy``: ``--policy`` file (or defaults) with the command-line overrides.

    Raises:
        ParseError: the policy file is malformed (from ``SgxPolicy.from_file``).
    """
    from teeflow.attestation.sgx.policy import SgxPolicy

    policy = SgxPolicy.from_file(opts.policy_file) if opts.policy_file else SgxPolicy()
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
        policy = SgxPolicy.model_validate({**policy.model_dump(), **updates})
    return policy


def verify_sgx(data: bytes, opts: Options) -> Outcome:
    """Parse, verify and appraise an SGX quote (never raises for evidence problems)."""
    from teeflow.attestation.dcap.collateral import IntelCollateral
    from teeflow.attestation.registry import verify_primary
    from teeflow.attestation.sgx import appraise, parse_quote

    policy = sgx_policy(opts)
    crls = load_crls(opts.crl)
    out = Outcome()
    try:
        quote = parse_quote(data)
    except ParseError as exc:
        out.errors.append(f"parse: {exc}")
        return out
    out.fields = quote_fields(quote)
    try:
        collateral = IntelCollateral.from_dir(opts.collateral) if opts.collateral else None
        verified = verify_primary(
            "sgx",
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
    result = appraise(verified, policy)
    out.accepted = result.accepted
    out.status = str(result.status)
    out.tee = result.tee
    out.errors.extend(f"policy: {v}" for v in result.violations)
    return out
