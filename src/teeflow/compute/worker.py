"""The compute worker workload (role ``compute``): authorised functions over sealed inputs.

``teeflow compute serve --kbs URL --pin FILE --package PKG [--listen HOST:PORT]`` runs
:func:`serve`; tests and benchmarks use :class:`ComputeWorker` with
:func:`make_worker_server` and :class:`teeflow.kbs.api.server.BackgroundServer`. The HTTPS
layer (FastAPI app, TLS context, uvicorn server, :func:`serve`) is in
:mod:`teeflow.compute.server` and re-exported here.

**Start** (:meth:`ComputeWorker.start`): read the active agreement from the pinned KBS; find
the package (``--package``: a ``.tar`` archive or a folder packed by
:func:`teeflow.fl.package.build_package`) by its digest among the agreement's packages; unpack
it into a private temporary folder; attest as role ``compute`` (claim: the package digest) and
obtain a workload certificate from the federation CA, which becomes the HTTPS server
certificate: parties check it (:mod:`teeflow.compute.party`) before uploading anything.

**HTTP API** (HTTPS, TLS 1.3, JSON; errors are RFC 7807 with
:data:`teeflow.compute.jobs.COMPUTE_PREFIX` types):

* ``GET  /v1/compute/info`` — package name/digest/functions, measurement, federation;
* ``PUT  /v1/compute/inputs/<owner>/teeu-input/<sha256>`` — a sealed input blob (raw body);
  refused unless SHA-256 of the body is the id's digest; kept in the input store (memory,
  or a folder — ciphertext only, never plaintext);
* ``POST /v1/compute/jobs`` — :class:`~teeflow.compute.jobs.JobRequest` → a
  :class:`~teeflow.compute.lineage.ResultRef` (a ``Server-Timing`` header gives the
  milliseconds spent per stage: attestation, release, decrypt, compute, seal, record);
* ``GET  /v1/compute/results/<id>`` — the sealed result blob; ``…/<id>/ref`` its reference.

**A job** (:meth:`ComputeWorker.run_job`), SecretFlow's TEEU flow in RCAR form:

1. resolve ``package:function`` (the loaded package, a named function) and the inputs;
2. attest afresh: a new RCAR session whose runtime data binds a fresh key, the KBS nonce and
   the claims ``{role: compute, package_digest, function, resources: input ids,
   recipients}`` (SecretFlow binds ``SHA256(pk ‖ SHA256(f) ‖ id_x ‖ id_y)``); a refused
   attestation (another measurement, a replayed nonce…) → :class:`AttestationRefused`;
3. check each stored blob still hashes to its id → else :class:`InputTampered`;
4. request each input key; the KBS releases it only if that owner's grant allows this
   role, measurement, package, function and *every* recipient; one refusal denies the job
   (:class:`ReleaseRefused`) — keys already received are dropped;
5. unseal the inputs in memory (a tampered blob → :class:`InputTampered`), decode, and run
   the function under :class:`~teeflow.compute.jobs.ExecutionLimits`;
6. seal the encoded result under a fresh data key, HPKE-wrap the key to each recipient's
   agreement X25519 key, obtain a certificate for the job key, sign the lineage record and
   step the KBS counter ``compute/<result id>`` bound to its digest (the audit entry).

Refusals after step 2 also step ``compute/<job id>`` bound to the digest of a refusal record,
so every job the worker attested for leaves an audit entry. Inputs and results never touch
disk in plaintext; the result store keeps at most ``max_results`` sealed results (oldest
dropped first).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import secrets
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

import teeflow
from teeflow.compute.jobs import (
    AttestationRefused,
    ComputeError,
    ExecutionLimits,
    InputTampered,
    InvalidJob,
    JobRefused,
    JobRequest,
    NotPermitted,
    PayloadTooLarge,
    ReleaseRefused,
    RequestLimits,
    parse_function,
    run_bounded,
)
from teeflow.compute.lineage import (
    InputLineage,
    LineageRecord,
    PackageRef,
    ResultInfo,
    ResultRef,
    WorkerInfo,
    counter_name,
    lineage_digest,
    sign_lineage,
)
from teeflow.compute.values import decode_value, encode_value, encoded_kind
from teeflow.errors import Error, KbsError, PolicyViolation
from teeflow.fl.package import build_package, package_digest, unpack_package
from teeflow.kbs.api.problems import AttestationFailed, PolicyDeny, TokenVerifierError
from teeflow.kbs.client.pinning import (
    Pin,
)
from teeflow.kbs.client.sdk import (
    KbsClient,
)
from teeflow.kbs.policy.agreement import FederationAgreement, digest
from teeflow.kbs.policy.canonical import b64url_decode, b64url_encode, sha256_digest
from teeflow.kbs.policy.request_signing import agreement_party_keys
from teeflow.platform.base import Attester
from teeflow.platform.nvidia import GpuAttester
from teeflow.sealing import generate_key, seal, unseal, wrap_key
from teeflow.workload.manifest import WorkloadManifest, measurement

__all__ = [
    "COMPUTE_ENTRYPOINT",
    "INPUT_AAD_PREFIX",
    "RESULT_AAD_PREFIX",
    "RESULT_WRAP_INFO",
    "ComputeWorker",
    "compute_manifest",
    "compute_measurement",
    "input_aad",
    "result_aad",
]

COMPUTE_ENTRYPOINT = ("teeflow", "compute", "serve")
INPUT_AAD_PREFIX = b"teeflow-compute-input-v1\x00"
RESULT_AAD_PREFIX = b"teeflow-compute-result-v1\x00"
RESULT_WRAP_INFO = b"teeflow/compute/result-key/v1"
_LOG = logging.getLogger("teeflow.compute.worker")


def input_aad(owner: str) -> bytes:
    """Associated data of a sealed input of ``owner``."""
    return INPUT_AAD_PREFIX + owner.encode("ascii")


def result_aad(result_id: str) -> bytes:
    """Associated data of a sealed result (also the HPKE ``aad`` of its wrapped keys)."""
    return RESULT_AAD_PREFIX + result_id.encode("ascii")


def compute_manifest() -> WorkloadManifest:
    """The worker's workload manifest: every ``.py``/``.pem``/``.der`` file of the installed
    teeflow package, entrypoint ``teeflow compute serve`` (emulated measurement = its
    SHA-256). The compute *package* a worker serves is not part of it: the agreement names
    that package by its digest (``packages.NAME.digest``)."""
    root = Path(teeflow.__file__).parent
    files = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*")
        if p.suffix in (".py", ".pem", ".der") and "__pycache__" not in p.parts
        and p.is_file() and not p.is_symlink()
    )
    return WorkloadManifest.build(root, entrypoint=list(COMPUTE_ENTRYPOINT), files=files,
                                  name="teeflow-compute", version=teeflow.__version__)


@functools.lru_cache(maxsize=1)
def compute_measurement() -> bytes:
    """The compute worker's measurement (32 bytes): SHA-256 of :func:`compute_manifest`
    (computed once per process). The one definition: ``teeflow compute serve`` (and
    :func:`teeflow.compute.server.serve`, the sandbox) attest with it on emulated
    platforms, and ``teeflow compute measurement`` prints it for the agreement's
    ``workloads.compute``."""
    return measurement(compute_manifest())


def _load_archive(package: Path | bytes) -> bytes:
    if isinstance(package, bytes):
        return package
    path = Path(package)
    if path.is_dir():
        return build_package(path)[0]
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KbsError(f"cannot read package {path}: {exc.strerror}") from None


class ComputeWorker:
    """A compute worker (module docstring).

    Args:
        pin: the verified KBS (:class:`Pin` or pin file).
        platform: the attester (from :func:`teeflow.platform.attester_for`).
        package: package archive bytes, ``.tar`` path or package folder.
        kbs_url: KBS URL (default ``pin.url``).
        store_dir: keep sealed inputs in this folder instead of memory.
        limits: function limits.
        max_jobs: concurrent jobs; max_results: results kept.
        clock: time source (UTC).
        enrollment: the compute operator's enrollment token for role ``compute``
            (:mod:`teeflow.kbs.policy.enrollment`); the KBS refuses the worker without it,
            and grants that list ``parties`` release keys only if it names the operator.
        gpu: GPU attester whose evidence goes with each attestation, or None.
    """

    def __init__(
        self, pin: Pin | Path | str, platform: Attester, package: Path | bytes, *,
        kbs_url: str | None = None, store_dir: Path | None = None,
        limits: ExecutionLimits | None = None, max_jobs: int = 2, max_results: int = 256,
        clock: Callable[[], datetime] | None = None, enrollment: str | None = None,
        gpu: GpuAttester | None = None,
    ) -> None:
        self.pin = pin if isinstance(pin, Pin) else Pin.load(pin)
        self.enrollment = enrollment
        self.kbs_url = kbs_url or self.pin.url
        self.platform = platform
        self.gpu = gpu
        self.archive = _load_archive(package)
        self.package_digest = package_digest(self.archive).hex()
        self.limits = limits or ExecutionLimits()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._store_dir = Path(store_dir) if store_dir is not None else None
        self._inputs: dict[str, bytes] = {}
        self._party_bytes: dict[str, int] = {}  # stored + reserved input bytes per owner
        self.agreement: FederationAgreement | None = None
        self._party_keys: dict[str, Ed25519PublicKey] = {}
        self._results: OrderedDict[str, tuple[bytes, ResultRef]] = OrderedDict()
        self._max_results = max_results
        self._lock = threading.Lock()
        self._jobs = threading.BoundedSemaphore(max_jobs)
        self._tmp = tempfile.mkdtemp(prefix="teeflow-compute-")
        self.package_name = ""
        self.functions: tuple[str, ...] = ()
        self.certificate: x509.Certificate | None = None
        self._tls_key: Any = None
        self.url = ""
        self._fns: dict[str, Callable[..., Any]] = {}

    # -- start -------------------------------------------------------------------------------

    def _client(self) -> KbsClient:
        return KbsClient(self.kbs_url, self.pin, self.platform, enrollment=self.enrollment,
                         gpu=self.gpu)

    def _agreement(self, kbs: KbsClient) -> tuple[FederationAgreement, str]:
        signed = kbs.current_agreement()
        if signed is None:
            raise KbsError("the KBS has no federation agreement")
        d = digest(signed.agreement).hex()
        if self.pin.agreement_digest is not None and self.pin.agreement_digest != d:
            _LOG.warning("the KBS agreement changed since the pin was made")
        if self.agreement is None or digest(self.agreement).hex() != d:
            self.agreement = signed.agreement
            self._party_keys = agreement_party_keys(signed.agreement.parties)
        return signed.agreement, d

    def party_keys(self) -> Mapping[str, Ed25519PublicKey]:
        """``{party: Ed25519 public key}`` of the agreement in force (as last read from the
        KBS: at start and at every job); the keys party-signed requests verify with."""
        return self._party_keys

    def request_limits(self) -> RequestLimits:
        """Upload bounds: the agreement's ``compute_limits`` if it sets them, else
        :class:`~teeflow.compute.jobs.RequestLimits` defaults."""
        found = None if self.agreement is None else self.agreement.compute_limits
        if found is None:
            return RequestLimits()
        return RequestLimits(max_input_bytes=found.max_input_bytes,
                             max_party_bytes=found.max_party_bytes)

    @contextlib.contextmanager
    def reserve_upload(self, owner: str, size: int) -> Iterator[None]:
        """Reserve ``size`` bytes of ``owner``'s quota for an upload in progress; the
        reservation becomes the stored input's share on success and is returned otherwise.

        Raises:
            PayloadTooLarge: the owner's stored and reserved bytes would exceed
                ``max_party_bytes`` (checked before any byte of the body is read).
        """
        limit = self.request_limits().max_party_bytes
        with self._lock:
            used = self._party_bytes.get(owner, 0)
            if used + size > limit:
                raise PayloadTooLarge(
                    f"{owner} may keep at most {limit} bytes of inputs at this worker")
            self._party_bytes[owner] = used + size
        ok = False
        try:
            yield
            ok = True
        finally:
            if not ok:
                with self._lock:
                    self._party_bytes[owner] = max(0, self._party_bytes.get(owner, 0) - size)

    def start(self) -> ComputeWorker:
        """Load the package, attest, obtain the TLS certificate (module docstring).

        Raises:
            KbsError: no agreement, or the package is not in it.
            AttestationFailed: the KBS refused the worker (e.g. another measurement).
            PackageError, VerificationError: the package cannot be unpacked.
        """
        from teeflow.fl.package import load_entrypoint

        with self._client() as kbs:
            agreement, _ = self._agreement(kbs)
            found = agreement.package_by_digest(self.package_digest)
            if not self._party_keys:
                raise KbsError("the agreement lists no party signing key")
            if found is None:
                raise KbsError(f"package {self.package_digest} is not in the agreement")
            self.package_name, spec = found
            manifest = unpack_package(self.archive, Path(self._tmp) / "pkg", self.package_digest)
            self.functions = tuple(sorted(set(manifest.functions) & set(spec.functions)))
            self._fns = {f: load_entrypoint(Path(self._tmp) / "pkg", f) for f in self.functions}
            kbs.attest("compute", {"package_digest": self.package_digest})
            pem, key = kbs.get_certificate()
        self.certificate = x509.load_pem_x509_certificate(pem)
        self._tls_key = key
        return self

    def close_inputs(self) -> None:
        """Drop every stored input and result (memory store)."""
        with self._lock:
            self._inputs.clear()
            self._results.clear()

    def close(self) -> None:
        """Drop stored blobs and the unpacked package."""
        with self._lock:
            self._inputs.clear()
            self._results.clear()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def info(self) -> dict[str, Any]:
        """Public facts about this worker."""
        return {
            "package": {"name": self.package_name, "digest": self.package_digest},
            "functions": list(self.functions),
            "measurement": getattr(self.platform, "measurement", b"").hex(),
            "tee": self.platform.tee,
            "attester": self.platform.kind,
            "federation": self.pin.federation,
        }

    # -- input store (ciphertext only) ------------------------------------------------------

    def put_input(self, input_id: str, blob: bytes) -> None:
        """Store a sealed input whose id names its SHA-256.

        Raises:
            InvalidJob: the id is malformed or the blob does not hash to it.
        """
        JobRequest(function="x:y", inputs=(input_id,))  # validates the id shape
        if hashlib.sha256(blob).hexdigest() != input_id.rsplit("/", 1)[1]:
            raise InvalidJob("the blob's SHA-256 differs from its id")
        if self._store_dir is not None:
            path = self._store_dir / input_id.replace("/", "__")
            self._store_dir.mkdir(parents=True, exist_ok=True)
            existed = path.exists()
            path.write_bytes(blob)
        else:
            with self._lock:
                existed = input_id in self._inputs
                self._inputs[input_id] = blob
        if existed:  # the same id is the same bytes: its share was already counted
            owner = input_id.split("/", 1)[0]
            with self._lock:
                self._party_bytes[owner] = max(0, self._party_bytes.get(owner, 0) - len(blob))

    def get_input(self, input_id: str) -> bytes:
        """The stored sealed blob. Raises InvalidJob: unknown input."""
        if self._store_dir is not None:
            try:
                return (self._store_dir / input_id.replace("/", "__")).read_bytes()
            except OSError:
                raise InvalidJob(f"unknown input {input_id}") from None
        with self._lock:
            blob = self._inputs.get(input_id)
        if blob is None:
            raise InvalidJob(f"unknown input {input_id}")
        return blob

    def get_result(self, result_id: str) -> tuple[bytes, ResultRef]:
        """``(sealed blob, reference)``. Raises InvalidJob: unknown result."""
        with self._lock:
            found = self._results.get(result_id)
        if found is None:
            raise InvalidJob("unknown result")
        return found

    # -- jobs --------------------------------------------------------------------------------

    def run_job(self, request: JobRequest, *, timings: dict[str, float] | None = None,
                submitter: str | None = None) -> ResultRef:
        """Run one job (module docstring). ``timings`` (if given) receives seconds spent in
        ``attestation``, ``release``, ``decrypt``, ``compute``, ``seal`` and ``record``.

        Args:
            request: the job; timings: see above.
            submitter: the party whose signature the HTTP layer verified; it must own one
                of the inputs or be a recipient (None: an in-process caller, trusted).

        Raises:
            NotPermitted: the submitter neither owns an input nor receives the result.
            InvalidJob, AttestationRefused, ReleaseRefused, InputTampered, FunctionFailed,
            LimitExceeded: see :mod:`teeflow.compute.jobs`.
        """
        import time

        t = timings if timings is not None else {}
        mark = [time.perf_counter()]

        def lap(name: str) -> None:
            now = time.perf_counter()
            t[name] = t.get(name, 0.0) + now - mark[0]
            mark[0] = now

        package, function = parse_function(request.function)
        if package != self.package_name or function not in self._fns:
            raise InvalidJob(f"this worker has no function {request.function}")
        if len(set(request.inputs)) != len(request.inputs):
            raise InvalidJob("an input is listed twice")
        if not request.recipients:
            raise InvalidJob("a job needs at least one recipient")
        if submitter is not None and submitter not in request.recipients and \
                submitter not in {i.split("/", 1)[0] for i in request.inputs}:
            raise NotPermitted(f"{submitter} neither owns an input nor receives the result")
        blobs = [self.get_input(i) for i in request.inputs]
        job_id = secrets.token_hex(16)
        claims = {"package_digest": self.package_digest, "function": function,
                  "resources": list(request.inputs), "recipients": list(request.recipients)}
        with self._jobs, self._client() as kbs:
            try:
                kbs.attest("compute", claims)
            except AttestationFailed as exc:
                raise AttestationRefused(
                    f"job attestation refused by the KBS: {exc.detail}") from None
            lap("attestation")
            try:
                return self._attested_job(kbs, job_id, request, function=function, blobs=blobs,
                                          lap=lap)
            except JobRefused as exc:
                self._record_refusal(kbs, job_id, request, exc)
                raise

    def _attested_job(
        self, kbs: KbsClient, job_id: str, request: JobRequest, *, function: str,
        blobs: Sequence[bytes], lap: Callable[[str], None],
    ) -> ResultRef:
        for input_id, blob in zip(request.inputs, blobs, strict=True):
            if hashlib.sha256(blob).hexdigest() != input_id.rsplit("/", 1)[1]:
                raise InputTampered(f"input {input_id} was modified in the store")
        keys: list[bytes] = []
        for input_id in request.inputs:
            try:
                keys.append(kbs.get_resource(input_id))
            except PolicyDeny:
                keys.clear()
                raise ReleaseRefused(f"the grant of {input_id} does not allow this job") from None
        lap("release")
        args = []
        for input_id, blob, data in zip(request.inputs, blobs, keys, strict=True):
            try:
                plain = unseal(blob, data, aad=input_aad(input_id.split("/", 1)[0]))
            except Error:
                raise InputTampered(f"input {input_id} does not open (tampered)") from None
            try:
                args.append(decode_value(plain))
            except Error as exc:
                raise InputTampered(f"input {input_id} is not a compute value: {exc}") from None
        keys.clear()
        lap("decrypt")
        encoded = run_bounded(self._fns[function], args, encode_value, self.limits)
        del args
        lap("compute")
        agreement, agreement_digest = self._agreement(kbs)
        data_key = generate_key()
        sealed = seal(encoded, data_key, aad=result_aad(job_id), chunk_size=4 << 20)
        kind = encoded_kind(encoded)
        del encoded
        wrapped = {}
        for r in request.recipients:
            party = agreement.parties.get(r)
            if party is None:
                raise InvalidJob(f"recipient {r} is not a party")
            pub = X25519PublicKey.from_public_bytes(b64url_decode(party.recipient_key, length=32))
            wrapped[r] = b64url_encode(
                wrap_key(data_key, pub, info=RESULT_WRAP_INFO, aad=result_aad(job_id)))
        lap("seal")
        pem, key = kbs.get_certificate()
        cert = x509.load_pem_x509_certificate(pem)
        ident = kbs.check_certificate(cert)
        record = LineageRecord(
            result_id=job_id, federation=self.pin.federation, agreement_digest=agreement_digest,
            package=PackageRef(name=self.package_name, digest=self.package_digest),
            function=function,
            inputs=tuple(InputLineage(id=i, owner=i.split("/", 1)[0]) for i in request.inputs),
            recipients=request.recipients,
            result=ResultInfo(kind=kind, sealed_sha256=hashlib.sha256(sealed).hexdigest(),  # type: ignore[arg-type]
                              sealed_size=len(sealed)),
            wrapped_keys=wrapped,
            worker=WorkerInfo(measurement=ident.measurement, tee=ident.tee,
                              emulated=ident.emulated),
            attestation_token=kbs.token or "", created_at=self._clock(),
        )
        signed = sign_lineage(record, pem, key)
        self._step_counter(kbs, job_id, lineage_digest(record))
        ref = ResultRef(worker=self.url or "https://127.0.0.1:1", lineage=signed)
        with self._lock:
            self._results[job_id] = (sealed, ref)
            while len(self._results) > self._max_results:
                self._results.popitem(last=False)
        lap("record")
        return ref

    def _step_counter(self, kbs: KbsClient, job_id: str, bound: bytes) -> None:
        try:
            kbs.increment_counter(counter_name(job_id), 0, bound)
        except TokenVerifierError:  # a long job outlived its token: attest again
            kbs.attest("compute", {"package_digest": self.package_digest})
            kbs.increment_counter(counter_name(job_id), 0, bound)

    def _record_refusal(
        self, kbs: KbsClient, job_id: str, request: JobRequest, exc: ComputeError
    ) -> None:
        doc = {"job_id": job_id, "outcome": "refused", "code": exc.code,
               "function": request.function, "inputs": list(request.inputs),
               "recipients": list(request.recipients)}
        try:
            self._step_counter(kbs, job_id, sha256_digest(doc))
        except (KbsError, PolicyViolation) as err:
            _LOG.error("cannot record refused job %s: %s", job_id, type(err).__name__)

