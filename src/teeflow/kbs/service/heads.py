"""The KBS side of rollback detection: signed state heads on responses and the KBS's own
head file (adversary H; wire format in :mod:`teeflow.kbs.policy.heads`).

:class:`HeadRecorder` notes the audit entries a request appended (thread-local: one request
is served by one worker thread) and, when the request is answered, signs the newest of them
- or, for a request that changed nothing, the head read from the store - for the
``KBS-State-Head`` response header. Signatures are cached per head (a run of reads signs once).

:class:`KbsHeadFile` keeps the newest head this KBS wrote in ``<state_dir>/kbs-head`` (0600,
HMAC-SHA-256 under a key derived from the storage key, written atomically when the KBS stops
and at most every ``interval`` seconds while it runs). At start the store's head must not be
older than it (:func:`check_store_head`), else the KBS refuses to start: "the KBS state was
rolled back". The host can roll the file back together with the database; what then remains
is the residual window documented in docs/kbs.md (a rollback no party has yet observed),
which parties narrow by checking the head (``teeflow kbs head``) regularly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from teeflow._fs import atomic_write
from teeflow.errors import KbsError
from teeflow.kbs.policy.heads import EMPTY_HASH, StateHead, sign_head
from teeflow.kbs.store.interface import AuditEntry, KbsStore, StorageRollback

__all__ = ["HEAD_FILE", "HeadCapture", "HeadRecorder", "KbsHeadFile", "check_store_head"]

#: File in the KBS state directory holding the newest head the KBS wrote.
HEAD_FILE = "kbs-head"
_MAX_FILE = 4096


def _head_of(entry: AuditEntry | None) -> StateHead:
    return StateHead(0, EMPTY_HASH) if entry is None else StateHead(entry.seq, entry.hash)


@dataclass
class HeadCapture:
    """What :meth:`HeadRecorder.capture` yields; ``header`` is set when the block returns."""

    header: str | None = None
    head: StateHead | None = field(default=None)


class HeadRecorder:
    """Signed heads for responses (module docstring).

    Args:
        store: the KBS store (read when a request appended nothing).
        audit_key: the KBS audit key.
        head_file: where the newest head is kept across restarts (None: nowhere).
    """

    def __init__(
        self, store: KbsStore, audit_key: Ed25519PrivateKey, head_file: KbsHeadFile | None = None
    ) -> None:
        self._store = store
        self._key = audit_key
        self._kbs_id = hashlib.sha256(audit_key.public_key().public_bytes_raw()).digest()
        self._file = head_file
        self._local = threading.local()
        self._lock = threading.Lock()
        self._signed: tuple[StateHead, str] | None = None
        self._newest = StateHead(0, EMPTY_HASH)
        self._listeners: list[Callable[[AuditEntry], None]] = []

    def add_listener(self, listener: Callable[[AuditEntry], None]) -> None:
        """Call ``listener`` with every committed entry :meth:`saw` is given (the KBS metrics,
        :mod:`teeflow.kbs.api.metrics`); a listener that raises is ignored."""
        self._listeners.append(listener)

    def saw(self, entry: AuditEntry) -> None:
        """Note an entry the current request appended (committed: every audited write calls
        this after its transaction) and tell the listeners."""
        for listener in self._listeners:
            with contextlib.suppress(Exception):  # metrics never break a decision
                listener(entry)
        current: StateHead | None = getattr(self._local, "head", None)
        if current is None or entry.seq > current.seq:
            self._local.head = StateHead(entry.seq, entry.hash)

    def sign(self, head: StateHead) -> str:
        """The header value of ``head`` (cached for the last head signed)."""
        signed = self._signed
        if signed is not None and signed[0] == head:
            return signed[1]
        value = sign_head(head, self._key, kbs_id=self._kbs_id)
        with self._lock:
            self._signed = (head, value)
            if head.seq > self._newest.seq:
                self._newest = head
        if self._file is not None:
            self._file.maybe_save(self._newest)
        return value

    @contextmanager
    def capture(self) -> Iterator[HeadCapture]:
        """Around one request in its worker thread: afterwards ``header`` holds the signed
        head of the entries it appended, or of the store's current head.

        Raises:
            StorageError: reading the store head failed (the request's own error wins).
        """
        self._local.head = None
        box = HeadCapture()
        try:
            yield box
            head = getattr(self._local, "head", None)
            if head is None:
                head = _head_of(self._store.last_audit())
            box.head, box.header = head, self.sign(head)
        finally:
            self._local.head = None

    def close(self) -> None:
        """Save the newest head signed to the head file (when there is one)."""
        if self._file is not None:
            self._file.save(self._newest)


class KbsHeadFile:
    """The KBS's newest head in ``<state_dir>/kbs-head`` (module docstring).

    Args:
        state_dir: the KBS state directory (exists, 0700).
        storage_key: the KBS storage key (the file's MAC key is derived from it).
        interval: least seconds between saves while running (0: every new head).
    """

    def __init__(self, state_dir: Path, storage_key: bytes, *, interval: float = 1.0) -> None:
        self.path = Path(state_dir) / HEAD_FILE
        self._key = HKDF(hashes.SHA256(), 32, salt=b"teeflow-kbs-store-v1", info=b"head-file")
        self._mac_key = self._key.derive(storage_key)
        self._interval = interval
        self._saved_at = 0.0
        self._saved: StateHead | None = None
        self._lock = threading.Lock()

    def _mac(self, head: StateHead) -> str:
        mac = crypto_hmac.HMAC(self._mac_key, hashes.SHA256())
        mac.update(b"teeflow-kbs-head-file/1\0" + head.text().encode("ascii"))
        return mac.finalize().hex()

    def load(self) -> StateHead | None:
        """The saved head, or None when there is no file.

        Raises:
            KbsError: unreadable, malformed, or its MAC does not verify (edited by the host).
        """
        try:
            raw = self.path.read_bytes()[: _MAX_FILE + 1]
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KbsError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            doc = json.loads(raw)
            head = StateHead(int(doc["seq"]), bytes.fromhex(doc["hash"]))
            ok = len(head.hash) == 32 and doc["mac"] == self._mac(head)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok or len(raw) > _MAX_FILE:
            raise KbsError(f"{self.path} is not a head file of this KBS (edited?)")
        return head

    def save(self, head: StateHead) -> None:
        """Write ``head`` (0600, atomically) unless a newer or equal one was saved.

        Raises:
            KbsError: the file cannot be written.
        """
        with self._lock:
            if self._saved is not None and head.seq <= self._saved.seq:
                return
            doc = {"seq": head.seq, "hash": head.hash.hex(), "mac": self._mac(head)}
            try:
                atomic_write(self.path, json.dumps(doc).encode("ascii"), replace=True)
            except OSError as exc:
                raise KbsError(f"cannot write {self.path}: {exc.strerror}") from None
            self._saved, self._saved_at = head, time.monotonic()

    def maybe_save(self, head: StateHead) -> None:
        """:meth:`save` at most every ``interval`` seconds (errors only logged by callers)."""
        if time.monotonic() - self._saved_at >= self._interval:
            with contextlib.suppress(KbsError):  # the next save (at the latest at stop) retries
                self.save(head)


def check_store_head(store_head: AuditEntry | None, saved: StateHead | None) -> None:
    """At KBS start: the store's head must not be older than the saved one.

    Raises:
        StorageRollback: "the KBS state was rolled back: ..." (lower ``seq``, or another
            hash at the saved ``seq`` when the store is at that ``seq``).
    """
    if saved is None:
        return
    head = _head_of(store_head)
    if head.seq < saved.seq or (head.seq == saved.seq and head.hash != saved.hash):
        raise StorageRollback(
            "the KBS state was rolled back: the store's state head is "
            f"seq {head.seq}, this KBS last wrote seq {saved.seq}; restore the newest "
            "database, or (an intended restore) delete the head file to accept it"
        )
