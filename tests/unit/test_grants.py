"""Grants: schema, digest, owner signature, verification against the agreement, grant_allows."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import rfc8785
import yaml

from teeflow.errors import KbsError, ParseError, PolicyViolation, VerificationError
from teeflow.kbs.policy.agreement import FederationAgreement, digest
from teeflow.kbs.policy.grants import (
    Grant,
    SignedGrant,
    grant_allows,
    grant_digest,
    new_grant_id,
    sign_grant,
    verify_grant,
)
from teeflow.kbs.policy.parties import PartyKeys

MR1, MR2, MR3 = "11" * 32, "22" * 32, "33" * 32
PKG_A, PKG_B, PKG_X = "a1" * 32, "b2" * 32, "ee" * 32
T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def keys() -> dict[str, PartyKeys]:
    return {n: PartyKeys.generate(n) for n in ("alice", "bob", "carol", "eve")}


@pytest.fixture(scope="module")
def agreement(keys: dict[str, PartyKeys]) -> FederationAgreement:
    roles = {"alice": ["data-owner"], "bob": ["data-owner"], "carol": ["aggregator-operator"]}
    return FederationAgreement.from_mapping(
        {
            "federation": "study",
            "version": 1,
            "parties": {
                n: {
                    "sign_key": keys[n].public().sign_key,
                    "recipient_key": keys[n].public().recipient_key,
                    "roles": r,
                }
                for n, r in roles.items()
            },
            "workloads": {
                "client": {"sgx": {"mrenclave": [MR1, MR2]}},
                "aggregator": {"sgx": {"mrenclave": [MR3]}},
                "compute": {"sgx": {"mrsigner": "44" * 32}},
            },
            "packages": {
                "trainer": {
                    "digest": PKG_A,
                    "entrypoints": ["train", "validate"],
                    "readers": ["alice", "bob"],
                },
                "stats": {"digest": PKG_B, "functions": ["mean"], "readers": ["bob"]},
            },
            "outputs": {"model": ["alice", "bob"], "result": ["bob"]},
            "update_quorum": {"k": 2},
        }
    )


def grant_doc(ag: FederationAgreement, /, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "grant-0000000001",
        "resource": "alice/dataset-key/v1",
        "owner": "alice",
        "agreement": digest(ag).hex(),
        "roles": ["client"],
        "mrenclave": [MR1],
        "packages": [PKG_A],
        "functions": ["train"],
        "recipients": ["alice", "bob"],
        "created_at": T0,
        "not_after": T0 + timedelta(days=30),
        "max_releases": 3,
    }
    doc.update(changes)
    return doc


def make_grant(ag: FederationAgreement, /, **changes: Any) -> Grant:
    return Grant.from_mapping(grant_doc(ag, **changes))


# -- schema and digest -------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes,needle",
    [
        ({"resource": "alice/key"}, "resource"),
        ({"resource": "a/b/c/d"}, "resource"),
        ({"resource": "../b/c"}, "resource"),
        ({"resource": "a//c"}, "resource"),
        ({"id": "short"}, "id"),
        ({"owner": "Alice"}, "owner"),
        ({"roles": []}, "roles"),
        ({"roles": ["root"]}, "roles"),
        ({"mrenclave": ["11"]}, "mrenclave"),
        ({"max_releases": 0}, "max_releases"),
        ({"not_after": T0}, "created_at must be before not_after"),
        ({"not_after": "2030-02-01T00:00:00"}, "timezone"),
        ({"packages": []}, "functions need at least one package"),
        ({"agreement": "00" * 31}, "agreement"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_grant_schema_errors(
    agreement: FederationAgreement, changes: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ParseError) as exc:
        make_grant(agreement, **changes)
    assert needle in str(exc.value)


def test_grant_digest_is_canonical(agreement: FederationAgreement, tmp_path: Path) -> None:
    g = make_grant(agreement)
    # unset whole-job members and an empty ``parties`` are left out, so grants made before
    # they existed keep their digest (and their owners' signatures)
    legacy = {k: v for k, v in g.model_dump(mode="json").items()
              if k not in ("co_inputs", "co_owners", "min_owners", "parties")}
    assert grant_digest(g) == hashlib.sha256(rfc8785.dumps(legacy)).digest()
    assert "parties" not in g.to_document()
    restricted = make_grant(agreement, parties=["alice"])
    assert restricted.to_document()["parties"] == ["alice"]
    assert grant_digest(restricted) != grant_digest(g)
    doc = g.to_document()
    shuffled = dict(reversed(list(doc.items())))
    shuffled["recipients"] = ["bob", "alice", "bob"]
    shuffled["packages"] = [PKG_A.upper()]
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(shuffled, default_flow_style=True))
    assert grant_digest(Grant.load(p)) == grant_digest(g)
    assert grant_digest(make_grant(agreement, max_releases=4)) != grant_digest(g)


def test_new_grant_id_is_random_and_valid(agreement: FederationAgreement) -> None:
    a, b = new_grant_id(), new_grant_id()
    assert a != b and len(a) == 22
    assert make_grant(agreement, id=a).id == a


# -- signatures ---------------------------------------------------------------------------


def test_sign_verify_round_trip(
    keys: dict[str, PartyKeys], agreement: FederationAgreement, tmp_path: Path
) -> None:
    g = make_grant(agreement)
    signed = sign_grant(g, keys["alice"])
    assert verify_grant(signed, agreement) == g
    p = tmp_path / "signed.yaml"
    p.write_text(yaml.safe_dump(signed.model_dump(mode="json")))
    assert verify_grant(SignedGrant.load(p), agreement) == g


def test_sign_with_wrong_keys(keys: dict[str, PartyKeys], agreement: FederationAgreement) -> None:
    with pytest.raises(KbsError):
        sign_grant(make_grant(agreement), keys["bob"])


def test_tampered_grant_fails(keys: dict[str, PartyKeys], agreement: FederationAgreement) -> None:
    signed = sign_grant(make_grant(agreement), keys["alice"])
    doc = signed.model_dump(mode="json")
    doc["grant"]["max_releases"] = 1000
    with pytest.raises(VerificationError):
        verify_grant(SignedGrant.from_mapping(doc), agreement)
    doc = signed.model_dump(mode="json")
    doc["grant"]["recipients"] = ["alice", "bob", "carol"]
    with pytest.raises(VerificationError):
        verify_grant(SignedGrant.from_mapping(doc), agreement)


def test_grant_signed_by_impostor(
    keys: dict[str, PartyKeys], agreement: FederationAgreement
) -> None:
    # eve (not a party) uses the name alice with her own key
    impostor = PartyKeys("alice", keys["eve"].sign_key, keys["eve"].recipient_key)
    with pytest.raises(VerificationError):
        verify_grant(sign_grant(make_grant(agreement), impostor), agreement)


# -- policy checks against the agreement -----------------------------------------------------


@pytest.mark.parametrize(
    "changes,signer,violation",
    [
        (
            {"agreement": "00" * 32},
            "alice",
            "grant was made under another agreement (digest mismatch)",
        ),
        (
            {"owner": "carol", "packages": [], "functions": []},
            "carol",
            "owner carol has neither role data-owner nor model-owner",
        ),
        (
            {"roles": ["serve"], "mrenclave": []},
            "alice",
            "role serve has no workload in the agreement",
        ),
        (
            {"mrenclave": [MR3]},
            "alice",
            f"mrenclave {MR3} is not allowed by the agreement for granted roles",
        ),
        (
            {"packages": [PKG_X], "functions": []},
            "alice",
            f"package {PKG_X} is not in the agreement",
        ),
        (
            {"packages": [PKG_B], "functions": []},
            "alice",
            "package stats may not read data of alice",
        ),
        (
            {"functions": ["mean"]},
            "alice",
            "function mean is not an entrypoint or function of a granted package",
        ),
        ({"recipients": ["eve"]}, "alice", "recipient eve is not a party of the agreement"),
        (
            {"recipients": ["carol"]},
            "alice",
            "recipient carol may not receive outputs under the agreement",
        ),
    ],
)
def test_verify_grant_policy_violations(
    keys: dict[str, PartyKeys],
    agreement: FederationAgreement,
    changes: dict[str, Any],
    signer: str,
    violation: str,
) -> None:
    signed = sign_grant(make_grant(agreement, **changes), keys[signer])
    with pytest.raises(PolicyViolation) as exc:
        verify_grant(signed, agreement)
    assert exc.value.violations == [violation]


def test_verify_grant_lists_every_reason(
    keys: dict[str, PartyKeys], agreement: FederationAgreement
) -> None:
    g = make_grant(
        agreement,
        roles=["client", "serve"],
        packages=[PKG_X],
        functions=["x"],
        recipients=["eve", "carol"],
        agreement="00" * 32,
    )
    with pytest.raises(PolicyViolation) as exc:
        verify_grant(sign_grant(g, keys["alice"]), agreement)
    assert len(exc.value.violations) == 6


def test_unknown_owner_is_policy_violation(
    keys: dict[str, PartyKeys], agreement: FederationAgreement
) -> None:
    g = make_grant(agreement, owner="eve")
    with pytest.raises(PolicyViolation) as exc:
        verify_grant(sign_grant(g, keys["eve"]), agreement)
    assert "owner eve is not a party of the agreement" in exc.value.violations


def test_mrsigner_role_accepts_any_narrowing(
    keys: dict[str, PartyKeys], agreement: FederationAgreement
) -> None:
    g = make_grant(
        agreement,
        owner="bob",
        roles=["compute"],
        mrenclave=["99" * 32],
        packages=[PKG_B],
        functions=["mean"],
        recipients=["bob"],
    )
    assert verify_grant(sign_grant(g, keys["bob"]), agreement) == g


# -- grant_allows ------------------------------------------------------------------------------


def allowed_request(**changes: Any) -> dict[str, Any]:
    req: dict[str, Any] = {
        "role": "client",
        "measurement_hex": MR1,
        "package_digest": PKG_A,
        "function": "train",
        "recipients": ["alice"],
        "now": T0 + timedelta(days=1),
        "releases_so_far": 0,
    }
    req.update(changes)
    return req


def test_grant_allows_happy_path(agreement: FederationAgreement) -> None:
    g = make_grant(agreement)
    assert grant_allows(g, **allowed_request()) == []
    assert grant_allows(g, **allowed_request(agreement_digest=digest(agreement))) == []
    # boundaries: last permitted release, exactly at not_after, upper-case hex, no outputs
    assert grant_allows(g, **allowed_request(releases_so_far=2, now=g.not_after)) == []
    assert (
        grant_allows(
            g,
            **allowed_request(
                measurement_hex=MR1.upper(), package_digest=PKG_A.upper(), recipients=[]
            ),
        )
        == []
    )


@pytest.mark.parametrize(
    "changes,violation",
    [
        ({"role": "aggregator"}, "role aggregator not granted"),
        ({"measurement_hex": MR2}, f"measurement {MR2} not granted"),
        ({"measurement_hex": "zz"}, "measurement zz not granted"),
        ({"package_digest": PKG_B}, f"package {PKG_B} not granted"),
        ({"package_digest": None}, "no package claimed, the grant requires one"),
        ({"function": "validate"}, "function validate not granted"),
        ({"function": None}, "no function claimed, the grant requires one"),
        ({"recipients": ["alice", "carol"]}, "recipient carol not granted"),
        ({"now": T0 + timedelta(days=30, seconds=1)}, "grant expired at 2030-01-31T00:00:00+00:00"),
        ({"now": T0 - timedelta(seconds=1)}, "grant not valid before 2030-01-01T00:00:00+00:00"),
        ({"now": datetime(2030, 1, 2)}, "now must be timezone-aware"),
        ({"releases_so_far": 3}, "release limit reached (3 of 3)"),
        ({"releases_so_far": -1}, "invalid release count"),
        ({"agreement_digest": bytes(32)}, "grant was made under another agreement ("),
    ],
)
def test_grant_allows_each_violation(
    agreement: FederationAgreement, changes: dict[str, Any], violation: str
) -> None:
    out = grant_allows(make_grant(agreement), **allowed_request(**changes))
    assert len(out) == 1 and out[0].startswith(violation), out
    if "another agreement" in violation:  # says which agreements and what to run
        assert "active 0000000000000000…" in out[0] and "teeflow package publish" in out[0]


def test_grant_without_packages_refuses_package_claims(agreement: FederationAgreement) -> None:
    g = make_grant(agreement, roles=["aggregator"], mrenclave=[], packages=[], functions=[])
    req = allowed_request(
        role="aggregator", measurement_hex=MR3, package_digest=None, function=None
    )
    assert grant_allows(g, **req) == []
    assert grant_allows(g, **{**req, "package_digest": PKG_A, "function": "train"}) == [
        f"package {PKG_A} not granted",
        "function train not granted",
    ]
    # no mrenclave narrowing: any measurement passes here (the agreement's appraisal decides)
    assert grant_allows(g, **{**req, "measurement_hex": MR1}) == []


def test_grant_allows_reports_everything(agreement: FederationAgreement) -> None:
    out = grant_allows(
        make_grant(agreement),
        role="serve",
        measurement_hex=MR3,
        package_digest=PKG_B,
        function="mean",
        recipients=["eve", "carol"],
        now=T0 + timedelta(days=31),
        releases_so_far=5,
        agreement_digest=bytes(32),
    )
    assert len(out) == 9


def test_grant_binding_the_whole_job(agreement: FederationAgreement) -> None:
    """Issue 10 (P): bank-b ran the "joint" function on bank-a's input alone. A grant with
    co_owners/min_owners is refused for a job whose inputs lack the other owners."""
    from teeflow.kbs.policy.grants import job_binding_problems

    base = make_grant(agreement)
    joint = base.model_copy(update={"co_owners": ("bob",), "min_owners": 2})
    assert "co_owners" in joint.to_document() and grant_digest(joint) != grant_digest(base)
    mine = f"alice/teeu-input/{'a' * 64}"
    theirs = f"bob/teeu-input/{'b' * 64}"
    alone = job_binding_problems(joint, [mine])
    assert any("co-owner bob" in r for r in alone) and any("needs 2" in r for r in alone)
    assert job_binding_problems(joint, None)
    assert job_binding_problems(joint, [mine, theirs]) == []
    assert job_binding_problems(base, [mine]) == []
    pinned = base.model_copy(update={"co_inputs": (theirs,)})
    assert job_binding_problems(pinned, [mine, f"bob/teeu-input/{'c' * 64}"])
    assert job_binding_problems(pinned, [mine, theirs]) == []


def test_upload_namespaces(agreement: FederationAgreement) -> None:
    """Issue 10 (P): the first uploader owned any free path. A party resource lives under its
    owner's name; fl/ paths only by the package's readers; compute/ never by a party."""
    from teeflow.kbs.policy.namespaces import upload_namespace_problems as ns

    assert ns("alice/dataset-key/v1", "alice", agreement) == []
    assert "belongs to party bob" in ns("bob/dataset-key/v1", "alice", agreement)[0]
    assert "must be its owner" in ns("nobody/dataset-key/v1", "alice", agreement)[0]
    assert ns(f"fl/package-key/{PKG_A}", "alice", agreement) == []
    assert "not a reader" in ns(f"fl/package-key/{PKG_B}", "alice", agreement)[0]
    assert "system path" in ns(f"fl/checkpoint-key/{PKG_A}", "alice", agreement)[0]
    assert "names no package" in ns(f"fl/package-key/{PKG_X}", "alice", agreement)[0]
    for system in (f"fl/model/{PKG_A}", "compute/x/y", "session/s1/k"):
        assert "system path" in ns(system, "alice", agreement)[0]


def test_counter_scopes() -> None:
    """Issue 10 (P): any attested role could step any counter outside session/, any
    aggregator any session's. A counter belongs to one session/role/party scope."""
    from teeflow.kbs.policy.namespaces import counter_scope_problems as scope

    agg = {"role": "aggregator", "party": "carol", "session": "s1"}
    assert scope("session/s1", **agg) == []
    assert scope("session/s1/round", **agg) == []
    assert "not the counter of this aggregator" in scope("session/s2", **agg)[0]
    assert scope("session/s1", role="aggregator", party=None, session=None)
    assert "may not step" in scope("session/s1", role="client", party="alice",
                                   session="s1")[0]
    assert scope("compute/" + "0" * 32, role="compute", party=None, session=None) == []
    assert scope("compute/" + "0" * 32, role="client", party="alice", session=None)
    assert scope("client/alice", role="client", party="alice", session=None) == []
    assert scope("client/alice/x", role="client", party="alice", session=None) == []
    assert scope("client/bob", role="client", party="alice", session=None)
    assert scope("client/alice", role="client", party=None, session=None)
    assert scope("anything", role="client", party="alice", session=None)
