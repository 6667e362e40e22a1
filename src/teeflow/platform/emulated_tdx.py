"""Emulated TDX platform: real-format Intel DCAP TDX quotes under the local emulation root.

:class:`EmulatedTdx` is the TDX counterpart of :class:`~teeflow.platform.emulated.EmulatedSgx`:
``quote(report_data)`` returns an Intel DCAP quote v4 with a TD report 1.0 (Intel TDX DCAP
Quoting Library API, Appendix A.3) — or v5 with a TD report 1.5 (A.4, body type 3) when
``tee_tcb_svn2`` is given — signed under the *same* :class:`EmulationAuthority` keys and
PCK chain as the emulated SGX quotes, so that

    ``teeflow.attestation.tdx.verify(parse_quote(q), anchors=[authority.trust_anchor()],
    collateral=tdx.collateral(now), now=now)``

accepts it and the Intel root alone rejects it. Nothing produced here is hardware
evidence; the default :class:`~teeflow.attestation.tdx.TdxPolicy` denies it.

Quote contents: header v4 (or v5), att_key_type 2, tee_type 0x81, qe_svn = pce_svn = 0
(reserved for TDX), Intel's QE vendor id; TD report with the given MRTD / RTMRs /
MRCONFIGID / MROWNER / MROWNERCONFIG, TD_ATTRIBUTES (default: SEPT_VE_DISABLE only, DEBUG
clear), XFAM 0x61ae7 (x87, SSE, AVX, AVX-512 state, PK, CET), MRSEAM = SHA-384 of a fixed
label, MRSIGNERSEAM all zero and SEAMATTRIBUTES zero (as Intel-signed modules), TEE_TCB_SVN
(default module ISV SVN 3, module version 1); quote signature by the attestation key over
``header || [v5 descriptor] || body``; signature data = certification data type 6 holding
the emulated TD QE report (ISVPRODID 2, REPORT_DATA = SHA-256(attestation key || QE auth
data) || 32 zero bytes) signed by the PCK leaf key, 32 bytes of QE auth data and
certification data type 5 (PEM chain: PCK leaf, PCK CA, root).

Collateral (:func:`make_tdx_collateral_files`, Intel "SGX and TDX PCS API" shapes): TCB
Info ``id`` "TDX" ``version`` 3 with the emulated FMSPC / PCE-ID, one ``UpToDate`` level
(SGX components + PCESVN of the emulated PCK certificate, ``tdxtcbcomponents`` = the TEE
TCB SVN), ``tdxModule`` and ``tdxModuleIdentities`` (``TDX_<version>``); Enclave Identity
``id`` "TD_QE"; the PCK and Root CA CRLs and issuer chains of
:func:`~teeflow.platform.emulated_collateral.make_collateral_files`. All signed by the
authority's TCB Signing key; regenerated in memory when stale (not persisted).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from datetime import datetime

from teeflow.attestation.dcap.collateral import IntelCollateral
from teeflow.attestation.dcap.quote import (
    ATT_KEY_TYPE_ECDSA_P256,
    BODY_TYPE_TD10,
    BODY_TYPE_TD15,
    CERT_TYPE_QE_REPORT,
    INTEL_QE_VENDOR_ID,
    TEE_TYPE_TDX,
    Quote,
    QuoteHeader,
    QuoteSignatureData,
    TdReport10,
    TdReport15,
)
from teeflow.attestation.evidence import Evidence
from teeflow.errors import PlatformError
from teeflow.platform.base import pad_report_data
from teeflow.platform.emulated import EmulationAuthority
from teeflow.platform.emulated_authority import (
    AuthorityKeys,
    resolve_now,
    sign_p256_raw,
)
from teeflow.platform.emulated_collateral import (
    CollateralFiles,
    collateral_from_files,
    make_collateral_files,
    pcs_timestamp,
    qe_identity_document,
    sign_pcs_document,
    tcb_info_document,
)
from teeflow.platform.emulated_qe import qe_certification

__all__ = [
    "DEFAULT_TD_ATTRIBUTES",
    "DEFAULT_XFAM",
    "EMULATED_MRSEAM",
    "EMULATED_TD_QE_ISVPRODID",
    "EMULATED_TD_QE_MRENCLAVE",
    "EMULATED_TEE_TCB_SVN",
    "EmulatedTdx",
    "make_tdx_collateral_files",
]

#: MRSEAM of the emulated TDX module (SHA-384 of a fixed label; 48 bytes).
EMULATED_MRSEAM = hashlib.sha384(b"teeflow emulated TDX module v1").digest()
#: MRSIGNERSEAM: all zero, as for Intel-signed TDX modules.
EMULATED_MRSIGNERSEAM = bytes(48)
#: TEE_TCB_SVN: module ISV SVN 3, module major version 1 (identity TDX_01), then zeros.
EMULATED_TEE_TCB_SVN = bytes([3, 1]) + bytes(14)
#: TD_ATTRIBUTES as stored (little-endian u64): SEPT_VE_DISABLE (bit 28); DEBUG clear.
DEFAULT_TD_ATTRIBUTES = (1 << 28).to_bytes(8, "little")
#: XFAM as stored (little-endian u64) 0x61ae7, as on common TDX guests.
DEFAULT_XFAM = (0x61AE7).to_bytes(8, "little")
EMULATED_TD_QE_MRENCLAVE = hashlib.sha256(b"teeflow emulated TD quoting enclave v1").digest()
#: ISVPRODID of the TD Quoting Enclave (Intel's TD QE uses 2).
EMULATED_TD_QE_ISVPRODID = 2

_ModuleLevels = Sequence[tuple[int, str]]


def make_tdx_collateral_files(
    keys: AuthorityKeys,
    now: datetime,
    *,
    tee_tcb_svn: bytes = EMULATED_TEE_TCB_SVN,
    module_levels: _ModuleLevels | None = None,
    platform_status: str = "UpToDate",
) -> CollateralFiles:
    """Generate a TDX collateral set (module docstring) issued at ``now``.

    Args:
        keys: the emulation authority's keys.
        now: issue time (timezone-aware).
        tee_tcb_svn: the 16-byte TEE_TCB_SVN the single platform level is built for
            (``tdxtcbcomponents``); byte 1 names the module identity ``TDX_<byte 1>``.
        module_levels: ``(isvsvn, status)`` levels of that module identity, newest first
            (default: one ``UpToDate`` level at ``tee_tcb_svn[0]``).
        platform_status: status of the platform TCB level.

    Raises:
        PlatformError: as :func:`~teeflow.platform.emulated_collateral.make_collateral_files`,
            or a malformed ``tee_tcb_svn``.
    """
    if len(tee_tcb_svn) != 16:
        raise PlatformError("tee_tcb_svn must be 16 bytes")
    base = make_collateral_files(keys, now)
    issue, nxt = base.issue_date, base.next_update
    tcb_date = pcs_timestamp(keys.root_ca.not_valid_before_utc)
    levels = module_levels if module_levels is not None else ((tee_tcb_svn[0], "UpToDate"),)
    module = {
        "mrsigner": EMULATED_MRSIGNERSEAM.hex().upper(),
        "attributes": "0000000000000000",
        "attributesMask": "FFFFFFFFFFFFFFFF",
    }
    tcb_info = tcb_info_document(
        "TDX",
        issue,
        nxt,
        tcb_date,
        status=platform_status,
        extra_tcb={"tdxtcbcomponents": [{"svn": c} for c in tee_tcb_svn]},
        extra_fields={
            "tdxModule": module,
            "tdxModuleIdentities": [
                {
                    "id": f"TDX_{tee_tcb_svn[1]:02X}",
                    **module,
                    "tcbLevels": [
                        {"tcb": {"isvsvn": isvsvn}, "tcbDate": tcb_date, "tcbStatus": status}
                        for isvsvn, status in levels
                    ],
                }
            ],
        },
    )
    qe_identity = qe_identity_document("TD_QE", EMULATED_TD_QE_ISVPRODID, issue, nxt, tcb_date)
    files = dict(base.files)
    signing_key = keys.tcb_signing_key
    files["tcb_info.json"] = sign_pcs_document("tcbInfo", tcb_info, signing_key)
    files["qe_identity.json"] = sign_pcs_document("enclaveIdentity", qe_identity, signing_key)
    return CollateralFiles(files=files, issue_date=issue, next_update=nxt)


def _check_len(name: str, value: bytes, size: int) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != size:
        raise PlatformError(f"{name} must be {size} bytes")
    return bytes(value)


class EmulatedTdx:
    """Emulated TDX Attester producing real-format DCAP TDX quotes (see module docstring).

    Args:
        authority: the emulation authority (default: ``EmulationAuthority.load_or_create()``).
        mrtd: the TD's 48-byte build-time measurement (MRTD).
        rtmrs: RTMR0..RTMR3, four 48-byte values (default all zero).
        mrconfigid, mrowner, mrownerconfig: 48 bytes each (default zero).
        td_attributes, xfam: 8 bytes each as stored (defaults :data:`DEFAULT_TD_ATTRIBUTES`,
            :data:`DEFAULT_XFAM`).
        tee_tcb_svn: 16 bytes (default :data:`EMULATED_TEE_TCB_SVN`).
        tee_tcb_svn2: 16 bytes for a v5 quote with a TD report 1.5 (MRSERVICETD zero);
            None (default) for a v4 quote with a TD report 1.0.
        mrseam: 48 bytes (default :data:`EMULATED_MRSEAM`).
        module_levels: TDX module identity levels of the emulated collateral (see
            :func:`make_tdx_collateral_files`).
        rng: source of the QE auth data.

    Raises:
        PlatformError: a field has the wrong length.
    """

    def __init__(
        self,
        authority: EmulationAuthority | None = None,
        *,
        mrtd: bytes,
        rtmrs: Sequence[bytes] = (bytes(48),) * 4,
        mrconfigid: bytes = bytes(48),
        mrowner: bytes = bytes(48),
        mrownerconfig: bytes = bytes(48),
        td_attributes: bytes = DEFAULT_TD_ATTRIBUTES,
        xfam: bytes = DEFAULT_XFAM,
        tee_tcb_svn: bytes = EMULATED_TEE_TCB_SVN,
        tee_tcb_svn2: bytes | None = None,
        mrseam: bytes = EMULATED_MRSEAM,
        module_levels: _ModuleLevels | None = None,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if len(rtmrs) != 4:
            raise PlatformError("rtmrs must be four 48-byte values")
        self.mrtd = _check_len("mrtd", mrtd, 48)
        self.rtmrs = tuple(_check_len(f"rtmr{i}", r, 48) for i, r in enumerate(rtmrs))
        self.mrconfigid = _check_len("mrconfigid", mrconfigid, 48)
        self.mrowner = _check_len("mrowner", mrowner, 48)
        self.mrownerconfig = _check_len("mrownerconfig", mrownerconfig, 48)
        self.td_attributes = _check_len("td_attributes", td_attributes, 8)
        self.xfam = _check_len("xfam", xfam, 8)
        self.tee_tcb_svn = _check_len("tee_tcb_svn", tee_tcb_svn, 16)
        self.tee_tcb_svn2 = (
            None if tee_tcb_svn2 is None else _check_len("tee_tcb_svn2", tee_tcb_svn2, 16)
        )
        self.mrseam = _check_len("mrseam", mrseam, 48)
        self.module_levels = tuple(module_levels) if module_levels is not None else None
        self.authority = authority if authority is not None else EmulationAuthority.load_or_create()
        self._rng = rng
        self._lock = threading.Lock()
        self._cache: tuple[CollateralFiles, IntelCollateral] | None = None

    #: Attester protocol (teeflow.platform.base.Attester): the RCAR ``tee`` name.
    tee = "emulated-tdx"
    #: Attester protocol: the attester kind.
    kind = "emulated"

    def evidence(self, report_data: bytes) -> Evidence:
        """Attester protocol: :meth:`quote` as :class:`Evidence` (``emulated-tdx``).

        Raises:
            PlatformError: as :meth:`quote`.
        """
        return Evidence(self.tee, self.quote(report_data), self.kind)

    def collateral(self, now: datetime | None = None) -> IntelCollateral:
        """Emulated TDX collateral valid at ``now`` (default: the wall clock), cached.

        Raises:
            PlatformError: ``now`` is naive or outside the authority's certificate validity.
        """
        t = resolve_now(now)
        with self._lock:
            if self._cache is None or not self._cache[0].fresh_at(t):
                files = make_tdx_collateral_files(
                    self.authority.keys,
                    t,
                    tee_tcb_svn=self.tee_tcb_svn,
                    module_levels=self.module_levels,
                )
                self._cache = (files, collateral_from_files(files, source="emulated-tdx"))
            return self._cache[1]

    def _td_report(self, report_data: bytes) -> TdReport10:
        fields = {
            "tee_tcb_svn": self.tee_tcb_svn,
            "mr_seam": self.mrseam,
            "mr_signer_seam": EMULATED_MRSIGNERSEAM,
            "seam_attributes": bytes(8),
            "td_attributes": self.td_attributes,
            "xfam": self.xfam,
            "mr_td": self.mrtd,
            "mr_config_id": self.mrconfigid,
            "mr_owner": self.mrowner,
            "mr_owner_config": self.mrownerconfig,
            "rtmr0": self.rtmrs[0],
            "rtmr1": self.rtmrs[1],
            "rtmr2": self.rtmrs[2],
            "rtmr3": self.rtmrs[3],
            "report_data": report_data,
        }
        if self.tee_tcb_svn2 is None:
            return TdReport10(**fields)
        return TdReport15(**fields, tee_tcb_svn2=self.tee_tcb_svn2, mr_service_td=bytes(48))

    def quote(self, report_data: bytes) -> bytes:
        """Produce a signed DCAP TDX quote binding ``report_data`` (≤ 64 bytes, zero-padded).

        Raises:
            PlatformError: ``report_data`` is longer than 64 bytes or not bytes.
        """
        rd = pad_report_data(report_data)
        keys = self.authority.keys
        v5 = self.tee_tcb_svn2 is not None
        header = QuoteHeader(
            version=5 if v5 else 4,
            att_key_type=ATT_KEY_TYPE_ECDSA_P256,
            tee_type=TEE_TYPE_TDX,
            qe_svn=0,
            pce_svn=0,
            qe_vendor_id=INTEL_QE_VENDOR_ID,
            user_data=bytes(20),
        )
        body = self._td_report(rd)
        att_pub, qe_data = qe_certification(
            keys,
            self.authority.pck_chain_pem(),
            qe_mrenclave=EMULATED_TD_QE_MRENCLAVE,
            qe_isv_prod_id=EMULATED_TD_QE_ISVPRODID,
            rng=self._rng,
        )
        unsigned = Quote(
            header=header,
            body=body,
            signature_data=QuoteSignatureData(bytes(64), att_pub, qe_data, CERT_TYPE_QE_REPORT),
            body_type=BODY_TYPE_TD15 if v5 else BODY_TYPE_TD10,
        )
        signature = sign_p256_raw(keys.attestation_key, unsigned.signed_bytes)
        quote = Quote(
            header=header,
            body=body,
            signature_data=QuoteSignatureData(signature, att_pub, qe_data, CERT_TYPE_QE_REPORT),
            body_type=unsigned.body_type,
        )
        return quote.to_bytes()
