"""Intel DCAP collateral (RATS Endorsements): typed container, verification, TCB convergence.

A collateral set is what Intel PCS serves for one platform (FMSPC) and what Intel QVL
calls ``sgx_ql_qve_collateral_t``: TCB Info, QE Identity, the PCK CRL and the Root CA
CRL, plus the issuer chains of each ("Intel SGX and Intel TDX PCS API";
"Intel SGX DCAP Quote Verification Library", collateral structure).

:func:`verify_collateral` checks every signature and chain up to a caller-supplied
:class:`~teeflow.attestation.trust.TrustAnchor` and every time window at ``now``. The
signature work depends only on the bytes, so it is cached per collateral content and
anchor set; later calls with another ``now`` only re-check the time windows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from teeflow.attestation.dcap.chain import (
    X509_ERRORS,
    check_crl,
    load_pem_chain,
    parse_crl_fields,
    verify_chain,
    x509_errors_as,
)
from teeflow.attestation.dcap.pcs_json import verify_pcs_signature
from teeflow.attestation.dcap.qe_identity import (
    SignedEnclaveIdentity,
    parse_enclave_identity,
    verify_enclave_identity_signature,
)
from teeflow.attestation.dcap.tcb_info import (
    SignedTcbInfo,
    parse_tcb_info,
    verify_tcb_info_signature,
)
from teeflow.attestation.evidence import TcbEvaluation, TcbStatus
from teeflow.attestation.trust import TrustAnchor, intel_tcb_signing_certificates
from teeflow.errors import CollateralError, ParseError, VerificationError

__all__ = [
    "COLLATERAL_FILES",
    "IntelCollateral",
    "converge_tcb_status",
    "verify_collateral",
]

#: File names of the on-disk layout read by :meth:`IntelCollateral.from_dir`.
COLLATERAL_FILES = (
    "tcb_info.json",
    "qe_identity.json",
    "pck_crl.der",
    "root_ca_crl.der",
    "tcb_info_issuer_chain.pem",
    "pck_crl_issuer_chain.pem",
    "qe_identity_issuer_chain.pem",
)
_MAX_FILE = 4 * 1024 * 1024
_CACHE_LIMIT = 256

# (collateral digest, anchor fingerprints) -> (anchor fingerprint, time windows)
_Window = tuple[str, datetime, datetime]
_VERIFIED: dict[tuple[bytes, tuple[str, ...]], tuple[str, tuple[_Window, ...]]] = {}


def _load_crl(data: bytes, what: str) -> x509.CertificateRevocationList:
    """Load a DER or PEM CRL and force its lazy fields (issuer, dates, entries)."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(data.strip().rstrip(b"\x00"))
        else:
            crl = x509.load_der_x509_crl(data)
    except X509_ERRORS:
        raise CollateralError(f"{what}: malformed CRL") from None
    try:
        parse_crl_fields(crl)
    except ParseError as exc:
        raise CollateralError(f"{what}: {exc}") from None
    return crl


def _load_chain(data: bytes, what: str) -> tuple[x509.Certificate, ...]:
    try:
        return tuple(load_pem_chain(data))
    except ParseError as exc:
        raise CollateralError(f"{what}: {exc}") from None


def _shipped_signing_chain(
    signed: bytes, signature: bytes, issued: datetime, what: str
) -> tuple[x509.Certificate, ...]:
    """Pick the shipped Intel TCB Signing certificate that signed ``signed``.

    Both shipped certificates hold the same key (re-issued 2025), so the one whose
    validity contains the document's issue date is preferred (latest expiry on ties).
    """
    verified: list[x509.Certificate] = []
    for cert in intel_tcb_signing_certificates():
        try:
            verify_pcs_signature(signed, signature, cert, what)
        except VerificationError:
            continue
        verified.append(cert)
    if not verified:
        raise CollateralError(f"no shipped Intel TCB Signing certificate verifies the {what}")
    current = [c for c in verified if c.not_valid_before_utc <= issued <= c.not_valid_after_utc]
    pool = current or verified
    return (max(pool, key=lambda c: c.not_valid_after_utc),)


@dataclass(frozen=True)
class IntelCollateral:
    """One Intel DCAP collateral set (Endorsements), parsed but not yet verified.

    Attributes:
        tcb_info: TCB Info of the platform's FMSPC.
        qe_identity: Enclave Identity of the QE (``QE`` for SGX, ``TD_QE`` for TDX).
        pck_crl: CRL of the PCK Platform/Processor CA.
        root_ca_crl: CRL of the Intel SGX Root CA (covers the intermediates).
        tcb_info_issuer_chain: leaf (TCB Signing) first; the root may be omitted.
        qe_identity_issuer_chain: likewise for the QE Identity.
        pck_crl_issuer_chain: PCK CA first; the root may be omitted.
        source: where it came from (directory, URL, "emulated"), informational.
    """

    tcb_info: SignedTcbInfo
    qe_identity: SignedEnclaveIdentity
    pck_crl: x509.CertificateRevocationList
    root_ca_crl: x509.CertificateRevocationList
    tcb_info_issuer_chain: tuple[x509.Certificate, ...]
    qe_identity_issuer_chain: tuple[x509.Certificate, ...]
    pck_crl_issuer_chain: tuple[x509.Certificate, ...]
    source: str | None = None

    @classmethod
    def from_bytes(
        cls,
        *,
        tcb_info: bytes,
        qe_identity: bytes,
        pck_crl: bytes,
        root_ca_crl: bytes,
        pck_crl_issuer_chain: bytes,
        tcb_info_issuer_chain: bytes | None = None,
        qe_identity_issuer_chain: bytes | None = None,
        source: str | None = None,
    ) -> IntelCollateral:
        """Build a collateral set from in-memory PCS bodies, CRLs (DER or PEM) and PEM chains.

        When ``tcb_info_issuer_chain`` is None the shipped Intel TCB Signing certificate
        whose key verifies the TCB Info is used; ``qe_identity_issuer_chain`` defaults to
        the TCB Info chain when that was given, else to the shipped certificate. Every
        chain is still validated up to an anchor by :func:`verify_collateral`.

        Raises:
            CollateralError: any part is malformed (wrapping the ParseError), or no
                shipped signing certificate verifies a document lacking a chain.
        """
        try:
            info = parse_tcb_info(tcb_info)
        except ParseError as exc:
            raise CollateralError(f"tcb_info: {exc}") from None
        try:
            ident = parse_enclave_identity(qe_identity)
        except ParseError as exc:
            raise CollateralError(f"qe_identity: {exc}") from None
        if tcb_info_issuer_chain is not None:
            tcb_chain = _load_chain(tcb_info_issuer_chain, "tcb_info_issuer_chain")
        else:
            tcb_chain = _shipped_signing_chain(
                info.signed_bytes, info.signature, info.issue_date, "tcbInfo"
            )
        if qe_identity_issuer_chain is not None:
            qe_chain = _load_chain(qe_identity_issuer_chain, "qe_identity_issuer_chain")
        elif tcb_info_issuer_chain is not None:
            qe_chain = tcb_chain
        else:
            qe_chain = _shipped_signing_chain(
                ident.signed_bytes, ident.signature, ident.issue_date, "enclaveIdentity"
            )
        return cls(
            tcb_info=info,
            qe_identity=ident,
            pck_crl=_load_crl(pck_crl, "pck_crl"),
            root_ca_crl=_load_crl(root_ca_crl, "root_ca_crl"),
            tcb_info_issuer_chain=tcb_chain,
            qe_identity_issuer_chain=qe_chain,
            pck_crl_issuer_chain=_load_chain(pck_crl_issuer_chain, "pck_crl_issuer_chain"),
            source=source,
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> IntelCollateral:
        """Read the on-disk layout (see :data:`COLLATERAL_FILES`) from ``path``.

        Required: ``tcb_info.json``, ``qe_identity.json``, ``pck_crl.der`` (DER or PEM),
        ``root_ca_crl.der``, ``pck_crl_issuer_chain.pem``. Optional:
        ``tcb_info_issuer_chain.pem`` (default: shipped Intel TCB Signing certificate)
        and ``qe_identity_issuer_chain.pem`` (default: the TCB Info chain). Files over
        4 MiB are rejected.

        Raises:
            CollateralError: a required file is missing (the message names it), unreadable,
                oversized or malformed.
        """
        base = Path(path)

        def read(name: str, required: bool = True) -> bytes | None:
            file = base / name
            if not file.is_file():
                if required:
                    raise CollateralError(f"collateral file missing: {name} (in {base})")
                return None
            try:
                with file.open("rb") as fh:
                    data = fh.read(_MAX_FILE + 1)
            except OSError as exc:
                raise CollateralError(f"cannot read {name}: {exc.strerror}") from None
            if len(data) > _MAX_FILE:
                raise CollateralError(f"collateral file too large: {name}")
            return data

        def need(name: str) -> bytes:
            data = read(name)
            assert data is not None
            return data

        return cls.from_bytes(
            tcb_info=need("tcb_info.json"),
            qe_identity=need("qe_identity.json"),
            pck_crl=need("pck_crl.der"),
            root_ca_crl=need("root_ca_crl.der"),
            pck_crl_issuer_chain=need("pck_crl_issuer_chain.pem"),
            tcb_info_issuer_chain=read("tcb_info_issuer_chain.pem", required=False),
            qe_identity_issuer_chain=read("qe_identity_issuer_chain.pem", required=False),
            source=str(base),
        )

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 over every signed byte of the set (documents, signatures, CRLs, chains)."""
        h = hashlib.sha256(b"teeflow-intel-collateral-v1")
        parts: list[bytes] = [
            self.tcb_info.signed_bytes,
            self.tcb_info.signature,
            self.qe_identity.signed_bytes,
            self.qe_identity.signature,
            self.pck_crl.public_bytes(Encoding.DER),
            self.root_ca_crl.public_bytes(Encoding.DER),
        ]
        for chain in (
            self.tcb_info_issuer_chain,
            self.qe_identity_issuer_chain,
            self.pck_crl_issuer_chain,
        ):
            parts.append(len(chain).to_bytes(4, "big"))
            parts.extend(c.public_bytes(Encoding.DER) for c in chain)
        for part in parts:
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        return h.digest()


def _check_window(what: str, start: datetime, end: datetime, now: datetime) -> None:
    if now > end:
        raise CollateralError(f"collateral expired: {what} {end.isoformat()}")
    if now < start:
        raise CollateralError(f"collateral not yet valid: {what} {start.isoformat()}")


def _document_windows(c: IntelCollateral) -> list[tuple[str, datetime, datetime]]:
    return [
        ("tcbInfo nextUpdate", c.tcb_info.issue_date, c.tcb_info.next_update),
        ("qeIdentity nextUpdate", c.qe_identity.issue_date, c.qe_identity.next_update),
    ]


def _signed_document(
    check: Callable[[x509.Certificate], None],
    chain: tuple[x509.Certificate, ...],
    *,
    c: IntelCollateral,
    anchors: Sequence[TrustAnchor],
    now: datetime,
    what: str,
) -> TrustAnchor:
    if not chain:
        raise CollateralError(f"{what}: empty issuer chain")
    try:
        check(chain[0])
    except VerificationError as exc:
        raise CollateralError(f"{what}: {exc}") from None
    return verify_chain(chain, anchors, now, crls=(c.root_ca_crl,))


def _full_verify(
    c: IntelCollateral, anchors: Sequence[TrustAnchor], now: datetime
) -> tuple[TrustAnchor, tuple[_Window, ...]]:
    for what, start, end in _document_windows(c):
        _check_window(what, start, end, now)
    anchor = _signed_document(
        lambda cert: verify_tcb_info_signature(c.tcb_info, cert),
        c.tcb_info_issuer_chain,
        c=c,
        anchors=anchors,
        now=now,
        what="tcbInfo",
    )
    qe_anchor = _signed_document(
        lambda cert: verify_enclave_identity_signature(c.qe_identity, cert),
        c.qe_identity_issuer_chain,
        c=c,
        anchors=anchors,
        now=now,
        what="qeIdentity",
    )
    if not c.pck_crl_issuer_chain:
        raise CollateralError("pck_crl: empty issuer chain")
    pck_anchor = verify_chain(c.pck_crl_issuer_chain, anchors, now, crls=(c.root_ca_crl,))
    if not anchor.certificate == qe_anchor.certificate == pck_anchor.certificate:
        raise CollateralError("collateral chains terminate in different trust anchors")
    check_crl(c.pck_crl, c.pck_crl_issuer_chain[0], now)
    check_crl(c.root_ca_crl, anchor.certificate, now)

    windows: list[_Window] = list(_document_windows(c))
    for label, crl in (("PCK CRL", c.pck_crl), ("Root CA CRL", c.root_ca_crl)):
        nxt = crl.next_update_utc
        assert nxt is not None  # check_crl rejects a CRL without nextUpdate
        windows.append((f"{label} nextUpdate", crl.last_update_utc, nxt))
    seen: set[bytes] = set()
    for cert in (
        *c.tcb_info_issuer_chain,
        *c.qe_identity_issuer_chain,
        *c.pck_crl_issuer_chain,
        anchor.certificate,
    ):
        fp = cert.fingerprint(hashes.SHA256())
        if fp not in seen:
            seen.add(fp)
            windows.append(
                (
                    f"certificate {cert.subject.rfc4514_string()} notAfter",
                    cert.not_valid_before_utc,
                    cert.not_valid_after_utc,
                )
            )
    return anchor, tuple(windows)


def verify_collateral(
    collateral: IntelCollateral, anchors: Sequence[TrustAnchor], now: datetime
) -> TrustAnchor:
    """Verify an Intel collateral set at ``now`` and return the anchor it chains to.

    Checks (Intel QVL ``QuoteVerification`` collateral checks):

    * ``issueDate <= now <= nextUpdate`` for TCB Info and QE Identity;
    * TCB Info and QE Identity signatures by their issuer chains' leaf, each chain
      validated to an anchor with the Root CA CRL applied;
    * the PCK CRL issuer chain validated to the anchor (Root CA CRL applied), the PCK
      CRL signed by its leaf and current;
    * the Root CA CRL signed by the anchor and current;
    * all three chains terminate in the same anchor.

    Results are cached per (collateral content digest, anchor fingerprints); a cached
    set only has its time windows re-checked, and any window failure falls back to the
    full check so the precise error is raised.

    Args:
        collateral: the set to verify.
        anchors: trusted roots (Intel SGX Root CA, or an emulation root).
        now: timezone-aware verification time.

    Raises:
        CollateralError: "collateral expired: tcbInfo nextUpdate …" (or not yet valid),
            a bad TCB Info / QE Identity / CRL signature, an expired CRL, empty chains,
            or chains ending in different anchors.
        VerificationError: an issuer chain does not validate (untrusted root, expired
            certificate, revoked intermediate).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise VerificationError("'now' must be a timezone-aware datetime")
    fps = tuple(a.fingerprint for a in anchors)
    key = (collateral.digest, fps)
    cached = _VERIFIED.get(key)
    if cached is not None:
        anchor_fp, windows = cached
        if all(start <= now <= end for _, start, end in windows):
            return anchors[fps.index(anchor_fp)]
    with x509_errors_as(CollateralError, "malformed collateral certificate or CRL"):
        anchor, windows = _full_verify(collateral, anchors, now)
    if len(_VERIFIED) >= _CACHE_LIMIT:
        _VERIFIED.clear()
    _VERIFIED[key] = (anchor.fingerprint, windows)
    return anchor


_OUT_OF_DATE_MAP = {
    TcbStatus.UP_TO_DATE: TcbStatus.OUT_OF_DATE,
    TcbStatus.SW_HARDENING_NEEDED: TcbStatus.OUT_OF_DATE,
    TcbStatus.CONFIGURATION_NEEDED: TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED,
    TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED: TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED,
}


def converge_tcb_status(platform: TcbEvaluation, qe: TcbEvaluation) -> TcbEvaluation:
    """Combine the platform TCB level and the QE TCB level into one status.

    Follows Intel QVL ``convergeTcbStatus`` (intel/SGXDataCenterAttestationPrimitives,
    ``QuoteVerification/QVL/Src/AttestationLibrary/src/Verifiers/QuoteVerifier.cpp``):

    * QE ``OutOfDate``: platform ``UpToDate``/``SWHardeningNeeded`` -> ``OutOfDate``;
      ``ConfigurationNeeded``/``ConfigurationAndSWHardeningNeeded`` ->
      ``OutOfDateConfigurationNeeded``; other platform statuses unchanged;
    * QE ``Revoked`` -> ``Revoked``;
    * otherwise the platform status.

    Advisory IDs: the platform's, then the QE's, de-duplicated in order. ``tcb_date`` is
    the earlier of the two dates (Intel's ``tcb_level_date_tag`` meaning: the TCB is
    not vulnerable to advisories released on or before this date).
    """
    status = platform.status
    if qe.status is TcbStatus.OUT_OF_DATE:
        status = _OUT_OF_DATE_MAP.get(status, status)
    elif qe.status is TcbStatus.REVOKED:
        status = TcbStatus.REVOKED
    advisories = tuple(dict.fromkeys((*platform.advisory_ids, *qe.advisory_ids)))
    dates = [d for d in (platform.tcb_date, qe.tcb_date) if d is not None]
    return TcbEvaluation(
        status=status, tcb_date=min(dates) if dates else None, advisory_ids=advisories
    )
