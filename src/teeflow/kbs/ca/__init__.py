"""The federation CA: :mod:`.authority` (workload certificates with the teeflow identity
extension) and :mod:`.tls` (mutual-TLS contexts and peer identities).

Import names from their defining module (this package re-exports nothing).
"""

from __future__ import annotations

__all__: list[str] = []
