"""Fuzz the KBS wire-model decoder (``teeflow.kbs.protocol.decode_json``).

``data[0]`` selects the wire model (AuthRequest, Challenge, AttestRequest, ResourceUpload,
CertificateRequest, CounterIncrement); ``data[1:]`` is the request body. Contract: a model
or one of the KBS problems the HTTP layer maps to 400/413 (``InvalidRequest``,
``PayloadTooLarge``) — any other exception is a crash (a 500 in the service). Seeds: valid
bodies of every model (the shapes of Trustee's KBS protocol) and a few near misses.

    python bench/fuzz_kbs_protocol.py -atheris_runs=1000000
"""

from __future__ import annotations

import base64
import json
import sys

from fuzz_common import Harness, main, with_selector


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make() -> Harness:
    from cryptography.hazmat.primitives.asymmetric import ec

    from teeflow.errors import ParseError
    from teeflow.kbs.api.problems import InvalidRequest, PayloadTooLarge
    from teeflow.kbs.protocol import (
        AttestRequest,
        AuthRequest,
        CertificateRequest,
        Challenge,
        CounterIncrement,
        ResourceUpload,
        decode_json,
    )

    models: list[type] = [
        AuthRequest,
        Challenge,
        AttestRequest,
        ResourceUpload,
        CertificateRequest,
        CounterIncrement,
    ]
    limit = 64 * 1024

    def target(data: bytes) -> None:
        if not data:
            return
        model = models[data[0] % len(models)]
        decoded = decode_json(model, data[1:], max_bytes=limit)
        decoded.model_dump(by_alias=True)

    def seeds() -> list[bytes]:
        numbers = ec.derive_private_key(7, ec.SECP256R1()).public_key().public_numbers()
        jwk = {
            "kty": "EC",
            "crv": "P-256",
            "alg": "ECDH-ES+A256KW",
            "x": _b64url(numbers.x.to_bytes(32, "big")),
            "y": _b64url(numbers.y.to_bytes(32, "big")),
        }
        rd = {
            "nonce": "bm9uY2U",
            "tee-pubkey": jwk,
            "teeflow": {"role": "client", "party": "alice", "resources": ["a/b/c"]},
        }
        docs = {
            0: [{"version": "0.4.0", "tee": "sgx", "extra-params": ""}, {"version": "x"}],
            1: [{"nonce": "abc", "extra-params": ""}],
            2: [
                {
                    "runtime-data": rd,
                    "tee-evidence": {
                        "primary_evidence": {"quote": "AAAA"},
                        "additional_evidence": "",
                    },
                },
                {"runtime-data": rd, "tee-evidence": {"quote": "AAAA"}},
                {
                    "init-data": {"format": "toml", "body": "x = 1"},
                    "runtime-data": rd,
                    "tee-evidence": {"quote": "AAAA"},
                },
            ],
            3: [{"path": "repo/key/tag", "owner": "alice", "wrapped_key": "AAAA"}],
            4: [{"csr": "-----BEGIN CERTIFICATE REQUEST-----\nAA==\n"}],
            5: [{"expected": 0, "digest": "ab" * 32}, {"expected": -1, "digest": "zz"}],
        }
        out: list[bytes] = []
        for selector, bodies in docs.items():
            out += with_selector(selector, [json.dumps(b).encode() for b in bodies])
        out += with_selector(0, [b"", b"[]", b"null", b'{"version": 1e400}'])
        return out

    return Harness(
        "kbs_protocol",
        target,
        allowed=(ParseError, InvalidRequest, PayloadTooLarge),
        seeds=seeds,
        max_len=4096,
    )


if __name__ == "__main__":
    sys.exit(main(make))
