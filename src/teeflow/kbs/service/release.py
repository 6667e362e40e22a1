"""Resource release: the decision (:func:`decide`) and the sealed response (:func:`seal_for_tee`).

A resource (a data key an owner uploaded with a grant) is released only when **all** hold
(issue 3 "Grants and resources"; DESIGN security invariant 2):

1. the caller holds a valid EAR for this session, issued under the *active* agreement
   (checked by :meth:`teeflow.kbs.service.core.KbsService.authorize` before this runs) — so its
   role and measurement were appraised against the agreement's reference values;
2. the resource exists and its grant is for this path;
3. the workload acts for a party under a verified enrollment
   (:mod:`teeflow.kbs.policy.enrollment`), and its runtime-data claims list the path among
   their ``resources`` (when it sent teeflow claims at all);
4. :func:`teeflow.kbs.policy.grants.grant_allows` returns no reason: role, enrolled party
   (when the grant lists ``parties``), measurement, package digest, function and every
   output recipient granted, grant made under the active agreement and within its
   validity, release count below ``max_releases``;
5. afterwards the store's compare-and-increment of the release count succeeds (done by the
   service, so concurrent requests cannot exceed the budget).

:func:`decide` is pure: it returns every reason, and never raises for a denial. A missing
resource is one more reason; callers must answer it exactly like any other denial
(:class:`teeflow.kbs.api.problems.PolicyDeny`) so that existence is not revealed.

The response is a JWE in the flattened JSON serialisation (RFC 7516 §7.2.2), as Trustee's KBS
returns (``kbs_types::Response``): ``alg`` ``ECDH-ES+A256KW`` (RFC 7518 §4.6, Concat KDF with
empty ``apu``/``apv``), ``enc`` ``A256GCM``, every header parameter in ``protected``, no
``aad`` member. The protected header is exactly
``{"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{"crv":"P-256","kty":"EC","x":"…","y":"…"}}``
(no whitespace, ``epk`` members sorted): Trustee's client recomputes the AEAD additional data
by re-serialising the header it parsed, so any other member order or member would fail its
tag check.
"""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwa import ECDHESAlgKeyAgreement, JWEAlgModel
from joserfc.jwe import JWERegistry, Recipient
from joserfc.jwk import ECKey

from teeflow.errors import KbsError, ParseError, PolicyViolation, VerificationError
from teeflow.kbs.policy.agreement import FederationAgreement
from teeflow.kbs.policy.canonical import GRANT_DOMAIN, signing_input
from teeflow.kbs.policy.generated import upload_problems
from teeflow.kbs.policy.grants import Grant, SignedGrant, grant_allows, grant_digest, verify_grant
from teeflow.kbs.policy.namespaces import upload_namespace_problems
from teeflow.kbs.policy.parties import verify_ed25519
from teeflow.kbs.protocol import (
    JWE_ALG,
    JWE_ENC,
    RESOURCE_UPLOAD_DOMAIN,
    AttestedSession,
    JweResponse,
    ResourceInfo,
    ResourceUpload,
    TeePubKey,
    resource_upload_digest,
)
from teeflow.kbs.store.interface import ResourceRecord

__all__ = [
    "MAX_RESOURCE_BYTES",
    "RELEASE_DENIED_DETAIL",
    "GrantCache",
    "ReleaseDecision",
    "ResourceViews",
    "check_upload",
    "decide",
    "open_jwe",
    "replacement_problems",
    "resource_info",
    "seal_for_tee",
    "stored_grant",
]

#: Largest secret released in one response (bytes).
MAX_RESOURCE_BYTES = 64 * 1024

#: The single reason recorded for a missing resource (audit only; never sent to clients).
MISSING_REASON = "resource does not exist"
#: The RFC 7807 ``detail`` of every release denial — the same text whether the resource is
#: missing or refused (so it reveals nothing about existence), saying what usually causes it,
#: what to run, and where a party reads the exact reason (the audit entry's ``reasons``).
RELEASE_DENIED_DETAIL = (
    "access denied by policy: the resource does not exist, or this workload may not receive "
    "it. Common cause: the federation agreement was updated after the resource was uploaded "
    "- a grant is bound to the agreement it was made under, so its owner must upload it "
    "again under the active agreement (`teeflow package publish` for a package key, "
    "`teeflow resource put` for a data key). A party reads the exact reason in the KBS "
    "audit log: `teeflow kbs audit show`."
)


@dataclass(frozen=True)
class ReleaseDecision:
    """Outcome of :func:`decide`.

    Attributes:
        allowed: True iff ``reasons`` is empty.
        reasons: every reason for a denial (for the audit log; never for the client).
        releases_so_far: the release count the decision was based on (the expected value
            for the store's compare-and-increment), or None without a resource.
    """

    reasons: tuple[str, ...]
    releases_so_far: int | None

    @property
    def allowed(self) -> bool:
        """True iff there is no reason to deny."""
        return not self.reasons


def decide(
    *,
    session: AttestedSession,
    path: str,
    record: ResourceRecord | None,
    grant: Grant | None,
    agreement_digest: bytes,
    now: datetime,
) -> ReleaseDecision:
    """Decide whether ``session`` may receive resource ``path`` (module docstring, 2-4).

    Args:
        session: the authorised session (EAR already verified, agreement still active).
        path: the requested resource path.
        record: the stored resource, or None when it does not exist.
        grant: the record's grant (parsed), or None when the record is None.
        agreement_digest: the active agreement's digest (32 bytes).
        now: timezone-aware current time.

    Returns:
        A :class:`ReleaseDecision` listing every reason (empty when allowed).
    """
    if record is None or grant is None:
        return ReleaseDecision((MISSING_REASON,), None)
    reasons: list[str] = []
    if grant.resource != path or record.path != path:
        reasons.append("grant is for another resource")
    if session.agreement_digest != agreement_digest.hex():
        reasons.append("session was appraised under another agreement")
    if session.enrollment is None:
        reasons.append("the workload acts for no enrolled party (no enrollment)")
    claims = session.claims
    if claims is not None and path not in claims.resources:
        reasons.append("resource not claimed in the attested runtime data")
    reasons += grant_allows(
        grant,
        role=session.role,
        measurement_hex=session.measurement,
        package_digest=None if claims is None else claims.package_digest,
        function=None if claims is None else claims.function,
        recipients=() if claims is None else claims.recipients,
        now=now,
        releases_so_far=record.release_count,
        agreement_digest=agreement_digest,
        resources=None if claims is None else claims.resources,
        party=session.party,
    )
    return ReleaseDecision(tuple(reasons), record.release_count)


def stored_grant(record: ResourceRecord) -> SignedGrant | None:
    """The signed grant stored with ``record`` (None if the stored bytes do not parse)."""
    try:
        return SignedGrant.model_validate_json(record.grant)
    except ValueError:
        return None


class GrantCache:
    """:func:`stored_grant` memoised on the stored grant bytes and *re-verified on load*: the
    stored document must hash to the stored ``grant_digest`` and carry its owner's signature
    under the owner's key in the active agreement (the host could rewrite the database; the
    row tag covers that, the signature is checked as well). Verified grants are cached by
    ``(grant bytes, agreement digest)``, so a release does not re-verify the same document.

    A document that does not parse or verify is not cached and yields None (the release is
    refused). At most ``max_entries`` are kept (all dropped when full). Thread-safe.
    """

    def __init__(self, max_entries: int = 1024) -> None:
        self._max = max(1, max_entries)
        self._lock = threading.Lock()
        self._entries: dict[tuple[bytes, bytes], SignedGrant] = {}

    def get(
        self, record: ResourceRecord, agreement: FederationAgreement, agreement_digest: bytes
    ) -> SignedGrant | None:
        """The record's verified signed grant (None if it does not parse or verify)."""
        key = (record.grant, agreement_digest)
        hit = self._entries.get(key)
        if hit is not None:
            return hit
        parsed = stored_grant(record)
        if parsed is None or grant_digest(parsed.grant) != record.grant_digest:
            return None
        owner = agreement.parties.get(parsed.grant.owner)
        if owner is None or parsed.grant.owner != record.owner:
            return None
        try:
            verify_ed25519(
                owner.sign_key,
                parsed.signature,
                signing_input(GRANT_DOMAIN, grant_digest(parsed.grant)),
            )
        except VerificationError:
            return None
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries = {}
            self._entries[(bytes(record.grant), agreement_digest)] = parsed
        return parsed


class ResourceViews:
    """This process's last view of each resource (path -> :class:`ResourceRecord`), so a
    release in the steady state needs no read: :meth:`KbsService.get_resource` decides on
    the view and the store's release transaction re-checks the generation (same grant,
    same wrapped key) and the count; a stale view fails that check and is re-read, and a
    refusal is only ever decided on a fresh read. Wrapped keys only (never plaintext). At
    most ``max_entries`` paths (all dropped when full). Thread-safe.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._max = max(1, max_entries)
        self._lock = threading.Lock()
        self._entries: dict[str, ResourceRecord] = {}

    def get(self, path: str) -> ResourceRecord | None:
        """The last view of ``path``, or None."""
        return self._entries.get(path)

    def put(self, record: ResourceRecord) -> None:
        """Remember ``record`` (a newer generation or count than the held one wins)."""
        with self._lock:
            old = self._entries.get(record.path)
            if old is not None and (old.generation, old.release_count) > (
                record.generation,
                record.release_count,
            ):
                return
            if old is None and len(self._entries) >= self._max:
                self._entries = {}
            self._entries[record.path] = record

    def drop(self, path: str) -> None:
        """Forget ``path`` (after a conflict, a replacement or a missing resource)."""
        with self._lock:
            self._entries.pop(path, None)


def resource_info(record: ResourceRecord, grant_id: str) -> ResourceInfo:
    """Public facts about ``record`` (never the wrapped key)."""
    return ResourceInfo(
        path=record.path,
        owner=record.owner,
        generation=record.generation,
        grant_id=grant_id,
        grant_digest=record.grant_digest.hex(),
        not_after=record.not_after,
        max_releases=record.max_releases,
        release_count=record.release_count,
    )


# -- uploads ----------------------------------------------------------------------------------


def check_upload(
    upload: ResourceUpload, agreement: FederationAgreement, now: datetime
) -> tuple[Grant | None, bytes | None, list[str]]:
    """Every reason to refuse a resource upload under the active ``agreement``.

    Checks: the path is not in a KBS-generated scope (:func:`teeflow.kbs.policy.generated.
    upload_problems`: e.g. ``fl/checkpoint-key/...``, which no party may hold); the wrapped
    key decodes; the grant is for ``upload.path`` and by ``upload.owner``; the owner may
    write that path (:func:`teeflow.kbs.policy.namespaces.upload_namespace_problems`: a
    party resource lives under its owner's name, system paths only as the agreement says);
    :func:`teeflow.kbs.policy.grants.verify_grant` (owner signature, agreement digest,
    parties, packages, roles, recipients — every reason); the upload signature
    (:func:`teeflow.kbs.protocol.resource_upload_digest`) by the owner's agreement key; the
    grant has not expired at ``now``. The unwrap test and the owner/replacement rules need
    the KBS key and the store and are done by the service.

    Returns:
        ``(grant, wrapped_key, reasons)``; ``reasons`` is empty when acceptable.
    """
    reasons: list[str] = upload_problems(upload.path)
    grant = upload.signed_grant.grant
    try:
        wrapped: bytes | None = upload.wrapped_key_bytes()
    except ParseError:
        wrapped = None
        reasons.append("wrapped_key is not base64url")
    if grant.resource != upload.path:
        reasons.append(f"grant is for resource {grant.resource}, not {upload.path}")
    if grant.owner != upload.owner:
        reasons.append(f"grant owner is {grant.owner}, not the uploader {upload.owner}")
    try:
        verify_grant(upload.signed_grant, agreement)
    except PolicyViolation as exc:
        reasons += exc.violations
    except VerificationError as exc:
        reasons.append(str(exc))
    reasons += upload_namespace_problems(upload.path, upload.owner, agreement)
    owner = agreement.parties.get(upload.owner)
    if owner is None:
        reasons.append(f"uploader {upload.owner} is not a party of the agreement")
    elif wrapped is not None:
        digest = resource_upload_digest(upload.path, upload.owner, wrapped, grant_digest(grant))
        try:
            verify_ed25519(owner.sign_key, upload.signature, RESOURCE_UPLOAD_DOMAIN + digest)
        except VerificationError:
            reasons.append(f"upload signature of {upload.owner} does not verify")
    if now > grant.not_after:
        reasons.append(f"grant expired at {grant.not_after.isoformat()}")
    return (grant if not reasons else None), wrapped, list(dict.fromkeys(reasons))


def replacement_problems(old_grant: Grant | None, old_owner: str, new: Grant) -> list[str]:
    """Why ``new`` may not replace a stored resource (owner ``old_owner``, grant
    ``old_grant``): another owner, or a grant that is not strictly newer (``created_at``)
    — which stops replays of an old upload from resetting the release budget."""
    if old_owner != new.owner:
        return ["resource belongs to another party"]
    if old_grant is not None and (new.created_at <= old_grant.created_at or new.id == old_grant.id):
        return ["a replacement needs a newer grant (later created_at, new id)"]
    return []


# -- JWE to the attested tee-pubkey -----------------------------------------------------------


class _TrusteeEcdhEs(ECDHESAlgKeyAgreement):
    """ECDH-ES key agreement whose ``epk`` header lists its members in sorted order
    (``crv``, ``kty``, ``x``, ``y``), as Trustee's client re-serialises it."""

    def prepare_ephemeral_key(self, recipient: Recipient[ECKey]) -> None:
        super().prepare_ephemeral_key(recipient)
        epk = recipient.headers().get("epk")
        if isinstance(epk, dict):
            recipient.add_header("epk", {k: epk[k] for k in sorted(epk)})


def _make_registry() -> JWERegistry:
    wrapping = JWERegistry.algorithms["alg"]["A256KW"]
    alg: JWEAlgModel = _TrusteeEcdhEs(wrapping)  # type: ignore[arg-type]

    class _TrusteeRegistry(JWERegistry):
        """Allows only ECDH-ES+A256KW (with :class:`_TrusteeEcdhEs`) and A256GCM; a private
        algorithm table, so joserfc's global registry is left untouched."""

        algorithms: Any = {  # noqa: RUF012 - joserfc reads the table from the class
            "alg": {JWE_ALG: alg},
            "enc": dict(JWERegistry.algorithms["enc"]),
            "zip": dict(JWERegistry.algorithms["zip"]),
        }

    return _TrusteeRegistry(algorithms=[JWE_ALG, JWE_ENC])


_REGISTRY = _make_registry()
_READ_REGISTRY = JWERegistry(algorithms=[JWE_ALG, JWE_ENC])


@functools.lru_cache(maxsize=1024)
def _recipient_key(x: str, y: str) -> ECKey:
    """The attested P-256 public key as a JWK object, imported once per key (a session
    fetches many resources to the same key; the import validates the point each time).

    Raises:
        JoseError, ValueError: not a P-256 point (not cached: lru_cache keeps no failures).
    """
    return ECKey.import_key({"kty": "EC", "crv": "P-256", "x": x, "y": y})


def seal_for_tee(plaintext: bytes, tee_pubkey: TeePubKey) -> str:
    """Encrypt ``plaintext`` to the attested key as a flattened JWE JSON text (module doc).

    Args:
        plaintext: the secret (at most :data:`MAX_RESOURCE_BYTES`).
        tee_pubkey: the attested EC P-256 JWK.

    Returns:
        JSON text ``{"protected","encrypted_key","iv","ciphertext","tag"}`` (base64url).

    Raises:
        KbsError: the plaintext is too large or the key is unusable.
    """
    if len(plaintext) > MAX_RESOURCE_BYTES:
        raise KbsError(f"resource larger than {MAX_RESOURCE_BYTES} bytes")
    try:
        key = _recipient_key(tee_pubkey.x, tee_pubkey.y)
        compact = jwe.encrypt_compact(
            {"alg": JWE_ALG, "enc": JWE_ENC}, plaintext, key, registry=_REGISTRY
        )
    except (JoseError, ValueError, TypeError):
        raise KbsError("cannot encrypt to the attested key") from None
    protected, encrypted_key, iv, ciphertext, tag = compact.split(".")
    body = JweResponse(
        protected=protected, encrypted_key=encrypted_key, iv=iv, ciphertext=ciphertext, tag=tag
    )
    return json.dumps(body.model_dump(exclude_none=True), separators=(",", ":"))


def open_jwe(text: str | bytes, private_key: ECKey) -> bytes:
    """Decrypt a :func:`seal_for_tee` response (workload side; also used by tests).

    Only ``ECDH-ES+A256KW`` / ``A256GCM`` are accepted.

    Raises:
        KbsError: malformed response, other algorithms, wrong key or tampering.
    """
    try:
        body = JweResponse.model_validate_json(text)
    except ValueError:
        raise KbsError("resource response is not a flattened JWE") from None
    if body.aad is not None:
        raise KbsError("resource response must not carry an aad member")
    compact = ".".join((body.protected, body.encrypted_key, body.iv, body.ciphertext, body.tag))
    try:
        obj = jwe.decrypt_compact(compact, private_key, registry=_READ_REGISTRY)
        return bytes(obj.plaintext or b"")
    except (JoseError, ValueError, TypeError, KeyError):
        raise KbsError("resource response does not decrypt") from None
