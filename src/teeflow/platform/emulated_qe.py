"""The emulated Quoting Enclave: quote pieces shared by the SGX and TDX emulators.

Both :class:`~teeflow.platform.emulated.EmulatedSgx` (quote v3) and
:class:`~teeflow.platform.emulated_tdx.EmulatedTdx` (quote v4/v5) end their quotes with the
same QE block (Intel SGX ECDSA Quote Library API, Appendix A.4; Intel TDX DCAP Quoting
Library API, Appendix A.3.9):

* the QE report — an SGX report body (:func:`enclave_report`) with the emulated QE's
  MRENCLAVE / MRSIGNER / ISVPRODID / ISVSVN, CPUSVN = the emulated TCB components and
  REPORT_DATA = SHA-256(attestation key ``x||y`` || QE auth data) || 32 zero bytes;
* its ECDSA P-256 signature by the PCK leaf key (64 bytes ``r || s``);
* 32 random bytes of QE auth data and certification data type 5 (the PCK chain PEM).

:func:`qe_certification` builds that block. Nothing here is hardware evidence.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from teeflow.attestation.dcap.quote import (
    CERT_TYPE_PCK_CHAIN,
    CertificationData,
    EnclaveReport,
    QeReportCertificationData,
)
from teeflow.hazmat.ecdsa import p256_public_key_to_raw
from teeflow.platform.emulated_authority import (
    EMULATED_QE_ISVSVN,
    EMULATED_QE_MRSIGNER,
    EMULATED_TCB_COMPONENTS,
    AuthorityKeys,
    sign_p256_raw,
)
from teeflow.platform.emulated_collateral import QE_ATTRIBUTES

__all__ = ["enclave_report", "qe_certification"]


def enclave_report(
    *,
    attributes: bytes,
    mr_enclave: bytes,
    mr_signer: bytes,
    isv_prod_id: int,
    isv_svn: int,
    report_data: bytes,
) -> EnclaveReport:
    """An SGX report body (384 bytes when serialised) on the emulated platform: CPUSVN =
    the emulated TCB components, MISCSELECT 0, CONFIGID / ISVEXTPRODID / ISVFAMILYID zero.

    Args:
        attributes: 16 bytes (flags || XFRM); mr_enclave, mr_signer: 32 bytes each;
        isv_prod_id, isv_svn: 0..65535; report_data: 64 bytes.
    """
    return EnclaveReport(
        cpu_svn=bytes(EMULATED_TCB_COMPONENTS),
        misc_select=0,
        reserved1=bytes(12),
        isv_ext_prod_id=bytes(16),
        attributes=attributes,
        mr_enclave=mr_enclave,
        reserved2=bytes(32),
        mr_signer=mr_signer,
        reserved3=bytes(32),
        config_id=bytes(64),
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        config_svn=0,
        reserved4=bytes(42),
        isv_family_id=bytes(16),
        report_data=report_data,
    )


def qe_certification(
    keys: AuthorityKeys,
    pck_chain_pem: bytes,
    *,
    qe_mrenclave: bytes,
    qe_isv_prod_id: int,
    rng: Callable[[int], bytes],
) -> tuple[bytes, QeReportCertificationData]:
    """The QE block of a quote (module docstring) for the authority's attestation key.

    Args:
        keys: the emulation authority's keys (attestation key, PCK leaf key).
        pck_chain_pem: PEM chain PCK leaf, PCK CA, root (certification data type 5).
        qe_mrenclave: 32-byte MRENCLAVE of the QE (SGX QE or TD QE).
        qe_isv_prod_id: ISVPRODID of the QE (1 SGX QE, 2 TD QE).
        rng: source of the 32 bytes of QE auth data.

    Returns:
        ``(attestation public key x||y (64 bytes), QE report certification data)``.
    """
    att_pub = p256_public_key_to_raw(keys.attestation_key.public_key())
    qe_auth = rng(32)
    qe_report = enclave_report(
        attributes=QE_ATTRIBUTES,
        mr_enclave=qe_mrenclave,
        mr_signer=EMULATED_QE_MRSIGNER,
        isv_prod_id=qe_isv_prod_id,
        isv_svn=EMULATED_QE_ISVSVN,
        report_data=hashlib.sha256(att_pub + qe_auth).digest() + bytes(32),
    )
    qe_data = QeReportCertificationData(
        qe_report=qe_report,
        qe_report_signature=sign_p256_raw(keys.pck_key, qe_report.to_bytes()),
        qe_auth_data=qe_auth,
        certification_data=CertificationData(CERT_TYPE_PCK_CHAIN, pck_chain_pem),
    )
    return att_pub, qe_data
