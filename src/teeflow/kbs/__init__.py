"""Key Broker Service (KBS) and policy manager — the trust centre of a federation.

Grouped by role (as Trustee separates the KBS, the attestation service and reference values):

* :mod:`teeflow.kbs.policy` — the pure document layer: canonical JSON, parties, the federation
  agreement and its signatures, grants;
* :mod:`teeflow.kbs.service` — the framework-free core
(:class:`~teeflow.kbs.service.core.KbsService`):
  RCAR attestation, resources, certificates, counters and the audit log;
* :mod:`teeflow.kbs.ca` — the federation CA and mutual TLS;
* :mod:`teeflow.kbs.store` — persistent state (SQLite, PostgreSQL, memory);
* :mod:`teeflow.kbs.api` — the HTTPS adapter (FastAPI, RFC 7807 catalog, uvicorn server);
* :mod:`teeflow.kbs.client` — the client SDK and KBS pinning;
* :mod:`teeflow.kbs.protocol` — the wire models (Trustee KBS protocol 0.4.0 + teeflow ``/v1``).

Formats and workflow: ``docs/agreement.md``, ``docs/kbs.md``. Import every name from its
defining module: packages re-export nothing.
"""

from __future__ import annotations

__all__: list[str] = []
