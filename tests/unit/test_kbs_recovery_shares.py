"""Recovery shares and the SEV-SNP derived sealing key (stand-in): round trips and attacks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from teeflow.errors import KbsError, PlatformError, SealingError
from teeflow.kbs.policy.agreement import FederationAgreement
from teeflow.kbs.policy.parties import PartyKeys
from teeflow.kbs.service.recovery import (
    combine_shares,
    create_share_set,
    open_party_share,
    open_recovery_state,
    record_matches,
    seal_recovery_state,
)
from teeflow.platform.sealing import SnpSealer, sealer_for
from teeflow.testing.sev_guest import SevGuestStandIn

M = hashlib.sha256(b"m").digest()


def _agreement(parties: dict[str, PartyKeys], k: int | None) -> FederationAgreement:
    return FederationAgreement.from_mapping(
        {
            "federation": "fed",
            "version": 1,
            "parties": {
                n: {
                    "sign_key": p.public().sign_key,
                    "recipient_key": p.public().recipient_key,
                    "roles": ["data-owner"],
                }
                for n, p in parties.items()
            },
            "update_quorum": {"k": 1},
            "recovery": None if k is None else {"k": k},
        }
    )


@pytest.fixture(scope="module")
def parties() -> dict[str, PartyKeys]:
    return {n: PartyKeys.generate(n) for n in ("a", "b", "c")}


@pytest.mark.parametrize("k", [None, 2])
def test_k_of_n_recombines_and_fewer_do_not(parties: dict[str, PartyKeys], k: int | None) -> None:
    made = create_share_set(_agreement(parties, k), bytes(32))
    rec = made.record
    assert rec.k == (k or 3)
    shares = {n: open_party_share(rec, n, p.recipient_key) for n, p in parties.items()}
    blob = seal_recovery_state(b"state", made.secret, rec)
    chosen = dict(list(shares.items())[: rec.k])
    assert combine_shares(rec, chosen) == made.secret
    assert open_recovery_state(blob, combine_shares(rec, chosen), rec) == b"state"
    with pytest.raises(KbsError, match="required recovery shares"):
        combine_shares(rec, dict(list(shares.items())[: rec.k - 1]))
    tampered = dict(chosen)
    name = next(iter(tampered))
    tampered[name] = bytes(32)
    with pytest.raises(KbsError, match="does not match"):
        combine_shares(rec, tampered)


def test_share_opens_only_for_its_party(parties: dict[str, PartyKeys]) -> None:
    rec = create_share_set(_agreement(parties, 2), bytes(32)).record
    with pytest.raises(KbsError, match="another recipient key"):
        open_party_share(rec, "a", parties["b"].recipient_key)
    with pytest.raises(KbsError, match="holds no share"):
        open_party_share(rec, "zed", parties["a"].recipient_key)


def test_record_follows_parties_and_k(parties: dict[str, PartyKeys]) -> None:
    rec = create_share_set(_agreement(parties, 2), bytes(32)).record
    assert record_matches(rec, _agreement(parties, 2))
    assert not record_matches(rec, _agreement(parties, 3))
    two = {n: parties[n] for n in ("a", "b")}
    assert not record_matches(rec, _agreement(two, 2))


def test_recovery_copy_bound_to_record(parties: dict[str, PartyKeys]) -> None:
    one = create_share_set(_agreement(parties, 2), bytes(32))
    other = create_share_set(_agreement(parties, 2), bytes(32))
    blob = seal_recovery_state(b"state", one.secret, one.record)
    with pytest.raises(SealingError):
        open_recovery_state(blob, one.secret, other.record)
    with pytest.raises(SealingError):
        open_recovery_state(blob, other.secret, one.record)


def _standin(
    tmp_path: Path,
    measurement: bytes = b"\x01" * 48,
    policy: int = 0x30000,
    secret: bytes = b"\x07" * 32,
) -> SevGuestStandIn:
    return SevGuestStandIn(
        tmp_path / "sev-guest", measurement=measurement, guest_policy=policy, chip_secret=secret
    )


def test_snp_sealer_through_the_ioctl_standin(tmp_path: Path) -> None:
    dev = _standin(tmp_path)
    sealer = SnpSealer(dev.path, ioctl=dev.ioctl)
    key = sealer.sealing_key(M, purpose=b"kbs-state")
    assert len(key) == 32 and dev.calls == 1
    assert sealer.sealing_key(M, purpose=b"kbs-state") == key
    assert sealer.sealing_key(M, purpose=b"other") != key
    # another launch measurement, guest policy or chip: another key
    for other in (
        _standin(tmp_path, measurement=b"\x02" * 48),
        _standin(tmp_path, policy=0x30001),
        _standin(tmp_path, secret=b"\x08" * 32),
    ):
        assert SnpSealer(other.path, ioctl=other.ioctl).sealing_key(M, purpose=b"kbs-state") != key


def test_snp_sealer_failures(tmp_path: Path) -> None:
    dev = _standin(tmp_path)
    # a VMPL below the guest's is refused by the firmware (MSG_KEY_RSP status 0x16)
    dev.vmpl = 1
    with pytest.raises(PlatformError, match="status 0x16"):
        SnpSealer(dev.path, ioctl=dev.ioctl).sealing_key(M, purpose=b"kbs-state")
    # the real ioctl refuses a plain file: no silent fallback to a stand-in
    with pytest.raises(PlatformError, match="not a character device"):
        SnpSealer(dev.path).sealing_key(M, purpose=b"kbs-state")
    with pytest.raises(PlatformError, match="cannot open"):
        SnpSealer(tmp_path / "missing").sealing_key(M, purpose=b"kbs-state")
    # the stand-in answers only for its own device
    other = tmp_path / "other"
    other.write_bytes(b"x")
    with pytest.raises(PlatformError, match="ENOTTY"):
        SnpSealer(other, ioctl=dev.ioctl).sealing_key(M, purpose=b"kbs-state")


def test_gramine_sealer_under_root(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "_sgx_mrenclave").write_bytes(b"k" * 16)
    sealer = sealer_for("gramine-sgx", gramine_root=tmp_path)
    assert sealer is not None
    key = sealer.sealing_key(M, purpose=b"kbs-state")
    (tmp_path / "keys" / "_sgx_mrenclave").write_bytes(b"j" * 16)  # another enclave
    assert sealer.sealing_key(M, purpose=b"kbs-state") != key
    (tmp_path / "keys" / "_sgx_mrenclave").write_bytes(b"j" * 17)
    with pytest.raises(PlatformError, match="16 bytes"):
        sealer.sealing_key(M, purpose=b"kbs-state")


def test_sealer_for_platforms(tmp_path: Path) -> None:
    assert sealer_for("tdx") is None
    assert repr(sealer_for("gramine-sgx", gramine_root=tmp_path)).startswith("GramineSealer")
    assert (
        repr(sealer_for("sev-snp", sev_guest_dev=tmp_path / "d"))
        == f"SnpSealer('{tmp_path / 'd'}')"
    )
    with pytest.raises(PlatformError):
        sealer_for("emulated-sgx")
    with pytest.raises(PlatformError):
        sealer_for("nope")
