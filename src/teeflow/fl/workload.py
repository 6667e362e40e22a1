"""Workload identity of the FL runtime: built-in manifests and measurements, and the
records an aggregator run produces.

:func:`fl_manifest` is the built-in workload manifest of the ``aggregator`` and ``client``
roles — every source file of the installed teeflow package (as the KBS manifest,
:func:`teeflow.kbs.service.self_attestation.kbs_manifest`) with entrypoint ``teeflow <role> run`` —
whose measurement the emulated platform quotes unless a ``--manifest`` is given
(:func:`fl_measurement`). ``teeflow aggregator measurement`` / ``teeflow client measurement``
print the values the agreement lists under ``workloads``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import teeflow
from teeflow.errors import FLError
from teeflow.fl.strategy.base import Metrics
from teeflow.workload.manifest import WorkloadManifest, measurement
from teeflow.workload.runtime import start_workload

__all__ = ["AggregatorResult", "RoundReport", "fl_manifest", "fl_measurement", "parse_listen"]


@functools.lru_cache(maxsize=4)
def fl_manifest(role: str) -> WorkloadManifest:
    """Built-in workload manifest of ``role`` (``aggregator`` | ``client``): every source file
    of the installed teeflow package (as the KBS manifest), entrypoint ``teeflow <role> run``.

    Raises:
        FLError: unknown role. WorkloadError: a file cannot be read.
    """
    if role not in ("aggregator", "client"):
        raise FLError(f"no built-in manifest for role {role!r}")
    from teeflow.kbs.service.self_attestation import kbs_manifest

    root = Path(teeflow.__file__).parent
    files = [f.path for f in kbs_manifest(root).trusted_files]
    return WorkloadManifest.build(
        root,
        entrypoint=["teeflow", role, "run"],
        files=files,
        name=f"teeflow-{role}",
        version=teeflow.__version__,
    )


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``; port 0 = ephemeral) → ``(host, port)``.

    Raises:
        FLError: malformed address or port outside 0..65535.
    """
    host, sep, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise FLError(f"--listen expects HOST:PORT, got {listen!r}")
    return host, int(port)


def fl_measurement(role: str, manifest_path: Path | None = None) -> bytes:
    """The 32-byte measurement of ``role``: of ``manifest_path`` (trusted files re-hashed first:
    :func:`teeflow.workload.runtime.start_workload`) or of :func:`fl_manifest`.

    Raises:
        WorkloadError: a trusted file differs or the manifest cannot be read.
    """
    if manifest_path is not None:
        return start_workload(manifest_path).measurement
    return measurement(fl_manifest(role))


@dataclass(frozen=True)
class RoundReport:
    """One committed round (round 0: the initial model's evaluation).

    ``agreement_version``: the agreement in force for the round; ``attestation_age``: the
    oldest participant attestation in seconds at round start; ``dropped``: ``{party:
    reason}`` (issue 11; None / empty for round 0)."""

    round: int
    clients: tuple[str, ...]
    metrics: Metrics
    seconds: float
    digest: str
    agreement_version: int | None = None
    attestation_age: float | None = None
    dropped: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AggregatorResult:
    """The session's outcome."""

    session: str
    rounds: int
    resumed_from: int
    model_path: Path
    provenance_path: Path
    reports: tuple[RoundReport, ...]
