"""Bounded TCB of an app replica (issue 15): the replica process imports no web framework
and no ML stack. A fresh interpreter imports the replica entry point and everything it
loads lazily when it runs (NATS, the KBS client, the emulated platform, the package loader)
and reports its modules."""

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

PROBE = """
import json, sys
from teeflow.app.replica import main  # the entry point; now what it loads when it runs
import nats, nats.js.api, nats.js.errors
import teeflow.kbs.client.sdk, teeflow.kbs.policy.enrollment
from teeflow.platform.selection import PlatformOptions
from teeflow.app.package import load_app, package_digest
PlatformOptions("emulated-sgx").attester(measurement=bytes(32), home=sys.argv[1])
pkg = sys.argv[2]
load_app(pkg, package_digest(pkg))
print(json.dumps(sorted({m.split(".")[0] for m, mod in sys.modules.items() if mod is not None})))
"""


def test_replica_imports_no_web_framework_or_ml_stack(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TEEFLOW_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path),
         str(REPO / "examples" / "sealed-auction" / "package")],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "nats" in loaded and "teeflow" in loaded
    assert loaded.isdisjoint(FORBIDDEN), sorted(loaded & set(FORBIDDEN))
