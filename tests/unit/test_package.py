"""Compute packages: deterministic build, safe unpack (hostile tarballs), manifest checks,
entrypoint loading."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from teeflow.errors import FLError, ParseError, VerificationError
from teeflow.fl.package import (
    PackageError,
    PackageLimits,
    build_package,
    load_entrypoint,
    load_manifest,
    unpack_package,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mnist"

MANIFEST = """\
name: demo
version: 0.1.0
entrypoints:
  train: task:train
  validate: sub.mod:validate
functions:
  double: task:double
requirements: ["numpy>=1.26", "torch==2.13.0"]
"""


def make_pkg(root: Path, tag: str = "a") -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "teeflow.yaml").write_text(MANIFEST)
    (root / "task.py").write_text(
        "from .sub.mod import helper\n"
        f"TAG = {tag!r}\n"
        "def train(arrays, config):\n    return arrays, 1, {'tag': helper()}\n"
        "def double(x):\n    return 2 * x\n"
    )
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "mod.py").write_text(
        f"def helper():\n    return {tag!r}\ndef validate(a, c):\n    return 0, {{}}\n"
    )
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    return root


def test_build_is_deterministic(tmp_path: Path) -> None:
    a = make_pkg(tmp_path / "a")
    archive, digest = build_package(a)
    assert digest == hashlib.sha256(archive).digest()
    assert build_package(a) == (archive, digest)
    # a copy made under another umask, with other mtimes and junk that must be ignored
    old = os.umask(0o077)
    try:
        b = make_pkg(tmp_path / "b")
    finally:
        os.umask(old)
    for p in b.rglob("*"):
        os.utime(p, (1_000_000, 2_000_000))
    (b / "__pycache__").mkdir()
    (b / "__pycache__" / "task.cpython-311.pyc").write_bytes(b"junk")
    (b / ".DS_Store").write_bytes(b"junk")
    (b / "sub" / "mod.pyc").write_bytes(b"junk")
    assert build_package(b)[1] == digest
    # content matters
    (b / "task.py").write_text((b / "task.py").read_text() + "\n")
    assert build_package(b)[1] != digest


def test_archive_is_normalised(tmp_path: Path) -> None:
    archive, _ = build_package(make_pkg(tmp_path / "p"))
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert names == ["run.sh", "sub/__init__.py", "sub/mod.py", "task.py", "teeflow.yaml"]
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        assert m.isreg() and m.mode == (0o755 if m.name == "run.sh" else 0o644)
        assert not m.pax_headers


def test_build_refuses_links_and_missing_modules(tmp_path: Path) -> None:
    p = make_pkg(tmp_path / "p")
    (p / "link.py").symlink_to(p / "task.py")
    with pytest.raises(PackageError, match="regular file"):
        build_package(p)
    (p / "link.py").unlink()
    (p / "dirlink").symlink_to(p / "sub")
    with pytest.raises(PackageError, match="symbolic link"):
        build_package(p)
    (p / "dirlink").unlink()
    (p / "sub" / "mod.py").unlink()
    with pytest.raises(PackageError, match="not in the package"):
        build_package(p)
    with pytest.raises(PackageError):
        build_package(tmp_path / "nope")
    q = make_pkg(tmp_path / "q")
    with pytest.raises(PackageError, match="too many"):
        build_package(q, limits=PackageLimits(max_files=2))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (MANIFEST + "extra: 1\n", "extra"),
        (MANIFEST.replace("task:train", "task.train"), "entrypoints"),
        (MANIFEST.replace("task:train", "../x:train"), "entrypoints"),
        (MANIFEST.replace('"numpy>=1.26"', '"numpy @ https://evil/x.whl"'), "requirements"),
        (MANIFEST.replace("name: demo", "name: demo\nname: other"), "duplicate"),
        ("name: x\nversion: '1'\n", "entrypoint or function"),
        (MANIFEST.replace("version: 0.1.0", "version: 1.10"), "version"),  # YAML float: quote
        ("- a\n- b\n", "mapping"),
        ("name: [unclosed\n", "YAML"),
        (
            MANIFEST.replace("functions:\n  double: task:double", "functions:\n  train: task:x"),
            "both",
        ),
    ],
)
def test_manifest_validation(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "teeflow.yaml").write_text(text)
    with pytest.raises(ParseError, match=match):
        load_manifest(tmp_path)


def test_manifest_bounds(tmp_path: Path) -> None:
    with pytest.raises(ParseError, match="cannot read"):
        load_manifest(tmp_path)
    (tmp_path / "teeflow.yaml").write_text("#" * 70_000)
    with pytest.raises(ParseError, match="larger"):
        load_manifest(tmp_path)
    (tmp_path / "teeflow.yaml").write_bytes(b"name: \xff\n")
    with pytest.raises(ParseError, match="UTF-8"):
        load_manifest(tmp_path)


def test_unpack_round_trip_and_entrypoints(tmp_path: Path) -> None:
    archive, digest = build_package(make_pkg(tmp_path / "src", tag="one"))
    dest = tmp_path / "out"
    manifest = unpack_package(archive, dest, digest.hex())
    assert manifest.name == "demo" and manifest.resolve("double") == "task:double"
    train = load_entrypoint(dest, "train")
    assert train({}, {}) == ({}, 1, {"tag": "one"})
    assert load_entrypoint(dest, "double")(21) == 42
    assert load_entrypoint(dest, "validate")(None, None) == (0, {})
    assert os.stat(dest / "run.sh").st_mode & 0o100
    # a second package with the same module names does not collide with the first
    archive2, digest2 = build_package(make_pkg(tmp_path / "src2", tag="two"))
    unpack_package(archive2, tmp_path / "out2", digest2)
    assert load_entrypoint(tmp_path / "out2", "train")({}, {})[2] == {"tag": "two"}
    assert train({}, {})[2] == {"tag": "one"}
    with pytest.raises(PackageError, match="no entrypoint"):
        load_entrypoint(dest, "evaluate")


def test_entrypoint_failures_are_package_errors(tmp_path: Path) -> None:
    p = make_pkg(tmp_path / "p")
    (p / "task.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(PackageError, match="RuntimeError: boom"):
        load_entrypoint(p, "train")
    q = make_pkg(tmp_path / "q")
    (q / "task.py").write_text("train = 3\n")
    with pytest.raises(PackageError, match="not callable"):
        load_entrypoint(q, "train")
    assert issubclass(PackageError, FLError)


def test_wrong_digest_is_refused_before_parsing(tmp_path: Path) -> None:
    archive, digest = build_package(make_pkg(tmp_path / "p"))
    flipped = bytearray(archive)
    flipped[600] ^= 1
    with pytest.raises(VerificationError, match="digest"):
        unpack_package(bytes(flipped), tmp_path / "o", digest)
    assert not (tmp_path / "o").exists()
    with pytest.raises(ParseError):
        unpack_package(archive, tmp_path / "o", "zz")
    with pytest.raises(ParseError):
        unpack_package(archive, tmp_path / "o", b"\0" * 31)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    with pytest.raises(PackageError, match="not an empty folder"):
        unpack_package(archive, tmp_path / "busy", digest)


def hostile(*entries: tarfile.TarInfo, data: bytes = b"x", manifest: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        if manifest:
            info = tarfile.TarInfo("teeflow.yaml")
            body = MANIFEST.encode()
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        for e in entries:
            if e.isreg():
                e.size = len(data)
                tar.addfile(e, io.BytesIO(data))
            else:
                tar.addfile(e)
    return buf.getvalue()


def ti(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


HOSTILE = {
    "absolute": hostile(ti("/etc/passwd")),
    "dotdot": hostile(ti("../evil.py")),
    "inner dotdot": hostile(ti("sub/../../evil.py")),
    "dot": hostile(ti("./task.py")),
    "double slash": hostile(ti("sub//x.py")),
    "backslash": hostile(ti("..\\evil.py")),
    "hidden": hostile(ti(".bashrc")),
    "symlink": hostile(ti("task.py", tarfile.SYMTYPE, "/etc/passwd")),
    "hardlink": hostile(ti("task.py", tarfile.LNKTYPE, "teeflow.yaml")),
    "char device": hostile(ti("dev", tarfile.CHRTYPE)),
    "block device": hostile(ti("blk", tarfile.BLKTYPE)),
    "fifo": hostile(ti("fifo", tarfile.FIFOTYPE)),
    "duplicate": hostile(ti("task.py"), ti("task.py")),
    "no manifest": hostile(ti("task.py"), manifest=False),
    "long name": hostile(ti("a" * 300 + ".py")),
}


@pytest.mark.parametrize("archive", list(HOSTILE.values()), ids=list(HOSTILE))
def test_unsafe_tarballs_are_refused(tmp_path: Path, archive: bytes) -> None:
    dest = tmp_path / "out"
    with pytest.raises(PackageError):
        unpack_package(archive, dest, hashlib.sha256(archive).digest())
    assert not (tmp_path / "evil.py").exists()
    assert not dest.exists() or not any(dest.iterdir())


def test_unpack_bounds(tmp_path: Path) -> None:
    many = hostile(*(ti(f"f{i}.py") for i in range(20)))
    with pytest.raises(PackageError, match="entries"):
        unpack_package(
            many, tmp_path / "a", hashlib.sha256(many).digest(), limits=PackageLimits(max_files=10)
        )
    big = hostile(ti("big.bin"), data=b"\0" * 5000)
    with pytest.raises(PackageError, match="exceeds"):
        unpack_package(
            big,
            tmp_path / "b",
            hashlib.sha256(big).digest(),
            limits=PackageLimits(max_total_bytes=4000),
        )
    with pytest.raises(PackageError, match="larger"):
        unpack_package(
            big,
            tmp_path / "c",
            hashlib.sha256(big).digest(),
            limits=PackageLimits(max_archive_bytes=100),
        )
    junk = b"this is not a tar archive" * 50
    with pytest.raises(ParseError, match="tar"):
        unpack_package(junk, tmp_path / "d", hashlib.sha256(junk).digest())


def test_example_package_builds_the_same_in_a_fresh_process(tmp_path: Path) -> None:
    if not (EXAMPLE / "teeflow.yaml").is_file():
        pytest.skip("examples/mnist not present")
    copy = tmp_path / "mnist"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    _, digest = build_package(EXAMPLE)
    code = (
        "import sys; from teeflow.fl.package import build_package; "
        "print(build_package(sys.argv[1])[1].hex())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(copy)], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert out == digest.hex()
    assert load_manifest(EXAMPLE).entrypoints == {
        "train": "task:train",
        "validate": "task:validate",
        "predict": "task:predict",  # the serving entrypoint (issue 12)
    }
