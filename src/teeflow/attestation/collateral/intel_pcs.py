"""Intel PCS v4 client: TCB Info, QE Identity, PCK CRL and Root CA CRL (RATS Endorsements).

Source: Intel "Provisioning Certification Service (PCS) API" version 4
(``https://api.portal.trustedservices.intel.com/content/documentation.html``), the same
routes served by a local PCCS (Intel SGXDataCenterAttestationPrimitives
``QuoteGeneration/pccs``, used by the QCNL library):

==========================================  ===========================================
request                                     response
==========================================  ===========================================
``GET /sgx/certification/v4/tcb?fmspc=X``   TCB Info JSON; header ``TCB-Info-Issuer-Chain``
``GET /tdx/certification/v4/tcb?fmspc=X``   (v3 and some PCCS: ``SGX-TCB-Info-Issuer-Chain``)
``GET /sgx/certification/v4/qe/identity``   Enclave Identity JSON;
``GET /tdx/certification/v4/qe/identity``   header ``SGX-Enclave-Identity-Issuer-Chain``
``GET /sgx/certification/v4/pckcrl``        PCK CRL (``?ca=processor|platform``,
                                            ``&encoding=der|pem``); header
                                            ``SGX-PCK-CRL-Issuer-Chain``
``GET /sgx/certification/v4/rootcacrl``     Root CA CRL (PCCS only; DER, or hex text)
==========================================  ===========================================

Issuer chains arrive URL-encoded (RFC 3986 percent-encoding, ``+`` literal) in the
headers. Intel PCS itself has no ``rootcacrl`` route: the Root CA CRL is fetched from the
CRL distribution point of the Intel SGX Root CA certificate
(``https://certificates.trustedservices.intel.com/IntelSGXRootCA.der``).

The client only transports bytes; signatures, chains and time windows are checked later by
:func:`teeflow.attestation.dcap.collateral.verify_collateral`. The network is reached
through an injectable :class:`httpx.BaseTransport` (tests use :class:`httpx.MockTransport`).
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple
from urllib.parse import unquote, urlsplit

import httpx

from teeflow.attestation.collateral.http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    BoundedHttp,
    VendorHttpClient,
    crl_to_der,
)
from teeflow.attestation.dcap.chain import load_pem_chain
from teeflow.attestation.dcap.collateral import IntelCollateral
from teeflow.errors import CollateralError, ParseError

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_PCS_URL",
    "INTEL_ROOT_CA_CRL_URL",
    "BoundedHttp",
    "IntelPcsClient",
    "PcsResponse",
    "assemble_collateral",
    "crl_to_der",
    "decode_issuer_chain",
    "normalise_fmspc",
]

#: Intel's public PCS (no API key needed for the routes used here).
DEFAULT_PCS_URL = "https://api.trustedservices.intel.com"
#: CRL distribution point of the Intel SGX Root CA certificate.
INTEL_ROOT_CA_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
#: Largest issuer-chain header accepted (bytes, before URL-decoding).
MAX_HEADER_BYTES = 64 * 1024

_PCS_HOSTS = frozenset({"api.trustedservices.intel.com"})

Tee = Literal["sgx", "tdx"]
CaType = Literal["processor", "platform"]


class PcsResponse(NamedTuple):
    """One PCS answer: ``body`` (raw bytes) and ``issuer_chain`` (URL-decoded PEM, or None
    for routes without a chain header, i.e. the Root CA CRL)."""

    body: bytes
    issuer_chain: bytes | None


def normalise_fmspc(fmspc: bytes | str) -> str:
    """FMSPC as 12 upper-case hex characters (6 bytes), from bytes or hex text.

    Raises:
        CollateralError: not 6 bytes / 12 hex characters.
    """
    if isinstance(fmspc, bytes | bytearray):
        if len(fmspc) != 6:
            raise CollateralError(f"FMSPC must be 6 bytes, got {len(fmspc)}")
        return bytes(fmspc).hex().upper()
    text = fmspc.strip()
    if len(text) != 12 or re.fullmatch(r"[0-9a-fA-F]{12}", text) is None:
        raise CollateralError("FMSPC must be 12 hexadecimal characters")
    return text.upper()


def _check_tee(tee: str) -> Tee:
    if tee == "sgx":
        return "sgx"
    if tee == "tdx":
        return "tdx"
    raise CollateralError(f"unknown tee {tee!r} (expected 'sgx' or 'tdx')")


def _check_ca(ca: str) -> CaType:
    if ca == "processor":
        return "processor"
    if ca == "platform":
        return "platform"
    raise CollateralError(f"unknown PCK CA {ca!r} (expected 'processor' or 'platform')")


def decode_issuer_chain(headers: httpx.Headers, names: tuple[str, ...], what: str) -> bytes:
    """The URL-decoded PEM chain of the first header in ``names`` present.

    Decoding is RFC 3986 percent-decoding only (``+`` stays ``+``: it is a base64
    character). The chain must be one or more strict PEM certificates.

    Raises:
        CollateralError: header missing, larger than 64 KiB, not ASCII or not a PEM chain.
    """
    raw = next((headers[n] for n in names if n in headers), None)
    if raw is None:
        raise CollateralError(f"{what}: response lacks the {names[0]} header")
    if len(raw) > MAX_HEADER_BYTES:
        raise CollateralError(f"{what}: {names[0]} header too large")
    try:
        pem = unquote(raw, encoding="ascii", errors="strict").encode("ascii")
    except (UnicodeError, ValueError):
        raise CollateralError(f"{what}: {names[0]} header is not URL-encoded ASCII") from None
    try:
        load_pem_chain(pem)
    except ParseError as exc:
        raise CollateralError(f"{what}: {names[0]}: {exc}") from None
    return pem


class IntelPcsClient(VendorHttpClient):
    """Intel PCS / PCCS v4 client for DCAP collateral.

    Args:
        base_url: PCS or PCCS origin, optionally with a path prefix, without the
            ``/sgx/certification/v4`` part (default :data:`DEFAULT_PCS_URL`; a PCCS is
            e.g. ``https://pccs.internal:8081``).
        transport: injected httpx transport (tests: :class:`httpx.MockTransport`).
        timeout: seconds per network phase.
        max_response_bytes: bound on every body.
        root_ca_crl_url: where to fetch the Root CA CRL; default: the Intel CRL
            distribution point for Intel's PCS, ``{base_url}/sgx/certification/v4/rootcacrl``
            for any other base URL (a PCCS).

    Raises (constructor):
        CollateralError: ``base_url`` is not an http(s) URL.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_PCS_URL,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 10.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        root_ca_crl_url: str | None = None,
    ) -> None:
        super().__init__(
            "Intel PCS",
            base_url,
            url_label="PCS",
            transport=transport,
            timeout=timeout,
            max_response_bytes=max_response_bytes,
        )
        if root_ca_crl_url is None:
            root_ca_crl_url = (
                INTEL_ROOT_CA_CRL_URL
                if urlsplit(base_url).hostname in _PCS_HOSTS
                else f"{self.base_url}/sgx/certification/v4/rootcacrl"
            )
        self.root_ca_crl_url = root_ca_crl_url

    def _url(self, tee: str, route: str) -> str:
        return f"{self.base_url}/{tee}/certification/v4/{route}"

    def tcb_info(
        self, fmspc: bytes | str, tee: str = "sgx", *, update: str | None = None
    ) -> PcsResponse:
        """TCB Info of ``fmspc`` (``GET /{tee}/certification/v4/tcb?fmspc=``).

        Args:
            fmspc: 6 bytes or 12 hex characters.
            tee: ``"sgx"`` or ``"tdx"``.
            update: optional v4 ``update`` parameter (``"standard"`` or ``"early"``).

        Returns:
            ``(body, issuer_chain)``: the JSON body as served (signature covers its inner
            object bytes) and the URL-decoded TCB Info issuer chain (PEM).

        Raises:
            CollateralError: bad arguments, HTTP failure, missing/malformed chain header,
                oversized body.
        """
        params = {"fmspc": normalise_fmspc(fmspc)}
        if update is not None:
            if update not in ("standard", "early"):
                raise CollateralError("update must be 'standard' or 'early'")
            params["update"] = update
        t = _check_tee(tee)
        body, headers = self._http.get(self._url(t, "tcb"), params)
        chain = decode_issuer_chain(
            headers, ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"), "TCB Info"
        )
        return PcsResponse(body, chain)

    def qe_identity(self, tee: str = "sgx", *, update: str | None = None) -> PcsResponse:
        """QE Identity (``QE`` for SGX, ``TD_QE`` for TDX):
        ``GET /{tee}/certification/v4/qe/identity``.

        Returns:
            ``(body, issuer_chain)`` from header ``SGX-Enclave-Identity-Issuer-Chain``.

        Raises:
            CollateralError: as :meth:`tcb_info`.
        """
        params: dict[str, str] = {}
        if update is not None:
            if update not in ("standard", "early"):
                raise CollateralError("update must be 'standard' or 'early'")
            params["update"] = update
        t = _check_tee(tee)
        body, headers = self._http.get(self._url(t, "qe/identity"), params or None)
        chain = decode_issuer_chain(
            headers,
            ("SGX-Enclave-Identity-Issuer-Chain", "Enclave-Identity-Issuer-Chain"),
            "QE Identity",
        )
        return PcsResponse(body, chain)

    def pck_crl(self, ca: str = "processor", encoding: str = "der") -> PcsResponse:
        """PCK CRL of the Processor or Platform CA:
        ``GET /sgx/certification/v4/pckcrl?ca=..&encoding=..`` (same route for TDX).

        Returns:
            ``(crl_der, issuer_chain)``: the CRL normalised to DER (PCCS may answer PEM or
            hex text) and the ``SGX-PCK-CRL-Issuer-Chain`` chain.

        Raises:
            CollateralError: bad arguments, HTTP failure, chain header problem, a body that
                is not a CRL.
        """
        c = _check_ca(ca)
        if encoding not in ("der", "pem"):
            raise CollateralError("encoding must be 'der' or 'pem'")
        body, headers = self._http.get(self._url("sgx", "pckcrl"), {"ca": c, "encoding": encoding})
        chain = decode_issuer_chain(headers, ("SGX-PCK-CRL-Issuer-Chain",), "PCK CRL")
        return PcsResponse(crl_to_der(body, "PCK CRL"), chain)

    def root_ca_crl(self) -> bytes:
        """The Intel SGX Root CA CRL as DER (from :attr:`root_ca_crl_url`).

        Raises:
            CollateralError: HTTP failure or a body that is not a CRL.
        """
        body, _ = self._http.get(self.root_ca_crl_url)
        return crl_to_der(body, "Root CA CRL")

    def collateral_for(
        self, fmspc: bytes | str, ca: str = "processor", tee: str = "sgx"
    ) -> IntelCollateral:
        """Fetch and parse a complete collateral set (four requests).

        The TCB Info must name the requested FMSPC and TEE (``id`` ``SGX``/``TDX``).

        Raises:
            CollateralError: any fetch fails, any part is malformed, or the TCB Info is
                for another FMSPC or TEE.
        """
        return assemble_collateral(
            fmspc,
            tee,
            tcb=self.tcb_info(fmspc, tee),
            qe=self.qe_identity(tee),
            pck_crl=self.pck_crl(ca),
            root_ca_crl=self.root_ca_crl(),
            source=f"{self.base_url} (fmspc {normalise_fmspc(fmspc)}, {tee}, {ca})",
        )


def assemble_collateral(
    fmspc: bytes | str,
    tee: str,
    *,
    tcb: PcsResponse,
    qe: PcsResponse,
    pck_crl: PcsResponse,
    root_ca_crl: bytes,
    source: str,
) -> IntelCollateral:
    """Build an :class:`IntelCollateral` from four PCS answers and check it is for
    ``fmspc`` / ``tee``.

    Raises:
        CollateralError: a part is malformed or the TCB Info names another FMSPC / TEE,
            or a chain header was absent.
    """
    if pck_crl.issuer_chain is None:
        raise CollateralError("PCK CRL issuer chain missing")
    coll = IntelCollateral.from_bytes(
        tcb_info=tcb.body,
        qe_identity=qe.body,
        pck_crl=pck_crl.body,
        root_ca_crl=root_ca_crl,
        pck_crl_issuer_chain=pck_crl.issuer_chain,
        tcb_info_issuer_chain=tcb.issuer_chain,
        qe_identity_issuer_chain=qe.issuer_chain,
        source=source,
    )
    want = normalise_fmspc(fmspc)
    if coll.tcb_info.fmspc.hex().upper() != want:
        raise CollateralError(
            f"TCB Info is for FMSPC {coll.tcb_info.fmspc.hex().upper()}, requested {want}"
        )
    if coll.tcb_info.id != _check_tee(tee).upper():
        raise CollateralError(f"TCB Info id is {coll.tcb_info.id}, requested {tee}")
    return coll
