"""Real Hopper evidence in Trustee's ``device_evidence_list`` shape (the RCAR additional
evidence ``"nvidia"``): Trustee's own test vector (hex transcript, as Trustee's attester
first sent it) and the nvtrust 8xH100 list (base64, as NVIDIA's SDK sends it) load, verify
against the pinned NVIDIA root with the README nonces, and fail on one flipped bit. The
shared tree holds no real Blackwell evidence; Blackwell is covered by emulated evidence
(tests/unit/test_gpu_attester.py)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from teeflow.attestation.nvidia import verify
from teeflow.attestation.nvidia.trustee import load_device_evidence_list
from teeflow.errors import VerificationError

pytestmark = [pytest.mark.vectors]
NOW = datetime(2026, 11, 21, tzinfo=UTC)


def test_trustee_hopper_vector_in_trustee_shape(
    attestation_dir: Path, manifest: dict[str, Any]
) -> None:
    expected = manifest["files"]["nvidia/trustee_hopper_attestation_report.hex"]["expected"]
    chain = (attestation_dir / expected["cert_chain_file"]).read_bytes()
    value = {
        "device_evidence_list": [
            {
                "arch": "HOPPER",
                "uuid": "1111-2222-33333-444444-555555",
                "evidence": (attestation_dir / "nvidia/trustee_hopper_attestation_report.hex")
                .read_text()
                .strip(),
                "certificate": base64.b64encode(chain).decode(),
            }
        ]
    }
    (dev,) = load_device_evidence_list(value)
    verified = verify(dev, now=NOW, nonce=bytes.fromhex(expected["request_nonce"]))
    assert verified.fwid.digest.hex() == expected["leaf_fwid"]
    assert verified.arch == "HOPPER" and not verified.emulated


def test_nvtrust_list_in_trustee_shape(attestation_dir: Path) -> None:
    entries = json.loads((attestation_dir / "nvidia/nvtrust_gpu_evidence_8xH100.json").read_text())
    value = {
        "device_evidence_list": [
            {"arch": e["arch"], "evidence": e["evidence"], "certificate": e["certificate"]}
            for e in entries
        ]
    }
    devices = load_device_evidence_list(value)
    assert len(devices) == 8
    for dev, entry in zip(devices, entries, strict=True):
        verify(dev, now=NOW, nonce=bytes.fromhex(entry["nonce"]))
    raw = bytearray(base64.b64decode(entries[0]["evidence"]))
    raw[-1] ^= 0x01  # the signature
    value["device_evidence_list"][0]["evidence"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(VerificationError):
        verify(load_device_evidence_list(value)[0], now=NOW)
