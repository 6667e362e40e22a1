"""Grants: a data owner's signed consent to release one resource (DESIGN.md Glossary "grant").

A grant says: *this resource (a data or model key held by the KBS) may be released to
workloads of these roles, optionally only with these measurements, running one of these
packages and functions, with outputs sealed only to these recipients, until ``not_after``,
at most ``max_releases`` times — under this federation agreement.* It follows SecretFlow
AuthManager's authorisation (function hash + data ids bound to the attested key), extended
with output recipients.

Document (YAML or JSON; :class:`Grant`, pydantic v2, frozen, unknown keys refused)::

    id: 3q2-7wAAAAAAAAAAAAAAAA          # random nonce (8..64 base64url chars), unique per grant
    resource: hospital-a/dataset-key/v1 # Trustee KBS resource path <repository>/<type>/<tag>
    owner: hospital-a                   # the consenting party (its key signs)
    agreement: <64 hex>                 # digest of the agreement the grant was made under
    roles: [client]                     # workload roles that may receive the resource
    mrenclave: []                       # optional narrowing of the agreement's MRENCLAVEs
    packages: [<64 hex>]                # allowed package digests ([] = no package may be claimed)
    functions: [train]                  # allowed functions/entrypoints ([] = none may be claimed)
    recipients: [hospital-a]            # parties outputs may be sealed to
    parties: [hospital-a]               # optional: only workloads enrolled by these parties
    created_at: 2025-06-01T00:00:00Z
    not_after: 2025-12-31T23:59:59Z
    max_releases: 10
    # optional, binding the whole job (TEEU; omitted from the document when unset):
    co_inputs: [bank-b/teeu-input/<64 hex>]  # resources that must be inputs of the same job
    co_owners: [bank-b]                 # parties that must each own an input of the job
    min_owners: 2                       # distinct owners among the job's inputs

``parties`` restricts the release to workloads acting for these parties (the party of the
workload's verified enrollment, :mod:`teeflow.kbs.policy.enrollment`); empty (the default,
omitted from the digested document so grants signed before it existed keep their digest)
means any enrolled party of the granted roles. A workload without an enrollment never gets
a resource.

Empty ``packages``/``functions`` are *not* wildcards: they mean the request must claim no
package/function (e.g. a model server, identified by its measurement alone). Set-like lists are
sorted and de-duplicated, datetimes normalised to UTC.

**Whole-job binding** (issue 10, "TEEU grants bind the whole job"): the attested runtime
data of a job lists *all* its inputs (``resources``); a grant with ``co_inputs``,
``co_owners`` or ``min_owners`` is released only to a job whose inputs contain every
``co_inputs`` id, an input of every ``co_owners`` party and inputs of at least
``min_owners`` distinct owners. A resource's owner is the repository part of its path (the
KBS accepts a party resource only under its owner's name). So one owner cannot run a
"joint" function on another's input alone.

Digest: ``SHA-256(RFC 8785 canonical JSON of`` :meth:`Grant.to_document` ``)`` — the
``model_dump(mode="json")`` without the three whole-job members when they are unset and
without an empty ``parties`` (so the digests and signatures of grants made before they
existed are unchanged); signature:
Ed25519 by the owner over ``b"teeflow-grant-v1\\0" || digest``, base64url (:class:`SignedGrant`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import Field, StringConstraints, field_validator, model_validator

from teeflow.attestation.policy import Hex32, load_policy_document, normalize_hex
from teeflow.errors import KbsError, PolicyViolation, VerificationError
from teeflow.kbs.policy.agreement import (
    FederationAgreement,
    Ident,
    PartyRole,
    UtcDatetime,
    WorkloadRole,
    digest,
)
from teeflow.kbs.policy.canonical import (
    GRANT_DOMAIN,
    DocumentModel,
    b64url_encode,
    sha256_digest,
    signing_input,
    sorted_unique,
    validate_document,
)
from teeflow.kbs.policy.parties import B64Sig64, Name, PartyKeys, verify_ed25519

__all__ = [
    "MAX_GRANT_ITEMS",
    "Grant",
    "ResourcePath",
    "SignedGrant",
    "grant_allows",
    "grant_digest",
    "job_binding_problems",
    "new_grant_id",
    "sign_grant",
    "verify_grant",
]

#: Upper bound on each list in a grant.
MAX_GRANT_ITEMS = 256
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"

#: ``<repository>/<type>/<tag>`` (Trustee KBS resource URI path); segments 1..128 of
#: ``A-Za-z0-9._-``, not starting with ``.``.
ResourcePath = Annotated[str, StringConstraints(pattern=rf"^{_SEGMENT}/{_SEGMENT}/{_SEGMENT}$")]
GrantId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,64}$")]


def new_grant_id() -> str:
    """A fresh random grant id: 16 bytes from ``os.urandom``, base64url (22 characters)."""
    return b64url_encode(os.urandom(16))


class Grant(DocumentModel):
    """A data owner's consent (see the module docstring for fields and semantics)."""

    id: GrantId
    resource: ResourcePath
    owner: Name
    agreement: Hex32
    roles: tuple[WorkloadRole, ...] = Field(min_length=1, max_length=len(WorkloadRole))
    mrenclave: tuple[Hex32, ...] = Field(default=(), max_length=MAX_GRANT_ITEMS)
    packages: tuple[Hex32, ...] = Field(default=(), max_length=MAX_GRANT_ITEMS)
    functions: tuple[Ident, ...] = Field(default=(), max_length=MAX_GRANT_ITEMS)
    recipients: tuple[Name, ...] = Field(default=(), max_length=MAX_GRANT_ITEMS)
    parties: tuple[Name, ...] = Field(default=(), max_length=MAX_GRANT_ITEMS)
    created_at: UtcDatetime
    not_after: UtcDatetime
    max_releases: int = Field(ge=1, le=2**31 - 1)
    co_inputs: tuple[ResourcePath, ...] = Field(default=(), max_length=MAX_GRANT_ITEMS)
    co_owners: tuple[Name, ...] = Field(default=(), max_length=MAX_GRANT_ITEMS)
    min_owners: int = Field(default=1, ge=1, le=MAX_GRANT_ITEMS)

    @field_validator("roles", "mrenclave", "packages", "functions", "recipients", "co_inputs",
                     "co_owners", "parties", mode="after")
    @classmethod
    def _norm(cls, value: tuple[Any, ...]) -> tuple[Any, ...]:
        return sorted_unique(value)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.created_at >= self.not_after:
            raise ValueError("created_at must be before not_after")
        if self.functions and not self.packages:
            raise ValueError("functions need at least one package")
        return self

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Grant:
        """Validate a parsed grant document.

        Raises:
            ParseError: every schema problem, in one message.
        """
        return validate_document(cls, data, "grant")

    @classmethod
    def load(cls, path: Path | str) -> Grant:
        """Read a YAML/JSON grant file (≤ 1 MiB, duplicate keys refused).

        Raises:
            ParseError: unreadable, malformed or invalid.
        """
        return cls.from_mapping(load_policy_document(path))

    def to_document(self) -> dict[str, Any]:
        """The JSON value that is digested: ``model_dump(mode="json")`` without the unset
        whole-job members (``co_inputs``, ``co_owners``, ``min_owners``) and without
        ``parties`` when it is empty."""
        doc = self.model_dump(mode="json")
        for name, unset in _JOB_DEFAULTS.items():
            if doc.get(name) == unset:
                doc.pop(name, None)
        if not doc.get("parties"):
            doc.pop("parties", None)
        return doc

    @property
    def binds_job(self) -> bool:
        """Whether the grant constrains the job's other inputs."""
        return bool(self.co_inputs or self.co_owners or self.min_owners > 1)

    def to_yaml(self) -> str:
        """YAML text of :meth:`to_document`."""
        import yaml

        return yaml.safe_dump(self.to_document(), sort_keys=False)


_JOB_DEFAULTS: dict[str, Any] = {"co_inputs": [], "co_owners": [], "min_owners": 1}


class SignedGrant(DocumentModel):
    """A grant with its owner's signature (base64url Ed25519, 64 bytes)."""

    grant: Grant
    signature: B64Sig64

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> SignedGrant:
        """Validate a parsed ``{grant, signature}`` document.

        Raises:
            ParseError: invalid document.
        """
        return validate_document(cls, data, "signed grant")

    @classmethod
    def load(cls, path: Path | str) -> SignedGrant:
        """Read a YAML/JSON signed grant file.

        Raises:
            ParseError: unreadable, malformed or invalid.
        """
        return cls.from_mapping(load_policy_document(path))


def grant_digest(grant: Grant) -> bytes:
    """SHA-256 (32 bytes) of the RFC 8785 canonical JSON of :meth:`Grant.to_document`."""
    return sha256_digest(grant.to_document())


def sign_grant(grant: Grant, owner_keys: PartyKeys) -> SignedGrant:
    """Sign ``grant`` with its owner's Ed25519 key (over ``GRANT_DOMAIN || grant_digest``).

    Raises:
        KbsError: ``owner_keys`` belong to another party than ``grant.owner``.
    """
    if owner_keys.name != grant.owner:
        raise KbsError(f"grant owner is {grant.owner}, keys belong to {owner_keys.name}")
    sig = owner_keys.sign(signing_input(GRANT_DOMAIN, grant_digest(grant)))
    return SignedGrant(grant=grant, signature=b64url_encode(sig))


def _policy_problems(grant: Grant, agreement: FederationAgreement) -> list[str]:
    """Every way ``grant`` names something ``agreement`` does not allow."""
    problems: list[str] = []
    if grant.agreement != digest(agreement).hex():
        problems.append("grant was made under another agreement (digest mismatch)")
    owner = agreement.parties.get(grant.owner)
    if owner is None:
        problems.append(f"owner {grant.owner} is not a party of the agreement")
    elif not {PartyRole.DATA_OWNER, PartyRole.MODEL_OWNER} & set(owner.roles):
        problems.append(f"owner {grant.owner} has neither role data-owner nor model-owner")
    for role in grant.roles:
        if role not in agreement.workloads:
            problems.append(f"role {role} has no workload in the agreement")
    for mr in grant.mrenclave:
        sgx_specs = [
            agreement.workloads[r].sgx
            for r in grant.roles
            if r in agreement.workloads and agreement.workloads[r].sgx is not None
        ]
        if not any(s is not None and (not s.mrenclave or mr in s.mrenclave) for s in sgx_specs):
            problems.append(f"mrenclave {mr} is not allowed by the agreement for granted roles")
    callables: set[str] = set()
    for pkg_digest in grant.packages:
        found = agreement.package_by_digest(pkg_digest)
        if found is None:
            problems.append(f"package {pkg_digest} is not in the agreement")
            continue
        name, spec = found
        callables |= spec.callables
        if grant.owner not in spec.readers:
            problems.append(f"package {name} may not read data of {grant.owner}")
    for fn in grant.functions:
        if fn not in callables:
            problems.append(f"function {fn} is not an entrypoint or function of a granted package")
    for party in grant.co_owners:
        if party not in agreement.parties:
            problems.append(f"co-owner {party} is not a party of the agreement")
    if grant.min_owners > len(agreement.parties):
        problems.append(f"min_owners {grant.min_owners} exceeds the number of parties")
    problems += [f"party {p} is not a party of the agreement"
                 for p in grant.parties if p not in agreement.parties]
    allowed_recipients = agreement.output_recipients()
    for r in grant.recipients:
        if r not in agreement.parties:
            problems.append(f"recipient {r} is not a party of the agreement")
        elif r not in allowed_recipients:
            problems.append(f"recipient {r} may not receive outputs under the agreement")
    return problems


def verify_grant(signed_grant: SignedGrant, agreement: FederationAgreement) -> Grant:
    """Check a signed grant against the (active, accepted) agreement.

    The signature is checked first with the owner's ``sign_key`` from ``agreement``; then every
    policy rule (:func:`_policy_problems`): same agreement digest, owner is a party with role
    ``data-owner`` or ``model-owner``, granted roles have workloads, ``mrenclave`` only narrows
    the agreement's reference values, packages exist and list the owner among their readers,
    functions belong to granted packages, recipients are parties named in ``outputs``.

    Returns:
        The verified :class:`Grant`.

    Raises:
        VerificationError: the signature does not verify with the owner's key.
        PolicyViolation: the owner is unknown, or any rule is broken (every reason listed).
    """
    grant = signed_grant.grant
    owner = agreement.parties.get(grant.owner)
    if owner is not None:
        message = signing_input(GRANT_DOMAIN, grant_digest(grant))
        try:
            verify_ed25519(owner.sign_key, signed_grant.signature, message)
        except VerificationError:
            raise VerificationError(f"grant signature of {grant.owner} does not verify") from None
    problems = _policy_problems(grant, agreement)
    if problems:
        raise PolicyViolation("grant refused: " + "; ".join(problems), problems)
    return grant


def _norm_hex32(value: str) -> str | None:
    try:
        return normalize_hex(value, length=32)
    except ValueError:
        return None


def grant_allows(
    grant: Grant,
    *,
    role: str,
    measurement_hex: str,
    package_digest: str | None,
    function: str | None,
    recipients: Iterable[str],
    now: datetime,
    releases_so_far: int,
    agreement_digest: bytes | None = None,
    resources: Sequence[str] | None = None,
    party: str | None = None,
) -> list[str]:
    """Every reason ``grant`` does not allow this release; ``[]`` means allowed.

    The KBS release decision calls this after appraising evidence against the agreement
    (the agreement's reference values are enforced there, not here) and after
    :func:`verify_grant` accepted the grant.

    Args:
        grant: a verified grant.
        role: the workload's attested role claim.
        measurement_hex: the workload's MRENCLAVE (64 hex digits).
        package_digest: claimed package digest (64 hex digits) or None.
        function: claimed function/entrypoint or None.
        recipients: parties the workload will seal outputs to (each must be granted).
        now: timezone-aware current time (injected).
        releases_so_far: how many times this grant already released the resource.
        agreement_digest: the active agreement's digest (32 bytes); when given, a grant
            made under another agreement is refused.
        resources: every input of the job (the attested ``resources`` claim); checked
            against ``co_inputs``, ``co_owners`` and ``min_owners`` (module docstring).
        party: the workload's enrolled party (None: not enrolled), checked against
            ``grant.parties`` when that is not empty.
    """
    out: list[str] = []
    if agreement_digest is not None and grant.agreement != agreement_digest.hex():
        out.append(
            f"grant was made under another agreement ({grant.agreement[:16]}…, active "
            f"{agreement_digest.hex()[:16]}…): its owner must upload it again under the "
            "active agreement (teeflow package publish / teeflow resource put)"
        )
    if role not in grant.roles:
        out.append(f"role {role} not granted")
    if grant.parties and party not in grant.parties:
        out.append(f"party {party or '(none)'} not granted")
    if grant.mrenclave:
        mr = _norm_hex32(measurement_hex)
        if mr is None or mr not in grant.mrenclave:
            out.append(f"measurement {measurement_hex[:64]} not granted")
    if package_digest is None:
        if grant.packages:
            out.append("no package claimed, the grant requires one")
    elif _norm_hex32(package_digest) not in grant.packages:
        out.append(f"package {package_digest[:64]} not granted")
    if function is None:
        if grant.functions:
            out.append("no function claimed, the grant requires one")
    elif function not in grant.functions:
        out.append(f"function {function[:128]} not granted")
    out += [f"recipient {r[:63]} not granted" for r in recipients if r not in grant.recipients]
    if now.tzinfo is None:
        out.append("now must be timezone-aware")
    else:
        if now > grant.not_after:
            out.append(f"grant expired at {grant.not_after.isoformat()}")
        if now < grant.created_at:
            out.append(f"grant not valid before {grant.created_at.isoformat()}")
    out += job_binding_problems(grant, resources)
    if releases_so_far < 0:
        out.append("invalid release count")
    elif releases_so_far >= grant.max_releases:
        out.append(f"release limit reached ({releases_so_far} of {grant.max_releases})")
    return out


def job_binding_problems(grant: Grant, resources: Sequence[str] | None) -> list[str]:
    """Every way the job's inputs ``resources`` break the grant's whole-job binding
    (``co_inputs``, ``co_owners``, ``min_owners``); ``[]`` when it has none or they hold.
    The owner of an input is the repository part of its path."""
    if not grant.binds_job:
        return []
    if not resources:
        return ["the grant binds the job's inputs, and the job claims none"]
    inputs = set(resources)
    owners = {r.split("/", 1)[0] for r in inputs}
    out = [f"co-input {r[:200]} is not an input of the job" for r in grant.co_inputs
           if r not in inputs]
    out += [f"co-owner {p} owns no input of the job" for p in grant.co_owners if p not in owners]
    if len(owners) < grant.min_owners:
        out.append(f"the job has inputs of {len(owners)} owners, the grant needs "
                   f"{grant.min_owners}")
    return out
