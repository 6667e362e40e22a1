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
import json
import os
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from teeflow.attestation.dcap.collateral import IntelCollateral
from teeflow.attestation.dcap.quote import (
    ATT_KEY_TYPE_ECDSA_P256,
    BODY_TYPE_TD10,
    BODY_TYPE_TD15,
    CERT_TYPE_PCK_CHAIN,
    CERT_TYPE_QE_REPORT,
    INTEL_QE_VENDOR_ID,
    TEE_TYPE_TDX,
    CertificationData,
    EnclaveReport,
    QeReportCertificationData,
    Quote,
    QuoteHeader,
    QuoteSignatureData,
    TdReport10,
    TdReport15,
)
from teeflow.errors import PlatformError
from teeflow.hazmat.ecdsa import der_to_raw_signature, p256_public_key_to_raw
from teeflow.platform.emulated import EmulationAuthority
from teeflow.platform.emulated_authority import (
    EMULATED_FMSPC,
    EMULATED_PCE_ID,
    EMULATED_PCESVN,
    EMULATED_QE_ISVSVN,
    EMULATED_QE_MRSIGNER,
    EMULATED_TCB_COMPONENTS,
    AuthorityKeys,
)
from teeflow.platform.emulated_collateral import (
    QE_ATTRIBUTES,
    QE_ATTRIBUTES_MASK,
    TCB_EVALUATION_DATA_NUMBER,
    CollateralFiles,
    make_collateral_files,
)

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


def _ts(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sign_raw(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    return der_to_raw_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))


def _signed_body(outer: str, inner: dict[str, object], key: ec.EllipticCurvePrivateKey) -> bytes:
    """``{"<outer>":<inner>,"signature":"<hex r||s>"}``, signed over the inner bytes as written."""
    inner_bytes = json.dumps(inner, separators=(",", ":")).encode()
    sig = _sign_raw(key, inner_bytes).hex()
    return b'{"' + outer.encode() + b'":' + inner_bytes + b',"signature":"' + sig.encode() + b'"}'


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
    tcb_date = _ts(keys.root_ca.not_valid_before_utc)
    levels = module_levels if module_levels is not None else ((tee_tcb_svn[0], "UpToDate"),)
    module = {
        "mrsigner": EMULATED_MRSIGNERSEAM.hex().upper(),
        "attributes": "0000000000000000",
        "attributesMask": "FFFFFFFFFFFFFFFF",
    }
    tcb_info = {
        "id": "TDX",
        "version": 3,
        "issueDate": _ts(issue),
        "nextUpdate": _ts(nxt),
        "fmspc": EMULATED_FMSPC.hex().upper(),
        "pceId": EMULATED_PCE_ID.hex().upper(),
        "tcbType": 0,
        "tcbEvaluationDataNumber": TCB_EVALUATION_DATA_NUMBER,
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
        "tcbLevels": [
            {
                "tcb": {
                    "sgxtcbcomponents": [{"svn": c} for c in EMULATED_TCB_COMPONENTS],
                    "pcesvn": EMULATED_PCESVN,
                    "tdxtcbcomponents": [{"svn": c} for c in tee_tcb_svn],
                },
                "tcbDate": tcb_date,
                "tcbStatus": platform_status,
            }
        ],
    }
    qe_identity = {
        "id": "TD_QE",
        "version": 2,
        "issueDate": _ts(issue),
        "nextUpdate": _ts(nxt),
        "tcbEvaluationDataNumber": TCB_EVALUATION_DATA_NUMBER,
        "miscselect": "00000000",
        "miscselectMask": "FFFFFFFF",
        "attributes": QE_ATTRIBUTES.hex().upper(),
        "attributesMask": QE_ATTRIBUTES_MASK.hex().upper(),
        "mrsigner": EMULATED_QE_MRSIGNER.hex().upper(),
        "isvprodid": EMULATED_TD_QE_ISVPRODID,
        "tcbLevels": [
            {"tcb": {"isvsvn": EMULATED_QE_ISVSVN}, "tcbDate": tcb_date, "tcbStatus": "UpToDate"}
        ],
    }
    files = dict(base.files)
    files["tcb_info.json"] = _signed_body("tcbInfo", tcb_info, keys.tcb_signing_key)
    files["qe_identity.json"] = _signed_body("enclaveIdentity", qe_identity, keys.tcb_signing_key)
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

    def collateral(self, now: datetime | None = None) -> IntelCollateral:
        """Emulated TDX collateral valid at ``now`` (default: the wall clock), cached.

        Raises:
            PlatformError: ``now`` is naive or outside the authority's certificate validity.
        """
        t = datetime.now(UTC) if now is None else now
        if t.tzinfo is None or t.utcoffset() is None:
            raise PlatformError("'now' must be a timezone-aware datetime")
        with self._lock:
            if self._cache is None or not self._cache[0].fresh_at(t):
                files = make_tdx_collateral_files(
                    self.authority.keys,
                    t,
                    tee_tcb_svn=self.tee_tcb_svn,
                    module_levels=self.module_levels,
                )
                f = files.files
                coll = IntelCollateral.from_bytes(
                    tcb_info=f["tcb_info.json"],
                    qe_identity=f["qe_identity.json"],
                    pck_crl=f["pck_crl.der"],
                    root_ca_crl=f["root_ca_crl.der"],
                    pck_crl_issuer_chain=f["pck_crl_issuer_chain.pem"],
                    tcb_info_issuer_chain=f["tcb_info_issuer_chain.pem"],
                    source="emulated-tdx",
                )
                self._cache = (files, coll)
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
        if not isinstance(report_data, bytes | bytearray | memoryview):
            raise PlatformError("report_data must be bytes")
        rd = bytes(report_data)
        if len(rd) > 64:
            raise PlatformError(f"report_data must be at most 64 bytes, got {len(rd)}")
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
        body = self._td_report(rd.ljust(64, b"\x00"))
        att_pub = p256_public_key_to_raw(keys.attestation_key.public_key())
        qe_auth = self._rng(32)
        qe_report = EnclaveReport(
            cpu_svn=bytes(EMULATED_TCB_COMPONENTS),
            misc_select=0,
            reserved1=bytes(12),
            isv_ext_prod_id=bytes(16),
            attributes=QE_ATTRIBUTES,
            mr_enclave=EMULATED_TD_QE_MRENCLAVE,
            reserved2=bytes(32),
            mr_signer=EMULATED_QE_MRSIGNER,
            reserved3=bytes(32),
            config_id=bytes(64),
            isv_prod_id=EMULATED_TD_QE_ISVPRODID,
            isv_svn=EMULATED_QE_ISVSVN,
            config_svn=0,
            reserved4=bytes(42),
            isv_family_id=bytes(16),
            report_data=hashlib.sha256(att_pub + qe_auth).digest() + bytes(32),
        )
        qe_data = QeReportCertificationData(
            qe_report=qe_report,
            qe_report_signature=_sign_raw(keys.pck_key, qe_report.to_bytes()),
            qe_auth_data=qe_auth,
            certification_data=CertificationData(
                CERT_TYPE_PCK_CHAIN, self.authority.pck_chain_pem()
            ),
        )
        unsigned = Quote(
            header=header,
            body=body,
            signature_data=QuoteSignatureData(bytes(64), att_pub, qe_data, CERT_TYPE_QE_REPORT),
            body_type=BODY_TYPE_TD15 if v5 else BODY_TYPE_TD10,
        )
        signature = _sign_raw(keys.attestation_key, unsigned.signed_bytes)
        quote = Quote(
            header=header,
            body=body,
            signature_data=QuoteSignatureData(signature, att_pub, qe_data, CERT_TYPE_QE_REPORT),
            body_type=unsigned.body_type,
        )
        return quote.to_bytes()
