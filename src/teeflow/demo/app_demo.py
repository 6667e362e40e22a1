"""A local partitioned-application deployment on an emulated platform (the sealed-auction
example, its tests and ``bench/partitioned_app.py``).

:func:`deployment` yields an :class:`AppDeployment`: a NATS server with JetStream
(``nats-server -js``, a child process on a free loopback port, its store in the work
folder), two parties (``operator``: compute- and KBS-operator, who runs the replica
machines; ``seller``: data owner and result recipient), an agreement signed by both that
lists the app package, ``workloads.app`` = the emulated identity of the package digest and
``apps.<name>`` (n replicas), a KBS (SQLite, emulated SGX) served on 127.0.0.1 in this
process with that agreement, a pin file, and the operator's enrollment of role ``app``.
:meth:`AppDeployment.start_replica` starts ``python -m teeflow.app.replica`` (a
:class:`~teeflow.fl.session.WorkloadProcess`; ``package=`` another folder runs modified
logic) and waits for its ``ready`` (or ``error``) event; :meth:`AppDeployment.client` makes a
:class:`teeflow.app.Client`. Every child is stopped on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from teeflow.app.client import Client
from teeflow.app.package import package_digest
from teeflow.errors import WorkloadError
from teeflow.fl.session import WorkloadProcess, free_port
from teeflow.kbs.client.pinning import Pin
from teeflow.kbs.policy.agreement import FederationAgreement

__all__ = [
    "REPLICA_COMMAND",
    "AppDeployment",
    "NatsServer",
    "deployment",
    "nats_server",
]

#: argv prefix of a replica (lean entry point).
REPLICA_COMMAND: tuple[str, ...] = (sys.executable, "-m", "teeflow.app.replica")
_FEDERATION = "auction-house"


@dataclass
class NatsServer:
    """A ``nats-server -js`` child process."""

    process: subprocess.Popen[bytes]
    url: str
    port: int

    def stop(self) -> None:
        """Terminate it (bounded wait, then kill)."""
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@contextlib.contextmanager
def nats_server(store: Path, *, timeout: float = 20.0) -> Iterator[NatsServer]:
    """Start ``nats-server -js -a 127.0.0.1 -p <free port> -sd <store>`` and yield it.

    Raises:
        WorkloadError: no ``nats-server`` on PATH (install it: apt-get install
            nats-server), or it did not accept connections within ``timeout`` seconds.
    """
    binary = shutil.which("nats-server")
    if binary is None:
        raise WorkloadError("nats-server is not installed (apt-get install nats-server)")
    port = free_port()
    store.mkdir(parents=True, exist_ok=True)
    log = (store / "nats.log").open("ab")
    proc = subprocess.Popen(  # noqa: S603 - a fixed binary and arguments
        [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)],
        stdout=log, stderr=log,
    )  # fmt: skip
    server = NatsServer(proc, f"nats://127.0.0.1:{port}", port)
    try:
        end = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > end:
                raise WorkloadError(f"nats-server did not start (log {store / 'nats.log'})")
            time.sleep(0.05)
        yield server
    finally:
        server.stop()
        log.close()


@dataclass
class AppDeployment:
    """A running deployment (module docstring)."""

    app: str
    home: Path
    workdir: Path
    package: Path
    nats: NatsServer
    pin_path: Path
    pin: Pin
    agreement: FederationAgreement
    enrollment: Path
    platform: str
    replicas: dict[int, WorkloadProcess] = field(default_factory=dict)

    def start_replica(
        self,
        index: int,
        *,
        package: Path | None = None,
        wait: bool = True,
        timeout: float = 60.0,
        snapshot_every: int = 100,
    ) -> WorkloadProcess:
        """Start replica ``index`` and (``wait``) return once it is ``ready``.

        Raises:
            FLError: it ended or did not get ready in time (its error event is in
                ``.error``).
        """
        env = {"TEEFLOW_HOME": str(self.home), "PYTHONUNBUFFERED": "1", "MALLOC_ARENA_MAX": "2"}
        argv = [
            *REPLICA_COMMAND, "--app", self.app, "--replica", str(index),
            "--package", str((package or self.package).resolve()), "--pin", str(self.pin_path),
            "--enrollment", str(self.enrollment), "--nats", self.nats.url,
            "--state-dir", str(self.workdir / "replicas"), "--platform", self.platform,
            "--snapshot-every", str(snapshot_every),
        ]  # fmt: skip
        proc = WorkloadProcess(
            f"replica-{index}", argv, env={**os.environ, **env}, logs=self.workdir / "logs",
            cwd=self.workdir,
        )  # fmt: skip
        self.replicas[index] = proc
        if wait:
            proc.wait_event("ready", timeout)
        return proc

    def client(self, **kw: Any) -> Client:
        """A :class:`teeflow.app.Client` of this deployment (call ``await .connect()``)."""
        return Client(self.app, agreement=self.agreement, ca=self.pin.ca(), nats=self.nats.url,
                      **kw)  # fmt: skip

    def stop(self) -> None:
        """Stop every replica."""
        for proc in self.replicas.values():
            with contextlib.suppress(Exception):
                proc.stop(10)


def _agreement(keys: dict[str, Any], *, app: str, digest: bytes, replicas: int,
               kbs_mr: bytes, platform: str) -> FederationAgreement:  # fmt: skip
    from teeflow.platform.selection import emulated_workload_spec

    roles = {"operator": ["compute-operator", "kbs-operator"],
             "seller": ["data-owner", "result-recipient"]}  # fmt: skip
    return FederationAgreement.from_mapping(
        {
            "federation": _FEDERATION,
            "version": 1,
            "parties": {
                name: {"sign_key": k.public().sign_key,
                       "recipient_key": k.public().recipient_key, "roles": roles[name]}
                for name, k in keys.items()
            },
            "workloads": {
                "kbs": {"sgx": {"mrenclave": [kbs_mr.hex()]}},
                "app": emulated_workload_spec(platform, digest),
            },
            "packages": {app: {"digest": digest.hex(), "functions": ["handle", "init"]}},
            "outputs": {"result": ["seller"]},
            "allow_emulated": True,
            "update_quorum": {"k": 2},
            "apps": {app: {"package": digest.hex(), "replicas": replicas}},
        }
    )


@contextlib.contextmanager
def deployment(
    workdir: Path,
    package: Path,
    *,
    app: str = "auction",
    replicas: int = 4,
    platform: str = "emulated-sgx",
) -> Iterator[AppDeployment]:
    """Build and run a deployment (module docstring); replicas are started by the caller.

    Raises:
        WorkloadError: nats-server missing or not starting; a bad package.
        KbsError, PlatformError: the KBS did not start or refused the agreement.
    """
    from teeflow._fs import atomic_write, ensure_private_dir
    from teeflow.kbs.api.server import BackgroundServer, build_kbs, make_server
    from teeflow.kbs.client.sdk import KbsClient
    from teeflow.kbs.client.verification import verify_kbs
    from teeflow.kbs.policy.agreement import SgxReferenceValues
    from teeflow.kbs.policy.enrollment import issue_enrollment
    from teeflow.kbs.policy.parties import PartyKeys
    from teeflow.kbs.policy.signing import SignedAgreement
    from teeflow.kbs.service.self_attestation import kbs_measurement

    workdir = Path(workdir).resolve()
    home = ensure_private_dir(workdir / "home")
    keys = {name: PartyKeys.generate(name) for name in ("operator", "seller")}
    for name, k in keys.items():
        k.save(home / "parties" / name)
    digest = package_digest(package)
    kbs_mr = kbs_measurement()
    agreement = _agreement(keys, app=app, digest=digest, replicas=replicas, kbs_mr=kbs_mr,
                           platform=platform)  # fmt: skip
    signed = SignedAgreement(agreement=agreement)
    for k in keys.values():
        signed = signed.signed_by(k)
    runtime = build_kbs(
        f"sqlite:///{workdir / 'kbs.db'}", state_dir=workdir / "kbs-state",
        federation=_FEDERATION, platform="emulated-sgx", home=home, measurement=kbs_mr,
        purge_interval=None, expect_agreement=agreement.digest(),
    )  # fmt: skip
    dep: AppDeployment | None = None
    try:
        with (
            nats_server(workdir / "nats") as nats,
            BackgroundServer(make_server(runtime, graceful_timeout=2)) as server,
        ):
            pin = verify_kbs(server.url, SgxReferenceValues(mrenclave=(kbs_mr.hex(),)),
                             allow_emulated=True, home=home)  # fmt: skip
            pin_path = workdir / "pin.json"
            pin.save(pin_path)
            with KbsClient(None, pin) as owner:
                owner.submit_agreement(signed)
            token = issue_enrollment(
                keys["operator"], federation=_FEDERATION, role="app", now=datetime.now(UTC),
                expires=timedelta(hours=12),
            )
            enrollment = workdir / "operator-app.jwt"
            atomic_write(enrollment, token.encode("ascii") + b"\n")
            dep = AppDeployment(app, home, workdir, package, nats, pin_path, pin, agreement,
                                enrollment, platform)  # fmt: skip
            yield dep
    finally:
        if dep is not None:
            dep.stop()
        runtime.close()
