"""``teeflow quote show|verify`` on TDX, SEV-SNP and NVIDIA evidence (auto-detected).

Through the real CLI app (typer ``CliRunner``) on every real TDX / SNP / GPU vector in
``../shared/testdata/attestation`` at the README's fixed times with the README's outcomes,
at the real date (2026-11-21) where the README says so, tampered variants (exit 1,
``verified`` false), policy files, inapplicable options and emulated TDX / SNP evidence
(denied unless ``--allow-emulated``). The SGX contract is covered by ``test_cli_quote.py``.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from teeflow.cli.evidence.common import SGX_KEYS
from teeflow.cli.main import app

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

runner = CliRunner()
REAL_NOW = "2026-11-21T00:00:00Z"
SNP_FIXED = "2025-06-01T00:00:00Z"
GTG_2023 = "tdx/collateral/tdx_50806F000000_2023-06-18_gtg"
# (quote, collateral set, fixed time, TCB status or None = "no matching TCB level")
TDX_CASES = [
    ("tdx/phala_tdx_quote_v4.bin", "tdx/collateral/tdx_B0C06F000000_2025-06-19_phala",
     "2025-07-01T00:00:00Z", "UpToDate"),
    ("tdx/gtg_cos113_tdx_quote_v4.bin", "tdx/collateral/tdx_00806F050000_2026-06-12_oe_eval21",
     "2026-07-01T00:00:00Z", "OutOfDate"),
    ("tdx/oe_tdx_quote_v5.bin", "tdx/collateral/tdx_00806F050000_2026-06-12_oe_eval21",
     "2026-07-01T00:00:00Z", "OutOfDate"),
    ("tdx/gtg_quote_v5_sample.bin", "tdx/collateral/tdx_90C06F000000_2026-02-18_phala",
     "2026-03-01T00:00:00Z", "UpToDate"),
    ("tdx/oe_tdx_quote_v4.bin", GTG_2023, "2023-07-01T01:00:00Z", "UpToDate"),
    ("tdx/gtg_tdx_prod_quote_SPR_E4_v4.bin", GTG_2023, "2023-07-01T01:00:00Z", None),
]  # fmt: skip
PARTIAL_TDX = [
    ("tdx/trustee_tdx_quote_6_v4.bin", "tdx/collateral/tdx_00A06D080000_2025-10-27_trustee",
     "2025-11-01T00:00:00Z"),
    ("tdx/gtg_quote_v5_sample.bin", "tdx/collateral/tdx_90C06F000000_2026-02-01_gtg",
     "2026-02-03T01:00:00Z"),
]  # fmt: skip
SNP_REPORTS = [
    "snp/gsg_milan_report_v2.bin",
    "snp/virtee_milan_report_v2.bin",
    "snp/trustee_aws_milan_vlek_report_v3.bin",
    "snp/azure_genoa_report_v3.bin",
    "snp/azure_milan_report_v2.bin",
]
TRUSTEE_GPU = "nvidia/trustee_hopper_attestation_report.hex"
NVTRUST = "nvidia/nvtrust_gpu_evidence_8xH100.json"


def run_json(*args: str) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout)


def verify(path: Path | str, *args: str) -> tuple[int, dict[str, Any]]:
    return run_json("quote", "verify", str(path), *args)


def expected(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    entry: dict[str, Any] = manifest["files"][name]["expected"]
    return entry


def flipped(data: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


def check_common_keys(out: dict[str, Any]) -> None:
    assert set(SGX_KEYS) <= set(out)
    assert isinstance(out["errors"], list) and isinstance(out["advisories"], list)
    assert out["accepted"] is (out["verified"] and out["accepted"])


# ----------------------------------------------------------------------------- TDX


@pytest.mark.vectors
@pytest.mark.parametrize(("quote", "coll", "at", "status"), TDX_CASES)
def test_tdx_readme_outcomes(
    attestation_dir: Path, manifest: dict[str, Any], quote: str, coll: str, at: str,
    status: str | None,
) -> None:  # fmt: skip
    args = ["--collateral", str(attestation_dir / coll), "--at", at]
    code, out = verify(attestation_dir / quote, *args)
    check_common_keys(out)
    body = expected(manifest, quote)["fields"]["body"]
    assert out["evidence_type"] == "tdx-quote" and out["tee"] == "tdx"
    assert out["mrtd"] == body["mrtd"] and out["mrseam"] == body["mrseam"]
    assert out["rtmrs"] == [body[f"rtmr{i}"] for i in range(4)]
    assert out["td_attributes"] == body["td_attributes"]
    assert out["report_data"] == body["report_data"]
    assert out["mrenclave"] is None and out["isv_svn"] is None
    if status is None:
        assert code == 1 and out["verified"] is False and out["tcb_status"] is None
        assert out["errors"] == ["verification: no matching TCB level"]
        code, out = verify(attestation_dir / quote, "--signatures-only", "--at", at)
        assert code == 0 and out["verified"] is True and out["tcb_status"] is None
        return
    assert out["verified"] is True and out["tcb_status"] == status
    assert out["qe_tcb_status"] == "UpToDate" and out["relaunch_advised"] is False
    if status == "UpToDate":
        assert code == 0 and out["accepted"] is True and out["errors"] == []
    else:
        assert code == 1 and out["accepted"] is False and out["advisories"]
        assert out["errors"][0] == f"policy: tcb status {status} not accepted"
        code, out = verify(attestation_dir / quote, *args, "--accept-tcb", status)
        assert code == 0 and out["accepted"] is True and out["status"] == "warning"
        first = out["advisories"][0]
        code, out = verify(
            attestation_dir / quote, *args, "--accept-tcb", status, "--accept-advisory", first
        )
        assert (
            code == 1 and f"policy: advisory {out['advisories'][1]} not accepted" in out["errors"]
        )
    code, out = verify(attestation_dir / quote, "--collateral", str(attestation_dir / coll),
                       "--at", REAL_NOW)  # fmt: skip
    assert code == 1 and out["verified"] is False
    assert out["errors"][0].startswith("collateral: collateral expired")


@pytest.mark.vectors
@pytest.mark.parametrize(("quote", "coll", "at"), PARTIAL_TDX)
def test_tdx_partial_collateral(attestation_dir: Path, quote: str, coll: str, at: str) -> None:
    code, out = verify(attestation_dir / quote, "--collateral", str(attestation_dir / coll),
                       "--at", at)  # fmt: skip
    assert code == 1 and out["verified"] is False
    assert out["errors"][0].startswith("collateral:")
    code, out = verify(attestation_dir / quote, "--at", at)
    assert code == 1 and out["verified"] is False
    assert out["errors"] == ["collateral: no collateral: TCB status unknown"]
    code, out = verify(attestation_dir / quote, "--signatures-only", "--at", at)
    assert code == 0 and out["verified"] is True and out["accepted"] is True
    assert out["tcb_status"] is None and out["relaunch_advised"] is None


@pytest.mark.vectors
@pytest.mark.parametrize("offset", [20, 48 + 16, 48 + 136, 48 + 500, 700, 1500, 3000])
def test_tdx_tampered(attestation_dir: Path, offset: int, tmp_path: Path) -> None:
    quote, coll, at, _ = TDX_CASES[0]
    target = tmp_path / "tampered.bin"
    target.write_bytes(flipped((attestation_dir / quote).read_bytes(), offset, 3))
    code, out = verify(target, "--collateral", str(attestation_dir / coll), "--at", at)
    assert code == 1 and out["verified"] is False and out["accepted"] is False
    assert out["errors"] and out["errors"][0].split(":")[0] in ("verification", "parse")


@pytest.mark.vectors
def test_tdx_policy_file(attestation_dir: Path, manifest: dict[str, Any], tmp_path: Path) -> None:
    quote, coll, at, _ = TDX_CASES[0]
    body = expected(manifest, quote)["fields"]["body"]
    good = tmp_path / "tdx.yaml"
    good.write_text(
        f"policy_id: phala-td\nmrtds: [{body['mrtd']}]\nrtmr0: {body['rtmr0']}\n"
        f"report_data: {body['report_data']}\nxfam: {body['xfam']}\n"
    )
    args = ["--collateral", str(attestation_dir / coll), "--at", at]
    code, out = verify(attestation_dir / quote, *args, "--policy", str(good))
    assert code == 0 and out["accepted"] is True and out["status"] == "affirming"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"mrtds: ['{'00' * 48}']\nrtmr1: '{'11' * 48}'\n")
    code, out = verify(attestation_dir / quote, *args, "--policy", str(bad))
    assert code == 1 and out["verified"] is True and out["accepted"] is False
    assert out["errors"] == [
        f"policy: mrtd {body['mrtd']} not in allowed list",
        f"policy: rtmr1 {body['rtmr1']} does not match expected {'11' * 48}",
    ]


@pytest.mark.vectors
def test_tdx_show(attestation_dir: Path, manifest: dict[str, Any]) -> None:
    for name in ("tdx/oe_tdx_quote_v5.bin", "tdx/gtg_cos113_tdx_quote_v4.bin"):
        code, out = run_json("quote", "show", str(attestation_dir / name))
        f = expected(manifest, name)["fields"]
        assert code == 0 and out["evidence_type"] == "tdx-quote" and out["tee"] == "tdx"
        assert out["version"] == f["quote_version"]
        assert out["td_report"] == ("1.5" if f["body_type"] == "td15" else "1.0")
        assert out["mrtd"] == f["body"]["mrtd"] and out["xfam"] == f["body"]["xfam"]
        assert out["parsed_length"] == f["quote_length_parsed"]
        assert out["trailing_bytes"] == f["file_trailing_bytes"]
        assert out["pck_fmspc"] == f["pck_cert"]["fmspc"]


@pytest.mark.vectors
def test_options_that_do_not_apply(attestation_dir: Path) -> None:
    tdx_quote = attestation_dir / TDX_CASES[0][0]
    result = runner.invoke(app, ["quote", "verify", str(tdx_quote), "--certs", str(tdx_quote)])
    assert result.exit_code == 2 and "--certs does not apply to tdx-quote" in result.output
    snp = attestation_dir / SNP_REPORTS[0]
    result = runner.invoke(app, ["quote", "verify", str(snp), "--accept-tcb", "UpToDate"])
    assert result.exit_code == 2 and "--accept-tcb does not apply" in result.output
    gpu = attestation_dir / NVTRUST
    result = runner.invoke(app, ["quote", "verify", str(gpu), "--product", "Milan"])
    assert result.exit_code == 2 and "--product does not apply" in result.output


# ----------------------------------------------------------------------------- SEV-SNP


def snp_certs(attestation_dir: Path, manifest: dict[str, Any], name: str) -> Path:
    return attestation_dir / expected(manifest, name)["endorsement_cert_file"]


@pytest.mark.vectors
@pytest.mark.parametrize("name", SNP_REPORTS)
def test_snp_readme_outcomes(
    attestation_dir: Path, manifest: dict[str, Any], name: str, teeflow_home: Path
) -> None:
    exp = expected(manifest, name)
    f = exp["fields"]
    certs = str(snp_certs(attestation_dir, manifest, name))
    code, out = verify(attestation_dir / name, "--certs", certs, "--at", SNP_FIXED)
    check_common_keys(out)
    assert out["evidence_type"] == "snp-report" and out["tee"] == "snp"
    assert out["verified"] is True and out["emulated"] is False
    assert out["measurement"] == f["measurement"] and out["host_data"] == f["host_data"]
    assert out["vmpl"] == f["vmpl"] and out["policy"] == f["policy"]
    assert out["chip_id"] == f["chip_id"] and out["report_data"] == f["report_data"]
    assert out["reported_tcb"] == f["reported_tcb"]
    assert out["product"] == exp["chain"]["product"]
    assert out["signing_key"] == f["signing_key"] and out["tcb_status"] is None
    if f["policy_decoded"]["debug_allowed"]:
        assert code == 1 and out["accepted"] is False and out["debug"] is True
        assert out["errors"] == ["policy: guest policy allows debugging (DEBUG)"]
        code, out = verify(attestation_dir / name, "--certs", certs, "--at", SNP_FIXED,
                           "--allow-debug")  # fmt: skip
    assert code == 0 and out["accepted"] is True, out["errors"]
    code, out = verify(attestation_dir / name, "--certs", certs, "--at", SNP_FIXED,
                       "--product", exp["chain"]["product"])  # fmt: skip
    assert out["verified"] is True
    code, out = verify(attestation_dir / name, "--certs", certs, "--at", REAL_NOW)
    if exp["expected_at_real_now_2026_11_21"].startswith("ACCEPT"):
        assert out["verified"] is True
    else:
        assert code == 1 and out["verified"] is False
        assert out["errors"][0].startswith("verification:") and "not valid at" in out["errors"][0]


@pytest.mark.vectors
def test_snp_tampered_and_wrong_certs(
    attestation_dir: Path, manifest: dict[str, Any], tmp_path: Path, teeflow_home: Path
) -> None:
    name = "snp/virtee_milan_report_v2.bin"
    data = (attestation_dir / name).read_bytes()
    certs = str(snp_certs(attestation_dir, manifest, name))
    for offset in (0x08, 0x50, 0x90, 0x1A0, 0x2A0, 0x2E8):  # guest_svn, report_data, …, sig
        bad = tmp_path / f"bad{offset}.bin"
        bad.write_bytes(flipped(data, offset, 1))
        code, out = verify(bad, "--certs", certs, "--at", SNP_FIXED)
        assert code == 1 and out["verified"] is False and out["accepted"] is False
        assert out["errors"][0].split(":")[0] in ("verification", "parse")
    other = str(snp_certs(attestation_dir, manifest, "snp/gsg_milan_report_v2.bin"))
    code, out = verify(attestation_dir / name, "--certs", other, "--at", SNP_FIXED)
    assert code == 1 and out["verified"] is False
    code, out = verify(attestation_dir / name, "--certs", certs, "--at", SNP_FIXED,
                       "--product", "Genoa")  # fmt: skip
    assert code == 1 and out["verified"] is False and "expected" in out["errors"][0]
    code, out = verify(attestation_dir / name, "--at", SNP_FIXED)
    assert code == 1 and out["errors"] == [
        "parse: SEV-SNP evidence needs --certs (the VCEK or VLEK certificate)"
    ]


@pytest.mark.vectors
def test_snp_policy_file_and_show(
    attestation_dir: Path, manifest: dict[str, Any], tmp_path: Path, teeflow_home: Path
) -> None:
    name = "snp/azure_genoa_report_v3.bin"
    f = expected(manifest, name)["fields"]
    certs = str(snp_certs(attestation_dir, manifest, name))
    policy = tmp_path / "snp.yaml"
    policy.write_text(
        f"measurements: ['{f['measurement']}']\nreport_data: '{f['report_data']}'\n"
        "min_tcb: {bootloader: 10, snp: 23, microcode: 84}\nallowed_products: [Genoa]\n"
    )
    code, out = verify(attestation_dir / name, "--certs", certs, "--at", SNP_FIXED,
                       "--policy", str(policy))  # fmt: skip
    assert code == 0 and out["accepted"] is True and out["status"] == "affirming"
    policy.write_text("min_tcb: {microcode: 85}\nvmpl: 1\n")
    code, out = verify(attestation_dir / name, "--certs", certs, "--at", SNP_FIXED,
                       "--policy", str(policy))  # fmt: skip
    assert code == 1 and out["verified"] is True and len(out["errors"]) >= 2
    code, out = run_json("quote", "show", str(attestation_dir / name))
    assert code == 0 and out["evidence_type"] == "snp-report"
    assert out["guest_svn"] == f["guest_svn"] and out["id_key_digest"] == f["id_key_digest"]
    assert out["current_tcb"] == f["current_tcb"] and out["current_fw"] == f["current_fw"]
    assert out["policy_decoded"]["debug_allowed"] is False


# ----------------------------------------------------------------------------- NVIDIA


@pytest.mark.vectors
def test_gpu_trustee_hex(attestation_dir: Path, manifest: dict[str, Any], tmp_path: Path) -> None:
    exp = expected(manifest, TRUSTEE_GPU)
    path = attestation_dir / TRUSTEE_GPU
    chain = str(attestation_dir / exp["cert_chain_file"])
    nonce = exp["request_nonce"]
    for at in ("2022-03-02T00:00:00Z", SNP_FIXED, REAL_NOW):
        code, out = verify(path, "--certs", chain, "--nonce", nonce, "--at", at)
        check_common_keys(out)
        assert code == 0 and out["verified"] is True and out["accepted"] is True, out["errors"]
        assert out["evidence_type"] == "nvidia-spdm-hex" and out["tee"] == "nvidia-gpu"
        assert out["fwid"] == exp["leaf_fwid"] and out["arch"] == "HOPPER"
        assert out["driver_version"] == "550.90.07" and out["vbios_version"] == "96.00.9F.00.01"
        assert out["nonce"] == nonce and out["status"] == "warning"  # no RIM comparison
    code, out = verify(path, "--certs", chain, "--at", SNP_FIXED)
    assert code == 1 and out["verified"] is True and out["accepted"] is False
    code, out = verify(path, "--certs", chain, "--nonce", "00" * 32, "--at", SNP_FIXED)
    assert code == 1 and out["verified"] is True
    assert "policy: GPU evidence nonce does not match the expected nonce" in out["errors"]
    code, out = verify(path, "--certs", chain, "--nonce", nonce, "--at", "2022-02-28T00:00:00Z")
    assert code == 1 and out["verified"] is False
    code, out = verify(path, "--nonce", nonce)
    assert code == 1 and out["errors"][0].startswith("parse: NVIDIA SPDM hex evidence needs")
    text = path.read_text().strip()
    for pos in (10, 200, len(text) - 10):  # request nonce, measurement block, signature
        bad = tmp_path / f"bad{pos}.hex"
        digit = "0" if text[pos] != "0" else "1"
        bad.write_text(text[:pos] + digit + text[pos + 1 :])
        code, out = verify(bad, "--certs", chain, "--nonce", nonce, "--at", SNP_FIXED)
        assert code == 1 and out["verified"] is False, pos
    code, out = run_json("quote", "show", str(path))
    assert code == 0 and out["nonce"] == nonce and out["measurement_blocks"] == 64


@pytest.mark.vectors
def test_gpu_nvtrust_8x(attestation_dir: Path, manifest: dict[str, Any], tmp_path: Path) -> None:
    entries = expected(manifest, NVTRUST)["entries"]
    path = attestation_dir / NVTRUST
    nonce = entries[0]["nonce"]
    code, out = verify(path, "--nonce", nonce, "--at", SNP_FIXED)
    check_common_keys(out)
    assert code == 0 and out["verified"] is True and out["accepted"] is True
    assert out["evidence_type"] == "nvidia-nvtrust-json" and len(out["gpus"]) == 8
    assert out["arch"] == "HOPPER" and out["driver_version"] == "590.12"
    assert out["vbios_version"] == "96.00.A5.00.01" and out["nonce"] == nonce
    for gpu, x in zip(out["gpus"], entries, strict=True):
        assert gpu["source"] == f"nvtrust[{x['index']}]"
        assert gpu["verified"] and gpu["accepted"] and gpu["fwid"] == x["leaf_fwid"]
    assert out["fwid"] == (entries[0]["leaf_fwid"] if len({x["leaf_fwid"] for x in entries}) == 1
                           else None)  # fmt: skip
    # Tamper with GPU 3's signature: only that GPU fails; the whole result is rejected.
    doc = json.loads(path.read_text())
    raw = bytearray(base64.b64decode(doc[3]["evidence"]))
    raw[-5] ^= 0x10
    doc[3]["evidence"] = base64.b64encode(bytes(raw)).decode()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    code, out = verify(bad, "--nonce", nonce, "--at", SNP_FIXED)
    assert code == 1 and out["verified"] is False and out["accepted"] is False
    assert [g["verified"] for g in out["gpus"]] == [i != 3 for i in range(8)]
    assert out["errors"] and all(e.startswith("nvtrust[3]: ") for e in out["errors"])
    result = runner.invoke(app, ["quote", "verify", str(path), "--certs", str(path)])
    assert result.exit_code == 1
    code, out = run_json("quote", "show", str(path))
    assert code == 0 and out["gpu_count"] == 8 and out["gpus"][0]["nonce"] == nonce


# ----------------------------------------------------------------------------- emulated


def test_emulated_tdx(teeflow_home: Path, tmp_path: Path) -> None:
    from teeflow.platform.emulated import EmulationAuthority
    from teeflow.platform.emulated_collateral import write_collateral_files
    from teeflow.platform.emulated_tdx import EmulatedTdx, make_tdx_collateral_files

    now = datetime.now(UTC).replace(microsecond=0)
    authority = EmulationAuthority.load_or_create(now=now - timedelta(days=1))
    quote = tmp_path / "td.bin"
    quote.write_bytes(EmulatedTdx(authority, mrtd=b"\x42" * 48).quote(b"hello"))
    coll = tmp_path / "collateral"
    write_collateral_files(make_tdx_collateral_files(authority.keys, now), coll, private=False)
    at = now.isoformat()
    code, out = verify(quote, "--collateral", str(coll), "--at", at)
    assert code == 1 and out["verified"] is True and out["emulated"] is True
    assert "policy: emulated evidence not allowed" in out["errors"]
    code, out = verify(quote, "--collateral", str(coll), "--at", at, "--allow-emulated")
    assert code == 0 and out["accepted"] is True and out["tee"] == "emulated-tdx"
    assert out["mrtd"] == "42" * 48 and out["tcb_status"] == "UpToDate"


def test_emulated_snp(teeflow_home: Path, tmp_path: Path) -> None:
    from teeflow.platform.emulated_snp import EmulatedSnp

    emu = EmulatedSnp.load_or_create(measurement=b"\x07" * 48)
    report = tmp_path / "report.bin"
    report.write_bytes(emu.report(b"nonce"))
    chain = tmp_path / "chain.pem"
    chain.write_bytes(emu.cert_chain_pem())
    for extra in (["--certs", str(chain)], []):  # without --certs: the local emulated VCEK
        code, out = verify(report, *extra)
        assert code == 1 and out["verified"] is True and out["emulated"] is True
        assert "policy: emulated evidence not allowed" in out["errors"]
        code, out = verify(report, *extra, "--allow-emulated")
        assert code == 0 and out["accepted"] is True and out["tee"] == "emulated-snp"
        assert out["measurement"] == "07" * 48
    other_home = tmp_path / "other-home"
    with pytest.MonkeyPatch.context() as mp:  # no local emulation: AMD roots only
        mp.setenv("TEEFLOW_HOME", str(other_home))
        code, out = verify(report, "--certs", str(chain), "--allow-emulated")
        assert code == 1 and out["verified"] is False
        assert not (other_home / "emulation").exists()  # never created by verify


def test_unknown_evidence_goes_to_the_sgx_pipeline(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x01\x02" * 40)
    code, out = verify(junk)
    assert code == 1 and out["verified"] is False and out["tee"] == "sgx"
    assert out["errors"][0].startswith("parse:") and "evidence_type" not in out
    result = runner.invoke(app, ["quote", "show", str(junk), "--json"])
    assert result.exit_code != 0


@pytest.mark.vectors
def test_gpu_trustee_json_shapes(attestation_dir: Path, manifest: dict[str, Any],
                                 tmp_path: Path) -> None:  # fmt: skip
    """The nvtrust 8xH100 vector re-shaped as Trustee sends it (additional evidence map)."""
    entries = json.loads((attestation_dir / NVTRUST).read_text())
    nonce = entries[0]["nonce"]
    devices = [{"arch": e["arch"], "evidence": e["evidence"], "certificate": e["certificate"]}
               for e in entries]  # fmt: skip
    for shape in ({"nvidia": {"device_evidence_list": devices}},
                  {"device_evidence_list": devices}):  # fmt: skip
        path = tmp_path / "trustee.json"
        path.write_text(json.dumps(shape))
        code, out = verify(path, "--nonce", nonce, "--at", SNP_FIXED)
        assert code == 0 and out["accepted"] is True, out["errors"]
        assert out["evidence_type"] == "nvidia-trustee-json" and len(out["gpus"]) == 8
    devices[2]["certificate"] = devices[0]["certificate"]  # GPU 2 now claims GPU 0's chain
    path.write_text(json.dumps({"device_evidence_list": devices}))
    code, out = verify(path, "--nonce", nonce, "--at", SNP_FIXED)
    assert code == 1 and [g["verified"] for g in out["gpus"]] == [i != 2 for i in range(8)]
