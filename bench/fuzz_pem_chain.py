"""Fuzz strict certificate-chain decoding (PCK chains, Intel issuer chains).

Each input goes to :func:`teeflow.attestation.dcap.chain.load_pem_chain` (contract:
result or ``ParseError``; the PCK SGX extension of a decoded leaf is read with
:func:`teeflow.attestation.dcap.pck.parse_pck_extensions`, also ``ParseError``) and to
:func:`teeflow.attestation.dcap.verify_common.decode_pck_chain`, the strict decoder of
quote certification data type 5, whose documented error is ``VerificationError``
("malformed PCK certificate chain"). Seeds: the PCK chains cut from the real quotes, the
issuer chains of the collateral sets, the shipped roots.

    python bench/fuzz_pem_chain.py -atheris_runs=1000000
"""

from __future__ import annotations

import contextlib
import sys
import warnings

from fuzz_common import Harness, attestation_files, main


def make() -> Harness:
    from teeflow.attestation.dcap.chain import load_pem_chain
    from teeflow.attestation.dcap.pck import parse_pck_extensions
    from teeflow.attestation.dcap.quote import parse_quote
    from teeflow.attestation.dcap.verify_common import decode_pck_chain
    from teeflow.errors import ParseError, VerificationError

    warnings.simplefilter("ignore")

    def target(data: bytes) -> None:
        try:
            certs = load_pem_chain(data)
        except ParseError:
            certs = []
        if certs:
            with contextlib.suppress(ParseError):
                parse_pck_extensions(certs[0])
        try:
            decode_pck_chain(data)
        except VerificationError as exc:
            if type(exc) is not VerificationError:
                raise
            if not str(exc).startswith("malformed PCK certificate chain"):
                raise

    def seeds() -> list[bytes]:
        out: list[bytes] = []
        for q in attestation_files("sgx/*.bin", "tdx/*.bin"):
            try:
                pem = parse_quote(q).pck_chain_pem
            except ParseError:
                continue
            if pem:
                out.append(bytes(pem))
        out += attestation_files("*/collateral/*/*.pem", "roots/intel*.pem")
        return out

    return Harness("pem_chain", target, allowed=(ParseError,), seeds=seeds, max_len=8192)


if __name__ == "__main__":
    sys.exit(main(make))
