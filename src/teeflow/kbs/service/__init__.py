"""The framework-free KBS core, grouped by role (as Trustee separates the KBS, the attestation
service and reference values).

* :mod:`.core` — :class:`~teeflow.kbs.service.core.KbsService`, a thin facade over:
  :mod:`.agreements` (the agreement in force), :mod:`.attestation` (RCAR auth/attest/authorize),
  :mod:`.resources` (uploads and releases), :mod:`.certificates` (workload certificates) and
  :mod:`.ledger` (counters and the audit log), sharing one :mod:`.context`;
* :mod:`.rcar`, :mod:`.evidence`, :mod:`.collateral` — attestation checks, per-TEE evidence
  adapters and Endorsement providers; :mod:`.release` — release decisions under grants;
* :mod:`.audit` — the hash-chained signed audit log; :mod:`.identity` — the KBS key set sealed
  to its platform; :mod:`.self_attestation` — the KBS's own evidence.

Import names from their defining module (this package re-exports nothing).
"""

from __future__ import annotations

__all__: list[str] = []
