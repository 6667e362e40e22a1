"""Lean process entry points of the FL workloads (no typer, rich or click).

``python -m teeflow.fl.aggregator_main [run] OPTIONS`` and ``python -m teeflow.fl.client_main
[run] OPTIONS`` take exactly the options of ``teeflow aggregator run`` / ``teeflow client run``
(:mod:`teeflow.cli.fl_cmds`, ``docs/fl.md``) and print the same progress lines (timestamped
lines for people, or JSON lines with ``--json``: :mod:`teeflow.fl.console`); they are
what :class:`teeflow.fl.session.LocalFederation` starts. Compared with the full CLI they:

- parse options with :mod:`argparse` (the typer/rich/click stack is ~6 MB of resident memory
  that an SGX1 enclave would have to hold), and keep ``httpx``'s command-line module
  (``httpx._main``: rich, click, pygments) from being imported;
- (client) pin the BLAS/OpenMP thread pools to ``--threads`` (default 1) *before* torch or
  numpy load: on a small machine running many clients, one thread per process is much faster
  than each process spinning up a pool per core;
- exit with :func:`os._exit` once the run is over and stdout/stderr are flushed: the work is
  done, the stream closed and the temporary files removed, and tearing down a torch-laden
  interpreter takes seconds (much more on a loaded machine) for nothing.

Exit status: 0 on success; 1 after an ``error`` event (a :class:`teeflow.errors.Error`) or,
for a client, when a task failed or the aggregator ended the session as failed; 2 for
invalid options (argparse). ``TEEFLOW_DEBUG=1`` lets errors propagate with a traceback.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from teeflow.fl.console import EventPrinter

__all__ = [
    "METRICS_LISTEN_HELP",
    "aggregator_main",
    "aggregator_parser",
    "client_main",
    "client_parser",
]

#: Help of ``--metrics-listen`` (both aggregator entry points).
METRICS_LISTEN_HELP = (
    "HOST:PORT to serve Prometheus /metrics and the /v1/progress document on while the "
    "session runs (port 0: any; default: none). Not authenticated: bind to loopback or a "
    "network only the parties reach (docs/metrics.md)."
)

#: environment variables that size BLAS/OpenMP thread pools (read when the libraries load)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")



def _lean_imports() -> None:
    # httpx/__init__ imports its CLI (rich, click, pygments) when it can; a None entry in
    # sys.modules makes that import fail, and httpx then installs a stub ``main``.
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    if not os.environ.get("TEEFLOW_DEBUG"):
        # gRPC logs an ERROR line per handshake (no SNI name in workload certificates)
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")


def _config(text: str | None, what: str) -> dict[str, Any]:
    if not text:
        return {}
    from teeflow.errors import ParseError
    from teeflow.fl.transport.framing import decode_config

    try:
        return dict(decode_config(text))
    except ParseError as exc:
        raise ParseError(f"{what}: {exc}") from None


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    from teeflow.platform.selection import PLATFORM_NAMES

    p = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    p.add_argument("command", nargs="?", choices=["run"], default="run", help=argparse.SUPPRESS)
    # the platform options of every role (as teeflow.cli.platform_options)
    p.add_argument(
        "--platform", choices=PLATFORM_NAMES, default="auto",
        help="TEE platform ('auto': the TEE found, an error without one; emulated-*: software)",
    )  # fmt: skip
    p.add_argument("--tsm-root", type=Path, default=None, help="configfs-tsm report directory")
    p.add_argument("--gramine-root", type=Path, default=None, help="Gramine /dev/attestation")
    p.add_argument(
        "--gpu", default="none",
        help="GPU attester: none, nvml, emulated-hopper, emulated-blackwell",
    )  # fmt: skip
    p.add_argument(
        "--json", action="store_true",
        help="one JSON object per line (machines); default: timestamped lines for people",
    )  # fmt: skip
    return p


def _platform(a: argparse.Namespace) -> Any:
    from teeflow.platform.selection import PlatformOptions

    return PlatformOptions(a.platform, tsm_root=a.tsm_root, gramine_root=a.gramine_root)


def _enrollment_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--enrollment", type=Path, required=True,
                   help="enrollment token file of the party this workload acts for")


def aggregator_parser() -> argparse.ArgumentParser:
    """Options of ``teeflow aggregator run`` (same names and defaults)."""
    p = _parser("python -m teeflow.fl.aggregator_main", "Run the attested FL aggregator.")
    _enrollment_option(p)
    p.add_argument("--pin", type=Path, required=True, help="KBS pin file")
    p.add_argument("--session", required=True, help="session name")
    p.add_argument("--rounds", type=int, required=True, help="rounds to run (in all)")
    p.add_argument("--min-clients", type=int, required=True, help="K: fewest updates")
    p.add_argument("--kbs", default=None, help="KBS URL (default: the pin's)")
    p.add_argument("--fraction-fit", type=float, default=None,
                   help="check only: must equal the agreement's training.fraction_fit")
    p.add_argument("--strategy", default=None,
                   help="check only: must equal the agreement's training.strategy.name")
    p.add_argument("--listen", default="127.0.0.1:8450", help="HOST:PORT (port 0: any)")
    p.add_argument("--state-dir", type=Path, default=Path("aggregator-state"),
                   help="folder of checkpoints and the provenance log")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="resume from this checkpoint file")
    p.add_argument("--out", type=Path, default=None, help="model output folder")
    p.add_argument("--package", type=Path, default=None, help="sealed package for clients")
    p.add_argument("--package-ref", default=None,
                   help="agreement package NAME or DIGEST (default: the only one)")
    p.add_argument("--wait-clients", type=int, default=None,
                   help="clients to wait for before round 1 (default K)")
    p.add_argument("--connect-timeout", type=float, default=120.0,
                   help="seconds to wait for clients")
    p.add_argument("--round-timeout", type=float, default=300.0, help="seconds a round may take")
    p.add_argument("--train-config", default=None, help="JSON object sent with every train task")
    p.add_argument("--evaluate-config", default=None,
                   help="JSON object sent with every evaluate task")
    p.add_argument("--seed", type=int, default=0, help="seed of client selection")
    p.add_argument("--manifest", type=Path, default=None,
                   help="Gramine manifest whose trusted files are measured")
    p.add_argument("--metrics-listen", default=None, help=METRICS_LISTEN_HELP)
    return p


def client_parser() -> argparse.ArgumentParser:
    """Options of ``teeflow client run`` (same names and defaults)."""
    p = _parser("python -m teeflow.fl.client_main", "Run an attested FL client.")
    _enrollment_option(p)
    p.add_argument("--party", required=True, help="the party it acts for (enrolled)")
    p.add_argument("--pin", type=Path, required=True, help="KBS pin file")
    p.add_argument("--aggregator", required=True, help="HOST:PORT")
    p.add_argument("--data", required=True, help="data spec (teeflow.datasets)")
    p.add_argument("--kbs", default=None, help="KBS URL (default: the pin's)")
    p.add_argument("--package-file", type=Path, default=None,
                   help="sealed package file (default: sent by the aggregator)")
    p.add_argument("--package-ref", default=None,
                   help="agreement package NAME or DIGEST (default: the only one)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the package is unpacked (default: a temporary folder)")
    p.add_argument("--manifest", type=Path, default=None,
                   help="Gramine manifest whose trusted files are measured")
    p.add_argument("--connect-timeout", type=float, default=60.0,
                   help="seconds to reach the aggregator")
    p.add_argument(
        "--threads", type=int, default=1, help="torch/BLAS threads (0: the libraries' default)"
    )
    p.add_argument("--session", default=None, help="session to join (bound in its claims)")
    p.add_argument(
        "--rejoin", type=int, default=3,
        help="times a dropped client attests again and reconnects (0: never)",
    )
    return p


def _finish(code: int) -> NoReturn:
    try:
        atexit._run_exitfuncs()  # registered exit hooks still run (profilers, probes)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _run(body: Callable[[], object], exit_process: bool, printer: EventPrinter) -> int:
    from teeflow.errors import Error

    code = 0
    try:
        code = 1 if body() is False else 0
    except Error as exc:
        fields = {"code": exc.code, "type": type(exc).__name__, "message": str(exc)}
        if printer.json_mode:
            printer("error", fields)
        else:
            EventPrinter(stream=sys.stderr)("error", fields)
        if os.environ.get("TEEFLOW_DEBUG"):
            raise
        if printer.json_mode:
            sys.stderr.write(f"error ({exc.code}): {exc}\n")
        code = 1
    if exit_process:
        _finish(code)
    return code


def aggregator_main(argv: Sequence[str] | None = None, *, exit_process: bool = True) -> int:
    """``python -m teeflow.fl.aggregator_main``: run the aggregator (module docstring).

    Returns the exit status when ``exit_process`` is false (tests), else never returns.
    """
    _lean_imports()
    a = aggregator_parser().parse_args(argv)
    printer = EventPrinter(json_mode=a.json)

    def body() -> None:
        from teeflow.fl.aggregator import Aggregator, AggregatorOptions

        options = AggregatorOptions(
            pin=a.pin,
            session=a.session,
            rounds=a.rounds,
            min_clients=a.min_clients,
            kbs_url=a.kbs,
            fraction_fit=a.fraction_fit,
            strategy=a.strategy,
            listen=a.listen,
            state_dir=a.state_dir,
            checkpoint=a.checkpoint,
            out_dir=a.out,
            package=a.package,
            package_ref=a.package_ref,
            wait_clients=a.wait_clients,
            connect_timeout=a.connect_timeout,
            round_timeout=a.round_timeout,
            train_config=_config(a.train_config, "--train-config"),
            evaluate_config=_config(a.evaluate_config, "--evaluate-config"),
            seed=a.seed,
            manifest=a.manifest,
            platform=_platform(a),
            enrollment=a.enrollment,
            gpu=a.gpu,
            metrics_listen=a.metrics_listen,
        )
        Aggregator(options, printer).run()

    return _run(body, exit_process, printer)


def client_main(argv: Sequence[str] | None = None, *, exit_process: bool = True) -> int:
    """``python -m teeflow.fl.client_main``: run a client (module docstring).

    Returns the exit status when ``exit_process`` is false (tests), else never returns.
    """
    _lean_imports()
    a = client_parser().parse_args(argv)
    printer = EventPrinter(json_mode=a.json)
    if a.threads > 0:
        for name in THREAD_VARIABLES:
            os.environ[name] = str(a.threads)

    def body() -> bool:
        from teeflow.fl.client import Client, ClientOptions

        return Client(
            ClientOptions(
                party=a.party,
                pin=a.pin,
                aggregator=a.aggregator,
                data=a.data,
                kbs_url=a.kbs,
                package_file=a.package_file,
                package_ref=a.package_ref,
                workdir=a.workdir,
                manifest=a.manifest,
                connect_timeout=a.connect_timeout,
                threads=a.threads,
                session=a.session,
                platform=_platform(a),
                enrollment=a.enrollment,
                gpu=a.gpu,
                rejoin=max(a.rejoin, 0),
            ),
            printer,
        ).run().ok

    return _run(body, exit_process, printer)
