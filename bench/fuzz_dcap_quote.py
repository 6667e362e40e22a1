"""Fuzz the Intel DCAP quote parser (SGX v3, TDX v4/v5) and evidence-type detection.

Targets :func:`teeflow.attestation.dcap.quote.parse_quote`, the SGX / TDX views
(:func:`teeflow.attestation.sgx.parse_quote`, :func:`teeflow.attestation.tdx.parse_quote`)
and :func:`teeflow.attestation.detect.detect_evidence`. Contract: any input gives a result
or ``ParseError``; a parsed quote re-serialises to exactly the bytes it was parsed from.
Seeds: every SGX and TDX quote in ``../shared/testdata/attestation`` plus truncations.

    python bench/fuzz_dcap_quote.py -atheris_runs=1000000
    python bench/fuzz_dcap_quote.py --seconds 30
"""

from __future__ import annotations

import sys

from fuzz_common import Harness, attestation_files, main


def make() -> Harness:
    from teeflow.attestation import sgx, tdx
    from teeflow.attestation.dcap.quote import parse_quote
    from teeflow.attestation.detect import detect_evidence
    from teeflow.errors import ParseError

    def target(data: bytes) -> None:
        detect_evidence(data)
        quote = parse_quote(data)
        if quote.to_bytes() != data[: quote.parsed_length]:
            raise AssertionError("quote does not round-trip")
        try:
            sgx.parse_quote(data)
        except ParseError:
            tdx.parse_quote(data)

    def seeds() -> list[bytes]:
        real = attestation_files("sgx/*.bin", "tdx/*.bin")
        out = list(real)
        for q in real[:2]:
            out += [q[:48], q[: 48 + 384], q[: len(q) // 2]]
        return out

    return Harness("dcap_quote", target, allowed=(ParseError,), seeds=seeds, max_len=12000)


if __name__ == "__main__":
    sys.exit(main(make))
