"""Usage of served models, written to the KBS audit log in signed batches (issue 12).

Part of the KBS core behind :class:`teeflow.kbs.service.core.KbsService`. An attested
serving workload (role ``serve``) counts the inference requests it answered and refused per
caller party, and every ``serving.usage_batch`` requests (and at shutdown) reports a batch::

    POST /v1/usage   (Authorization: Bearer <EAR token> + session cookie, as resources)
    {"batch": {"model": "mnist", "model_digest": "<64 hex>", "seq": 0,
               "counts": {"hospital-b": 100}, "refused": {"carol": 2}},
     "signature": "<base64url ECDSA P-256/SHA-256 DER>"}

The signature is by the workload's attested key (the key of its RCAR session, which its
``serve`` certificate also certifies) over ``b"teeflow-serve-usage-v1\\0" ||
RFC 8785(batch)`` (:func:`usage_signing_input`). The KBS accepts it only from a session of
role ``serve`` that acts for an enrolled party under the agreement in force, verifies the
signature with the session's attested key and appends one audit entry ``kind: usage``,
``subject: serve:<model_digest>``, ``data``: ``model``, ``model_digest``, ``seq``,
``counts`` and ``refused`` as sorted ``[party, n]`` pairs (party names are never audit-data
keys), ``requests`` (their sum), ``batch_digest`` (SHA-256 of the signed canonical batch),
``signature``, ``measurement``, ``role`` and ``party`` (the workload's enrolling party) — so
model owners reading ``GET /v1/audit`` see who used their model, how many times, and which
model digest, signed by the workload that served it (:func:`usage_of` reads an entry back,
:func:`batch_of` rebuilds the signed batch).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Annotated, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey
from pydantic import Field, StringConstraints

from teeflow.errors import ParseError
from teeflow.kbs.api.problems import InvalidRequest, PolicyDeny
from teeflow.kbs.policy.canonical import b64url_decode, canonical_json
from teeflow.kbs.protocol import AttestedSession, LowerHex32, _Wire
from teeflow.kbs.service.context import ServiceContext

__all__ = [
    "MAX_USAGE_BODY_BYTES",
    "USAGE_DOMAIN",
    "UsageBatch",
    "UsageReport",
    "UsageService",
    "batch_of",
    "usage_of",
    "usage_signing_input",
]

#: Domain separator of usage-batch signatures.
USAGE_DOMAIN = b"teeflow-serve-usage-v1\0"
#: Largest ``POST /v1/usage`` body (bytes).
MAX_USAGE_BODY_BYTES = 32 * 1024
_Party = Annotated[str, StringConstraints(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")]
_Count = Annotated[int, Field(ge=0, le=2**53 - 1)]


class UsageBatch(_Wire):
    """One batch of counted requests (module docstring).

    Attributes:
        model: the served model's name; model_digest: SHA-256 of its payload (hex).
        seq: the batch's number in this server's run (0, 1, ...).
        counts: party → requests answered; refused: party → requests refused
            (authorisation, quota; ``-`` is not a party, so unknown callers are not named).
    """

    model: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    model_digest: LowerHex32
    seq: _Count
    counts: dict[_Party, _Count] = Field(default_factory=dict, max_length=1000)
    refused: dict[_Party, _Count] = Field(default_factory=dict, max_length=1000)


class UsageReport(_Wire):
    """``POST /v1/usage`` body: a batch and the attested key's signature (base64url DER)."""

    batch: UsageBatch
    signature: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{40,200}$")]


def usage_signing_input(batch: UsageBatch) -> bytes:
    """What the serving workload signs: :data:`USAGE_DOMAIN` || RFC 8785 JSON of the batch."""
    return USAGE_DOMAIN + canonical_json(batch.to_wire())


def _pairs(counts: dict[str, int]) -> list[list[Any]]:
    return [[p, n] for p, n in sorted(counts.items())]


def usage_of(data: Mapping[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    """``(answered, refused)`` per party from a ``usage`` audit entry's ``data`` ({} for
    malformed members: the entry's signature chain is checked separately)."""

    def back(value: object) -> dict[str, int]:
        out: dict[str, int] = {}
        if isinstance(value, list):
            for item in value:
                if (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                        and isinstance(item[1], int)):
                    out[item[0]] = item[1]
        return out

    return back(data.get("counts")), back(data.get("refused"))


def batch_of(data: Mapping[str, Any]) -> UsageBatch:
    """The signed batch a ``usage`` audit entry records (to re-check ``signature`` with the
    serving workload's certified key, or ``batch_digest``).

    Raises:
        ParseError: the entry is not a usage entry.
    """
    answered, refused = usage_of(data)
    try:
        return UsageBatch(model=data["model"], model_digest=data["model_digest"],
                          seq=data["seq"], counts=answered, refused=refused)
    except (KeyError, ValueError):
        raise ParseError("not a usage audit entry") from None


class UsageService:
    """Signed usage batches (module docstring). Thread-safe as far as the store is.

    Args:
        ctx: the shared service context.
    """

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    def record_usage(self, session: AttestedSession, report: UsageReport) -> dict[str, Any]:
        """Verify and audit one usage batch → ``{"seq": audit sequence number}``.

        Raises:
            PolicyDeny: not a ``serve`` session, no enrollment, or another agreement
                (audited with the reasons).
            InvalidRequest: the signature does not verify with the attested key.
            ServiceUnavailable: the audit append failed.
        """
        ctx = self._ctx
        batch = report.batch
        subject = f"serve:{batch.model_digest}"
        data: dict[str, Any] = {"role": session.role, "measurement": session.measurement}
        reasons = []
        if session.role != "serve":
            reasons.append(f"role {session.role[:32]} may not report model usage (only serve)")
        if session.enrollment is None:
            reasons.append("the workload acts for no enrolled party (no enrollment)")
        current = ctx.current(ctx.agreement_max_age)
        if current is None or session.agreement_digest != current[1].hex():
            reasons.append("session was appraised under another agreement")
        if reasons:
            ctx.deny(PolicyDeny, "usage", subject, reasons, data)
        try:
            key = ECKey.import_key(
                {"kty": "EC", "crv": "P-256", "x": session.tee_pubkey.x,
                 "y": session.tee_pubkey.y}
            ).public_key
            signature = b64url_decode(report.signature)
            if not isinstance(key, ec.EllipticCurvePublicKey):  # pragma: no cover
                raise ValueError("not an EC key")
            key.verify(signature, usage_signing_input(batch), ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError, TypeError, ParseError):
            ctx.deny(InvalidRequest, "usage", subject,
                     ["the batch signature does not verify with the attested key"], data)
        entry = ctx.record("usage", subject, "accept", data={
            **data,
            "party": session.party,
            "model": batch.model,
            "model_digest": batch.model_digest,
            "seq": batch.seq,
            "counts": _pairs(batch.counts),
            "refused": _pairs(batch.refused),
            "requests": sum(batch.counts.values()),
            "batch_digest": hashlib.sha256(canonical_json(batch.to_wire())).hexdigest(),
            "signature": report.signature,
        })
        return {"seq": entry.seq}
