"""Sealed aggregator checkpoints and rollback protection (DESIGN "Federated learning":
freshness).

**Content** (:class:`Checkpoint`): session, round ``r`` (≥ 1), the global model after round
``r`` (canonical safetensors bytes) and its digest, the strategy state (safetensors), the
provenance entries so far (without the ``final`` entry), the agreement and package digests,
and the per-round metrics. **No private key**: the provenance signing key never leaves the
aggregator process; a restarted aggregator signs with its own attested key and records a
hand-over in the log (:mod:`teeflow.fl.provenance`).

**Plaintext layout** (:func:`encode_checkpoint`)::

    "TFCKPT\\x00\\x02" (8 bytes) | u32 big-endian header length | header (JSON, ≤ 1 MiB)
    | arrays | strategy state | provenance (JSON lines)

The header names the format ``teeflow-checkpoint/2``, session, round, digests, metrics and the
three section sizes (exactly these keys); the sections follow in that order and must cover the
rest exactly. :func:`decode_checkpoint` is bounded and total (:class:`~teeflow.errors.
ParseError`), and re-checks the arrays digest. Version-1 checkpoints (which carried the
signing key) are refused.

**Sealing** (:func:`seal_checkpoint`): a teeflow sealed blob (:mod:`teeflow.sealing`) under the
session's checkpoint key ``fl/checkpoint-key/<session>``, which the KBS generates itself and
releases only to attested aggregators with an agreed measurement (:mod:`teeflow.kbs.policy.
generated`) — no party ever holds it — with associated data ``b"teeflow-checkpoint/2\\0" ||
session``: a checkpoint of another session does not open.

**Commit of round r** (:meth:`CheckpointStore.commit`): (1) write the sealed checkpoint to
``PATH.next`` (atomic rename, fsync); (2) compare-and-increment the KBS counter
``session/<name>`` from ``r - 1`` to ``r``, bound to the global-model digest — the commit point;
(3) rename ``PATH.next`` over ``PATH``. A crash between (2) and (3) leaves the committed
checkpoint in ``PATH.next``; :meth:`CheckpointStore.load` finds it.

**Restart** (:func:`check_against_counter`): the counter (value ``v``, digest ``d``) decides.
No counter and no checkpoint: a fresh session. A checkpoint with round ``v`` and digest ``d``:
resume. Round ``< v``: :class:`RollbackError`. Anything else (no checkpoint for a committed
session, a digest that differs, a round the counter never reached, a checkpoint while the
counter was never stepped): :class:`CheckpointError`. Both are :class:`~teeflow.errors.FLError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from teeflow.errors import FLError, ParseError
from teeflow.fl.arrays import decode_arrays
from teeflow.fl.provenance import ProvenanceEntry, entry_json
from teeflow.kbs.protocol import CounterState
from teeflow.sealing import seal, unseal

__all__ = [
    "CHECKPOINT_FORMAT",
    "MAX_CHECKPOINT_HEADER",
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "RollbackError",
    "check_against_counter",
    "checkpoint_aad",
    "counter_name",
    "decode_checkpoint",
    "encode_checkpoint",
    "metrics_history",
    "open_checkpoint",
    "seal_checkpoint",
]

CHECKPOINT_FORMAT = "teeflow-checkpoint/2"
_MAGIC = b"TFCKPT\x00\x02"
#: Largest checkpoint header (bytes).
MAX_CHECKPOINT_HEADER = 1 << 20
_SESSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_SECTIONS = ("arrays", "state", "provenance")


class CheckpointError(FLError):
    """A checkpoint does not match the KBS counter (or is missing)."""

    code = "fl-checkpoint"


class RollbackError(CheckpointError):
    """A checkpoint older than the KBS counter was presented (rollback refused)."""

    code = "fl-rollback"


def counter_name(session: str) -> str:
    """The KBS counter of a session: ``session/<name>``.

    Raises:
        FLError: ``session`` is not 1..63 of ``A-Za-z0-9._-`` starting alphanumeric.
    """
    if not isinstance(session, str) or not _SESSION.fullmatch(session):
        raise FLError("session names are 1..63 of A-Za-z0-9._- starting with a letter or digit")
    return f"session/{session}"


def checkpoint_aad(session: str) -> bytes:
    """Associated data of a sealed checkpoint: ``b"teeflow-checkpoint/2\\0" || session``."""
    return CHECKPOINT_FORMAT.encode("ascii") + b"\0" + session.encode("utf-8")


@dataclass(frozen=True)
class Checkpoint:
    """An aggregator checkpoint (module docstring).

    Attributes:
        session: session name.
        round: last committed round (≥ 1).
        arrays: canonical safetensors bytes of the global model.
        strategy_state: canonical safetensors bytes of the strategy state.
        provenance: provenance entries so far (session-start, rounds, hand-overs).
        agreement_digest, package_digest: lower-case hex SHA-256.
        metrics: per-round metrics, oldest first.
    """

    session: str
    round: int
    arrays: bytes
    strategy_state: bytes
    provenance: tuple[ProvenanceEntry, ...]
    agreement_digest: str
    package_digest: str
    metrics: tuple[dict[str, float], ...] = field(default=())

    @property
    def arrays_digest(self) -> bytes:
        """SHA-256 (32 bytes) of :attr:`arrays` (= :func:`teeflow.fl.arrays.arrays_digest`)."""
        return hashlib.sha256(self.arrays).digest()


def encode_checkpoint(ckpt: Checkpoint) -> bytes:
    """Plaintext bytes of ``ckpt`` (layout in the module docstring).

    Raises:
        FLError: invalid session or round.
    """
    counter_name(ckpt.session)
    if ckpt.round < 1:
        raise FLError("checkpoints start at round 1")
    provenance = "".join(
        json.dumps(entry_json(e), separators=(",", ":")) + "\n" for e in ckpt.provenance
    ).encode("utf-8")
    sections = [ckpt.arrays, ckpt.strategy_state, provenance]
    header = {
        "format": CHECKPOINT_FORMAT,
        "session": ckpt.session,
        "round": ckpt.round,
        "arrays_digest": ckpt.arrays_digest.hex(),
        "agreement_digest": ckpt.agreement_digest,
        "package_digest": ckpt.package_digest,
        "metrics": [dict(m) for m in ckpt.metrics],
        "sizes": dict(zip(_SECTIONS, (len(s) for s in sections), strict=True)),
    }
    raw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(raw) > MAX_CHECKPOINT_HEADER:
        raise FLError("checkpoint header too large")
    return b"".join([_MAGIC, len(raw).to_bytes(4, "big"), raw, *sections])


def _field(doc: Mapping[str, Any], name: str, kind: type) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ParseError(f"checkpoint header: {name} missing or not {kind.__name__}")
    return value


def _hex32(value: object, name: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ParseError(f"checkpoint header: {name} must be 64 lower-case hex digits")
    return value


def _metrics(value: object) -> tuple[dict[str, float], ...]:
    if not isinstance(value, list) or len(value) > 100_000:
        raise ParseError("checkpoint header: metrics must be a list")
    out = []
    for item in value:
        if not isinstance(item, dict) or len(item) > 256:
            raise ParseError("checkpoint header: metrics entries must be objects")
        entry: dict[str, float] = {}
        for k, v in item.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ParseError("checkpoint header: metric values must be numbers")
            entry[str(k)[:64]] = float(v)
        out.append(entry)
    return tuple(out)


def decode_checkpoint(data: bytes) -> Checkpoint:
    """Parse checkpoint plaintext (bounded, total).

    Raises:
        ParseError: bad magic, header, sizes, provenance lines or arrays (digest mismatch
            included).
    """
    if len(data) < 12 or data[:8] != _MAGIC:
        raise ParseError("not a teeflow checkpoint (bad magic)")
    n = int.from_bytes(data[8:12], "big")
    if n > MAX_CHECKPOINT_HEADER or 12 + n > len(data):
        raise ParseError("checkpoint header length out of range")
    try:
        doc = json.loads(data[12 : 12 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ParseError("checkpoint header is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise ParseError(f"checkpoint header: format must be {CHECKPOINT_FORMAT}")
    session = _field(doc, "session", str)
    if not _SESSION.fullmatch(session):
        raise ParseError("checkpoint header: invalid session name")
    rnd = _field(doc, "round", int)
    if not 1 <= rnd <= 2**31 - 1:
        raise ParseError("checkpoint header: round out of range")
    sizes = _field(doc, "sizes", dict)
    if set(sizes) != set(_SECTIONS):
        raise ParseError(f"checkpoint header: sizes must name exactly {', '.join(_SECTIONS)}")
    offset = 12 + n
    parts: list[bytes] = []
    for name in _SECTIONS:
        size = sizes.get(name)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ParseError(f"checkpoint header: size of {name} invalid")
        if offset + size > len(data):
            raise ParseError("checkpoint truncated")
        parts.append(data[offset : offset + size])
        offset += size
    if offset != len(data):
        raise ParseError("checkpoint has trailing bytes")
    arrays, state, prov = parts
    digest = _hex32(doc.get("arrays_digest"), "arrays_digest")
    if hashlib.sha256(arrays).hexdigest() != digest:
        raise ParseError("checkpoint arrays do not match their digest")
    decode_arrays(arrays)  # canonical safetensors, bounded
    decode_arrays(state)
    entries = []
    try:
        for line in prov.decode("utf-8").splitlines():
            if line.strip():
                entries.append(ProvenanceEntry.model_validate_json(line))
    except (UnicodeDecodeError, ValidationError, ValueError):
        raise ParseError("checkpoint provenance is malformed") from None
    return Checkpoint(
        session=session,
        round=rnd,
        arrays=arrays,
        strategy_state=state,
        provenance=tuple(entries),
        agreement_digest=_hex32(doc.get("agreement_digest"), "agreement_digest"),
        package_digest=_hex32(doc.get("package_digest"), "package_digest"),
        metrics=_metrics(doc.get("metrics", [])),
    )


def seal_checkpoint(ckpt: Checkpoint, key: bytes) -> bytes:
    """Sealed blob of ``ckpt`` under the 32-byte checkpoint key.

    Raises:
        SealingError: bad key. FLError: invalid checkpoint.
    """
    return seal(encode_checkpoint(ckpt), key, aad=checkpoint_aad(ckpt.session))


def open_checkpoint(blob: bytes, key: bytes, session: str) -> Checkpoint:
    """Unseal and parse a checkpoint of ``session``.

    Raises:
        SealingError: tampered, wrong key, or a checkpoint of another session.
        ParseError: malformed plaintext, or it names another session.
    """
    ckpt = decode_checkpoint(unseal(blob, key, aad=checkpoint_aad(session)))
    if ckpt.session != session:
        raise ParseError("the checkpoint belongs to another session")
    return ckpt


def check_against_counter(
    ckpt: Checkpoint | None, counter: CounterState | None, session: str
) -> bool:
    """Decide a restart (module docstring): False = fresh session, True = resume ``ckpt``.

    Raises:
        RollbackError: ``ckpt`` is older than the counter.
        CheckpointError: any other mismatch.
    """
    name = counter_name(session)
    if counter is None or counter.value == 0:
        if ckpt is None:
            return False
        raise CheckpointError(
            f"{name} was never stepped, but the checkpoint claims round {ckpt.round} "
            "(another KBS, or a reset counter)"
        )
    if ckpt is None:
        raise CheckpointError(
            f"session {session} has committed {counter.value} rounds but its checkpoint is "
            "missing (restore it, or start a session with another name)"
        )
    if ckpt.round < counter.value:
        raise RollbackError(
            f"rollback refused: the checkpoint is at round {ckpt.round}, the KBS counter "
            f"{name} at round {counter.value}"
        )
    if ckpt.round > counter.value:
        raise CheckpointError(
            f"the checkpoint is at round {ckpt.round}, which was never committed "
            f"({name} is at {counter.value})"
        )
    if ckpt.arrays_digest.hex() != counter.digest.lower():
        raise CheckpointError(
            f"the checkpoint of round {ckpt.round} is not the committed model (digest differs)"
        )
    return True


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise FLError(f"cannot write {path}: {exc.strerror or exc}") from None


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class CheckpointStore:
    """The checkpoint file of one session (``PATH`` and ``PATH.next``).

    Args:
        path: the checkpoint file.
        key: the 32-byte checkpoint key (from the KBS).
        session: session name.
        max_bytes: largest checkpoint file read (bytes).
    """

    def __init__(self, path: Path | str, key: bytes, session: str, *, max_bytes: int = 4 << 30):
        counter_name(session)
        self.path = Path(path)
        self.next_path = self.path.with_name(self.path.name + ".next")
        self._key = key
        self.session = session
        self._max = max_bytes

    def _read(self, path: Path) -> Checkpoint | None:
        try:
            if path.stat().st_size > self._max:
                raise FLError(f"{path} is larger than {self._max} bytes")
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise FLError(f"cannot read {path}: {exc.strerror or exc}") from None
        return open_checkpoint(blob, self._key, self.session)

    def load(self, counter: CounterState | None) -> Checkpoint | None:
        """The checkpoint to resume from, or None for a fresh session
        (:func:`check_against_counter`; ``PATH.next`` is used when it holds the committed
        round, and dropped when it holds an uncommitted one).

        Raises:
            RollbackError, CheckpointError: as :func:`check_against_counter`.
            SealingError: a checkpoint file is tampered or sealed under another key/session.
            ParseError: malformed checkpoint. FLError: unreadable file.
        """
        value = 0 if counter is None else counter.value
        pending = self._read(self.next_path)
        if pending is not None:
            if value and pending.round == value:
                check_against_counter(pending, counter, self.session)
                os.replace(self.next_path, self.path)
                _fsync_dir(self.path.parent)
                return pending
            if pending.round == value + 1:
                self.next_path.unlink()  # written, never committed
        current = self._read(self.path)
        return current if check_against_counter(current, counter, self.session) else None

    def commit(self, ckpt: Checkpoint, increment: Callable[[int, bytes], object]) -> None:
        """Commit round ``ckpt.round`` (module docstring): write ``PATH.next``, call
        ``increment(expected=ckpt.round - 1, digest=arrays digest)`` (the KBS
        compare-and-increment), rename over ``PATH``.

        Raises:
            FLError: the file cannot be written; whatever ``increment`` raises (then
                ``PATH`` still holds the previous round).
        """
        if ckpt.session != self.session:
            raise FLError("checkpoint of another session")
        _write_atomic(self.next_path, seal_checkpoint(ckpt, self._key))
        increment(ckpt.round - 1, ckpt.arrays_digest)
        try:
            os.replace(self.next_path, self.path)
        except OSError as exc:
            raise FLError(f"cannot replace {self.path}: {exc.strerror or exc}") from None
        _fsync_dir(self.path.parent)


def metrics_history(entries: Sequence[Mapping[str, float]]) -> tuple[dict[str, float], ...]:
    """A copy of per-round metrics suitable for :attr:`Checkpoint.metrics`."""
    return tuple({str(k): float(v) for k, v in m.items()} for m in entries)
