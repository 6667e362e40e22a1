"""``teeflow demo``: the main job — a confidential federated-learning run on the emulated TEE
(:mod:`teeflow.demo.fl_demo`) — and the attestation round trip (``teeflow demo attestation``,
:mod:`teeflow.demo.attestation_roundtrip`).
"""

from teeflow.demo.attestation_roundtrip import DemoStep, DemoSummary, run_attestation_demo
from teeflow.demo.fl_demo import DemoOptions, FlDemoSummary, RoundProgress, run_fl_demo

__all__ = [
    "DemoOptions",
    "DemoStep",
    "DemoSummary",
    "FlDemoSummary",
    "RoundProgress",
    "run_attestation_demo",
    "run_fl_demo",
]
