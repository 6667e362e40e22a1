"""Real-platform Attesters against fake device trees, and platform detection.

How the kernel / Gramine is simulated (no TEE needed, no timing involved):

* Gramine: ``tmp_path/attestation`` holds a regular ``attestation_type`` file and two named
  pipes, ``user_report_data`` and ``quote``. A helper thread plays Gramine: it reads the 64
  bytes the attester writes into ``user_report_data``, makes a real-format DCAP quote for
  them with the emulated SGX platform, and writes it into ``quote``. Blocking FIFO opens
  order the two sides deterministically. The mismatch case pre-populates ``quote`` as a
  regular file holding a quote for other report data.
* configfs-tsm: :class:`FakeKernel` subclasses :class:`teeflow.platform.tsm.ConfigFs` (the
  attester's only file-system seam) over ``tmp_path``: ``mkdir`` populates the attribute
  files as configfs does, writing ``inblob``/``privlevel`` bumps ``generation`` and
  produces ``outblob`` (a real TDX quote or SNP report from ../shared/testdata with the
  written REPORT_DATA spliced in), ``rmdir`` removes the populated entry. A hook on reads
  plays a concurrent writer.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from teeflow.attestation.dcap.quote import parse_quote
from teeflow.attestation.dcap.reports import EnclaveReport
from teeflow.cli import platform_cmds
from teeflow.errors import PlatformError
from teeflow.platform.base import Attester, detect_platform, probe_platform
from teeflow.platform.emulated import EmulatedSgx, EmulationAuthority
from teeflow.platform.gramine import GramineAttester
from teeflow.platform.tsm import ConfigFs, TsmAttester

# -- Gramine ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emulated() -> EmulatedSgx:
    return EmulatedSgx(EmulationAuthority.generate(), measurement=bytes(range(32)))


def _gramine_tree(tmp_path: Path, kind: str = "dcap") -> Path:
    root = tmp_path / "attestation"
    root.mkdir()
    (root / "attestation_type").write_text(kind + "\n")
    return root


def _serve_one_quote(root: Path, emulated: EmulatedSgx) -> threading.Thread:
    """Gramine's side: read user_report_data from its FIFO, answer on the quote FIFO."""
    os.mkfifo(root / "user_report_data")
    os.mkfifo(root / "quote")

    def gramine() -> None:
        with (root / "user_report_data").open("rb") as fh:
            rd = fh.read()
        assert len(rd) == 64
        with (root / "quote").open("wb") as fh:
            fh.write(emulated.quote(rd))

    thread = threading.Thread(target=gramine, daemon=True)
    thread.start()
    return thread


def test_gramine_attester_writes_report_data_and_reads_quote(
    tmp_path: Path, emulated: EmulatedSgx
) -> None:
    root = _gramine_tree(tmp_path)
    thread = _serve_one_quote(root, emulated)
    attester = GramineAttester(root)
    assert isinstance(attester, Attester)
    assert (attester.tee, attester.kind) == ("sgx", "gramine")
    evidence = attester.evidence(b"teeflow-binding")
    thread.join()
    assert (evidence.tee, evidence.attester, evidence.certificates) == ("sgx", "gramine", None)
    quote = evidence.primary
    parsed = parse_quote(quote)
    assert parsed.report_data == b"teeflow-binding".ljust(64, b"\x00")
    assert isinstance(parsed.body, EnclaveReport)
    assert parsed.body.mr_enclave == bytes(range(32))


def test_gramine_refuses_quote_for_other_report_data(tmp_path: Path, emulated: EmulatedSgx) -> None:
    root = _gramine_tree(tmp_path)
    (root / "user_report_data").write_bytes(b"")
    (root / "quote").write_bytes(emulated.quote(b"someone else"))
    with pytest.raises(PlatformError, match="does not carry the requested report data"):
        GramineAttester(root).evidence(b"mine")
    assert (root / "user_report_data").read_bytes() == b"mine".ljust(64, b"\x00")


@pytest.mark.parametrize("kind", ["none", "epid"])
def test_gramine_requires_dcap(tmp_path: Path, kind: str) -> None:
    root = _gramine_tree(tmp_path, kind)
    with pytest.raises(PlatformError, match=f"attestation type is '{kind}'"):
        GramineAttester(root).evidence(b"x")
    assert not (root / "user_report_data").exists()


def test_gramine_errors(tmp_path: Path) -> None:
    with pytest.raises(PlatformError, match="cannot read Gramine attestation_type"):
        GramineAttester(tmp_path / "absent").evidence(b"x")
    root = _gramine_tree(tmp_path)
    with pytest.raises(PlatformError, match="at most 64 bytes"):
        GramineAttester(root).evidence(bytes(65))
    (root / "user_report_data").write_bytes(b"")
    (root / "quote").write_bytes(b"\x03\x00garbage")
    with pytest.raises(PlatformError, match="malformed quote"):
        GramineAttester(root).evidence(b"x")
    (root / "quote").write_bytes(bytes(70_000))
    with pytest.raises(PlatformError, match="larger than"):
        GramineAttester(root).evidence(b"x")


# -- configfs-tsm -------------------------------------------------------------------------

TDX_QUOTE = "tdx/oe_tdx_quote_v4.bin"
SNP_REPORT = "snp/virtee_milan_report_v2.bin"
TDX_REPORT_DATA = slice(48 + 520, 48 + 584)  # header + TD report 1.0 REPORTDATA
SNP_REPORT_DATA = slice(0x50, 0x90)


class FakeKernel(ConfigFs):
    """configfs-tsm over a plain directory (see module docstring)."""

    def __init__(self, provider: str, template: bytes, rd_slice: slice, aux: bytes | None):
        self.provider = provider
        self.template = template
        self.rd_slice = rd_slice
        self.aux = aux
        self.entries: list[Path] = []
        self.on_read: Callable[[Path], None] | None = None

    def mkdir(self, path: Path) -> None:
        super().mkdir(path)
        self.entries.append(path)
        (path / "provider").write_text(self.provider + "\n")
        (path / "generation").write_text("0\n")
        (path / "inblob").write_bytes(b"")
        (path / "outblob").write_bytes(b"")
        if self.provider == "sev_guest":
            (path / "privlevel").write_text("0\n")
            (path / "privlevel_floor").write_text("0\n")
            (path / "auxblob").write_bytes(b"")

    def rmdir(self, path: Path) -> None:
        shutil.rmtree(path)  # configfs drops the attributes with the directory

    def _bump(self, entry: Path) -> None:
        gen = int((entry / "generation").read_text())
        (entry / "generation").write_text(f"{gen + 1}\n")

    def write(self, path: Path, data: bytes) -> int:
        entry, name = path.parent, path.name
        if name == "inblob":
            if len(data) > 64:
                raise OSError(22, "Invalid argument")
            blob = bytearray(self.template)
            blob[self.rd_slice] = data.ljust(64, b"\x00")
            (entry / "outblob").write_bytes(bytes(blob))
            if self.aux is not None:
                (entry / "auxblob").write_bytes(self.aux)
        elif name != "privlevel":
            raise OSError(13, "Permission denied")  # read-only attribute
        n = super().write(path, data)
        self._bump(entry)
        return n

    def read(self, path: Path, limit: int, what: str) -> bytes:
        if self.on_read is not None:
            self.on_read(path)
        return super().read(path, limit, what)


@pytest.fixture()
def tdx_kernel(attestation_dir: Path) -> FakeKernel:
    return FakeKernel(
        "tdx_guest", (attestation_dir / TDX_QUOTE).read_bytes(), TDX_REPORT_DATA, None
    )


@pytest.fixture()
def snp_kernel(attestation_dir: Path) -> FakeKernel:
    report = (attestation_dir / SNP_REPORT).read_bytes()
    return FakeKernel("sev_guest", report, SNP_REPORT_DATA, b"certificate table")


def _tsm_root(tmp_path: Path) -> Path:
    root = tmp_path / "tsm" / "report"
    root.mkdir(parents=True)
    return root


@pytest.mark.vectors
def test_tsm_tdx_report(tmp_path: Path, tdx_kernel: FakeKernel) -> None:
    root = _tsm_root(tmp_path)
    attester = TsmAttester(root, fs=tdx_kernel)
    report = attester.report(b"binding")
    quote = parse_quote(report.outblob)
    assert quote.tee_type == 0x81
    assert quote.report_data == b"binding".ljust(64, b"\x00")
    assert report.provider == "tdx_guest" and report.tee == "tdx"
    assert report.auxblob is None
    assert report.generation == 1  # one write: inblob
    assert attester.tee == "tdx"
    assert list(root.iterdir()) == []  # entry removed
    assert len(tdx_kernel.entries) == 1 and tdx_kernel.entries[0].name.startswith("teeflow-")
    # (on Python 3.11 isinstance() evaluates the ``tee`` property; the provider is
    # remembered from the report, so no further entry is created)
    assert isinstance(attester, Attester)
    assert len(tdx_kernel.entries) == 1


@pytest.mark.vectors
def test_tsm_snp_report_with_privlevel_and_auxblob(tmp_path: Path, snp_kernel: FakeKernel) -> None:
    root = _tsm_root(tmp_path)
    attester = TsmAttester(root, fs=snp_kernel, privlevel=2, expected_provider="sev_guest")
    report = attester.report(bytes(range(64)))
    assert report.outblob[0x50:0x90] == bytes(range(64))
    assert len(report.outblob) == 1184
    assert report.auxblob == b"certificate table"
    assert report.generation == 2  # privlevel + inblob
    assert report.tee == "snp" and attester.tee == "snp"
    evidence = attester.evidence(b"x")
    assert evidence.primary[0x50:0x90] == b"x".ljust(64, b"\x00")
    assert (evidence.tee, evidence.attester) == ("snp", "configfs-tsm")
    assert evidence.certificates == b"certificate table"  # auxblob, as the kernel gave it
    assert list(root.iterdir()) == []


@pytest.mark.vectors
def test_tsm_detects_concurrent_writer(tmp_path: Path, tdx_kernel: FakeKernel) -> None:
    root = _tsm_root(tmp_path)

    def intruder(path: Path) -> None:
        # another writer rewrites inblob with the same data between our write and read
        if path.name == "outblob":
            tdx_kernel.on_read = None
            tdx_kernel.write(path.parent / "inblob", b"binding".ljust(64, b"\x00"))

    tdx_kernel.on_read = intruder
    with pytest.raises(PlatformError, match=r"concurrent writer.*moved 2, expected 1"):
        TsmAttester(root, fs=tdx_kernel).report(b"binding")
    assert list(root.iterdir()) == []  # removed even on failure


@pytest.mark.vectors
def test_tsm_refuses_evidence_for_other_report_data(tmp_path: Path, snp_kernel: FakeKernel) -> None:
    root = _tsm_root(tmp_path)

    def intruder(path: Path) -> None:
        if path.name == "outblob":  # outblob replaced behind the generation counter's back
            blob = bytearray(path.read_bytes())
            blob[0x50] ^= 1
            path.write_bytes(bytes(blob))

    snp_kernel.on_read = intruder
    with pytest.raises(PlatformError, match="does not carry the requested report data"):
        TsmAttester(root, fs=snp_kernel).report(b"mine")


@pytest.mark.vectors
def test_tsm_provider_checks(tmp_path: Path, tdx_kernel: FakeKernel) -> None:
    root = _tsm_root(tmp_path)
    with pytest.raises(PlatformError, match="expected 'sev_guest'"):
        TsmAttester(root, fs=tdx_kernel, expected_provider="sev_guest").report(b"x")
    tdx_kernel.provider = "arm_cca_guest"
    with pytest.raises(PlatformError, match="unsupported configfs-tsm provider"):
        TsmAttester(root, fs=tdx_kernel).provider()
    assert list(root.iterdir()) == []


def test_tsm_argument_and_setup_errors(tmp_path: Path) -> None:
    with pytest.raises(PlatformError, match="privlevel"):
        TsmAttester(tmp_path, privlevel=4)
    with pytest.raises(PlatformError, match="unknown configfs-tsm provider"):
        TsmAttester(tmp_path, expected_provider="tpm")
    with pytest.raises(PlatformError, match="does not exist"):
        TsmAttester(tmp_path / "none").report(b"x")
    with pytest.raises(PlatformError, match="at most 64 bytes"):
        TsmAttester(tmp_path).report(bytes(65))
    # a real directory without configfs behind it: the attributes never appear
    with pytest.raises(PlatformError, match="generation"):
        TsmAttester(tmp_path).report(b"x")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.vectors
def test_tsm_privlevel_floor(tmp_path: Path, snp_kernel: FakeKernel) -> None:
    root = _tsm_root(tmp_path)
    orig = snp_kernel.mkdir

    def mkdir(path: Path) -> None:
        orig(path)
        (path / "privlevel_floor").write_text("2\n")

    snp_kernel.mkdir = mkdir  # type: ignore[method-assign]
    with pytest.raises(PlatformError, match="below floor 2"):
        TsmAttester(root, fs=snp_kernel, privlevel=1).report(b"x")


# -- detection ----------------------------------------------------------------------------


def test_detect_gramine(tmp_path: Path) -> None:
    root = _gramine_tree(tmp_path)
    assert detect_platform(gramine_root=root, tsm_root=tmp_path / "no-tsm") == "gramine-sgx"


def test_detect_without_tee_fails_and_never_emulates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 9: auto never falls back to emulation, not even when asked by the environment
    # (the former TEEFLOW_PLATFORM=emulated forcing is gone)
    monkeypatch.setenv("TEEFLOW_PLATFORM", "emulated")
    gramine = _gramine_tree(tmp_path, "none")  # gramine-direct or no RA configured
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "sev-guest").touch()
    probe = probe_platform(
        gramine_root=gramine, tsm_root=tmp_path / "no-tsm", dev_root=tmp_path / "dev"
    )
    assert probe.platform is None and probe.tee is None
    assert any("'none'" in n for n in probe.notes)
    assert any("sev-guest" in n for n in probe.notes)
    with pytest.raises(PlatformError) as exc:
        detect_platform(gramine_root=gramine, tsm_root=tmp_path / "no-tsm")
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith("no TEE attestation interface found")
    assert message.endswith(
        "run inside a TEE, or name a platform with --platform "
        "(emulated-sgx|emulated-tdx|emulated-snp for development)"
    )


@pytest.mark.vectors
def test_detect_tsm_providers(
    tmp_path: Path, tdx_kernel: FakeKernel, snp_kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _tsm_root(tmp_path)
    for kernel, expected in ((tdx_kernel, "tdx"), (snp_kernel, "sev-snp")):
        monkeypatch.setattr("teeflow.platform.tsm.ConfigFs", lambda k=kernel: k)
        assert detect_platform(gramine_root=tmp_path / "no", tsm_root=root) == expected
        assert list(root.iterdir()) == []


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test root"""

    platform_cmds.register(app)
    return app


def test_cli_platform_detect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEEFLOW_PLATFORM", raising=False)
    root = _gramine_tree(tmp_path)
    runner = CliRunner()
    res = runner.invoke(_cli(), ["platform", "detect", "--gramine-root", str(root)])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == "gramine-sgx"
    res = runner.invoke(
        _cli(),
        [
            "platform",
            "detect",
            "--json",
            "--gramine-root",
            str(tmp_path / "x"),
            "--tsm-root",
            str(tmp_path / "y"),
            "--dev-root",
            str(tmp_path / "z"),
        ],
    )
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    assert doc["platform"] is None and doc["tee"] is None
    assert doc["source"] is None and doc["notes"]
    assert "no TEE attestation interface found" in res.stderr
