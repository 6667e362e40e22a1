"""Key Broker Service (KBS) and policy manager — the trust centre of a federation.

This package holds the pure, framework-free document layer (no network, no storage):

* :mod:`teeflow.kbs.canonical` — RFC 8785 canonical JSON, SHA-256 digests, base64url,
  signing domain separators;
* :mod:`teeflow.kbs.parties` — party keys (Ed25519 signing, X25519 recipient);
* :mod:`teeflow.kbs.agreement` — the federation agreement, its digest, party signatures,
  k-of-n updates and the append-only :class:`AgreementHistory`;
* :mod:`teeflow.kbs.grants` — data owners' signed grants and the release check
  :func:`grant_allows`.

Formats and workflow: ``docs/agreement.md``. The service (RCAR protocol, storage, federation
CA, audit) lives in other modules of this package.
"""

from __future__ import annotations

from teeflow.kbs.agreement import (
    FederationAgreement,
    OutputKind,
    PackageSpec,
    PartyRole,
    PartySpec,
    SgxReferenceValues,
    UpdateQuorum,
    WorkloadRole,
    WorkloadSpec,
    digest,
)
from teeflow.kbs.agreement_signing import (
    AgreementHistory,
    SignedAgreement,
    sign_agreement,
    verify_initial,
    verify_update,
)
from teeflow.kbs.grants import (
    Grant,
    SignedGrant,
    grant_allows,
    grant_digest,
    new_grant_id,
    sign_grant,
    verify_grant,
)
from teeflow.kbs.parties import PartyKeys, PartyPublic

__all__ = [
    "AgreementHistory",
    "FederationAgreement",
    "Grant",
    "OutputKind",
    "PackageSpec",
    "PartyKeys",
    "PartyPublic",
    "PartyRole",
    "PartySpec",
    "SgxReferenceValues",
    "SignedAgreement",
    "SignedGrant",
    "UpdateQuorum",
    "WorkloadRole",
    "WorkloadSpec",
    "digest",
    "grant_allows",
    "grant_digest",
    "new_grant_id",
    "sign_agreement",
    "sign_grant",
    "verify_grant",
    "verify_initial",
    "verify_update",
]
