"""Helpers of the FL end-to-end tests: a federation of three parties around an in-process KBS.

:func:`federation` yields a :class:`Fed`: parties alice/bob/carol (keys under
``$TEEFLOW_HOME/parties``), workload manifests for the aggregator and the clients (small
folders under ``tmp``: stable measurements while the source tree is being edited), the MNIST
example package built and published by alice, an agreement signed by all three
(``allow_emulated: true``; outputs.model = alice; alice also operates the aggregator)
submitted to a KBS (SQLite, emulated TEE) served on 127.0.0.1 in this process, and a pin
file. :meth:`Fed.enroll` signs a party's enrollment of a workload (each client by its party,
the aggregator by alice).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from teeflow.fl.package import build_package
from teeflow.fl.publish import PublishedPackage, publish_package
from teeflow.fl.session import LocalFederation
from teeflow.kbs.api.server import BackgroundServer, build_kbs, make_server
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
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.kbs.policy.signing import (
    SignedAgreement,
)
from teeflow.kbs.service.self_attestation import kbs_measurement
from teeflow.workload.manifest import WorkloadManifest, measurement

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "mnist"
PARTIES = ("alice", "bob", "carol")
#: digits needs a larger step than the MNIST defaults to learn in a few rounds
TRAIN_CONFIG = {"lr": 0.1, "epochs": 3, "model": "mlp", "threads": 1}


@dataclass
class Fed:
    home: Path
    tmp: Path
    url: str
    pin_path: Path
    pin: Pin
    keys: dict[str, PartyKeys]
    agreement: FederationAgreement
    agreement_digest: bytes
    aggregator_manifest: Path
    client_manifest: Path
    client_measurement: str
    archive: Path
    published: PublishedPackage

    def data(self, index: int, clients: int = 3) -> str:
        return f"digits?clients={clients}&index={index}&seed=7"

    def enroll(self, lf: LocalFederation, party: str, role: str = "client", **kw: Any) -> Path:
        """``party``'s enrollment of a ``role`` workload (a token file)."""
        return lf.enroll(self.keys[party], role, federation="study", **kw)

    def token(self, party: str, role: str = "client", **kw: Any) -> str:
        """``party``'s enrollment token (in-process workloads)."""
        return issue_enrollment(self.keys[party], federation="study", role=role,
                                now=datetime.now(UTC), expires=timedelta(hours=2), **kw)


def write_manifest(folder: Path, name: str, entry: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text(f"# {name}\n")
    manifest = WorkloadManifest.build(folder, entry, files=["main.py"], name=name)
    path = folder / "manifest.yaml"
    path.write_text(manifest.to_yaml())
    return path


@contextmanager
def federation(home: Path, tmp: Path, *, collateral_dirs: tuple[Path, ...] = ()) -> Iterator[Fed]:
    keys = {}
    for p in PARTIES:
        keys[p] = PartyKeys.generate(p)
        keys[p].save(home / "parties" / p)
    agg_manifest = write_manifest(tmp / "agg-workload", "fl-aggregator", ["teeflow", "aggregator"])
    cli_manifest = write_manifest(tmp / "client-workload", "fl-client", ["teeflow", "client"])
    agg_mr = measurement(WorkloadManifest.load(agg_manifest)).hex()
    cli_mr = measurement(WorkloadManifest.load(cli_manifest)).hex()
    archive_bytes, pkg_digest = build_package(EXAMPLE)
    archive = tmp / "mnist.tar"
    archive.write_bytes(archive_bytes)
    kbs_mr = kbs_measurement()
    agreement = FederationAgreement.from_mapping(
        {
            "federation": "study",
            "version": 1,
            "previous": None,
            "parties": {
                p: {
                    "sign_key": keys[p].public().sign_key,
                    "recipient_key": keys[p].public().recipient_key,
                    "roles": ["data-owner", "model-owner", "aggregator-operator"]
                    if p == "alice"
                    else ["data-owner"],
                }
                for p in PARTIES
            },
            "workloads": {
                "kbs": {"sgx": {"mrenclave": [kbs_mr.hex()]}},
                "aggregator": {"sgx": {"mrenclave": [agg_mr]}},
                "client": {"sgx": {"mrenclave": [cli_mr]}},
            },
            "packages": {
                "mnist": {
                    "digest": pkg_digest.hex(),
                    "entrypoints": ["train", "validate"],
                    "functions": ["init"],
                    "readers": list(PARTIES),
                }
            },
            "outputs": {"model": ["alice"]},
            "training": {"strategy": {"name": "fedavg"}, "rounds": 10, "min_clients": 2},
            "allow_emulated": True,
            "update_quorum": {"k": 2},
        }
    )
    signed = SignedAgreement(agreement=agreement)
    for p in PARTIES:
        signed = signed.signed_by(keys[p])
    runtime = build_kbs(
        f"sqlite:///{tmp / 'kbs.db'}",
        state_dir=tmp / "kbs-state",
        federation="study",
        platform="emulated-sgx",
        home=home,
        measurement=kbs_mr,
        purge_interval=None,
        expect_agreement=digest(agreement),
        collateral_dirs=collateral_dirs,
    )
    try:
        with BackgroundServer(make_server(runtime, graceful_timeout=2)) as server:
            pin = verify_kbs(
                server.url,
                SgxReferenceValues(mrenclave=(kbs_mr.hex(),)),
                allow_emulated=True,
                home=home,
            )
            pin_path = tmp / "pin.json"
            pin.save(pin_path)
            with KbsClient(None, pin) as owner:
                owner.submit_agreement(signed)
                published = publish_package(archive, owner, keys["alice"])
            yield Fed(
                home,
                tmp,
                server.url,
                pin_path,
                pin,
                keys,
                agreement,
                digest(agreement),
                agg_manifest,
                cli_manifest,
                cli_mr,
                archive,
                published,
            )
    finally:
        runtime.close()
