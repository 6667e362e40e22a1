"""Pieces of the federated-learning demo (:mod:`teeflow.demo.fl_demo`): the work directory, the
agreement, following the workloads' progress events, and the by-hand commands.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from teeflow.demo.attestation_roundtrip import DemoStep
from teeflow.errors import FLError

if TYPE_CHECKING:
    from teeflow.demo.fl_demo import DemoOptions, FlDemoSummary
    from teeflow.fl.session import AggregatorProcess, WorkloadProcess
    from teeflow.kbs.policy.parties import PartyKeys

__all__ = [
    "DEMO_MARKER",
    "DEMO_MAX_EXAMPLES",
    "RoundProgress",
    "RoundTracker",
    "Steps",
    "WorkdirLock",
    "manual_commands",
    "prepare_workdir",
    "restore_sigint",
    "shield_stop",
    "teeflow_command",
    "write_agreement",
]

#: File that marks a folder as a demo work directory (which the next demo may replace).
DEMO_MARKER = ".teeflow-demo"
#: The demo agreement's ``fl.max_examples``: MNIST's training split (60,000 images).
DEMO_MAX_EXAMPLES = 60_000


@contextlib.contextmanager
def shield_stop() -> Iterator[None]:
    """While the children are being stopped (leaving the ``with`` block), ignore further
    Ctrl-C so that a second one cannot cut :meth:`LocalFederation.stop_all` short."""
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def restore_sigint() -> Iterator[None]:
    """Restore the SIGINT handler on leaving (main thread only)."""
    previous = (
        signal.getsignal(signal.SIGINT)
        if threading.current_thread() is threading.main_thread()
        else None
    )
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


class Steps:
    """Context manager per demo step: records a :class:`DemoStep` (ok or failed, seconds,
    detail lines) in the summary and reports it."""

    def __init__(self, summary: FlDemoSummary, on_step: Callable[[DemoStep], None]) -> None:
        self.summary, self.on_step = summary, on_step

    @contextlib.contextmanager
    def __call__(self, title: str) -> Iterator[list[str]]:
        detail: list[str] = []
        t0 = time.monotonic()
        try:
            yield detail
        except BaseException as exc:
            step = DemoStep(title, False, time.monotonic() - t0, str(exc).splitlines()[0][:200])
            self.summary.steps.append(step)
            self.on_step(step)
            raise
        step = DemoStep(title, True, time.monotonic() - t0, "; ".join(detail))
        self.summary.steps.append(step)
        self.on_step(step)


class WorkdirLock:
    """An exclusive ``flock(2)`` on a demo folder's :data:`DEMO_MARKER` (held while a demo
    runs; released by :meth:`release`, on ``with`` exit or when the process ends)."""

    def __init__(self, fd: int, workdir: Path) -> None:
        self._fd: int | None = fd
        self.workdir = workdir

    def release(self) -> None:
        """Unlock and close (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> WorkdirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def prepare_workdir(workdir: Path) -> WorkdirLock:
    """Lock ``workdir`` for one demo and make it a fresh, empty demo folder.

    The lock is an exclusive, non-blocking ``flock`` on ``workdir/``:data:`DEMO_MARKER`
    (the kernel drops it when the holder exits, even on a crash). A previous demo's folder
    (it holds the marker) is emptied only once the lock is held; an empty or absent folder is
    used as is.

    Returns:
        The held lock: keep it (``with prepare_workdir(d):``) while the demo runs.

    Raises:
        FLError: ``workdir`` is a file, a non-empty folder that is not a demo folder, or
            another demo holds its lock (the running demo's files are left untouched).
    """
    if workdir.exists():
        if not workdir.is_dir():
            raise FLError(f"{workdir} is not a folder")
        if not (workdir / DEMO_MARKER).is_file() and any(workdir.iterdir()):
            raise FLError(
                f"{workdir} exists and is not a teeflow demo folder: choose another --workdir"
            )
    marker = workdir / DEMO_MARKER
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(marker, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise FLError(f"cannot create {workdir}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 256).decode("utf-8", "replace").strip().splitlines()
        os.close(fd)
        who = f" ({holder[-1]})" if holder and holder[-1].startswith("pid ") else ""
        raise FLError(
            f"another teeflow demo is running in {workdir}{who}: wait for it to finish, or "
            "pass another --workdir"
        ) from None
    lock = WorkdirLock(fd, workdir)
    try:
        for child in workdir.iterdir():
            if child.name == DEMO_MARKER:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            "teeflow demo work directory: the next `teeflow demo` here replaces it\n"
            f"pid {os.getpid()}\n".encode(),
            0,
        )
    except OSError as exc:
        lock.release()
        raise FLError(f"cannot prepare {workdir}: {exc.strerror or exc}") from None
    return lock


def write_agreement(
    path: Path,
    *,
    federation: str,
    keys: Sequence[PartyKeys],
    kbs_measurement: str,
    package_digest: str,
    workload_spec: Callable[[str, bytes], dict[str, Any]] | None = None,
    kbs_spec: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    serve: bool = False,
) -> str:
    """Write the demo agreement to ``path`` and every party's signature to
    ``<path>.sigs.json`` (the files ``teeflow agreement init``/``sign`` produce).

    The first party is data owner, model owner (the model's only recipient) and aggregator
    operator (it enrolls the aggregator); the others are data owners (each enrolls its own
    client). ``allow_emulated: true``; workloads: the KBS measurement given (SGX) and the
    built-in aggregator/client measurements of the installed teeflow, as reference values of
    ``workload_spec(role, measurement)`` (default: SGX MRENCLAVE; the demo platform's
    :attr:`~teeflow.demo.platforms.DemoPlatform.workload_spec`; ``kbs_spec``, when given,
    replaces the KBS's SGX entry); one package ``mnist``;
    ``fl.max_examples`` = :data:`DEMO_MAX_EXAMPLES` (a client's FedAvg weight is clipped to it);
    ``training`` (the aggregation rule the parties sign, :mod:`teeflow.kbs.policy.training`)
    when given.
    With ``serve`` (issue 12): ``workloads.serve`` (the serving workload's measurement),
    ``outputs.serve`` = the first party (the aggregator also seals the final model for the
    serving role) and ``serving``: end-to-end encryption required, the second party (or the
    only one) may call.

    Returns:
        The agreement digest (64 hex).

    Raises:
        ParseError: invalid agreement (cannot happen for valid keys and digests).
    """
    from teeflow.fl.workload import fl_measurement
    from teeflow.kbs.policy.agreement import (
        FederationAgreement,
        digest,
    )
    from teeflow.kbs.policy.signature_files import SignatureFile, signature_path
    from teeflow.kbs.policy.signing import (
        sign_agreement,
    )

    names = [k.name for k in keys]

    def sgx_spec(role: str, mr: bytes) -> dict[str, Any]:
        return {"sgx": {"mrenclave": [mr.hex()]}}

    spec = workload_spec if workload_spec is not None else sgx_spec
    doc: dict[str, Any] = (
        {
            "federation": federation,
            "version": 1,
            "previous": None,
            "parties": {
                k.name: {
                    "sign_key": k.public().sign_key,
                    "recipient_key": k.public().recipient_key,
                    "roles": ["data-owner", "model-owner", "aggregator-operator"]
                    if i == 0
                    else ["data-owner"],
                }
                for i, k in enumerate(keys)
            },
            "workloads": {
                "kbs": kbs_spec or {"sgx": {"mrenclave": [kbs_measurement]}},
                "aggregator": spec("aggregator", fl_measurement("aggregator")),
                "client": spec("client", fl_measurement("client")),
            },
            "packages": {
                "mnist": {
                    "digest": package_digest,
                    "entrypoints": ["train", "validate"],
                    "functions": ["init"],
                    "readers": names,
                }
            },
            "outputs": {"model": names[:1]},
            # no client update weighs more than MNIST's whole training split
            "fl": {"max_examples": DEMO_MAX_EXAMPLES},
            **({"training": training} if training is not None else {}),
            "allow_emulated": True,
            "update_quorum": {"k": len(names) // 2 + 1},
        }
    )
    if serve:
        from teeflow.serve.workload import serve_measurement

        doc["workloads"]["serve"] = spec("serve", serve_measurement())
        doc["outputs"]["serve"] = names[:1]
        doc["packages"]["mnist"]["entrypoints"].append("predict")
        doc["packages"]["mnist"]["functions"].append("predict_metadata")
        doc["serving"] = {"require_e2e": True, "callers": {names[1 % len(names)]: {}}}
    agreement = FederationAgreement.from_mapping(doc)
    header = (
        "# teeflow demo agreement. allow_emulated: true — EMULATED TEE, development only:\n"
        "# software TEEs give NO hardware protection. Signatures: agreement.yaml.sigs.json\n"
    )
    path.write_text(header + agreement.to_yaml())
    d = digest(agreement).hex()
    sigs = SignatureFile(
        federation=federation,
        version=1,
        digest=d,
        signatures={k.name: sign_agreement(agreement, k) for k in keys},
    )
    signature_path(path).write_text(
        json.dumps(sigs.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    )
    return d


@dataclass(frozen=True)
class RoundProgress:
    """Progress of one round (round 0: the initial model's evaluation).

    Attributes:
        round: round number.
        phase: ``initial model``, ``training``, ``evaluating``, ``committed`` or ``done``.
        done: steps finished (a client's training, a client's evaluation, the commit).
        total: steps of the round (``2 x selected + 1``; round 0: ``clients + 1``).
        selected: parties selected for the round.
        result: the aggregator's ``round`` event once the round is over (``clients``,
            ``seconds``, ``train_loss``, ``eval_accuracy``, ...), else None.
    """

    round: int
    phase: str
    done: int
    total: int
    selected: tuple[str, ...] = ()
    result: dict[str, Any] | None = None


@dataclass
class _Round:
    progress: RoundProgress
    trained: set[str] = field(default_factory=set)
    evaluating: set[str] = field(default_factory=set)


class RoundTracker:
    """Follows the aggregator's and the clients' JSON events and reports round progress.

    Args:
        aggregator: the aggregator process.
        clients: party → client process.
        on_progress: called with every new :class:`RoundProgress`.
    """

    def __init__(
        self,
        aggregator: AggregatorProcess,
        clients: Mapping[str, WorkloadProcess],
        on_progress: Callable[[RoundProgress], None],
    ) -> None:
        self.agg, self.clients, self.on_progress = aggregator, dict(clients), on_progress
        self.rounds: dict[int, _Round] = {}
        self.results: list[dict[str, Any]] = []
        self.warnings: list[str] = []

    def _update(self, r: int, **changes: Any) -> None:
        state = self.rounds[r]
        state.progress = replace(state.progress, **changes)
        self.on_progress(state.progress)

    def _start(self, r: int, selected: Sequence[str]) -> None:
        n = len(selected)
        phase, total = ("initial model", n + 1) if r == 0 else ("training", 2 * n + 1)
        if r in self.rounds:  # a client's event came first: keep what it recorded
            self._update(r, selected=tuple(selected), total=total)
            return
        self.rounds[r] = _Round(RoundProgress(r, phase, 0, total, tuple(selected)))
        self.on_progress(self.rounds[r].progress)

    def _client_event(self, party: str, e: dict[str, Any]) -> None:
        kind, r = e.get("event"), e.get("round")
        if kind == "task-failed":
            self.warnings.append(
                f"{party}: {e.get('kind')} task of round {r} failed: {e.get('reason')}"
            )
        elif kind == "package-import-failed":
            self.warnings.append(f"{party}: the package does not import: {e.get('reason')}")
        elif kind == "error":
            self.warnings.append(f"client {party} failed: {e.get('message')}")
        if kind != "task" or not isinstance(r, int):
            return
        if r not in self.rounds and e.get("kind") in ("init", "evaluate"):
            self._start(r, sorted(self.clients))
        if e.get("kind") != "evaluate" or r not in self.rounds:
            return
        state = self.rounds[r]
        if r > 0 and party in state.progress.selected:
            state.trained.add(party)
        state.evaluating.add(party)
        phase = "evaluating" if r > 0 else "initial model"
        self._update(r, phase=phase, done=len(state.trained))

    def _agg_event(self, e: dict[str, Any]) -> dict[str, Any] | None:
        kind = e["event"]
        if kind == "round-start":
            self._start(int(e["round"]), list(e.get("selected", [])))
        elif kind == "client-dropped":
            self.warnings.append(f"round {e.get('round')}: {e.get('party')} dropped")
        elif kind == "round-retry":
            self.warnings.append(f"round {e.get('round')} retried: {e.get('reason')}")
        elif kind == "committed" and int(e["round"]) in self.rounds:
            r = int(e["round"])
            self._update(r, phase="committed", done=self.rounds[r].progress.total)
        elif kind == "round":
            r = int(e["round"])
            if r not in self.rounds:
                self._start(r, list(e.get("clients", [])))
            result = {k: v for k, v in e.items() if k not in ("event", "_time")}
            self.results.append(result)
            self._update(r, phase="done", done=self.rounds[r].progress.total, result=result)
        elif kind == "error":
            raise FLError(f"the aggregator failed: {e.get('message')}")
        elif kind == "done":
            return e
        return None

    def follow(self, timeout: float, poll: float = 0.1) -> dict[str, Any]:
        """Process events until the aggregator reports ``done`` and return that event.

        Raises:
            FLError: the aggregator reported an error or exited first, or ``timeout``
                seconds passed.
        """
        end = time.monotonic() + timeout
        seen_agg = 0
        seen = dict.fromkeys(self.clients, 0)
        while True:
            for party, proc in self.clients.items():
                events = proc.events[seen[party] :]
                seen[party] += len(events)
                for e in events:
                    self._client_event(party, e)
            events = self.agg.events[seen_agg:]
            seen_agg += len(events)
            for e in events:
                done = self._agg_event(e)
                if done is not None:
                    return done
            if self.agg.returncode is not None and seen_agg == len(self.agg.events):
                time.sleep(poll)  # let the reader thread drain the last lines
                if seen_agg == len(self.agg.events):
                    raise FLError(
                        f"the aggregator exited ({self.agg.returncode}) before finishing; "
                        f"log:\n{self.agg.log_tail()}"
                    )
            if time.monotonic() > end:
                raise FLError(f"the federation did not finish in {timeout:g} s")
            time.sleep(poll)

    def table(self) -> list[dict[str, Any]]:
        """The ``round`` events (oldest first), without the event name."""
        return list(self.results)


def teeflow_command() -> str:
    """How to call this teeflow from a shell: ``teeflow`` when that is on PATH, else the
    console script next to this interpreter, else ``python -m teeflow``."""
    script = Path(sys.executable).parent / "teeflow"
    if script.is_file():
        on_path = shutil.which("teeflow")
        return "teeflow" if on_path and Path(on_path).resolve() == script.resolve() else str(script)
    return f"{shlex.quote(sys.executable)} -m teeflow"


def manual_commands(
    *,
    workdir: Path,
    kbs_url: str,
    parties: Sequence[str],
    options: DemoOptions,
    session: str,
    federation: str,
    min_clients: int,
    kbs_platform: Sequence[str] = ("--platform", "emulated-sgx"),
    workload_platform: Sequence[str] = ("--platform", "emulated-sgx"),
) -> list[tuple[str, str]]:
    """The shell commands that run each piece of the demo by hand, on the demo's files:
    ``[(what, command)]``, in order (restart the KBS on its pinned address, inspect, a new
    session with aggregator and clients, verify/open the model, audit; then how the setup
    was made, for a federation of your own). ``kbs_platform`` / ``workload_platform``: the
    platform options of the KBS and of the FL workloads."""
    q = shlex.quote
    kbs_plat = " ".join(q(a) for a in kbs_platform)
    wl_plat = " ".join(q(a) for a in workload_platform)
    tf = teeflow_command()
    w = workdir
    pin = q(str(w / "pin.json"))
    port = kbs_url.rsplit(":", 1)[-1]
    model = q(str(w / "aggregator" / f"{session}.model"))
    prov = q(str(w / "aggregator" / f"{session}.provenance.jsonl"))
    train = json.dumps(options.train_config(), sort_keys=True)
    owner = parties[0]
    new_session = f"{session}-2"
    db = q("sqlite:///" + str(w / "kbs.db"))
    home = q(str(w / "home"))
    state = q(str(w / "kbs-state"))
    agreement = q(str(w / "agreement.yaml"))
    sealed = q(str(w / "mnist.tar.sealed"))
    agg_state = q(str(w / "aggregator"))
    out = q(str(w / "model.safetensors"))
    cmds: list[tuple[str, str]] = [
        (
            "point teeflow at the demo's keys (emulation root, parties)",
            f"export TEEFLOW_HOME={home}",
        ),
        (
            "restart the KBS on its pinned address (own terminal)",
            f"{tf} kbs serve --db {db} --listen 127.0.0.1:{port} "
            f"--state-dir {state} --federation {federation} {kbs_plat}",
        ),
        ("inspect the signed agreement", f"{tf} agreement show {agreement}"),
        (
            "verify the KBS again and rewrite its pin",
            f"{tf} kbs verify {kbs_url} --reference-values {agreement} --allow-emulated -o {pin}",
        ),
        (
            f"{owner} (aggregator operator) enrolls the aggregator of the new session",
            f"{tf} party enroll --party {owner} --role aggregator --session {new_session} "
            f"--pin {pin} -o {q(str(w / 'enrollments' / 'aggregator.jwt'))}",
        ),
        (
            f"a new session: the aggregator (own terminal; outputs {new_session}.*)",
            f"{tf} aggregator run --enrollment {q(str(w / 'enrollments' / 'aggregator.jwt'))} "
            f"--pin {pin} --session {new_session} --rounds {options.rounds} "
            f"--min-clients {min_clients} --wait-clients {len(parties)} --listen 127.0.0.1:8450 "
            f"--package {sealed} --train-config {q(train)} --state-dir {agg_state} {wl_plat}",
        ),
    ]
    for i, p in enumerate(parties):
        token = q(str(w / "enrollments" / f"{p}-client.jwt"))
        cmds.append(
            (
                f"… {p} enrolls its client (its key signs; nobody else can)",
                f"{tf} party enroll --party {p} --role client --session {new_session} "
                f"--pin {pin} -o {token}",
            )
        )
        cmds.append(
            (
                f"… and the client of {p} (own terminal)",
                f"{tf} client run --enrollment {token} --party {p} --pin {pin} "
                f"--aggregator 127.0.0.1:8450 --data {q(options.data_spec(i))} --threads 1 "
                f"{wl_plat}",
            )
        )
    cmds += [
        (
            "verify the model's provenance (no key needed)",
            f"{tf} model verify {model} {prov} --ca {pin}",
        ),
        (f"open the model as {owner}", f"{tf} model open {model} --party {owner} -o {out}"),
        ("verify the KBS audit log", f"{tf} kbs audit verify --party {owner} --pin {pin}"),
        (
            "setup of a federation of your own: party keys (each party)",
            f"{tf} party keygen {owner}",
        ),
        (
            "… the package and its digest (the agreement lists it)",
            f"{tf} package build examples/mnist -o mnist.tar",
        ),
        (
            "… the workload measurements (the agreement's reference values)",
            f"{tf} kbs measurement; {tf} aggregator measurement; {tf} client measurement",
        ),
        (
            "… sign (each party) and submit the agreement",
            f"{tf} agreement sign agreement.yaml --party {owner}; "
            f"{tf} agreement submit agreement.yaml --pin pin.json",
        ),
        (
            "… seal and publish the package (a model owner)",
            f"{tf} package publish mnist.tar --pin pin.json --party {owner}",
        ),
    ]
    return cmds
