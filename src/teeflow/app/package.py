"""App packages: the small deterministic logic a partitioned application's replicas run.

An app package is a folder with ``app.py`` defining::

    def init() -> State: ...                       # the initial state (a JSON value)
    def handle(state, request) -> (state, reply): ...  # one ordered request

``request`` is ``{"client": <the authenticated client id>, "body": <the client's body>}``;
``state``, ``request`` and ``reply`` are I-JSON values (dicts with string keys, lists, str,
integers within ±(2**53 - 1), finite floats, bool, None), serialised as RFC 8785 canonical
JSON so that every replica produces the same bytes. ``handle`` must be deterministic (no
clock, randomness, I/O or global state): replicas that process the same ordered requests must
produce byte-identical replies, else clients see them disagree. It should return a new state
rather than mutate the one it gets. It may raise :class:`AppRefused` (from this module, or
the package's own class named ``AppRefused``) to refuse a request: the replica keeps the state
it passed in and the client gets ``{"refused": "<message>"}``; any other exception is
answered ``{"refused": "app error (<type>)"}`` (deterministic too).

**Digest** (:func:`package_digest`): the workload measurement (:func:`teeflow.workload.
measurement`) of the manifest trusting every regular file of the folder (``__pycache__``,
``*.pyc`` and dot files skipped) with entrypoint ``teeflow app replica`` — the value the
agreement lists as ``apps.<name>.package``, and what an emulated platform quotes as the
replica's measurement; on hardware the platform measures the replica image that contains
the package. Another byte in any file gives another digest (and another measurement).

**Loading** (:func:`load_app`) re-computes the digest, refuses a package whose digest is not
the expected one, and imports ``app.py`` under a private module name.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from teeflow.errors import WorkloadError
from teeflow.workload.manifest import WorkloadManifest, measurement

__all__ = [
    "APP_ENTRYPOINT",
    "APP_MODULE",
    "MAX_PACKAGE_FILES",
    "AppLogic",
    "AppRefused",
    "app_manifest",
    "load_app",
    "package_digest",
]

#: The entrypoint every app manifest names.
APP_ENTRYPOINT = ("teeflow", "app", "replica")
#: The module of a package that defines ``init`` and ``handle``.
APP_MODULE = "app.py"
#: Most files an app package may hold.
MAX_PACKAGE_FILES = 256


class AppRefused(WorkloadError):
    """Raised by app logic to refuse one request (the state is left unchanged)."""

    code = "app-refused"


def _files(folder: Path) -> list[str]:
    out: list[str] = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
            continue
        if path.is_symlink() or not path.is_file() or path.suffix in (".pyc", ".pyo"):
            continue
        out.append(rel.as_posix())
        if len(out) > MAX_PACKAGE_FILES:
            raise WorkloadError(f"an app package holds at most {MAX_PACKAGE_FILES} files")
    return out


def app_manifest(folder: str | Path) -> WorkloadManifest:
    """The workload manifest of an app package folder (module docstring).

    Raises:
        WorkloadError: not a folder, no ``app.py``, too many files, or a file unreadable.
    """
    root = Path(folder)
    if not root.is_dir():
        raise WorkloadError(f"app package {root} is not a folder")
    files = _files(root)
    if APP_MODULE not in files:
        raise WorkloadError(f"app package {root} has no {APP_MODULE}")
    return WorkloadManifest.build(root, list(APP_ENTRYPOINT), files, name="teeflow-app")


def package_digest(folder: str | Path) -> bytes:
    """The 32-byte digest of an app package folder (module docstring).

    Raises:
        WorkloadError: as :func:`app_manifest`.
    """
    return measurement(app_manifest(folder))


@dataclass(frozen=True)
class AppLogic:
    """A loaded app package.

    Attributes:
        digest: the package digest (32 bytes).
        init: ``init() -> state``.
        handle: ``handle(state, request) -> (state, reply)``.
        refused: exception types that refuse a request (this module's :class:`AppRefused`
            and the package's own ``AppRefused``, if it defines one).
    """

    digest: bytes
    init: Callable[[], Any]
    handle: Callable[[Any, Any], tuple[Any, Any]]
    refused: tuple[type[BaseException], ...]


def load_app(folder: str | Path, expected_digest: bytes | str) -> AppLogic:
    """Check an app package against ``expected_digest`` (32 bytes or 64 hex) and import it.

    Raises:
        WorkloadError: the digest differs ("another package"), the folder is not a package,
            or ``app.py`` does not import or lacks ``init``/``handle``.
    """
    expected = (
        bytes.fromhex(expected_digest) if isinstance(expected_digest, str) else expected_digest
    )
    root = Path(folder).resolve()
    digest = package_digest(root)
    if digest != expected:
        raise WorkloadError(
            f"app package {root} has digest {digest.hex()}, the agreement names "
            f"{expected.hex()}: it is another package"
        )
    name = f"_teeflow_app_{digest.hex()[:16]}"
    spec = importlib.util.spec_from_file_location(name, root / APP_MODULE)
    if spec is None or spec.loader is None:
        raise WorkloadError(f"cannot import {root / APP_MODULE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the package's own code: report, do not crash with its trace
        sys.modules.pop(name, None)
        raise WorkloadError(f"app package failed to import ({type(exc).__name__})") from None
    init, handle = getattr(module, "init", None), getattr(module, "handle", None)
    if not callable(init) or not callable(handle):
        raise WorkloadError(f"{APP_MODULE} must define init() and handle(state, request)")
    own = getattr(module, "AppRefused", None)
    refused: tuple[type[BaseException], ...] = (AppRefused,)
    if isinstance(own, type) and issubclass(own, Exception) and own is not AppRefused:
        refused = (AppRefused, own)
    return AppLogic(digest, init, handle, refused)
