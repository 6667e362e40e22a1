"""KBS client SDK over HTTPS (httpx): workloads attest and fetch; parties verify and upload.

**Transport.** Every connection is pinned to the KBS's TLS key (SPKI SHA-256), checked
inside the TLS handshake before any request byte is sent; see :mod:`teeflow.kbs.client.pinning`
(:class:`Pin`, :func:`pinned_tls_context`, :class:`KbsHttpError` live there).

**Parties.** :func:`teeflow.kbs.client.verification.verify_kbs` verifies the KBS's fresh
evidence and returns a :class:`Pin`, saved as the pin file (``teeflow kbs verify``; format in
:mod:`teeflow.kbs.client.pinning`). :class:`KbsClient` then talks only to that key:
``submit_agreement``, ``put_resource`` (the data key HPKE-wrapped to the pinned HPKE key and
the upload signed by the owner), ``audit`` (chain verified with the pinned audit key).

**Workloads.** :meth:`KbsClient.attest` runs RCAR: ``/kbs/v0/auth`` → nonce; a fresh P-256
key; evidence for ``runtime_data_digest(tee-pubkey, nonce, "", teeflow=claims)`` from the
workload's :class:`~teeflow.platform.base.Attester` in Trustee's shape for its TEE
(:func:`primary_evidence`: SGX/TDX ``{"quote"}``, SNP ``{"attestation_report",
"cert_chain"}``); ``/kbs/v0/attest`` → EAR
token. Then ``get_resource`` (JWE opened with the ephemeral key),
``get_certificate`` (CSR with the attested key; the certificate is checked against the
pinned CA), ``increment_counter`` / ``get_counter``.

Errors: a KBS problem response raises the matching :mod:`teeflow.kbs.api.problems` class (by
its ``type``), any other HTTP error :class:`KbsHttpError`, transport failures
:class:`~teeflow.errors.KbsError`.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from joserfc.jwk import ECKey

from teeflow.attestation.additional_evidence import encode_additional_evidence
from teeflow.attestation.binding import runtime_data_digest
from teeflow.errors import KbsError, ParseError, VerificationError
from teeflow.kbs.api.problems import NoAgreement, ResourceNotFound
from teeflow.kbs.ca.authority import WorkloadIdentity, verify_workload_certificate
from teeflow.kbs.client.heads import HeadTracker, StateRollback
from teeflow.kbs.client.pinning import (
    Pin,
    http_client,
    pinned_tls_context,
    send,
)
from teeflow.kbs.policy.canonical import b64url_encode
from teeflow.kbs.policy.heads import HEAD_HEADER
from teeflow.kbs.policy.signing import (
    SignedAgreement,
)
from teeflow.kbs.protocol import (
    PROTOCOL_VERSION,
    RESOURCE_WRAP_INFO,
    AttestResponse,
    CertificateResponse,
    Challenge,
    CounterState,
    ResourceInfo,
    is_counter_name,
    is_resource_path,
    resource_wrap_aad,
    sign_resource_upload,
)
from teeflow.kbs.service.release import open_jwe

# Party-side and other-platform pieces (KBS evidence verification, collateral, audit chain,
# HPKE wrapping, the emulated TDX/SNP platforms) are imported where they are used, so that a
# workload (aggregator, client) loads only what attesting and fetching need (memory: the
# aggregator's enclave budget).
if TYPE_CHECKING:
    import httpx

    from teeflow.attestation.evidence import Evidence
    from teeflow.kbs.policy.grants import SignedGrant
    from teeflow.kbs.policy.parties import PartyKeys
    from teeflow.kbs.store.interface import (
        AuditEntry,
    )
    from teeflow.platform.base import Attester
    from teeflow.platform.nvidia import GpuAttester

__all__ = [
    "KbsClient",
    "primary_evidence",
]

_SESSION_COOKIE = "kbs-session-id"
_LOG = logging.getLogger(__name__)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def primary_evidence(evidence: Evidence) -> dict[str, Any]:
    """Trustee ``primary_evidence`` of ``evidence`` (Trustee ``deps/verifier``
    ``SgxEvidence`` / ``TdxEvidence`` / ``SnpEvidence``).

    SGX and TDX: ``{"quote": base64}``. SNP: ``{"attestation_report": base64}`` plus, when
    the evidence carries a certificate table, ``"cert_chain"``: its VCEK/VLEK, ASK, ARK and
    CRL entries as ``sev`` crate ``CertTableEntry`` objects (``data`` a byte array).

    Raises:
        ParseError: a malformed certificate table.
    """
    if evidence.platform != "snp":
        return {"quote": _b64(evidence.primary)}
    out: dict[str, Any] = {"attestation_report": _b64(evidence.primary)}
    if evidence.certificates:
        from teeflow.attestation.snp.cert_table import parse_cert_table

        out["cert_chain"] = [
            {"cert_type": kind, "data": list(der)}
            for kind, der in parse_cert_table(evidence.certificates)
            if kind in ("VCEK", "VLEK", "ASK", "ARK", "CRL")
        ]
    return out


# -- the client ----------------------------------------------------------------------------------


@dataclass
class _Attested:
    session_id: str
    key: ECKey
    token: str


class KbsClient:
    """A client of one verified KBS (module docstring).

    Args:
        url: base URL (``https://...``); None uses ``pin.url``.
        pin: the :class:`Pin` (or a pin file path) from
            :func:`~teeflow.kbs.client.verification.verify_kbs`.
        platform: the workload's :class:`~teeflow.platform.base.Attester` (from
            :func:`teeflow.platform.attester_for`); only needed for :meth:`attest`.
        tee: the TEE type declared in ``/kbs/v0/auth`` (default: the attester's ``tee``;
            a different value is for tests of the KBS's refusal).
        timeout: per-request timeout (seconds).
        clock: time source for checking issued certificates (default: the wall clock).
        party: the party's keys, for what only parties may read (the audit log, counters):
            those requests are signed with its Ed25519 key (RFC 9421,
            :mod:`teeflow.kbs.policy.request_signing`).
        heads: the tracker of the KBS's signed state heads (default: the process-wide one
            of the pinned audit key, remembered in ``$TEEFLOW_HOME/kbs-heads``; see
            :mod:`teeflow.kbs.client.heads`). Every state-dependent response must carry a
            head no older than the one known when the request was sent, else
            :class:`~teeflow.kbs.client.heads.StateRollback` ("the KBS state was rolled back").
        enrollment: the enrollment token (compact JWS) of the party this workload acts for
            (:mod:`teeflow.kbs.policy.enrollment`); :meth:`attest` sends it in the
            runtime-data ``teeflow`` claims. Without it the KBS refuses the attestation.
        workload_key: the workload's P-256 key to attest with (an enrollment bound to a
            workload key names its thumbprint); default a fresh key per attestation.
        gpu: the workload's GPU attester (:class:`teeflow.platform.nvidia.GpuAttester`), or
            None. :meth:`attest` then gets GPU evidence first, for Trustee's device nonce
            (:func:`teeflow.attestation.nvidia.trustee.gpu_nonce`), and sends it as
            ``additional_evidence`` ``{"nvidia": ...}``, which the CPU evidence binds.

    Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        url: str | None,
        pin: Pin | Path | str,
        platform: Attester | None = None,
        *,
        tee: str | None = None,
        timeout: float = 10.0,
        clock: Callable[[], datetime] | None = None,
        party: PartyKeys | None = None,
        heads: HeadTracker | None = None,
        enrollment: str | None = None,
        workload_key: ECKey | None = None,
        gpu: GpuAttester | None = None,
    ) -> None:
        self.pin = pin if isinstance(pin, Pin) else Pin.load(pin)
        self.heads = heads if heads is not None else HeadTracker.for_pin(self.pin.audit_public_key)
        self._enrollment = enrollment
        self._workload_key = workload_key
        self._gpu = gpu
        self._party_auth: httpx.Auth | None = None
        if party is not None:  # imported only by party clients: workloads stay lean
            from teeflow.kbs.policy.request_signing import PartyRequestAuth

            self._party_auth = PartyRequestAuth(party.name, party.sign_key)
        self.url = (url or self.pin.url).rstrip("/")
        self._platform = platform
        self._tee = tee or (platform.tee if platform is not None else "sgx")
        self._clock = clock if clock is not None else (lambda: datetime.now(UTC))
        self._http = http_client(self.url, pinned_tls_context(self.pin.tls_spki_sha256), timeout)
        self._attested: _Attested | None = None

    def close(self) -> None:
        """Close the connection pool and save the newest state head seen."""
        self._http.close()
        self.heads.flush()

    def __enter__(self) -> KbsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self, method: str, path: str, *, state: bool = True, **kw: Any
    ) -> tuple[httpx.Response, bytes]:
        """One request; with ``state`` its response's signed head is checked and
        remembered (:meth:`HeadTracker.check`: raises StateRollback)."""
        before = self.heads.head
        resp, body = send(self._http, method, path, **kw)
        if state:
            self.heads.check(resp.headers.get(HEAD_HEADER), before)
        return resp, body

    # -- workload side -----------------------------------------------------------------------

    @property
    def token(self) -> str | None:
        """The EAR token of the last successful :meth:`attest`, or None."""
        return None if self._attested is None else self._attested.token

    @property
    def session_id(self) -> str | None:
        """The RCAR session id (the ``kbs-session-id`` cookie value) of the last attest."""
        return None if self._attested is None else self._attested.session_id

    def attest(self, role: str, claims: Mapping[str, Any] | None = None) -> str:
        """RCAR attestation as ``role`` with teeflow runtime-data ``claims`` (``party``,
        ``package_digest``, ``function``, ``resources``, ``recipients``, ``session``);
        returns the token. The client's enrollment is added to the claims (and, when the
        claims name no ``session``, the enrollment's session scope).

        Raises:
            KbsError: no platform, or ``claims`` names another role.
            AttestationFailed, ProtocolVersion, UnsupportedTee: refused by the KBS.
            PlatformError: the platform (or the GPU attester) could not produce evidence.
        """
        if self._platform is None:
            raise KbsError("attest needs a platform (the workload's attester)")
        extra = dict(claims or {})
        if extra.get("role", role) != role:
            raise KbsError("claims name another role than the one attested")
        if self._enrollment is not None:
            extra.setdefault("enrollment", self._enrollment)
            if "session" not in extra:
                from teeflow.kbs.policy.enrollment import read_enrollment

                scope = read_enrollment(self._enrollment).session
                if scope is not None:
                    extra["session"] = scope
        teeflow = json.loads(json.dumps({**extra, "role": role}))
        resp, body = self._request(
            "POST",
            "/kbs/v0/auth",
            state=False,
            json={"version": PROTOCOL_VERSION, "tee": self._tee},
        )
        session_id = resp.cookies.get(_SESSION_COOKIE)
        self._http.cookies.clear()  # sent explicitly below
        if not session_id:
            raise KbsError("the KBS set no session cookie")
        nonce = Challenge.model_validate_json(body).nonce
        key = self._workload_key or ECKey.generate_key("P-256", private=True)
        jwk = {**key.as_dict(private=False), "alg": "ECDH-ES+A256KW"}
        additional = ""
        if self._gpu is not None:  # device evidence first: the CPU evidence binds it
            from teeflow.attestation.nvidia.trustee import gpu_nonce  # GPU attesters only

            device = self._gpu.evidence(gpu_nonce(tee_pubkey=jwk, nonce=nonce))
            try:
                additional = encode_additional_evidence({self._gpu.tee: device})
            except ParseError as exc:
                raise KbsError(f"GPU evidence cannot be sent: {exc}") from None
        report_data = runtime_data_digest(
            tee_pubkey=jwk, nonce=nonce, teeflow=teeflow, additional_evidence=additional
        )
        request = {
            "runtime-data": {"nonce": nonce, "tee-pubkey": jwk, "teeflow": teeflow},
            "tee-evidence": {
                "primary_evidence": primary_evidence(self._platform.evidence(report_data)),
                "additional_evidence": additional,
            },
        }
        _, body = self._request(
            "POST",
            "/kbs/v0/attest",
            json=request,
            headers={"Cookie": f"{_SESSION_COOKIE}={session_id}"},
        )
        token = AttestResponse.model_validate_json(body).token
        self._attested = _Attested(session_id, key, token)
        return token

    def _auth_headers(self) -> dict[str, str]:
        # the token with the session cookie it was bound to: the KBS refuses a token alone
        # (it travels in result lineage, so it is no bearer credential)
        if self._attested is None:
            raise KbsError("attest first")
        return {
            "Authorization": f"Bearer {self._attested.token}",
            "Cookie": f"{_SESSION_COOKIE}={self._attested.session_id}",
        }

    def _party_signed(self) -> dict[str, Any]:
        if self._party_auth is None:
            raise KbsError(
                "only parties may read this: give the client a party's keys "
                "(KbsClient(..., party=PartyKeys.load(NAME)); CLI: --party NAME)"
            )
        return {"auth": self._party_auth}

    def get_resource(self, path: str) -> bytes:
        """Fetch resource ``path`` (``repo/type/tag``) and decrypt it with the attested key.

        Raises:
            KbsError: not attested, bad path, or the response does not decrypt.
            PolicyDeny, TokenVerifierError, TokenNotFound: refused by the KBS.
        """
        if not is_resource_path(path):
            raise KbsError("resource path must be <repository>/<type>/<tag>")
        headers = self._auth_headers()
        assert self._attested is not None
        _, body = self._request("GET", f"/kbs/v0/resource/{path}", headers=headers)
        return open_jwe(body, self._attested.key)

    def get_certificate(self) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
        """A workload certificate for the attested key: ``(certificate PEM, private key)``.

        The certificate is checked against the pinned federation CA before it is returned.

        Raises:
            KbsError: not attested.
            VerificationError: the certificate does not verify under the pinned CA.
            PolicyDeny, TokenVerifierError: refused by the KBS.
        """
        headers = self._auth_headers()
        assert self._attested is not None
        private = self._attested.key.private_key
        if not isinstance(private, ec.EllipticCurvePrivateKey):  # pragma: no cover
            raise KbsError("the attested key is not a P-256 private key")
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "teeflow workload")]))
            .sign(private, hashes.SHA256())
        )
        pem = csr.public_bytes(serialization.Encoding.PEM).decode("ascii")
        _, body = self._request("POST", "/v1/certificates", json={"csr": pem}, headers=headers)
        issued = CertificateResponse.model_validate_json(body)
        try:
            cert = x509.load_pem_x509_certificate(issued.certificate.encode("ascii"))
        except ValueError:
            raise VerificationError("the KBS returned a malformed certificate") from None
        self.check_certificate(cert)
        return issued.certificate.encode("ascii"), private

    def report_usage(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Sign a usage batch with the attested key and ``POST /v1/usage`` it (serving
        workloads; :mod:`teeflow.kbs.service.usage`) → ``{"seq": audit sequence number}``.

        Raises:
            KbsError: not attested, or an invalid batch.
            PolicyDeny, TokenVerifierError, InvalidRequest: refused by the KBS.
        """
        from pydantic import ValidationError

        from teeflow.kbs.service.usage import UsageBatch, usage_signing_input

        headers = self._auth_headers()
        assert self._attested is not None
        private = self._attested.key.private_key
        if not isinstance(private, ec.EllipticCurvePrivateKey):  # pragma: no cover
            raise KbsError("the attested key is not a P-256 private key")
        try:
            parsed = UsageBatch.model_validate(dict(batch))
        except ValidationError:
            raise KbsError("invalid usage batch") from None
        signature = private.sign(usage_signing_input(parsed), ec.ECDSA(hashes.SHA256()))
        body = {"batch": parsed.to_wire(), "signature": b64url_encode(signature)}
        _, raw = self._request("POST", "/v1/usage", json=body, headers=headers)
        result: dict[str, Any] = json.loads(raw)
        return result

    def check_certificate(self, cert: x509.Certificate) -> WorkloadIdentity:
        """:func:`verify_workload_certificate` under the pinned CA at the client's time."""
        return verify_workload_certificate(cert, self.pin.ca(), now=self._clock())

    def increment_counter(self, name: str, expected: int, digest: bytes) -> CounterState:
        """Compare-and-increment counter ``name`` from ``expected``, bound to ``digest``.

        Raises:
            KbsError: not attested or bad name.
            Conflict: the counter is not at ``expected``; PolicyDeny: role not allowed.
        """
        if not is_counter_name(name):
            raise KbsError("invalid counter name")
        _, body = self._request(
            "POST",
            f"/v1/counters/{name}",
            json={"expected": expected, "digest": digest.hex()},
            headers=self._auth_headers(),
        )
        return CounterState.model_validate_json(body)

    def get_counter(self, name: str) -> CounterState | None:
        """The counter's value and digest, or None when never stepped. Read as the attested
        workload (a counter of its scope) when attested, else signed by the party.

        Raises:
            KbsError: bad name, or neither attested nor a party client.
            PolicyDeny, RequestUnsigned: refused by the KBS.
        """
        if not is_counter_name(name):
            raise KbsError("invalid counter name")
        auth: dict[str, Any] = (
            {"headers": self._auth_headers()}
            if self._attested is not None
            else self._party_signed()
        )
        try:
            _, body = self._request("GET", f"/v1/counters/{name}", **auth)
        except ResourceNotFound:
            return None
        return CounterState.model_validate_json(body)

    # -- party side ----------------------------------------------------------------------------

    def submit_agreement(self, signed: SignedAgreement) -> dict[str, Any]:
        """Submit a signed agreement; returns ``{"version", "digest", "created_at"}``.

        Raises:
            AgreementRejected: signatures or update rules fail; Conflict: raced.
        """
        _, body = self._request("POST", "/v1/agreement", json=signed.model_dump(mode="json"))
        result: dict[str, Any] = json.loads(body)
        return result

    def current_agreement(self) -> SignedAgreement | None:
        """The active signed agreement, or None before the first one."""
        try:
            _, body = self._request("GET", "/v1/agreement")
        except NoAgreement:
            return None
        return SignedAgreement.from_mapping(json.loads(body)["signed"])

    def agreement_history(self) -> list[SignedAgreement]:
        """Every accepted agreement, oldest first (``GET /v1/agreement/history``; signed by
        the client's party key when it has one), the chain verified
        (:class:`~teeflow.kbs.policy.signing.AgreementHistory`: every party signed the first,
        k-of-n of the previous each update).

        Raises:
            ParseError: malformed body. VerificationError, PolicyViolation: a broken chain.
        """
        from teeflow.kbs.policy.signing import AgreementHistory

        auth = {} if self._party_auth is None else self._party_signed()
        _, body = self._request("GET", "/v1/agreement/history", **auth)
        try:
            items = json.loads(body)["agreements"]
            signed = [SignedAgreement.from_mapping(item["signed"]) for item in items]
        except (ValueError, KeyError, TypeError):
            raise ParseError("malformed agreement history from the KBS") from None
        AgreementHistory(signed)
        return signed

    def put_resource(
        self, path: str, data_key: bytes, signed_grant: SignedGrant, owner_keys: PartyKeys
    ) -> ResourceInfo:
        """Upload a data key for ``path`` under the owner's signed grant: the key is
        HPKE-wrapped to the pinned KBS key (``info=RESOURCE_WRAP_INFO``, ``aad=path``) and the
        upload signed by ``owner_keys``.

        Raises:
            SealingError: bad key; GrantRejected, Conflict, NoAgreement: refused by the KBS.
        """
        from teeflow.sealing.hpke import wrap_key

        wrapped = wrap_key(
            data_key, self.pin.hpke_public(), info=RESOURCE_WRAP_INFO, aad=resource_wrap_aad(path)
        )
        upload = sign_resource_upload(path, wrapped, signed_grant, owner_keys)
        _, body = self._request("POST", "/v1/resources", json=upload.to_wire())
        return ResourceInfo.model_validate_json(body)

    def revoke_enrollment(self, revocation: str) -> dict[str, Any]:
        """Submit a party-signed enrollment revocation
        (:func:`teeflow.kbs.policy.enrollment.sign_revocation`); returns ``{"id", "party",
        "revoked_at", "uses"}``.

        Raises:
            InvalidRequest: the KBS refused it (signature, federation); NoAgreement.
        """
        _, body = self._request(
            "POST", "/v1/enrollments/revocations", json={"revocation": revocation}
        )
        result: dict[str, Any] = json.loads(body)
        return result

    def ca_certificate(self) -> x509.Certificate:
        """The served federation CA; must equal the pinned one.

        Raises:
            VerificationError: it differs from the pin.
        """
        _, body = self._request("GET", "/v1/ca", state=False)
        try:
            served = x509.load_pem_x509_certificate(body)
        except ValueError:
            raise VerificationError("the KBS served a malformed CA certificate") from None
        if served.public_key() != self.pin.ca().public_key():
            raise VerificationError("the served CA key differs from the pinned CA key")
        return served

    def audit(
        self, *, page: int = 1000, verify: bool = True, after: AuditEntry | None = None
    ) -> list[AuditEntry]:
        """Every audit entry (paged), chain and signatures verified with the pinned key.
        Only parties may read it: the requests are signed with the client's party key.
        ``after``: an entry already verified; only the entries after it are read, and the
        first must link to it (``teeflow kbs audit show --follow``).

        Raises:
            KbsError: the client has no party keys; RequestUnsigned: refused by the KBS.
            AuditChainError (VerificationError): the chain does not verify.
            ParseError: a malformed entry.
        """
        from teeflow.kbs.service.audit import audit_entry_from_json, verify_audit_chain

        entries: list[AuditEntry] = []
        anchor, cursor = after, (0 if after is None else after.seq)
        while True:
            _, body = self._request(
                "GET", "/v1/audit", params={"after": cursor, "limit": page}, **self._party_signed()
            )
            doc = json.loads(body)
            raw = doc.get("entries") if isinstance(doc, dict) else None
            if not isinstance(raw, list):
                raise ParseError("audit response has no entries list")
            batch = [audit_entry_from_json(e) for e in raw]
            known = self.heads.head
            for e in batch:  # the remembered head must be in this chain (fork check)
                if known is not None and e.seq == known.seq and e.hash != known.hash:
                    raise StateRollback(
                        f"the KBS state was rolled back: its audit entry {e.seq} differs "
                        "from the state head seen before (a forked store)"
                    )
            if verify:
                verify_audit_chain(
                    batch, self.pin.audit_public(), after=entries[-1] if entries else anchor
                )
            entries += batch
            if len(batch) < page:
                return entries
            cursor = batch[-1].seq
