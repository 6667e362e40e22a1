"""What the dashboard shows, built from verified reads (``docs/dashboard.md``).

:class:`DashboardSource` reads, as one party (every KBS request signed with its Ed25519 key,
RFC 9421, over the pinned TLS connection of :class:`teeflow.kbs.client.sdk.KbsClient`):

* the agreement history (``GET /v1/agreement/history``), each version's signatures re-checked
  against its predecessor (:func:`teeflow.kbs.policy.signing.verify_initial` /
  :func:`~teeflow.kbs.policy.signing.verify_update`) and a unified diff of consecutive
  versions (:mod:`difflib` over :meth:`FederationAgreement.to_yaml`);
* the audit log (``GET /v1/audit``), its hash chain and signatures verified with the pinned
  audit key, and every response's state head checked against the highest head this home has
  seen (rollback detection, :mod:`teeflow.kbs.client.heads`); later reads fetch only the new
  entries, linked to the last verified one;
* from the audit log: every workload that attested (TEE, measurement, TCB status, emulated
  flag, role, party, enrollment, attestation age), enrollment revocations, and per FL session
  the rounds the KBS's rollback counter recorded with their model digests;
* optionally, per-round metrics and clients from aggregators: the sessions of an aggregator
  *service* (``--service URL``, ``teeflow aggregator serve``; :mod:`teeflow.fl.control`:
  its certificate must be an attested aggregator's of the pinned federation CA and the
  agreement in force, every request signed by the party), or the progress document of a
  single ``aggregator run --metrics-listen`` (``--aggregator URL``; :mod:`teeflow.fl.monitor`,
  unauthenticated). Either way a round's model digest is marked *confirmed* only when the KBS
  counter recorded the same digest for that round.

:meth:`DashboardSource.snapshot` returns one JSON-ready document; failures of a source are
reported in it (``status``), never raised, so the page shows *why* a part is missing.
"""

from __future__ import annotations

import difflib
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from teeflow.errors import Error, KbsError, ParseError, VerificationError
from teeflow.fl.monitor import PROGRESS_FORMAT, PROGRESS_PATH, Progress
from teeflow.kbs.client.heads import StateRollback
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.kbs.policy.signing import SignedAgreement, verify_initial, verify_update
from teeflow.kbs.service.audit import AuditChainError, audit_entry_to_json
from teeflow.kbs.store.interface import AuditEntry

__all__ = [
    "MAX_AUDIT_SHOWN",
    "MAX_DIFF_LINES",
    "MAX_PROGRESS_BYTES",
    "DashboardSource",
    "agreement_versions",
    "sessions_from_audit",
    "workloads_from_audit",
]

#: Newest audit entries listed on the page (all are verified).
MAX_AUDIT_SHOWN = 200
#: Longest agreement diff shown (lines).
MAX_DIFF_LINES = 400
#: Largest aggregator progress document read (bytes).
MAX_PROGRESS_BYTES = 4 << 20
_COUNTER_PREFIX = "counter:session/"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def agreement_versions(history: Sequence[SignedAgreement]) -> list[dict[str, Any]]:
    """Each version (oldest first) with its digest, signers, whether its signatures verify
    against its predecessor, and the unified diff from the previous version."""
    out: list[dict[str, Any]] = []
    previous: SignedAgreement | None = None
    for signed in history:
        a = signed.agreement
        try:
            d = verify_initial(signed) if previous is None else verify_update(signed, previous)
            verified, problem = True, None
        except Error as exc:  # VerificationError or PolicyViolation: shown, not hidden
            from teeflow.kbs.policy.agreement import digest

            d, verified, problem = digest(a), False, str(exc)[:500]
        diff: list[str] = []
        if previous is not None:
            diff = list(
                difflib.unified_diff(
                    previous.agreement.to_yaml().splitlines(),
                    a.to_yaml().splitlines(),
                    f"version {previous.agreement.version}",
                    f"version {a.version}",
                    lineterm="",
                )
            )[:MAX_DIFF_LINES]
        out.append(
            {
                "version": a.version,
                "digest": d.hex(),
                "federation": a.federation,
                "parties": sorted(a.parties),
                "signers": sorted(signed.signatures),
                "allow_emulated": a.allow_emulated,
                "packages": sorted(a.packages),
                "roles": sorted(str(r) for r in a.workloads),
                "signatures_verified": verified,
                "problem": problem,
                "diff": diff,
            }
        )
        previous = signed
    return out


def workloads_from_audit(entries: Sequence[AuditEntry], now: datetime) -> list[dict[str, Any]]:
    """The newest accepted attestation of every (role, party, TEE, measurement), with its
    age in seconds and whether its enrollment was revoked since (newest first)."""
    revoked = {
        str(e.data.get("enrollment_id"))
        for e in entries
        if e.kind == "enrollment" and e.decision == "accept" and e.data.get("action") == "revoke"
    }
    latest: dict[tuple[str, ...], dict[str, Any]] = {}
    counts: dict[tuple[str, ...], int] = {}
    for e in entries:
        if e.kind != "attestation" or e.decision != "accept":
            continue
        d = e.data
        key = tuple(str(d.get(k)) for k in ("role", "party", "tee", "measurement"))
        counts[key] = counts.get(key, 0) + 1
        enrollment = d.get("enrollment_id")
        latest[key] = {
            "role": d.get("role"),
            "party": d.get("party"),
            "tee": d.get("tee"),
            "measurement": d.get("measurement"),
            "tcb_status": d.get("status"),
            "emulated": bool(d.get("emulated")),
            "enrollment": enrollment,
            "enrollment_revoked": enrollment is not None and str(enrollment) in revoked,
            "attested_at": _iso(e.time),
            "age_seconds": max(0, int((now - e.time).total_seconds())),
            "seq": e.seq,
        }
    rows = [{**row, "attestations": counts[key]} for key, row in latest.items()]
    return sorted(rows, key=lambda r: -int(r["seq"]))


def sessions_from_audit(entries: Sequence[AuditEntry]) -> dict[str, dict[str, Any]]:
    """Per FL session (its KBS counter ``session/<name>``): the rounds the counter recorded,
    ``{round: model digest hex}``, and the measurement of the aggregator that stepped it."""
    sessions: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e.kind != "counter" or e.decision != "accept":
            continue
        if not e.subject.startswith(_COUNTER_PREFIX):
            continue
        name = e.subject[len(_COUNTER_PREFIX):]
        value, bound = e.data.get("value"), e.data.get("bound_digest")
        if not isinstance(value, int) or not isinstance(bound, str):
            continue
        s = sessions.setdefault(name, {"session": name, "counter": {}, "aggregator": None})
        s["counter"][str(value)] = bound
        s["aggregator"] = e.data.get("measurement")
        s["committed_at"] = _iso(e.time)
    return sessions


class DashboardSource:
    """The dashboard's reads (module docstring); thread-safe, one read at a time.

    Args:
        client: a :class:`KbsClient` with the party's keys (``party=``).
        aggregators: base URLs (``http://HOST:PORT``) of aggregator progress endpoints.
        services: base URLs (``https://HOST:PORT``) of aggregator services.
        keys: the party's keys (signs the services' requests; needed with ``services``).
        clock: current time (timezone-aware).
        min_interval: least seconds between two reads of the KBS (snapshots in between are
            served from the last read).
    """

    def __init__(
        self,
        client: KbsClient,
        aggregators: Sequence[str] = (),
        *,
        services: Sequence[str] = (),
        keys: PartyKeys | None = None,
        clock: Callable[[], datetime] | None = None,
        min_interval: float = 1.0,
    ) -> None:
        if services and keys is None:
            raise KbsError("reading an aggregator service needs the party's keys")
        self._client = client
        self._aggregators = [u.rstrip("/") for u in aggregators]
        self._services = [u.rstrip("/") for u in services]
        self._keys = keys
        self._agreement_digest: str | None = None
        self._service_progress: dict[str, tuple[int, Progress]] = {}
        self._clock = clock or (lambda: datetime.now(UTC))
        self._min_interval = min_interval
        self._lock = threading.Lock()
        self._entries: list[AuditEntry] = []
        self._audit_status: dict[str, Any] = {"state": "unread"}
        self._progress: dict[str, dict[str, Any]] = {}
        self._cached: dict[str, Any] | None = None
        self._read_at = 0.0
        self._http = httpx.Client(timeout=5.0, trust_env=False, follow_redirects=False)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def start_polling(self) -> None:
        """Read the aggregators' progress every ``min_interval`` seconds in a daemon thread,
        whether or not a browser asks, so rounds are caught while an aggregator runs (its
        endpoint closes with the session; the last document read stays shown)."""
        if self._poller is not None or not (self._aggregators or self._services):
            return

        def poll() -> None:
            while not self._stop.wait(self._min_interval):
                with self._lock:
                    self._read_progress()
                    self._read_services()

        self._poller = threading.Thread(target=poll, name="dashboard-progress", daemon=True)
        self._poller.start()

    def close(self) -> None:
        """Stop polling and close the HTTP clients (the KBS client is the caller's)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
        self._http.close()

    def snapshot(self) -> dict[str, Any]:
        """The page's document (module docstring); re-read at most every ``min_interval``."""
        with self._lock:
            if self._cached is not None and time.monotonic() - self._read_at < self._min_interval:
                return self._cached
            doc = self._read()
            self._cached, self._read_at = doc, time.monotonic()
            return doc

    def _read(self) -> dict[str, Any]:
        now = self._clock()
        doc: dict[str, Any] = {"generated_at": _iso(now), "party": None, "kbs": self._client.url}
        try:
            history = self._client.agreement_history()
            doc["agreements"] = agreement_versions(history)
            doc["agreement_status"] = {"state": "ok"}
            if doc["agreements"]:
                self._agreement_digest = doc["agreements"][-1]["digest"]
        except (Error, httpx.HTTPError) as exc:
            doc["agreements"] = []
            doc["agreement_status"] = {"state": "error", "error": _describe(exc)}
        # progress before the audit log: a round an aggregator reports was committed to the
        # KBS counter before it was reported, so the audit read after it includes the step
        self._read_progress()
        self._read_services()
        self._read_audit()
        entries = self._entries
        doc["audit_status"] = dict(self._audit_status)
        head = self._client.heads.head
        doc["head"] = None if head is None else {"seq": head.seq, "hash": head.hash.hex()}
        doc["audit"] = [audit_entry_to_json(e) for e in entries[-MAX_AUDIT_SHOWN:]][::-1]
        doc["audit_total"] = len(entries)
        doc["denials"] = sum(e.decision == "deny" for e in entries)
        doc["workloads"] = workloads_from_audit(entries, now)
        sessions = sessions_from_audit(entries)
        doc["sessions"] = self._merge_sessions(sessions)
        return doc

    def _read_audit(self) -> None:
        last = self._entries[-1] if self._entries else None
        try:
            new = self._client.audit(after=last)
        except StateRollback as exc:
            self._audit_status = {"state": "rollback", "error": str(exc)[:500]}
            return
        except AuditChainError as exc:
            self._audit_status = {"state": "broken", "error": str(exc)[:500]}
            return
        except (Error, httpx.HTTPError) as exc:
            self._audit_status = {"state": "error", "error": _describe(exc)}
            return
        self._entries += new
        self._audit_status = {
            "state": "verified",
            "entries": len(self._entries),
            "checked_at": _iso(self._clock()),
        }

    def _read_progress(self) -> None:
        for url in self._aggregators:
            try:
                response = self._http.get(url + PROGRESS_PATH)
                if response.status_code != 200 or len(response.content) > MAX_PROGRESS_BYTES:
                    raise ParseError(f"HTTP {response.status_code}")
                doc = response.json()
                if not isinstance(doc, dict) or doc.get("format") != PROGRESS_FORMAT:
                    raise ParseError("not a teeflow progress document")
                if not isinstance(doc.get("session"), str) or not isinstance(
                    doc.get("rounds"), list
                ):
                    raise ParseError("progress document without session or rounds")
                doc["source"], doc["reachable"] = url, True
                self._progress[url] = doc
            except (httpx.HTTPError, ValueError, ParseError) as exc:
                old = self._progress.get(url, {"source": url, "rounds": []})
                self._progress[url] = {**old, "reachable": False, "error": _describe(exc)}

    def _read_services(self) -> None:
        """Every session of every ``--service`` and its new events (party-signed reads)."""
        if not self._services or self._agreement_digest is None or self._keys is None:
            return
        from teeflow.fl.control import SessionControl

        for url in self._services:
            try:
                with SessionControl(url, self._client.pin, self._keys, self._agreement_digest,
                                    timeout=5.0) as ctl:
                    for info in ctl.sessions():
                        key = f"{url}#{info.id}"
                        after, progress = self._service_progress.get(key, (0, Progress(info.id)))
                        for _ in range(100):  # bounded: pages of new events
                            events, cursor, _state = ctl.events(info.id, after)
                            for event in events:
                                progress.observe(event.event, dict(event.fields))
                            if not events or cursor <= after:
                                break
                            after = cursor
                        self._service_progress[key] = (after, progress)
                        doc = progress.snapshot()
                        doc.update(state=info.state, round=info.round, source=url,
                                   reachable=True)
                        self._progress[key] = doc
            except (Error, httpx.HTTPError) as exc:
                for key, old in list(self._progress.items()):
                    if key.startswith(url + "#"):
                        self._progress[key] = {**old, "reachable": False,
                                               "error": _describe(exc)}
                self._progress.setdefault(url, {"source": url, "rounds": [],
                                                "reachable": False, "error": _describe(exc)})
                continue
            self._progress.pop(url, None)  # a past "unreachable" placeholder

    def _merge_sessions(self, sessions: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        out = {name: {**s, "rounds": [], "progress": None} for name, s in sessions.items()}
        for url, progress in self._progress.items():
            name = progress.get("session")
            key = name if isinstance(name, str) else url
            s = out.setdefault(
                key, {"session": key, "counter": {}, "aggregator": None, "rounds": []}
            )
            counter: dict[str, str] = s["counter"]
            rounds = []
            for r in progress.get("rounds", []):
                if not isinstance(r, dict):
                    continue
                number = r.get("round")
                rounds.append(
                    {
                        "round": number,
                        "clients": [c for c in r.get("clients", []) if isinstance(c, str)],
                        "seconds": r.get("seconds"),
                        "digest": r.get("digest"),
                        "metrics": {
                            k: v for k, v in (r.get("metrics") or {}).items()
                            if isinstance(k, str) and isinstance(v, int | float)
                        },
                        "confirmed": counter.get(str(number)) == r.get("digest")
                        if number
                        else None,
                    }
                )
            s["rounds"] = rounds
            s["progress"] = {
                k: progress.get(k)
                for k in ("source", "reachable", "error", "state", "round", "clients",
                          "measurement", "emulated", "package_digest", "agreement_digest")
            }
        return sorted(out.values(), key=lambda s: str(s["session"]))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, VerificationError | Error):
        return f"{type(exc).__name__}: {str(exc)[:300]}"
    return type(exc).__name__
