"""teeflow.compute: authorised confidential compute (TEEU) over several parties' sealed data.

An agreed function (``package:function`` of a compute package in the federation agreement)
runs inside an attested compute worker over inputs sealed by their owners; each input key is
released by the KBS only if its owner's grant allows this function, this worker and every
output recipient; the result is sealed to the agreed recipients — never plaintext — and its
signed lineage is recorded in the KBS audit log. Guide: ``docs/compute.md``.

::

    from teeflow import compute
    alice = compute.Party.load("alice", kbs=URL, pin=PIN)
    teeu  = alice.teeu("https://127.0.0.1:9443")
    x = alice.seal(array, allow=["stats:average"], recipients=["alice", "bob"], to=teeu)
    y = bob.seal(other,  allow=["stats:average"], recipients=["alice", "bob"], to=teeu)
    r = teeu.run("stats:average", x, y)
    value = alice.open(r)

Modules: :mod:`~teeflow.compute.party` (parties, worker handle), :mod:`~teeflow.compute.worker`
(the workload), :mod:`~teeflow.compute.jobs` (errors, job request, bounded execution),
:mod:`~teeflow.compute.values` (value encoding), :mod:`~teeflow.compute.lineage`.
"""

from __future__ import annotations

from teeflow.compute.jobs import (
    AttestationRefused,
    ComputeError,
    ExecutionLimits,
    FunctionFailed,
    InputTampered,
    InvalidJob,
    JobRefused,
    JobRequest,
    LimitExceeded,
    NotARecipient,
    ReleaseRefused,
    WorkerUnverified,
)
from teeflow.compute.lineage import (
    AuditLineage,
    LineageRecord,
    ResultRef,
    SignedLineage,
    lineage_from_audit,
    verify_lineage,
)
from teeflow.compute.party import Party, SealedInput, Teeu
from teeflow.compute.server import make_worker_server
from teeflow.compute.values import decode_value, encode_value
from teeflow.compute.worker import ComputeWorker, compute_measurement

__all__ = [
    "AttestationRefused",
    "AuditLineage",
    "ComputeError",
    "ComputeWorker",
    "ExecutionLimits",
    "FunctionFailed",
    "InputTampered",
    "InvalidJob",
    "JobRefused",
    "JobRequest",
    "LimitExceeded",
    "LineageRecord",
    "NotARecipient",
    "Party",
    "ReleaseRefused",
    "ResultRef",
    "SealedInput",
    "SignedLineage",
    "Teeu",
    "WorkerUnverified",
    "compute_measurement",
    "decode_value",
    "encode_value",
    "lineage_from_audit",
    "make_worker_server",
    "verify_lineage",
]
