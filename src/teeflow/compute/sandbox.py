"""A whole federation on one machine, for examples, benchmarks and tests (emulated TEE).

:func:`local_federation` starts, on 127.0.0.1: the KBS (emulated SGX, SQLite store) and a
compute worker (the emulated platform named by ``platform``, with
:func:`~teeflow.compute.worker.compute_measurement`)
serving one compute package; it creates the parties' keys, writes the federation agreement
(every party signs it; ``allow_emulated: true``), has each party verify the KBS evidence
(the pin, also written to ``<workdir>/pin.json``) and submits the agreement. The parties'
keys are saved under ``<workdir>/home/parties/<name>`` so other processes can
``Party.load(name, pin=<workdir>/pin.json, home=<workdir>/home)``. Everything is real —
RCAR attestation, grants, HPKE, sealed blobs, TLS — only the TEE is emulated
(``<workdir>/home/emulation`` keeps the emulation root). Nothing here is meant for production use.

The worker acts for the compute operator: the party with role ``compute-operator`` in
``parties``, or else an extra party :data:`COMPUTE_OPERATOR` with that role (it signs the
agreement too). The operator enrolls the worker (role ``compute``, a one-day enrollment);
the token is also written to ``<workdir>/compute.enrollment``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from teeflow._fs import atomic_write
from teeflow.compute.jobs import ExecutionLimits
from teeflow.compute.party import Party
from teeflow.compute.server import make_worker_server
from teeflow.compute.worker import ComputeWorker, compute_measurement
from teeflow.errors import PlatformError
from teeflow.fl.package import build_package, load_manifest
from teeflow.kbs.api.server import BackgroundServer, KbsRuntime, build_kbs, make_server
from teeflow.kbs.client.pinning import (
    Pin,
)
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.client.verification import verify_kbs
from teeflow.kbs.policy.agreement import (
    FederationAgreement,
    SgxReferenceValues,
    digest,
)
from teeflow.kbs.policy.enrollment import issue_enrollment
from teeflow.kbs.policy.parties import PartyKeys, party_dir
from teeflow.kbs.policy.signing import (
    SignedAgreement,
)
from teeflow.kbs.service.self_attestation import kbs_measurement
from teeflow.platform.emulated import EmulationAuthority
from teeflow.platform.selection import EMULATED_PLATFORMS, attester_for, emulated_workload_spec

__all__ = ["COMPUTE_OPERATOR", "LocalFederation", "local_federation"]

#: Name of the compute operator party added when ``parties`` names none.
COMPUTE_OPERATOR = "compute-op"


@dataclass
class LocalFederation:
    """A running local federation (see :func:`local_federation`).

    Attributes:
        home: teeflow home (emulation authority).
        kbs_url, worker_url: base URLs; pin: the verified KBS pin (also ``pin.json``).
        keys: party name → keys; agreement: the active agreement.
        runtime: the KBS runtime; worker: the compute worker.
    """

    home: Path
    kbs_url: str
    worker_url: str
    pin: Pin
    keys: dict[str, PartyKeys]
    agreement: FederationAgreement
    runtime: KbsRuntime
    worker: ComputeWorker
    authority: EmulationAuthority
    package_archive: bytes
    _parties: list[Party] = field(default_factory=list)

    def party(self, name: str) -> Party:
        """A :class:`~teeflow.compute.party.Party` for ``name`` (closed with the federation)."""
        p = Party(self.keys[name], self.pin)
        self._parties.append(p)
        return p

    def audit(self, party: str | None = None) -> list[object]:
        """The verified KBS audit log, read as ``party`` (default: the first party; only
        parties may read it)."""
        name = party or sorted(self.keys)[0]
        with KbsClient(None, self.pin, party=self.keys[name]) as kbs:
            return list(kbs.audit())


@contextmanager
def local_federation(
    workdir: Path,
    package_dir: Path,
    *,
    parties: Mapping[str, Sequence[str]],
    readers: Sequence[str],
    recipients: Sequence[str],
    federation: str = "teeu",
    platform: str,
    limits: ExecutionLimits | None = None,
    store_dir: Path | None = None,
) -> Iterator[LocalFederation]:
    """Start a local federation (module docstring); stop it on exit.

    Args:
        workdir: folder for the KBS database and state, and the teeflow home.
        package_dir: the compute package folder (``teeflow.yaml``).
        parties: party name → agreement roles (e.g. ``["data-owner"]``).
        readers: parties whose data the package may read.
        recipients: parties allowed to receive results (``outputs.result``).
        federation: federation name.
        platform: the compute worker's emulated platform (``emulated-sgx``,
            ``emulated-tdx`` or ``emulated-snp``; its attester reports
            :func:`compute_measurement`, and the agreement lists that identity). The KBS runs
            on ``emulated-sgx``.
        limits, store_dir: passed to :class:`ComputeWorker`.

    Raises:
        PlatformError: ``platform`` is not an emulated platform.
        KbsError, AttestationFailed, PackageError: start-up failed.
    """
    if platform not in EMULATED_PLATFORMS:
        raise PlatformError(f"the sandbox runs emulated platforms only, not {platform!r}")
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    authority = EmulationAuthority.load_or_create(home, now=datetime.now(UTC))
    archive, pkg_digest = build_package(package_dir)
    manifest = load_manifest(package_dir)
    roles: dict[str, Sequence[str]] = dict(parties)
    operator = next((n for n, r in roles.items() if "compute-operator" in r), None)
    if operator is None:
        operator = COMPUTE_OPERATOR
        roles[operator] = ["compute-operator"]
    keys = {name: PartyKeys.generate(name) for name in roles}
    for name, k in keys.items():
        k.save(party_dir(name, home), overwrite=True)
    kbs_mr, compute_mr = kbs_measurement(), compute_measurement()
    agreement = FederationAgreement.from_mapping({
        "federation": federation, "version": 1, "previous": None,
        "parties": {n: {"sign_key": k.public().sign_key, "recipient_key": k.public().recipient_key,
                        "roles": list(roles[n])} for n, k in keys.items()},
        "workloads": {"kbs": {"sgx": {"mrenclave": [kbs_mr.hex()]}},
                      "compute": emulated_workload_spec(platform, compute_mr)},
        "packages": {manifest.name: {"digest": pkg_digest.hex(),
                                     "functions": sorted(manifest.functions),
                                     "readers": sorted(readers)}},
        "outputs": {"result": sorted(recipients)},
        "allow_emulated": True, "update_quorum": {"k": len(keys)},
    })
    signed = SignedAgreement(agreement=agreement)
    for k in keys.values():
        signed = signed.signed_by(k)
    runtime = build_kbs(f"sqlite:///{workdir / 'kbs.db'}", state_dir=workdir / "kbs-state",
                        federation=federation, home=home, measurement=kbs_mr,
                        platform="emulated-sgx", purge_interval=None,
                        expect_agreement=digest(agreement))
    with ExitStack() as stack:
        stack.callback(runtime.close)
        kbs_server = stack.enter_context(BackgroundServer(make_server(runtime, graceful_timeout=2)))
        pin = verify_kbs(kbs_server.url, SgxReferenceValues(mrenclave=(kbs_mr.hex(),)),
                         allow_emulated=True, home=home)
        pin.save(workdir / "pin.json")
        with KbsClient(None, pin) as kbs:
            kbs.submit_agreement(signed)
        attester = attester_for(platform, measurement=compute_mr, authority=authority, home=home)
        enrollment = issue_enrollment(keys[operator], federation=federation, role="compute",
                                      now=datetime.now(UTC), expires=timedelta(days=1))
        atomic_write(workdir / "compute.enrollment", enrollment.encode("ascii") + b"\n")
        worker = ComputeWorker(pin, attester, archive, limits=limits, store_dir=store_dir,
                               enrollment=enrollment)
        stack.callback(worker.close)
        worker.start()
        wserver = stack.enter_context(BackgroundServer(make_worker_server(worker)))
        worker.url = wserver.url
        fed = LocalFederation(home, kbs_server.url, wserver.url, pin, keys, agreement, runtime,
                              worker, authority, archive)
        try:
            yield fed
        finally:
            for p in fed._parties:
                p.close()
