"""The client SDK of attested model serving: verify the server, then send end-to-end
encrypted OIP requests.

``Client(url, pin=PIN, party=KEYS)`` (:class:`Client`), before the first request:

1. reads the agreement in force from the pinned KBS;
2. ``GET /v2/attestation?nonce=<fresh>`` and checks: the certificate is issued by the
   federation CA (from the pin) to role ``serve`` under that agreement's digest
   (:func:`~teeflow.kbs.ca.authority.verify_workload_certificate`); its measurement is one
   the agreement lists for ``workloads.serve`` on its platform (when it lists measurements);
   the certified key signed the statement binding the HPKE key, the model name and digest
   and the client's nonce (:func:`teeflow.serve.workload.statement`) — so the HPKE key lives
   in an attested serving workload now;
3. by default (``session=True``) sets up one end-to-end session (:mod:`teeflow.serve.session`:
   one HPKE setup to that key, RFC 9421 party-signed or carrying the API key inside, and a
   check that the server's answer opens under the derived key), then :meth:`Client.infer`
   seals each request under the session key with the next sequence number and opens the
   response; a new session is set up before the old one expires, and once when the server
   no longer knows it (e.g. after a restart: the request was not processed). With
   ``session=False`` every request is sealed to the attested key on its own
   (:mod:`teeflow.serve.e2e`, ``hpke-v1``), RFC 9421-signed as the party or with the API key
   inside, and its response opened with the request's ephemeral key. A tampered response
   raises :class:`~teeflow.errors.SealingError`; a refusal raises :class:`ServeRefused`
   carrying the RFC 7807 problem.

One HTTP/1.1 connection is kept alive and reused (one TLS handshake per client). The client
is thread-safe; session requests are sent one at a time (sequence numbers must arrive in
order).

TLS: the server's certificate is the ``serve`` workload certificate; by default the client
trusts the federation CA for TLS (no host name check: the certificate names a workload, not
a host). Through a TLS-terminating proxy pass ``tls_verify`` for the proxy: the envelope
keeps requests and predictions confidential either way.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from numpy.typing import NDArray

from teeflow.errors import Error, ParseError, VerificationError
from teeflow.kbs.ca.authority import WorkloadIdentity, verify_workload_certificate
from teeflow.kbs.client.pinning import Pin
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.policy.agreement import FederationAgreement, WorkloadRole, digest
from teeflow.kbs.policy.canonical import b64url_decode, b64url_encode
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.kbs.policy.request_signing import PartyRequestAuth
from teeflow.serve.e2e import (
    E2E_PARAMETER,
    E2E_TENSOR,
    envelope_of,
    envelope_request,
    open_response,
    seal_request,
)
from teeflow.serve.oip import HEADER_LENGTH, decode_response, encode_request
from teeflow.serve.session import (
    SEQ_PARAMETER,
    SESSION_PARAMETER,
    SESSION_SCHEME,
    SessionKeys,
    seal_setup,
)
from teeflow.serve.workload import statement

__all__ = ["Client", "ServeRefused", "ServerUnverified", "tls_context"]


class ServeRefused(Error):
    """The server refused the request; ``status`` and ``problem`` (RFC 7807 body)."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {str(problem.get('detail', ''))[:300]}")
        self.status = status
        self.problem = dict(problem)


class ServerUnverified(VerificationError):
    """The server did not prove to be an attested serving workload of this federation."""


def tls_context(pin: Pin) -> ssl.SSLContext:
    """TLS 1.3 client context trusting only the federation CA (module docstring)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    ctx = ssl.create_default_context(cadata=pin.ca().public_bytes(Encoding.PEM).decode())
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    return ctx


def _platform(tee: str) -> str:
    return tee.removeprefix("emulated-")


class Client:
    """An end-to-end encrypting OIP client of one served model (module docstring).

    Args:
        url: the server's base URL (``https://host:port``).
        pin: the verified KBS pin (or pin file).
        party: the calling party's keys (requests are RFC 9421-signed), or None.
        api_key: an API key of the agreement (sent inside the envelope), or None.
        model: the model name (default: the one the server attests).
        tls_verify: TLS verification for httpx (default: :func:`tls_context` of the pin).
        timeout: per-request timeout (seconds).
        session: one end-to-end session for all requests (default) or one HPKE envelope
            and signature per request (module docstring).
    """

    #: Seconds before a session's expiry at which a new one is set up.
    RENEW_BEFORE = 30

    def __init__(self, url: str, *, pin: Pin | Path | str, party: PartyKeys | None = None,
                 api_key: str | None = None, model: str | None = None,
                 tls_verify: ssl.SSLContext | bool | None = None,
                 timeout: float = 30.0, session: bool = True) -> None:
        self.pin = pin if isinstance(pin, Pin) else Pin.load(pin)
        self.api_key = api_key
        self.use_session = session
        self._lock = threading.RLock()
        self._session: tuple[SessionKeys, str, int] | None = None
        self._seq = 0
        self._auth = PartyRequestAuth(party.name, party.sign_key) if party is not None else None
        verify = tls_verify if tls_verify is not None else tls_context(self.pin)
        self._http = httpx.Client(base_url=url.rstrip("/"), verify=verify, timeout=timeout)
        self.model = model
        self.identity: WorkloadIdentity | None = None
        self._server_key: X25519PublicKey | None = None
        self.model_digest: str | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connection."""
        self._http.close()

    def verify_server(self, agreement: FederationAgreement | None = None) -> WorkloadIdentity:
        """Check the server's attestation (module docstring, step 2) and remember its key.

        Args:
            agreement: the agreement in force (default: read from the pinned KBS).

        Raises:
            ServerUnverified: any check fails.
            KbsError: the KBS cannot be read.
        """
        if agreement is None:
            with KbsClient(None, self.pin) as kbs:
                signed = kbs.current_agreement()
            if signed is None:
                raise ServerUnverified("the KBS has no agreement")
            agreement = signed.agreement
        nonce = b64url_encode(os.urandom(24))
        try:
            r = self._http.get("/v2/attestation", params={"nonce": nonce})
            doc = r.json()
            if r.status_code != 200 or not isinstance(doc, dict):
                raise ServerUnverified(f"GET /v2/attestation answered {r.status_code}")
            from cryptography import x509

            cert = x509.load_pem_x509_certificate(str(doc["certificate"]).encode("ascii"))
            hpke = b64url_decode(str(doc["hpke_key"]), length=32)
            sig = b64url_decode(str(doc["signature"]))
            name, model_digest = str(doc["model"]), str(doc["model_digest"])
        except (httpx.HTTPError, ValueError, KeyError, ParseError) as exc:
            raise ServerUnverified(f"no valid attestation document: {type(exc).__name__}"
                                   ) from None
        try:
            identity = verify_workload_certificate(
                cert, self.pin.ca(), now=datetime.now(UTC),
                expected_agreement_digest=digest(agreement).hex(), required_role="serve")
        except VerificationError as exc:
            raise ServerUnverified(f"server certificate: {exc}") from None
        values = agreement.reference_values(WorkloadRole.SERVE, _platform(identity.tee))
        if values is None:
            raise ServerUnverified(f"the agreement names no serve values for {identity.tee}")
        listed = getattr(values, {"sgx": "mrenclave", "tdx": "mrtd"}.get(
            _platform(identity.tee), "measurement"))
        if listed and identity.measurement not in {m.lower() for m in listed}:
            raise ServerUnverified("the server's measurement is not an agreed serve measurement")
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ServerUnverified("the server certificate key is not an EC key")
        try:
            key.verify(sig, statement(hpke, name, model_digest, nonce), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise ServerUnverified("the attestation statement is not signed by the "
                                   "certified key (or not for this nonce)") from None
        if self.model is not None and self.model != name:
            raise ServerUnverified(f"the server serves {name[:64]!r}, not {self.model!r}")
        self.model, self.model_digest, self.identity = name, model_digest, identity
        self._server_key = X25519PublicKey.from_public_bytes(hpke)
        return identity

    def infer(self, inputs: Mapping[str, NDArray[Any]], *, binary: bool = True
              ) -> dict[str, NDArray[Any]]:
        """One end-to-end encrypted inference → outputs by name.

        Raises:
            ServerUnverified: the server's attestation does not verify (first call).
            ServeRefused: the server refused (RFC 7807 problem).
            SealingError: the response does not open (tampered or swapped).
            OipError: a malformed response.
        """
        with self._lock:
            if self._server_key is None:
                self.verify_server()
            assert self._server_key is not None and self.model is not None
            inner, inner_len = encode_request(dict(inputs), binary=binary)
            if self.use_session:
                try:
                    return self._infer_in_session(inner, inner_len)
                except ServeRefused as exc:
                    if not str(exc.problem.get("type", "")).endswith("/UnknownSession"):
                        raise
                self._session = None  # the server forgot it (restart): not processed
                return self._infer_in_session(inner, inner_len)
        ct, key = seal_request(inner, inner_len, self._server_key, self.model,
                               api_key=self.api_key)
        body, length = envelope_request(ct)
        resp = self._post(body, length)
        outer = decode_response(resp.content, resp.headers.get(HEADER_LENGTH))
        sealed = envelope_of(outer)
        if sealed is None:
            raise VerificationError("the server answered an encrypted request in plaintext")
        plain, plain_len = open_response(sealed, key, ct)
        return {k: np.asarray(v) for k, v in decode_response(plain, plain_len).outputs.items()}

    def open_session(self) -> str:
        """Set up a new end-to-end session (module docstring, step 3) → its id.

        Raises:
            ServerUnverified: the server's attestation does not verify (first call).
            ServeRefused: the server refused (e.g. 401/403 for the caller).
            SealingError: the server's answer does not open under the session key.
        """
        with self._lock:
            if self._server_key is None:
                self.verify_server()
            assert self._server_key is not None and self.model is not None
            ct, secret = seal_setup(self._server_key, self.model, api_key=self.api_key)
            resp = self._send(f"/v2/models/{self.model}/session", ct,
                              {"Content-Type": "application/octet-stream"}, sign=True)
            keys = SessionKeys(secret, ct, self.model)
            sid, expires = keys.open_ok(resp.content)
            self._session, self._seq = (keys, sid, expires), 0
            return sid

    def _infer_in_session(self, inner: bytes, inner_len: int | None
                          ) -> dict[str, NDArray[Any]]:
        if self._session is None or self._session[2] - time.time() < self.RENEW_BEFORE:
            self.open_session()
        assert self._session is not None
        keys, sid, _ = self._session
        self._seq += 1
        seq = self._seq
        ct = keys.seal_request(sid, seq, inner, inner_len)
        body, length = encode_request(
            {E2E_TENSOR: np.frombuffer(ct, dtype=np.uint8)}, binary=True,
            parameters={E2E_PARAMETER: SESSION_SCHEME, SESSION_PARAMETER: sid,
                        SEQ_PARAMETER: seq})
        resp = self._post(body, length)
        outer = decode_response(resp.content, resp.headers.get(HEADER_LENGTH))
        sealed = envelope_of(outer)
        if sealed is None or outer.parameters.get(E2E_PARAMETER) != SESSION_SCHEME:
            raise VerificationError("the server answered a session request otherwise")
        plain, plain_len = keys.open_response(sid, seq, sealed)
        return {k: np.asarray(v) for k, v in decode_response(plain, plain_len).outputs.items()}

    def _post(self, body: bytes, length: int | None) -> httpx.Response:
        headers = {"Content-Type": "application/octet-stream"}
        if length is not None:
            headers[HEADER_LENGTH] = str(length)
        # a session request is authenticated by its session key (the caller was at setup)
        return self._send(f"/v2/models/{self.model}/infer", body, headers,
                          sign=not self.use_session)

    def _send(self, path: str, body: bytes, headers: dict[str, str], *, sign: bool
              ) -> httpx.Response:
        auth: Any = httpx.USE_CLIENT_DEFAULT
        if sign:
            if self._auth is None and self.api_key is None:
                raise ServeRefused(401, {"detail": "give party keys or an API key"})
            if self._auth is not None:
                auth = self._auth
        resp = self._http.post(path, content=body, headers=headers, auth=auth)
        if resp.status_code != 200:
            try:
                problem = resp.json()
            except ValueError:
                problem = {"detail": resp.text[:300]}
            raise ServeRefused(resp.status_code, problem if isinstance(problem, dict) else {})
        return resp
