"""Fuzz the NVIDIA SPDM 1.1 measurement-transcript parsers.

``data[0] % 3`` selects: 0 → :func:`teeflow.attestation.nvidia.parse_transcript` (binary),
1 → :func:`teeflow.attestation.nvidia.parse_transcript_hex` (Trustee hex text),
2 → :func:`teeflow.attestation.nvidia.load_nvtrust_evidence` (nvtrust JSON list), each on
``data[1:]``. Contract: result or ``ParseError``. Seeds: the Trustee transcript (binary and
hex), one and all entries of the nvtrust 8xH100 file.

    python bench/fuzz_spdm.py -atheris_runs=1000000
"""

from __future__ import annotations

import binascii
import contextlib
import json
import sys

from fuzz_common import Harness, attestation_files, main, with_selector


def make() -> Harness:
    from teeflow.attestation.nvidia import (
        load_nvtrust_evidence,
        parse_transcript,
        parse_transcript_hex,
    )
    from teeflow.errors import ParseError

    def target(data: bytes) -> None:
        if not data:
            return
        body = data[1:]
        mode = data[0] % 3
        if mode == 0:
            parse_transcript(body)
        elif mode == 1:
            parse_transcript_hex(body)
        else:
            load_nvtrust_evidence(body)

    def seeds() -> list[bytes]:
        hexes = attestation_files("nvidia/*.hex")
        raw = []
        for h in hexes:
            with contextlib.suppress(binascii.Error, ValueError):
                raw.append(binascii.unhexlify(h.strip()))
        out = with_selector(0, raw) + with_selector(1, hexes)
        for doc in attestation_files("nvidia/*.json"):
            entries = json.loads(doc)
            out += with_selector(2, [json.dumps(entries[:1]).encode(), b"[]", b"{}"])
        return out

    return Harness("spdm", target, allowed=(ParseError,), seeds=seeds, max_len=16384)


if __name__ == "__main__":
    sys.exit(main(make))
