"""Workloads: manifests (YAML), their measurement and trusted-file checks.

See :mod:`teeflow.workload.manifest` and ``docs/workload.md``.
"""

from __future__ import annotations

from teeflow.workload.manifest import (
    TrustedFile,
    TrustedFileMismatch,
    WorkloadManifest,
    hash_file,
    measurement,
    measurement_input,
    verify_trusted_files,
)

__all__ = [
    "TrustedFile",
    "TrustedFileMismatch",
    "WorkloadManifest",
    "hash_file",
    "measurement",
    "measurement_input",
    "verify_trusted_files",
]
