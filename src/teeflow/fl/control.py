"""A party's client of the aggregator service's control API (``teeflow session ...``).

:class:`SessionControl` talks HTTPS to :mod:`teeflow.fl.service`: the connection accepts only
a server certificate of the pinned federation CA whose teeflow identity names role
``aggregator`` and the agreement in force — checked inside the TLS handshake, before any
request byte is sent (:func:`teeflow.kbs.ca.tls.workload_client_context`) — and every request
is signed with the party's Ed25519 key (RFC 9421, :class:`~teeflow.kbs.policy.request_signing.
PartyRequestAuth`). The service's problems come back as the matching exceptions::

    with SessionControl("https://127.0.0.1:8460", pin, keys, agreement_digest) as ctl:
        info = ctl.start(SessionRequest(package="mnist", rounds=3))
        for event in ctl.follow(info.id):
            print(event.event, event.fields)
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from teeflow.errors import Error, FLError, ParseError, VerificationError
from teeflow.fl.sessions import (
    SessionConflict,
    SessionEvent,
    SessionInfo,
    SessionNotFound,
    SessionRefused,
    SessionRequest,
)
from teeflow.kbs.client.pinning import Pin
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.kbs.policy.request_signing import PartyRequestAuth, RequestSignatureError

__all__ = ["ServiceUnverified", "SessionControl", "sealed_package_field"]


class ServiceUnverified(VerificationError):
    """The server is not an attested aggregator of this federation and agreement."""


_BY_STATUS: dict[int, type[Error]] = {
    400: ParseError, 401: RequestSignatureError, 403: SessionRefused, 404: SessionNotFound,
    409: SessionConflict,
}


def sealed_package_field(path: Path) -> str:
    """The ``sealed_package`` field of a :class:`SessionRequest` from a sealed archive file.

    Raises:
        FLError: unreadable file.
    """
    try:
        return base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError as exc:
        raise FLError(f"cannot read {path}: {exc.strerror or exc}") from None


class SessionControl:
    """Control-API client for one party (module docstring).

    Args:
        url: ``https://host:port`` of the service; pin: the verified KBS (its CA);
        keys: the party's keys (the signing key never leaves this object's requests);
        agreement_digest: hex digest of the agreement in force (the service certificate
            must name it); timeout: seconds per request (long polls add their wait).
    """

    def __init__(self, url: str, pin: Pin, keys: PartyKeys, agreement_digest: str,
                 *, timeout: float = 30.0) -> None:
        from teeflow.kbs.ca.tls import workload_client_context

        if not url.startswith("https://"):
            raise FLError("the service URL must be https://")
        self.url = url.rstrip("/")
        self.party = keys.name
        ctx = workload_client_context(pin.ca(), agreement_digest, "aggregator")
        self._timeout = timeout
        self._http = httpx.Client(base_url=self.url, verify=ctx, timeout=timeout,
                                  trust_env=False, follow_redirects=False,
                                  auth=PartyRequestAuth(keys.name, keys.sign_key))

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> SessionControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, *, timeout: float | None = None,
              raw: bool = False, **kw: Any) -> Any:
        try:
            resp = self._http.request(method, path, timeout=timeout or self._timeout, **kw)
        except httpx.HTTPError as exc:
            if "workload not verified" in str(exc) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise ServiceUnverified(
                    f"{self.url} is not an attested aggregator of this federation and "
                    "agreement (check the URL, the pin and the agreement in force)") from None
            raise FLError(f"cannot reach the aggregator service at {self.url}: "
                          f"{type(exc).__name__}") from None
        if resp.status_code >= 400:
            try:
                detail = str(resp.json().get("detail", ""))[:500]
            except ValueError:
                detail = ""
            cls = _BY_STATUS.get(resp.status_code, FLError)
            raise cls(detail or f"HTTP {resp.status_code}")
        return resp.content if raw else resp.json()

    def service(self) -> dict[str, Any]:
        """The service's attested identity (``GET /v1/service``)."""
        out: dict[str, Any] = self._call("GET", "/v1/service")
        return out

    def start(self, request: SessionRequest) -> SessionInfo:
        """Submit a session (``POST /v1/sessions``).

        Raises:
            SessionRefused: the training terms do not allow it; SessionConflict: name taken
            or queue full; RequestSignatureError: this party is not a party of the agreement
            in force; ServiceUnverified, FLError: as the module docstring.
        """
        body = request.model_dump_json(exclude_none=True)
        return SessionInfo.model_validate(self._call(
            "POST", "/v1/sessions", content=body, headers={"Content-Type": "application/json"}))

    def sessions(self) -> list[SessionInfo]:
        """Every session the service keeps, newest first."""
        return [SessionInfo.model_validate(s) for s in self._call("GET", "/v1/sessions")
                ["sessions"]]

    def get(self, session: str) -> SessionInfo:
        """One session. Raises: SessionNotFound."""
        return SessionInfo.model_validate(self._call("GET", f"/v1/sessions/{session}"))

    def events(self, session: str, after: int = 0, wait: float = 0.0
               ) -> tuple[list[SessionEvent], int, str]:
        """``(events with seq > after, next cursor, state)``; the service waits up to
        ``wait`` seconds (≤ 30) for a new event."""
        doc = self._call("GET", f"/v1/sessions/{session}/events",
                         params={"after": after, "wait": wait},
                         timeout=self._timeout + min(wait, 30.0))
        return ([SessionEvent.model_validate(e) for e in doc["events"]], int(doc["next"]),
                str(doc["state"]))

    def follow(self, session: str, *, after: int = 0, timeout: float = 86_400.0
               ) -> Iterator[SessionEvent]:
        """Yield events as they come until the session ends (``teeflow session logs
        --follow``); stops after ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            events, after, state = self.events(session, after, wait=min(25.0, left))
            yield from events
            if state not in ("queued", "running") and not events:
                return

    def stop(self, session: str) -> SessionInfo:
        """Stop a session. Raises: SessionNotFound; SessionConflict: already ended."""
        return SessionInfo.model_validate(self._call("POST", f"/v1/sessions/{session}/stop",
                                                     content=b""))

    def download(self, session: str, folder: Path | str = ".") -> tuple[Path, Path]:
        """Save a finished session's sealed model and provenance log in ``folder`` as
        ``<session>.model`` and ``<session>.provenance.jsonl``; returns both paths (open
        with :func:`teeflow.fl.outputs.verify_model` / ``open_model``).

        Raises:
            SessionConflict: not done; SessionNotFound; FLError: cannot write.
        """
        out = Path(folder)
        paths = (out / f"{session}.model", out / f"{session}.provenance.jsonl")
        for kind, path in zip(("model", "provenance"), paths, strict=True):
            data = self._call("GET", f"/v1/sessions/{session}/{kind}", raw=True,
                              timeout=max(self._timeout, 120.0))
            try:
                out.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            except OSError as exc:
                raise FLError(f"cannot write {path}: {exc.strerror or exc}") from None
        return paths

    def wait(self, session: str, timeout: float = 3600.0) -> SessionInfo:
        """Wait (following events) until the session ends or ``timeout`` seconds passed;
        returns its final info."""
        for _ in self.follow(session, timeout=timeout):
            pass
        return self.get(session)
