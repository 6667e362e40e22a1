"""Run a local federation as separate processes (tests, ``teeflow demo``, benchmarks).

:class:`LocalFederation` starts workloads as child processes and stops every one of them when
it exits — normally, on an exception, or on Ctrl-C (``KeyboardInterrupt``) — and, with
``handle_signals=True``, on SIGTERM too:

- :meth:`LocalFederation.start_kbs` — ``teeflow kbs serve --platform P`` (SQLite) on a free
  loopback port; returns once it accepts connections (:class:`KbsProcess`, with its URL and
  measurement);
- :meth:`LocalFederation.start_aggregator` — ``teeflow aggregator run`` through the lean entry
  point :mod:`teeflow.fl.aggregator_main` (no CLI stack: the aggregator loads only what it
  needs) with ``MALLOC_ARENA_MAX=2`` (fewer glibc arenas for its gRPC threads: lower peak
  RSS); returns once it listens (:class:`AggregatorProcess`, with its address);
- :meth:`LocalFederation.start_client` — ``teeflow client run`` through
  :mod:`teeflow.fl.client_main`;
- :meth:`LocalFederation.enroll` — a party's signed enrollment of a workload (a token file
  under ``<workdir>/enrollments``) for the ``enrollment=`` argument of the two above: each
  workload acts for the party that enrolled it (the aggregator for its operator, each client
  for its data owner) and the KBS refuses a workload without one.

Every workload gets ``--platform``: the federation's (``platform=``) for the aggregator and
clients, the one given to :meth:`~LocalFederation.start_kbs` for the KBS — always named
explicitly (emulated platforms are never a default).

Each :class:`WorkloadProcess` reads the child's JSON progress lines (stdout; the FL workloads
run with ``--json``) in a thread into :attr:`~WorkloadProcess.events`; the log file
``<workdir>/logs/<name>.log`` gets the child's stderr and every event as a timestamped
human-readable line (:func:`teeflow.fl.console.format_event`).
:meth:`WorkloadProcess.wait_event` waits (bounded) for an event; :meth:`AggregatorProcess.
rounds` gives the per-round metrics (``round`` events: ``round``, ``clients``, ``seconds``,
``train_loss``, ``eval_accuracy``, ...). Every wait has a timeout and raises
:class:`~teeflow.errors.FLError` with the tail of the log when the process ends first.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from teeflow.errors import FLError
from teeflow.fl.console import format_event, format_time

if TYPE_CHECKING:
    from teeflow.kbs.policy.parties import PartyKeys

__all__ = [
    "AGGREGATOR_COMMAND",
    "AGGREGATOR_ENV",
    "CLIENT_COMMAND",
    "FL_COMMAND",
    "TEEFLOW_COMMAND",
    "AggregatorProcess",
    "KbsProcess",
    "LocalFederation",
    "WorkloadProcess",
    "free_port",
]

#: argv prefix of the FL workloads through the CLI (``aggregator run`` / ``client run`` follow).
FL_COMMAND: tuple[str, ...] = (sys.executable, "-m", "teeflow.cli.fl_cmds")
#: argv prefix of the aggregator (lean entry point; the options follow).
AGGREGATOR_COMMAND: tuple[str, ...] = (sys.executable, "-m", "teeflow.fl.aggregator_main")
#: argv prefix of a client (lean entry point; the options follow).
CLIENT_COMMAND: tuple[str, ...] = (sys.executable, "-m", "teeflow.fl.client_main")
#: environment defaults of the aggregator process (overridable through ``env``)
AGGREGATOR_ENV: dict[str, str] = {"MALLOC_ARENA_MAX": "2", "OPENBLAS_NUM_THREADS": "1"}
#: argv prefix of the full CLI (``kbs serve``).
TEEFLOW_COMMAND: tuple[str, ...] = (sys.executable, "-m", "teeflow")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


class WorkloadProcess:
    """A child process that prints JSON progress lines (module docstring).

    Args:
        name: short name (log file ``<logs>/<name>.log``).
        argv: the command.
        env: the environment.
        logs: folder for the stderr log.
        cwd: working directory.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        logs: Path,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._cond = threading.Condition()
        self._eof = False
        self.proc = subprocess.Popen(  # noqa: S603 - argv built by this module, no shell
            self.argv,
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name=f"events-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            text = line.strip()
            if not text:
                continue
            try:
                event = json.loads(text)
            except ValueError:
                event = None
            with self._cond:
                if isinstance(event, dict) and "event" in event:
                    event.setdefault("_time", time.monotonic())
                    self.events.append(event)
                else:
                    self.lines.append(text)
                self._cond.notify_all()
            self._log_line(event if isinstance(event, dict) and "event" in event else None, text)
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _log_line(self, event: dict[str, Any] | None, text: str) -> None:
        # the log holds the workload's events as timestamped lines next to its stderr
        line = format_event(event) if event is not None else text
        with contextlib.suppress(OSError, ValueError):  # ValueError: log closed by stop()
            self._log.write(f"{format_time(datetime.now(UTC))}  {line}\n".encode())
            self._log.flush()

    @property
    def pid(self) -> int:
        """Process id."""
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit status, or None while running."""
        return self.proc.poll()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the stderr log (for error messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def error(self) -> dict[str, Any] | None:
        """The ``error`` event, if the workload reported one."""
        return next((e for e in self.events if e["event"] == "error"), None)

    def wait_event(
        self,
        name: str,
        timeout: float,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        *,
        start: int = 0,
    ) -> dict[str, Any]:
        """The first event called ``name`` (index ≥ ``start``) matching ``predicate``.

        Raises:
            FLError: the process ended or reported an error first, or ``timeout`` seconds
                passed.
        """
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events[start:]:
                    if e["event"] == name and (predicate is None or predicate(e)):
                        return e
                err = self.error()
                if err is not None and name != "error":
                    raise FLError(f"{self.name} failed: {err.get('message')}")
                left = end - time.monotonic()
                if self._eof or left <= 0:
                    why = "exited" if self._eof else f"did not report {name!r} in {timeout:g} s"
                    raise FLError(f"{self.name} {why}; log:\n{self.log_tail()}")
                self._cond.wait(min(left, 0.5))

    def wait(self, timeout: float) -> int:
        """Wait for the exit status (at most ``timeout`` seconds).

        Raises:
            FLError: still running after ``timeout``.
        """
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise FLError(f"{self.name} still running after {timeout:g} s") from None
        self._reader.join(5)
        return code

    def signal(self, sig: int) -> None:
        """Send a signal (no-op once exited)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL (a crash, as far as peers can tell)."""
        self.signal(signal.SIGKILL)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; close the log."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self.proc.wait(timeout=timeout)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


class KbsProcess(WorkloadProcess):
    """``teeflow kbs serve`` (:meth:`LocalFederation.start_kbs`)."""

    url: str = ""
    measurement: str = ""
    #: the RCAR tee of its evidence and its attester kind (``kbs serve``'s platform line)
    tee: str = ""
    attester: str = ""


class AggregatorProcess(WorkloadProcess):
    """``teeflow aggregator run`` (:meth:`LocalFederation.start_aggregator`)."""

    port: int = 0

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>`` for clients."""
        return f"127.0.0.1:{self.port}"

    def rounds(self) -> list[dict[str, Any]]:
        """The ``round`` events so far (round 0: the initial model), oldest first."""
        with self._cond:
            return [e for e in self.events if e["event"] == "round"]

    def wait_done(self, timeout: float) -> dict[str, Any]:
        """The ``done`` event (paths of the model and provenance, digest, ...).

        Raises:
            FLError: the aggregator failed or timed out.
        """
        return self.wait_event("done", timeout)


class LocalFederation:
    """Processes of one local federation (module docstring).

    Args:
        workdir: folder for logs and state.
        home: ``TEEFLOW_HOME`` of the children (emulation authority, party keys).
        platform: ``--platform`` of the aggregator and clients (a name of
            :data:`teeflow.platform.PLATFORM_NAMES`; development and tests name an emulated
            platform explicitly, e.g. ``emulated-sgx``).
        platform_args: further platform options of the workloads (``--tsm-root DIR`` …).
        env: extra environment variables.
        handle_signals: turn SIGTERM into :class:`SystemExit` while in the ``with`` block
            (main thread only), so the children are stopped.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        platform: str,
        platform_args: Sequence[str] = (),
        home: Path | None = None,
        env: Mapping[str, str] | None = None,
        handle_signals: bool = False,
    ) -> None:
        from teeflow.platform.selection import check_platform_name

        self.platform = check_platform_name(platform)
        self.platform_args = list(platform_args)
        self.workdir = Path(workdir)
        self.logs = self.workdir / "logs"
        self.env = dict(os.environ)
        if home is not None:
            self.env["TEEFLOW_HOME"] = str(home)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.env.setdefault("GRPC_VERBOSITY", "NONE")
        self.env.update(env or {})
        self.processes: list[WorkloadProcess] = []
        self._handle_signals = handle_signals
        self._previous: Any = None

    def __enter__(self) -> LocalFederation:
        if self._handle_signals and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, _to_exit)
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _start(
        self,
        cls: type[WorkloadProcess],
        name: str,
        argv: Sequence[str],
        defaults: Mapping[str, str] | None = None,
    ) -> Any:
        env = {**(defaults or {}), **self.env}
        proc = cls(name, argv, env=env, logs=self.logs, cwd=self.workdir)
        self.processes.append(proc)
        return proc

    def stop_all(self, timeout: float = 10.0) -> None:
        """Stop every child (newest first)."""
        for proc in reversed(self.processes):
            with contextlib.suppress(Exception):
                proc.stop(timeout)

    def start_kbs(
        self,
        *,
        db: str | None = None,
        platform: str,
        platform_args: Sequence[str] = (),
        federation: str = "demo",
        state_dir: Path | None = None,
        timeout: float = 60.0,
        expect_agreement: str | None = None,
        insecure_first_agreement: bool = False,
    ) -> KbsProcess:
        """Start ``teeflow kbs serve --platform PLATFORM`` on a free loopback port and wait
        until it accepts (``platform_args``: further platform options).

        ``expect_agreement`` (64 hex or an agreement file) fixes the first agreement (the
        KBS refuses to start on an empty store without it, unless
        ``insecure_first_agreement``).

        Raises:
            FLError: it did not start within ``timeout`` seconds.
        """
        port = free_port()
        database = db or f"sqlite:///{self.workdir / 'kbs.db'}"
        state = state_dir or self.workdir / "kbs-state"
        argv = [
            *TEEFLOW_COMMAND,
            "kbs",
            "serve",
            "--db",
            database,
            "--listen",
            f"127.0.0.1:{port}",
            "--state-dir",
            str(state),
            "--federation",
            federation,
            "--log-level",
            "warning",
            "--platform",
            platform,
            *platform_args,
        ]
        if expect_agreement is not None:
            argv += ["--expect-agreement", expect_agreement]
        if insecure_first_agreement:
            argv.append("--insecure-first-agreement")
        kbs: KbsProcess = self._start(KbsProcess, "kbs", argv)
        end = time.monotonic() + timeout
        while True:
            mr = next((ln.split()[1] for ln in kbs.lines if ln.startswith("measurement")), None)
            plat = next((ln.split() for ln in kbs.lines if ln.startswith("platform ")), None)
            if mr and plat and _accepts("127.0.0.1", port):
                break
            if kbs.returncode is not None or time.monotonic() > end:
                raise FLError(f"kbs serve did not start; log:\n{kbs.log_tail()}")
            time.sleep(0.1)
        kbs.url = f"https://127.0.0.1:{port}"
        kbs.measurement = mr
        # "platform <tee> (attester <kind>)"
        kbs.tee, kbs.attester = plat[1], plat[-1].rstrip(")") if len(plat) >= 4 else ""
        return kbs

    def enroll(
        self,
        keys: PartyKeys,
        role: str,
        *,
        federation: str,
        session: str | None = None,
        uses: int | None = None,
        expires: float = 86400.0,
    ) -> Path:
        """Sign ``keys``' enrollment of a ``role`` workload (see
        :func:`teeflow.kbs.policy.enrollment.issue_enrollment`; ``expires`` in seconds) and
        write it to ``<workdir>/enrollments/<party>-<role>[-<session>].jwt`` (mode 0600).

        Returns:
            The token file, for ``enrollment=`` of :meth:`start_aggregator` /
            :meth:`start_client`.

        Raises:
            ParseError: invalid fields.
        """
        from datetime import UTC, datetime, timedelta

        from teeflow._fs import atomic_write, ensure_private_dir
        from teeflow.kbs.policy.enrollment import issue_enrollment

        token = issue_enrollment(
            keys, federation=federation, role=role, now=datetime.now(UTC),
            expires=timedelta(seconds=expires), session=session, uses=uses,
        )
        folder = self.workdir / "enrollments"
        ensure_private_dir(folder)
        path = folder / "-".join(p for p in (keys.name, role, session) if p)
        path = path.with_name(path.name + ".jwt")
        atomic_write(path, token.encode("ascii") + b"\n")
        return path

    def start_aggregator(
        self,
        *,
        pin: Path,
        enrollment: Path,
        session: str,
        rounds: int,
        min_clients: int,
        name: str = "aggregator",
        extra: Sequence[str] = (),
        timeout: float = 60.0,
        wait_listening: bool = True,
        **options: Any,
    ) -> AggregatorProcess:
        """Start ``teeflow aggregator run`` on an ephemeral port (``--listen 127.0.0.1:0``
        unless ``listen=`` is given). ``options`` map to CLI options (``wait_clients=3`` →
        ``--wait-clients 3``; dicts are passed as JSON). Returns once it listens (unless
        ``wait_listening=False``).

        Raises:
            FLError: it failed or did not listen within ``timeout`` seconds.
        """
        options.setdefault("listen", "127.0.0.1:0")
        options.setdefault("state_dir", self.workdir / "aggregator")
        argv = [
            *AGGREGATOR_COMMAND,
            "--enrollment",
            str(enrollment),
            "--pin",
            str(pin),
            "--session",
            session,
            "--rounds",
            str(rounds),
            "--min-clients",
            str(min_clients),
            "--platform",
            self.platform,
            "--json",
            *self.platform_args,
            *_options(options),
            *extra,
        ]
        agg: AggregatorProcess = self._start(AggregatorProcess, name, argv, AGGREGATOR_ENV)
        if wait_listening:
            agg.port = int(agg.wait_event("listening", timeout)["port"])
        return agg

    def start_client(
        self,
        *,
        party: str,
        pin: Path,
        enrollment: Path,
        aggregator: str,
        data: str,
        name: str | None = None,
        extra: Sequence[str] = (),
        **options: Any,
    ) -> WorkloadProcess:
        """Start ``teeflow client run`` (``options`` as in :meth:`start_aggregator`)."""
        argv = [
            *CLIENT_COMMAND,
            "--enrollment",
            str(enrollment),
            "--party",
            party,
            "--pin",
            str(pin),
            "--aggregator",
            aggregator,
            "--data",
            data,
            "--platform",
            self.platform,
            "--json",
            *self.platform_args,
            *_options(options),
            *extra,
        ]
        proc: WorkloadProcess = self._start(WorkloadProcess, name or f"client-{party}", argv)
        return proc


def _options(options: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif isinstance(value, dict):
            out += [flag, json.dumps(value, sort_keys=True)]
        else:
            out += [flag, str(value)]
    return out


def _to_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
