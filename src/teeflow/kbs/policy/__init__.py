"""The KBS's document layer (pure: no network, no storage), grouped by role.

* :mod:`.canonical` — RFC 8785 canonical JSON, SHA-256 digests, base64url, signing domains;
* :mod:`.parties` — party keys (Ed25519 signing, X25519 recipient);
* :mod:`.agreement` — the federation agreement and its digest;
* :mod:`.signing` — party signatures, k-of-n updates, the append-only agreement history;
* :mod:`.grants` — data owners' signed grants and the release check.

Import names from their defining module (this package re-exports nothing).
"""

from __future__ import annotations

__all__: list[str] = []
