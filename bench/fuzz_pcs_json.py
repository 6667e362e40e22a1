"""Fuzz the Intel PCS signed-JSON parsers: TCB Info v2/v3 and Enclave (QE) Identity v2.

``data[0]`` even → :func:`teeflow.attestation.dcap.tcb_info.parse_tcb_info`, odd →
:func:`teeflow.attestation.dcap.qe_identity.parse_enclave_identity`, on ``data[1:]``.
Contract: result or ``ParseError`` (signatures are not checked here). Seeds: every
``tcb_info.json`` / ``qe_identity.json`` of the shared collateral sets.

    python bench/fuzz_pcs_json.py -atheris_runs=1000000
"""

from __future__ import annotations

import sys

from fuzz_common import Harness, attestation_files, main, with_selector


def make() -> Harness:
    from teeflow.attestation.dcap.qe_identity import parse_enclave_identity
    from teeflow.attestation.dcap.tcb_info import parse_tcb_info
    from teeflow.errors import ParseError

    def target(data: bytes) -> None:
        if not data:
            return
        if data[0] % 2 == 0:
            parse_tcb_info(data[1:])
        else:
            parse_enclave_identity(data[1:])

    def seeds() -> list[bytes]:
        tcb = attestation_files("*/collateral/*/tcb_info.json")
        qe = attestation_files("*/collateral/*/qe_identity.json")
        synthetic = [b'{"tcbInfo":{},"signature":""}', b'{"enclaveIdentity":{},"signature":"00"}']
        return with_selector(0, [*tcb, synthetic[0]]) + with_selector(1, [*qe, synthetic[1]])

    return Harness("pcs_json", target, allowed=(ParseError,), seeds=seeds, max_len=8192)


if __name__ == "__main__":
    sys.exit(main(make))
