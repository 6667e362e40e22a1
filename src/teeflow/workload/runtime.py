"""Workload start-up: re-check the trusted files, then run the entrypoint.

Like Gramine's loader refusing to start an enclave whose trusted file hash differs from the
manifest (``sgx.trusted_files``), :func:`start_workload` re-hashes every trusted file before
anything runs and raises :class:`~teeflow.workload.manifest.TrustedFileMismatch` naming the
first differing file. The started process learns its manifest through
``TEEFLOW_WORKLOAD_MANIFEST`` (which :class:`teeflow.platform.emulated.EmulatedSgx` reads to
put the measurement into MRENCLAVE).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from teeflow.errors import WorkloadError
from teeflow.workload.manifest import WorkloadManifest, measurement, verify_trusted_files

__all__ = ["MANIFEST_ENV", "StartedWorkload", "run_workload", "start_workload"]

#: Environment variable naming the running workload's manifest (absolute path).
MANIFEST_ENV = "TEEFLOW_WORKLOAD_MANIFEST"


@dataclass(frozen=True)
class StartedWorkload:
    """A manifest whose trusted files were re-checked.

    Attributes:
        manifest: the parsed manifest.
        manifest_path: absolute path of the manifest file.
        base_dir: absolute directory the trusted paths are relative to.
        measurement: SHA-256 of the canonical manifest (32 bytes).
    """

    manifest: WorkloadManifest
    manifest_path: Path
    base_dir: Path
    measurement: bytes

    def argv(self, extra: Sequence[str] = ()) -> list[str]:
        """Entrypoint + manifest arguments + ``extra`` (a list; never run through a shell)."""
        return [*self.manifest.entrypoint, *self.manifest.arguments, *extra]

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) + manifest env + manifest path."""
        env = dict(os.environ if base is None else base)
        env.update(self.manifest.env)
        env[MANIFEST_ENV] = str(self.manifest_path)
        return env


def start_workload(
    manifest_path: str | os.PathLike[str], base_dir: str | os.PathLike[str] | None = None
) -> StartedWorkload:
    """Load a manifest and re-hash its trusted files.

    Args:
        manifest_path: workload manifest (YAML).
        base_dir: directory trusted paths are relative to (default: the manifest's directory).

    Raises:
        WorkloadError: the manifest cannot be read or is invalid.
        TrustedFileMismatch: (a WorkloadError) a trusted file is missing or differs; the
            message names it.
    """
    path = Path(manifest_path).resolve()
    manifest = WorkloadManifest.load(path)
    base = Path(base_dir).resolve() if base_dir is not None else path.parent
    verify_trusted_files(manifest, base)
    return StartedWorkload(manifest, path, base, measurement(manifest))


def run_workload(
    started: StartedWorkload, extra: Sequence[str] = (), *, timeout: float | None = None
) -> int:
    """Run the entrypoint in ``started.base_dir`` and return its exit status.

    Raises:
        WorkloadError: the entrypoint cannot be executed or exceeded ``timeout`` seconds.
    """
    try:
        done = subprocess.run(  # noqa: S603 - argv from a verified manifest, no shell
            started.argv(extra),
            cwd=started.base_dir,
            env=started.environment(),
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise WorkloadError(f"entrypoint not found: {started.manifest.entrypoint[0]}") from None
    except subprocess.TimeoutExpired:
        raise WorkloadError(f"workload exceeded {timeout} s") from None
    except OSError as exc:
        raise WorkloadError(f"cannot run entrypoint: {exc.strerror}") from None
    return done.returncode
