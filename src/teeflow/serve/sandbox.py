"""A served model on one machine, for the demo, benchmarks and tests (emulated TEE).

:func:`local_serving` starts, on 127.0.0.1: the KBS (emulated SGX, SQLite store) and a
serving workload on the emulated platform named by ``platform`` (measurement
:func:`~teeflow.serve.workload.serve_measurement`). It writes the agreement (every party
signs; ``allow_emulated: true``; ``workloads.serve`` = that measurement; ``outputs.model``
and ``outputs.serve`` = the model owner; the ``serving`` section given), seals the given
arrays as an FL model file to the owner, has the owner publish it for serving
(:func:`teeflow.fl.publish.publish_serving_model`: the key goes to the KBS under a ``serve``
grant), enrolls the workload (by the owner, a ``model-owner``) and starts it. Everything is
real — RCAR attestation, grants, HPKE, TLS — only the TEE is emulated.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from teeflow.errors import PlatformError
from teeflow.fl.arrays import ArrayDict, encode_arrays
from teeflow.fl.outputs import model_recipients, seal_model
from teeflow.fl.package import build_package, load_manifest
from teeflow.fl.publish import publish_serving_model
from teeflow.kbs.api.server import BackgroundServer, KbsRuntime, build_kbs, make_server
from teeflow.kbs.client.pinning import Pin
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.client.verification import verify_kbs
from teeflow.kbs.policy.agreement import FederationAgreement, SgxReferenceValues, digest
from teeflow.kbs.policy.enrollment import issue_enrollment
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.kbs.policy.signing import SignedAgreement
from teeflow.kbs.service.self_attestation import kbs_measurement
from teeflow.platform.emulated import EmulationAuthority
from teeflow.platform.selection import EMULATED_PLATFORMS, attester_for, emulated_workload_spec
from teeflow.serve.server import make_server as make_serve_server
from teeflow.serve.workload import ServeWorkload, serve_measurement

__all__ = ["LocalServing", "local_serving"]


@dataclass
class LocalServing:
    """A running local serving federation (:func:`local_serving`).

    Attributes:
        url: the serving workload's base URL; kbs_url; pin: the verified KBS pin.
        keys: party → keys; agreement; owner: the model owner's name.
        workload: the started workload; serve_file: the sealed serving model.
        authority: the emulation root; package_archive: the compute package.
        enrollment: the owner's ``serve`` enrollment token.
    """

    url: str
    kbs_url: str
    pin: Pin
    keys: dict[str, PartyKeys]
    agreement: FederationAgreement
    owner: str
    workload: ServeWorkload
    serve_file: Path
    authority: EmulationAuthority
    package_archive: bytes
    enrollment: str
    runtime: KbsRuntime
    home: Path

    def audit(self) -> list[Any]:
        """The KBS audit log as the owner reads it."""
        with KbsClient(None, self.pin, party=self.keys[self.owner]) as kbs:
            return list(kbs.audit())


@contextmanager
def local_serving(
    workdir: Path,
    package_dir: Path | None,
    arrays: ArrayDict | None,
    *,
    parties: Mapping[str, Sequence[str]],
    owner: str,
    serving: Mapping[str, Any] | None = None,
    platform: str = "emulated-sgx",
    config: Mapping[str, Any] | None = None,
    federation: str = "serving",
    onnx_model: bytes | None = None,
) -> Iterator[LocalServing]:
    """Start a local serving federation (module docstring); stop it on exit.

    Args:
        workdir: folder for the KBS database, the model files and the teeflow home.
        package_dir: the compute package folder (with a ``predict`` entrypoint), or None
            for an ONNX model.
        arrays: the model's arrays (package models), or None.
        onnx_model: an ONNX model (bytes) to serve instead (onnxruntime).
        parties: party → agreement roles; ``owner`` must have ``model-owner``.
        serving: the agreement's ``serving`` section (None: omitted).
        platform: the serving workload's emulated platform.
        config: the ``config`` given to ``predict``.

    Raises:
        PlatformError: ``platform`` is not emulated. KbsError and others: start-up failed.
    """
    if platform not in EMULATED_PLATFORMS:
        raise PlatformError(f"the sandbox runs emulated platforms only, not {platform!r}")
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    authority = EmulationAuthority.load_or_create(home, now=datetime.now(UTC))
    keys = {name: PartyKeys.generate(name) for name in parties}
    kbs_mr = kbs_measurement()
    doc: dict[str, Any] = {
        "federation": federation, "version": 1, "previous": None,
        "parties": {n: {"sign_key": k.public().sign_key,
                        "recipient_key": k.public().recipient_key,
                        "roles": list(parties[n])} for n, k in keys.items()},
        "workloads": {"kbs": {"sgx": {"mrenclave": [kbs_mr.hex()]}},
                      "serve": emulated_workload_spec(platform, serve_measurement())},
        "outputs": {"model": [owner], "serve": [owner]},
        "allow_emulated": True, "update_quorum": {"k": len(keys)},
    }
    archive, name = b"", "model"
    if package_dir is not None:
        archive, pkg_digest = build_package(package_dir)
        manifest = load_manifest(package_dir)
        name = manifest.name
        doc["packages"] = {manifest.name: {
            "digest": pkg_digest.hex(), "entrypoints": sorted(manifest.entrypoints),
            "functions": sorted(manifest.functions),
            "readers": [owner]}}  # predict reads the owner's model
    if serving is not None:
        doc["serving"] = dict(serving)
    agreement = FederationAgreement.from_mapping(doc)
    signed = SignedAgreement(agreement=agreement)
    for k in keys.values():
        signed = signed.signed_by(k)
    runtime = build_kbs(f"sqlite:///{workdir / 'kbs.db'}", state_dir=workdir / "kbs-state",
                        federation=federation, home=home, measurement=kbs_mr,
                        platform="emulated-sgx", purge_interval=None,
                        expect_agreement=digest(agreement))
    with ExitStack() as stack:
        stack.callback(runtime.close)
        kbs_server = stack.enter_context(BackgroundServer(make_server(runtime,
                                                                      graceful_timeout=2)))
        pin = verify_kbs(kbs_server.url, SgxReferenceValues(mrenclave=(kbs_mr.hex(),)),
                         allow_emulated=True, home=home)
        pin.save(workdir / "pin.json")
        with KbsClient(None, pin) as kbs:
            kbs.submit_agreement(signed)
        if onnx_model is not None:  # the owner holds an ONNX model (plaintext, its own disk)
            model_file = workdir / "model.onnx"
            model_file.write_bytes(onnx_model)
        else:
            assert arrays is not None, "give arrays or onnx_model"
            model_file = workdir / "model.model"
            model_file.write_bytes(seal_model(
                encode_arrays(arrays), model_recipients(agreement), session="serving",
                federation=federation, agreement_digest=digest(agreement).hex()))
        with KbsClient(None, pin) as kbs:
            serve_file, _ = publish_serving_model(
                model_file, kbs, keys[owner], name=name, onnx=onnx_model is not None,
                out_path=workdir / "served.serve")
        enrollment = issue_enrollment(keys[owner], federation=federation, role="serve",
                                      now=datetime.now(UTC), expires=timedelta(days=1))
        attester = attester_for(platform, measurement=serve_measurement(),
                                authority=authority, home=home)
        workload = ServeWorkload(pin, attester, serve_file, package=archive or None,
                                 enrollment=enrollment, config=config)
        stack.callback(workload.close)
        workload.start()
        server = stack.enter_context(BackgroundServer(make_serve_server(workload)))
        yield LocalServing(server.url, kbs_server.url, pin, keys, agreement, owner, workload,
                           serve_file, authority, archive, enrollment, runtime, home)
