"""The data-owner side of authorised compute: :class:`Party`, :class:`Teeu`, :class:`SealedInput`.

The shape SecretFlow users know (PYU devices, ``a.to(teeu, allow_funcs=...)``)::

    alice = compute.Party.load("alice", kbs=URL, pin=PIN)
    teeu  = alice.teeu("https://127.0.0.1:9443")          # verified: an attested worker
    x = alice.seal(array, allow=["stats:average"], recipients=["alice", "bob"], to=teeu)
    r = teeu.run("stats:average", x, y)                    # a sealed result reference
    value = alice.open(r)                                  # only a recipient can

**Verifying the worker** (:meth:`Party.teeu`): the HTTPS connection to the worker accepts
only a server certificate issued by the federation CA of the pinned KBS; inside the TLS
handshake (before any byte is sent) the certificate's teeflow identity must name role
``compute`` and the active agreement (:func:`teeflow.kbs.ca.authority.verify_workload_certificate`)
—
the KBS issues such a certificate only to a workload whose evidence matched the agreement's
``compute`` reference values. Anything else: :class:`WorkerUnverified`.

**Sealing** (:meth:`Party.seal`): encode (:mod:`teeflow.compute.values`), seal under a fresh
32-byte data key (:func:`teeflow.sealing.seal`, ``aad = "teeflow-compute-input-v1\\0" ‖
owner``), id = ``<owner>/teeu-input/<SHA-256 of the sealed blob>``; upload the blob to the
worker, then the data key (HPKE-wrapped to the KBS) with a grant signed by the owner: role
``compute``, the packages and functions of ``allow``, ``recipients``, ``not_after``,
``max_releases``.

**Opening** (:meth:`Party.open`): verify the signed lineage
(:func:`teeflow.compute.lineage.verify_lineage`), fetch the sealed result, check its SHA-256,
unwrap this party's key with its X25519 recipient key, unseal, decode. A party without a
wrapped key, or whose key does not open it, gets :class:`NotARecipient`.
"""

from __future__ import annotations

import hashlib
import ssl
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import httpx
from pydantic import BaseModel, ConfigDict

from teeflow.compute.jobs import (
    ComputeError,
    InvalidJob,
    JobRequest,
    NotARecipient,
    WorkerUnverified,
    error_from_problem,
    input_id,
    parse_function,
)
from teeflow.compute.lineage import ResultRef, verify_lineage
from teeflow.compute.values import decode_value, encode_value
from teeflow.compute.worker import RESULT_WRAP_INFO, input_aad, result_aad
from teeflow.errors import Error, KbsError, SealingError, VerificationError
from teeflow.kbs.ca.tls import workload_client_context
from teeflow.kbs.client.pinning import (
    Pin,
)
from teeflow.kbs.client.sdk import (
    KbsClient,
)
from teeflow.kbs.policy.agreement import FederationAgreement, digest
from teeflow.kbs.policy.canonical import b64url_decode
from teeflow.kbs.policy.grants import Grant, grant_digest, new_grant_id, sign_grant
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.kbs.policy.request_signing import PartyRequestAuth
from teeflow.sealing import generate_key, seal, unseal, unwrap_key

__all__ = ["Party", "SealedInput", "Teeu", "worker_tls_context"]

_CHUNK = 4 << 20
_MAX_RESULT_BYTES = 4 << 30


class SealedInput(BaseModel):
    """A reference to an input sealed at a worker (public values only)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    owner: str
    worker: str
    allow: tuple[str, ...]
    recipients: tuple[str, ...]
    grant_digest: str
    size: int


def worker_tls_context(pin: Pin, agreement_digest: str) -> ssl.SSLContext:
    """Client TLS context for a compute worker (module docstring): chain to the pinned
    federation CA checked by OpenSSL, then the teeflow identity (role ``compute``, this
    agreement) checked inside the handshake
    (:func:`teeflow.kbs.ca.tls.workload_client_context`)."""
    return workload_client_context(pin.ca(), agreement_digest, "compute")


def _server_timing(header: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in header.split(",")[:32]:
        name, _, dur = part.strip().partition(";dur=")
        try:
            out[name] = float(dur) / 1e3
        except ValueError:
            continue
    return out


class Teeu:
    """A verified connection to one compute worker (create with :meth:`Party.teeu`).

    Args:
        url: ``https://`` URL of the worker; pin: the verified KBS; agreement_digest: hex.
        timeout: seconds per request.
        auth: signs every request for a party (:class:`PartyRequestAuth`); the worker refuses
            uploads, jobs and result reads that no party of the agreement signed.
    """

    def __init__(self, url: str, pin: Pin, agreement_digest: str, timeout: float = 600.0,
                 *, auth: httpx.Auth | None = None) -> None:
        if not url.startswith("https://"):
            raise InvalidJob("the worker URL must be https://")
        self.url = url.rstrip("/")
        ctx = worker_tls_context(pin, agreement_digest)
        self._http = httpx.Client(base_url=self.url, verify=ctx, timeout=timeout,
                                  trust_env=False, follow_redirects=False,
                                  auth=auth)
        self.info: dict[str, Any] = self._json("GET", "/v1/compute/info")
        #: seconds per worker stage of the last :meth:`run` (its ``Server-Timing`` header).
        self.last_timings: dict[str, float] = {}

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Teeu:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            if "workload not verified" in str(exc) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise WorkerUnverified(f"the worker at {self.url} is not an attested compute "
                                       "workload of this federation") from None
            raise ComputeError(f"cannot reach the worker: {type(exc).__name__}") from None
        if resp.status_code >= 400:
            try:
                doc = resp.json()
            except ValueError:
                doc = None
            raise error_from_problem(resp.status_code, doc)
        return resp

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._send(method, path, **kw).json()

    def upload(self, input_id: str, blob: bytes) -> None:
        """Store a sealed blob at the worker (``PUT /v1/compute/inputs/<id>``)."""
        self._send("PUT", f"/v1/compute/inputs/{input_id}", content=blob,
                   headers={"Content-Type": "application/octet-stream"})

    def run(self, function: str, *inputs: SealedInput | str,
            recipients: Sequence[str] | None = None) -> ResultRef:
        """Run ``package:function`` over ``inputs`` (in order); the result is sealed to
        ``recipients`` (default: the recipients every input allows, in sorted order).

        Raises:
            InvalidJob: no common recipient, bad function; JobRefused (and subclasses): the
            worker or the KBS refused the job.
        """
        parse_function(function)
        ids = [i.id if isinstance(i, SealedInput) else i for i in inputs]
        if recipients is None:
            common: set[str] | None = None
            for i in inputs:
                if isinstance(i, SealedInput):
                    common = set(i.recipients) if common is None else common & set(i.recipients)
            if not common:
                raise InvalidJob("give recipients: the inputs allow no common recipient")
            recipients = sorted(common)
        job = JobRequest(function=function, inputs=tuple(ids), recipients=tuple(recipients))
        resp = self._send("POST", "/v1/compute/jobs", content=job.model_dump_json(),
                          headers={"Content-Type": "application/json"})
        self.last_timings = _server_timing(resp.headers.get("server-timing", ""))
        ref = ResultRef.from_json(resp.content)
        return ref.model_copy(update={"worker": self.url})

    def fetch(self, ref: ResultRef) -> bytes:
        """The sealed result blob of ``ref``."""
        return self._send("GET", f"/v1/compute/results/{ref.result_id}").content


class Party:
    """A party (data owner and/or result recipient) of the federation.

    Args:
        keys: the party's keys; pin: the verified KBS; kbs_url: its URL (default ``pin.url``).
    """

    def __init__(self, keys: PartyKeys, pin: Pin, kbs_url: str | None = None) -> None:
        self.keys = keys
        self.name = keys.name
        self.pin = pin
        self.kbs = KbsClient(kbs_url, pin, party=keys)
        self._agreement: FederationAgreement | None = None
        self._teeus: dict[str, Teeu] = {}
        #: seconds per stage of the last :meth:`seal` (seal, upload, kbs) or :meth:`open`
        #: (verify, download, open).
        self.last_timings: dict[str, float] = {}

    @classmethod
    def load(cls, name: str, *, kbs: str | None = None, pin: Pin | Path | str,
             home: Path | None = None) -> Self:
        """Party ``name`` from ``$TEEFLOW_HOME/parties/<name>`` with a pin file or Pin.

        Raises:
            ParseError: keys or pin unreadable.
        """
        p = pin if isinstance(pin, Pin) else Pin.load(pin)
        return cls(PartyKeys.load(name, home), p, kbs)

    def close(self) -> None:
        """Close connections."""
        for t in self._teeus.values():
            t.close()
        self.kbs.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def agreement(self) -> FederationAgreement:
        """The active agreement (from the pinned KBS; cached).

        Raises:
            KbsError: the KBS has none, or it differs from the pinned agreement digest.
        """
        if self._agreement is None:
            signed = self.kbs.current_agreement()
            if signed is None:
                raise KbsError("the KBS has no federation agreement")
            d = digest(signed.agreement).hex()
            if self.pin.agreement_digest is not None and d != self.pin.agreement_digest:
                raise KbsError(
                    "the KBS enforces another agreement than the pinned one (updated since "
                    "you verified it?): verify the KBS again (teeflow kbs verify; "
                    "teeflow.kbs.client.verification.verify_kbs) to pin the agreement in force")
            self._agreement = signed.agreement
        return self._agreement

    def teeu(self, url: str) -> Teeu:
        """A verified connection to the compute worker at ``url`` (module docstring).

        Raises:
            WorkerUnverified: the worker has no valid compute certificate of this federation.
        """
        key = url.rstrip("/")
        if key not in self._teeus:
            self._teeus[key] = Teeu(key, self.pin, digest(self.agreement).hex(),
                                    auth=PartyRequestAuth(self.name, self.keys.sign_key))
        return self._teeus[key]

    def seal(
        self, value: Any, *, allow: Sequence[str], recipients: Sequence[str], to: Teeu,
        max_releases: int = 16, valid_for: timedelta = timedelta(days=1),
        co_owners: Sequence[str] = (), co_inputs: Sequence[str] = (), min_owners: int = 1,
        operators: Sequence[str] = (),
    ) -> SealedInput:
        """Seal ``value`` for ``to`` (module docstring) and return its reference.

        Args:
            value: numpy array, ``dict[str, ndarray]``, ``pyarrow.Table``, bytes or JSON.
            allow: ``package:function`` names the grant allows.
            recipients: parties results may be sealed to.
            to: the worker that stores the blob.
            max_releases: how many jobs may use it; valid_for: grant lifetime.
            co_owners, co_inputs, min_owners: bind the whole job (the grant is released
                only to jobs that also take inputs of these parties / these inputs / of at
                least ``min_owners`` distinct owners; :mod:`teeflow.kbs.policy.grants`).
            operators: if given, the key is released only to workers enrolled by one of
                these parties (the grant's ``parties``; the compute operator enrolls the
                worker); default any enrolled worker.

        Raises:
            InvalidJob: ``allow`` names a package or function the agreement lacks.
            ParseError: an unsupported value; GrantRejected: the KBS refused the grant.
        """
        agreement = self.agreement
        packages, functions = set(), set()
        for ref in allow:
            pkg, fn = parse_function(ref)
            spec = agreement.packages.get(pkg)
            if spec is None or fn not in spec.callables:
                raise InvalidJob(f"{ref} is not a function of the agreement")
            packages.add(spec.digest)
            functions.add(fn)
        t0 = time.perf_counter()
        key = generate_key()
        blob = seal(encode_value(value), key, aad=input_aad(self.name), chunk_size=_CHUNK)
        iid = input_id(self.name, hashlib.sha256(blob).digest())
        t1 = time.perf_counter()
        to.upload(iid, blob)
        t2 = time.perf_counter()
        now = datetime.now(UTC)
        grant = Grant.from_mapping({
            "id": new_grant_id(), "resource": iid, "owner": self.name,
            "agreement": digest(agreement).hex(), "roles": ["compute"],
            "packages": sorted(packages), "functions": sorted(functions),
            "recipients": sorted(set(recipients)), "created_at": now - timedelta(seconds=5),
            "not_after": now + valid_for, "max_releases": max_releases,
            "co_owners": sorted(set(co_owners)), "co_inputs": sorted(set(co_inputs)),
            "min_owners": min_owners,
            "parties": sorted(set(operators)),
        })
        self.kbs.put_resource(iid, key, sign_grant(grant, self.keys), self.keys)
        self.last_timings = {"seal": t1 - t0, "upload": t2 - t1,
                             "kbs": time.perf_counter() - t2}
        return SealedInput(id=iid, owner=self.name, worker=to.url, allow=tuple(allow),
                           recipients=tuple(sorted(set(recipients))),
                           grant_digest=grant_digest(grant).hex(), size=len(blob))

    def verify(self, ref: ResultRef) -> None:
        """Verify ``ref``'s lineage (:func:`teeflow.compute.lineage.verify_lineage`).

        Raises:
            VerificationError: it does not verify.
        """
        verify_lineage(ref.lineage, self.pin, agreement_digest=digest(self.agreement).hex())

    def open(self, ref: ResultRef, *, blob: bytes | None = None) -> Any:
        """Verify, fetch and open a result this party is a recipient of.

        Args:
            ref: the result reference; blob: the sealed result if already fetched.

        Raises:
            NotARecipient: this party has no key for it, or its key does not open it.
            VerificationError: the lineage or the blob's digest does not verify.
        """
        t0 = time.perf_counter()
        self.verify(ref)
        record = ref.lineage.record
        wrapped = record.wrapped_keys.get(self.name)
        if wrapped is None:
            raise NotARecipient(f"{self.name} is not a recipient of result {record.result_id}")
        aad = result_aad(record.result_id)
        try:
            key = unwrap_key(b64url_decode(wrapped), self.keys.recipient_key,
                             info=RESULT_WRAP_INFO, aad=aad)
        except (SealingError, Error):
            raise NotARecipient(f"the key of {self.name} does not open the result") from None
        t1 = time.perf_counter()
        if blob is None:
            blob = self.teeu(ref.worker).fetch(ref)
        t2 = time.perf_counter()
        if len(blob) > _MAX_RESULT_BYTES or hashlib.sha256(blob).hexdigest() != \
                record.result.sealed_sha256:
            raise VerificationError("the sealed result differs from its lineage record")
        value = decode_value(unseal(blob, key, aad=aad))
        self.last_timings = {"verify": t1 - t0, "download": t2 - t1,
                             "open": time.perf_counter() - t2}
        return value

    def audit_lineage(self, ref: ResultRef) -> Any:
        """The KBS audit view of ``ref`` (:func:`teeflow.compute.lineage.lineage_from_audit`)
        after verifying the record and the audit chain."""
        from teeflow.compute.lineage import lineage_from_audit

        self.verify(ref)
        return lineage_from_audit(ref.lineage.record, self.kbs.audit())

