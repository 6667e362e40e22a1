"""``teeflow demo --serve``: after training, serve the model confidentially (issue 12).

The agreement of a serve demo has ``workloads.serve``, ``outputs.serve`` (hospital-a) and
``serving`` (end-to-end encryption required; hospital-b may call), so the aggregator also
seals the final model for the serving role (``<session>.serve``, under the KBS-generated
``fl/serve-key/<session>``). :func:`run_serve_stage` then:

1. hospital-a (model owner) enrolls the serving workload (role ``serve``);
2. starts ``teeflow serve`` as a process on the demo's platform (the same ``--platform`` and
   stand-in options as the FL workloads): it attests, receives its certificate and the model
   key from the KBS and unseals the model in memory;
3. hospital-b verifies the server's attestation (:class:`teeflow.serve.client.Client`) and
   sends :data:`SERVE_REQUESTS` end-to-end encrypted, party-signed requests, one held-out
   test image each; accuracy against the labels and p50/p99 latency are measured;
4. stops the server (it writes its last signed usage batch) and counts the requests the KBS
   audit log attributes to hospital-b.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from teeflow.errors import FLError

__all__ = ["SERVE_REQUESTS", "run_serve_stage", "serve_commands"]

#: Requests hospital-b sends in the demo.
SERVE_REQUESTS = 100


def _wait_port(port: int, proc: Any, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.returncode is not None:
            raise FLError(f"teeflow serve exited; log:\n{proc.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise FLError(f"teeflow serve did not listen within {timeout:g} s; log:\n{proc.log_tail()}")


def run_serve_stage(
    *,
    lf: Any,
    step: Callable[[str], AbstractContextManager[list[str]]],
    platform_args: tuple[str, ...],
    keys: dict[str, Any],
    parties: list[str],
    pin_path: Path,
    serving_model: Path,
    archive_path: Path,
    federation: str,
    source: str,
    model: str,
    timeout: float = 180.0,
) -> dict[str, Any]:
    """Run the serving stage (module docstring) → the ``serve`` part of the demo summary:
    ``requests``, ``accuracy``, ``p50_ms``, ``p99_ms``, ``audited_requests``, ``server``
    (``tee``, ``measurement``, ``emulated``), ``model_digest``.

    Args:
        lf: the demo's :class:`teeflow.fl.session.LocalFederation` (processes, enrollment).
        step: the demo's step recorder; platform_args: ``--platform NAME`` and its options.
        keys, parties: the parties' keys and names (first: owner; second: caller).

    Raises:
        FLError: the server did not start or a request failed. KbsError, VerificationError:
            the attestation or the audit log did not verify.
    """
    from teeflow.datasets import load_full_dataset, parse_data_spec
    from teeflow.fl.session import WorkloadProcess, free_port
    from teeflow.kbs.client.pinning import Pin
    from teeflow.kbs.client.sdk import KbsClient
    from teeflow.kbs.service.usage import usage_of
    from teeflow.serve.client import Client

    owner, caller = parties[0], parties[1 % len(parties)]
    pin = Pin.load(pin_path)
    with step(f"serving workload enrolled by {owner} (model owner)") as d:
        token = lf.enroll(keys[owner], "serve", federation=federation)
        d.append(str(token))
    port = free_port()
    argv = [sys.executable, "-m", "teeflow", "serve", "--model", str(serving_model),
            "--pin", str(pin_path), "--package", str(archive_path), "--enrollment", str(token),
            "--listen", f"127.0.0.1:{port}", "--log-level", "warning",
            "--config", json.dumps({"model": model, "threads": 1}), *platform_args]
    proc = WorkloadProcess("serve", argv, env=lf.env, logs=lf.logs, cwd=lf.workdir)
    lf.processes.append(proc)
    out: dict[str, Any] = {}
    try:
        with step("model served: attested, key from the KBS, unsealed in memory only") as d:
            _wait_port(port, proc, timeout)
            url = f"https://127.0.0.1:{port}"
            client = Client(url, pin=pin, party=keys[caller])
            identity = client.verify_server()
            out["server"] = {"tee": identity.tee, "measurement": identity.measurement,
                             "emulated": identity.emulated}
            out["model_digest"] = client.model_digest
            d += [url, f"serve certificate: {identity.tee}, measurement "
                       f"{identity.measurement[:16]}…"]
        with step(f"{caller} sent {SERVE_REQUESTS} end-to-end encrypted requests") as d:
            test = load_full_dataset(parse_data_spec(source)).test
            x, y = test.features(), np.asarray(test.y)
            lat, correct = [], 0
            with client:
                for i in range(SERVE_REQUESTS):
                    j = i % len(y)
                    t0 = time.perf_counter()
                    got = client.infer({"input": x[j : j + 1]})
                    lat.append((time.perf_counter() - t0) * 1e3)
                    correct += int(got["label"][0] == y[j])
            lat.sort()
            out |= {"requests": SERVE_REQUESTS, "accuracy": correct / SERVE_REQUESTS,
                    "p50_ms": lat[len(lat) // 2],
                    "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))]}
            d.append(f"accuracy {out['accuracy']:.2f}, p50 {out['p50_ms']:.1f} ms, "
                     f"p99 {out['p99_ms']:.1f} ms")
    finally:
        proc.stop(timeout=20.0)  # SIGTERM: the server writes its last usage batch
    with step("usage read from the KBS audit log (signed batches)") as d:
        with KbsClient(None, pin, party=keys[owner]) as kbs:
            entries = kbs.audit()
        usage = [e for e in entries if e.kind == "usage"
                 and e.subject == f"serve:{out.get('model_digest')}"]
        out["audited_requests"] = sum(usage_of(e.data)[0].get(caller, 0) for e in usage)
        d.append(f"{out['audited_requests']} requests by {caller} in {len(usage)} batch(es)")
    return out


def serve_commands(workdir: Path, parties: list[str], serving_model: str,
                   platform_args: tuple[str, ...]) -> list[tuple[str, str]]:
    """The serving stage's commands, to run by hand (``(what, command)`` pairs, as
    :func:`teeflow.demo.fl_support.manual_commands`)."""
    import shlex

    from teeflow.demo.fl_support import teeflow_command

    tf, w = teeflow_command(), shlex.quote(str(workdir))
    owner = parties[0]
    return [
        (f"{owner} enrolls a serving workload",
         f"{tf} party enroll --party {owner} --role serve --pin {w}/pin.json "
         f"-o {w}/serve.jwt"),
        ("the serving workload (own terminal): attests, gets the model key, serves OIP",
         f"{tf} serve --model {shlex.quote(serving_model)} --package {w}/mnist.tar "
         f"--pin {w}/pin.json --enrollment {w}/serve.jwt --listen 127.0.0.1:8443 "
         + " ".join(shlex.quote(a) for a in platform_args)),
        (f"or: {owner} publishes the model it opened for serving (its own key in the KBS)",
         f"{tf} model publish {w}/aggregator/demo.model --party {owner} --serve "
         f"--pin {w}/pin.json"),
    ]
