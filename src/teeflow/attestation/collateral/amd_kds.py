"""AMD Key Distribution Service (KDS) client: VCEK certificates, ASK/ASVK + ARK chains, CRLs.

Source: AMD "Versioned Chip Endorsement Key (VCEK) Certificate and KDS Interface
Specification" (publication 57230), section 4 ("KDS Interface"):

=============================================================  ============================
request                                                        response
=============================================================  ============================
``GET /vcek/v1/{product}/{hwid}?blSPL=&teeSPL=&snpSPL=&ucodeSPL=``  VCEK, DER X.509
``GET /vcek/v1/{product}/cert_chain``                          PEM: ASK then ARK
``GET /vlek/v1/{product}/cert_chain``                          PEM: ASVK then ARK
``GET /vcek/v1/{product}/crl`` / ``/vlek/v1/{product}/crl``    DER CRL signed by the ARK
=============================================================  ============================

``product`` is the KDS product name (``Milan``, ``Genoa``, ``Turin``). ``hwid`` is the
SNP report's ``CHIP_ID`` in lower-case hex: 64 bytes for Milan/Genoa, the first 8 bytes for
Turin, whose VCEK URL also carries ``fmcSPL``. VLEK certificates are not served by hwid
(the cloud provider installs them); only their chain and CRL come from KDS.

KDS rate-limits clients (HTTP 429): cache its answers (:mod:`.cache`). Certificates are
returned as bytes after a structural parse only; chains and TCB values are verified by the
SNP verifier.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from datetime import datetime
from typing import Literal

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from teeflow.attestation.collateral.cache import (
    CachedItem,
    CacheKey,
    CollateralCache,
    aware_utc,
    crl_next_update,
    make_item,
)
from teeflow.attestation.collateral.http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    VendorHttpClient,
    crl_to_der,
)
from teeflow.attestation.dcap.chain import load_pem_chain
from teeflow.errors import CollateralError, ParseError

__all__ = [
    "DEFAULT_KDS_URL",
    "KDS_PRODUCTS",
    "AmdKdsClient",
    "CachingAmdKdsClient",
    "load_der_certificate",
    "normalise_hwid",
    "normalise_product",
    "tcb_query",
]

#: AMD's public KDS.
DEFAULT_KDS_URL = "https://kdsintf.amd.com"
#: KDS product names accepted (case-insensitive on input, canonical spelling on the wire).
KDS_PRODUCTS = ("Milan", "Genoa", "Turin")
_TURIN_HWID_BYTES = 8
_CHIP_ID_BYTES = 64
_TCB_KEYS = ("bl", "tee", "snp", "ucode")
_HEX = re.compile(r"[0-9a-fA-F]+")

KeyType = Literal["vcek", "vlek"]


def load_der_certificate(der: bytes) -> x509.Certificate:
    """Parse a DER certificate, tolerating the serial number 0 of AMD VCEKs (RFC 5280
    wants it positive; ``cryptography`` warns about it).

    Raises:
        ValueError: not one DER certificate.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return x509.load_der_x509_certificate(der)


def normalise_product(product: str) -> str:
    """The canonical KDS product name for ``product`` (case-insensitive).

    Raises:
        CollateralError: not one of :data:`KDS_PRODUCTS`.
    """
    for name in KDS_PRODUCTS:
        if product.strip().lower() == name.lower():
            return name
    raise CollateralError(f"unknown AMD product {product!r} (expected one of {KDS_PRODUCTS})")


def normalise_hwid(product: str, hwid: bytes | str) -> str:
    """The hwid path element: lower-case hex of the 64-byte CHIP_ID (Milan, Genoa) or of
    its first 8 bytes (Turin; a full 64-byte CHIP_ID is truncated).

    Raises:
        CollateralError: not hex, or the wrong length for the product.
    """
    name = normalise_product(product)
    if isinstance(hwid, str):
        text = hwid.strip()
        if len(text) % 2 or _HEX.fullmatch(text) is None:
            raise CollateralError("hwid must be hexadecimal")
        raw = bytes.fromhex(text)
    else:
        raw = bytes(hwid)
    if name == "Turin":
        if len(raw) not in (_TURIN_HWID_BYTES, _CHIP_ID_BYTES):
            raise CollateralError(f"Turin hwid must be 8 (or 64) bytes, got {len(raw)}")
        raw = raw[:_TURIN_HWID_BYTES]
    elif len(raw) != _CHIP_ID_BYTES:
        raise CollateralError(f"{name} hwid must be 64 bytes, got {len(raw)}")
    return raw.hex()


def _spl(tcb: Mapping[str, int], key: str) -> int:
    value = tcb.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
        raise CollateralError(f"TCB component {key!r} must be an integer 0..255")
    return value


def tcb_query(product: str, tcb: Mapping[str, int]) -> dict[str, str]:
    """The VCEK query parameters for a reported TCB.

    Args:
        product: KDS product name.
        tcb: ``{"bl", "tee", "snp", "ucode"}`` security patch levels (0..255) and, for
            Turin only, ``"fmc"``.

    Raises:
        CollateralError: a component missing or out of range, ``fmc`` missing for Turin
            or given for another product, or an unknown key.
    """
    name = normalise_product(product)
    allowed = {*_TCB_KEYS, "fmc"} if name == "Turin" else set(_TCB_KEYS)
    unknown = set(tcb) - allowed
    if unknown:
        raise CollateralError(f"unknown TCB component(s) for {name}: {sorted(unknown)}")
    params: dict[str, str] = {}
    if name == "Turin":
        params["fmcSPL"] = str(_spl(tcb, "fmc"))
    params["blSPL"] = str(_spl(tcb, "bl"))
    params["teeSPL"] = str(_spl(tcb, "tee"))
    params["snpSPL"] = str(_spl(tcb, "snp"))
    params["ucodeSPL"] = str(_spl(tcb, "ucode"))
    return params


def _key_type(key: str) -> KeyType:
    if key == "vcek":
        return "vcek"
    if key == "vlek":
        return "vlek"
    raise CollateralError(f"unknown AMD key type {key!r} (expected 'vcek' or 'vlek')")


class AmdKdsClient(VendorHttpClient):
    """AMD KDS client (see module docstring for routes).

    Args:
        base_url: KDS origin (default :data:`DEFAULT_KDS_URL`), optionally a mirror with a
            path prefix.
        transport: injected httpx transport (tests: :class:`httpx.MockTransport`).
        timeout: seconds per network phase.
        max_response_bytes: bound on every body.

    Raises (constructor):
        CollateralError: ``base_url`` is not an http(s) URL.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_KDS_URL,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 10.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        super().__init__(
            "AMD KDS",
            base_url,
            url_label="KDS",
            transport=transport,
            timeout=timeout,
            max_response_bytes=max_response_bytes,
        )

    def vcek(self, product: str, hwid_hex: bytes | str, tcb: Mapping[str, int]) -> bytes:
        """The VCEK certificate (DER) of chip ``hwid_hex`` at TCB ``tcb``.

        Args:
            product: ``Milan``, ``Genoa`` or ``Turin``.
            hwid_hex: the report's CHIP_ID (hex text or bytes), see :func:`normalise_hwid`.
            tcb: reported TCB components, see :func:`tcb_query`.

        Raises:
            CollateralError: bad arguments, HTTP failure (404: unknown chip or TCB; 429:
                rate limited), oversized body, or a body that is not one DER certificate.
        """
        name = normalise_product(product)
        url = f"{self.base_url}/vcek/v1/{name}/{normalise_hwid(name, hwid_hex)}"
        body, _ = self._http.get(url, tcb_query(name, tcb))
        try:
            load_der_certificate(body)
        except ValueError:
            raise CollateralError("AMD KDS: VCEK body is not a DER certificate") from None
        return body

    def cert_chain(self, product: str, key: str = "vcek") -> tuple[bytes, bytes]:
        """The intermediate and root certificates for ``key`` certificates of ``product``.

        Returns:
            ``(ask_pem, ark_pem)`` for ``key="vcek"``, ``(asvk_pem, ark_pem)`` for
            ``"vlek"``; each one PEM certificate.

        Raises:
            CollateralError: bad arguments, HTTP failure, or not exactly two PEM
                certificates.
        """
        name = normalise_product(product)
        k = _key_type(key)
        body, _ = self._http.get(f"{self.base_url}/{k}/v1/{name}/cert_chain")
        try:
            certs = load_pem_chain(body.replace(b"\r\n", b"\n"), max_certs=2)
        except ParseError as exc:
            raise CollateralError(f"AMD KDS: {k} cert_chain: {exc}") from None
        if len(certs) != 2:
            raise CollateralError(f"AMD KDS: {k} cert_chain has {len(certs)} certificates, not 2")
        ask, ark = (c.public_bytes(Encoding.PEM) for c in certs)
        return ask, ark

    def crl(self, product: str, key: str = "vcek") -> bytes:
        """The CRL (DER) of ``key`` certificates of ``product`` (signed by the ARK).

        Raises:
            CollateralError: bad arguments, HTTP failure, or a body that is not a CRL.
        """
        name = normalise_product(product)
        k = _key_type(key)
        body, _ = self._http.get(f"{self.base_url}/{k}/v1/{name}/crl")
        return crl_to_der(body, f"AMD KDS {k} CRL")


# -- cached ---------------------------------------------------------------------------------


class CachingAmdKdsClient:
    """AMD KDS answers through a :class:`CollateralCache` (same methods as
    :class:`AmdKdsClient`, plus ``now``).

    VCEKs and chains are fresh until the earliest certificate ``notAfter``; CRLs until
    their ``nextUpdate``.

    Raises (constructor):
        CollateralError: online without a client.
    """

    def __init__(
        self,
        client: AmdKdsClient | None,
        cache: CollateralCache | None = None,
        *,
        offline: bool = False,
    ) -> None:
        if client is None and not offline:
            raise CollateralError("an AMD KDS client is required unless offline")
        self.client = client
        self.cache = cache if cache is not None else CollateralCache()
        self.offline = offline

    def _online(self) -> AmdKdsClient | None:
        return None if self.offline else self.client

    def vcek(
        self, product: str, hwid_hex: bytes | str, tcb: Mapping[str, int], *, now: datetime
    ) -> bytes:
        """Cached :meth:`AmdKdsClient.vcek`. Raises ``CollateralError``."""
        t = aware_utc(now)
        name = normalise_product(product)
        hwid = normalise_hwid(name, hwid_hex)
        tcb_id = "-".join(f"{k}={v}" for k, v in tcb_query(name, tcb).items())
        key: CacheKey = ("amd", "vcek", name, hwid, tcb_id)
        c = self._online()

        def fetch() -> CachedItem:
            assert c is not None
            der = c.vcek(name, hwid, tcb)
            exp = load_der_certificate(der).not_valid_after_utc
            return make_item(der, exp, t, f"{c.base_url}/vcek/v1/{name}/{hwid}")

        return self.cache.get_or_fetch(key, fetch if c is not None else None, now=t).body

    def cert_chain(self, product: str, key: str = "vcek", *, now: datetime) -> tuple[bytes, bytes]:
        """Cached :meth:`AmdKdsClient.cert_chain` ``(ask|asvk, ark)`` PEM. Raises
        ``CollateralError``."""
        t = aware_utc(now)
        name = normalise_product(product)
        key = _key_type(key)
        ck: CacheKey = ("amd", "cert_chain", name, key)
        c = self._online()

        def fetch() -> CachedItem:
            assert c is not None
            ask, ark = c.cert_chain(name, key)
            certs = [x509.load_pem_x509_certificate(p) for p in (ask, ark)]
            url = f"{c.base_url}/{key}/v1/{name}/cert_chain"
            return make_item(ask + ark, min(cert.not_valid_after_utc for cert in certs), t, url)

        body = self.cache.get_or_fetch(ck, fetch if c is not None else None, now=t).body
        try:
            certs = x509.load_pem_x509_certificates(body)
        except ValueError:
            raise CollateralError(f"corrupt cache entry {'/'.join(ck)}") from None
        if len(certs) != 2:
            raise CollateralError(f"corrupt cache entry {'/'.join(ck)}")
        return certs[0].public_bytes(Encoding.PEM), certs[1].public_bytes(Encoding.PEM)

    def crl(self, product: str, key: str = "vcek", *, now: datetime) -> bytes:
        """Cached :meth:`AmdKdsClient.crl` (DER). Raises ``CollateralError``."""
        t = aware_utc(now)
        name = normalise_product(product)
        key = _key_type(key)
        ck: CacheKey = ("amd", "crl", name, key)
        c = self._online()

        def fetch() -> CachedItem:
            assert c is not None
            der = c.crl(name, key)
            return make_item(
                der, crl_next_update(der, "AMD CRL"), t, f"{c.base_url}/{key}/v1/{name}/crl"
            )

        return self.cache.get_or_fetch(ck, fetch if c is not None else None, now=t).body
