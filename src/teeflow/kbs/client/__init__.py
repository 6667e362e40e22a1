"""The KBS client side: :mod:`.sdk` (:class:`~teeflow.kbs.client.sdk.KbsClient`, the RCAR flow
and teeflow's ``/v1`` calls over pinned TLS) and :mod:`.pinning` (verifying the KBS's own
evidence and pin files).

Import names from their defining module (this package re-exports nothing).
"""

from __future__ import annotations

__all__: list[str] = []
