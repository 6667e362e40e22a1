"""Federation agreement: schema, canonical digest, signatures, k-of-n updates, history."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import rfc8785
import yaml

from teeflow.attestation.evidence import TcbStatus
from teeflow.errors import ParseError, PolicyViolation, VerificationError
from teeflow.kbs.policy.agreement import (
    OPTIONAL_SECTIONS,
    ComputeLimits,
    FederationAgreement,
    digest,
)
from teeflow.kbs.policy.canonical import GRANT_DOMAIN, b64url_encode, signing_input
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.kbs.policy.signing import (
    AgreementHistory,
    SignedAgreement,
    sign_agreement,
    verify_initial,
    verify_update,
)

MR1 = "11" * 32
MR2 = "22" * 32
SIGNER = "33" * 32
PKG = "44" * 32


@pytest.fixture(scope="module")
def keys() -> dict[str, PartyKeys]:
    return {n: PartyKeys.generate(n) for n in ("alice", "bob", "carol", "dave")}


def make_doc(
    keys: dict[str, PartyKeys], names: tuple[str, ...] = ("alice", "bob", "carol"), k: int = 2
) -> dict[str, Any]:
    return {
        "federation": "study",
        "version": 1,
        "previous": None,
        "parties": {
            n: {
                "sign_key": keys[n].public().sign_key,
                "recipient_key": keys[n].public().recipient_key,
                "roles": ["data-owner"],
            }
            for n in names
        },
        "workloads": {
            "aggregator": {"sgx": {"mrenclave": [MR1], "isv_prod_id": 1, "min_isv_svn": 2}},
            "client": {"sgx": {"mrsigner": SIGNER}},
        },
        "packages": {
            "trainer": {"digest": PKG, "entrypoints": ["train", "validate"], "readers": ["alice"]}
        },
        "outputs": {"model": list(names)},
        "update_quorum": {"k": k},
    }


def make(keys: dict[str, PartyKeys], **kw: Any) -> FederationAgreement:
    return FederationAgreement.from_mapping(make_doc(keys, **kw))


def signed_by(agreement: FederationAgreement, *signers: PartyKeys) -> SignedAgreement:
    s = SignedAgreement(agreement=agreement)
    for key in signers:
        s = s.signed_by(key)
    return s


def successor(current: FederationAgreement, **changes: Any) -> FederationAgreement:
    doc = current.to_document()
    doc.update(version=current.version + 1, previous=digest(current).hex())
    doc.update(changes)
    return FederationAgreement.from_mapping(doc)


# -- digest -------------------------------------------------------------------------------


def test_digest_is_sha256_of_rfc8785_json_dump(keys: dict[str, PartyKeys]) -> None:
    a = make(keys)
    dump = a.to_document()
    assert digest(a) == hashlib.sha256(rfc8785.dumps(dump)).digest()
    assert a.digest() == digest(a)
    # the optional sections (compute_limits, training, attestation, serving, apps) are left
    # out when unset: older agreements keep their digest; when set they are digested like
    # every other member
    assert not set(OPTIONAL_SECTIONS) & set(dump)
    full = a.model_dump(mode="json")
    assert all(full[k] is None for k in OPTIONAL_SECTIONS)
    assert {k: v for k, v in full.items() if k not in OPTIONAL_SECTIONS} == dump
    limited = a.model_copy(update={"compute_limits": ComputeLimits(max_input_bytes=1 << 20)})
    assert limited.to_document()["compute_limits"]["max_input_bytes"] == 1 << 20
    assert digest(limited) != digest(a)
    # every field present, defaults filled in
    assert dump["allow_emulated"] is False and dump["valid_from"] is None
    assert dump["workloads"]["aggregator"]["sgx"]["accepted_tcb_statuses"] == ["UpToDate"]
    assert dump["workloads"]["client"]["tdx"] is None


def test_digest_stable_across_yaml_formatting(keys: dict[str, PartyKeys], tmp_path: Path) -> None:
    doc = make_doc(keys)
    block = tmp_path / "a.yaml"
    block.write_text(yaml.safe_dump(doc, sort_keys=False))

    # reversed key order everywhere, flow style, comments, reordered lists, upper-case hex
    def rev(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: rev(x) for k, x in reversed(list(v.items()))}
        if isinstance(v, list):
            return [rev(x) for x in reversed(v)]
        return v

    other = rev(doc)
    other["workloads"]["aggregator"]["sgx"]["mrenclave"] = [MR1.upper()]
    other["packages"]["trainer"]["digest"] = "0x" + PKG.upper()
    flow = tmp_path / "b.yaml"
    flow.write_text("# a comment\n" + yaml.safe_dump(other, default_flow_style=True, width=60))
    js = tmp_path / "c.json"
    js.write_text(json.dumps(doc, indent=7))
    a, b, c = (FederationAgreement.load(p) for p in (block, flow, js))
    assert digest(a) == digest(b) == digest(c)
    assert block.read_text() != flow.read_text()
    # to_yaml round trip keeps the digest
    rt = tmp_path / "rt.yaml"
    rt.write_text(a.to_yaml())
    assert digest(FederationAgreement.load(rt)) == digest(a)


def test_duplicate_list_items_and_explicit_defaults_do_not_change_digest(
    keys: dict[str, PartyKeys],
) -> None:
    doc = make_doc(keys)
    base = digest(FederationAgreement.from_mapping(doc))
    doc2 = make_doc(keys)
    doc2["outputs"]["model"] = ["carol", "alice", "bob", "alice"]
    doc2["allow_emulated"] = False
    doc2["workloads"]["client"]["sgx"]["accepted_tcb_statuses"] = ["UpToDate", "UpToDate"]
    assert digest(FederationAgreement.from_mapping(doc2)) == base


@pytest.mark.parametrize(
    "path,value",
    [
        (("allow_emulated",), True),
        (("update_quorum", "k"), 3),
        (("outputs", "model"), ["alice"]),
        (("workloads", "aggregator", "sgx", "mrenclave"), [MR2]),
        (("workloads", "aggregator", "sgx", "allow_debug"), True),
        (("packages", "trainer", "readers"), ["alice", "bob"]),
        (("federation",), "study2"),
    ],
)
def test_any_change_of_meaning_changes_digest(
    keys: dict[str, PartyKeys], path: tuple[str, ...], value: Any
) -> None:
    doc = make_doc(keys)
    base = digest(FederationAgreement.from_mapping(doc))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert digest(FederationAgreement.from_mapping(doc)) != base


def test_datetimes_normalised_to_utc(keys: dict[str, PartyKeys]) -> None:
    a = make_doc(keys)
    b = make_doc(keys)
    a["not_after"] = "2030-01-01T00:00:00Z"
    b["not_after"] = datetime(2030, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    fa, fb = FederationAgreement.from_mapping(a), FederationAgreement.from_mapping(b)
    assert digest(fa) == digest(fb)
    assert fa.to_document()["not_after"] == "2030-01-01T00:00:00Z"


# -- validation ----------------------------------------------------------------------------


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


@pytest.mark.parametrize(
    "path,value,needle",
    [
        (("extra",), 1, "extra"),
        (("federation",), "Study", "DNS label"),
        (("packages", "trainer", "readers"), ["zed"], "reader zed is not a party"),
        (("outputs", "result"), ["zed"], "zed is not a party"),
        (("update_quorum", "k"), 4, "exceeds 3 parties"),
        (("update_quorum", "k"), 0, "update_quorum.k"),
        (("workloads", "aggregator", "sgx", "mrenclave"), ["11" * 31], "64 hex digits"),
        (("workloads", "serve"), {}, "at least one platform"),
        (("workloads", "client", "sgx"), {"mrenclave": []}, "mrsigner"),
        (("workloads", "client", "sgx", "accepted_tcb_statuses"), ["Revoked"], "Revoked"),
        (("workloads", "client", "sgx", "accepted_tcb_statuses"), [], "not be empty"),
        (("workloads", "client", "sgx", "accepted_tcb_statuses"), ["Fine"], "accepted_tcb"),
        (("workloads", "robot"), {"sgx": {"mrenclave": [MR1]}}, "robot"),
        (("workloads", "client", "sgx", "debug"), True, "debug"),
        (("previous",), "55" * 32, "previous must be null"),
        (("version",), 2, "previous must be null"),
        (("version",), 0, "version"),
        (("parties", "alice", "roles"), ["boss"], "roles"),
        (("parties", "alice", "roles"), [], "roles"),
        (("parties", "alice", "sign_key"), b64url_encode(bytes(31)), "sign_key"),
        (("parties", "BOB"), {}, "BOB"),
        (("packages", "other"), {"digest": PKG, "entrypoints": ["x"]}, "same digest"),
        (("packages", "trainer", "entrypoints"), ["bad name"], "should match pattern"),
        (("packages", "empty"), {"digest": "55" * 32}, "entrypoint or function"),
        (("not_after",), "2030-01-01T00:00:00", "timezone"),
        (("valid_from",), "2031-01-01T00:00:00Z", "valid_from must be before"),
        (("parties",), {}, "parties"),
        (("workloads", "client", "tdx"), {"xfam": "00" * 8}, "set mrtd and/or an rtmr"),
        (("workloads", "client", "snp"), {"measurement": []}, "measurement"),
        (("fl",), {"max_examples_per_party": {"zed": 5}}, "fl.max_examples_per_party: zed"),
        (("fl",), {"max_examples": 0}, "max_examples"),
        (("fl",), {"max_examples": 2**53}, "max_examples"),
        (("fl",), {"max_examples_per_party": {"alice": -1}}, "max_examples_per_party"),
        (("fl",), {"max_weight": 5}, "max_weight"),
    ],
)
def test_validation_errors(
    keys: dict[str, PartyKeys], path: tuple[str, ...], value: Any, needle: str
) -> None:
    doc = make_doc(keys)
    doc["not_after"] = doc.get("not_after") or "2030-06-01T00:00:00Z"
    _set(doc, path, value)
    with pytest.raises(ParseError) as exc:
        FederationAgreement.from_mapping(doc)
    assert needle in str(exc.value)


def test_fl_example_caps(keys: dict[str, PartyKeys]) -> None:
    default = make(keys)
    assert default.fl.cap("alice") is None
    doc = make_doc(keys)
    doc["fl"] = {"max_examples": 1000, "max_examples_per_party": {"bob": 50}}
    capped = FederationAgreement.from_mapping(doc)
    assert (capped.fl.cap("alice"), capped.fl.cap("bob")) == (1000, 50)
    assert digest(capped) != digest(default)  # the caps are part of what the parties sign


def test_every_problem_reported_at_once(keys: dict[str, PartyKeys]) -> None:
    doc = make_doc(keys)
    doc["packages"]["trainer"]["readers"] = ["zed"]
    doc["outputs"]["model"] = ["yan"]
    with pytest.raises(ParseError) as exc:
        FederationAgreement.from_mapping(doc)
    assert "zed" in str(exc.value) and "yan" in str(exc.value)


def test_yaml_duplicate_key_and_garbage(keys: dict[str, PartyKeys], tmp_path: Path) -> None:
    p = tmp_path / "a.yaml"
    p.write_text(yaml.safe_dump(make_doc(keys)) + "allow_emulated: true\nallow_emulated: false\n")
    with pytest.raises(ParseError):
        FederationAgreement.load(p)
    p.write_text("federation: [unclosed")
    with pytest.raises(ParseError):
        FederationAgreement.load(p)
    p.write_text("- a list\n")
    with pytest.raises(ParseError):
        FederationAgreement.load(p)


def test_sgx_policy_bridge_and_time(keys: dict[str, PartyKeys]) -> None:
    doc = make_doc(keys)
    doc.update(allow_emulated=True, valid_from="2030-01-01T00:00:00Z")
    a = FederationAgreement.from_mapping(doc)
    pol = a.sgx_policy("aggregator")
    assert pol.mrenclaves == (MR1,) and pol.isv_prod_id == 1 and pol.min_isv_svn == 2
    assert pol.allow_emulated is True and pol.accepted_tcb_statuses == {TcbStatus.UP_TO_DATE}
    assert a.sgx_policy("client").mrsigner == SIGNER
    for role in ("serve", "nonsense"):
        with pytest.raises(PolicyViolation):
            a.sgx_policy(role)
    assert a.time_violations(datetime(2030, 1, 2, tzinfo=UTC)) == []
    assert a.time_violations(datetime(2029, 1, 2, tzinfo=UTC))
    assert a.time_violations(datetime(2030, 1, 2)) == ["now must be timezone-aware"]


# -- initial signatures ---------------------------------------------------------------------


def test_initial_all_parties_sign(keys: dict[str, PartyKeys]) -> None:
    a = make(keys)
    s = signed_by(a, keys["alice"], keys["bob"], keys["carol"])
    assert verify_initial(s) == digest(a)
    # envelope round trip
    again = SignedAgreement.from_mapping(json.loads(s.model_dump_json()))
    assert verify_initial(again) == digest(a)


def test_initial_missing_signatures_listed(keys: dict[str, PartyKeys]) -> None:
    s = signed_by(make(keys), keys["alice"])
    with pytest.raises(PolicyViolation) as exc:
        verify_initial(s)
    assert exc.value.violations == [
        "missing signature of party bob",
        "missing signature of party carol",
    ]


def test_initial_bad_signature_is_verification_error(keys: dict[str, PartyKeys]) -> None:
    a = make(keys)
    s = signed_by(a, keys["alice"], keys["bob"], keys["carol"])
    raw = bytearray(keys["bob"].sign(signing_input(b"teeflow-agreement-v1\0", digest(a))))
    raw[10] ^= 0x40
    bad = s.with_signature("bob", b64url_encode(bytes(raw)))
    with pytest.raises(VerificationError, match="bob"):
        verify_initial(bad)
    # bob signing with another party's key
    with pytest.raises(VerificationError):
        verify_initial(s.with_signature("bob", sign_agreement(a, keys["carol"])))
    # grant-domain signature over the same digest is not an agreement signature
    cross = b64url_encode(keys["bob"].sign(signing_input(GRANT_DOMAIN, digest(a))))
    with pytest.raises(VerificationError):
        verify_initial(s.with_signature("bob", cross))


def test_tampered_agreement_fails(keys: dict[str, PartyKeys]) -> None:
    a = make(keys)
    s = signed_by(a, keys["alice"], keys["bob"], keys["carol"])
    doc = s.model_dump(mode="json")
    doc["agreement"]["allow_emulated"] = True
    with pytest.raises(VerificationError):
        verify_initial(SignedAgreement.from_mapping(doc))


def test_initial_non_party_signature_refused(keys: dict[str, PartyKeys]) -> None:
    a = make(keys)
    s = signed_by(a, keys["alice"], keys["bob"], keys["carol"], keys["dave"])
    with pytest.raises(PolicyViolation) as exc:
        verify_initial(s)
    assert exc.value.violations == ["signature by dave, who is not a party"]


def test_initial_must_be_version_1(keys: dict[str, PartyKeys]) -> None:
    v2 = successor(make(keys))
    with pytest.raises(PolicyViolation, match="version 1"):
        verify_initial(signed_by(v2, keys["alice"], keys["bob"], keys["carol"]))


# -- updates ----------------------------------------------------------------------------------


@pytest.fixture()
def current(keys: dict[str, PartyKeys]) -> SignedAgreement:
    return signed_by(make(keys, k=2), keys["alice"], keys["bob"], keys["carol"])


def test_update_with_quorum(keys: dict[str, PartyKeys], current: SignedAgreement) -> None:
    new = successor(current.agreement, allow_emulated=True)
    assert verify_update(signed_by(new, keys["alice"], keys["carol"]), current) == digest(new)


def test_update_k_minus_one_fails(keys: dict[str, PartyKeys], current: SignedAgreement) -> None:
    new = successor(current.agreement, allow_emulated=True)
    with pytest.raises(PolicyViolation) as exc:
        verify_update(signed_by(new, keys["alice"]), current)
    assert exc.value.violations == ["1 valid signature(s) of current parties, quorum is 2"]


def test_update_wrong_previous_version_federation(
    keys: dict[str, PartyKeys], current: SignedAgreement
) -> None:
    new = successor(current.agreement, previous="66" * 32, version=3, federation="other")
    with pytest.raises(PolicyViolation) as exc:
        verify_update(signed_by(new, keys["alice"], keys["bob"]), current)
    v = exc.value.violations
    assert len(v) == 3
    assert any("federation changed" in x for x in v)
    assert any("version must be 2" in x for x in v)
    assert any(x.startswith("previous is 6666") for x in v)


def test_update_new_party_signatures_do_not_count(
    keys: dict[str, PartyKeys], current: SignedAgreement
) -> None:
    doc = make_doc(keys, names=("alice", "bob", "carol", "dave"))
    new = successor(current.agreement, parties=doc["parties"])
    # dave's signature verifies with his new key but is not a current party's
    with pytest.raises(PolicyViolation, match="quorum is 2"):
        verify_update(signed_by(new, keys["alice"], keys["dave"]), current)
    assert verify_update(signed_by(new, keys["alice"], keys["bob"], keys["dave"]), current)
    # a forged signature for a new party is still a VerificationError
    forged = signed_by(new, keys["alice"], keys["bob"]).with_signature(
        "dave", sign_agreement(new, keys["alice"])
    )
    with pytest.raises(VerificationError):
        verify_update(forged, current)


def test_update_removed_party_still_counts(
    keys: dict[str, PartyKeys], current: SignedAgreement
) -> None:
    parties = make_doc(keys, names=("alice", "bob"))["parties"]
    new = successor(
        current.agreement, parties=parties, outputs={"model": ["alice"]}, update_quorum={"k": 1}
    )
    assert verify_update(signed_by(new, keys["alice"], keys["carol"]), current)


def test_update_signers_use_current_keys(
    keys: dict[str, PartyKeys], current: SignedAgreement
) -> None:
    rotated = PartyKeys("bob", PartyKeys.generate("bob").sign_key, keys["bob"].recipient_key)
    parties = current.agreement.to_document()["parties"]
    parties["bob"]["sign_key"] = rotated.public().sign_key
    new = successor(current.agreement, parties=parties)
    # bob authorises his rotation with his current key
    assert verify_update(signed_by(new, keys["alice"], keys["bob"]), current)
    with pytest.raises(VerificationError, match="bob"):
        verify_update(signed_by(new, keys["alice"], rotated), current)


def test_update_unknown_signer_refused(
    keys: dict[str, PartyKeys], current: SignedAgreement
) -> None:
    new = successor(current.agreement)
    with pytest.raises(PolicyViolation) as exc:
        verify_update(signed_by(new, keys["alice"], keys["bob"], keys["dave"]), current)
    assert exc.value.violations == ["signature by dave, who is not a party"]


def test_quorum_is_the_current_agreements(keys: dict[str, PartyKeys]) -> None:
    v1 = make(keys, k=3)
    h = AgreementHistory([signed_by(v1, keys["alice"], keys["bob"], keys["carol"])])
    v2 = successor(v1, update_quorum={"k": 1})
    with pytest.raises(PolicyViolation, match="quorum is 3"):
        h.append(signed_by(v2, keys["alice"]))
    assert len(h) == 1
    h.append(signed_by(v2, keys["alice"], keys["bob"], keys["carol"]))
    v3 = successor(v2, allow_emulated=True)
    h.append(signed_by(v3, keys["carol"]))  # now k = 1
    assert len(h) == 3
    assert h.digests == (digest(v1), digest(v2), digest(v3))
    h.verify_chain()


def test_history(keys: dict[str, PartyKeys]) -> None:
    h = AgreementHistory()
    assert h.current is None and len(h) == 0
    v1 = make(keys)
    with pytest.raises(PolicyViolation):
        h.append(signed_by(v1, keys["alice"]))
    assert len(h) == 0
    s1 = signed_by(v1, keys["alice"], keys["bob"], keys["carol"])
    assert h.append(s1) == digest(v1)
    v2 = successor(v1, allow_emulated=True)
    s2 = signed_by(v2, keys["alice"], keys["bob"])
    h.append(s2)
    assert h.current == s2 and list(h) == [s1, s2] and h.entries == (s1, s2)
    # replaying the same update (wrong version/previous) is refused
    with pytest.raises(PolicyViolation):
        h.append(s2)
    # a fork from v1 is refused
    fork = successor(v1, update_quorum={"k": 1})
    with pytest.raises(PolicyViolation):
        h.append(signed_by(fork, keys["alice"], keys["bob"]))
    h.verify_chain()
    # storage tamper: swap an entry for one signed by too few parties
    h._entries[1] = signed_by(v2, keys["alice"])
    with pytest.raises(PolicyViolation):
        h.verify_chain()
