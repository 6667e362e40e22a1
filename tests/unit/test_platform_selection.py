"""Issue 9 "One Attester seam": platform names, attester_for, auto without a TEE, and the
verifier registry refusing evidence claimed as another TEE.

Attack tests: ``auto`` never falls back to emulation (exact one-line error, before any state
is written), unknown platform names are refused by every role entry point, evidence of one
TEE declared as another (SGX quote as TDX, emulated as hardware, a foreign SNP certificate
table) is refused by :func:`teeflow.attestation.registry.verify_evidence`.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from teeflow.attestation.evidence import Evidence
from teeflow.attestation.registry import snp_chain_from_table, verify_evidence
from teeflow.attestation.snp.cert_table import build_cert_table, parse_cert_table
from teeflow.attestation.trust import intel_sgx_root_ca
from teeflow.errors import ParseError, PlatformError, VerificationError
from teeflow.platform import PLATFORM_NAMES, PlatformOptions, attester_for
from teeflow.platform.base import Attester
from teeflow.platform.emulated import EmulationAuthority
from teeflow.platform.emulated_snp import emulated_snp_anchor
from teeflow.platform.selection import emulated_identity

MR = hashlib.sha256(b"teeflow role measurement").digest()
NO_TEE = (
    "no TEE attestation interface found (Gramine /dev/attestation or configfs-tsm) "
    "(no {g}/attestation_type; no {t}): run inside a TEE, or name a platform with --platform "
    "(emulated-sgx|emulated-tdx|emulated-snp for development)"
)


def _no_tee(tmp_path: Path) -> tuple[Path, Path, str]:
    g, t = tmp_path / "no-gramine", tmp_path / "no-tsm"
    return g, t, NO_TEE.format(g=g, t=t)


# -- names and auto ---------------------------------------------------------------------------


def test_auto_without_tee_fails_with_one_line_error_and_never_emulates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEEFLOW_PLATFORM", "emulated")  # the removed forcing has no effect
    gramine, tsm, message = _no_tee(tmp_path)
    with pytest.raises(PlatformError) as exc:
        attester_for("auto", gramine_root=gramine, tsm_root=tsm, measurement=MR)
    assert str(exc.value) == message
    with pytest.raises(PlatformError) as exc:
        PlatformOptions(tsm_root=tsm, gramine_root=gramine).attester(MR)
    assert str(exc.value) == message


@pytest.mark.parametrize("name", ["emulated", "sgx", "snp", "EMULATED-SGX", "", "auto "])
def test_unknown_platform_names_are_refused(name: str) -> None:
    with pytest.raises(PlatformError, match="unknown platform") as exc:
        attester_for(name, measurement=MR)
    assert ", ".join(PLATFORM_NAMES) in str(exc.value)
    with pytest.raises(PlatformError, match="unknown platform"):
        PlatformOptions(name)


def _app() -> object:
    from teeflow.cli.main import app

    return app


@pytest.mark.parametrize(
    "argv",
    [
        ["kbs", "serve", "--db", "memory://", "--platform", "emulated"],
        ["aggregator", "run", "--pin", "p", "--session", "s", "--rounds", "1",
         "--min-clients", "1", "--platform", "sgx"],
        ["client", "run", "--party", "a", "--pin", "p", "--aggregator", "h:1", "--data", "d",
         "--platform", "gramine"],
        ["compute", "serve", "--platform", "snp"],
    ],
)  # fmt: skip
def test_every_role_cli_refuses_unknown_platform(argv: list[str]) -> None:
    res = CliRunner().invoke(_app(), argv)  # type: ignore[arg-type]
    assert res.exit_code == 2, res.output
    assert "unknown platform" in res.output


@pytest.mark.parametrize("main", ["aggregator_main", "client_main"])
def test_lean_entry_points_refuse_unknown_platform(
    main: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from teeflow.fl import entry

    with pytest.raises(SystemExit) as exc:
        getattr(entry, main)(["--platform", "emulated"], exit_process=False)
    assert exc.value.code == 2
    assert "invalid choice: 'emulated'" in capsys.readouterr().err


def test_kbs_serve_auto_without_tee_fails_before_writing_state(
    tmp_path: Path, teeflow_home: Path
) -> None:
    gramine, tsm, message = _no_tee(tmp_path)
    state = tmp_path / "state"
    argv = ["kbs", "serve", "--db", f"sqlite:///{tmp_path / 'kbs.db'}", "--state-dir",
            str(state), "--federation", "f", "--tsm-root", str(tsm), "--gramine-root",
            str(gramine)]  # fmt: skip
    res = CliRunner().invoke(_app(), argv)  # type: ignore[arg-type]
    assert isinstance(res.exception, PlatformError), res.output
    assert str(res.exception) == message
    assert not state.exists() and not (teeflow_home / "emulation").exists()
    assert not (tmp_path / "kbs.db").exists()


def test_hardware_platforms_need_their_interface(tmp_path: Path) -> None:
    with pytest.raises(PlatformError, match=r"^gramine-sgx: no .*attestation_type: run inside"):
        attester_for("gramine-sgx", gramine_root=tmp_path / "none")
    (tmp_path / "ga").mkdir()
    (tmp_path / "ga" / "attestation_type").write_text("none\n")
    with pytest.raises(PlatformError, match="attestation type is 'none'"):
        attester_for("gramine-sgx", gramine_root=tmp_path / "ga")
    for name in ("tdx", "sev-snp"):
        with pytest.raises(PlatformError, match=f"^{name}: no configfs-tsm report directory"):
            attester_for(name, tsm_root=tmp_path / "none")


# -- emulated attesters -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def authority() -> EmulationAuthority:
    return EmulationAuthority.generate()


@pytest.mark.parametrize(
    ("name", "tee"),
    [("emulated-sgx", "emulated-sgx"), ("emulated-tdx", "emulated-tdx"),
     ("emulated-snp", "emulated-snp")],
)  # fmt: skip
def test_emulated_attesters_by_name(
    name: str, tee: str, authority: EmulationAuthority, teeflow_home: Path
) -> None:
    attester = attester_for(name, measurement=MR, authority=authority)
    assert isinstance(attester, Attester)
    assert (attester.tee, attester.kind) == (tee, "emulated")
    evidence = attester.evidence(b"binding")
    assert (evidence.tee, evidence.attester) == (tee, "emulated")
    now = datetime.now(UTC)
    anchors = [intel_sgx_root_ca(), authority.trust_anchor(), emulated_snp_anchor(now=now)]
    collateral = (
        attester.collateral(now)  # type: ignore[attr-defined]
        if name == "emulated-tdx"
        else authority.collateral(now)
    )
    verified = verify_evidence(evidence, anchors=anchors, collateral=collateral, now=now)
    assert verified.tee == tee and verified.emulated and verified.attester == "emulated"
    assert verified.measurement == emulated_identity(name, MR).hex()
    if name == "emulated-snp":
        kinds = [k for k, _ in parse_cert_table(evidence.certificates or b"")]
        assert kinds == ["VCEK", "ASK", "ARK"]
    else:
        assert evidence.certificates is None


def test_emulated_identity() -> None:
    assert emulated_identity("emulated-sgx", MR) == MR
    assert emulated_identity("emulated-tdx", MR) == MR + bytes(16)
    assert emulated_identity("emulated-snp", bytes(48)) == bytes(48)
    with pytest.raises(PlatformError):
        emulated_identity("emulated-sgx", bytes(48))
    with pytest.raises(PlatformError):
        emulated_identity("tdx", MR)
    with pytest.raises(PlatformError, match="no workload measurement"):
        attester_for("emulated-sgx")


# -- the registry refuses evidence claimed as another TEE ---------------------------------------


@pytest.fixture(scope="module")
def samples(authority: EmulationAuthority) -> dict[str, Evidence]:
    return {
        n: attester_for(n, measurement=MR, authority=authority, home=None).evidence(b"x")
        for n in ("emulated-sgx", "emulated-tdx")
    }


def _verify(evidence: Evidence, authority: EmulationAuthority) -> object:
    now = datetime.now(UTC)
    return verify_evidence(
        evidence,
        anchors=[intel_sgx_root_ca(), authority.trust_anchor()],
        collateral=authority.collateral(now),
        now=now,
    )


@pytest.mark.parametrize(
    ("source", "claimed", "error", "needle"),
    [
        ("emulated-sgx", "emulated-tdx", ParseError, "TDX evidence expected but this is SGX"),
        ("emulated-tdx", "emulated-sgx", ParseError, "SGX evidence expected but this is TDX"),
        ("emulated-tdx", "emulated-snp", ParseError, "SNP evidence expected but this is TDX"),
        ("emulated-sgx", "sgx", VerificationError,
         "declared tee sgx but the evidence is emulated-sgx"),
    ],
)  # fmt: skip
def test_registry_refuses_evidence_claimed_as_another_tee(
    samples: dict[str, Evidence],
    authority: EmulationAuthority,
    source: str,
    claimed: str,
    error: type[Exception],
    needle: str,
) -> None:
    forged = replace(samples[source], tee=claimed)
    with pytest.raises(error, match=needle):
        _verify(forged, authority)


def test_registry_refuses_foreign_snp_certificate_table(
    tmp_path: Path, teeflow_home: Path
) -> None:
    from teeflow.platform.emulated_snp import EmulatedSnp

    mine = attester_for("emulated-snp", measurement=MR).evidence(b"x")
    other = EmulatedSnp.generate()  # another platform's VCEK: the signature cannot verify
    forged = replace(mine, certificates=other.cert_table())
    now = datetime.now(UTC)
    anchors = [emulated_snp_anchor(now=now), other.trust_anchor()]
    verify_evidence(mine, anchors=anchors, now=now)
    with pytest.raises(VerificationError):
        verify_evidence(forged, anchors=anchors, now=now)
    with pytest.raises(ParseError, match="no certificate table in the evidence"):
        verify_evidence(replace(mine, certificates=None), anchors=anchors, now=now)


def test_cert_table_round_trip_and_malformed() -> None:
    table = build_cert_table([("VCEK", b"\x30leaf"), ("ASK", b"\x30ask")])
    assert parse_cert_table(table) == [("VCEK", b"\x30leaf"), ("ASK", b"\x30ask")]
    with pytest.raises(ParseError, match="no terminating entry"):
        parse_cert_table(table[:30])
    broken = bytearray(table)
    broken[16:20] = (len(table) + 1).to_bytes(4, "little")  # first offset past the end
    with pytest.raises(ParseError, match="points outside"):
        parse_cert_table(bytes(broken))
    with pytest.raises(ParseError, match="more than 16 entries"):
        parse_cert_table(b"\x01" * 24 * 20)
    with pytest.raises(ParseError, match="exactly one VCEK"):
        snp_chain_from_table(build_cert_table([]))


def test_evidence_type_is_validated() -> None:
    with pytest.raises(ParseError, match="unknown evidence tee"):
        Evidence("sev", b"x", "emulated")
    with pytest.raises(ParseError, match="unknown attester kind"):
        Evidence("sgx", b"x", "hardware")
    with pytest.raises(ParseError, match="SEV-SNP evidence only"):
        Evidence("tdx", b"x", "configfs-tsm", certificates=b"table")
    with pytest.raises(ParseError, match="primary evidence"):
        Evidence("sgx", b"", "gramine")
