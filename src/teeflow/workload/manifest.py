"""Workload manifest (YAML) and its measurement.

A workload manifest names a program that runs in a TEE and everything that determines its
behaviour: the entrypoint argv, the trusted files with their SHA-256, the security-relevant
arguments and environment, and optionally the signer (like Gramine's manifest:
``sgx.trusted_files``, ``loader.argv``, ``loader.env``). For the emulated platform the
manifest's :func:`measurement` is the code identity placed in MRENCLAVE (see
``docs/workload.md`` and ``../shared/DESIGN.md`` Glossary "workload manifest").

Document shape (YAML; keys in any order, unknown keys rejected)::

    name: aggregator                     # 1..128 chars
    version: "1.2.0"                     # optional string (quote numbers in YAML)
    entrypoint: [python, -m, app.main]   # argv, at least one element
    trusted_files:                       # paths relative to the base directory
      - path: app/main.py
        sha256: 3f1c...e9                # 64 hex chars (stored lower-case)
    arguments: [--rounds, "10"]          # optional, security-relevant extra argv
    env: {OMP_NUM_THREADS: "4"}          # optional, security-relevant environment
    signer: "..."                        # optional free-form signer identity (e.g. key fingerprint)

Errors: every problem (unreadable file, malformed YAML, duplicate key, schema violation,
path escaping the base directory, trusted file changed or missing) is a
:class:`teeflow.errors.WorkloadError`.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import rfc8785
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from teeflow.errors import WorkloadError

__all__ = [
    "MAX_MANIFEST_BYTES",
    "TrustedFile",
    "TrustedFileMismatch",
    "WorkloadManifest",
    "hash_file",
    "measurement",
    "measurement_input",
    "verify_trusted_files",
]

#: Largest manifest document accepted by :meth:`WorkloadManifest.load` (bytes).
MAX_MANIFEST_BYTES = 1 << 20
#: Largest number of trusted files in one manifest.
MAX_TRUSTED_FILES = 100_000
_CHUNK = 1 << 20
_HEX = frozenset("0123456789abcdef")


def _check_rel_path(value: str) -> str:
    """Normalise a manifest path to POSIX relative form or raise ``ValueError``."""
    if not value or "\x00" in value or "\\" in value:
        raise ValueError(f"invalid trusted file path {value!r}")
    p = PurePosixPath(value)
    if p.is_absolute() or value.startswith("/"):
        raise ValueError(f"trusted file path must be relative: {value!r}")
    if any(part == ".." for part in p.parts):
        raise ValueError(f"trusted file path must not contain '..': {value!r}")
    norm = p.as_posix()
    if norm in ("", "."):
        raise ValueError(f"invalid trusted file path {value!r}")
    return norm


class TrustedFile(BaseModel):
    """One trusted file: ``path`` relative to the base directory and its SHA-256 (hex)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    path: str = Field(max_length=4096)
    sha256: str

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return _check_rel_path(v)

    @field_validator("sha256")
    @classmethod
    def _digest(cls, v: str) -> str:
        v = v.lower()
        if len(v) != 64 or not set(v) <= _HEX:
            raise ValueError("sha256 must be 64 hexadecimal characters")
        return v


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - 5
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


class WorkloadManifest(BaseModel):
    """A parsed, validated workload manifest (immutable).

    ``trusted_files`` is kept sorted by path (duplicates rejected), so two documents that
    differ only in key order or file-list order parse to equal manifests with equal
    :func:`measurement`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=128)
    version: str | None = Field(default=None, max_length=128)
    entrypoint: tuple[str, ...] = Field(min_length=1, max_length=4096)
    trusted_files: tuple[TrustedFile, ...] = Field(default=(), max_length=MAX_TRUSTED_FILES)
    arguments: tuple[str, ...] = Field(default=(), max_length=4096)
    env: dict[str, str] = Field(default_factory=dict)
    signer: str | None = Field(default=None, max_length=1024)

    @field_validator("entrypoint", "trusted_files", "arguments", mode="before")
    @classmethod
    def _lists_as_tuples(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    @field_validator("trusted_files")
    @classmethod
    def _sorted_unique(cls, v: tuple[TrustedFile, ...]) -> tuple[TrustedFile, ...]:
        ordered = tuple(sorted(v, key=lambda f: f.path))
        for a, b in itertools.pairwise(ordered):
            if a.path == b.path:
                raise ValueError(f"duplicate trusted file {a.path!r}")
        return ordered

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not key or "=" in key or "\x00" in key:
                raise ValueError(f"invalid environment variable name {key!r}")
        return v

    # -- constructors -----------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Any) -> WorkloadManifest:
        """Validate an already-decoded document (``dict``). Raises ``WorkloadError``."""
        if not isinstance(data, Mapping):
            raise WorkloadError("workload manifest must be a mapping at the top level")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise WorkloadError(f"invalid workload manifest: {_format_validation(exc)}") from None

    @classmethod
    def loads(cls, text: str | bytes) -> WorkloadManifest:
        """Parse a YAML (or JSON) manifest document of at most ``MAX_MANIFEST_BYTES``.

        Raises:
            WorkloadError: too large, not UTF-8, malformed YAML, duplicate keys, or a schema
                violation (the message names the offending fields).
        """
        import yaml  # PyYAML loads with the first manifest parsed (built ones need none)

        from teeflow._yaml import safe_load_unique

        raw = text.encode() if isinstance(text, str) else text
        if len(raw) > MAX_MANIFEST_BYTES:
            raise WorkloadError(f"workload manifest larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            doc = safe_load_unique(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise WorkloadError("workload manifest is not UTF-8") from None
        except yaml.YAMLError as exc:
            detail = " ".join(str(exc).split())
            raise WorkloadError(f"malformed workload manifest YAML: {detail}") from None
        return cls.from_mapping(doc)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> WorkloadManifest:
        """Read and parse the manifest file at ``path``. Raises ``WorkloadError``."""
        p = Path(path)
        try:
            with p.open("rb") as fh:
                raw = fh.read(MAX_MANIFEST_BYTES + 1)
        except OSError as exc:
            raise WorkloadError(f"cannot read workload manifest {p}: {exc.strerror}") from None
        return cls.loads(raw)

    @classmethod
    def build(
        cls,
        base_dir: str | os.PathLike[str],
        entrypoint: Sequence[str],
        files: Iterable[str | os.PathLike[str]] | None = None,
        *,
        name: str | None = None,
        version: str | None = None,
        arguments: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        signer: str | None = None,
        exclude: Iterable[str | os.PathLike[str]] = (),
    ) -> WorkloadManifest:
        """Create a manifest by hashing files under ``base_dir``.

        Args:
            base_dir: directory the trusted paths are relative to.
            entrypoint: argv of the workload.
            files: paths (relative to ``base_dir``, or absolute inside it) to trust; ``None``
                trusts every regular file under ``base_dir`` (recursively, symlinks skipped).
            name: workload name (default: the base directory's name).
            exclude: paths left out when ``files`` is ``None`` (e.g. the manifest itself).

        Raises:
            WorkloadError: a path escapes ``base_dir``, is missing or not a regular file.
        """
        base = Path(base_dir)
        if not base.is_dir():
            raise WorkloadError(f"workload base directory {base} does not exist")
        root = base.resolve()
        excluded = {_relative_to(root, Path(e)) for e in exclude}
        if files is None:
            rels = sorted(
                rel
                for p in root.rglob("*")
                if p.is_file()
                and not p.is_symlink()
                and (rel := p.relative_to(root).as_posix()) not in excluded
            )
        else:
            rels = [_relative_to(root, Path(f)) for f in files]
        trusted = []
        for rel in rels:
            target = _resolve_inside(root, rel)
            if not target.is_file():
                raise WorkloadError(f"trusted file {rel} is missing or not a regular file")
            trusted.append({"path": rel, "sha256": hash_file(target).hex()})
        return cls.from_mapping(
            {
                "name": name if name is not None else (root.name or "workload"),
                "version": version,
                "entrypoint": list(entrypoint),
                "trusted_files": trusted,
                "arguments": list(arguments),
                "env": dict(env or {}),
                "signer": signer,
            }
        )

    # -- output -----------------------------------------------------------------------

    def to_document(self) -> dict[str, Any]:
        """The manifest as a JSON/YAML-ready dict (``None`` fields omitted)."""
        return self.model_dump(mode="json", exclude_none=True)

    def to_yaml(self) -> str:
        """YAML text that :meth:`loads` parses back to an equal manifest."""
        import yaml

        return yaml.safe_dump(self.to_document(), sort_keys=False, allow_unicode=True)


def _relative_to(root: Path, p: Path) -> str:
    """``p`` (relative to ``root`` or absolute) as a normalised relative POSIX path."""
    if p.is_absolute():
        try:
            rel = p.resolve().relative_to(root).as_posix()
        except ValueError:
            raise WorkloadError(f"path {p} is outside the base directory") from None
    else:
        rel = p.as_posix()
    try:
        return _check_rel_path(rel)
    except ValueError as exc:
        raise WorkloadError(str(exc)) from None


def _resolve_inside(root: Path, rel: str) -> Path:
    """Resolve ``root/rel`` (following symlinks) and require it to stay inside ``root``."""
    try:
        rel = _check_rel_path(rel)
    except ValueError as exc:
        raise WorkloadError(str(exc)) from None
    candidate = (root / rel).resolve()
    if not candidate.is_relative_to(root):
        raise WorkloadError(f"trusted file {rel} resolves outside the base directory")
    return candidate


def hash_file(path: Path) -> bytes:
    """SHA-256 (32 bytes) of a file's content, read in 1 MiB chunks (constant memory).

    Raises:
        WorkloadError: the file cannot be opened or read.
    """
    h = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise WorkloadError(f"{path.name} is not a regular file")
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    except OSError as exc:
        raise WorkloadError(f"cannot read {path.name}: {exc.strerror}") from None
    return h.digest()


def measurement_input(manifest: WorkloadManifest) -> bytes:
    """The exact bytes hashed by :func:`measurement` (RFC 8785 canonical JSON).

    The JSON object has these members, and only these:

    - ``name`` (string), ``entrypoint`` (array of strings), ``arguments`` (array of strings,
      ``[]`` when absent), ``env`` (object of strings, ``{}`` when absent),
      ``trusted_files`` (array of ``{"path", "sha256"}`` objects sorted by ``path``; ``path``
      normalised POSIX relative, ``sha256`` lower-case hex);
    - ``version`` and ``signer`` (strings) only when present in the manifest.
    """
    return bytes(rfc8785.dumps(manifest.to_document()))


def measurement(manifest: WorkloadManifest) -> bytes:
    """The workload measurement: ``SHA-256(RFC 8785 canonical JSON of the manifest)``, 32 bytes.

    See :func:`measurement_input` for the exact fields. YAML key order, file-list order and
    hex case do not change it; any change of name, version, entrypoint, argument, env, signer,
    trusted path or trusted digest does. For the emulated SGX platform this is MRENCLAVE.
    """
    return hashlib.sha256(measurement_input(manifest)).digest()


class TrustedFileMismatch(WorkloadError):
    """One or more trusted files are missing or differ from their recorded SHA-256.

    Attributes:
        path: the first offending path (manifest order, i.e. sorted).
        mismatches: every offending ``(path, reason)``; reason is ``"changed"``,
            ``"missing"`` or ``"outside base directory"``.
    """

    def __init__(self, mismatches: list[tuple[str, str]]) -> None:
        self.mismatches = list(mismatches)
        self.path = mismatches[0][0]
        listed = ", ".join(f"{p} ({why})" for p, why in mismatches[:20])
        extra = f", ... and {len(mismatches) - 20} more" if len(mismatches) > 20 else ""
        message = f"trusted file {self.path} {mismatches[0][1]}"
        if len(mismatches) > 1:
            message += f"; {len(mismatches)} mismatches: {listed}{extra}"
        super().__init__(message)


def verify_trusted_files(manifest: WorkloadManifest, base_dir: str | os.PathLike[str]) -> None:
    """Re-hash every trusted file under ``base_dir`` (streaming) and compare to the manifest.

    Symlinks are followed only while the target stays inside ``base_dir``.

    Raises:
        TrustedFileMismatch: (a ``WorkloadError``) naming the first differing, missing or
            escaping file and listing all of them.
        WorkloadError: ``base_dir`` is not a directory.
    """
    base = Path(base_dir)
    if not base.is_dir():
        raise WorkloadError(f"workload base directory {base} does not exist")
    root = base.resolve()
    bad: list[tuple[str, str]] = []
    for tf in manifest.trusted_files:
        candidate = (root / tf.path).resolve()
        if not candidate.is_relative_to(root):
            bad.append((tf.path, "outside base directory"))
            continue
        if not candidate.is_file():
            bad.append((tf.path, "missing"))
            continue
        try:
            digest = hash_file(candidate)
        except WorkloadError:
            bad.append((tf.path, "unreadable"))
            continue
        if digest.hex() != tf.sha256:
            bad.append((tf.path, "changed"))
    if bad:
        raise TrustedFileMismatch(bad)
