"""Timing probe for the teeflow part of ``bench/fl_mnist.py`` (benchmark only, never shipped).

``bench/_fl_teeflow.py`` puts this folder first on ``PYTHONPATH`` of the aggregator and client
processes and sets ``FLBENCH_PROBE_DIR``; Python then imports this ``sitecustomize`` at start-up.
It installs a post-import hook that wraps the security-relevant functions of the teeflow
runtime (listed in ``_TARGETS``) with a wall-clock timer, and at exit writes
``$FLBENCH_PROBE_DIR/<pid>.json``: per function, calls and seconds; per category
(``attestation``, ``tls``, ``sealing``, ``provenance``) the *outermost* seconds (a timed call
inside another timed call is not counted twice). Names that do not exist (the runtime changed)
are listed under ``missing`` instead of failing. gRPC's TLS handshakes and record encryption
run in its C core and cannot be seen from here: ``tls`` covers only the client's
``AggregatorStream.open`` (connect + handshake + Hello/Welcome + identity check).
"""

from __future__ import annotations

import atexit
import functools
import importlib.abc
import importlib.machinery
import json
import os
import sys
import threading
import time
from typing import Any

_DIR = os.environ.get("FLBENCH_PROBE_DIR")

# module -> [(qualified attribute, category)]
_TARGETS: dict[str, list[tuple[str, str]]] = {
    "teeflow.kbs.client.sdk": [
        ("KbsClient.attest", "attestation"),
        ("KbsClient.get_certificate", "attestation"),
        ("KbsClient.check_certificate", "attestation"),
        ("KbsClient.get_resource", "attestation"),
        ("KbsClient.current_agreement", "attestation"),
        ("KbsClient.get_counter", "sealing"),  # rollback protection (checkpoint counter)
    ],
    "teeflow.fl.aggregator": [
        ("fl_measurement", "attestation"),
        ("Aggregator._commit", "sealing"),  # encode + seal checkpoint + fsync + KBS counter
        ("seal_model", "sealing"),
        ("arrays_digest", "provenance"),
        ("save_provenance", "provenance"),
    ],
    "teeflow.fl.client": [
        ("fl_measurement", "attestation"),
        # issue 11: a client's per-round re-attestation happens inside the aggregator's
        # admission (LiveTrust.before_round waits for it): counted there, on the critical
        # path, and reported separately here
        ("Client._reattest", "reattest"),
        ("open_package", "sealing"),
        ("unpack_package", "sealing"),  # digest check of the opened archive
    ],
    "teeflow.fl.checkpoint": [("CheckpointStore.load", "sealing")],
    "teeflow.fl.provenance_log": [
        ("ProvenanceLog.start", "provenance"),
        ("ProvenanceLog.record_round", "provenance"),
        ("ProvenanceLog.finish", "provenance"),
    ],
    "teeflow.fl.transport.client": [("AggregatorStream.open", "tls")],
    # issue 11: the per-round admission (agreement in force, re-attestation of the aggregator
    # and of every client, which the round waits for) is on the critical path
    "teeflow.fl.liveness": [("LiveTrust.before_round", "attestation")],
}

_local = threading.local()
_lock = threading.Lock()
_calls: dict[str, list[float]] = {}  # name -> [calls, seconds]
_outer: dict[str, float] = {}  # category -> outermost seconds
_missing: list[str] = []
_T0 = time.perf_counter()


def _wrap(fn: Any, name: str, category: str) -> Any:
    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        depth = getattr(_local, "depth", 0)
        _local.depth = depth + 1
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            dt = time.perf_counter() - t0
            _local.depth = depth
            with _lock:
                rec = _calls.setdefault(name, [0, 0.0])
                rec[0] += 1
                rec[1] += dt
                if depth == 0:
                    _outer[category] = _outer.get(category, 0.0) + dt

    timed.__flbench_wrapped__ = True  # type: ignore[attr-defined]
    return timed


def _patch(module: Any) -> None:
    for qual, category in _TARGETS.get(module.__name__, []):
        owner: Any = module
        parts = qual.split(".")
        try:
            for p in parts[:-1]:
                owner = getattr(owner, p)
            fn = getattr(owner, parts[-1])
        except AttributeError:
            _missing.append(f"{module.__name__}.{qual}")
            continue
        if not getattr(fn, "__flbench_wrapped__", False):
            setattr(owner, parts[-1], _wrap(fn, f"{module.__name__}.{qual}", category))


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create_module(self, spec: Any) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.inner.exec_module(module)
        _patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in _TARGETS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def _dump() -> None:
    if not _DIR:
        return
    out = {
        "pid": os.getpid(),
        "argv": sys.argv[:4],
        "process_seconds": time.perf_counter() - _T0,
        "calls": {k: {"calls": v[0], "seconds": v[1]} for k, v in sorted(_calls.items())},
        "categories": _outer,
        "missing": _missing,
    }
    try:
        with open(os.path.join(_DIR, f"{os.getpid()}.json"), "w") as f:
            json.dump(out, f, indent=1)
    except OSError:
        pass


if _DIR:
    sys.meta_path.insert(0, _Finder())
    atexit.register(_dump)
