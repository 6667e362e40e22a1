"""Run the KBS: store + sealed keys + service + FastAPI app on uvicorn with TLS.

``teeflow kbs serve`` calls :func:`serve`; tests and benchmarks use :func:`build_kbs`,
:func:`make_server` and :class:`BackgroundServer`.

Start-up (:func:`build_kbs`):

1. the KBS's attester from ``--platform`` (:func:`teeflow.platform.attester_for`: ``auto``
   resolves to the TEE found and fails without one, before anything is written; emulated
   platforms only by name; an emulated attester reports the KBS measurement,
   :func:`teeflow.kbs.service.self_attestation.kbs_measurement`), the emulation authority of
   ``$TEEFLOW_HOME`` (:meth:`EmulationAuthority.load_or_create`: the verifier's emulated
   anchors) and the platform's sealer (:func:`teeflow.platform.sealing.sealer_for`);
2. the KBS keys, sealed to (platform, measurement) in ``state_dir``
   (:func:`teeflow.kbs.service.identity.load_or_create_kbs_keys`). The federation name is recorded
   in
   ``state_dir/federation`` at the first start, so later starts need no ``--federation``;
3. the store (:func:`teeflow.kbs.store.open_store`: SQLite or PostgreSQL, migrated);
4. :class:`KbsService` with the Intel SGX Root CA, the emulation root (SGX and TDX) and the
   emulated AMD ARK (``$TEEFLOW_HOME/emulation/snp``, created at the first start) as trust
   anchors (the agreement's ``allow_emulated`` still decides; AMD's pinned ARKs are always
   trusted for SNP), emulated SGX/TDX collateral plus any collateral directories, the wall
   clock;
5. :func:`teeflow.kbs.api.create_app` with the KBS's own evidence source.

TLS (:func:`tls_context`): TLS 1.3 only, the KBS's TLS certificate and key (the key reaches
OpenSSL encrypted under a one-time password through an anonymous memory file, never as a
plain file). Shutdown on SIGINT/SIGTERM is graceful (in-flight requests finish, up to 10 s);
expired sessions are purged periodically (``purge_interval``); after a signal :func:`serve`
closes the store and returns normally (exit status 0).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI

from teeflow.attestation.trust import intel_sgx_root_ca
from teeflow.attestation.trust.nvidia import nvidia_device_identity_ca
from teeflow.errors import KbsError
from teeflow.kbs.api.app import (
    create_app,
)
from teeflow.kbs.api.recovery import install_recovery_routes
from teeflow.kbs.api.recovery_runtime import (
    RecoveredKeys,
    RecoveryRequired,
    RecoveryRuntime,
    audit_share_set,
    complete_recovery,
    ensure_share_set,
    resume_after_recovery,
)
from teeflow.kbs.ca.tls import scratch_file
from teeflow.kbs.client.sdk import primary_evidence
from teeflow.kbs.policy.agreement import WorkloadRole, digest
from teeflow.kbs.policy.parties import NAME_PATTERN, teeflow_home
from teeflow.kbs.service.audit import AuditLog
from teeflow.kbs.service.collateral import (
    CollateralProvider,
    CompositeCollateralProvider,
    DirectoryCollateralProvider,
    EmulatedCollateralProvider,
    TrustedEmulationCollateralProvider,
)
from teeflow.kbs.service.core import KbsService
from teeflow.kbs.service.heads import KbsHeadFile, check_store_head
from teeflow.kbs.service.identity import KbsKeys
from teeflow.kbs.service.recovery_mode import (
    NeedsRecovery,
    RecoveryCoordinator,
    RecoveryManager,
    load_kbs_state,
)
from teeflow.kbs.service.self_attestation import (
    KbsEvidenceSource,
    kbs_measurement,
    own_identity,
)
from teeflow.kbs.store import (
    open_store,
)
from teeflow.kbs.store.interface import (
    KbsStore,
)
from teeflow.platform.base import DEFAULT_GRAMINE_ROOT, DEFAULT_TSM_ROOT, detect_platform
from teeflow.platform.emulated import EmulationAuthority
from teeflow.platform.emulated_nvidia import emulated_nvidia_anchor
from teeflow.platform.emulated_snp import emulated_snp_anchor
from teeflow.platform.emulated_trust import trusted_roots
from teeflow.platform.sealing import PlatformSealer, sealer_for
from teeflow.platform.selection import PlatformOptions
from teeflow.platform.sev_guest import DEFAULT_SEV_GUEST_DEVICE

__all__ = [
    "FEDERATION_FILE",
    "KEEP_ALIVE_SECONDS",
    "SEALING_MODES",
    "BackgroundServer",
    "KbsRuntime",
    "build_kbs",
    "complete_recovery",
    "default_state_dir",
    "make_server",
    "parse_listen",
    "serve",
    "tls_context",
    "tls_context_for",
]

#: Seconds an idle keep-alive connection is kept open (workloads reuse their connection).
KEEP_ALIVE_SECONDS = 30
#: File in the state directory recording the federation name (public).
FEDERATION_FILE = "federation"
#: ``kbs serve --sealing``: ``platform`` — the platform's sealing key
#: (:func:`teeflow.platform.sealing.sealer_for`; none on TDX); ``recovery-only`` — no sealing
#: key: the key set is kept only as the parties' recovery copy and every restart recovers.
SEALING_MODES = ("platform", "recovery-only")
_LOG = logging.getLogger("teeflow.kbs.api.server")


def default_state_dir(home: Path | None = None) -> Path:
    """``$TEEFLOW_HOME/kbs`` (``~/.teeflow/kbs``)."""
    return teeflow_home(home) / "kbs"


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``) → ``(host, port)``; port 0 = ephemeral.

    Raises:
        KbsError: malformed address or port outside 0..65535.
    """
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise KbsError(f"--listen expects HOST:PORT, got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        if host != "localhost":
            raise KbsError(f"--listen host must be an IP address or localhost: {host!r}") from None
    return host, int(port_text)


@dataclass
class KbsRuntime:
    """Everything a running KBS holds (:func:`build_kbs`). ``close()`` closes the store."""

    service: KbsService
    keys: KbsKeys
    store: KbsStore
    app: FastAPI
    measurement: bytes
    authority: EmulationAuthority
    federation: str
    state_dir: Path
    #: the RCAR tee of the KBS's own evidence and the attester kind that produces it
    tee: str = "emulated-sgx"
    attester: str = "emulated"

    def close(self) -> None:
        """Save the newest state head (``kbs-head``) and close the store."""
        try:
            self.service.heads.close()
        finally:
            self.store.close()

    def tls_context(self) -> ssl.SSLContext:
        """Server TLS context of this KBS (:func:`tls_context`).

        Raises:
            KbsError: OpenSSL refuses the credential.
        """
        return tls_context(self.keys)


def _federation(state_dir: Path, federation: str | None) -> str:
    path = state_dir / FEDERATION_FILE
    recorded = None
    if path.is_file():
        recorded = path.read_text(encoding="utf-8").strip()[:64]
    if federation is None:
        if recorded is None:
            raise KbsError(f"first start in {state_dir}: give --federation NAME")
        federation = recorded
    if not NAME_PATTERN.fullmatch(federation):
        raise KbsError("federation must be a DNS-label name")
    if recorded is not None and recorded != federation:
        raise KbsError(f"{state_dir} belongs to federation {recorded!r}, not {federation!r}")
    return federation


def checked_default_role(role: str | None) -> str | None:
    """``role`` if it is a workload role name (or None).

    Raises:
        KbsError: not one of the workload roles.
    """
    if role is None or role in {r.value for r in WorkloadRole}:
        return role
    names = ", ".join(r.value for r in WorkloadRole)
    raise KbsError(f"--default-role must be a workload role of the agreement ({names})")


def build_kbs(
    db_url: str,
    *,
    state_dir: Path | None = None,
    federation: str | None = None,
    platform: PlatformOptions | str = "auto",
    home: Path | None = None,
    measurement: bytes | None = None,
    tls_hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    collateral_dirs: Sequence[Path] = (),
    clock: Callable[[], datetime] | None = None,
    purge_interval: float | None = 60.0,
    nonce_ttl: timedelta = timedelta(seconds=60),
    token_ttl: timedelta = timedelta(minutes=5),
    sealer: PlatformSealer | Literal["platform"] | None = "platform",
    gramine_root: Path = DEFAULT_GRAMINE_ROOT,
    sev_guest_dev: Path = DEFAULT_SEV_GUEST_DEVICE,
    recovered: RecoveredKeys | None = None,
    expect_agreement: bytes | None = None,
    insecure_first_agreement: bool = False,
    default_role: str | None = None,
) -> KbsRuntime:
    """Assemble a KBS (module docstring) without serving it.

    Args:
        db_url: store URL (``sqlite:///...``, ``postgresql+psycopg://...``, ``memory://``).
        state_dir: sealed key directory (default :func:`default_state_dir`).
        federation: federation name (required at the first start in ``state_dir``).
        platform: the KBS's platform (:class:`PlatformOptions` or a ``--platform`` name;
            default ``auto``: the hardware found, else ``PlatformError``). Its
            ``gramine_root`` (when set) overrides the ``gramine_root`` argument.
        home: teeflow home of the emulation authority (default ``$TEEFLOW_HOME``).
        measurement: override of the KBS measurement (tests); default
            :func:`kbs_measurement`.
        tls_hosts: names/IPs in the TLS certificate.
        collateral_dirs: Intel collateral directories for hardware quotes of workloads.
        clock: time source (default: the wall clock, UTC).
        purge_interval, nonce_ttl, token_ttl: as in :func:`create_app` / :class:`KbsService`.
        sealer: the platform sealing-key provider; ``"platform"`` (default) picks it with
            :func:`teeflow.platform.sealing.sealer_for` (``gramine_root``, ``sev_guest_dev``);
            None = no sealing key (as TDX): the key set comes only from recovery.
        recovered: the key set a completed recovery produced (:func:`complete_recovery`).
        default_role: role appraised for plain Trustee attesters (no ``teeflow`` member in
            the runtime data); it must be a workload role (``kbs``, ``aggregator``,
            ``client``, ``compute``, ``serve``) and needs reference values in the agreement.

        expect_agreement: digest (32 bytes) the first agreement must have; the KBS evidence
            binds it until then (bootstrap, issue 10 (N)).
        insecure_first_agreement: accept any first agreement (whoever submits first founds
            the federation); development only.

    Raises:
        RecoveryRequired: the key set must be recovered from the parties' shares; its
            ``runtime`` is the recovery-mode KBS to serve.
        PlatformError: unknown platform name, no TEE for ``auto``, interface unusable.
        KbsError: ``sev-snp`` with the platform sealer but no sev-guest device (start with
            ``sealer=None``, ``--sealing recovery-only``), federation mismatch, unreadable
            state, (after a recovery) an agreement in force that does not name this KBS
            measurement, or a store without an agreement and neither ``expect_agreement``
            nor ``insecure_first_agreement``.
        SealingError: the sealed keys belong to another measurement or platform and there
            is no recovery record.
        StorageError: the database cannot be opened.
        StorageTampered, StorageRollback: the database fails its integrity check, or its
            state head is older than the one this KBS saved in ``state_dir/kbs-head`` ("the
            KBS state was rolled back").
    """
    options = platform if isinstance(platform, PlatformOptions) else PlatformOptions(platform)
    groot = options.gramine_root if options.gramine_root is not None else gramine_root
    if options.platform == "auto":  # resolved before anything touches the disk
        name = detect_platform(gramine_root=groot, tsm_root=options.tsm_root or DEFAULT_TSM_ROOT)
        options = PlatformOptions(name, tsm_root=options.tsm_root, gramine_root=groot)
    hardware = None if options.emulated else options.attester()
    if sealer == "platform" and options.platform == "sev-snp":
        _probe_sev_guest(sev_guest_dev)
    default_role = checked_default_role(default_role)  # before anything is created
    now_fn = clock if clock is not None else (lambda: datetime.now(UTC))
    directory = Path(state_dir) if state_dir is not None else default_state_dir(home)
    fed = _federation(directory, federation)
    now = now_fn()
    authority = EmulationAuthority.load_or_create(home, now=now)
    snp_anchor = emulated_snp_anchor(home, now=now)
    mr = measurement if measurement is not None else kbs_measurement()
    platform_sealer = (
        sealer_for(
            options.platform, authority=authority, gramine_root=groot, sev_guest_dev=sev_guest_dev
        )
        if sealer == "platform"
        else sealer
    )
    attester = hardware or options.attester(mr, authority=authority, home=home)
    if recovered is not None:
        keys = recovered.keys
    else:
        state = load_kbs_state(
            directory,
            sealer=platform_sealer,
            measurement=mr,
            federation=fed,
            now=now,
            tls_hosts=tls_hosts,
        )
        if isinstance(state, NeedsRecovery):
            raise RecoveryRequired(
                RecoveryRuntime(
                    RecoveryCoordinator(
                        state,
                        federation=fed,
                        primary_evidence=lambda rd: primary_evidence(attester.evidence(rd)),
                        tee=attester.tee,
                        now=now,
                        tls_hosts=tls_hosts,
                    ),
                    state_dir=directory,
                    sealer=platform_sealer,
                    measurement=mr,
                    federation=fed,
                    tls_hosts=tuple(tls_hosts),
                    now=now_fn,
                    tee=attester.tee,
                    identity=own_identity(attester),
                )
            )
        keys = state.keys
    fed_path = directory / FEDERATION_FILE
    if not fed_path.is_file():
        fed_path.write_text(fed + "\n", encoding="utf-8")
    providers: list[CollateralProvider] = []
    if collateral_dirs:
        providers.append(DirectoryCollateralProvider(collateral_dirs))
    # other sites' emulation roots trusted by certificate (`teeflow emulate trust`): their
    # emulated workloads sign with their own authority; answered only for their own chains
    trusted_emulation = trusted_roots(home)
    providers += [TrustedEmulationCollateralProvider(r) for r in trusted_emulation]
    providers.append(EmulatedCollateralProvider(authority))
    if expect_agreement is not None and len(expect_agreement) != 32:
        raise KbsError("--expect-agreement must be a SHA-256 agreement digest (64 hex)")
    store = open_store(db_url, keys.storage_key)
    try:
        if expect_agreement is None and not insecure_first_agreement \
                and not store.agreement_history():
            raise KbsError(
                "no agreement yet: anyone could submit the first one and own the federation. "
                "Start with --expect-agreement DIGEST|FILE (the agreement the parties signed; "
                "teeflow agreement show FILE prints its digest), or "
                "--insecure-first-agreement for development")
        head_file = None
        if db_url != "memory://":  # a volatile store starts empty by design
            head_file = KbsHeadFile(directory, keys.storage_key)
            check_store_head(store.last_audit(), head_file.load())
        audit = AuditLog(store, keys.audit, now_fn)
        manager = RecoveryManager(
            directory,
            keys,
            mr,
            on_created=lambda rec: audit_share_set(audit, rec),
        )
        service = KbsService(
            store,
            keys,
            clock=now_fn,
            anchors=[
                intel_sgx_root_ca(),
                authority.trust_anchor(),
                snp_anchor,
                *(r.anchor for r in trusted_emulation),
            ],
            collateral=CompositeCollateralProvider(providers),
            nonce_ttl=nonce_ttl,
            token_ttl=token_ttl,
            head_file=head_file,
            on_agreement=lambda signed, d: ensure_share_set(manager, signed, d),
            first_agreement=expect_agreement,
            default_role=checked_default_role(default_role),
            gpu_anchors=[
                nvidia_device_identity_ca(),
                emulated_nvidia_anchor(home, now=now),
            ],
        )
        current = service.current_agreement()
        if recovered is not None:
            resume_after_recovery(
                store,
                keys=keys,
                recovered=recovered,
                current=current,
                measurement=mr,
                tee=attester.tee,
                clock=now_fn,
                identity=own_identity(attester),
            )
        if current is not None:
            manager.ensure(current.agreement, digest(current.agreement))
        evidence = KbsEvidenceSource(keys, attester)
        app = create_app(service, keys, evidence=evidence, purge_interval=purge_interval)
        install_recovery_routes(app, manager)
    except BaseException:
        store.close()
        raise
    return KbsRuntime(
        service, keys, store, app, mr, authority, fed, directory, attester.tee, attester.kind
    )


def _probe_sev_guest(device: Path) -> None:
    """Fail at start-up, before anything is written, when the SNP sealing key is out of
    reach (``/dev/sev-guest`` is missing: e.g. under the configfs-tsm stand-in, which answers
    attestation reports only)."""
    if not Path(device).is_char_device():
        raise KbsError(
            f"sev-snp: no SEV-SNP sealing key: {device} is not the sev-guest device (is this an "
            "SEV-SNP guest with the sev-guest driver?). To run without a sealing key, start "
            "with --sealing recovery-only: the key set is then restored from the parties' "
            "recovery shares at every restart"
        )


def tls_context(keys: KbsKeys) -> ssl.SSLContext:
    """Server TLS context: TLS 1.3, ALPN ``http/1.1``, the KBS TLS certificate and key.

    Raises:
        KbsError: OpenSSL refuses the credential.
    """
    return tls_context_for(keys.tls_certificate, keys.tls_key)


def tls_context_for(
    certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> ssl.SSLContext:
    """:func:`tls_context` for any certificate and key (the recovery mode's ephemeral one).

    Raises:
        KbsError: OpenSSL refuses the credential.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["http/1.1"])
    password = os.urandom(32).hex().encode("ascii")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    try:
        cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
        with scratch_file(cert_pem + key_pem) as path:
            ctx.load_cert_chain(path, password=password)
    except (ssl.SSLError, OSError) as exc:
        raise KbsError(f"cannot load the KBS TLS credential: {exc.__class__.__name__}") from None
    return ctx


def _installed(module: str, fallback: str) -> str:
    """``module`` when it can be imported, else ``fallback``."""
    return module if importlib.util.find_spec(module) is not None else fallback


def make_server(
    runtime: KbsRuntime | RecoveryRuntime,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log_level: str = "warning",
    graceful_timeout: int = 10,
    http: str | None = None,
    loop: str | None = None,
) -> uvicorn.Server:
    """A uvicorn server for ``runtime.app`` with TLS (not started).

    ``proxy_headers`` are off (no forwarded-address trust), no ``Server`` header, access
    log off unless ``log_level`` is ``debug``; graceful shutdown waits up to
    ``graceful_timeout`` seconds for in-flight requests; idle keep-alive connections are
    kept :data:`KEEP_ALIVE_SECONDS`.

    Args:
        http: ``"httptools"`` (C parser, llhttp: headers bounded at 80 KiB) or ``"h11"``
            (pure Python, incomplete events bounded at 64 KiB); default: the environment
            variable ``TEEFLOW_KBS_HTTP``, else ``httptools`` when installed.
        loop: ``"uvloop"`` or ``"asyncio"``; default: ``TEEFLOW_KBS_LOOP``, else
            ``uvloop`` when installed. uvloop and httptools are optional dependencies
            (extra ``kbs-fast``): about 10 % less server CPU per RCAR flow in
            ``bench/kbs_load.py`` (little difference for cached-token fetches).
    """
    context = runtime.tls_context()
    http = http or os.environ.get("TEEFLOW_KBS_HTTP") or _installed("httptools", "h11")
    loop = loop or os.environ.get("TEEFLOW_KBS_LOOP") or _installed("uvloop", "asyncio")
    if http not in ("httptools", "h11") or loop not in ("uvloop", "asyncio"):
        raise KbsError("http must be httptools or h11, loop uvloop or asyncio")
    config = uvicorn.Config(
        runtime.app,
        host=host,
        port=port,
        http=http,
        loop=loop,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        log_level=log_level,
        access_log=log_level == "debug",
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=graceful_timeout,
        lifespan="on",
        h11_max_incomplete_event_size=64 * 1024,
    )
    config.load()
    config.ssl = context  # set after load(): no key file path is ever handed to uvicorn
    return uvicorn.Server(config)


class BackgroundServer:
    """Serve a uvicorn server on a pre-bound loopback socket in a daemon thread.

    Use as a context manager; :attr:`url` is ``https://127.0.0.1:<port>``.
    """

    def __init__(self, server: uvicorn.Server, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = server
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets whose proto says TCP;
        # with proto 0 every response waits ~40 ms for a delayed ACK (Nagle)
        self._sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        """The base URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def start(self, timeout: float = 20.0) -> BackgroundServer:
        """Start serving; wait (at most ``timeout`` s) until it accepts connections.

        Raises:
            KbsError: it did not start in time (or exited).
        """
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise KbsError("the KBS server did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Ask for a graceful shutdown and wait for the thread (at most ``timeout`` s)."""
        self.server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    db_url: str,
    *,
    listen: str = "127.0.0.1:8443",
    platform: PlatformOptions | str = "auto",
    state_dir: Path | None = None,
    federation: str | None = None,
    collateral_dirs: Sequence[Path] = (),
    log_level: str = "info",
    on_ready: Callable[[KbsRuntime, str], None] | None = None,
    on_recovery: Callable[[RecoveryRuntime, str], None] | None = None,
    gramine_root: Path = DEFAULT_GRAMINE_ROOT,
    sev_guest_dev: Path = DEFAULT_SEV_GUEST_DEVICE,
    expect_agreement: bytes | None = None,
    insecure_first_agreement: bool = False,
    sealing: str = "platform",
    default_role: str | None = None,
) -> None:
    """Run the KBS until SIGINT/SIGTERM (blocking; ``teeflow kbs serve``).

    Args:
        db_url, platform, state_dir, federation, collateral_dirs, expect_agreement,
        insecure_first_agreement, default_role: see :func:`build_kbs`.
        listen: ``HOST:PORT`` (:func:`parse_listen`), default ``127.0.0.1:8443``.
        log_level: uvicorn log level.
        on_ready: called with the runtime and the base URL before serving starts.
        on_recovery: called with the recovery runtime and the base URL when the KBS starts
            in recovery mode (it serves only its evidence and ``/v1/recovery`` until the
            parties' shares recombine the secret, then continues as a normal KBS).
        gramine_root, sev_guest_dev: sealing-key sources (:func:`build_kbs`).
        sealing: one of :data:`SEALING_MODES` (``recovery-only``: no sealing key, as on TDX).

    Raises:
        PlatformError, KbsError, SealingError, StorageError: as :func:`build_kbs`; KbsError
            for an unknown ``sealing``.
    """
    if sealing not in SEALING_MODES:
        raise KbsError(f"--sealing must be one of {', '.join(SEALING_MODES)}")
    host, port = parse_listen(listen)
    hosts = ["localhost", "127.0.0.1"] if host in ("127.0.0.1", "localhost") else [host]
    options: dict[str, Any] = {
        "state_dir": state_dir,
        "federation": federation,
        "platform": platform,
        "tls_hosts": hosts,
        "collateral_dirs": collateral_dirs,
        "gramine_root": gramine_root,
        "sev_guest_dev": sev_guest_dev,
        "expect_agreement": expect_agreement,
        "insecure_first_agreement": insecure_first_agreement,
        "default_role": default_role,
    }
    try:
        runtime = build_kbs(db_url, sealer="platform" if sealing == "platform" else None, **options)
    except RecoveryRequired as need:
        rt = need.runtime
        _LOG.warning("%s: serving in RECOVERY MODE", need)
        if on_recovery is not None:
            shown = f"[{host}]" if ":" in host else host
            on_recovery(rt, f"https://{shown}:{port}")
        _run(make_server(rt, host, port, log_level=log_level), rt.coordinator.done)
        if not rt.coordinator.done.is_set():
            return  # interrupted before recovery
        options.pop("sealer", None)
        runtime = complete_recovery(rt, db_url, **options)
    try:
        server = make_server(runtime, host, port, log_level=log_level)
        if on_ready is not None:
            shown = f"[{host}]" if ":" in host else host
            on_ready(runtime, f"https://{shown}:{port}")
        _run(server, None)
    finally:
        runtime.close()


def _run(server: uvicorn.Server, done: threading.Event | None) -> None:
    """Run ``server`` in this thread until a signal (or ``done`` is set)."""
    previous: dict[signal.Signals, Any] = {}
    watcher = None
    if done is not None:

        def watch() -> None:
            done.wait()
            server.should_exit = True

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
    try:
        if threading.current_thread() is threading.main_thread():
            # uvicorn shuts down gracefully, restores these handlers and re-raises the
            # signal: turn it into a normal exit so the store is closed by the caller
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, _exit_cleanly)
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)
