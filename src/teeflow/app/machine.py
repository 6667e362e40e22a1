"""The replica's deterministic state machine and its sealed, rollback-checked snapshots.

:class:`ReplicaMachine` applies the ordered stream: for each message at JetStream position
``p`` (strictly increasing; a position at or below the last applied one is skipped, so a
redelivered message is applied once) it opens the request (:func:`teeflow.app.protocol.
open_request`), refuses a client sequence number not above that client's last one (a
replayed or reordered request: the host cannot make a request count twice), calls the app
logic's ``handle(state, {"client": <client id>, "body": body})`` (the client id is
authenticated by the request signature) and returns the signed reply. Requests that do not open, or
are replays, change nothing and get no reply (they are reported as :class:`Refused`). The
outcome depends only on the ordered messages and the package, so every replica fed the same
stream ends in the same state and signs the same replies.

**Snapshots** (:class:`SnapshotStore`): the canonical JSON ``{"format":
"teeflow-app-snapshot/1", "app", "replica", "package", "number", "position", "state",
"clients"}`` sealed (:func:`teeflow.sealing.seal`) under the application's state key with
associated data ``"teeflow-app-snapshot/1\\0" || app || "\\0" || replica``. Commit of
snapshot ``k``: write ``PATH.next``; compare-and-increment the replica's KBS counter from
``k - 1`` to ``k`` bound to SHA-256 of the plaintext (the commit point); rename over
``PATH``. On start (:meth:`SnapshotStore.load`) the counter (value ``v``, digest ``d``)
decides: nothing anywhere → fresh; snapshot number ``v`` with digest ``d`` → resume; number
``< v`` → :class:`RollbackError`; anything else → :class:`SnapshotError`. The same rule as
FL checkpoints (:mod:`teeflow.fl.checkpoint`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from teeflow._fs import atomic_write
from teeflow.app.package import AppLogic
from teeflow.app.protocol import AppKeys, SignedReply, open_request, sign_reply
from teeflow.errors import Error, ParseError, WorkloadError
from teeflow.kbs.policy.canonical import canonical_json
from teeflow.kbs.protocol import CounterState
from teeflow.sealing import seal, unseal

__all__ = [
    "SNAPSHOT_FORMAT",
    "Applied",
    "Refused",
    "ReplicaMachine",
    "RollbackError",
    "SnapshotError",
    "SnapshotStore",
    "counter_name",
]

SNAPSHOT_FORMAT = "teeflow-app-snapshot/1"
#: Largest sealed snapshot read back (bytes).
MAX_SNAPSHOT_BYTES = 256 << 20


class SnapshotError(WorkloadError):
    """A snapshot does not match the replica's KBS counter (or is missing)."""

    code = "app-snapshot"


class RollbackError(SnapshotError):
    """A snapshot older than the KBS counter was presented (rollback refused)."""

    code = "app-rollback"


def counter_name(party: str, app: str, replica: int) -> str:
    """The KBS counter of a replica: ``app/<party>/<app>.r<replica>`` (the ``app`` role's
    scope of its enrolling party, :mod:`teeflow.kbs.policy.namespaces`)."""
    return f"app/{party}/{app}.r{replica}"


@dataclass(frozen=True)
class Applied:
    """A request applied at ``position``: the signed reply to publish."""

    position: int
    reply: SignedReply


@dataclass(frozen=True)
class Refused:
    """A message at ``position`` that changed nothing, and why (no secret in it)."""

    position: int
    client: str | None
    reason: str


class ReplicaMachine:
    """The deterministic state machine (module docstring).

    Args:
        app: application name.
        replica: this replica's index.
        logic: the loaded app package.
        keys: the application keys.
        signing_key: the replica certificate's private key.
        max_request_bytes: the agreement's ``max_request_bytes``.
        state, clients, position: restored from a snapshot (default: ``init()``, none, 0).
    """

    def __init__(
        self,
        *,
        app: str,
        replica: int,
        logic: AppLogic,
        keys: AppKeys,
        signing_key: ec.EllipticCurvePrivateKey,
        max_request_bytes: int,
        state: Any = None,
        clients: dict[str, int] | None = None,
        position: int = 0,
    ) -> None:
        self.app, self.replica, self.logic, self.keys = app, replica, logic, keys
        self._key = signing_key
        self._max = max_request_bytes
        self.state = logic.init() if clients is None else state
        self.clients: dict[str, int] = dict(clients or {})
        self.position = position
        self.applied = 0

    def process(self, position: int, raw: bytes) -> Applied | Refused:
        """Apply the message at stream ``position`` (module docstring). Never raises for a
        bad message: the outcome says why it was refused."""
        if position <= self.position:
            return Refused(position, None, "already applied (redelivered position)")
        self.position = position
        try:
            req = open_request(raw, app=self.app, keys=self.keys, max_bytes=self._max)
        except Error as exc:
            return Refused(position, None, f"request refused: {type(exc).__name__}")
        if req.seq <= self.clients.get(req.client, 0):
            return Refused(position, req.client, f"replayed or stale sequence number {req.seq}")
        self.clients[req.client] = req.seq
        try:
            request = {"client": req.client, "body": req.body}
            self.state, reply = self.logic.handle(self.state, request)
        except self.logic.refused as exc:
            reply = {"refused": str(exc)[:200]}
        except Exception as exc:  # app bug: deterministic too, so every replica agrees
            reply = {"refused": f"app error ({type(exc).__name__})"}
        self.applied += 1
        try:
            signed = sign_reply(app=self.app, replica=self.replica, request=req,
                                position=position, reply=reply, key=self._key)  # fmt: skip
        except ParseError:
            signed = sign_reply(app=self.app, replica=self.replica, request=req,
                                position=position, reply={"refused": "reply is not JSON"},
                                key=self._key)  # fmt: skip
        return Applied(position, signed)

    def snapshot(self, number: int) -> bytes:
        """The canonical plaintext of snapshot ``number``.

        Raises:
            ParseError: the app state is not a JSON value.
        """
        return canonical_json(
            {"format": SNAPSHOT_FORMAT, "app": self.app, "replica": self.replica,
             "package": self.logic.digest.hex(), "number": number, "position": self.position,
             "state": self.state, "clients": self.clients}
        )  # fmt: skip


def _aad(app: str, replica: int) -> bytes:
    return f"{SNAPSHOT_FORMAT}\0{app}\0{replica}".encode()


@dataclass(frozen=True)
class Restored:
    """A snapshot read back: its number, position, state and client sequence numbers."""

    number: int
    position: int
    state: Any
    clients: dict[str, int]


def _decode(plain: bytes, app: str, replica: int, package: bytes) -> Restored:
    try:
        d = json.loads(plain)
    except ValueError:
        raise SnapshotError("snapshot is not JSON") from None
    keys = {"format", "app", "replica", "package", "number", "position", "state", "clients"}
    if not isinstance(d, dict) or set(d) != keys or d["format"] != SNAPSHOT_FORMAT:
        raise SnapshotError("not a teeflow app snapshot")
    if d["app"] != app or d["replica"] != replica or d["package"] != package.hex():
        raise SnapshotError("snapshot of another application, replica or package")
    clients = d["clients"]
    ints = (d["number"], d["position"], *(clients.values() if isinstance(clients, dict) else ()))
    if not isinstance(clients, dict) or not all(type(v) is int and v >= 0 for v in ints):
        raise SnapshotError("snapshot has a malformed number, position or client table")
    return Restored(d["number"], d["position"], d["state"], clients)


class SnapshotStore:
    """Sealed snapshots of one replica, committed with a KBS counter (module docstring).

    Args:
        path: the snapshot file (``PATH.next`` is used during a commit).
        app, replica: whose snapshots.
        keys: the application keys (state key).
        package: the package digest (32 bytes).
        get_counter: reads the counter (None when never stepped).
        increment: ``increment(expected, digest)`` steps it (raises on a conflict).
    """

    def __init__(
        self,
        path: Path,
        *,
        app: str,
        replica: int,
        keys: AppKeys,
        package: bytes,
        get_counter: Callable[[], CounterState | None],
        increment: Callable[[int, bytes], CounterState],
    ) -> None:
        self.path = Path(path)
        self.next = self.path.with_name(self.path.name + ".next")
        self.app, self.replica, self._keys, self._package = app, replica, keys, package
        self._get, self._inc = get_counter, increment
        self.number = 0

    def _read(self, path: Path) -> tuple[Restored, bytes] | None:
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SnapshotError(f"cannot read {path.name}: {exc.strerror}") from None
        if len(blob) > MAX_SNAPSHOT_BYTES:
            raise SnapshotError("snapshot too large")
        plain = unseal(blob, self._keys.state, aad=_aad(self.app, self.replica))
        return _decode(plain, self.app, self.replica, self._package), plain

    def load(self) -> Restored | None:
        """The committed snapshot, or None for a fresh replica (module docstring).

        Raises:
            RollbackError: the snapshot is older than the counter.
            SnapshotError: it does not match the counter, or is missing for a committed one.
            SealingError: it does not open under the application key.
        """
        counter = self._get()
        found = []
        for source in (self.next, self.path):
            read = self._read(source)
            if read is not None:
                found.append((*read, source))
        if counter is None or counter.value == 0:
            if found:
                raise SnapshotError("a snapshot exists but the KBS counter was never stepped")
            return None
        for restored, plain, source in found:
            if restored.number == counter.value:
                if hashlib.sha256(plain).hexdigest() != counter.digest.lower():
                    raise SnapshotError("snapshot digest differs from the KBS counter's")
                if source == self.next:  # committed, not yet renamed (crash after step)
                    os.replace(self.next, self.path)
                self.number = restored.number
                return restored
        newest = max((r.number for r, _, _ in found), default=None)
        if newest is not None and newest < counter.value:
            raise RollbackError(
                f"snapshot {newest} is older than the KBS counter ({counter.value}): "
                "rollback refused"
            )
        raise SnapshotError(f"no snapshot matches the KBS counter ({counter.value})")

    def commit(self, machine: ReplicaMachine) -> int:
        """Seal and commit the machine's state as the next snapshot; returns its number.

        Raises:
            ParseError: the state is not JSON. KbsError: the counter step failed.
        """
        number = self.number + 1
        plain = machine.snapshot(number)
        blob = seal(plain, self._keys.state, aad=_aad(self.app, self.replica))
        atomic_write(self.next, blob)
        self._inc(number - 1, hashlib.sha256(plain).digest())
        os.replace(self.next, self.path)
        self.number = number
        return number

    def discard_next(self) -> None:
        """Remove a leftover ``PATH.next`` (after :meth:`load`)."""
        with contextlib.suppress(FileNotFoundError):
            self.next.unlink()
