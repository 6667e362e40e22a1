"""Local simulation: the whole protocol in one process on the emulated platform.

:class:`LocalStudy` sets up a throw-away federation in a folder: a ``$TEEFLOW_HOME`` of its
own (set for the duration of the ``with`` block, restored after), party keys, a compute
package, an agreement signed by every party (``allow_emulated: true``, a ``training``
section, the built-in aggregator/client measurements), a KBS served in this process on
127.0.0.1 (SQLite, platform ``emulated-sgx``), the verified pin, the sealed and published
package and the parties' enrollments. Attesters come from
:func:`teeflow.platform.selection.attester_for` (through :class:`PlatformOptions`), so the
KBS checks real (emulated) evidence, RCAR, certificates, grants and counters exactly as in
a deployment — only the hardware is emulated.

:func:`simulate` runs one FL session in such a study: the aggregator and one client per
party as threads over the real gRPC transport (mutual TLS) on 127.0.0.1, and returns a
:class:`SimulationResult` (per-round metrics, the sealed model and provenance, seconds). Edit
the package's ``train()`` and run it again: no agreement update, a few seconds per round::

    import teeflow.fl
    result = teeflow.fl.simulate("examples/mnist", clients=3, rounds=2,
                                 train_config={"lr": 0.1, "model": "mlp"})
    print(result.history[-1]["eval_accuracy"])

Emulated evidence proves nothing about hardware: this is for development only (the
agreement says so with ``allow_emulated: true``).
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from teeflow._fs import teeflow_home_env
from teeflow.errors import FLError
from teeflow.fl.arrays import ArrayDict

__all__ = ["DEFAULT_DATA", "LocalStudy", "SimulationResult", "simulate"]

#: Data spec of client ``index`` of ``clients`` (the digits dataset, IID parts).
DEFAULT_DATA = "digits?clients={clients}&index={index}&seed=7"
_PLATFORM = "emulated-sgx"
Emit = Callable[[str, dict[str, Any]], None]


class LocalStudy:
    """An in-process emulated federation (module docstring). Use as a context manager.

    Args:
        workdir: folder for everything (created; default a temporary one, deleted at exit).
        package: a package folder (built with :func:`teeflow.fl.package.build_package`) or
            a built archive (``.tar``).
        parties: party names (the first operates the aggregator, publishes the package and
            receives the model).
        package_name: the package's name in the agreement.
        training: the agreement's ``training`` section (mapping; default fedavg, ≤ 1000
            rounds, min_clients 1).

    Attributes (inside the block): ``home``, ``kbs_url``, ``pin_path``, ``pin``, ``keys``
    (name → PartyKeys), ``agreement``, ``agreement_digest`` (hex), ``sealed_package``
    (path), ``federation``.

    Raises (on enter):
        PackageError: the package does not build; KbsError: the KBS refused a step.
    """

    federation = "sim"

    def __init__(self, workdir: Path | str | None = None, *, package: Path | str,
                 parties: Sequence[str] = ("alice", "bob", "carol"),
                 package_name: str = "model", training: dict[str, Any] | None = None) -> None:
        if not parties:
            raise FLError("a study needs at least one party")
        self._workdir = Path(workdir) if workdir is not None else None
        self.package = Path(package)
        self.parties = list(parties)
        self.package_name = package_name
        self.training = training or {"strategy": {"name": "fedavg"}, "rounds": 1000,
                                     "min_clients": 1}
        self._stack = ExitStack()

    def start(self) -> LocalStudy:
        """Set everything up (the ``with`` block's entry); pair with :meth:`close`."""
        try:
            self._enter()
        except BaseException:
            self._stack.close()
            raise
        return self

    def close(self) -> None:
        """Stop the KBS, restore ``$TEEFLOW_HOME``, delete a temporary folder."""
        self._stack.close()

    def __enter__(self) -> LocalStudy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _enter(self) -> None:
        from teeflow.fl.package import build_package
        from teeflow.fl.publish import publish_package
        from teeflow.fl.workload import fl_measurement
        from teeflow.kbs.api.server import BackgroundServer, build_kbs, make_server
        from teeflow.kbs.client.sdk import KbsClient
        from teeflow.kbs.client.verification import verify_kbs
        from teeflow.kbs.policy.agreement import (
            FederationAgreement,
            SgxReferenceValues,
            digest,
        )
        from teeflow.kbs.policy.parties import PartyKeys
        from teeflow.kbs.policy.signing import SignedAgreement
        from teeflow.kbs.service.self_attestation import kbs_measurement

        if self._workdir is None:
            self._workdir = Path(self._stack.enter_context(
                tempfile.TemporaryDirectory(prefix="teeflow-sim-")))
        self.workdir = self._workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home = self.workdir / "home"
        self._stack.enter_context(teeflow_home_env(self.home))
        self.keys = {p: PartyKeys.generate(p) for p in self.parties}
        for p, k in self.keys.items():
            k.save(self.home / "parties" / p, overwrite=True)
        if self.package.is_dir():
            archive_bytes, pkg_digest = build_package(self.package)
        else:
            from teeflow.fl.package import package_digest

            try:
                archive_bytes = self.package.read_bytes()
            except OSError as exc:
                raise FLError(f"cannot read {self.package}: {exc.strerror or exc}") from None
            pkg_digest = package_digest(archive_bytes)
        archive = self.workdir / f"{self.package_name}.tar"
        archive.write_bytes(archive_bytes)
        kbs_mr = kbs_measurement()
        first = self.parties[0]
        agreement = FederationAgreement.from_mapping({
            "federation": self.federation, "version": 1, "previous": None,
            "parties": {p: {"sign_key": k.public().sign_key,
                            "recipient_key": k.public().recipient_key,
                            "roles": ["data-owner", "model-owner", "aggregator-operator"]
                            if p == first else ["data-owner"]}
                        for p, k in self.keys.items()},
            "workloads": {
                "kbs": {"sgx": {"mrenclave": [kbs_mr.hex()]}},
                "aggregator": {"sgx": {"mrenclave": [fl_measurement("aggregator").hex()]}},
                "client": {"sgx": {"mrenclave": [fl_measurement("client").hex()]}},
            },
            "packages": {self.package_name: {
                "digest": pkg_digest.hex(), "entrypoints": ["train", "validate"],
                "functions": ["init"], "readers": list(self.parties)}},
            "outputs": {"model": [first]},
            "allow_emulated": True,
            "update_quorum": {"k": len(self.parties)},
            "training": self.training,
        })
        signed = SignedAgreement(agreement=agreement)
        for k in self.keys.values():
            signed = signed.signed_by(k)
        runtime = build_kbs(f"sqlite:///{self.workdir / 'kbs.db'}",
                            state_dir=self.workdir / "kbs-state", federation=self.federation,
                            platform=_PLATFORM, home=self.home, measurement=kbs_mr,
                            purge_interval=None, expect_agreement=digest(agreement))
        self._stack.callback(runtime.close)
        server = self._stack.enter_context(
            BackgroundServer(make_server(runtime, graceful_timeout=2)))
        self.kbs_url = server.url
        self.pin = verify_kbs(server.url, SgxReferenceValues(mrenclave=(kbs_mr.hex(),)),
                              allow_emulated=True, home=self.home)
        self.pin_path = self.workdir / "pin.json"
        self.pin.save(self.pin_path)
        with KbsClient(None, self.pin) as kbs:
            kbs.submit_agreement(signed)
            published = publish_package(archive, kbs, self.keys[first])
        self.agreement = agreement
        self.agreement_digest = digest(agreement).hex()
        self.sealed_package = published.sealed_path

    def enroll(self, party: str, role: str, *, session: str | None = None) -> Path:
        """``party``'s enrollment of a ``role`` workload (a 0600 token file; unlimited
        uses, 1 day).

        Raises:
            ParseError: invalid fields.
        """
        from teeflow._fs import atomic_write, ensure_private_dir
        from teeflow.kbs.policy.enrollment import issue_enrollment

        token = issue_enrollment(self.keys[party], federation=self.federation, role=role,
                                 now=datetime.now(UTC), expires=timedelta(days=1),
                                 session=session)
        folder = self.workdir / "enrollments"
        ensure_private_dir(folder)
        path = folder / f"{party}-{role}{'-' + session if session else ''}.jwt"
        atomic_write(path, token.encode("ascii") + b"\n")
        return path

    def run_client(self, party: str, index: int, address: str, *, data: str = DEFAULT_DATA,
                   threads: int = 1, emit: Emit | None = None) -> Any:
        """Run ``party``'s client (index ``index`` of the data spec) against the aggregator at
        ``address`` until Goodbye (blocking; :class:`teeflow.fl.client.ClientResult`).

        Raises:
            as :meth:`teeflow.fl.client.Client.run`.
        """
        from teeflow.fl.client import Client, ClientOptions
        from teeflow.platform.selection import PlatformOptions

        spec = data.format(clients=len(self.parties), index=index)
        options = ClientOptions(
            party=party, pin=self.pin_path, aggregator=address, data=spec,
            workdir=self.workdir / "clients" / party, threads=threads,
            platform=PlatformOptions(_PLATFORM), enrollment=self.enroll(party, "client"))
        return Client(options, emit).run()


@dataclass
class SimulationResult:
    """What :func:`simulate` produced.

    Attributes:
        session: the session name; rounds: rounds run; history: per round (0 = the initial
        model) the aggregator's metrics (``eval_accuracy``, ``train_loss``, …) with
        ``round``, ``clients`` and ``seconds``; arrays: the final model (named float32
        arrays — plaintext: the simulation's parties are all yours); digest: hex SHA-256 of
        its canonical encoding; model_path, provenance_path: the sealed model and its
        provenance log under ``workdir``, None when the study lived in a temporary folder
        (deleted); seconds: wall time of the session; client_failures: failed client tasks.
    """

    session: str
    rounds: int
    history: list[dict[str, Any]]
    arrays: ArrayDict
    digest: str
    seconds: float
    model_path: Path | None = None
    provenance_path: Path | None = None
    client_failures: list[str] = field(default_factory=list)


def simulate(
    package: Path | str, *, clients: int = 3, rounds: int = 3,
    train_config: dict[str, Any] | None = None, data: str = DEFAULT_DATA,
    workdir: Path | str | None = None, min_clients: int | None = None,
    round_timeout: float = 300.0, on_event: Emit | None = None,
) -> SimulationResult:
    """Run one FL session of ``package`` with ``clients`` parties in this process (module
    docstring).

    Args:
        package: package folder or archive; clients: 1..64 parties (``p01``, ``p02``, …);
        rounds: 1..1000; train_config: the package's config (scalars);
        data: client data spec with ``{clients}`` and ``{index}`` placeholders;
        workdir: where the study lives (default a temporary folder, deleted afterwards —
            pass one to keep the sealed model); min_clients: default ``clients``;
        round_timeout: seconds; on_event: called with every aggregator event
            (``round``, ``round-start``, ``client-dropped``, …) from the aggregator thread.

    Raises:
        FLError: the session failed (its reason, and the clients' failures); PackageError,
            KbsError: as :class:`LocalStudy`.
    """
    import time

    from teeflow.fl.aggregator import Aggregator, AggregatorOptions
    from teeflow.platform.selection import PlatformOptions

    if not 1 <= clients <= 64 or not 1 <= rounds <= 1000:
        raise FLError("clients must be 1..64 and rounds 1..1000")
    parties = [f"p{i + 1:02d}" for i in range(clients)]
    failures: list[str] = []
    emit = on_event or (lambda event, fields: None)
    with LocalStudy(workdir, package=package, parties=parties) as study:
        listening = threading.Event()
        address: list[str] = []

        def agg_emit(event: str, fields: dict[str, Any]) -> None:
            if event == "listening":
                address.append(f"127.0.0.1:{fields['port']}")
                listening.set()
            emit(event, fields)

        def client_emit(party: str) -> Emit:
            def inner(event: str, fields: dict[str, Any]) -> None:
                if event == "task-failed":
                    failures.append(f"{party}: {fields.get('kind')} task: {fields.get('reason')}")
            return inner

        options = AggregatorOptions(
            pin=study.pin_path, session="sim", rounds=rounds,
            min_clients=min_clients or clients, wait_clients=clients,
            state_dir=study.workdir / "aggregator", package=study.sealed_package,
            train_config=dict(train_config or {}), round_timeout=round_timeout,
            connect_timeout=120.0, platform=PlatformOptions(_PLATFORM),
            enrollment=study.enroll(parties[0], "aggregator"))
        agg = Aggregator(options, emit=agg_emit)
        outcome: list[Any] = []

        def run_agg() -> None:
            try:
                outcome.append(agg.run())
            except Exception as exc:  # reported below, with the clients' failures
                outcome.append(exc)
                listening.set()

        t0 = time.monotonic()
        agg_thread = threading.Thread(target=run_agg, name="sim-aggregator", daemon=True)
        agg_thread.start()
        listening.wait(300)
        threads = []
        if address:
            for i, p in enumerate(parties):
                def run_client(p: str = p, i: int = i) -> None:
                    try:
                        study.run_client(p, i, address[0], data=data, emit=client_emit(p))
                    except Exception as exc:
                        failures.append(f"{p}: {type(exc).__name__}: {exc}"[:400])
                t = threading.Thread(target=run_client, name=f"sim-{p}", daemon=True)
                t.start()
                threads.append(t)
        agg_thread.join(round_timeout * (rounds + 2) + 300)
        for t in threads:
            t.join(30)
        seconds = time.monotonic() - t0
        result = outcome[0] if outcome else FLError("the aggregator did not finish in time")
        if isinstance(result, BaseException):
            why = "; ".join(failures[:5])
            raise FLError(f"simulation failed: {result}" + (f" (clients: {why})" if why else ""))
        history = [{"round": r.round, "clients": list(r.clients), "seconds": r.seconds,
                    **r.metrics} for r in result.reports]
        from teeflow.fl.arrays import arrays_digest

        kept = workdir is not None
        return SimulationResult(
            session=result.session, rounds=result.rounds, history=history,
            arrays=agg.global_arrays, digest=arrays_digest(agg.global_arrays).hex(),
            seconds=seconds, model_path=result.model_path if kept else None,
            provenance_path=result.provenance_path if kept else None,
            client_failures=failures)
