"""The aggregator workload (``teeflow aggregator run``): attested, torch-free, rollback-safe.

Start-up (:meth:`Aggregator.run`):

1. measurement: the ``--manifest`` workload manifest (trusted files re-hashed first) or the
   built-in one of the installed teeflow (:func:`fl_manifest`); the attester of
   ``--platform`` (:func:`teeflow.platform.attester_for`) quotes it;
2. the agreement from the pinned KBS; the session package (:func:`teeflow.fl.publish.
   choose_package`); RCAR attestation as role ``aggregator`` claiming the package, the
   session's checkpoint key ``fl/checkpoint-key/<session>`` and the ``outputs.model``
   recipients; a workload certificate for the attested key (that key signs the provenance
   log and never leaves this process); the checkpoint key, which the KBS generates and
   releases only to attested aggregators (:mod:`teeflow.kbs.policy.generated`);
3. the KBS counter ``session/<name>`` and the checkpoint decide fresh start, resume or refusal
   (:mod:`teeflow.fl.checkpoint`; an older checkpoint raises :class:`~teeflow.fl.checkpoint.
   RollbackError`); on resume the log of the checkpoint gets a ``handover`` entry naming this
   instance's certificate (:meth:`~teeflow.fl.provenance_log.ProvenanceLog.handover`), after
   the hand-over certificates already in it passed the federation CA check;
4. the gRPC server (mutual TLS, :mod:`teeflow.fl.transport.server`; a new stream must send its
   Hello within ``connect_timeout``, keepalive pings tolerate ``round_timeout / 5`` seconds
   of silence, at least 30); wait (bounded by ``connect_timeout``) for ``wait_clients``
   clients.

**Initial model.** The aggregator has no torch, so on a fresh session it asks one attested
client to run the package's ``init`` function with the training config — the first to connect
(party-name order among those connected; the next one if that fails), *while* the others are
still attesting and connecting; the result's digest starts the provenance log
(``session-start``) and, once ``wait_clients`` clients are connected, it is evaluated as
round 0.

**Rules.** The strategy, its parameters, outlier detection and DP come from the agreement's
``training`` section (:mod:`teeflow.fl.rules`; a different request is refused); a DP budget
that the next round would exceed ends the session before it.

**Round r** (1..``rounds``): first the live-trust admission (issue 11,
:class:`teeflow.fl.liveness.LiveTrust`: agreement in force, re-attestation, drops; updates
re-checked as they arrive); then ``configure_train`` over the connected clients; each selected
client gets the global model and config; updates are decoded, checked and folded into the
strategy *as they arrive* (``aggregate_train`` consumes a stream: memory O(model)); a client
that disconnects, fails or misses the round deadline is dropped from the round; each update
weighs its client's ``num_examples`` clipped to the agreement's cap (:mod:`teeflow.fl.collect`;
recorded in the round's provenance entry). Fewer than ``min_clients`` updates: the round is
retried once, then the session fails with :class:`~teeflow.errors.FLError`. Then federated
evaluation (best effort, each result checked alone), then the commit: provenance ``round``
entry (with the round's trust record: agreement version, attestation ages, drops), sealed
checkpoint, KBS counter compare-and-increment to ``r`` bound to the model digest. After the
last round the ``final`` entry is appended and the model is sealed to the recipients
(:mod:`teeflow.fl.outputs`).

Progress goes to ``emit(event, fields)`` (the CLI prints JSON lines; :mod:`teeflow.fl.session`
reads them). This module never imports torch (``tests`` check ``sys.modules``).
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from teeflow.errors import Error, FLError, ParseError
from teeflow.fl.arrays import (
    ArrayDict,
    arrays_digest,
    check_compatible,
    decode_arrays,
    encode_arrays,
)
from teeflow.fl.checkpoint import Checkpoint, CheckpointError, CheckpointStore, counter_name
from teeflow.fl.collect import ResultCollector, RoundTally
from teeflow.fl.console import no_initial_model
from teeflow.fl.liveness import LiveTrust, SelfAttestation, reattest_with
from teeflow.fl.memory import peak_rss_bytes, trim_heap
from teeflow.fl.monitor import monitor_aggregator
from teeflow.fl.outputs import (
    aggregator_certificate_check,
    model_recipients,
    seal_for_serving,
    seal_model,
    serving_resources,
)
from teeflow.fl.proto import teeflow_fl_pb2 as pb
from teeflow.fl.provenance import ClientRecord, save_provenance
from teeflow.fl.provenance_log import ProvenanceLog
from teeflow.fl.publish import choose_package, fetch_resource
from teeflow.fl.rules import TrainingPlan
from teeflow.fl.strategy import EvaluateResult
from teeflow.fl.strategy.base import Config, Metrics, Strategy, weighted_metrics
from teeflow.fl.transport.server import ClientHub, TaskHandle, TransportServer
from teeflow.fl.trust import AgreementInForce, RoundTrust, earlier_version, trust_summary
from teeflow.fl.workload import (
    AggregatorResult,
    RoundReport,
    fl_manifest,
    fl_measurement,
    parse_listen,
)
from teeflow.kbs.api.problems import Conflict, TokenNotFound, TokenVerifierError
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.policy.agreement import FederationAgreement, digest
from teeflow.kbs.policy.generated import checkpoint_key_path
from teeflow.platform.nvidia import gpu_attester_for
from teeflow.platform.selection import PlatformOptions

__all__ = [
    "Aggregator",
    "AggregatorOptions",
    "AggregatorResult",
    "RoundReport",
    "fl_manifest",
    "fl_measurement",
    "parse_listen",
]

_LOG = logging.getLogger("teeflow.fl.aggregator")
Emit = Callable[[str, dict[str, Any]], None]


@dataclass
class AggregatorOptions:
    """Options of ``teeflow aggregator run`` (see ``docs/fl.md``).

    Times are seconds. ``wait_clients`` defaults to ``min_clients``. ``enrollment``: the token
    file of the aggregator operator's enrollment (role ``aggregator``; ``teeflow party
    enroll``) — the KBS refuses the aggregator without it. The aggregation rule, its
    parameters and ``fraction_fit`` come from the agreement's ``training`` section
    (:mod:`teeflow.fl.rules`): ``strategy`` and ``fraction_fit`` are consistency checks only
    (None: not checked), a different value is refused. ``metrics_listen``: ``HOST:PORT`` of
    the metrics and progress endpoint (:mod:`teeflow.fl.monitor`), None for none.
    """

    pin: Path
    session: str
    rounds: int
    min_clients: int
    kbs_url: str | None = None
    fraction_fit: float | None = None
    strategy: str | None = None
    listen: str = "127.0.0.1:0"
    state_dir: Path = Path(".")
    checkpoint: Path | None = None
    out_dir: Path | None = None
    package: Path | None = None
    package_ref: str | None = None
    wait_clients: int | None = None
    connect_timeout: float = 120.0
    round_timeout: float = 300.0
    train_config: Config = field(default_factory=dict)
    evaluate_config: Config = field(default_factory=dict)
    seed: int = 0
    manifest: Path | None = None
    max_clients: int = 64
    platform: PlatformOptions = field(default_factory=PlatformOptions)
    enrollment: Path | None = None
    gpu: str = "none"
    metrics_listen: str | None = None


class Aggregator:
    """One aggregator run (module docstring).

    Args:
        options: the run's options.
        emit: progress sink ``emit(event, fields)`` (:class:`teeflow.fl.events.EventLog`
            keeps them typed).
        strategy: a strategy object to run; it must be the agreement's rule with its agreed
            parameters (default: built from the agreement, :mod:`teeflow.fl.rules`).

    Raises:
        FLError: bad options (rounds, clients, timeouts, session name).
    """

    def __init__(
        self,
        options: AggregatorOptions,
        emit: Emit | None = None,
        *,
        strategy: Strategy | None = None,
    ) -> None:
        o = options
        if o.rounds < 1 or o.min_clients < 1 or o.round_timeout <= 0 or o.connect_timeout <= 0:
            raise FLError("rounds and min_clients must be >= 1, timeouts > 0")
        counter_name(o.session)
        self.o = options
        self._emit_fn = emit or (lambda event, fields: None)
        self._reports: list[RoundReport] = []
        self._stop_reason: str | None = None
        self._given_strategy = strategy
        self._last_round = 0
        self._round_secs = 0.0  # the last round's seconds (the next admission's horizon)

    def stop(self, reason: str) -> None:
        """Ask the session to end before its next round (thread-safe; a round in progress
        finishes and is committed first); :meth:`run` then raises :class:`FLError` with
        ``reason`` and the clients get Goodbye. Waiting for the first clients is
        interrupted too (within a second). Used by :mod:`teeflow.fl.service`."""
        self._stop_reason = reason[:300] or "stopped"

    def _check_stop(self, where: str) -> None:
        if self._stop_reason is not None:
            raise FLError(f"session stopped {where}: {self._stop_reason}")

    def emit(self, event: str, **fields: Any) -> None:
        """Report progress."""
        self._emit_fn(event, fields)

    # -- KBS -----------------------------------------------------------------------------

    def _attest(self) -> None:
        self.kbs.attest("aggregator", self._claims)

    def _kbs_call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (TokenVerifierError, TokenNotFound):  # token expired: attest again once
            self._attest()
            self.emit("reattested", role="aggregator")
            return fn()

    def _setup(self) -> None:
        o = self.o
        mr = fl_measurement("aggregator", o.manifest)
        platform = o.platform.attester(mr)
        self.emit("platform", tee=platform.tee, attester=platform.kind)
        token = None
        if o.enrollment is not None:
            from teeflow.kbs.policy.enrollment import load_enrollment

            token = load_enrollment(o.enrollment)
        self.kbs = KbsClient(o.kbs_url, o.pin, platform, enrollment=token,
                             gpu=gpu_attester_for(o.gpu))
        signed = self.kbs.current_agreement()
        if signed is None:
            raise FLError("the KBS has no agreement")
        self.agreement: FederationAgreement = signed.agreement
        self.signed_agreement = signed
        self.agreement_digest = digest(self.agreement)
        name, pkg_hex = choose_package(self.agreement, o.package_ref)
        self.package_digest = bytes.fromhex(pkg_hex)
        self.recipients = model_recipients(self.agreement)
        path = checkpoint_key_path(o.session)  # generated by the KBS, aggregators only
        self._claims = {
            "package_digest": pkg_hex,
            "resources": [path, *serving_resources(self.agreement, o.session)],
            "recipients": sorted(self.recipients),
            "session": o.session,  # scopes the rollback counter to this session
        }
        self._attest()
        cert_pem, key = self.kbs.get_certificate()
        self.identity = self.kbs.check_certificate(x509.load_pem_x509_certificate(cert_pem))
        if self.identity.agreement_digest != self.agreement_digest.hex():
            raise FLError("the certificate was issued under another agreement (agreement changed?)")
        self.cert_pem, self.key = cert_pem, key  # the key never leaves this process
        self._certify = aggregator_certificate_check(self.kbs.pin.ca())
        self.emit(
            "attested",
            role="aggregator",
            measurement=self.identity.measurement,
            package=name,
            package_digest=pkg_hex,
            agreement_digest=self.agreement_digest.hex(),
            emulated=self.identity.emulated,
        )
        trim_heap()  # attestation's transient allocations
        self.store = CheckpointStore(
            o.checkpoint or (o.state_dir / f"{o.session}.checkpoint"),
            fetch_resource(self.kbs, path),
            o.session,
        )

    # -- the session ----------------------------------------------------------------------

    def run(self) -> AggregatorResult:
        """Run the session (module docstring).

        Raises:
            RollbackError, CheckpointError: the checkpoint does not match the KBS counter.
            FLError: too few clients, a round failed twice, or another runtime failure.
            KbsError subclasses: the KBS refused attestation, certificate or key.
        """
        o = self.o
        o.state_dir.mkdir(parents=True, exist_ok=True)
        # metrics + progress endpoint (--metrics-listen): teeflow.fl.monitor
        with monitor_aggregator(o.metrics_listen, o.session, self._emit_fn) as self._emit_fn:
            self._setup()
            try:
                return self._serve()
            finally:
                self.kbs.close()

    def _serve(self) -> AggregatorResult:
        o = self.o
        self._prepare_training()  # refuse a request the agreement does not allow, first
        counter = self.kbs.get_counter(counter_name(o.session))
        ckpt = self.store.load(counter)
        start_round = 0
        if ckpt is not None:
            start_round = self._resume(ckpt)
        try:
            sealed_package = o.package.read_bytes() if o.package is not None else None
        except OSError as exc:
            raise FLError(f"cannot read {o.package}: {exc.strerror or exc}") from None
        self.hub = ClientHub(
            session=o.session,
            agreement_digest=digest(self.signed_agreement.agreement),  # the one in force
            package_digest=self.package_digest,
            ca=self.kbs.pin.ca(),
            certificate_pem=self.cert_pem,
            key=self.key,
            sealed_package=sealed_package,
            on_event=lambda event, fields: self.emit(event, **fields),
        )
        self._collector()
        self.live = self._live_trust()
        self.collect.admit = self.live.admit
        host, port = parse_listen(o.listen)
        server = TransportServer(
            self.hub,
            host,
            port,
            max_clients=o.max_clients,
            hello_timeout=o.connect_timeout,
            keepalive_time=max(60.0, o.round_timeout / 5),
            keepalive_timeout=min(max(30.0, o.round_timeout / 5), 300.0),
        ).start()
        self.emit(
            "listening", host=host, port=server.port, session=o.session, resumed_from=start_round
        )
        ok, reason = False, "aborted"
        try:
            result = self._session(start_round)
            ok, reason = True, "session complete"
            return result
        except Error as exc:
            reason = str(exc)
            raise
        finally:
            # Goodbye ends every stream; clients close theirs on it, so the grace is rarely used
            self.hub.shutdown(ok=ok, reason=reason[:500], rounds=self.hub.round)
            server.stop(grace=1.0)

    def _prepare_training(self) -> None:
        """The rules from the agreement in force (:class:`~teeflow.fl.rules.TrainingPlan`;
        refuses a request that differs from it)."""
        self.plan = TrainingPlan.for_options(
            self.agreement, self.o, self._given_strategy, self._emit_fn
        )
        self.strategy = self.plan.strategy
        self.emit("training", **self.plan.summary())

    def _collector(self) -> None:
        self.collect = ResultCollector(self.hub, self.agreement.fl, self._emit_fn)

    # -- live trust (issue 11; the rules: teeflow.fl.trust, the driver: teeflow.fl.liveness) --

    def _live_trust(self) -> LiveTrust:
        return LiveTrust(
            current=self.kbs.current_agreement,
            self_attest=reattest_with(self.kbs, self._attest),
            hub=self.hub,
            force=AgreementInForce.of(self.signed_agreement),
            me=SelfAttestation(self.cert_pem, self.key, self.identity),
            min_clients=self.o.min_clients,
            reattest_timeout=min(self.o.round_timeout, 120.0),
            emit=self._emit_fn,
        )

    def _resume(self, ckpt: Checkpoint) -> int:
        in_force = None
        if ckpt.agreement_digest != self.agreement_digest.hex():
            # an update accepted during the session (issue 11): resume only a session of an
            # earlier version of this federation's verified agreement chain
            if not earlier_version(
                self.kbs.agreement_history(), ckpt.agreement_digest, self.agreement_digest
            ):
                raise CheckpointError(
                    "the checkpoint was made under another agreement: start a new session"
                )
            in_force = self.agreement_digest
            self.agreement_digest = bytes.fromhex(ckpt.agreement_digest)  # the session's
        if ckpt.package_digest != self.package_digest.hex():
            raise CheckpointError("the checkpoint was made with another package")
        # the log of the checkpoint was signed by the previous instance(s); this instance
        # signs with its own attested key from a hand-over entry on
        self.log = ProvenanceLog(self.key, ckpt.provenance, certify=self._certify)
        handover = self.log.handover(
            aggregator_certificate=self.cert_pem.decode("ascii"),
            aggregator_measurement=self.identity.measurement,
            agreement_in_force=in_force,
        )
        self.emit("handover", round=ckpt.round, entry=handover.seq)
        self.global_arrays = decode_arrays(ckpt.arrays)
        self.strategy.load_state_arrays(decode_arrays(ckpt.strategy_state))
        self.plan.restore(self.log.entries)  # outlier exclusions and removals so far
        self._history = [dict(m) for m in ckpt.metrics]
        self._last_round = ckpt.round
        self.emit("resumed", round=ckpt.round, digest=ckpt.arrays_digest.hex())
        return ckpt.round

    def _session(self, start_round: int) -> AggregatorResult:
        o = self.o
        want = o.wait_clients or o.min_clients
        deadline = time.monotonic() + o.connect_timeout
        if start_round == 0:
            # the initial model needs one client: ask the first that connects while the
            # others are still attesting and connecting
            t0 = time.monotonic()
            self._initial_model(deadline, want)
        n = self.hub.wait_for(want, max(deadline - time.monotonic(), 0.0))
        if n < o.min_clients:
            raise FLError(
                f"only {n} clients connected within {o.connect_timeout:g} s, "
                f"{o.min_clients} needed (--min-clients)"
            )
        if start_round == 0:
            self._evaluate_initial(t0)
        for r in range(start_round + 1, o.rounds + 1):
            self._check_stop(f"before round {r}")
            if not self.plan.budget_allows(r, len(self.plan.eligible(self.hub.connected()))):
                break  # the agreed privacy budget ends the session before this round
            self._round(r)
            self._last_round = r
        last = self._history[-1] if self._history else {}
        self.log.finish(metrics={k: v for k, v in last.items() if k.startswith("eval_")})
        return self._write_outputs(start_round)

    # -- initial model ----------------------------------------------------------------------

    def _initial_model(self, deadline: float, want: int) -> None:
        """Ask connected clients, in party-name order as they come, for the package's initial
        model until one succeeds (bounded by ``deadline``, monotonic seconds)."""
        config: Config = {**self.o.train_config, "round": 0, "seed": self.o.seed}
        arrays: ArrayDict | None = None
        tried: set[str] = set()
        failures: dict[str, str] = {}  # party → the client's reported error (type: message)
        while arrays is None:
            self._check_stop("while waiting for clients")
            candidates = [p for p in self.hub.connected() if p not in tried]
            if not candidates:
                left = deadline - time.monotonic()
                if left <= 0 or len(tried) >= want:
                    break
                self.hub.wait_for(len(self.hub.connected()) + 1, min(left, 1.0))
                continue
            party = candidates[0]
            tried.add(party)
            try:
                handle = self.hub.submit(
                    party, pb.TASK_KIND_INIT, 0, config, None, deadline_seconds=self.o.round_timeout
                )
            except FLError as exc:  # disconnected meanwhile
                failures[party] = str(exc)[:300]
                self.emit("init-failed", party=party, reason=failures[party])
                continue
            done = list(self.hub.as_completed([handle], time.monotonic() + self.o.round_timeout))
            try:
                out = done[0].outcome() if done else handle.outcome()
                assert out.arrays is not None
                arrays = decode_arrays(out.arrays)
                check_compatible(arrays, arrays, who=f"initial model from {party}")
            except (FLError, ParseError, AssertionError) as exc:
                arrays = None
                failures[party] = str(exc)[:300]
                self.emit("init-failed", party=party, reason=failures[party])
                continue
            self.emit("initial-model", party=party, digest=arrays_digest(arrays).hex())
        if arrays is None:
            raise FLError(no_initial_model(failures))
        self.global_arrays = arrays
        self.log = ProvenanceLog(self.key, certify=self._certify)
        self.log.start(
            session=self.o.session,
            agreement_digest=self.agreement_digest,
            aggregator_measurement=self.identity.measurement,
            aggregator_certificate=self.cert_pem.decode("ascii"),
            package_digest=self.package_digest,
            initial_digest=arrays_digest(arrays),
            training=self.plan.terms,
        )
        self._history = []

    def _evaluate_initial(self, t0: float) -> None:
        """Round 0: every connected client evaluates the initial model."""
        arrays = self.global_arrays
        metrics = self._evaluate(0, arrays)
        self._report(0, (), metrics, time.monotonic() - t0, arrays_digest(arrays).hex())

    # -- rounds ---------------------------------------------------------------------------------

    def _round(self, r: int) -> None:
        o = self.o
        t0 = time.monotonic()
        self.hub.round = r
        trust = self.live.before_round(r, self._round_secs)
        global_bytes = encode_arrays(self.global_arrays)
        for attempt in (1, 2):
            try:
                instructions = self.strategy.configure_train(
                    r, self.global_arrays, self.plan.eligible(self.hub.connected())
                )
            except FLError as exc:
                if attempt == 2:
                    raise FLError(f"round {r} failed after a retry: {exc}") from None
                self.emit("round-retry", round=r, reason=str(exc)[:300])
                self.hub.wait_for(o.min_clients, o.round_timeout)
                continue
            handles: list[TaskHandle] = []
            measurements: dict[str, str] = {}
            for ins in instructions:
                ident = self.hub.identity(ins.client)
                try:
                    handles.append(
                        self.hub.submit(
                            ins.client,
                            pb.TASK_KIND_TRAIN,
                            r,
                            ins.config,
                            global_bytes,
                            deadline_seconds=o.round_timeout,
                        )
                    )
                except FLError as exc:
                    self.emit("client-dropped", round=r, party=ins.client, reason=str(exc))
                    continue
                if ident is not None:
                    measurements[ins.client] = ident.measurement
            self.emit("round-start", round=r, attempt=attempt, selected=[h.party for h in handles])
            deadline = time.monotonic() + o.round_timeout
            tally = RoundTally()
            try:
                outcome = self.plan.aggregate(
                    r,
                    self.collect.updates(r, handles, deadline, self.global_arrays, tally),
                    functools.partial(
                        self.plan.utilities,
                        self.hub,
                        r,
                        evaluators=self.plan.eligible(self.hub.connected()),
                        config=dict(o.evaluate_config or o.train_config),
                        timeout=o.round_timeout,
                    ),
                )
                new_global, fit_metrics = outcome.arrays, outcome.metrics
            except FLError as exc:
                for h in handles:
                    if not h.done():
                        self.hub.abandon(h, "round aborted")
                if attempt == 2:
                    raise FLError(
                        f"round {r} failed after a retry: {exc} — session stopped"
                    ) from None
                self.emit("round-retry", round=r, reason=str(exc)[:300])
                continue
            break
        self.global_arrays = new_global
        eval_metrics = self._evaluate(r, new_global)
        metrics: Metrics = {
            (k if k.startswith("train_") else f"train_{k}"): v for k, v in fit_metrics.items()
        }
        metrics.update(eval_metrics)
        clients = sorted(tally.digests)
        new_digest = arrays_digest(new_global)
        self.log.record_round(
            r,
            clients=[ClientRecord(party=p, measurement=measurements[p]) for p in clients],
            update_digests=tally.digests,
            weights={p: w for p, w in tally.weights.items() if p not in outcome.excluded},
            clipped=tally.clipped - outcome.excluded,
            aggregate_digest=new_digest,
            metrics=metrics,
            detection=outcome.detection,
            privacy=outcome.privacy,
            trust=self.live.record(trust, clients),
        )
        self._history.append(dict(metrics))
        self._commit(r, new_global)
        self._round_secs = time.monotonic() - t0
        self._report(r, tuple(clients), metrics, self._round_secs, new_digest.hex(), trust=trust)
        del global_bytes, new_global, fit_metrics
        trim_heap()  # the round's models, updates and messages are garbage now

    def _evaluate(self, r: int, arrays: ArrayDict) -> Metrics:
        """Federated evaluation of ``arrays`` (best effort; :meth:`ResultCollector.evaluate`):
        round 0 by every connected client, later rounds by the strategy's choice (clients
        removed by outlier detection left out)."""
        clients = self.plan.eligible(self.hub.connected())
        try:
            if r == 0:
                config: Config = {**(self.o.evaluate_config or self.o.train_config), "round": 0}
                configs = {p: config for p in clients}
            else:
                ins = self.strategy.configure_evaluate(r, arrays, clients)
                configs = {i.client: i.config for i in ins}
        except FLError as exc:
            self.emit("evaluate-skipped", round=r, reason=str(exc)[:300])
            return {}

        def aggregate(results: list[EvaluateResult]) -> Metrics:
            if r == 0:
                return weighted_metrics((e.num_examples, e.metrics) for e in results)
            return self.strategy.aggregate_evaluate(r, results)

        return self.collect.evaluate(r, arrays, configs, self.o.round_timeout, aggregate)

    def _checkpoint(self, r: int, arrays: ArrayDict) -> Checkpoint:
        return Checkpoint(
            session=self.o.session,
            round=r,
            arrays=encode_arrays(arrays),
            strategy_state=encode_arrays(self.strategy.state_arrays()),
            provenance=self.log.entries,
            agreement_digest=self.agreement_digest.hex(),
            package_digest=self.package_digest.hex(),
            metrics=tuple(self._history),
        )

    def _commit(self, r: int, arrays: ArrayDict) -> None:
        ckpt = self._checkpoint(r, arrays)
        name = counter_name(self.o.session)

        def increment(expected: int, model_digest: bytes) -> None:
            try:
                self._kbs_call(lambda: self.kbs.increment_counter(name, expected, model_digest))
            except Conflict:
                raise CheckpointError(
                    f"{name} is no longer at round {expected}: another aggregator instance "
                    "committed this session — stopping"
                ) from None

        self.store.commit(ckpt, increment)
        self.emit("committed", round=r, digest=ckpt.arrays_digest.hex(), counter=name)

    def _report(self, r: int, clients: tuple[str, ...], metrics: Metrics, secs: float, d: str,
                *, trust: RoundTrust | None = None) -> None:
        live = trust_summary(trust, clients)  # agreement version, attestation age, drops
        self._reports.append(RoundReport(r, clients, metrics, secs, d, **live))
        self.emit("round", round=r, clients=list(clients), seconds=round(secs, 4), digest=d,
                  **live, **metrics)

    # -- outputs ----------------------------------------------------------------------------------

    def _write_outputs(self, start_round: int) -> AggregatorResult:
        o = self.o
        out = o.out_dir or o.state_dir
        out.mkdir(parents=True, exist_ok=True)
        model_path = out / f"{o.session}.model"
        prov_path = out / f"{o.session}.provenance.jsonl"
        data = encode_arrays(self.global_arrays)
        sealed = seal_model(
            data,
            model_recipients(self.live.force.agreement),  # the agreement in force at the end
            session=o.session,
            federation=self.agreement.federation,
            agreement_digest=self.agreement_digest.hex(),
        )
        try:
            model_path.write_bytes(sealed)
        except OSError as exc:
            raise FLError(f"cannot write {model_path}: {exc.strerror or exc}") from None
        save_provenance(self.log.entries, prov_path)
        serving = seal_for_serving(  # outputs.serve: also sealed for the serve workload
            data, self.agreement, session=o.session, package_digest=self.package_digest.hex(),
            fetch_key=lambda p: self._kbs_call(lambda: fetch_resource(self.kbs, p)),
            out_dir=out,
        )
        self._emit_done(model_path, prov_path, recipients=sorted(self.recipients),
                        serving_model=None if serving is None else str(serving))
        return AggregatorResult(
            o.session, self._last_round, start_round, model_path, prov_path, tuple(self._reports)
        )

    def _emit_done(self, model_path: Path, prov_path: Path, **extra: Any) -> None:
        self.emit(
            "done",
            session=self.o.session,
            rounds=self._last_round,
            model=str(model_path),
            provenance=str(prov_path),
            digest=arrays_digest(self.global_arrays).hex(),
            torch_imported="torch" in sys.modules,
            max_rss_bytes=peak_rss_bytes(),
            **extra,
            **self.plan.summary(),
        )
