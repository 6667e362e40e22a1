"""The ``teeflow demo`` main job (attestation round trip on the emulated TEE)."""

from teeflow.demo.attestation_roundtrip import DemoStep, DemoSummary, run_attestation_demo

__all__ = ["DemoStep", "DemoSummary", "run_attestation_demo"]
