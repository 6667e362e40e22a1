"""The KBS error catalog: every refusal is a :class:`KbsProblem` with an RFC 7807 body.

Each problem class has a stable ``type`` URI, an HTTP ``status`` and a fixed ``title``; an
instance adds a public ``detail`` text. The HTTP adapter renders :meth:`KbsProblem.to_dict`
as ``application/problem+json`` (RFC 7807 §3)::

    {"type": "https://github.com/confidential-containers/kbs/errors/PolicyDeny",
     "title": "Access denied by policy", "status": 403,
     "detail": "access denied by policy"}

Type URIs follow Trustee KBS (``kbs/src/error.rs``: ``<prefix>/<ErrorName>``, the prefix is an
identifier, not a resolvable link). Problems Trustee also defines keep Trustee's name and
prefix, so Trustee clients (``kbs_types::ErrorInformation`` reads ``type`` and ``detail``)
see the same strings: ``AttestationError``, ``InvalidRequestPath``, ``PolicyDeny``,
``TokenNotFound``, ``TokenVerifierError``. teeflow's own problems use
:data:`TEEFLOW_PREFIX`. Statuses: Trustee answers 401 for authentication failures and 404
for bad paths; teeflow additionally uses 400 (malformed request), 403 (authenticated but not
allowed, as the Trustee protocol document prescribes for resources), 409 (state conflict),
413 (body too large) and 503 (storage unavailable).

Rules (DESIGN security invariant 6):

* ``detail`` never contains key material, tokens, stack traces or SQL; callers pass only
  public facts. Full reasons go to the audit log (``reasons``), not to the body, for
  resource and certificate denials.
* A resource that does not exist and one the caller may not read give the *same*
  :class:`PolicyDeny` (status, title and detail), so an unauthorised caller cannot probe which
  resources exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from teeflow.errors import KbsError

__all__ = [
    "MAX_DETAIL_CHARS",
    "PROBLEM_TYPES",
    "TEEFLOW_PREFIX",
    "TRUSTEE_PREFIX",
    "AgreementRejected",
    "AttestationFailed",
    "Conflict",
    "GrantRejected",
    "InvalidRequest",
    "InvalidRequestPath",
    "KbsProblem",
    "NoAgreement",
    "PayloadTooLarge",
    "PolicyDeny",
    "ProtocolVersion",
    "RequestUnsigned",
    "ResourceNotFound",
    "ServiceUnavailable",
    "TokenNotFound",
    "TokenVerifierError",
    "UnsupportedTee",
]

#: Trustee KBS error-type prefix (``ERROR_TYPE_PREFIX`` in Trustee ``kbs/src/error.rs``).
TRUSTEE_PREFIX = "https://github.com/confidential-containers/kbs/errors"
#: Prefix of teeflow-specific problem types.
TEEFLOW_PREFIX = "https://teeflow.dev/kbs/errors"
#: Longest ``detail`` text rendered (characters); longer text is cut.
MAX_DETAIL_CHARS = 1024


class KbsProblem(KbsError):
    """Base of every KBS refusal. Subclasses fix ``name``, ``prefix``, ``status``, ``title``.

    Args:
        detail: public, secret-free explanation for the client (default: the title).
        reasons: every reason for the decision, for the audit log and logs (never rendered
            by :meth:`to_dict`).

    Attributes:
        name: the problem-type name (last URI segment).
        prefix: :data:`TRUSTEE_PREFIX` or :data:`TEEFLOW_PREFIX`.
        status: HTTP status code.
        title: short fixed summary (RFC 7807 ``title``).
    """

    code = "kbs-problem"
    name: ClassVar[str] = "KbsProblem"
    prefix: ClassVar[str] = TEEFLOW_PREFIX
    status: ClassVar[int] = 400
    title: ClassVar[str] = "KBS request failed"

    def __init__(self, detail: str | None = None, reasons: Sequence[str] = ()) -> None:
        text = detail if detail else self.title
        if len(text) > MAX_DETAIL_CHARS:
            text = text[: MAX_DETAIL_CHARS - 1] + "…"
        super().__init__(text)
        self.detail = text
        self.reasons: list[str] = [str(r) for r in reasons] if reasons else [text]

    @classmethod
    def type_uri(cls) -> str:
        """The RFC 7807 ``type`` URI, ``<prefix>/<name>``."""
        return f"{cls.prefix}/{cls.name}"

    def to_dict(self) -> dict[str, Any]:
        """RFC 7807 problem body: ``type``, ``title``, ``status``, ``detail`` (no reasons)."""
        return {
            "type": self.type_uri(),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }


# -- 400 ------------------------------------------------------------------------------------


class InvalidRequest(KbsProblem):
    """Malformed body: not JSON, wrong members or types, values out of bounds (400)."""

    code = "kbs-invalid-request"
    name = "InvalidRequest"
    status = 400
    title = "Invalid request"


# -- 401: authentication (RCAR, tokens) -------------------------------------------------------


class ProtocolVersion(KbsProblem):
    """``Request.version`` is not the supported KBS protocol version (401, as Trustee)."""

    code = "kbs-protocol-version"
    name = "ProtocolVersion"
    status = 401
    title = "Unsupported KBS protocol version"


class UnsupportedTee(KbsProblem):
    """The declared TEE type is unknown or not supported by this KBS (401)."""

    code = "kbs-unsupported-tee"
    name = "UnsupportedTee"
    status = 401
    title = "Unsupported TEE type"


class AttestationFailed(KbsProblem):
    """The attestation was refused: unknown/expired session, replayed or mismatching nonce,
    evidence that does not verify or does not satisfy the agreement (401; Trustee's
    ``AttestationError``)."""

    code = "kbs-attestation"
    name = "AttestationError"
    prefix = TRUSTEE_PREFIX
    status = 401
    title = "Attestation failed"


class TokenNotFound(KbsProblem):
    """No session cookie or bearer token was presented, or the session has no token (401)."""

    code = "kbs-token-not-found"
    name = "TokenNotFound"
    prefix = TRUSTEE_PREFIX
    status = 401
    title = "Attestation token not found"


class TokenVerifierError(KbsProblem):
    """The token is invalid: bad signature, expired, from another session, or issued under
    an agreement that is no longer active (401)."""

    code = "kbs-token-verifier"
    name = "TokenVerifierError"
    prefix = TRUSTEE_PREFIX
    status = 401
    title = "Attestation token rejected"


# -- 403 ------------------------------------------------------------------------------------


class RequestUnsigned(KbsProblem):
    """The request needs a party's RFC 9421 signature (party-only reads such as the audit
    log) and is unsigned, wrongly signed, stale, replayed or by no party of the agreement in
    force (401)."""

    code = "kbs-request-unsigned"
    name = "RequestUnsigned"
    status = 401
    title = "Party signature required"


class PolicyDeny(KbsProblem):
    """Authenticated, but the agreement or a grant does not allow this (403).

    For resources the body is always the same (see the module docstring).
    """

    code = "kbs-policy-deny"
    name = "PolicyDeny"
    prefix = TRUSTEE_PREFIX
    status = 403
    title = "Access denied by policy"


class AgreementRejected(KbsProblem):
    """A submitted agreement failed signature or update rules (403)."""

    code = "kbs-agreement-rejected"
    name = "AgreementRejected"
    status = 403
    title = "Agreement rejected"


class GrantRejected(KbsProblem):
    """A resource upload's grant or upload signature was refused (403)."""

    code = "kbs-grant-rejected"
    name = "GrantRejected"
    status = 403
    title = "Grant rejected"


# -- 404 ------------------------------------------------------------------------------------


class InvalidRequestPath(KbsProblem):
    """The request path is not a valid resource path (404, as Trustee)."""

    code = "kbs-invalid-path"
    name = "InvalidRequestPath"
    prefix = TRUSTEE_PREFIX
    status = 404
    title = "Invalid request path"


class ResourceNotFound(KbsProblem):
    """A named object (counter) does not exist (404). Never used for resources an
    unauthorised caller asks for: those get :class:`PolicyDeny`."""

    code = "kbs-not-found"
    name = "ResourceNotFound"
    status = 404
    title = "Not found"


# -- 409, 413, 503 ----------------------------------------------------------------------------


class Conflict(KbsProblem):
    """A precondition on stored state failed: counter not at the expected value, resource
    owned by another party, stale grant, concurrent update (409)."""

    code = "kbs-conflict"
    name = "Conflict"
    status = 409
    title = "Conflict with the current state"


class NoAgreement(KbsProblem):
    """No federation agreement has been accepted yet (409)."""

    code = "kbs-no-agreement"
    name = "NoAgreement"
    status = 409
    title = "No federation agreement"


class PayloadTooLarge(KbsProblem):
    """The request body exceeds the endpoint's limit (413)."""

    code = "kbs-payload-too-large"
    name = "PayloadTooLarge"
    status = 413
    title = "Request body too large"


class ServiceUnavailable(KbsProblem):
    """The store failed; nothing was acknowledged (503; retry later)."""

    code = "kbs-unavailable"
    name = "ServiceUnavailable"
    status = 503
    title = "Service temporarily unavailable"


#: Every concrete problem class, by type URI.
PROBLEM_TYPES: dict[str, type[KbsProblem]] = {
    cls.type_uri(): cls
    for cls in (
        InvalidRequest,
        ProtocolVersion,
        UnsupportedTee,
        AttestationFailed,
        TokenNotFound,
        TokenVerifierError,
        RequestUnsigned,
        PolicyDeny,
        AgreementRejected,
        GrantRejected,
        InvalidRequestPath,
        ResourceNotFound,
        Conflict,
        NoAgreement,
        PayloadTooLarge,
        ServiceUnavailable,
    )
}
