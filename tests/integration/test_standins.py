"""The real attesters (TsmAttester, GramineAttester, GramineSealer) against the FUSE
stand-ins of configfs-tsm and Gramine's /dev/attestation: evidence verifies with the
verifiers, the kernel's generation / EINVAL / EFBIG semantics hold, tampering is refused.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from standin_helpers import standin

from teeflow.attestation import sgx, snp, tdx
from teeflow.attestation.dcap.quote import parse_quote
from teeflow.attestation.evidence import Evidence
from teeflow.attestation.registry import verify_evidence
from teeflow.attestation.snp.abi import parse_report
from teeflow.attestation.snp.cert_table import parse_cert_table
from teeflow.attestation.trust import TrustAnchor
from teeflow.errors import ParseError, PlatformError, VerificationError
from teeflow.platform.emulated import EmulationAuthority
from teeflow.platform.emulated_snp import EmulatedSnp
from teeflow.platform.emulated_tdx import EmulatedTdx
from teeflow.platform.gramine import GramineAttester
from teeflow.platform.sealing import EmulatedSealer, GramineSealer, sealer_for
from teeflow.platform.selection import attester_for
from teeflow.platform.tsm import ConfigFs, TsmAttester
from teeflow.testing.gramine_standin import KEY_POLICY_MRENCLAVE, seal_key
from teeflow.testing.tsm_standin import standin_measurement

pytestmark = pytest.mark.slow

WORKLOAD = hashlib.sha256(b"standin test workload").digest()
OTHER = hashlib.sha256(b"another workload").digest()
RD = b"teeflow standin report data".ljust(64, b"\x01")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    h = tmp_path_factory.mktemp("home")
    EmulationAuthority.load_or_create(h)
    EmulatedSnp.load_or_create(h)  # RSA-4096 keys once, loaded by every stand-in
    return h


@pytest.fixture(scope="module")
def tdx_root(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("tdx")
    with standin("tdx", base / "tsm", home, WORKLOAD, base / "logs") as proc:
        assert proc.info["tee"] == "emulated-tdx"
        yield proc.mountpoint


@pytest.fixture(scope="module")
def snp_root(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("snp")
    with standin("sev-snp", base / "tsm", home, WORKLOAD, base / "logs") as proc:
        yield proc.mountpoint


@pytest.fixture(scope="module")
def gramine_root(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("gramine")
    with standin("gramine-sgx", base / "attestation", home, WORKLOAD, base / "logs") as proc:
        yield proc.mountpoint


def _now() -> datetime:
    return datetime.now(UTC)


def _verify_tdx(home: Path, quote: bytes) -> tdx.VerifiedTdxEvidence:
    authority = EmulationAuthority.load_or_create(home)
    mrtd = standin_measurement("tdx", WORKLOAD)
    now = _now()
    collateral = EmulatedTdx(authority, mrtd=mrtd).collateral(now)
    return tdx.verify(
        parse_quote(quote), anchors=[authority.trust_anchor()], collateral=collateral, now=now
    )


def _snp_certs(aux: bytes) -> dict[str, x509.Certificate]:
    return {kind: x509.load_der_x509_certificate(der) for kind, der in parse_cert_table(aux)}


def _verify_snp(home: Path, report: bytes, aux: bytes) -> snp.VerifiedSnpEvidence:
    certs = _snp_certs(aux)
    anchor = EmulatedSnp.load_or_create(home).trust_anchor()  # trusted independently
    return snp.verify(
        parse_report(report),
        endorsement_cert=certs["VCEK"],
        intermediates=[certs["ASK"]],
        anchors=[anchor],
        now=_now(),
    )


# -- configfs-tsm: TDX ----------------------------------------------------------------------


def test_tdx_attester_evidence_verifies(home: Path, tdx_root: Path) -> None:
    attester = TsmAttester(tdx_root, expected_provider="tdx_guest")
    assert attester.tee == "emulated-tdx"  # the stand-in says so; the KBS requires it
    report = attester.report(RD)
    assert report.provider == "tdx_guest" and report.auxblob is None
    assert report.generation == 1  # one inblob write on a fresh entry
    verified = _verify_tdx(home, report.outblob)
    assert verified.anchor.emulated
    body = verified.quote.body
    assert body.mr_td == standin_measurement("tdx", WORKLOAD)
    assert body.report_data == RD
    assert os.listdir(tdx_root) == [".teeflow-standin"]  # the attester removed its entry


def test_tdx_tampered_outblob_refused(home: Path, tdx_root: Path) -> None:
    quote = bytearray(TsmAttester(tdx_root).report(RD).outblob)
    quote[48 + 136] ^= 0x01  # a byte of MRTD in the TD report body (header is 48 bytes)
    with pytest.raises(VerificationError):
        _verify_tdx(home, bytes(quote))


def test_outblob_before_inblob_is_einval(tdx_root: Path) -> None:
    entry = tdx_root / "early"
    os.mkdir(entry)
    try:
        assert (entry / "generation").read_bytes() == b"0\n"
        assert (entry / "provider").read_bytes() == b"tdx_guest\n"
        with pytest.raises(OSError) as info:
            (entry / "outblob").read_bytes()
        assert info.value.errno == errno.EINVAL
        assert not (entry / "auxblob").exists()  # TDX has no auxblob
    finally:
        os.rmdir(entry)


def test_inblob_bounds_as_the_kernel(tdx_root: Path) -> None:
    entry = tdx_root / "bounds"
    os.mkdir(entry)
    try:
        with pytest.raises(OSError) as info, (entry / "inblob").open("wb", buffering=0) as fh:
            fh.write(bytes(65))
        assert info.value.errno == errno.EFBIG
        (entry / "inblob").write_bytes(bytes(32))  # accepted by configfs ...
        assert (entry / "generation").read_bytes() == b"1\n"
        with pytest.raises(OSError) as info:  # ... refused by the provider (64 bytes only)
            (entry / "outblob").read_bytes()
        assert info.value.errno == errno.EINVAL
        with pytest.raises(OSError) as info:
            (entry / "outblob").write_bytes(b"x")
        assert info.value.errno == errno.EACCES
    finally:
        os.rmdir(entry)


def test_generation_and_report_cache(tdx_root: Path) -> None:
    entry = tdx_root / "cache"
    os.mkdir(entry)
    try:
        (entry / "inblob").write_bytes(RD)
        first = (entry / "outblob").read_bytes()
        assert (entry / "outblob").read_bytes() == first  # cached until the next write
        (entry / "inblob").write_bytes(RD)
        assert (entry / "generation").read_bytes() == b"2\n"
        assert (entry / "outblob").read_bytes() != first  # regenerated (fresh QE auth data)
    finally:
        os.rmdir(entry)


class _RacingFs(ConfigFs):
    """After the attester's inblob write, a second writer writes inblob of the same entry
    (another thread, through the mount), before the attester reads outblob."""

    def __init__(self, data: bytes | None) -> None:
        self.data = data

    def write(self, path: Path, data: bytes) -> int:
        n = super().write(path, data)
        if path.name == "inblob":
            other = self.data if self.data is not None else data
            t = threading.Thread(target=ConfigFs().write, args=(path, other))
            t.start()
            t.join()
        return n


def test_concurrent_inblob_writer_detected_by_generation(tdx_root: Path) -> None:
    # same bytes: outblob still carries our REPORT_DATA, only generation tells
    with pytest.raises(PlatformError, match="concurrent writer"):
        TsmAttester(tdx_root, fs=_RacingFs(None)).report(RD)


def test_concurrent_inblob_writer_with_other_data_detected(tdx_root: Path) -> None:
    with pytest.raises(PlatformError, match="does not carry the requested report data"):
        TsmAttester(tdx_root, fs=_RacingFs(bytes(64))).report(RD)


def test_no_nested_entries_and_marker_protected(tdx_root: Path) -> None:
    os.mkdir(tdx_root / "outer")
    try:
        with pytest.raises(OSError) as info:
            os.mkdir(tdx_root / "outer" / "inner")
        assert info.value.errno == errno.EPERM
        with pytest.raises(FileExistsError):
            os.mkdir(tdx_root / ".teeflow-standin")
    finally:
        os.rmdir(tdx_root / "outer")


# -- configfs-tsm: SEV-SNP ------------------------------------------------------------------


def test_snp_attester_report_and_auxblob_verify(home: Path, snp_root: Path) -> None:
    attester = TsmAttester(snp_root, privlevel=2, expected_provider="sev_guest")
    assert attester.tee == "emulated-snp"
    report = attester.report(RD)
    assert report.generation == 2  # privlevel and inblob writes
    assert report.auxblob is not None
    verified = _verify_snp(home, report.outblob, report.auxblob)
    assert verified.anchor.emulated
    assert verified.report.measurement == standin_measurement("sev-snp", WORKLOAD)
    assert verified.report.report_data == RD
    assert verified.report.vmpl == 2


def test_snp_tampered_outblob_refused(home: Path, snp_root: Path) -> None:
    report = TsmAttester(snp_root).report(RD)
    assert report.auxblob is not None
    forged = bytearray(report.outblob)
    forged[0x90] ^= 0x01  # MEASUREMENT (SEV-SNP ABI Table 22, offset 0x90)
    with pytest.raises(VerificationError):
        _verify_snp(home, bytes(forged), report.auxblob)


def test_snp_privlevel_and_auxblob_before_inblob(snp_root: Path) -> None:
    entry = snp_root / "priv"
    os.mkdir(entry)
    try:
        assert (entry / "privlevel_floor").read_bytes() == b"0\n"
        with pytest.raises(OSError) as info:
            (entry / "privlevel").write_bytes(b"4\n")
        assert info.value.errno == errno.EINVAL
        assert (entry / "generation").read_bytes() == b"0\n"  # a refused write does not count
        with pytest.raises(OSError) as info:
            (entry / "auxblob").read_bytes()
        assert info.value.errno == errno.EINVAL
    finally:
        os.rmdir(entry)


def test_snp_concurrent_writer_detected(snp_root: Path) -> None:
    with pytest.raises(PlatformError, match="concurrent writer"):
        TsmAttester(snp_root, fs=_RacingFs(None)).report(RD)


# -- Gramine /dev/attestation ---------------------------------------------------------------


def test_gramine_attester_quote_verifies(home: Path, gramine_root: Path) -> None:
    attester = GramineAttester(gramine_root)
    assert attester.tee == "emulated-sgx"
    assert attester.attestation_type() == "dcap"
    quote = attester.evidence(RD)
    quote = quote if isinstance(quote, bytes) else quote.primary  # Evidence after the seam
    authority = EmulationAuthority.load_or_create(home)
    now = _now()
    verified = sgx.verify(
        parse_quote(quote),
        anchors=[authority.trust_anchor()],
        collateral=authority.collateral(now),
        now=now,
    )
    assert verified.anchor.emulated
    assert verified.quote.body.mr_enclave == WORKLOAD
    assert verified.quote.body.report_data == RD
    assert (gramine_root / "user_report_data").read_bytes() == RD


def test_gramine_tampered_quote_refused(home: Path, gramine_root: Path) -> None:
    raw = (gramine_root / "quote").read_bytes()
    forged = bytearray(raw)
    forged[48 + 64] ^= 0x01  # MRENCLAVE in the report body
    authority = EmulationAuthority.load_or_create(home)
    now = _now()
    with pytest.raises((VerificationError, ParseError)):
        sgx.verify(
            parse_quote(bytes(forged)),
            anchors=[authority.trust_anchor()],
            collateral=authority.collateral(now),
            now=now,
        )


def test_gramine_user_report_data_is_exactly_64_bytes(gramine_root: Path) -> None:
    with pytest.raises(OSError) as info:
        (gramine_root / "user_report_data").write_bytes(bytes(63))
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        (gramine_root / "quote").write_bytes(b"x")
    assert info.value.errno == errno.EACCES


def test_gramine_sealing_key_and_target_info(home: Path, gramine_root: Path) -> None:
    authority = EmulationAuthority.load_or_create(home)
    key = (gramine_root / "keys" / "_sgx_mrenclave").read_bytes()
    assert len(key) == 16
    expected = seal_key(
        authority, policy=KEY_POLICY_MRENCLAVE, mrenclave=WORKLOAD, mrsigner=authority.mrsigner
    )
    assert key == expected
    other = seal_key(
        authority, policy=KEY_POLICY_MRENCLAVE, mrenclave=OTHER, mrsigner=authority.mrsigner
    )
    assert other != key  # another enclave gets another key
    assert (gramine_root / "keys" / "_sgx_mrsigner").read_bytes() != key
    sealer = sealer_for("gramine-sgx", gramine_root=gramine_root)  # the KBS's sealer
    assert isinstance(sealer, GramineSealer)
    state_key = sealer.sealing_key(WORKLOAD, purpose=b"kbs-state")
    assert len(state_key) == 32
    assert state_key != EmulatedSealer(authority).sealing_key(WORKLOAD, purpose=b"kbs-state")
    info = (gramine_root / "my_target_info").read_bytes()
    assert len(info) == 512 and info[:32] == WORKLOAD


def test_killed_standin_is_unmounted_on_stop(home: Path, tmp_path: Path) -> None:
    from teeflow.demo.standins import is_mounted

    with standin("tdx", tmp_path / "tsm", home, WORKLOAD, tmp_path / "logs") as proc:
        proc.kill()
        proc.proc.wait(timeout=30)
        assert is_mounted(proc.mountpoint)  # a dead FUSE mount stays until unmounted
        with pytest.raises(PlatformError, match="cannot access"):  # typed, not OSError
            TsmAttester(proc.mountpoint).report(RD)
    assert not is_mounted(proc.mountpoint)  # stop() unmounted it lazily


def test_gramine_user_report_data_is_per_process(gramine_root: Path) -> None:
    """Gramine keeps user_report_data per process (enclave): another process writing it
    between our write and our read does not change our quote."""
    import subprocess
    import sys

    ours = b"o" * 64
    (gramine_root / "user_report_data").write_bytes(ours)
    code = "import sys; open(sys.argv[1], 'wb', buffering=0).write(b'x' * 64)"
    target = str(gramine_root / "user_report_data")
    subprocess.run([sys.executable, "-c", code, target], check=True, timeout=60)
    assert (gramine_root / "user_report_data").read_bytes() == ours
    assert parse_quote((gramine_root / "quote").read_bytes()).report_data == ours


# -- the one seam: Evidence from the real attesters, verified by the registry -------------------


def _anchors(home: Path) -> list[TrustAnchor]:
    return [
        EmulationAuthority.load_or_create(home).trust_anchor(),
        EmulatedSnp.load_or_create(home).trust_anchor(),
    ]


@pytest.mark.parametrize("platform", ["tdx", "sev-snp", "gramine-sgx"])
def test_registry_verifies_standin_evidence(
    platform: str, home: Path, tdx_root: Path, snp_root: Path, gramine_root: Path
) -> None:
    root = {"tdx": tdx_root, "sev-snp": snp_root, "gramine-sgx": gramine_root}[platform]
    attester = attester_for(platform, tsm_root=root, gramine_root=root)
    evidence = attester.evidence(RD)
    expected = {"tdx": "emulated-tdx", "sev-snp": "emulated-snp", "gramine-sgx": "emulated-sgx"}
    assert evidence.tee == expected[platform]
    assert evidence.attester == ("gramine" if platform == "gramine-sgx" else "configfs-tsm")
    now = _now()
    authority = EmulationAuthority.load_or_create(home)
    collateral = (
        EmulatedTdx(authority, mrtd=standin_measurement("tdx", WORKLOAD)).collateral(now)
        if platform == "tdx"
        else authority.collateral(now)
    )
    verified = verify_evidence(evidence, anchors=_anchors(home), collateral=collateral, now=now)
    assert verified.emulated and verified.tee == evidence.tee
    identity = WORKLOAD if platform == "gramine-sgx" else standin_measurement("tdx", WORKLOAD)
    assert verified.measurement == identity.hex()


def test_registry_refuses_standin_evidence_declared_as_hardware(home: Path, tdx_root: Path) -> None:
    """Relabelling stand-in evidence as hardware ``tdx`` is refused by the verifier."""
    evidence = TsmAttester(tdx_root).evidence(RD)
    forged = Evidence("tdx", evidence.primary, evidence.attester)
    now = _now()
    authority = EmulationAuthority.load_or_create(home)
    collateral = EmulatedTdx(authority, mrtd=standin_measurement("tdx", WORKLOAD)).collateral(now)
    with pytest.raises(VerificationError, match="declared tee tdx but the evidence is"):
        verify_evidence(forged, anchors=_anchors(home), collateral=collateral, now=now)


def test_standin_exits_with_its_killed_launcher(home: Path, tmp_path: Path) -> None:
    """A demo or test killed with SIGKILL cannot stop its stand-ins: they notice their parent
    is gone (``--exit-with-parent``), stop and unmount."""
    import signal
    import subprocess
    import sys
    import time

    from teeflow.demo.standins import is_mounted
    from teeflow.testing.pseudofs import fuse_problem

    if fuse_problem() is not None:
        pytest.skip("FUSE unavailable")
    mnt = tmp_path / "tsm"
    code = (
        "import os, sys, time; from pathlib import Path\n"
        "from teeflow.demo.standins import start_standin\n"
        "p = start_standin('tdx', Path(sys.argv[1]), measurement=bytes(32),"
        " env=dict(os.environ), logs=Path(sys.argv[2]))\n"
        "print(p.pid, flush=True); time.sleep(600)\n"
    )
    env = {**os.environ, "TEEFLOW_HOME": str(home)}
    launcher = subprocess.Popen(
        [sys.executable, "-c", code, str(mnt), str(tmp_path / "logs")],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert launcher.stdout is not None
        child = int(launcher.stdout.readline())
        assert is_mounted(mnt)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=30)
        for _ in range(150):  # bounded: the watchdog polls every 0.5 s
            if not is_mounted(mnt):
                break
            time.sleep(0.2)
        assert not is_mounted(mnt)  # the stand-in left its FUSE loop and unmounted
        assert child > 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
