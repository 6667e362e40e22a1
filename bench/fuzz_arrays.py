"""Fuzz the federated-learning array decoder (canonical safetensors, float32 only).

Target: :func:`teeflow.fl.arrays.decode_arrays` — contract: arrays or ``ParseError``; a
decoded input re-encodes to exactly the same bytes. Seeds: small synthetic updates made
with :func:`teeflow.fl.arrays.encode_arrays` (scalars, vectors, matrices, several tensors).

    python bench/fuzz_arrays.py -atheris_runs=1000000
"""

from __future__ import annotations

import contextlib
import sys

from fuzz_common import Harness, main


def make() -> Harness:
    import numpy as np

    from teeflow.errors import ParseError
    from teeflow.fl.arrays import decode_arrays, encode_arrays

    def target(data: bytes) -> None:
        arrays = decode_arrays(data)
        if encode_arrays(arrays) != data:
            raise AssertionError("decoded arrays do not re-encode to the same bytes")

    def seeds() -> list[bytes]:
        rng = np.random.default_rng(0)
        samples = [
            {},
            {"w": np.zeros((), dtype=np.float32)},
            {"bias": np.arange(4, dtype=np.float32)},
            {"layer.0.weight": rng.standard_normal((3, 2)).astype(np.float32)},
            {
                "a": np.ones((2, 2, 2), dtype=np.float32),
                "b": np.zeros((0,), dtype=np.float32),
                "c": np.array([1.5, -2.0], dtype=np.float32),
            },
        ]
        out = []
        for s in samples:
            with contextlib.suppress(ParseError):
                out.append(encode_arrays(s))
        return out

    return Harness("arrays", target, allowed=(ParseError,), seeds=seeds, max_len=4096)


if __name__ == "__main__":
    sys.exit(main(make))
