"""Fuzz the AMD SEV-SNP ATTESTATION_REPORT parser and the VCEK/VLEK certificate loader.

``data[0]`` selects the parser: even → :func:`teeflow.attestation.snp.parse_report` on
``data[1:]`` (must round-trip through ``to_bytes``), odd →
:func:`teeflow.attestation.snp.load_certificates` then
:func:`teeflow.attestation.snp.parse_amd_extensions` on each certificate. Contract: result
or ``ParseError``. Seeds: the five real reports and their VCEK/VLEK certificates.

    python bench/fuzz_snp_report.py -atheris_runs=1000000
"""

from __future__ import annotations

import sys
import warnings

from fuzz_common import Harness, attestation_files, main, with_selector


def make() -> Harness:
    from teeflow.attestation.snp import load_certificates, parse_amd_extensions, parse_report
    from teeflow.errors import ParseError

    warnings.simplefilter("ignore")  # AMD certificates have serial 0 (cryptography warns)

    def target(data: bytes) -> None:
        if not data:
            return
        body = data[1:]
        if data[0] % 2 == 0:
            report = parse_report(body)
            if report.to_bytes() != body:
                raise AssertionError("report does not round-trip")
        else:
            for cert in load_certificates(body):
                parse_amd_extensions(cert)

    def seeds() -> list[bytes]:
        reports = attestation_files("snp/*_report_*.bin")
        certs = attestation_files("snp/*.der", "snp/*.pem")
        return with_selector(0, reports) + with_selector(1, certs)

    return Harness("snp_report", target, allowed=(ParseError,), seeds=seeds, max_len=8192)


if __name__ == "__main__":
    sys.exit(main(make))
