"""Build-time check of a compute package: every declared entrypoint and function imports.

``teeflow package build`` used to accept a package whose ``train`` does not import (a typo, a
missing dependency); the clients then failed one by one, after the agreement was signed. Now
:func:`check_entrypoints` imports each declared callable (``entrypoints`` — ``train``,
``validate``, ``predict`` … — and ``functions``) of the *archive about to be published* in a
separate, short-lived Python process:

- the archive is unpacked (digest checked, :func:`~teeflow.fl.package.unpack_package`) into a
  fresh temporary folder, which is also the child's working directory and ``HOME``;
- the child (``python -m teeflow.fl.package_check DIR NAME...``) gets a minimal environment
  (``PATH``, ``PYTHONPATH``, locale; nothing else — no credentials, no ``TEEFLOW_HOME``), no
  stdin, a CPU-time limit and a wall-clock timeout; it imports each callable with
  :func:`~teeflow.fl.package.load_entrypoint` (module import and attribute lookup; nothing is
  called) and prints one JSON object ``{name: null | "Type: message"}``;
- the package code runs with the caller's user id (a subprocess is not a security boundary:
  build only packages you are about to sign anyway); the point is that a broken import
  cannot take the builder's process down or leave modules in it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from teeflow.fl.package import PackageError, load_manifest, unpack_package

__all__ = ["check_entrypoints", "main"]

_ENV_KEEP = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "LC_CTYPE", "SYSTEMROOT")
_MAX_OUTPUT = 64 * 1024


def _limit_cpu(seconds: int) -> None:  # pragma: no cover - runs in the child before exec
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds))


def check_entrypoints(archive: bytes, digest: bytes, *, timeout: float = 120.0) -> list[str]:
    """Import every entrypoint and function of a package archive in a child process.

    Args:
        archive: the package archive (:func:`~teeflow.fl.package.build_package`).
        digest: its SHA-256 (32 bytes).
        timeout: seconds the child may run (also its CPU-time limit).

    Returns:
        The names checked, sorted.

    Raises:
        PackageError: a callable does not import (``package check: train: ImportError: No
            module named 'torchh' (task:train)``, one line per failure), or the child timed
            out or crashed.
        VerificationError, ParseError: as :func:`~teeflow.fl.package.unpack_package`.
    """
    with tempfile.TemporaryDirectory(prefix="teeflow-package-check-") as tmp:
        root = Path(tmp) / "package"
        manifest = unpack_package(archive, root, digest)
        refs = {**manifest.entrypoints, **manifest.functions}
        names = sorted(refs)
        env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
        env["HOME"] = tmp
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        try:
            proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
                [sys.executable, "-m", "teeflow.fl.package_check", str(root), *names],
                cwd=tmp,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
                preexec_fn=lambda: _limit_cpu(max(int(timeout), 1)),
            )
        except subprocess.TimeoutExpired:
            raise PackageError(
                f"package check: importing the entrypoints took more than {timeout:g} s"
            ) from None
        try:
            result = json.loads(proc.stdout[:_MAX_OUTPUT].decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            result = None
        if proc.returncode != 0 or not isinstance(result, dict):
            tail = proc.stderr[-500:].decode("utf-8", "replace").strip()
            raise PackageError(
                f"package check: the import check exited with status {proc.returncode}"
                + (f": {tail}" if tail else "")
            )
        failures = [
            f"{name}: {result.get(name)} ({refs[name]})"
            for name in names
            if result.get(name) is not None
        ]
        if failures:
            missing = any("ModuleNotFoundError" in f for f in failures)
            hint = (
                " — a module is missing: install the package's requirements here"
                + (f" ({', '.join(manifest.requirements)})" if manifest.requirements else "")
                + ", fix the import, or build with --no-check"
                if missing
                else ""
            )
            raise PackageError(
                "package check: entrypoints that do not import:\n  "
                + "\n  ".join(failures)
                + hint
            )
        return names


def main(argv: Sequence[str] | None = None) -> int:
    """Child side: ``python -m teeflow.fl.package_check DIR NAME...`` (module docstring)."""
    from teeflow.fl.package import load_entrypoint

    args = list(sys.argv[1:] if argv is None else argv)
    root, names = args[0], args[1:]
    load_manifest(root)
    out: dict[str, str | None] = {}
    real_stdout, sys.stdout = sys.stdout, sys.stderr  # package prints must not corrupt JSON
    try:
        for name in names:
            try:
                load_entrypoint(root, name)
                out[name] = None
            except PackageError as exc:
                out[name] = str(exc)[:500]
    finally:
        sys.stdout = real_stdout
    sys.stdout.write(json.dumps(out))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
