"""Interface stand-ins as child processes (``teeflow emulate tsm|gramine``), for the demo and
the tests: start one on an empty folder, wait until it is mounted, stop and unmount it.

EMULATED — not hardware. The stand-ins themselves live in :mod:`teeflow.testing.standins`;
this module only runs the CLI command (``python -m teeflow emulate ...``) so nothing outside
the test kit imports it.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from teeflow.errors import FLError
from teeflow.fl.session import WorkloadProcess

__all__ = ["STANDIN_COMMAND", "StandinProcess", "is_mounted", "start_standin", "unmount"]

#: argv prefix of the stand-in commands.
STANDIN_COMMAND: tuple[str, ...] = (sys.executable, "-m", "teeflow", "emulate")
_PLATFORM_ARGS = {
    "tdx": ("tsm", "--tee", "tdx"),
    "sev-snp": ("tsm", "--tee", "sev-snp"),
    "gramine-sgx": ("gramine",),
}


def is_mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point (also a dead FUSE mount), from ``/proc/self/mounts``."""
    target = str(Path(path).absolute())
    try:
        mounts = Path("/proc/self/mounts").read_text()
    except OSError:
        return False
    # mount points are octal-escaped in /proc/mounts (space -> \040)
    escaped = target.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")
    return any(line.split(" ")[1:2] == [escaped] for line in mounts.splitlines())


def unmount(path: Path) -> None:
    """Lazily unmount a (possibly dead) FUSE mount at ``path``; no-op when not mounted."""
    if not is_mounted(path):
        return
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    argv = [tool, "-u", "-z", str(path)] if tool else ["umount", "-l", str(path)]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(argv, check=False, capture_output=True, timeout=10)  # noqa: S603


class StandinProcess(WorkloadProcess):
    """A running stand-in: ``mountpoint`` and the ``ready`` line's ``info`` (``tee``,
    ``interface``, ``reference_values`` …)."""

    mountpoint: Path
    info: dict[str, Any]

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the stand-in unmounts), then SIGKILL and a lazy unmount if needed."""
        try:
            super().stop(timeout)
        finally:
            unmount(self.mountpoint)


def start_standin(
    platform: str,
    mountpoint: Path,
    *,
    measurement: bytes,
    env: Mapping[str, str],
    logs: Path,
    name: str | None = None,
    timeout: float = 120.0,
) -> StandinProcess:
    """Start ``teeflow emulate tsm|gramine`` on ``mountpoint`` (created empty if absent) and
    wait for its ``ready`` line.

    Args:
        platform: ``tdx``, ``sev-snp`` or ``gramine-sgx``.
        measurement: 32-byte workload measurement (or the 48-byte TDX/SNP value).
        env: the child's environment (``TEEFLOW_HOME`` selects the emulation roots).
        logs: folder of ``<name>.log``.
        timeout: bound on the start (seconds; a first SEV-SNP start generates RSA-4096 keys).

    Raises:
        FLError: unknown platform, or the stand-in exited / did not mount in time (the log
            tail says why, e.g. FUSE missing).
    """
    if platform not in _PLATFORM_ARGS:
        raise FLError(f"no stand-in for platform {platform!r}")
    mountpoint = Path(mountpoint).absolute()
    mountpoint.mkdir(parents=True, exist_ok=True, mode=0o700)
    argv = [
        *STANDIN_COMMAND,
        *_PLATFORM_ARGS[platform][:1],
        str(mountpoint),
        *_PLATFORM_ARGS[platform][1:],
        "--measurement",
        measurement.hex(),
        "--exit-with-parent",  # never outlive a killed demo or test
    ]
    proc = StandinProcess(name or f"standin-{platform}", argv, env=env, logs=logs)
    proc.mountpoint = mountpoint
    try:
        ready = proc.wait_event("ready", timeout)
    except FLError:
        proc.stop()
        raise
    proc.info = {k: v for k, v in ready.items() if k not in ("event", "_time")}
    return proc
