"""Benchmark: verify + appraise a real SGX quote with collateral loaded, vs dcap-qvl.

Measures, in the same run and on the same quote and collateral (the Phala SGX v3 quote and
its Intel collateral from ../shared/testdata/attestation, verified at 2025-07-01):

- teeflow: ``parse_quote`` + ``verify`` + ``appraise`` (collateral parsed once up front;
  verified-once results — chains, TCB Info and QE Identity signatures, CRLs — are cached);
- dcap-qvl (PyPI, Rust core): ``dcap_qvl.verify`` with the same collateral.

Target: teeflow median <= 1.0 x dcap-qvl median. Writes bench/results/quote_verify.json.

Usage: .venv/bin/python bench/quote_verify.py [--iterations 2000] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, time_calls, write_json
from teeflow.attestation.dcap.collateral import IntelCollateral
from teeflow.attestation.evidence import TcbStatus
from teeflow.attestation.sgx import appraise, parse_quote, verify
from teeflow.attestation.sgx.policy import SgxPolicy
from teeflow.attestation.trust import intel_sgx_root_ca
from teeflow.testing.dcap_qvl import qvl_collateral_from_dir

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "attestation"
QUOTE = SHARED / "sgx" / "phala_sgx_quote_v3.bin"
COLLATERAL = SHARED / "sgx" / "collateral" / "sgx_00A067110000_2025-06-19_phala"
AT = datetime(2025, 7, 1, tzinfo=UTC)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not QUOTE.is_file():
        print(f"skipped: {QUOTE} not found")
        return 0
    import dcap_qvl

    raw = QUOTE.read_bytes()
    collateral = IntelCollateral.from_dir(COLLATERAL)
    anchors = [intel_sgx_root_ca()]
    policy = SgxPolicy(
        accepted_tcb_statuses={TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED},
    )

    def teeflow_once() -> object:
        verified = verify(parse_quote(raw), anchors=anchors, collateral=collateral, now=AT)
        result = appraise(verified, policy)
        assert result.accepted, result.violations
        return result

    qvl_col = qvl_collateral_from_dir(COLLATERAL)
    now_secs = int(AT.timestamp())

    def qvl_once() -> object:
        report = dcap_qvl.verify(raw, qvl_col, now_secs)
        assert report.status == "ConfigurationAndSWHardeningNeeded"
        return report

    # interleave the two to share machine noise; each gets the same iterations
    half = max(1, args.iterations // 2)
    tf1 = time_calls(teeflow_once, iterations=half)
    q1 = time_calls(qvl_once, iterations=half)
    tf2 = time_calls(teeflow_once, iterations=half, warmup=0)
    q2 = time_calls(qvl_once, iterations=half, warmup=0)
    tf = {k: (tf1[k] + tf2[k]) / 2 for k in tf1}
    q = {k: (q1[k] + q2[k]) / 2 for k in q1}
    ratio = tf["median_ms"] / q["median_ms"]
    payload = {
        "benchmark": "quote_verify",
        "quote": QUOTE.name,
        "at": AT.isoformat(),
        "teeflow": tf,
        "dcap_qvl": q,
        "dcap_qvl_version": getattr(dcap_qvl, "__version__", "unknown"),
        "ratio_median_teeflow_over_dcap_qvl": ratio,
        "target_ratio_max": 1.0,
        "meets_target": ratio <= 1.0,
        "machine": machine(),
    }
    path = write_json("quote_verify", payload, args.out)
    print(f"{'':12}{'median ms':>12}{'p99 ms':>10}")
    print(f"{'teeflow':12}{tf['median_ms']:12.3f}{tf['p99_ms']:10.3f}")
    print(f"{'dcap-qvl':12}{q['median_ms']:12.3f}{q['p99_ms']:10.3f}")
    print(f"ratio teeflow/dcap-qvl = {ratio:.2f} (target <= 1.0) -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
