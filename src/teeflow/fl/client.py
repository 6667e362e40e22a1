"""The client workload (``teeflow client run``): attest, unseal the package, train in-process.

:meth:`Client.run`:

1. measurement: ``--manifest`` (trusted files re-hashed) or :func:`~teeflow.fl.workload.
   fl_manifest` ``("client")``; the attester of
   ``--platform`` (:func:`teeflow.platform.attester_for`) quotes it;
2. the agreement from the pinned KBS; the session package (:func:`~teeflow.fl.publish.
   choose_package`); RCAR attestation as role ``client`` for ``party`` with claims binding the
   package digest, the function ``train`` and the package-key resource; a workload certificate;
   the package key (released only under the publisher's grant: role client, this digest);
3. the sealed package — a local file (``--package-file``) or sent by the aggregator after its
   Welcome — is unsealed and its SHA-256 checked against the attested digest
   (:func:`~teeflow.fl.publish.open_package`: a different archive is refused with
   :class:`~teeflow.errors.VerificationError` before any of its code exists on disk), then
   unpacked (:func:`~teeflow.fl.package.unpack_package`, which checks the digest again);
4. dial out to the aggregator (:class:`~teeflow.fl.transport.client.AggregatorStream`: mutual
   TLS, aggregator identity verified) and run tasks until Goodbye: ``init`` → the package's
   ``init(config)``; ``train`` → ``train(arrays, config) -> (arrays, num_examples, metrics)``;
   ``evaluate`` → ``validate(arrays, config) -> (num_examples, metrics)``; ``reattest`` →
   attest again to the KBS and prove the new certificate (issue 11). The client's data
   spec is put into every config as ``config["data"]`` (overriding the aggregator's). A task
   whose code raises is reported as failed to the aggregator (type and message, ≤ 300
   characters, never data) and the client keeps serving; so is every task when the package's
   ``train``/``validate`` does not import (``package-import-failed``). The final ``done``
   event has ``ok: true`` only if the session ended well *and* none of its tasks failed.

Dropped by the aggregator (``Goodbye`` reason ``dropped: ...``), the client attests again and
reconnects up to ``rejoin`` times (a KBS refusal ends it). The client never opens a port.
Progress goes to ``emit(event, fields)``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from teeflow.errors import Error, FLError, ParseError
from teeflow.fl.arrays import decode_arrays, encode_arrays
from teeflow.fl.dp import local_dp_update
from teeflow.fl.package import load_entrypoint, unpack_package
from teeflow.fl.publish import (
    CLIENT_FUNCTION,
    choose_package,
    fetch_resource,
    open_package,
    package_key_path,
)
from teeflow.fl.transport.client import AggregatorStream, IncomingTask
from teeflow.fl.workload import fl_measurement
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.policy.agreement import digest
from teeflow.kbs.policy.training import DpTerms
from teeflow.platform.nvidia import gpu_attester_for
from teeflow.platform.selection import PlatformOptions

__all__ = ["Client", "ClientOptions", "ClientResult"]

Emit = Callable[[str, dict[str, Any]], None]


@dataclass
class ClientOptions:
    """Options of ``teeflow client run`` (times in seconds; see ``docs/fl.md``).

    ``threads``: torch threads for the package's tasks (``config["threads"]``); default 1 —
    several clients on one small machine train much faster with one thread each; 0 leaves the
    package's/torch's default. ``enrollment``: the token file of ``party``'s enrollment (role
    ``client``; ``teeflow party enroll``) — the KBS refuses the client without it.
    ``rejoin``: how many times a client the aggregator dropped (``Goodbye`` reason
    ``dropped: ...``, e.g. a missed re-attestation) attests again and reconnects (issue 11); a
    KBS refusal (revoked build, enrollment or platform) ends it.
    """

    party: str
    pin: Path
    aggregator: str
    data: str
    kbs_url: str | None = None
    package_file: Path | None = None
    package_ref: str | None = None
    workdir: Path | None = None
    manifest: Path | None = None
    connect_timeout: float = 60.0
    threads: int = 1
    session: str | None = None
    platform: PlatformOptions = field(default_factory=PlatformOptions)
    enrollment: Path | None = None
    gpu: str = "none"
    rejoin: int = 3


@dataclass(frozen=True)
class ClientResult:
    """What the client did."""

    party: str
    session: str
    tasks: int
    failed: int
    #: the session ended well and no task of this client failed
    ok: bool
    reason: str


def _enrollment(path: Path | None) -> str | None:
    if path is None:
        return None
    from teeflow.kbs.policy.enrollment import load_enrollment

    return load_enrollment(path)


class Client:
    """One client run (module docstring)."""

    def __init__(self, options: ClientOptions, emit: Emit | None = None) -> None:
        self.o = options
        self._emit_fn = emit or (lambda event, fields: None)
        self._entry: dict[str, Callable[..., Any]] = {}
        self._local_dp: DpTerms | None = None
        self._claims: dict[str, Any] = {}

    def emit(self, event: str, **fields: Any) -> None:
        """Report progress."""
        self._emit_fn(event, fields)

    def run(self) -> ClientResult:
        """Run until the aggregator says Goodbye (module docstring).

        Raises:
            AttestationFailed, PolicyDeny (KbsError): the KBS refused attestation or the key.
            VerificationError: the package's digest differs from the attested one, or the
                aggregator could not prove its identity.
            SealingError: the sealed package does not open with the released key.
            TransportError (FLError): no connection, refusal, or protocol violation.
        """
        o = self.o
        mr = fl_measurement("client", o.manifest)
        platform = o.platform.attester(mr)
        self.emit("platform", tee=platform.tee, attester=platform.kind)
        kbs = KbsClient(o.kbs_url, o.pin, platform, enrollment=_enrollment(o.enrollment),
                        gpu=gpu_attester_for(o.gpu))
        self._kbs = kbs
        try:
            signed = kbs.current_agreement()
            if signed is None:
                raise FLError("the KBS has no agreement")
            agreement_digest = digest(signed.agreement)
            terms = signed.agreement.training
            # local DP (agreement training.dp.local): clip and noise every update here
            self._local_dp = terms.dp if terms and terms.dp and terms.dp.local else None
            _, pkg_hex = choose_package(signed.agreement, o.package_ref)
            pkg = bytes.fromhex(pkg_hex)
            key_path = package_key_path(pkg_hex)
            self._claims = {
                "party": o.party,
                "package_digest": pkg_hex,
                "function": CLIENT_FUNCTION,
                "resources": [key_path],
                **({"session": o.session} if o.session else {}),
            }
            kbs.attest("client", self._claims)
            cert_pem, key = kbs.get_certificate()
            identity = kbs.check_certificate(x509.load_pem_x509_certificate(cert_pem))
            package_key = fetch_resource(kbs, key_path)
            ca = kbs.pin.ca()
        except BaseException:
            kbs.close()
            raise
        self.emit(
            "attested",
            role="client",
            party=identity.party,
            measurement=identity.measurement,
            emulated=identity.emulated,
        )
        archive = None
        if o.package_file is not None:
            try:
                sealed = o.package_file.read_bytes()
            except OSError as exc:
                raise FLError(f"cannot read {o.package_file}: {exc.strerror or exc}") from None
            archive = open_package(sealed, package_key, pkg)
        stream = AggregatorStream(
            o.aggregator,
            certificate_pem=cert_pem,
            key=key,
            ca=ca,
            party=o.party,
            package_digest=pkg,
            agreement_digest=agreement_digest,
            session=o.session,
            want_package=archive is None,
        )
        workdir = o.workdir or Path(tempfile.mkdtemp(prefix="teeflow-client-"))
        try:
            welcome = stream.open(o.connect_timeout)
            if archive is None:
                assert stream.sealed_package is not None
                archive = open_package(stream.sealed_package, package_key, pkg)
            unpacked = workdir / f"package-{pkg_hex[:16]}"
            if unpacked.exists():
                shutil.rmtree(unpacked)
            manifest = unpack_package(archive, unpacked, pkg)
            self.emit(
                "connected",
                session=welcome.session,
                package=manifest.name,
                aggregator_measurement=welcome.identity.measurement,
            )
            for name in ("train", "validate"):  # import the package code (torch) up front
                try:
                    self._fn(unpacked, name)
                except FLError as exc:  # reported: each task then fails with this reason
                    self.emit("package-import-failed", function=name, reason=str(exc)[:300])
            result = self._serve(stream, unpacked, welcome.session)
            for attempt in range(1, o.rejoin + 1):
                if result.ok or not result.reason.startswith("dropped:"):
                    break
                stream.close()
                stream = self._rejoin(ca, pkg, attempt, result.reason)
                result = self._serve(stream, unpacked, welcome.session)
            return result
        finally:
            stream.close()
            kbs.close()
            if o.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)

    def _rejoin(
        self, ca: x509.Certificate, pkg: bytes, attempt: int, reason: str
    ) -> AggregatorStream:
        """After a drop (issue 11): attest again (the KBS re-appraises under the agreement in
        force; a refusal raises and ends the client) and reconnect for the next round."""
        o = self.o
        self.emit("rejoining", attempt=attempt, reason=reason[:300])
        self._kbs.attest("client", self._claims)
        cert_pem, key = self._kbs.get_certificate()
        identity = self._kbs.check_certificate(x509.load_pem_x509_certificate(cert_pem))
        stream = AggregatorStream(
            o.aggregator,
            certificate_pem=cert_pem,
            key=key,
            ca=ca,
            party=o.party,
            package_digest=pkg,
            agreement_digest=bytes.fromhex(identity.agreement_digest),
            session=o.session,
        )
        welcome = stream.open(o.connect_timeout)
        self.emit("connected", session=welcome.session, rejoined=True,
                  aggregator_measurement=welcome.identity.measurement)
        return stream

    def _fn(self, root: Path, name: str) -> Callable[..., Any]:
        if name not in self._entry:
            self._entry[name] = load_entrypoint(root, name)
        return self._entry[name]

    def _serve(self, stream: AggregatorStream, root: Path, session: str) -> ClientResult:
        done = failed = 0
        for task in stream.tasks():
            self.emit("task", kind=task.kind, round=task.round)
            if task.kind == "reattest":
                self._reattest(stream, task)
                continue
            try:
                self._run_task(stream, root, task)
                done += 1
            except Exception as exc:  # package code: report and keep serving
                failed += 1
                reason = f"{type(exc).__name__}: {exc}"[:300]
                stream.send_failure(task.task_id, reason)
                self.emit("task-failed", kind=task.kind, round=task.round, reason=reason)
        bye = stream.goodbye
        if bye is None:
            raise FLError("the aggregator closed the connection without Goodbye")
        # ok only if the session ended well AND every task of this client succeeded
        ok = bool(bye.ok) and failed == 0
        self.emit(
            "done", ok=ok, session_ok=bool(bye.ok), reason=bye.reason, tasks=done, failed=failed
        )
        return ClientResult(self.o.party, session, done, failed, ok, bye.reason)

    def _reattest(self, stream: AggregatorStream, task: IncomingTask) -> None:
        """Attest again to the KBS (fresh RCAR nonce, same claims) and prove the new
        certificate to the aggregator (issue 11); a refusal is reported as the task's failure
        (the aggregator then drops this client)."""
        t0 = time.monotonic()
        try:
            self._kbs.attest("client", self._claims)
            cert_pem, key = self._kbs.get_certificate()
            identity = self._kbs.check_certificate(x509.load_pem_x509_certificate(cert_pem))
            stream.agreement_digest = bytes.fromhex(identity.agreement_digest)
            stream.send_attested(task, cert_pem, key)
        except Error as exc:
            reason = f"re-attestation failed: {type(exc).__name__}: {exc}"[:300]
            stream.send_failure(task.task_id, reason)
            self.emit("reattest-failed", round=task.round, reason=reason)
            return
        self.emit(
            "reattested",
            round=task.round,
            agreement_digest=identity.agreement_digest,
            seconds=round(time.monotonic() - t0, 4),
        )

    def _run_task(self, stream: AggregatorStream, root: Path, task: IncomingTask) -> None:
        config: dict[str, Any] = {**task.config, "data": self.o.data}
        if self.o.threads > 0:
            config["threads"] = self.o.threads
        if task.kind == "init":
            arrays = self._fn(root, "init")(config)
            stream.send_result(
                task.task_id, num_examples=0, metrics={}, arrays=encode_arrays(arrays)
            )
            return
        if task.arrays is None:
            raise ParseError(f"{task.kind} task without arrays")
        model = decode_arrays(task.arrays)
        if task.kind == "train":
            new, n, metrics = self._fn(root, "train")(model, config)
            if self._local_dp is not None:
                new = local_dp_update(new, model, self._local_dp)
            stream.send_result(
                task.task_id, num_examples=int(n), metrics=dict(metrics), arrays=encode_arrays(new)
            )
        else:
            n, metrics = self._fn(root, "validate")(model, config)
            stream.send_result(task.task_id, num_examples=int(n), metrics=dict(metrics))
