"""Workload manifest: parsing, measurement determinism, trusted-file checks, path safety."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import rfc8785

from teeflow.errors import WorkloadError
from teeflow.workload import (
    TrustedFileMismatch,
    WorkloadManifest,
    measurement,
    measurement_input,
    verify_trusted_files,
)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture()
def app_dir(tmp_path: Path) -> Path:
    base = tmp_path / "app"
    (base / "pkg").mkdir(parents=True)
    (base / "main.py").write_bytes(b"print('hello')\n")
    (base / "pkg" / "model.py").write_bytes(b"W = 1\n")
    (base / "big.bin").write_bytes(os.urandom(3 * (1 << 20) + 17))  # > one read chunk
    return base


def _manifest_yaml(base: Path) -> str:
    return (
        "name: trainer\n"
        'version: "1.0"\n'
        "entrypoint: [python, main.py]\n"
        "trusted_files:\n"
        f"  - path: main.py\n    sha256: {_sha((base / 'main.py').read_bytes())}\n"
        f"  - path: pkg/model.py\n    sha256: {_sha((base / 'pkg/model.py').read_bytes())}\n"
        f"  - path: big.bin\n    sha256: {_sha((base / 'big.bin').read_bytes())}\n"
        "arguments: [--rounds, '10']\n"
        "env: {OMP_NUM_THREADS: '4'}\n"
    )


def test_load_and_verify_roundtrip(app_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(_manifest_yaml(app_dir))
    m = WorkloadManifest.load(path)
    assert m.name == "trainer"
    assert m.entrypoint == ("python", "main.py")
    assert [f.path for f in m.trusted_files] == ["big.bin", "main.py", "pkg/model.py"]
    verify_trusted_files(m, app_dir)  # no exception
    assert len(measurement(m)) == 32
    # YAML output parses back to an equal manifest with an equal measurement.
    again = WorkloadManifest.loads(m.to_yaml())
    assert again == m
    assert measurement(again) == measurement(m)


def test_measurement_is_sha256_of_jcs_of_documented_fields(app_dir: Path) -> None:
    m = WorkloadManifest.loads(_manifest_yaml(app_dir))
    expected_doc = {
        "name": "trainer",
        "version": "1.0",
        "entrypoint": ["python", "main.py"],
        "trusted_files": [
            {"path": f.path, "sha256": f.sha256}
            for f in sorted(m.trusted_files, key=lambda f: f.path)
        ],
        "arguments": ["--rounds", "10"],
        "env": {"OMP_NUM_THREADS": "4"},
    }
    assert measurement_input(m) == rfc8785.dumps(expected_doc)
    assert measurement(m) == hashlib.sha256(rfc8785.dumps(expected_doc)).digest()
    # Absent optional fields: version/signer omitted, arguments/env as [] / {}.
    bare = WorkloadManifest.loads("name: x\nentrypoint: [a]\n")
    assert json.loads(measurement_input(bare)) == {
        "name": "x",
        "entrypoint": ["a"],
        "trusted_files": [],
        "arguments": [],
        "env": {},
    }


def test_measurement_ignores_key_order_file_order_and_hex_case(app_dir: Path) -> None:
    a = WorkloadManifest.loads(_manifest_yaml(app_dir))
    digest_main = _sha((app_dir / "main.py").read_bytes())
    reordered = {
        "env": {"OMP_NUM_THREADS": "4"},
        "trusted_files": [
            {"sha256": f.sha256.upper(), "path": "./" + f.path} for f in reversed(a.trusted_files)
        ],
        "arguments": ["--rounds", "10"],
        "entrypoint": ["python", "main.py"],
        "version": "1.0",
        "name": "trainer",
    }
    b = WorkloadManifest.loads(json.dumps(reordered))  # JSON is YAML
    assert b == a
    assert measurement(b) == measurement(a)
    assert digest_main in {f.sha256 for f in b.trusted_files}


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(name="other"),
        lambda d: d.update(version="1.1"),
        lambda d: d.update(entrypoint=["python3", "main.py"]),
        lambda d: d.update(arguments=["--rounds", "11"]),
        lambda d: d.update(env={"OMP_NUM_THREADS": "5"}),
        lambda d: d.update(signer="someone"),
        lambda d: d["trusted_files"][0].update(sha256="0" * 64),
        lambda d: d["trusted_files"][0].update(path="renamed.bin"),
    ],
)
def test_any_field_change_changes_measurement(app_dir: Path, change) -> None:  # type: ignore[no-untyped-def]
    base = WorkloadManifest.loads(_manifest_yaml(app_dir))
    doc = base.to_document()
    change(doc)
    assert measurement(WorkloadManifest.from_mapping(doc)) != measurement(base)


def test_build_hashes_files_like_manual_manifest(app_dir: Path) -> None:
    built = WorkloadManifest.build(
        app_dir,
        ["python", "main.py"],
        ["main.py", "pkg/model.py", app_dir / "big.bin"],
        name="trainer",
        version="1.0",
        arguments=["--rounds", "10"],
        env={"OMP_NUM_THREADS": "4"},
    )
    assert built == WorkloadManifest.loads(_manifest_yaml(app_dir))
    everything = WorkloadManifest.build(app_dir, ["python", "main.py"], name="trainer")
    assert [f.path for f in everything.trusted_files] == ["big.bin", "main.py", "pkg/model.py"]


def test_changed_file_is_named(app_dir: Path) -> None:
    m = WorkloadManifest.loads(_manifest_yaml(app_dir))
    (app_dir / "pkg" / "model.py").write_bytes(b"W = 2\n")
    with pytest.raises(TrustedFileMismatch) as info:
        verify_trusted_files(m, app_dir)
    assert isinstance(info.value, WorkloadError)
    assert info.value.path == "pkg/model.py"
    assert "pkg/model.py" in str(info.value)
    assert info.value.mismatches == [("pkg/model.py", "changed")]


def test_all_mismatches_listed(app_dir: Path) -> None:
    m = WorkloadManifest.loads(_manifest_yaml(app_dir))
    with (app_dir / "big.bin").open("r+b") as fh:  # flip one bit past the first chunk
        fh.seek(2 * (1 << 20) + 5)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 1]))
    (app_dir / "main.py").unlink()
    with pytest.raises(TrustedFileMismatch) as info:
        verify_trusted_files(m, app_dir)
    assert info.value.path == "big.bin"
    assert info.value.mismatches == [("big.bin", "changed"), ("main.py", "missing")]
    assert "big.bin" in str(info.value) and "main.py (missing)" in str(info.value)


@pytest.mark.parametrize("bad", ["../secret", "/etc/passwd", "a/../../b", "a\\b", ".", ""])
def test_path_traversal_rejected_at_parse(bad: str) -> None:
    doc = {"name": "x", "entrypoint": ["a"], "trusted_files": [{"path": bad, "sha256": "0" * 64}]}
    with pytest.raises(WorkloadError):
        WorkloadManifest.from_mapping(doc)


def test_path_outside_base_rejected_by_build(app_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    with pytest.raises(WorkloadError):
        WorkloadManifest.build(app_dir, ["a"], [outside])
    with pytest.raises(WorkloadError):
        WorkloadManifest.build(app_dir, ["a"], ["../outside.txt"])


def test_symlink_escaping_base_is_a_mismatch(app_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"secret")
    (app_dir / "link.txt").symlink_to(secret)
    doc = {
        "name": "x",
        "entrypoint": ["a"],
        "trusted_files": [{"path": "link.txt", "sha256": _sha(b"secret")}],
    }
    m = WorkloadManifest.from_mapping(doc)
    with pytest.raises(TrustedFileMismatch) as info:
        verify_trusted_files(m, app_dir)
    assert info.value.mismatches == [("link.txt", "outside base directory")]
    with pytest.raises(WorkloadError):
        WorkloadManifest.build(app_dir, ["a"], ["link.txt"])
    # A symlink staying inside the base directory is fine.
    (app_dir / "inner.py").symlink_to(app_dir / "main.py")
    inner = WorkloadManifest.build(app_dir, ["a"], ["inner.py"])
    verify_trusted_files(inner, app_dir)


@pytest.mark.parametrize(
    "text",
    [
        "name: x\nname: y\nentrypoint: [a]\n",  # duplicate key
        "name: x\nentrypoint: [a]\nunknown: 1\n",  # extra field
        "name: x\nversion: 1.0\nentrypoint: [a]\n",  # float, not string
        "name: x\nentrypoint: []\n",  # empty argv
        "name: x\nentrypoint: [1]\n",  # non-string argv
        "entrypoint: [a]\n",  # missing name
        "- a\n- b\n",  # not a mapping
        "name: [unclosed\n",  # malformed YAML
        "name: x\nentrypoint: [a]\ntrusted_files: [{path: a, sha256: zz}]\n",
        "name: x\nentrypoint: [a]\n"
        f"trusted_files: [{{path: a, sha256: {'0' * 64}}}, {{path: ./a, sha256: {'1' * 64}}}]\n",
        # ^ duplicate path after normalisation
        "name: x\nentrypoint: [a]\nenv: {'A=B': c}\n",
        "!!python/object/apply:os.system [echo]\n",  # unsafe tag
    ],
)
def test_invalid_documents_are_workload_errors(text: str) -> None:
    with pytest.raises(WorkloadError):
        WorkloadManifest.loads(text)


def test_missing_file_and_oversized_document(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError):
        WorkloadManifest.load(tmp_path / "nope.yaml")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"name: x\n" + b"#" * (1 << 20))
    with pytest.raises(WorkloadError):
        WorkloadManifest.load(big)
    with pytest.raises(WorkloadError):
        WorkloadManifest.loads(b"\xff\xfe")


def test_manifest_is_frozen(app_dir: Path) -> None:
    from pydantic import ValidationError

    m = WorkloadManifest.loads(_manifest_yaml(app_dir))
    with pytest.raises(ValidationError):
        m.name = "changed"  # type: ignore[misc]
