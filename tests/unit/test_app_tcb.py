"""Bounded TCB of an app replica (issue 15): the replica process imports no web framework
and no ML stack, and no attestation code of TEEs it does not run on: a replica attests (its
platform's attester) but verifies no evidence, and the agreement it reads builds no TEE's
Appraisal Policy. A fresh interpreter imports the replica entry point and everything it
loads lazily when it runs (NATS, the KBS client and its HTTP transport, the emulated
platform, the package loader) and reports its modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("fastapi", "starlette", "uvicorn", "flask", "django", "aiohttp", "torch",
             "numpy", "sklearn", "scipy", "tensorflow", "jax", "flwr", "grpc", "typer",
             "rich", "sqlalchemy", "pyarrow", "safetensors")
#: Per-TEE policy and verifier packages, the verifier registry and collateral fetchers, which
#: an (emulated-)SGX replica never runs; trio: httpcore's trio backend (the KBS client is sync).
UNUSED = ("teeflow.attestation.sgx", "teeflow.attestation.tdx", "teeflow.attestation.nvidia",
          "teeflow.attestation.registry", "teeflow.attestation.composite",
          "teeflow.attestation.collateral", "teeflow.kbs.service.evidence", "trio")

PROBE = """
import json, sys
from teeflow.app.replica import main  # the entry point; now what it loads when it runs
import nats, nats.js.api, nats.js.errors, httpcore
import teeflow.kbs.client.sdk, teeflow.kbs.policy.enrollment
from teeflow.platform.selection import PlatformOptions
from teeflow.app.package import load_app, package_digest
PlatformOptions("emulated-sgx").attester(measurement=bytes(32), home=sys.argv[1])
pkg = sys.argv[2]
load_app(pkg, package_digest(pkg))
print(json.dumps(sorted(m for m, mod in sys.modules.items() if mod is not None)))
"""


def replica_modules(tmp_path: Path) -> set[str]:
    """The modules (full names) a fresh replica-like process has loaded."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TEEFLOW_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path),
         str(REPO / "examples" / "sealed-auction" / "package")],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_replica_imports_no_web_framework_or_ml_stack(tmp_path: Path) -> None:
    loaded = {m.split(".")[0] for m in replica_modules(tmp_path)}
    assert "nats" in loaded and "teeflow" in loaded
    assert loaded.isdisjoint(FORBIDDEN), sorted(loaded & set(FORBIDDEN))


def test_replica_imports_no_unused_tee_verifiers(tmp_path: Path) -> None:
    modules = replica_modules(tmp_path)
    assert "teeflow.kbs.policy.agreement" in modules and "teeflow.kbs.client.sdk" in modules
    assert "teeflow.attestation.dcap.quote" in modules  # the emulated SGX attester's quotes
    unused = sorted(m for m in modules if any(m == u or m.startswith(u + ".") for u in UNUSED))
    assert not unused, unused
