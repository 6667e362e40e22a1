"""A replica of a partitioned application (``teeflow app replica``; lean entry point
``python -m teeflow.app.replica``).

Start-up (:func:`start_replica`): read the agreement from the KBS, take the application's
terms (``apps.<name>``), load the app package and check its digest
(:func:`teeflow.app.package.load_app`); attest as role ``app`` through the platform's
attester (:mod:`teeflow.platform.selection`) claiming the package digest and the
application-key path; fetch the application key (the KBS releases it only to an agreed
measurement) and a replica certificate (the attested P-256 key signs replies); restore the
last committed snapshot (sealed, checked against the replica's KBS counter,
:mod:`teeflow.app.machine`).

Serving (:func:`serve`): connect to NATS, create the application's JetStream stream if it is
missing (subjects ``tfapp.<app>.req`` and ``tfapp.<app>.announce.*``), publish the signed
announcement, then consume the stream in order with an ordered consumer from the position
after the snapshot, apply each message and publish signed replies on
``tfapp.<app>.reply.<client>``; commit a snapshot every ``snapshot_every`` applied requests
and on shutdown (SIGTERM/SIGINT). Progress is printed as JSON lines (``ready``,
``refused``, ``snapshot``, ``stopped``, ``error``).

The process imports no web framework, no ML stack and no other TEE's policy or verifier
(tests/unit/test_app_tcb.py checks it): NATS, httpx (KBS client), cryptography and pydantic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

if "httpx" not in sys.modules:  # keep httpx's command line (rich, click) out of the replica
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
if "nats" not in sys.modules:  # nats-py loads aiohttp (WebSocket transport) when installed;
    sys.modules.setdefault("aiohttp", None)  # type: ignore[arg-type]  # replicas use TCP
if "httpcore" not in sys.modules:  # httpcore loads trio (its trio backend) when installed;
    sys.modules.setdefault("trio", None)  # type: ignore[arg-type]  # the KBS client is sync

from teeflow.app.machine import (
    Applied,
    ReplicaMachine,
    SnapshotStore,
    counter_name,
)
from teeflow.app.package import load_app, package_digest
from teeflow.app.protocol import (
    AppKeys,
    announce_subject,
    reply_subject,
    request_subject,
    sign_announcement,
)
from teeflow.errors import Error, KbsError, WorkloadError
from teeflow.kbs.policy.apps import AppTerms, app_key_path
from teeflow.platform.selection import PlatformOptions

__all__ = [
    "ReplicaConfig",
    "StartedReplica",
    "emit",
    "ensure_stream",
    "main",
    "parser",
    "peak_rss_mb",
    "run",
    "serve",
    "start_replica",
]


_T = TypeVar("_T")


def peak_rss_mb() -> float | None:
    """This process's peak resident set size in MiB (Linux ``VmHWM`` of
    ``/proc/self/status``; not ``getrusage``, whose ``ru_maxrss`` survives ``execve`` and so
    reports the forking parent's size), or None where there is no procfs."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def emit(event: str, **fields: Any) -> None:
    """One JSON progress line on stdout."""
    sys.stdout.write(json.dumps({"event": event, **fields}, default=str) + "\n")
    sys.stdout.flush()


@dataclass(frozen=True)
class ReplicaConfig:
    """A replica's settings (the options of ``teeflow app replica``).

    Attributes:
        app: application name (a key of the agreement's ``apps``).
        replica: this replica's index (0..n-1).
        package: the app package folder.
        pin: the KBS pin file (``teeflow kbs verify``).
        enrollment: the enrollment token file (a ``compute-operator``'s, role ``app``).
        nats: NATS server URL (``nats://127.0.0.1:4222``).
        state_dir: where the sealed snapshot is kept.
        platform: the platform options (attester).
        snapshot_every: applied requests between snapshots (≥ 1).
        home: ``TEEFLOW_HOME`` of emulated platforms (None: the environment's).
    """

    app: str
    replica: int
    package: Path
    pin: Path
    enrollment: Path
    nats: str
    state_dir: Path
    platform: PlatformOptions
    snapshot_every: int = 100
    home: Path | None = None


@dataclass
class StartedReplica:
    """An attested replica, ready to serve."""

    config: ReplicaConfig
    terms: AppTerms
    machine: ReplicaMachine
    store: SnapshotStore
    announcement: bytes


def start_replica(config: ReplicaConfig) -> StartedReplica:
    """Attest, get the application key and certificate, restore the snapshot.

    Raises:
        WorkloadError: no such application, bad replica index or package.
        KbsError, PolicyDeny (a KbsError): the KBS refused (e.g. another measurement).
        PlatformError: no evidence. SnapshotError/RollbackError: bad snapshot.
    """
    from cryptography import x509

    from teeflow.kbs.api.problems import TokenNotFound, TokenVerifierError
    from teeflow.kbs.client.sdk import KbsClient
    from teeflow.kbs.policy.enrollment import read_enrollment

    token = config.enrollment.read_text(encoding="ascii").strip()
    party = read_enrollment(token).party
    digest = package_digest(config.package)  # what the platform measures with the replica
    attester = config.platform.attester(measurement=digest, home=config.home)
    kbs = KbsClient(None, config.pin, attester, enrollment=token)
    signed = kbs.current_agreement()
    if signed is None:
        raise KbsError("the KBS has no agreement yet")
    terms = (signed.agreement.apps or {}).get(config.app)
    if terms is None:
        raise WorkloadError(f"the agreement names no application {config.app!r} (apps)")
    if not 0 <= config.replica < terms.replicas:
        raise WorkloadError(f"replica index must be 0..{terms.replicas - 1}")
    logic = load_app(config.package, terms.package)
    path = app_key_path(config.app)
    claims = {"package_digest": terms.package, "resources": [path]}
    kbs.attest("app", claims)
    keys = AppKeys.from_secret(kbs.get_resource(path))
    cert_pem, signing_key = kbs.get_certificate()
    cert = x509.load_pem_x509_certificate(cert_pem)
    name = counter_name(party, config.app, config.replica)

    def fresh(call: Callable[[], _T]) -> _T:
        # the EAR token lives minutes: re-attest once when the KBS no longer takes it
        try:
            return call()
        except (TokenVerifierError, TokenNotFound):
            kbs.attest("app", claims)
            return call()

    store = SnapshotStore(
        config.state_dir / f"{config.app}.r{config.replica}.snapshot",
        app=config.app, replica=config.replica, keys=keys, package=logic.digest,
        get_counter=lambda: fresh(lambda: kbs.get_counter(name)),
        increment=lambda expected, d: fresh(lambda: kbs.increment_counter(name, expected, d)),
    )  # fmt: skip
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    restored = store.load()
    machine = ReplicaMachine(
        app=config.app, replica=config.replica, logic=logic, keys=keys,
        signing_key=signing_key, max_request_bytes=terms.max_request_bytes,
        state=None if restored is None else restored.state,
        clients=None if restored is None else restored.clients,
        position=0 if restored is None else restored.position,
    )  # fmt: skip
    ann = sign_announcement(
        app=config.app, replica=config.replica, certificate=cert, keys=keys, key=signing_key
    )
    return StartedReplica(config, terms, machine, store, ann.to_wire())


async def ensure_stream(js: Any, app: str, stream: str) -> None:
    """Create the application's JetStream stream ``stream`` (subjects ``tfapp.<app>.req``
    and ``tfapp.<app>.announce.*``) through the JetStream context ``js`` if it is missing
    (the host may also create it, e.g. replicated under Raft). Raises nats-py errors."""
    from nats.js.api import StreamConfig
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(stream)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(name=stream, subjects=[request_subject(app), announce_subject(app, "*")])
        )


async def serve(
    replica: StartedReplica, *, stop: asyncio.Event, snapshot_every: int | None = None
) -> int:
    """Serve the ordered stream until ``stop`` is set (module docstring); returns the number
    of applied requests. The final snapshot is committed before returning.

    Raises:
        WorkloadError: NATS unreachable. KbsError: a snapshot commit failed.
    """
    import nats
    from nats.errors import Error as NatsError
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.api import ConsumerConfig, DeliverPolicy

    cfg, machine = replica.config, replica.machine
    every = snapshot_every or cfg.snapshot_every
    stream = replica.terms.stream_name(cfg.app)
    try:
        nc = await nats.connect(cfg.nats, max_reconnect_attempts=3, connect_timeout=5)
    except (OSError, NatsError) as exc:
        raise WorkloadError(f"cannot reach NATS at {cfg.nats}: {type(exc).__name__}") from None
    try:
        js = nc.jetstream()
        await ensure_stream(js, cfg.app, stream)
        await js.publish(announce_subject(cfg.app, cfg.replica), replica.announcement)
        consumer = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=machine.position + 1
        )
        sub = await js.subscribe(
            request_subject(cfg.app), stream=stream, ordered_consumer=True, config=consumer
        )
        emit("ready", app=cfg.app, replica=cfg.replica, position=machine.position,
             peak_rss_mb=peak_rss_mb())
        since = 0
        while not stop.is_set():
            try:
                msg = await sub.next_msg(timeout=0.2)
            except NatsTimeout:
                continue
            outcome = machine.process(msg.metadata.sequence.stream, msg.data)
            if isinstance(outcome, Applied):
                r = outcome.reply
                await nc.publish(reply_subject(cfg.app, r.client), r.to_wire())
                since += 1
                if since >= every:
                    number = await asyncio.to_thread(replica.store.commit, machine)
                    emit("snapshot", number=number, position=machine.position)
                    since = 0
            else:
                emit("refused", position=outcome.position, client=outcome.client,
                     reason=outcome.reason)  # fmt: skip
        if since:
            number = await asyncio.to_thread(replica.store.commit, machine)
            emit("snapshot", number=number, position=machine.position)
        return machine.applied
    finally:
        await nc.close()


def parser() -> argparse.ArgumentParser:
    """The options of ``python -m teeflow.app.replica`` (same as ``teeflow app replica``)."""
    from teeflow.platform.selection import PLATFORM_NAMES

    p = argparse.ArgumentParser(
        prog="teeflow app replica", description="Run one replica of a partitioned application."
    )
    p.add_argument("--app", required=True, help="application name (agreement apps.<name>)")
    p.add_argument("--replica", type=int, required=True, help="replica index 0..n-1")
    p.add_argument("--package", type=Path, required=True, help="app package folder")
    p.add_argument("--pin", type=Path, required=True, help="KBS pin file")
    p.add_argument("--enrollment", type=Path, required=True, help="enrollment token file")
    p.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server URL")
    p.add_argument("--state-dir", type=Path, required=True, help="snapshot folder")
    p.add_argument("--snapshot-every", type=int, default=100, help="requests per snapshot")
    p.add_argument("--platform", choices=PLATFORM_NAMES, default="auto", help="TEE platform")
    p.add_argument("--tsm-root", type=Path, default=None, help="configfs-tsm directory")
    p.add_argument("--gramine-root", type=Path, default=None, help="Gramine /dev/attestation")
    return p


def run(config: ReplicaConfig) -> int:
    """Start and serve until SIGTERM/SIGINT; exit status 0, or 1 after an ``error`` event."""
    try:
        started = start_replica(config)
    except Error as exc:
        emit("error", type=type(exc).__name__, message=str(exc))
        return 1

    async def _main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await serve(started, stop=stop)

    try:
        applied = asyncio.run(_main())
    except Error as exc:
        emit("error", type=type(exc).__name__, message=str(exc))
        return 1
    emit("stopped", applied=applied, peak_rss_mb=peak_rss_mb())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m teeflow.app.replica``."""
    a = parser().parse_args(argv)
    if a.snapshot_every < 1:
        parser().error("--snapshot-every must be >= 1")
    config = ReplicaConfig(
        app=a.app, replica=a.replica, package=a.package, pin=a.pin, enrollment=a.enrollment,
        nats=a.nats, state_dir=a.state_dir, snapshot_every=a.snapshot_every,
        platform=PlatformOptions(a.platform, tsm_root=a.tsm_root, gramine_root=a.gramine_root),
    )  # fmt: skip
    return run(config)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
