"""FL transport: gRPC over mutual TLS from the federation CA (DESIGN "Federated learning").

- :mod:`.framing` — chunked payloads with announced size + SHA-256, bounded reassembly,
  JSON configs; :data:`~.framing.MAX_MESSAGE_BYTES` is the gRPC message bound on both sides.
- :mod:`.tls` — gRPC credentials from workload certificates; how each side learns who the
  peer is (certificate, never a message field); the signed Welcome.
- :mod:`.server` — the aggregator's gRPC server and :class:`~.server.ClientHub`.
- :mod:`.client` — the client's :class:`~.client.AggregatorStream` (dials out only).

The wire protocol is ``teeflow/fl/proto/teeflow_fl.proto``.
"""

from __future__ import annotations

from teeflow.fl.transport.framing import (
    CHUNK_SIZE,
    MAX_MESSAGE_BYTES,
    Reassembler,
    TransportError,
    decode_config,
    encode_config,
    iter_chunks,
)

__all__ = [
    "CHUNK_SIZE",
    "MAX_MESSAGE_BYTES",
    "Reassembler",
    "TransportError",
    "decode_config",
    "encode_config",
    "iter_chunks",
]
