"""Compute jobs: the typed errors, the wire documents and the bounded function runner.

**Errors** (all under :class:`ComputeError`, itself a :class:`teeflow.errors.Error`; each
has a stable ``code`` and an RFC 7807 ``type`` ``https://teeflow.dev/compute/errors/<Name>``
so the worker's refusals come back to the client as the same class)::

    ComputeError              compute                  root
    ├── WorkerUnverified      compute-worker-unverified  the worker is not an attested compute
    │                                                    workload of this federation (also a
    │                                                    VerificationError)
    ├── Unauthenticated       compute-unauthenticated  the request is not signed by a party of
    │                                                    the agreement in force (RFC 9421;
    │                                                    unsigned, bad, stale or replayed): 401
    ├── InvalidJob            compute-invalid          malformed request, unknown function/input
    │   └── PayloadTooLarge   compute-too-large        body over the agreement's limits: 413
    ├── JobRefused            compute-refused          the job was refused (base)
    │   ├── AttestationRefused  compute-attestation    the KBS refused the worker's per-job
    │   │                                              attestation (measurement, replayed nonce…)
    │   ├── ReleaseRefused      compute-release        an owner's grant does not allow this job
    │   │                                              (function, recipients, measurement, budget)
    │   ├── NotPermitted        compute-forbidden      a signed request the signer may not make
    │   │                                              (another owner's upload, a job on
    │   │                                              inputs it neither owns nor receives)
    │   ├── InputTampered       compute-tampered       an input blob differs from the sealed one
    │   └── FunctionFailed      compute-function       the function raised or broke its limits
    │       └── LimitExceeded   compute-limit          time or memory limit exceeded
    └── NotARecipient         compute-not-recipient    this party cannot open the result (also a
                                                       SealingError)

**Wire documents** (pydantic, frozen, unknown keys refused): :class:`JobRequest` (``POST
/v1/compute/jobs``) and :class:`ResultRef` (the public, shareable reference to a sealed
result; see :mod:`teeflow.compute.lineage` for its signed record).

**Running a function** (:func:`run_bounded`, :class:`ExecutionLimits`): two isolation modes,

* ``thread`` (default): the function runs in-process in a dedicated thread; the caller waits
  at most ``timeout`` seconds. Python cannot kill a thread, so a timed-out function is
  abandoned: its result is discarded, and the worker's job semaphore keeps the number of such
  threads bounded. Memory is bounded for the whole worker process with ``RLIMIT_AS``
  (``teeflow compute serve --max-memory``): a function allocating past it gets
  ``MemoryError`` → :class:`LimitExceeded`. No plaintext leaves the process.
* ``fork`` (Linux): the function runs in a forked child that inherits the decrypted inputs
  copy-on-write, with ``RLIMIT_AS`` (``max_memory``) and ``RLIMIT_CPU`` (``timeout``) set;
  the encoded result returns over a pipe (in the same TEE); on timeout the child is killed.
  Stronger containment, at the cost of one copy of the result through the pipe.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from teeflow.errors import Error, SealingError, VerificationError

__all__ = [
    "COMPUTE_PREFIX",
    "ERROR_TYPES",
    "AttestationRefused",
    "ComputeError",
    "ExecutionLimits",
    "FunctionFailed",
    "InputId",
    "InputTampered",
    "InvalidJob",
    "JobRefused",
    "JobRequest",
    "LimitExceeded",
    "NotARecipient",
    "NotPermitted",
    "PayloadTooLarge",
    "ReleaseRefused",
    "RequestLimits",
    "ResultId",
    "Unauthenticated",
    "WorkerUnverified",
    "error_from_problem",
    "input_id",
    "parse_function",
    "run_bounded",
]

#: RFC 7807 ``type`` prefix of compute problems.
COMPUTE_PREFIX: Final = "https://teeflow.dev/compute/errors"


class ComputeError(Error):
    """Root of compute errors (module docstring). ``status`` is the HTTP status the worker
    answers with."""

    code = "compute"
    status: ClassVar[int] = 500

    @classmethod
    def type_uri(cls) -> str:
        """``<COMPUTE_PREFIX>/<class name>``."""
        return f"{COMPUTE_PREFIX}/{cls.__name__}"

    def to_problem(self) -> dict[str, Any]:
        """RFC 7807 body: ``type``, ``title``, ``status``, ``detail`` (public text only)."""
        return {
            "type": self.type_uri(),
            "title": (type(self).__doc__ or "").split("\n")[0],
            "status": self.status,
            "detail": str(self)[:1024],
        }


class WorkerUnverified(ComputeError, VerificationError):
    """The worker did not prove to be an attested compute workload of this federation."""

    code = "compute-worker-unverified"
    status = 502


class InvalidJob(ComputeError):
    """Malformed request, unknown function or unknown input."""

    code = "compute-invalid"
    status = 400


class PayloadTooLarge(InvalidJob):
    """The request body exceeds the agreement's limits."""

    code = "compute-too-large"
    status = 413


class Unauthenticated(ComputeError):
    """The request is not signed by a party of the agreement in force."""

    code = "compute-unauthenticated"
    status = 401


class JobRefused(ComputeError):
    """The job was refused."""

    code = "compute-refused"
    status = 403


class AttestationRefused(JobRefused):
    """The KBS refused the worker's per-job attestation."""

    code = "compute-attestation"


class ReleaseRefused(JobRefused):
    """An input owner's grant does not allow this job."""

    code = "compute-release"


class NotPermitted(JobRefused):
    """The signing party may not make this request."""

    code = "compute-forbidden"


class InputTampered(JobRefused):
    """An input blob is not the one its owner sealed."""

    code = "compute-tampered"
    status = 422


class FunctionFailed(JobRefused):
    """The authorised function raised an error."""

    code = "compute-function"
    status = 422


class LimitExceeded(FunctionFailed):
    """The function exceeded its time or memory limit."""

    code = "compute-limit"


class NotARecipient(ComputeError, SealingError):
    """This party is not a recipient of the result (or its key does not open it)."""

    code = "compute-not-recipient"
    status = 403


#: ``type`` URI → class, for the client side.
ERROR_TYPES: Final[dict[str, type[ComputeError]]] = {
    cls.type_uri(): cls
    for cls in (
        ComputeError,
        WorkerUnverified,
        InvalidJob,
        PayloadTooLarge,
        Unauthenticated,
        JobRefused,
        NotPermitted,
        AttestationRefused,
        ReleaseRefused,
        InputTampered,
        FunctionFailed,
        LimitExceeded,
        NotARecipient,
    )
}


def error_from_problem(status: int, doc: object) -> ComputeError:
    """The :class:`ComputeError` an RFC 7807 body from a worker stands for (a generic
    :class:`ComputeError` for unknown types)."""
    if isinstance(doc, dict):
        cls = ERROR_TYPES.get(str(doc.get("type", "")), ComputeError)
        return cls(str(doc.get("detail", f"HTTP {status}"))[:1024])
    return ComputeError(f"worker answered HTTP {status}")


# -- identifiers and wire documents ----------------------------------------------------------

#: An input id: the KBS resource path ``<owner>/teeu-input/<SHA-256 hex of the sealed blob>``.
InputId = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?/teeu-input/[0-9a-f]{64}$"),
]
#: A result id: 32 lower-case hex digits (random).
ResultId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
_FUNCTION = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]{0,62}):([A-Za-z_][A-Za-z0-9_.-]{0,127})")
#: The repository segment of input resource paths.
INPUT_TYPE: Final = "teeu-input"


def input_id(owner: str, blob_sha256: bytes) -> str:
    """The input id (= KBS resource path) of a sealed blob: binds owner and ciphertext."""
    return f"{owner}/{INPUT_TYPE}/{blob_sha256.hex()}"


def parse_function(ref: str) -> tuple[str, str]:
    """``"package:function"`` → ``(package, function)``.

    Raises:
        InvalidJob: not of that shape.
    """
    m = _FUNCTION.fullmatch(ref) if isinstance(ref, str) else None
    if m is None:
        raise InvalidJob("function must be 'package:function'")
    return m.group(1), m.group(2)


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class JobRequest(_Doc):
    """``POST /v1/compute/jobs``: run ``function`` (``package:function``) over ``inputs`` (in
    order) and seal the result to ``recipients`` (empty: the recipients common to every
    input's grant)."""

    function: Annotated[str, StringConstraints(max_length=200)]
    inputs: tuple[InputId, ...] = Field(min_length=1, max_length=64)
    recipients: tuple[Annotated[str, StringConstraints(max_length=63)], ...] = Field(
        default=(), max_length=64
    )


@dataclass(frozen=True)
class RequestLimits:
    """Bounds on what parties may send a worker (the agreement's ``compute_limits``, else
    these defaults).

    Attributes:
        max_input_bytes: largest sealed input (bytes); a larger ``Content-Length`` gets 413
            before a byte of the body is read.
        max_party_bytes: total bytes of sealed inputs one party may keep at a worker
            (stored plus uploads in progress).
    """

    max_input_bytes: int = 1 << 30
    max_party_bytes: int = 4 << 30


# -- bounded execution -----------------------------------------------------------------------


@dataclass(frozen=True)
class ExecutionLimits:
    """Limits of one function call (module docstring).

    Attributes:
        timeout: wall-clock seconds (thread) / CPU seconds and wall clock (fork).
        max_memory: address-space bytes of the forked child (fork mode), or None.
        max_result_bytes: largest encoded result accepted.
        isolation: ``thread`` or ``fork``.
    """

    timeout: float = 300.0
    max_memory: int | None = None
    max_result_bytes: int = 2 << 30
    isolation: Literal["thread", "fork"] = "thread"


def _run_thread(
    fn: Callable[..., Any], args: Sequence[Any], encode: Callable[[Any], bytearray],
    limits: ExecutionLimits,
) -> bytearray:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["out"] = encode(fn(*args))
        except MemoryError:
            box["err"] = LimitExceeded("the function ran out of memory")
        except Error as exc:
            box["err"] = FunctionFailed(f"the function failed: {type(exc).__name__}: {exc}")
        except Exception as exc:  # the function's own failure, reported by type only
            box["err"] = FunctionFailed(f"the function raised {type(exc).__name__}")

    thread = threading.Thread(target=target, name="teeflow-compute-fn", daemon=True)
    thread.start()
    thread.join(limits.timeout)
    if thread.is_alive():
        raise LimitExceeded(f"the function exceeded {limits.timeout:g} s (abandoned)")
    if "err" in box:
        raise box["err"]
    out: bytearray = box["out"]
    return out


def _read_exact(fd: int, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    pos = 0
    while pos < n:
        got = os.readv(fd, [view[pos:]])
        if got == 0:
            raise FunctionFailed("the function process ended early")
        pos += got
    return buf


def _run_fork(
    fn: Callable[..., Any], args: Sequence[Any], encode: Callable[[Any], bytearray],
    limits: ExecutionLimits,
) -> bytearray:  # pragma: no cover - exercised on Linux by tests, child side not traced
    import resource
    import select

    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        code = 0
        try:
            cpu = max(1, int(limits.timeout) + 1)
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
            if limits.max_memory is not None:
                resource.setrlimit(resource.RLIMIT_AS, (limits.max_memory, limits.max_memory))
            try:
                out = encode(fn(*args))
                status = 0
            except MemoryError:
                out, status = bytearray(), 2
            except Exception:
                out, status = bytearray(), 1
            os.write(wfd, struct.pack(">BQ", status, len(out)))
            view = memoryview(out)
            while view:
                view = view[os.write(wfd, view):]
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    try:
        ready, _, _ = select.select([rfd], [], [], limits.timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            raise LimitExceeded(f"the function exceeded {limits.timeout:g} s (killed)")
        head = _read_exact(rfd, 9)
        status, size = struct.unpack(">BQ", head)
        if status == 2:
            raise LimitExceeded("the function ran out of memory")
        if status != 0:
            raise FunctionFailed("the function raised an exception")
        if size > limits.max_result_bytes:
            raise LimitExceeded("the result is larger than allowed")
        return _read_exact(rfd, size)
    finally:
        os.close(rfd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def run_bounded(
    fn: Callable[..., Any],
    args: Sequence[Any],
    encode: Callable[[Any], bytearray],
    limits: ExecutionLimits,
) -> bytearray:
    """Call ``fn(*args)`` under ``limits`` and return ``encode(result)``.

    Raises:
        LimitExceeded: timeout, memory exhaustion, or a result over ``max_result_bytes``.
        FunctionFailed: the function (or the encoding of its result) raised; only the
            exception type is reported (its message may hold data).
    """
    if limits.isolation == "fork" and hasattr(os, "fork"):
        out = _run_fork(fn, args, encode, limits)
    else:
        out = _run_thread(fn, args, encode, limits)
    if len(out) > limits.max_result_bytes:
        raise LimitExceeded("the result is larger than allowed")
    return out
