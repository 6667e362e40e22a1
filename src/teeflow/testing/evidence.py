"""Evidence factory for tests of other modules (never imported by teeflow itself).

One in-memory :class:`~teeflow.platform.emulated.EmulationAuthority` is generated per
process (certificates valid 2019-12-31 .. 2039-12-26, so any test ``now`` in between works)
and reused; collateral is produced for the ``now`` each call asks for. Quotes are real
DCAP v3 quotes, verified by the shared verifier with ``anchor`` and ``collateral``::

    quote, anchor, collateral = make_emulated_quote(b"nonce", now=NOW)
    verified = sgx.verify(parse_quote(quote), anchors=[anchor], collateral=collateral, now=NOW)
"""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from teeflow.attestation.trust import TrustAnchor
from teeflow.platform.emulated import EmulatedSgx, EmulationAuthority

if TYPE_CHECKING:
    from teeflow.attestation.dcap.collateral import IntelCollateral
    from teeflow.workload.manifest import WorkloadManifest

__all__ = [
    "AUTHORITY_EPOCH",
    "DEFAULT_NOW",
    "TEST_MEASUREMENT",
    "emulated_authority",
    "make_emulated_quote",
]

#: Generation time of the per-process test authority (certificates start a day earlier).
AUTHORITY_EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
#: A fixed "now" tests can share (inside the authority's validity).
DEFAULT_NOW = datetime(2025, 6, 20, 12, 0, 0, tzinfo=UTC)
#: Default workload measurement of test quotes: SHA-256(b"teeflow test workload").
TEST_MEASUREMENT = hashlib.sha256(b"teeflow test workload").digest()

_lock = threading.Lock()
_authority: EmulationAuthority | None = None


def emulated_authority() -> EmulationAuthority:
    """The per-process in-memory emulation authority (created on first use)."""
    global _authority  # noqa: PLW0603 - process-wide cache by design
    with _lock:
        if _authority is None:
            _authority = EmulationAuthority.generate(AUTHORITY_EPOCH)
        return _authority


def make_emulated_quote(
    report_data: bytes = b"",
    *,
    measurement: bytes | None = None,
    manifest: WorkloadManifest | None = None,
    now: datetime | None = None,
    isv_prod_id: int = 0,
    isv_svn: int = 0,
) -> tuple[bytes, TrustAnchor, IntelCollateral]:
    """Make an emulated SGX quote and what is needed to verify it at ``now``.

    Args:
        report_data: up to 64 bytes bound into REPORT_DATA (zero-padded).
        measurement: MRENCLAVE (32 bytes); default :data:`TEST_MEASUREMENT` unless
            ``manifest`` is given.
        now: verification time the collateral must cover (default :data:`DEFAULT_NOW`).

    Returns:
        ``(quote_bytes, emulation trust anchor, IntelCollateral valid at now)``.

    Raises:
        PlatformError: bad report_data / measurement, or ``now`` outside 2020..2039.
    """
    authority = emulated_authority()
    when = now if now is not None else DEFAULT_NOW
    if measurement is None and manifest is None:
        measurement = TEST_MEASUREMENT
    sgx = EmulatedSgx(
        authority,
        measurement=measurement,
        manifest=manifest,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
    )
    return sgx.quote(report_data), authority.trust_anchor(), authority.collateral(when)
