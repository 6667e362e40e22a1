"""Partitioned applications (issue 15): protocol, deterministic machine, snapshots, votes,
agreement terms and the app-key release rule — fast, in process."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from teeflow.app.client import QuorumError, Tally
from teeflow.app.machine import (
    Applied,
    Refused,
    ReplicaMachine,
    RollbackError,
    SnapshotError,
    SnapshotStore,
)
from teeflow.app.package import load_app, package_digest
from teeflow.app.protocol import (
    AppKeys,
    SignedReply,
    check_reply,
    decrypt_reply,
    open_request,
    seal_request,
)
from teeflow.errors import ParseError, SealingError, VerificationError, WorkloadError
from teeflow.kbs.policy.apps import AppTerms, app_key_path
from teeflow.kbs.policy.generated import generated_release_problems, generated_scope
from teeflow.kbs.protocol import CounterState

REPO = Path(__file__).resolve().parents[2]
AUCTION = REPO / "examples" / "sealed-auction" / "package"
APP = "auction"


@pytest.fixture(scope="module")
def logic():
    return load_app(AUCTION, package_digest(AUCTION))


@pytest.fixture(scope="module")
def keys():
    return AppKeys.from_secret(bytes(range(32)))


def machine(logic, keys, replica=0, signer=None):
    return ReplicaMachine(app=APP, replica=replica, logic=logic, keys=keys,
                          signing_key=signer or ec.generate_private_key(ec.SECP256R1()),
                          max_request_bytes=65536)


class Bidder:
    def __init__(self, keys, first=1):
        self.key = Ed25519PrivateKey.generate()
        self.seq = first
        self.public = keys.hpke.public_key()
        self.reply_keys: dict[int, bytes] = {}

    def req(self, body):
        rk = os.urandom(32)
        self.reply_keys[self.seq] = rk
        wire = seal_request(app=APP, app_public=self.public, client_key=self.key, seq=self.seq,
                            body=body, reply_key=rk)
        self.seq += 1
        return wire


def run(m, messages):
    """Feed (position, raw) pairs; return the outcomes."""
    return [m.process(pos, raw) for pos, raw in messages]


def test_request_round_trip_and_reply_decrypts(logic, keys):
    b = Bidder(keys)
    wire = b.req({"op": "open", "lot": "x"})
    opened = open_request(wire, app=APP, keys=keys, max_bytes=65536)
    assert opened.seq == 1 and opened.body == {"op": "open", "lot": "x"}
    # the host sees ciphertext only (quoted keys: base64url text never holds '"')
    assert b'"op"' not in wire and b'"lot"' not in wire and b'"x"' not in wire
    out = machine(logic, keys).process(1, wire)
    assert isinstance(out, Applied)
    assert decrypt_reply(out.reply, b.reply_keys[1]) == {"opened": "x"}


def test_request_for_another_app_or_key_does_not_open(keys):
    wire = Bidder(keys).req({"op": "bid"})
    with pytest.raises(SealingError):
        open_request(wire, app="other", keys=keys, max_bytes=65536)
    with pytest.raises(SealingError):
        open_request(wire, app=APP, keys=AppKeys.from_secret(bytes(32)), max_bytes=65536)


def test_request_with_another_client_id_is_refused(keys):
    """ATTACK: the host rewrites the outer client id to another client's."""
    wire = json.loads(Bidder(keys).req({"op": "bid"}))
    wire["client"] = "0" * 32
    with pytest.raises(SealingError):  # the id is bound into the HPKE info
        open_request(json.dumps(wire).encode(), app=APP, keys=keys, max_bytes=65536)


def test_forged_client_signature_is_refused(keys):
    """ATTACK: someone seals a request naming a client whose key they do not hold."""
    from teeflow.app import protocol

    victim = Ed25519PrivateKey.generate()
    cid = protocol.client_id(victim.public_key())
    inner = {"app": APP, "body": {"op": "bid", "amount": 1}, "client": cid,
             "key": protocol._b64(victim.public_key().public_bytes_raw()),
             "reply_key": protocol._b64(bytes(32)), "seq": 5,
             "sig": protocol._b64(Ed25519PrivateKey.generate().sign(b"x"))}
    from teeflow.kbs.policy.canonical import canonical_json

    enc = protocol._SUITE.encrypt(canonical_json(inner), keys.hpke.public_key(),
                                  info=protocol._request_info(APP, cid))
    wire = json.dumps({"v": 1, "client": cid, "enc": protocol._b64(enc)}).encode()
    with pytest.raises(VerificationError):
        open_request(wire, app=APP, keys=keys, max_bytes=65536)


@pytest.mark.parametrize("raw", [b"", b"[]", b"{", b'{"v":1}', b"x" * 70000,
                                 b'{"v":1,"client":"zz","enc":"AA"}'])
def test_malformed_requests_raise_parse_error(keys, raw):
    with pytest.raises(ParseError):
        open_request(raw, app=APP, keys=keys, max_bytes=65536)


def test_replayed_request_is_refused(logic, keys):
    """ATTACK: the host re-publishes a bid (same ciphertext) later in the stream."""
    seller, bidder = Bidder(keys), Bidder(keys)
    bid = bidder.req({"op": "bid", "amount": 10})
    m = machine(logic, keys)
    outs = run(m, [(1, seller.req({"op": "open", "lot": "l"})), (2, bid), (3, bid)])
    assert isinstance(outs[1], Applied)
    assert isinstance(outs[2], Refused) and "replayed" in outs[2].reason
    # an older sequence number (a reordered request of the same client) is refused too
    late = Bidder(keys)
    late.key, late.seq = bidder.key, 1
    assert isinstance(m.process(4, late.req({"op": "bid", "amount": 99})), Refused)


def test_redelivered_position_is_applied_once(logic, keys):
    s = Bidder(keys)
    m = machine(logic, keys)
    wire = s.req({"op": "open", "lot": "l"})
    assert isinstance(m.process(7, wire), Applied)
    assert isinstance(m.process(7, wire), Refused)
    assert isinstance(m.process(3, s.req({"op": "close"})), Refused)


def _auction_stream(keys, order, duplicate):
    seller = Bidder(keys)
    bidders = [Bidder(keys) for _ in range(4)]
    amounts = [500, 900, 700, 900]
    bids = [b.req({"op": "bid", "amount": a}) for b, a in zip(bidders, amounts, strict=False)]
    bids = [bids[i] for i in order]
    if duplicate:
        bids = [x for bid in bids for x in (bid, bid)]
    msgs = [seller.req({"op": "open", "lot": "l"}), *bids, seller.req({"op": "close"})]
    return seller, bidders, list(enumerate(msgs, start=1))


def test_reordering_and_duplicates_do_not_change_the_result(logic, keys):
    results = set()
    for order in itertools.islice(itertools.permutations(range(4)), 0, 24, 5):
        for duplicate in (False, True):
            seller, bidders, msgs = _auction_stream(keys, order, duplicate)
            out = run(machine(logic, keys), msgs)[-1]
            assert isinstance(out, Applied)
            value = decrypt_reply(out.reply, seller.reply_keys[2])
            winner = sorted((b for b in (bidders[1], bidders[3])),
                            key=lambda b: b.key.public_key().public_bytes_raw())
            assert value["price"] == 900  # second price: the tie at 900
            from teeflow.app.protocol import client_id

            ids = sorted(client_id(b.key.public_key()) for b in winner)
            assert value["winner"] == ids[0]
            results.add(json.dumps({"price": value["price"]}))
    assert len(results) == 1


def test_replicas_sign_identical_replies(logic, keys):
    s = Bidder(keys)
    wire = s.req({"op": "open", "lot": "l"})
    a, b = machine(logic, keys, 0).process(1, wire), machine(logic, keys, 1).process(1, wire)
    assert isinstance(a, Applied) and isinstance(b, Applied)
    assert a.reply.reply == b.reply.reply  # deterministic ciphertext: votes can match


def test_reply_signature_tamper_is_detected(logic, keys):
    signer = ec.generate_private_key(ec.SECP256R1())
    out = machine(logic, keys, signer=signer).process(1, Bidder(keys).req({"op": "x"}))
    assert isinstance(out, Applied)
    check_reply(out.reply, signer.public_key())
    forged = SignedReply(**{**out.reply.__dict__, "reply": b"\0" + out.reply.reply[1:]})
    with pytest.raises(VerificationError):
        check_reply(forged, signer.public_key())
    assert SignedReply.from_wire(out.reply.to_wire()) == out.reply


def test_tally_never_accepts_fewer_than_quorum():
    t = Tally(2)
    t.add(0, b"good", 5)
    assert t.winner() is None
    t.add(0, b"good", 5)  # the same replica twice counts once
    t.add(0, b"other", 5)
    assert t.winner() is None
    t.add(1, b"bad", 5)
    t.add(2, b"good", 6)  # same reply, another position: another vote
    assert t.winner() is None
    t.add(3, b"good", 5)
    assert t.winner() == (b"good", 5, (0, 3))
    assert t.dissenters(b"good", 5) == (1, 2)
    with pytest.raises(WorkloadError):
        Tally(0)
    assert issubclass(QuorumError, VerificationError)


class FakeCounter:
    def __init__(self):
        self.state: CounterState | None = None

    def get(self):
        return self.state

    def inc(self, expected, digest):
        value = 0 if self.state is None else self.state.value
        assert value == expected
        self.state = CounterState(name="app/op/auction.r0", value=value + 1, digest=digest.hex())
        return self.state


def test_snapshot_round_trip_and_rollback(tmp_path, logic, keys):
    counter = FakeCounter()
    store = SnapshotStore(tmp_path / "s", app=APP, replica=0, keys=keys, package=logic.digest,
                          get_counter=counter.get, increment=counter.inc)
    assert store.load() is None
    m = machine(logic, keys)
    s = Bidder(keys)
    m.process(1, s.req({"op": "open", "lot": "l"}))
    store.commit(m)
    old = (tmp_path / "s").read_bytes()
    m.process(2, s.req({"op": "close"}))
    store.commit(m)
    fresh = SnapshotStore(tmp_path / "s", app=APP, replica=0, keys=keys, package=logic.digest,
                          get_counter=counter.get, increment=counter.inc)
    restored = fresh.load()
    assert restored is not None and restored.position == 2 and restored.number == 2
    assert restored.state["result"] is not None
    # ATTACK: the host puts back the older sealed snapshot
    (tmp_path / "s").write_bytes(old)
    with pytest.raises(RollbackError):
        fresh.load()
    # ATTACK: a snapshot while the counter was never stepped
    with pytest.raises(SnapshotError):
        SnapshotStore(tmp_path / "s", app=APP, replica=0, keys=keys, package=logic.digest,
                      get_counter=lambda: None, increment=counter.inc).load()
    # another replica's key/aad does not open it
    with pytest.raises(SealingError):
        SnapshotStore(tmp_path / "s", app=APP, replica=1, keys=keys, package=logic.digest,
                      get_counter=counter.get, increment=counter.inc).load()


def test_modified_package_has_another_digest(tmp_path):
    copy = tmp_path / "pkg"
    shutil.copytree(AUCTION, copy)
    good = package_digest(copy)
    (copy / "app.py").write_text((copy / "app.py").read_text().replace("ranked[1][1]", "0"))
    assert package_digest(copy) != good
    with pytest.raises(WorkloadError):
        load_app(copy, good)


def _agreement(**apps):
    from teeflow.kbs.policy.agreement import FederationAgreement
    from teeflow.kbs.policy.parties import PartyKeys

    k = PartyKeys.generate("op")
    return FederationAgreement.from_mapping({
        "federation": "f", "version": 1,
        "parties": {"op": {"sign_key": k.public().sign_key,
                           "recipient_key": k.public().recipient_key,
                           "roles": ["compute-operator"]}},
        "workloads": {"app": {"sgx": {"mrenclave": ["11" * 32]}}},
        "packages": {"auction": {"digest": "22" * 32, "functions": ["handle", "init"]}},
        "update_quorum": {"k": 1}, "allow_emulated": True, "apps": apps,
    })


def test_app_terms_validation():
    a = _agreement(auction={"package": "22" * 32, "replicas": 4})
    terms = a.apps["auction"]
    assert (terms.faults, terms.quorum) == (1, 2)
    assert terms.stream_name("auction") == "teeflow-app-auction"
    with pytest.raises(ParseError):  # n < 3f + 1
        _agreement(auction={"package": "22" * 32, "replicas": 4, "f": 2})
    with pytest.raises(ParseError):  # package not in packages
        _agreement(auction={"package": "33" * 32, "replicas": 4})
    assert AppTerms(package="22" * 32, replicas=7).quorum == 3


def test_app_key_release_rule():
    """ATTACK: the application key goes only to an app replica with the agreed measurement
    that claimed the application's package."""
    a = _agreement(auction={"package": "22" * 32, "replicas": 4})
    path = app_key_path("auction")
    scope = generated_scope(path)
    assert scope is not None and scope.role == "app"

    def problems(**kw):
        args = dict(scope=scope, path=path, role="app", tee="emulated-sgx",
                    measurement_hex="11" * 32, claimed_resources=(path,),
                    claimed_recipients=(), agreement=a, claimed_package="22" * 32)
        return generated_release_problems(**{**args, **kw})

    assert problems() == []
    assert problems(measurement_hex="12" * 32)  # modified logic: another measurement
    assert problems(claimed_package="33" * 32)
    assert problems(claimed_package=None)
    assert problems(role="client")
    other = app_key_path("other")
    assert problems(path=other, claimed_resources=(other,))  # no such application


def _identity(agreement, **kw):
    from teeflow.kbs.ca.authority import WorkloadIdentity

    args = dict(role="app", party=None, measurement="11" * 32,
                agreement_digest=agreement.digest().hex(), tee="emulated-sgx", emulated=True)
    return WorkloadIdentity(**{**args, **kw})


def test_announcements_from_unattested_or_other_replicas_are_refused(keys):
    """ATTACK: the host announces its own key for the application, with a certificate of
    another role, of another CA, of a non-agreed measurement or under another agreement."""
    from datetime import UTC, datetime

    from teeflow.app.protocol import Announcement, check_announcement, sign_announcement
    from teeflow.kbs.ca.authority import FederationCA

    now = datetime.now(UTC)
    a = _agreement(auction={"package": "22" * 32, "replicas": 4})
    ca = FederationCA.generate("f", now=now)

    def announce(identity, issuer=ca, app_keys=keys):
        k = ec.generate_private_key(ec.SECP256R1())
        cert = issuer.issue(k.public_key(), identity, now=now)
        ann = sign_announcement(app=APP, replica=0, certificate=cert, keys=app_keys, key=k)
        return Announcement.from_wire(ann.to_wire())

    def check(ann):
        return check_announcement(ann, app=APP, ca=ca.certificate, agreement=a, now=now)

    check(announce(_identity(a)))  # the genuine replica
    bad = [
        announce(_identity(a, role="client")),
        announce(_identity(a, measurement="12" * 32)),
        announce(_identity(a, agreement_digest="00" * 32)),
        announce(_identity(a), issuer=FederationCA.generate("f", now=now)),
    ]
    for ann in bad:
        with pytest.raises(VerificationError):
            check(ann)
    genuine = announce(_identity(a))
    swapped = Announcement(genuine.app, 0, genuine.certificate,
                           AppKeys.from_secret(bytes(32)).public_bytes(), genuine.sig)
    with pytest.raises(VerificationError):  # a key swapped under a genuine signature
        check(swapped)
    with pytest.raises(VerificationError):
        check_announcement(genuine, app="other", ca=ca.certificate, agreement=a, now=now)
    strict = _agreement(auction={"package": "22" * 32, "replicas": 4})
    strict = strict.model_copy(update={"allow_emulated": False})
    with pytest.raises(VerificationError, match="emulated"):  # the agreement forbids it
        check_announcement(announce(_identity(strict)), app=APP, ca=ca.certificate,
                           agreement=strict, now=now)


def test_cli_measure_prints_the_package_digest():
    from typer.testing import CliRunner

    from teeflow.cli.main import app

    out = CliRunner().invoke(app, ["app", "measure", str(AUCTION), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["digest"] == package_digest(AUCTION).hex()
    bad = CliRunner().invoke(app, ["app", "measure", str(AUCTION / "app.py")])
    assert bad.exit_code != 0
