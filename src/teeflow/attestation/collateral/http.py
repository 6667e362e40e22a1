"""HTTP plumbing shared by the collateral clients (Intel PCS / PCCS, AMD KDS).

* :class:`BoundedHttp` — a synchronous ``GET`` with a response-size bound (default
  :data:`DEFAULT_MAX_RESPONSE_BYTES`), ``Accept-Encoding: identity`` (no decompression
  bombs), no redirects, and every failure mapped to :class:`~teeflow.errors.CollateralError`
  with the HTTP status (404 "not found", 429 "rate limited, retry after …" and Intel's
  ``Error-Code`` header, sanitised);
* :class:`VendorHttpClient` — the base of both clients: an ``http(s)://host[:port][/prefix]``
  base URL check, one :class:`BoundedHttp`, ``close()`` and context-manager use;
* :func:`crl_to_der` — a CRL body in DER, PEM or hex text (as some PCCS versions serve it)
  as DER.

The network is reached only through an injectable :class:`httpx.BaseTransport` (tests:
:class:`httpx.MockTransport`).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from teeflow.errors import CollateralError

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "BoundedHttp", "VendorHttpClient", "crl_to_der"]

#: Largest response body accepted (bytes); Intel collateral is a few KiB.
DEFAULT_MAX_RESPONSE_BYTES = 1 << 20

_HEX_TEXT = re.compile(rb"\s*([0-9a-fA-F]{2})+\s*")
_ERROR_DETAIL = re.compile(r"[^A-Za-z0-9 ._:-]")


def _sanitise(text: str, limit: int = 120) -> str:
    return _ERROR_DETAIL.sub("?", text[:limit])


class BoundedHttp:
    """A synchronous ``GET`` with a response-size bound, mapping every failure to
    :class:`CollateralError`.

    ``Accept-Encoding: identity`` is requested and any other ``Content-Encoding`` refused,
    so the byte bound applies to what is stored (no decompression bombs). Redirects are
    not followed (a redirect is an error: collateral URLs are fixed).

    Args:
        what: a label for error messages (``"Intel PCS"``, ``"AMD KDS"``).
        transport: injected transport (None: httpx's default network transport).
        timeout: seconds for connect/read/write/pool each.
        max_bytes: default body bound (bytes).
    """

    def __init__(
        self,
        what: str,
        *,
        transport: httpx.BaseTransport | None,
        timeout: float,
        max_bytes: int,
    ) -> None:
        if max_bytes <= 0:
            raise CollateralError("max_bytes must be positive")
        self.what = what
        self.max_bytes = max_bytes
        self._client = httpx.Client(
            transport=transport,
            timeout=timeout,
            follow_redirects=False,
            headers={"Accept-Encoding": "identity", "User-Agent": "teeflow"},
        )

    def close(self) -> None:
        """Close the underlying connection pool."""
        self._client.close()

    def get(
        self,
        url: str,
        params: Mapping[str, str] | None = None,
        *,
        max_bytes: int | None = None,
    ) -> tuple[bytes, httpx.Headers]:
        """``GET url`` and return ``(body, headers)`` for a 200 answer.

        Raises:
            CollateralError: transport failure or timeout, a status other than 200 (the
                message carries the status and, for Intel, the ``Error-Code`` header),
                an encoded body, or a body larger than ``max_bytes``.
        """
        limit = self.max_bytes if max_bytes is None else max_bytes
        label = f"{self.what}: GET {urlsplit(url).path}"
        try:
            with self._client.stream("GET", url, params=params) as resp:
                if resp.status_code != 200:
                    raise CollateralError(_status_message(label, resp))
                encoding = resp.headers.get("content-encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise CollateralError(f"{label}: unexpected Content-Encoding {encoding!r}")
                declared = resp.headers.get("content-length")
                if declared is not None and declared.strip().isdigit() and int(declared) > limit:
                    raise CollateralError(f"{label}: response larger than {limit} bytes")
                buf = bytearray()
                for chunk in resp.iter_bytes():  # identity: raw bytes
                    buf += chunk
                    if len(buf) > limit:
                        raise CollateralError(f"{label}: response larger than {limit} bytes")
                return bytes(buf), resp.headers
        except httpx.HTTPError as exc:
            raise CollateralError(f"{label} failed: {type(exc).__name__}") from None


def _status_message(label: str, resp: httpx.Response) -> str:
    msg = f"{label}: HTTP {resp.status_code}"
    if resp.status_code == 404:
        msg += " (not found)"
    elif resp.status_code == 429:
        retry = resp.headers.get("retry-after")
        msg += " (rate limited" + (f", retry after {_sanitise(retry, 16)}s)" if retry else ")")
    code = resp.headers.get("error-code")
    if code:
        msg += f" Error-Code {_sanitise(code, 64)}"
    return msg


def crl_to_der(body: bytes, what: str) -> bytes:
    """A CRL body (DER, PEM, or hex text as some PCCS versions serve it) as DER.

    DER input is returned unchanged; PEM and hex are decoded. The CRL is parsed once to
    check its form (signatures and dates are checked by the verifier).

    Raises:
        CollateralError: none of the three forms, or a malformed CRL.
    """
    try:
        if _HEX_TEXT.fullmatch(body):
            der = binascii.unhexlify(body.strip())
        elif body.lstrip().startswith(b"-----BEGIN"):
            der = x509.load_pem_x509_crl(body.strip()).public_bytes(Encoding.DER)
        else:
            der = body
        x509.load_der_x509_crl(der)
    except (ValueError, binascii.Error):
        raise CollateralError(f"{what}: body is not a CRL (DER, PEM or hex)") from None
    return der


class VendorHttpClient:
    """Base of the vendor collateral clients: base URL, bounded HTTP, lifecycle.

    Args:
        what: label in error messages (``"Intel PCS"``, ``"AMD KDS"``).
        base_url: ``http(s)://host[:port][/prefix]``; stored without a trailing ``/`` in
            :attr:`base_url`.
        url_label: name of the service in the base URL error (``"PCS"``, ``"KDS"``).
        transport, timeout, max_response_bytes: see :class:`BoundedHttp`.

    Raises:
        CollateralError: ``base_url`` is not an http(s) URL with a host.
    """

    def __init__(
        self,
        what: str,
        base_url: str,
        *,
        url_label: str,
        transport: httpx.BaseTransport | None,
        timeout: float,
        max_response_bytes: int,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise CollateralError(
                f"{url_label} base URL must be http(s)://host[:port][/prefix]: {base_url!r}"
            )
        self.base_url = base_url.rstrip("/")
        self._http = BoundedHttp(
            what, transport=transport, timeout=timeout, max_bytes=max_response_bytes
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


