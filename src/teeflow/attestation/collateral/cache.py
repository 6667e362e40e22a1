"""On-disk cache of collateral answers, and the caching Intel collateral provider.

Layout: ``<directory>/<source>/<kind>/<ids>.json`` (default directory
``$TEEFLOW_HOME/collateral-cache``, ``~/.teeflow/collateral-cache`` without
``TEEFLOW_HOME``), one JSON file per answer::

    {"format": "teeflow-collateral-cache-v1", "key": [...], "url": "...",
     "fetched_at": "<RFC 3339>", "expires": "<RFC 3339>",
     "headers": {"issuer_chain": "<PEM>"}, "body": "<base64 of the raw body>"}

Keys: ``("intel", "tcb_info", tee, FMSPC)``, ``("intel", "qe_identity", tee)``,
``("intel", "pck_crl", ca)``, ``("intel", "root_ca_crl")``,
``("amd", "vcek", product, hwid, tcb)``, ``("amd", "cert_chain", product, key)``,
``("amd", "crl", product, key)`` (the AMD ones are used by
:class:`teeflow.attestation.collateral.amd_kds.CachingAmdKdsClient`).

``expires`` is the ``nextUpdate`` of TCB Info / QE Identity (Intel PCS API, Appendix A/B),
the CRL ``nextUpdate`` (RFC 5280 5.1.2.5), or the earliest ``notAfter`` of certificates.
An entry is fresh while ``now < expires`` (``now`` injected, timezone-aware). Online, a
stale or missing entry is refetched and replaced; offline, nothing is fetched: a cached
entry (even stale, logged; the verifier then reports "collateral expired" at its ``now``)
or a fixed collateral directory is used, else ``CollateralError("offline and not cached")``.
Writes are atomic (temporary file, fsync, ``os.replace``). A corrupt entry is a miss online
and an error offline. Cached content is never trusted: it is verified like fresh content.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from teeflow._fs import atomic_write
from teeflow.attestation.collateral.intel_pcs import (
    IntelPcsClient,
    PcsResponse,
    assemble_collateral,
    normalise_fmspc,
)
from teeflow.attestation.dcap.collateral import IntelCollateral
from teeflow.attestation.dcap.pck import parse_pck_extensions
from teeflow.attestation.dcap.qe_identity import parse_enclave_identity
from teeflow.attestation.dcap.quote import Quote
from teeflow.attestation.dcap.tcb_info import parse_tcb_info
from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import CollateralError, Error, ParseError

__all__ = [
    "CACHE_FORMAT",
    "CacheKey",
    "CachedItem",
    "CachingIntelCollateralProvider",
    "CollateralCache",
    "aware_utc",
    "crl_next_update",
    "default_cache_dir",
    "make_item",
]

CACHE_FORMAT = "teeflow-collateral-cache-v1"
#: Largest cache file read (bytes).
MAX_ENTRY_BYTES = 8 * 1024 * 1024
_PART = re.compile(r"[A-Za-z0-9._=-]{1,256}")
_LOG = logging.getLogger(__name__)

CacheKey = tuple[str, ...]


def default_cache_dir() -> Path:
    """``$TEEFLOW_HOME/collateral-cache`` (``~/.teeflow/collateral-cache`` when unset)."""
    home = os.environ.get("TEEFLOW_HOME")
    base = Path(home) if home else Path.home() / ".teeflow"
    return base / "collateral-cache"


def aware_utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise CollateralError("'now' must be a timezone-aware datetime")
    return now.astimezone(UTC)


@dataclass(frozen=True)
class CachedItem:
    """One stored answer.

    Attributes:
        body: the raw body bytes.
        headers: selected response values (``issuer_chain``: PEM text).
        expires: when the content must be refetched (UTC).
        fetched_at: when it was fetched (UTC; informational).
        url: where it came from (informational).
    """

    body: bytes
    expires: datetime
    fetched_at: datetime
    headers: Mapping[str, str] = field(default_factory=dict)
    url: str = ""

    def fresh(self, now: datetime) -> bool:
        """True when ``now`` is before :attr:`expires`."""
        return aware_utc(now) < self.expires


def _describe(key: CacheKey) -> str:
    return "/".join(key)


class CollateralCache:
    """Directory of cached collateral answers (see module docstring).

    Args:
        directory: cache root (created on first write); default :func:`default_cache_dir`.
    """

    def __init__(self, directory: Path | str | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    def path_for(self, key: CacheKey) -> Path:
        """The file of ``key``.

        Raises:
            CollateralError: fewer than two parts or a part outside ``[A-Za-z0-9._=-]``.
        """
        if len(key) < 2 or not all(_PART.fullmatch(p) and p not in (".", "..") for p in key):
            raise CollateralError(f"invalid collateral cache key {key!r}")
        name = "_".join(key[2:]) or "default"
        return self.directory.joinpath(key[0], key[1], f"{name}.json")

    def get(self, key: CacheKey) -> CachedItem | None:
        """The stored entry for ``key`` (fresh or not), or None when absent.

        Raises:
            CollateralError: the entry exists but is unreadable, oversized or corrupt.
        """
        path = self.path_for(key)
        try:
            with path.open("rb") as fh:
                raw = fh.read(MAX_ENTRY_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CollateralError(
                f"cannot read cache entry {_describe(key)}: {exc.strerror}"
            ) from None
        if len(raw) > MAX_ENTRY_BYTES:
            raise CollateralError(f"cache entry {_describe(key)} too large")
        try:
            doc = json.loads(raw)
            if doc.get("format") != CACHE_FORMAT or doc.get("key") != list(key):
                raise ValueError("format or key mismatch")
            headers = doc.get("headers", {})
            if not isinstance(headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
            ):
                raise ValueError("headers")
            return CachedItem(
                body=base64.b64decode(doc["body"], validate=True),
                expires=aware_utc(datetime.fromisoformat(doc["expires"])),
                fetched_at=aware_utc(datetime.fromisoformat(doc["fetched_at"])),
                headers=headers,
                url=str(doc.get("url", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, CollateralError):
            raise CollateralError(f"corrupt cache entry {_describe(key)}") from None

    def put(self, key: CacheKey, item: CachedItem) -> None:
        """Store ``item`` under ``key`` atomically (readers see the old or the new entry).

        Raises:
            CollateralError: the directory or file cannot be written.
        """
        path = self.path_for(key)
        doc = {
            "format": CACHE_FORMAT,
            "key": list(key),
            "url": item.url,
            "fetched_at": item.fetched_at.isoformat(),
            "expires": item.expires.isoformat(),
            "headers": dict(item.headers),
            "body": base64.b64encode(item.body).decode("ascii"),
        }
        data = json.dumps(doc, indent=1, sort_keys=True).encode()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data)
        except OSError as exc:
            raise CollateralError(
                f"cannot write cache entry {_describe(key)}: {exc.strerror}"
            ) from None

    def get_or_fetch(
        self,
        key: CacheKey,
        fetch: Callable[[], CachedItem] | None,
        *,
        now: datetime,
    ) -> CachedItem:
        """The entry for ``key``: cached when fresh at ``now``, else ``fetch()`` (stored).

        ``fetch=None`` means offline: a cached entry is returned even when stale (with a
        warning); a missing one raises.

        Raises:
            CollateralError: "offline and not cached: <key>", a corrupt entry offline, or
                whatever ``fetch`` raises.
        """
        t = aware_utc(now)
        try:
            item = self.get(key)
        except CollateralError:
            if fetch is None:
                raise
            _LOG.warning("replacing corrupt collateral cache entry %s", _describe(key))
            item = None
        if item is not None and item.fresh(t):
            return item
        if fetch is None:
            if item is None:
                raise CollateralError(f"offline and not cached: {_describe(key)}")
            _LOG.warning(
                "offline: using collateral %s past its nextUpdate %s",
                _describe(key),
                item.expires.isoformat(),
            )
            return item
        new = fetch()
        self.put(key, new)
        return new


# -- expiry extraction ----------------------------------------------------------------------


def crl_next_update(der: bytes, what: str) -> datetime:
    try:
        nxt = x509.load_der_x509_crl(der).next_update_utc
    except ValueError:
        raise CollateralError(f"{what}: malformed CRL") from None
    if nxt is None:
        raise CollateralError(f"{what}: CRL has no nextUpdate")
    return nxt


def make_item(
    body: bytes, expires: datetime, now: datetime, url: str, chain: bytes | None = None
) -> CachedItem:
    headers = {"issuer_chain": chain.decode("ascii")} if chain is not None else {}
    return CachedItem(body=body, expires=expires, fetched_at=now, headers=headers, url=url)


def _chain_of(item: CachedItem, key: CacheKey) -> bytes:
    chain = item.headers.get("issuer_chain")
    if chain is None:
        raise CollateralError(f"cache entry {_describe(key)} lacks its issuer chain")
    return chain.encode("ascii")


# -- Intel ----------------------------------------------------------------------------------


class CachingIntelCollateralProvider:
    """Intel collateral through a :class:`CollateralCache`.

    Args:
        client: the PCS/PCCS client (may be None when ``offline``).
        cache: the cache (default: :class:`CollateralCache` at its default directory).
        offline: never call the network; use the cache, then ``fixed_dirs``.
        fixed_dirs: collateral directories (:meth:`IntelCollateral.from_dir` layout, or
            parents of such directories) consulted offline when the cache lacks a set.

    Also implements the KBS ``CollateralProvider`` protocol (:meth:`for_quote`).

    Raises (constructor):
        CollateralError: online without a client.
    """

    def __init__(
        self,
        client: IntelPcsClient | None,
        cache: CollateralCache | None = None,
        *,
        offline: bool = False,
        fixed_dirs: Sequence[Path | str] = (),
    ) -> None:
        if client is None and not offline:
            raise CollateralError("an Intel PCS client is required unless offline")
        self.client = client
        self.cache = cache if cache is not None else CollateralCache()
        self.offline = offline
        self.fixed_dirs = tuple(Path(d) for d in fixed_dirs)

    def _fetcher(
        self, make: Callable[[IntelPcsClient], CachedItem]
    ) -> Callable[[], CachedItem] | None:
        client = self.client
        if self.offline or client is None:
            return None
        return lambda: make(client)

    def collateral_for(
        self, fmspc: bytes | str, ca: str, tee: str, now: datetime
    ) -> IntelCollateral:
        """The collateral set for ``fmspc`` / PCK ``ca`` / ``tee`` fresh at ``now``.

        Each of the four parts is cached separately (QE Identity and CRLs are shared by
        all FMSPCs). Offline, a set missing from the cache is looked up in ``fixed_dirs``
        by FMSPC and TEE.

        Raises:
            CollateralError: offline and neither cached nor in a fixed directory; a fetch
                failure; malformed parts; a TCB Info for another FMSPC/TEE.
        """
        t = aware_utc(now)
        fm = normalise_fmspc(fmspc)
        if tee not in ("sgx", "tdx") or ca not in ("processor", "platform"):
            raise CollateralError(f"unknown tee {tee!r} or PCK CA {ca!r}")
        try:
            parts = self._parts(fm, ca, tee, t)
        except CollateralError as exc:
            if self.offline and str(exc).startswith("offline and not cached"):
                found = self._from_fixed_dirs(fm, ca, tee)
                if found is not None:
                    return found
            raise
        tcb, qe, pck, root = parts
        source = f"cache {self.cache.directory} (fmspc {fm}, {tee}, {ca})"
        return assemble_collateral(
            fm, tee, tcb=tcb, qe=qe, pck_crl=pck, root_ca_crl=root, source=source
        )

    def _parts(
        self, fm: str, ca: str, tee: str, t: datetime
    ) -> tuple[PcsResponse, PcsResponse, PcsResponse, bytes]:
        def tcb_fetch(c: IntelPcsClient) -> CachedItem:
            r = c.tcb_info(fm, tee)
            try:
                nxt = parse_tcb_info(r.body).next_update
            except ParseError as exc:
                raise CollateralError(f"tcb_info: {exc}") from None
            return make_item(r.body, nxt, t, f"{c.base_url}/{tee}/tcb?fmspc={fm}", r.issuer_chain)

        def qe_fetch(c: IntelPcsClient) -> CachedItem:
            r = c.qe_identity(tee)
            try:
                nxt = parse_enclave_identity(r.body).next_update
            except ParseError as exc:
                raise CollateralError(f"qe_identity: {exc}") from None
            return make_item(r.body, nxt, t, f"{c.base_url}/{tee}/qe/identity", r.issuer_chain)

        def pck_fetch(c: IntelPcsClient) -> CachedItem:
            r = c.pck_crl(ca)
            nxt = crl_next_update(r.body, "PCK CRL")
            return make_item(r.body, nxt, t, f"{c.base_url}/sgx/pckcrl?ca={ca}", r.issuer_chain)

        def root_fetch(c: IntelPcsClient) -> CachedItem:
            body = c.root_ca_crl()
            return make_item(body, crl_next_update(body, "Root CA CRL"), t, c.root_ca_crl_url)

        keys: tuple[CacheKey, ...] = (
            ("intel", "tcb_info", tee, fm),
            ("intel", "qe_identity", tee),
            ("intel", "pck_crl", ca),
            ("intel", "root_ca_crl"),
        )
        makers = (tcb_fetch, qe_fetch, pck_fetch, root_fetch)
        items = [
            self.cache.get_or_fetch(k, self._fetcher(m), now=t)
            for k, m in zip(keys, makers, strict=True)
        ]
        tcb = PcsResponse(items[0].body, _chain_of(items[0], keys[0]))
        qe = PcsResponse(items[1].body, _chain_of(items[1], keys[1]))
        pck = PcsResponse(items[2].body, _chain_of(items[2], keys[2]))
        return tcb, qe, pck, items[3].body

    def _from_fixed_dirs(self, fm: str, ca: str, tee: str) -> IntelCollateral | None:
        best: IntelCollateral | None = None
        for d in self.fixed_dirs:
            if not d.is_dir():
                continue
            candidates = (
                [d]
                if (d / "tcb_info.json").is_file()
                else sorted(p for p in d.iterdir() if (p / "tcb_info.json").is_file())
            )
            for cand in candidates[:1024]:
                try:
                    with (cand / "tcb_info.json").open("rb") as fh:
                        info = parse_tcb_info(fh.read(MAX_ENTRY_BYTES))
                    if info.fmspc.hex().upper() != fm or info.id != tee.upper():
                        continue
                    coll = IntelCollateral.from_dir(cand)
                except (OSError, ParseError, CollateralError) as exc:
                    _LOG.debug("skipping collateral directory %s: %s", cand, exc)
                    continue
                issuer = coll.pck_crl.issuer.rfc4514_string()
                if f"PCK {ca.capitalize()} CA" not in issuer:
                    continue
                if best is None or info.issue_date > best.tcb_info.issue_date:
                    best = coll
        return best

    def for_quote(
        self, quote: Quote, *, now: datetime, anchor: TrustAnchor | None = None
    ) -> IntelCollateral | None:
        """KBS ``CollateralProvider``: the set for the quote's FMSPC, PCK CA and TEE.

        Returns None when the quote has no parsable PCK chain or its PCK issuer is neither
        Intel PCK CA (e.g. an emulated quote).

        Raises:
            CollateralError: as :meth:`collateral_for` (callers treat it as a failed
                verification: fail closed).
        """
        from teeflow.attestation.sgx.verify import decode_pck_chain

        pem = quote.pck_chain_pem
        if pem is None:
            return None
        try:
            leaf = decode_pck_chain(pem)[0]
            fmspc = parse_pck_extensions(leaf).fmspc
        except Error:
            return None
        issuer = leaf.issuer.rfc4514_string()
        if "Intel SGX PCK Processor CA" in issuer:
            ca = "processor"
        elif "Intel SGX PCK Platform CA" in issuer:
            ca = "platform"
        else:
            return None
        tee = {0x00: "sgx", 0x81: "tdx"}.get(quote.tee_type)
        if tee is None:
            return None
        return self.collateral_for(fmspc, ca, tee, now)
