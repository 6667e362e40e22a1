"""Endorsements (collateral) from the vendors: Intel PCS v4 and AMD KDS clients, and a cache.

* :class:`IntelPcsClient` — SGX/TDX TCB Info, QE Identity, PCK CRL, Root CA CRL from Intel
  PCS or a PCCS (:mod:`.intel_pcs`);
* :class:`AmdKdsClient` — VCEK by hwID + TCB, ASK/ASVK + ARK chains, CRLs (:mod:`.amd_kds`);
* :class:`CollateralCache`, :class:`CachingIntelCollateralProvider`,
  :class:`CachingAmdKdsClient` — on-disk cache honouring ``nextUpdate``, offline mode
  (:mod:`.cache`).

Both clients take an injectable :class:`httpx.BaseTransport`; the verifiers never fetch
anything themselves (DESIGN "Evidence pipeline": network and time are injected).
"""

from __future__ import annotations

from teeflow.attestation.collateral.amd_kds import (
    DEFAULT_KDS_URL,
    KDS_PRODUCTS,
    AmdKdsClient,
    CachingAmdKdsClient,
)
from teeflow.attestation.collateral.cache import (
    CachedItem,
    CachingIntelCollateralProvider,
    CollateralCache,
    default_cache_dir,
)
from teeflow.attestation.collateral.intel_pcs import (
    DEFAULT_PCS_URL,
    INTEL_ROOT_CA_CRL_URL,
    IntelPcsClient,
    PcsResponse,
)

__all__ = [
    "DEFAULT_KDS_URL",
    "DEFAULT_PCS_URL",
    "INTEL_ROOT_CA_CRL_URL",
    "KDS_PRODUCTS",
    "AmdKdsClient",
    "CachedItem",
    "CachingAmdKdsClient",
    "CachingIntelCollateralProvider",
    "CollateralCache",
    "IntelPcsClient",
    "PcsResponse",
    "default_cache_dir",
]
