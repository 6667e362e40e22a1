"""Client SDK of partitioned applications: :class:`Client`.

``await Client(...).connect()`` reads the replicas' announcements from the application's
JetStream stream (the last one of each replica index), checks each (certificate chained to
the federation CA, role ``app``, the agreement in force, an agreed measurement; signature:
:func:`teeflow.app.protocol.check_announcement`) and takes the application key that at
least ``f + 1`` verified replicas announced — at least one of them is correct.

``await client.request(body)`` seals the request to that key (HPKE, RFC 9180) with the
client's next sequence number and a fresh reply key, publishes it on ``tfapp.<app>.req``
and collects the signed replies on ``tfapp.<app>.reply.<client>``. Each reply must verify
with the key of the replica it names (a reply naming an unknown replica, or signed with a
wrong key, is ignored: anyone on NATS can send bytes; the client re-reads the announcements
once per request when a reply does not verify, so a restarted replica's new certificate is
picked up). The result is accepted once
**f + 1 distinct replicas**
signed the same (ciphertext, stream position) (:class:`Tally`); replicas that signed
something else are reported in :attr:`Result.faulty`. Fewer than ``f + 1`` matching
signatures within the timeout: :class:`QuorumError`.

Sequence numbers start at the client's ``first_seq`` (default: milliseconds since the epoch,
so that a restarted client with the same key stays above its old numbers) and grow by one
per request; replicas refuse a number not above the client's last one (replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from teeflow.app.protocol import (
    Announcement,
    SignedReply,
    announce_subject,
    check_announcement,
    check_reply,
    client_id,
    decrypt_reply,
    reply_subject,
    request_subject,
    seal_request,
)
from teeflow.errors import Error, VerificationError, WorkloadError
from teeflow.kbs.policy.agreement import FederationAgreement

__all__ = ["Client", "QuorumError", "Result", "Tally"]


class QuorumError(VerificationError):
    """Fewer than f + 1 replicas signed the same reply (or announced the same key)."""

    code = "app-quorum"


@dataclass(frozen=True)
class Result:
    """An accepted reply.

    Attributes:
        value: the reply (JSON value).
        seq: the request's sequence number.
        position: the request's position in the stream.
        signers: replicas whose matching signatures were counted (≥ f + 1).
        faulty: replicas that validly signed another reply for this request.
    """

    value: Any
    seq: int
    position: int
    signers: tuple[int, ...]
    faulty: tuple[int, ...]


@dataclass
class Tally:
    """Votes on one request's replies: accepted once ``quorum`` distinct replicas signed
    the same ``(ciphertext, position)``. Each replica's first verified reply is its vote
    (a second one never counts twice).

    Args:
        quorum: matching signatures needed (f + 1, ≥ 1).
    """

    quorum: int
    votes: dict[int, tuple[bytes, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.quorum < 1:
            raise WorkloadError("the quorum must be at least 1")

    def add(self, replica: int, reply: bytes, position: int) -> None:
        """Record replica ``replica``'s verified reply (the first one only)."""
        self.votes.setdefault(replica, (reply, position))

    def winner(self) -> tuple[bytes, int, tuple[int, ...]] | None:
        """``(reply, position, signers)`` once ``quorum`` replicas agree, else None."""
        groups: dict[tuple[bytes, int], list[int]] = {}
        for replica, vote in self.votes.items():
            groups.setdefault(vote, []).append(replica)
        for (reply, position), signers in groups.items():
            if len(signers) >= self.quorum:
                return reply, position, tuple(sorted(signers))
        return None

    def dissenters(self, reply: bytes, position: int) -> tuple[int, ...]:
        """Replicas that signed something other than the accepted reply."""
        return tuple(sorted(r for r, v in self.votes.items() if v != (reply, position)))


class Client:
    """A client of one partitioned application (module docstring).

    Args:
        app: application name (a key of the agreement's ``apps``).
        agreement: the agreement in force (the parties' copy, or the KBS's).
        ca: the federation CA certificate (from the KBS pin: ``Pin.ca()``).
        nats: NATS server URL.
        key: the client's Ed25519 key (default a fresh one: a new identity).
        first_seq: first sequence number (default: ms since the epoch).
        clock: time source for certificate checks.

    Raises (constructor):
        WorkloadError: the agreement names no such application.
    """

    def __init__(
        self,
        app: str,
        *,
        agreement: FederationAgreement,
        ca: x509.Certificate,
        nats: str = "nats://127.0.0.1:4222",
        key: Ed25519PrivateKey | None = None,
        first_seq: int | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        terms = (agreement.apps or {}).get(app)
        if terms is None:
            raise WorkloadError(f"the agreement names no application {app!r}")
        self.app, self.terms, self._agreement, self._ca = app, terms, agreement, ca
        self._url = nats
        self._key = key or Ed25519PrivateKey.generate()
        self.id = client_id(self._key.public_key())
        self._next = first_seq if first_seq is not None else int(time.time() * 1000)
        self._clock = clock or (lambda: datetime.now(UTC))
        self.replicas: dict[int, ec.EllipticCurvePublicKey] = {}
        self._app_public: X25519PublicKey | None = None
        self._nc: Any = None
        self._js: Any = None
        self._waiting: dict[int, asyncio.Queue[SignedReply]] = {}
        self._subscribed = False

    @property
    def quorum(self) -> int:
        """f + 1."""
        return self.terms.quorum

    async def connect(self) -> Client:
        """Connect, verify the announcements and subscribe to this client's replies.

        Raises:
            WorkloadError: NATS unreachable.
            QuorumError: fewer than f + 1 verified replicas announced the same key.
        """
        import nats
        from nats.errors import Error as NatsError

        try:
            self._nc = await nats.connect(self._url, max_reconnect_attempts=3, connect_timeout=5)
        except (OSError, NatsError) as exc:
            raise WorkloadError(f"cannot reach NATS at {self._url}: {type(exc).__name__}") from None
        self._js = self._nc.jetstream()
        await self.refresh_replicas()

        async def on_reply(msg: Any) -> None:
            try:
                reply = SignedReply.from_wire(msg.data)
            except Error:
                return
            queue = self._waiting.get(reply.seq)
            if queue is not None and reply.app == self.app and reply.client == self.id:
                queue.put_nowait(reply)  # else: a late reply to a finished request

        await self._nc.subscribe(reply_subject(self.app, self.id), cb=on_reply)
        self._subscribed = True
        return self

    async def refresh_replicas(self) -> None:
        """Re-read and re-verify the announcements (module docstring).

        Raises:
            QuorumError: fewer than f + 1 verified replicas announced the same key.
        """
        from nats.js.errors import NotFoundError

        stream = self.terms.stream_name(self.app)
        by_key: dict[bytes, dict[int, ec.EllipticCurvePublicKey]] = {}
        for i in range(self.terms.replicas):
            try:
                raw = await self._js.get_last_msg(stream, announce_subject(self.app, i))
                ann = Announcement.from_wire(raw.data or b"")
                if ann.replica != i:
                    continue
                public = check_announcement(
                    ann, app=self.app, ca=self._ca, agreement=self._agreement, now=self._clock()
                )
            except (NotFoundError, Error):
                continue
            by_key.setdefault(ann.hpke_public, {})[i] = public
        best = max(by_key.items(), key=lambda kv: len(kv[1]), default=None)
        if best is None or len(best[1]) < self.quorum:
            raise QuorumError(
                f"fewer than f+1={self.quorum} verified replicas announced the same "
                "application key: start the replicas (teeflow app replica) and retry"
            )
        self._app_public = X25519PublicKey.from_public_bytes(best[0])
        self.replicas = best[1]

    async def request(
        self, body: Any, *, timeout: float = 30.0, wait_for: int | None = None
    ) -> Result:
        """Send one request and return the accepted reply (module docstring).

        Args:
            body: the app request (JSON value).
            timeout: seconds to wait for f + 1 matching signatures.
            wait_for: keep collecting until this many replicas replied (≤ n) or the
                timeout — to report every dissenting replica; default: stop at f + 1.

        Raises:
            WorkloadError: not connected.
            QuorumError: fewer than f + 1 matching signatures within ``timeout``.
            ParseError: ``body`` is not a JSON value.
        """
        if self._js is None or not self._subscribed or self._app_public is None:
            raise WorkloadError("connect() first")
        seq, self._next = self._next, self._next + 1
        inbox: asyncio.Queue[SignedReply] = asyncio.Queue()
        self._waiting[seq] = inbox
        try:
            return await self._exchange(seq, body, inbox, timeout, wait_for)
        finally:
            del self._waiting[seq]

    async def _exchange(
        self,
        seq: int,
        body: Any,
        inbox: asyncio.Queue[SignedReply],
        timeout: float,
        wait_for: int | None,
    ) -> Result:
        assert self._app_public is not None
        reply_key = os.urandom(32)
        wire = seal_request(app=self.app, app_public=self._app_public, client_key=self._key,
                            seq=seq, body=body, reply_key=reply_key)  # fmt: skip
        await self._js.publish(request_subject(self.app), wire)
        tally = Tally(self.quorum)
        want = min(wait_for or self.quorum, self.terms.replicas)
        end = asyncio.get_running_loop().time() + timeout
        accepted: tuple[bytes, int, tuple[int, ...]] | None = None
        unverified: list[SignedReply] = []
        refreshed = False
        while True:
            accepted = tally.winner()
            if accepted is not None and len(tally.votes) >= want:
                break
            if unverified and not refreshed:
                # a replica restarted since connect() (new certificate): re-read the
                # announcements once, then re-check what did not verify
                refreshed = True
                with contextlib.suppress(QuorumError):
                    await self.refresh_replicas()
                for pending in unverified:
                    self._count(pending, tally, [])
                continue
            left = end - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                reply = await asyncio.wait_for(inbox.get(), left)
            except TimeoutError:
                break
            self._count(reply, tally, unverified)
        if accepted is None:
            raise QuorumError(
                f"fewer than f+1={self.quorum} replicas signed the same reply to request "
                f"{seq} within {timeout:g} s"
            )
        ciphertext, position, signers = accepted
        value = decrypt_reply(
            SignedReply(self.app, signers[0], self.id, seq, position, ciphertext, b""), reply_key
        )
        return Result(value, seq, position, signers, tally.dissenters(ciphertext, position))

    def _count(self, reply: SignedReply, tally: Tally, unverified: list[SignedReply]) -> None:
        public = self.replicas.get(reply.replica)
        try:
            if public is None:
                raise VerificationError("unknown replica")
            check_reply(reply, public)
        except VerificationError:
            # anyone on NATS can send bytes: an unverified reply proves nothing (it is
            # re-checked once after re-reading the announcements)
            unverified.append(reply)
            return
        tally.add(reply.replica, reply.reply, reply.position)

    async def close(self) -> None:
        """Close the NATS connection."""
        if self._nc is not None:
            await self._nc.close()
            self._nc = None
