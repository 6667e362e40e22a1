"""Gramine manifest templates (``teeflow workload gramine-manifest``)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from teeflow.cli import gramine_cmds, workload_cmds
from teeflow.errors import WorkloadError
from teeflow.workload import WorkloadManifest
from teeflow.workload.gramine import ROLE_PROFILES, ROLES, render_gramine_manifest

VARS = {
    "entrypoint": "/usr/bin/python3.11",
    "arch_libdir": "/lib/x86_64-linux-gnu",
    "app_dir": "/opt/app",
    "site_packages": "/opt/venv/lib/python3.11/site-packages",
    "state_dir": "/var/lib/teeflow/x",
    "gramine.libos": "/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so",
    "gramine.runtimedir()": "/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc",
    "python.stdlib": "/usr/lib/python3.11",
    "python.distlib": "/usr/lib/python3/dist-packages",
}
# the roles' own variables (their example values)
for _profile in ROLE_PROFILES.values():
    VARS.update(dict(_profile.variables))


def _render_jinja(text: str) -> str:
    """What ``gramine-manifest`` does with our placeholders (plain substitutions)."""

    def sub(m: re.Match[str]) -> str:
        return VARS[m.group(1)]

    out = re.sub(r"\{\{ ([a-z_.()]+) \}\}", sub, text)
    assert "{{" not in out and "{%" not in out
    return out


def _manifest(tmp_path: Path) -> WorkloadManifest:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('hi')\n")
    (tmp_path / "app" / 'we"ird.py').write_text("x = 1\n")
    return WorkloadManifest.build(
        tmp_path,
        ["python3", "-m", "app.main"],
        ["app/main.py", 'app/we"ird.py'],
        name="aggregator",
        arguments=["--rounds", "10"],
        env={"OMP_NUM_THREADS": "4"},
    )


@pytest.mark.parametrize("role", ROLES)
def test_every_role_is_valid_toml_and_secure(role: str) -> None:
    text = render_gramine_manifest(role)
    # the template itself parses (placeholders are inside strings) ...
    raw = tomllib.loads(text)
    assert raw["libos"]["entrypoint"] == "{{ entrypoint }}"
    # ... and so does the rendered manifest
    doc = tomllib.loads(_render_jinja(text))
    assert "insecure__" not in text
    assert not re.search(r"sgx\.debug\s*=\s*true", text)
    assert doc["sgx"]["debug"] is False
    assert doc["sgx"]["remote_attestation"] == "dcap"
    assert doc["sgx"]["file_check_policy"] == "strict"
    assert re.fullmatch(r"[0-9]+[KMG]", doc["sgx"]["enclave_size"])
    assert doc["sgx"]["max_threads"] >= 1
    assert doc["libos"]["entrypoint"] == "/usr/bin/python3.11"
    assert doc["loader"]["entrypoint"] == "file:" + VARS["gramine.libos"]
    assert doc["loader"]["argv"][0] == "/usr/bin/python3.11"
    assert doc["loader"]["argv"][1] == "-m"
    assert doc["loader"]["argv"][2] in ("teeflow", "teeflow.fl.aggregator_main",
                                        "teeflow.fl.client_main")  # fmt: skip
    argv = doc["loader"]["argv"]
    assert argv[argv.index("--platform") + 1] == "gramine-sgx"
    assert "allowed_files" not in doc["sgx"]
    for value in doc["loader"]["env"].values():
        assert isinstance(value, str)  # no {passthrough = true}
    encrypted = [m for m in doc["fs"]["mounts"] if m.get("type") == "encrypted"]
    assert encrypted == [
        {
            "type": "encrypted",
            "path": "/state",
            "uri": "file:/var/lib/teeflow/x",
            "key_name": "_sgx_mrenclave",
        }
    ]
    assert doc["loader"]["env"]["TEEFLOW_HOME"] == "/state"
    trusted = doc["sgx"]["trusted_files"]
    assert "file:/usr/bin/python3.11" in trusted
    assert "file:/usr/lib/python3.11/" in trusted
    assert "file:/opt/venv/lib/python3.11/site-packages/" in trusted


def test_workload_manifest_files_argv_and_env(tmp_path: Path) -> None:
    wm = _manifest(tmp_path)
    doc: dict[str, Any] = tomllib.loads(_render_jinja(render_gramine_manifest("aggregator", wm)))
    assert doc["loader"]["argv"] == ["/usr/bin/python3.11", "-m", "app.main", "--rounds", "10"]
    assert doc["loader"]["env"]["OMP_NUM_THREADS"] == "4"
    pinned = {t["uri"]: t["sha256"] for t in doc["sgx"]["trusted_files"] if isinstance(t, dict)}
    assert pinned == {f"file:/opt/app/{tf.path}": tf.sha256 for tf in wm.trusted_files}
    assert 'file:/opt/app/app/we"ird.py' in pinned  # quoting survives TOML


def test_non_python_entrypoint_must_be_trusted(tmp_path: Path) -> None:
    (tmp_path / "server").write_bytes(b"\x7fELF")
    wm = WorkloadManifest.build(tmp_path, ["./server", "--port", "1"], ["server"], name="s")
    doc = tomllib.loads(_render_jinja(render_gramine_manifest("compute", wm)))
    assert doc["libos"]["entrypoint"] == "/opt/app/server"
    assert doc["loader"]["argv"] == ["/opt/app/server", "--port", "1"]
    bad = WorkloadManifest.build(tmp_path, ["/bin/sh", "-c", "x"], ["server"], name="s")
    with pytest.raises(WorkloadError, match="neither a Python interpreter nor a trusted file"):
        render_gramine_manifest("compute", bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"role": "mallory"}, "unknown workload role"),
        ({"role": "kbs", "enclave_size": "lots"}, "enclave size"),
        ({"role": "kbs", "max_threads": 0}, "max_threads"),
        ({"role": "kbs", "isvsvn": 70000}, "isvsvn"),
    ],
)
def test_bad_options(kwargs: dict[str, Any], match: str) -> None:
    role = kwargs.pop("role")
    with pytest.raises(WorkloadError, match=match):
        render_gramine_manifest(role, **kwargs)


def test_template_injection_refused(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("")
    wm = WorkloadManifest.build(
        tmp_path, ["python", "a.py"], ["a.py"], name="x", env={"X": "{{ gramine.libos }}"}
    )
    with pytest.raises(WorkloadError, match="template delimiters"):
        render_gramine_manifest("compute", wm)
    wm = WorkloadManifest.build(
        tmp_path, ["python", "a.py"], ["a.py"], name="x", env={"TEEFLOW_HOME": "/tmp"}
    )
    with pytest.raises(WorkloadError, match="set by the template"):
        render_gramine_manifest("compute", wm)
    # the name lands in a comment: no line break or template delimiter survives
    wm = WorkloadManifest.build(
        tmp_path, ["python", "a.py"], ["a.py"], name='x\nsgx.debug = true # {{ "{{" }}'
    )
    text = render_gramine_manifest("compute", wm)
    assert tomllib.loads(text)["sgx"]["debug"] is False
    assert '{{ "' not in text and not re.search(r"sgx\.debug\s*=\s*true", text)


def test_cli_gramine_manifest(tmp_path: Path) -> None:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test root"""

    workload_cmds.register(app)
    gramine_cmds.register(app)
    gramine_cmds.register(app)  # idempotent
    wm = _manifest(tmp_path)
    mpath = tmp_path / "workload.yaml"
    mpath.write_text(wm.to_yaml())
    runner = CliRunner()
    res = runner.invoke(app, ["workload", "gramine-manifest", "kbs"])
    assert res.exit_code == 0, res.output
    assert tomllib.loads(res.stdout)["sgx"]["remote_attestation"] == "dcap"
    out = tmp_path / "aggregator.manifest.template"
    res = runner.invoke(
        app,
        ["workload", "gramine-manifest", "aggregator", "--manifest", str(mpath), "-o", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert out.read_text() == render_gramine_manifest("aggregator", wm)
    res = runner.invoke(app, ["workload", "gramine-manifest", "nope"])
    assert isinstance(res.exception, WorkloadError)
