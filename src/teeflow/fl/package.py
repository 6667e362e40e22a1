"""Compute packages: a folder with ``teeflow.yaml`` and code, packed deterministically.

``teeflow.yaml`` (validated by :class:`PackageManifest`, unknown keys refused)::

    name: mnist                      # [A-Za-z0-9][A-Za-z0-9._-]{0,63}
    version: 1.0.0
    entrypoints:                     # name -> "module.path:function"
      train: task:train
      validate: task:validate
    functions:                       # optional named functions (TEEU-style)
      init: task:init_arrays
    requirements: ["torch==2.13.0"]  # informational: the measured runtime must provide them

**Archive** (:func:`build_package`): a plain POSIX ustar tar (no compression: a zlib version
change must not change the digest; the archive is sealed anyway) of every regular file under
the folder, sorted by path, with ``mtime 0``, ``uid/gid 0``, empty ``uname/gname`` and mode
``0755`` if any execute bit is set, else ``0644``; no directory entries, no pax headers.
Skipped: ``__pycache__`` folders, ``*.pyc``/``*.pyo`` and names starting with ``.``. Symbolic
links and special files are refused. The package digest is ``SHA-256(archive bytes)``
(DESIGN "Federated learning"), the value the federation agreement lists.

**Unpacking** (:func:`unpack_package`) checks the digest first, then every member (regular
files and directories only; relative, no ``..``, no empty or odd path components; count and
total size bounded) and extracts with ``tarfile``'s ``filter="data"`` into an empty folder.

**Entrypoints** (:func:`load_entrypoint`): the package's modules are imported in-process as
submodules of a private package ``_teeflow_package_<hash of the folder path>`` whose
``__path__`` is the unpacked folder, so two packages never share module names and package code
uses relative imports between its own modules (``from .models import MLP``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import io
import os
import re
import stat
import sys
import tarfile
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from teeflow.errors import FLError, ParseError, VerificationError
from teeflow.kbs.policy.canonical import validate_document

__all__ = [
    "MANIFEST_NAME",
    "PackageError",
    "PackageLimits",
    "PackageManifest",
    "build_package",
    "load_entrypoint",
    "load_manifest",
    "package_digest",
    "unpack_package",
]

#: File name of the package manifest at the folder's root.
MANIFEST_NAME = "teeflow.yaml"
_MAX_MANIFEST_BYTES = 64 << 10
_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,99}")

Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")]
EntryRef = Annotated[
    str,
    StringConstraints(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,15}:[A-Za-z_][A-Za-z0-9_]*$",
        max_length=256,
    ),
]
Requirement = Annotated[
    str,
    StringConstraints(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?"
        r"(\s*(===|==|>=|<=|~=|!=|<|>)\s*[A-Za-z0-9.*+!_-]+"
        r"(\s*,\s*(===|==|>=|<=|~=|!=|<|>)\s*[A-Za-z0-9.*+!_-]+)*)?$",
        max_length=200,
    ),
]


class PackageError(FLError):
    """A compute package folder or archive is invalid or unsafe, or an entrypoint fails to load."""

    code = "fl-package"


class PackageManifest(BaseModel):
    """``teeflow.yaml`` (see the module docstring).

    Attributes:
        name, version: identity of the package (informational; the digest is what counts).
        entrypoints: ``train`` / ``validate`` (or other names) → ``"module:function"``.
        functions: other named functions → ``"module:function"``.
        requirements: PEP 508 name + version specifiers (no URLs, no markers).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    version: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$")]
    entrypoints: dict[Ident, EntryRef] = Field(default_factory=dict, max_length=64)
    functions: dict[Ident, EntryRef] = Field(default_factory=dict, max_length=256)
    requirements: list[Requirement] = Field(default_factory=list, max_length=256)

    @model_validator(mode="after")
    def _callables(self) -> PackageManifest:
        if not self.entrypoints and not self.functions:
            raise ValueError("a package needs at least one entrypoint or function")
        both = set(self.entrypoints) & set(self.functions)
        if both:
            raise ValueError(f"names both entrypoint and function: {sorted(both)}")
        return self

    def resolve(self, name: str) -> str:
        """The ``"module:function"`` of entrypoint or function ``name``.

        Raises:
            PackageError: no such name.
        """
        ref = self.entrypoints.get(name) or self.functions.get(name)
        if ref is None:
            raise PackageError(f"package {self.name!r} has no entrypoint or function {name!r}")
        return ref


@dataclass(frozen=True)
class PackageLimits:
    """Bounds on packages (files, bytes) for building and unpacking."""

    max_files: int = 10_000
    max_total_bytes: int = 256 << 20
    max_archive_bytes: int = 300 << 20
    max_path_chars: int = 250


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` refusing duplicate keys."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise ParseError(f"non-string key at line {key_node.start_mark.line + 1}")
        if key in out:
            raise ParseError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_manifest(directory: str | os.PathLike[str]) -> PackageManifest:
    """Read and validate ``DIRECTORY/teeflow.yaml`` (at most 64 KiB, UTF-8 YAML).

    Raises:
        ParseError: missing, too large, not UTF-8, invalid YAML, duplicate keys, unknown keys
            or invalid values (the message names each bad field).
    """
    path = Path(directory) / MANIFEST_NAME
    try:
        if path.is_symlink():
            raise ParseError(f"{path} must be a regular file")
        with path.open("rb") as fh:
            raw = fh.read(_MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ParseError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise ParseError(f"{path} larger than {_MAX_MANIFEST_BYTES} bytes")
    try:
        doc = yaml.load(raw.decode("utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader
    except UnicodeDecodeError:
        raise ParseError(f"{path} is not UTF-8") from None
    except ParseError as exc:
        raise ParseError(f"{path}: {exc}") from None
    except (yaml.YAMLError, RecursionError, ValueError):
        raise ParseError(f"{path} is not valid YAML") from None
    return validate_document(PackageManifest, doc, "package manifest (teeflow.yaml)")


def _skipped(name: str) -> bool:
    return name.startswith(".") or name == "__pycache__" or name.endswith((".pyc", ".pyo"))


def _check_arcname(name: str, limits: PackageLimits) -> str:
    """Refuse absolute, ``..``, empty, hidden or odd-character paths."""
    if not name or len(name) > limits.max_path_chars or "\\" in name or "\0" in name:
        raise PackageError(f"unsafe path in package: {name[:80]!r}")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or "/".join(parts) != name.rstrip("/"):
        raise PackageError(f"unsafe path in package: {name[:80]!r}")
    for part in parts:
        if part in (".", "..") or not _COMPONENT.fullmatch(part):
            raise PackageError(f"unsafe path in package: {name[:80]!r}")
    return name.rstrip("/")


def _collect(root: Path, limits: PackageLimits) -> list[tuple[str, Path, int]]:
    """Sorted ``(arcname, path, mode)`` of the files to pack."""
    files: list[tuple[str, Path, int]] = []
    total = 0
    for current, dirs, names in os.walk(root, followlinks=False):
        here = Path(current)
        for d in list(dirs):
            if (here / d).is_symlink():
                link = (here / d).relative_to(root)
                raise PackageError(f"symbolic link in package folder: {link}")
        dirs[:] = sorted(d for d in dirs if not _skipped(d))
        for name in sorted(names):
            if _skipped(name):
                continue
            path = here / name
            st = path.lstat()
            rel = path.relative_to(root).as_posix()
            if not stat.S_ISREG(st.st_mode):
                raise PackageError(f"not a regular file in package folder: {rel}")
            _check_arcname(rel, limits)
            total += st.st_size
            if len(files) >= limits.max_files or total > limits.max_total_bytes:
                raise PackageError("package folder has too many files or bytes")
            mode = 0o755 if st.st_mode & 0o111 else 0o644
            files.append((rel, path, mode))
    files.sort(key=lambda f: f[0])
    return files


def package_digest(archive: bytes) -> bytes:
    """The package digest: SHA-256 (32 bytes) of the archive bytes."""
    return hashlib.sha256(archive).digest()


def build_package(
    directory: str | os.PathLike[str], *, limits: PackageLimits | None = None
) -> tuple[bytes, bytes]:
    """Pack a compute package folder deterministically.

    Args:
        directory: folder with ``teeflow.yaml`` at its root.
        limits: bounds (default :class:`PackageLimits`).

    Returns:
        ``(archive bytes, digest)`` with ``digest = SHA-256(archive)`` (32 bytes); the same
        folder content gives the same bytes whatever the mtimes, owners or umask.

    Raises:
        ParseError: ``teeflow.yaml`` missing or invalid.
        PackageError: symlinks or special files, unsafe names, too many files/bytes, or an
            entrypoint whose module file is not in the package.
    """
    lim = limits or PackageLimits()
    root = Path(directory)
    if not root.is_dir():
        raise PackageError(f"{root} is not a folder")
    manifest = load_manifest(root)
    files = _collect(root, lim)
    names = {f[0] for f in files}
    for ref in (*manifest.entrypoints.values(), *manifest.functions.values()):
        module = ref.split(":", 1)[0].replace(".", "/")
        if f"{module}.py" not in names and f"{module}/__init__.py" not in names:
            raise PackageError(f"entrypoint module {ref.split(':', 1)[0]!r} not in the package")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for rel, path, mode in files:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise PackageError(f"cannot read {rel}: {exc.strerror or exc}") from None
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mtime = 0
            info.mode = mode
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            try:
                tar.addfile(info, io.BytesIO(data))
            except ValueError as exc:  # name too long for ustar
                raise PackageError(f"cannot pack {rel}: {exc}") from None
    archive = buf.getvalue()
    return archive, package_digest(archive)


def _expected(digest: bytes | str) -> bytes:
    if isinstance(digest, str):
        try:
            raw = bytes.fromhex(digest)
        except ValueError:
            raise ParseError("expected package digest is not hex") from None
    else:
        raw = bytes(digest)
    if len(raw) != 32:
        raise ParseError("expected package digest must be 32 bytes")
    return raw


def unpack_package(
    archive: bytes,
    dest: str | os.PathLike[str],
    expected_digest: bytes | str,
    *,
    limits: PackageLimits | None = None,
) -> PackageManifest:
    """Check and extract a package archive into ``dest``.

    Args:
        archive: the (unsealed) archive bytes.
        dest: a folder that does not exist or is empty.
        expected_digest: SHA-256 from the agreement / attested claims (32 bytes or 64 hex).
        limits: bounds (default :class:`PackageLimits`).

    Returns:
        The package's validated manifest.

    Raises:
        VerificationError: the archive's SHA-256 differs from ``expected_digest``
            (checked before anything is parsed).
        ParseError: bad ``expected_digest``, not a tar archive, or an invalid manifest.
        PackageError: unsafe members (absolute paths, ``..``, links, devices, FIFOs,
            duplicates), too many files or bytes, or ``dest`` not empty.
    """
    lim = limits or PackageLimits()
    if not hasattr(tarfile, "data_filter"):  # Python < 3.11.4: no extraction filters
        raise PackageError("safe extraction needs Python >= 3.11.4 (tarfile filter='data')")
    want = _expected(expected_digest)
    if len(archive) > lim.max_archive_bytes:
        raise PackageError(f"package archive larger than {lim.max_archive_bytes} bytes")
    if package_digest(archive) != want:
        raise VerificationError("package digest does not match the expected digest")
    target = Path(dest)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise PackageError(f"{target} exists and is not an empty folder")
    members: list[tarfile.TarInfo] = []
    seen: set[str] = set()
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            for member in tar:
                if len(members) >= lim.max_files:
                    raise PackageError(f"package has more than {lim.max_files} entries")
                name = _check_arcname(member.name, lim)
                if not (member.isreg() or member.isdir()):
                    raise PackageError(f"package entry {name!r} is not a file or folder")
                if name in seen:
                    raise PackageError(f"package entry {name!r} appears twice")
                seen.add(name)
                total += member.size
                if total > lim.max_total_bytes:
                    raise PackageError(f"package content exceeds {lim.max_total_bytes} bytes")
                members.append(member)
            if MANIFEST_NAME not in seen:
                raise PackageError(f"package has no {MANIFEST_NAME}")
            target.mkdir(parents=True, exist_ok=True)
            tar.extractall(target, members=members, filter="data")
    except tarfile.FilterError as exc:
        raise PackageError(f"unsafe package entry refused by tarfile: {exc}") from None
    except (tarfile.TarError, EOFError) as exc:
        raise ParseError(f"package archive is not a valid tar file: {exc}") from None
    except OSError as exc:
        raise PackageError(f"cannot extract package: {exc.strerror or exc}") from None
    return load_manifest(target)


def _namespace(root: Path) -> str:
    name = "_teeflow_package_" + hashlib.sha256(os.fsencode(root)).hexdigest()[:16]
    if name not in sys.modules:
        module = types.ModuleType(name, "teeflow compute package (private namespace)")
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(root)]
        module.__spec__ = spec
        module.__path__ = [str(root)]
        module.__package__ = name
        sys.modules[name] = module
    return name


def load_entrypoint(unpacked_dir: str | os.PathLike[str], name: str) -> Callable[..., Any]:
    """Import entrypoint or function ``name`` of an unpacked package and return the callable.

    The code runs in this process, with this process's privileges: only call it on a package
    whose digest was checked (:func:`unpack_package`).

    Raises:
        ParseError: the manifest is missing or invalid.
        PackageError: no such name, the module fails to import (any exception, reported
            with its type), or the attribute is missing or not callable.
    """
    root = Path(unpacked_dir).resolve()
    manifest = load_manifest(root)
    module_name, func_name = manifest.resolve(name).split(":", 1)
    full = f"{_namespace(root)}.{module_name}"
    try:
        module = importlib.import_module(full)
    except Exception as exc:
        hint = ""
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == "torch":
            hint = " (PyTorch is not installed here: pip install 'teeflow[torch]')"
        raise PackageError(
            f"importing {module_name!r} of package {manifest.name!r} failed: "
            f"{type(exc).__name__}: {exc}{hint}"
        ) from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise PackageError(f"{module_name}:{func_name} is missing or not callable")
    return func  # type: ignore[no-any-return]
