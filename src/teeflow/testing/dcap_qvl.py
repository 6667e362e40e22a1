"""Bridge to ``dcap-qvl`` (Phala's Rust DCAP verifier) for differential tests and benchmarks.

Only tests and ``bench/`` use this; ``dcap-qvl`` is a dev dependency.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["qvl_collateral_from_dir", "qvl_verdict"]


def _inner_json(body: str, key: str) -> str:
    start = body.index("{", body.index(f'"{key}"'))
    _, end = json.JSONDecoder().raw_decode(body, start)
    return body[start:end]


def qvl_collateral_from_dir(directory: Path) -> Any:
    """Build ``dcap_qvl.QuoteCollateralV3`` from an Intel PCS collateral directory.

    The directory has the layout of ``../shared/testdata/attestation/sgx/collateral/*``;
    the TCB Info and QE Identity strings are the exact signed inner objects.
    """
    import dcap_qvl

    tcb = (directory / "tcb_info.json").read_text()
    qe = (directory / "qe_identity.json").read_text()
    chain = (directory / "tcb_info_issuer_chain.pem").read_text()
    qe_chain_file = directory / "qe_identity_issuer_chain.pem"
    qe_chain = qe_chain_file.read_text() if qe_chain_file.is_file() else chain
    return dcap_qvl.QuoteCollateralV3(
        pck_crl_issuer_chain=(directory / "pck_crl_issuer_chain.pem").read_text(),
        root_ca_crl=(directory / "root_ca_crl.der").read_bytes(),
        pck_crl=(directory / "pck_crl.der").read_bytes(),
        tcb_info_issuer_chain=chain,
        tcb_info=_inner_json(tcb, "tcbInfo"),
        tcb_info_signature=bytes.fromhex(json.loads(tcb)["signature"]),
        qe_identity_issuer_chain=qe_chain,
        qe_identity=_inner_json(qe, "enclaveIdentity"),
        qe_identity_signature=bytes.fromhex(json.loads(qe)["signature"]),
    )


def qvl_verdict(
    raw: bytes, collateral: Any, now_secs: int, root_der: bytes | None = None
) -> tuple[bool, str | None]:
    """(accepted, TCB status) from dcap-qvl; any dcap-qvl error counts as a rejection."""
    import dcap_qvl

    try:
        if root_der is None:
            report = dcap_qvl.verify(raw, collateral, now_secs)
        else:
            report = dcap_qvl.verify_with_root_ca(raw, collateral, root_der, now_secs)
    except Exception:  # dcap-qvl raises ValueError, sometimes other types
        return False, None
    return True, str(report.status)
