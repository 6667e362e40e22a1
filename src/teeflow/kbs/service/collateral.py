"""Where the KBS gets Endorsements: Intel DCAP collateral for SGX/TDX quotes, AMD VCEK/VLEK
chains for SEV-SNP reports.

The verifier never fetches anything itself (DESIGN "Evidence pipeline": network and time are
injected). The KBS asks a :class:`CollateralProvider` for the collateral set matching a
quote's platform — keyed by the FMSPC in the quote's PCK certificate (Intel SGX PCK
Certificate and CRL Profile, SGX extension OID 1.2.840.113741.1.13.1.4) — and passes it to
:func:`teeflow.attestation.sgx.verify`. ``None`` means "no collateral": verification then
fails closed with :class:`~teeflow.errors.CollateralError` (TCB status unknown).

Providers:

* :class:`DirectoryCollateralProvider` — collateral directories on disk
  (:meth:`IntelCollateral.from_dir` layout), e.g. fetched from Intel PCS by an operator job;
* :class:`EmulatedCollateralProvider` — the collateral of a teeflow emulation authority,
  regenerated for ``now`` (development and CI only);
* :class:`CompositeCollateralProvider` — the first provider that has a set wins.

SGX and TDX quotes share FMSPCs but not collateral (TCB Info ``id`` "SGX" vs "TDX", QE
Identity "QE" vs "TD_QE"): every provider keys its sets by (FMSPC, TEE) with the TEE from
the quote header (``tee_type`` 0 = SGX, 0x81 = TDX).

SEV-SNP (:class:`SnpEndorsementProvider`): when an attester sends no ``cert_chain``, the KBS
asks for the VCEK of the report's chip and reported TCB, the ASK/ARK chain and the CRL —
:class:`KdsSnpEndorsementProvider` reads them through the cached AMD KDS client
(:class:`teeflow.attestation.collateral.CachingAmdKdsClient`; AMD "VCEK Certificate and
KDS Interface Specification" #57230).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from teeflow.attestation.collateral import CachingAmdKdsClient
from teeflow.attestation.dcap.collateral import IntelCollateral
from teeflow.attestation.dcap.quote import TEE_TYPE_SGX, TEE_TYPE_TDX, Quote
from teeflow.attestation.dcap.verify_common import load_pck_chain
from teeflow.attestation.snp.abi import AttestationReport, SigningKey
from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import CollateralError, Error
from teeflow.platform.emulated import EmulationAuthority
from teeflow.platform.emulated_collateral import CollateralFiles, collateral_from_files
from teeflow.platform.emulated_tdx import make_tdx_collateral_files
from teeflow.platform.emulated_trust import TrustedEmulationRoot

__all__ = [
    "CollateralProvider",
    "CompositeCollateralProvider",
    "DirectoryCollateralProvider",
    "EmulatedCollateralProvider",
    "KdsSnpEndorsementProvider",
    "SnpEndorsementProvider",
    "SnpEndorsements",
    "TrustedEmulationCollateralProvider",
    "quote_fmspc",
    "quote_tee",
]

#: Quote header ``tee_type`` -> TCB Info ``id``.
_TEE_IDS = {TEE_TYPE_SGX: "SGX", TEE_TYPE_TDX: "TDX"}

#: Most collateral directories a :class:`DirectoryCollateralProvider` loads.
MAX_DIRECTORIES = 1024


@runtime_checkable
class CollateralProvider(Protocol):
    """Supplies the collateral set for a quote, or None when it has none."""

    def for_quote(
        self, quote: Quote, *, now: datetime, anchor: TrustAnchor | None = None
    ) -> IntelCollateral | None:
        """The collateral for ``quote``'s platform valid around ``now``, or None.

        Args:
            quote: the parsed (not yet verified) quote.
            now: verification time (timezone-aware); providers that generate collateral
                (emulated) produce a set valid at ``now``.
            anchor: the trust anchor the caller expects the chain to end in, if known.

        Never raises for an unknown platform; returns None instead.
        """
        ...


def quote_fmspc(quote: Quote) -> bytes | None:
    """The 6-byte FMSPC of the quote's PCK leaf certificate, or None when the quote carries
    no parsable PCK chain (certification data type 5). Not a verification: the chain's
    signatures are checked later by ``verify``."""
    pem = quote.pck_chain_pem
    if pem is None:
        return None
    try:
        return load_pck_chain(pem)[1].fmspc  # cached: the verifier reuses the same parse
    except Error:
        return None


def quote_tee(quote: Quote) -> str | None:
    """``"SGX"`` or ``"TDX"`` from the quote header's ``tee_type`` (the TCB Info ``id`` its
    collateral must carry), or None for another value."""
    return _TEE_IDS.get(quote.tee_type)


class DirectoryCollateralProvider:
    """Collateral sets read from directories, keyed by FMSPC and TEE of their TCB Info.

    Each path is either a collateral directory (it contains ``tcb_info.json``; the layout of
    :meth:`IntelCollateral.from_dir`) or a directory whose immediate subdirectories are
    collateral directories. When several sets have the same FMSPC and TEE (``id`` "SGX" or
    "TDX"), the one whose TCB Info was issued last wins. :meth:`reload` re-reads
    everything (e.g. after a refresh job).

    Refresh (issue 11): a set whose TCB Info or QE Identity passed its ``nextUpdate``, or a
    ``tcb_info.json`` that changed on disk (a refresh job wrote a new set — e.g. a TCB
    recovery that makes a platform ``OutOfDate``), makes the next request re-read the
    directories (at most once a second); a reload that fails keeps the sets in use (the
    verifier still refuses an expired one: fail closed).

    Raises (constructor and :meth:`reload`):
        CollateralError: a path does not exist, more than :data:`MAX_DIRECTORIES` sets, or a
            collateral directory is incomplete or malformed (the message names it).
    """

    def __init__(self, dirs: Iterable[Path | str]) -> None:
        self._dirs = tuple(Path(d) for d in dirs)
        self._lock = threading.Lock()
        self._by_fmspc: dict[tuple[bytes, str], IntelCollateral] = {}
        self._stamp: tuple[tuple[str, int], ...] = ()
        self._checked = 0.0
        self.reload()

    def _disk_stamp(self) -> tuple[tuple[str, int], ...]:
        """``(path, mtime_ns)`` of every ``tcb_info.json`` (a refresh job replaces it last)."""
        stamp: list[tuple[str, int]] = []
        for d in self._collateral_dirs():
            try:
                stamp.append((str(d), (d / "tcb_info.json").stat().st_mtime_ns))
            except OSError:
                continue
        return tuple(stamp)

    def _refresh(self, now: datetime) -> None:
        """Re-read when a held set is past its ``nextUpdate`` or the files changed (at most
        once a second; errors keep the sets in use)."""
        import time

        t = time.monotonic()
        with self._lock:
            if t - self._checked < 1.0:
                return
            self._checked = t
            stale = any(
                min(c.tcb_info.next_update, c.qe_identity.next_update) <= now
                for c in self._by_fmspc.values()
            )
        try:
            if stale or self._disk_stamp() != self._stamp:
                self.reload()
        except CollateralError:
            return

    def _collateral_dirs(self) -> list[Path]:
        found: list[Path] = []
        for d in self._dirs:
            if not d.is_dir():
                raise CollateralError(f"collateral directory {d} does not exist")
            if (d / "tcb_info.json").is_file():
                found.append(d)
            else:
                found += sorted(p for p in d.iterdir() if (p / "tcb_info.json").is_file())
            if len(found) > MAX_DIRECTORIES:
                raise CollateralError(f"more than {MAX_DIRECTORIES} collateral directories")
        return found

    def reload(self) -> None:
        """Re-read every collateral directory (atomically replaces the index)."""
        index: dict[tuple[bytes, str], IntelCollateral] = {}
        stamp = self._disk_stamp()
        for d in self._collateral_dirs():
            coll = IntelCollateral.from_dir(d)
            key = (coll.tcb_info.fmspc, coll.tcb_info.id.upper())
            old = index.get(key)
            if old is None or coll.tcb_info.issue_date > old.tcb_info.issue_date:
                index[key] = coll
        with self._lock:
            self._by_fmspc = index
            self._stamp = stamp

    @property
    def fmspcs(self) -> tuple[bytes, ...]:
        """FMSPCs with a collateral set, sorted."""
        with self._lock:
            return tuple(sorted({fmspc for fmspc, _ in self._by_fmspc}))

    def for_quote(
        self, quote: Quote, *, now: datetime, anchor: TrustAnchor | None = None
    ) -> IntelCollateral | None:
        """See :meth:`CollateralProvider.for_quote` (``anchor`` unused: the verifier checks
        validity windows and chains; ``now`` decides a refresh, class docstring)."""
        self._refresh(now)
        fmspc, tee = quote_fmspc(quote), quote_tee(quote)
        if fmspc is None or tee is None:
            return None
        with self._lock:
            return self._by_fmspc.get((fmspc, tee))


class EmulatedCollateralProvider:
    """Collateral of a teeflow :class:`EmulationAuthority`, fresh at each ``now``.

    SGX quotes get the authority's SGX set; TDX quotes a TDX set (TCB Info "TDX" v3,
    TD_QE Identity; :func:`teeflow.platform.emulated_tdx.make_tdx_collateral_files` with
    the default emulated TEE_TCB_SVN), generated once and regenerated when stale. Only
    quotes whose PCK chain carries the authority's FMSPC get a set; anything else gets None.
    Emulated evidence is still refused unless the agreement sets ``allow_emulated``.
    """

    def __init__(self, authority: EmulationAuthority) -> None:
        self._authority = authority
        self._lock = threading.Lock()
        self._tdx: tuple[CollateralFiles, IntelCollateral] | None = None

    def _tdx_collateral(self, now: datetime) -> IntelCollateral:
        with self._lock:
            if self._tdx is None or not self._tdx[0].fresh_at(now):
                files = make_tdx_collateral_files(self._authority.keys, now)
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
                self._tdx = (files, coll)
            return self._tdx[1]

    def for_quote(
        self, quote: Quote, *, now: datetime, anchor: TrustAnchor | None = None
    ) -> IntelCollateral | None:
        """See :meth:`CollateralProvider.for_quote`. Returns None when ``anchor`` is given
        and is not emulated, when the FMSPC differs, for a TEE other than SGX/TDX, or when
        ``now`` is outside the authority's validity."""
        if anchor is not None and not anchor.emulated:
            return None
        fmspc, tee = quote_fmspc(quote), quote_tee(quote)
        if fmspc is None or tee is None:
            return None
        try:
            coll = self._authority.collateral(now) if tee == "SGX" else self._tdx_collateral(now)
        except Error:
            return None
        return coll if coll.tcb_info.fmspc == fmspc else None


class TrustedEmulationCollateralProvider:
    """Collateral of another site's emulation root trusted by certificate
    (:class:`teeflow.platform.emulated_trust.TrustedEmulationRoot`): answers only for quotes
    whose chain ended at *that* root (``anchor``), with the public collateral the site
    exported (SGX or TDX by the quote's TEE), while it is valid and its FMSPC matches."""

    def __init__(self, root: TrustedEmulationRoot) -> None:
        self._root = root
        self._der = root.anchor.certificate.public_bytes(Encoding.DER)
        self._parsed: dict[str, IntelCollateral] = {}
        self._lock = threading.Lock()

    def for_quote(
        self, quote: Quote, *, now: datetime, anchor: TrustAnchor | None = None
    ) -> IntelCollateral | None:
        """See :meth:`CollateralProvider.for_quote`. Without ``anchor``, the quote's PCK
        chain must end in this root (its top certificate is the root or was issued by it;
        emulation roots made since issue 14 have distinct subjects); verification checks the
        signatures later."""
        root = self._root.anchor.certificate
        if anchor is not None:
            if anchor.certificate.public_bytes(Encoding.DER) != self._der:
                return None
        else:
            pem = quote.pck_chain_pem
            try:
                top = load_pck_chain(pem)[0][-1] if pem is not None else None
            except Error:
                return None
            if top is None or (
                top.public_bytes(Encoding.DER) != self._der and top.issuer != root.subject
            ):
                return None
        fmspc, tee = quote_fmspc(quote), quote_tee(quote)
        key = {"SGX": "sgx", "TDX": "tdx"}.get(tee or "")
        files = self._root.collateral.get(key or "")
        if fmspc is None or files is None or not files.issue_date <= now < files.next_update:
            return None
        with self._lock:
            coll = self._parsed.get(key or "")
            if coll is None:
                try:
                    coll = collateral_from_files(files, source=f"emulated-trusted-{key}")
                except Error:
                    return None
                self._parsed[key or ""] = coll
        return coll if coll.tcb_info.fmspc == fmspc else None


class CompositeCollateralProvider:
    """Asks each provider in order; the first non-None answer wins."""

    def __init__(self, providers: Sequence[CollateralProvider]) -> None:
        self._providers = tuple(providers)

    def for_quote(
        self, quote: Quote, *, now: datetime, anchor: TrustAnchor | None = None
    ) -> IntelCollateral | None:
        """See :meth:`CollateralProvider.for_quote`."""
        for provider in self._providers:
            coll = provider.for_quote(quote, now=now, anchor=anchor)
            if coll is not None:
                return coll
        return None


# -- AMD SEV-SNP ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnpEndorsements:
    """What :func:`teeflow.attestation.snp.verify` needs besides the report.

    Attributes:
        endorsement_cert: the VCEK or VLEK certificate.
        intermediates: ASK / ASVK (optionally followed by the ARK), leaf first; empty =
            AMD's shipped certificate of the product.
        crl: the product's KDS CRL, or None.
    """

    endorsement_cert: x509.Certificate
    intermediates: tuple[x509.Certificate, ...] = ()
    crl: x509.CertificateRevocationList | None = None


@runtime_checkable
class SnpEndorsementProvider(Protocol):
    """Supplies the VCEK/VLEK chain for an SEV-SNP report sent without ``cert_chain``."""

    def for_report(self, report: AttestationReport, *, now: datetime) -> SnpEndorsements | None:
        """The endorsements for ``report`` (parsed, not yet verified), or None.

        Raises:
            CollateralError: a fetch failed or returned malformed data (callers fail closed).
        """
        ...


class KdsSnpEndorsementProvider:
    """VCEKs (by CHIP_ID and REPORTED_TCB), ASK/ARK chains and CRLs from AMD KDS through a
    :class:`~teeflow.attestation.collateral.CachingAmdKdsClient` (cache, offline mode).

    Only VCEK-signed reports of a known product (CPUID in report v3+) are served: a VLEK
    is issued to a cloud provider and must come in the evidence's ``cert_chain``.
    """

    def __init__(self, kds: CachingAmdKdsClient) -> None:
        self._kds = kds

    def for_report(self, report: AttestationReport, *, now: datetime) -> SnpEndorsements | None:
        """See :meth:`SnpEndorsementProvider.for_report`; None for a VLEK-signed report or
        an unknown product.

        Raises:
            CollateralError: KDS or cache failure, malformed certificates or CRL.
        """
        product = report.product
        if product is None or report.signing_key is not SigningKey.VCEK:
            return None
        spl = report.reported_tcb.for_product(product).components()
        tcb = {"bl": spl["bootloader"], "tee": spl["tee"], "snp": spl["snp"],
               "ucode": spl["microcode"]}  # fmt: skip
        if "fmc" in spl:
            tcb["fmc"] = spl["fmc"]
        name = str(product)
        try:
            vcek = x509.load_der_x509_certificate(
                self._kds.vcek(name, report.chip_id, tcb, now=now)
            )
            ask, _ark = self._kds.cert_chain(name, "vcek", now=now)
            crl = x509.load_der_x509_crl(self._kds.crl(name, "vcek", now=now))
            return SnpEndorsements(vcek, (x509.load_pem_x509_certificate(ask),), crl)
        except ValueError:
            raise CollateralError("AMD KDS returned a malformed certificate or CRL") from None
