"""The client side of rollback detection: remember the KBS state head, refuse a rollback.

Every response of the KBS that depends on its state carries a signed head
(:mod:`teeflow.kbs.policy.heads`). A :class:`HeadTracker` (one per pinned KBS, shared by the
threads of a process) verifies it with the pinned audit key and compares it with the highest
head seen *before the request was sent*: the KBS served the request after that head was
committed, so its head cannot be lower, and at the same ``seq`` it must have the same hash.
Otherwise :class:`StateRollback` ("the KBS state was rolled back: ..."). Comparing with the
head known at send time (not with heads of responses that arrived meanwhile) keeps
concurrent requests of one process, or of several processes sharing the file, from
refusing each other.

The highest head is kept in ``$TEEFLOW_HOME/kbs-heads/<id>.json`` (directory 0700, file
0600; ``<id>`` = first 32 hex digits of SHA-256 of the pinned audit key), merged under an
advisory lock, so parties, workloads and CLI commands of one home share what they have seen.
To keep the hot path fast the file is written at most every :data:`SAVE_INTERVAL` seconds
(and by :meth:`HeadTracker.flush`, which :class:`~teeflow.kbs.client.sdk.KbsClient` calls
when closed), atomically but without fsync: a crash can lose the newest head, which only
widens the residual window (docs/kbs.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path

from teeflow._fs import ensure_private_dir
from teeflow.errors import KbsError, ParseError, VerificationError
from teeflow.kbs.policy.canonical import b64url_decode
from teeflow.kbs.policy.heads import HEAD_HEADER, StateHead, parse_head
from teeflow.kbs.policy.parties import teeflow_home

__all__ = ["HEADS_DIR", "SAVE_INTERVAL", "HeadTracker", "StateRollback"]

#: Directory (under the teeflow home) of the remembered heads.
HEADS_DIR = "kbs-heads"
#: Least seconds between two writes of a head file while requests run.
SAVE_INTERVAL = 0.5
_MAX_FILE = 4096
_TRACKERS: dict[Path, HeadTracker] = {}
_TRACKERS_LOCK = threading.Lock()


class StateRollback(VerificationError):
    """The KBS answered with a state older than one already seen (or a forked one)."""

    code = "kbs-state-rollback"


class HeadTracker:
    """The highest verified head of one KBS (module docstring). Thread-safe.

    Args:
        audit_public_key: the pinned audit key (base64url, 32 raw bytes).
        path: the file that remembers the head (None: memory only).

    Use :meth:`for_pin` to share one tracker per file within a process.
    """

    def __init__(self, audit_public_key: str, path: Path | None) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        self._public = Ed25519PublicKey.from_public_bytes(
            b64url_decode(audit_public_key, length=32)
        )
        self.path = path
        self._lock = threading.Lock()
        self._best: StateHead | None = self._read() if path is not None else None
        self._saved: StateHead | None = self._best
        self._saved_at = 0.0

    @classmethod
    def for_pin(cls, audit_public_key: str, home: Path | None = None) -> HeadTracker:
        """The process-wide tracker of the KBS with this audit key, file in ``home``."""
        kbs_id = hashlib.sha256(audit_public_key.encode("ascii")).hexdigest()[:32]
        path = teeflow_home(home) / HEADS_DIR / f"{kbs_id}.json"
        with _TRACKERS_LOCK:
            tracker = _TRACKERS.get(path)
            if tracker is None:
                tracker = _TRACKERS[path] = cls(audit_public_key, path)
            return tracker

    @property
    def head(self) -> StateHead | None:
        """The highest head seen (None before the first)."""
        return self._best

    def _read(self) -> StateHead | None:
        assert self.path is not None
        try:
            raw = self.path.read_bytes()[: _MAX_FILE + 1]
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KbsError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            doc = json.loads(raw)
            head = StateHead(int(doc["seq"]), bytes.fromhex(doc["hash"]))
        except (ValueError, KeyError, TypeError):
            raise ParseError(f"{self.path} is not a KBS head file") from None
        if len(head.hash) != 32 or head.seq < 0:
            raise ParseError(f"{self.path} is not a KBS head file")
        return head

    def _merge_to_file(self, head: StateHead) -> None:
        """Write ``head`` unless the file (another process) holds a higher one."""
        assert self.path is not None
        ensure_private_dir(self.path.parent)
        lock_path = self.path.with_suffix(".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            on_file = self._read()
            if on_file is not None and on_file.seq >= head.seq:
                if on_file.seq > (self._best.seq if self._best else -1):
                    self._best = on_file
                return
            doc = json.dumps({"seq": head.seq, "hash": head.hash.hex()}).encode("ascii")
            tmp_fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            try:
                os.fchmod(tmp_fd, 0o600)
                os.write(tmp_fd, doc)
            finally:
                os.close(tmp_fd)
            os.replace(tmp, self.path)
        finally:
            os.close(fd)

    def flush(self) -> None:
        """Write the highest head seen to the file now (no-op without a file or news).

        Raises:
            KbsError: the file cannot be written.
        """
        with self._lock:
            self._save_locked()

    def _save_locked(self) -> None:
        best = self._best
        if self.path is None or best is None or best == self._saved:
            return
        try:
            self._merge_to_file(best)
        except OSError as exc:
            raise KbsError(f"cannot write {self.path}: {exc.strerror}") from None
        self._saved, self._saved_at = best, time.monotonic()

    def check(self, header: str | None, before: StateHead | None) -> StateHead:
        """Verify a response's head against ``before`` (the head known when the request was
        sent) and remember it when it is the highest.

        Raises:
            KbsError: the response carries no head.
            ParseError, VerificationError: malformed or not signed by the pinned KBS.
            StateRollback: lower than ``before``, or another hash at ``before``'s ``seq``.
        """
        if header is None:
            raise KbsError(f"the KBS sent no {HEAD_HEADER} with a state-dependent response")
        head = parse_head(header, self._public)
        if before is not None and (
            head.seq < before.seq or (head.seq == before.seq and head.hash != before.hash)
        ):
            what = "an older" if head.seq < before.seq else "a different (forked)"
            raise StateRollback(
                f"the KBS state was rolled back: it answered with {what} state "
                f"(seq {head.seq}) than already seen (seq {before.seq}); do not trust this "
                "KBS's releases, counters or audit log until its operator explains"
            )
        with self._lock:
            if self._best is None or head.seq > self._best.seq:
                self._best = head
                if time.monotonic() - self._saved_at >= SAVE_INTERVAL:
                    self._save_locked()
        return head
