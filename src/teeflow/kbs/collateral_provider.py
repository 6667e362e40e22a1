"""Where the KBS gets Intel DCAP collateral (Endorsements) for a quote it verifies.

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
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from teeflow.attestation.dcap.collateral import IntelCollateral
from teeflow.attestation.dcap.pck import parse_pck_extensions
from teeflow.attestation.dcap.quote import Quote
from teeflow.attestation.sgx.verify import decode_pck_chain
from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import CollateralError, Error
from teeflow.platform.emulated import EmulationAuthority

__all__ = [
    "CollateralProvider",
    "CompositeCollateralProvider",
    "DirectoryCollateralProvider",
    "EmulatedCollateralProvider",
    "quote_fmspc",
]

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
        certs = decode_pck_chain(pem)
        return parse_pck_extensions(certs[0]).fmspc
    except Error:
        return None


class DirectoryCollateralProvider:
    """Collateral sets read from directories, keyed by the FMSPC of their TCB Info.

    Each path is either a collateral directory (it contains ``tcb_info.json``; the layout of
    :meth:`IntelCollateral.from_dir`) or a directory whose immediate subdirectories are
    collateral directories. When several sets have the same FMSPC, the one whose TCB Info
    was issued last wins. :meth:`reload` re-reads everything (e.g. after a refresh job).

    Raises (constructor and :meth:`reload`):
        CollateralError: a path does not exist, more than :data:`MAX_DIRECTORIES` sets, or a
            collateral directory is incomplete or malformed (the message names it).
    """

    def __init__(self, dirs: Iterable[Path | str]) -> None:
        self._dirs = tuple(Path(d) for d in dirs)
        self._lock = threading.Lock()
        self._by_fmspc: dict[bytes, IntelCollateral] = {}
        self.reload()

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
        index: dict[bytes, IntelCollateral] = {}
        for d in self._collateral_dirs():
            coll = IntelCollateral.from_dir(d)
            fmspc = coll.tcb_info.fmspc
            old = index.get(fmspc)
            if old is None or coll.tcb_info.issue_date > old.tcb_info.issue_date:
                index[fmspc] = coll
        with self._lock:
            self._by_fmspc = index

    @property
    def fmspcs(self) -> tuple[bytes, ...]:
        """FMSPCs with a collateral set, sorted."""
        with self._lock:
            return tuple(sorted(self._by_fmspc))

    def for_quote(
        self, quote: Quote, *, now: datetime, anchor: TrustAnchor | None = None
    ) -> IntelCollateral | None:
        """See :meth:`CollateralProvider.for_quote` (``now`` and ``anchor`` unused: the
        verifier checks validity windows and chains)."""
        fmspc = quote_fmspc(quote)
        if fmspc is None:
            return None
        with self._lock:
            return self._by_fmspc.get(fmspc)


class EmulatedCollateralProvider:
    """Collateral of a teeflow :class:`EmulationAuthority`, fresh at each ``now``.

    Only quotes whose PCK chain carries the authority's FMSPC get a set; anything else gets
    None. Emulated evidence is still refused unless the agreement sets ``allow_emulated``.
    """

    def __init__(self, authority: EmulationAuthority) -> None:
        self._authority = authority

    def for_quote(
        self, quote: Quote, *, now: datetime, anchor: TrustAnchor | None = None
    ) -> IntelCollateral | None:
        """See :meth:`CollateralProvider.for_quote`. Returns None when ``anchor`` is given
        and is not emulated, when the FMSPC differs, or when ``now`` is outside the
        authority's validity."""
        if anchor is not None and not anchor.emulated:
            return None
        fmspc = quote_fmspc(quote)
        if fmspc is None:
            return None
        try:
            coll = self._authority.collateral(now)
        except Error:
            return None
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
