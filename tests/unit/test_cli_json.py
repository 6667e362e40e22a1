"""Issue 14, item 9: ``--json`` on every command that reports, help text on every option,
shell completion offered; a few ``--json`` outputs checked end to end (offline commands)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
import typer
from typer.testing import CliRunner

from teeflow.cli.main import app

#: long-running services: they serve, they do not report (aggregator/client run have --json)
SERVICES = {
    "kbs serve",
    "compute serve",
    "emulate tsm",
    "emulate gramine",
    "workload run",
    "app replica",
    "dashboard",
    "serve",
}


def _commands() -> list[tuple[str, click.Command]]:
    root = typer.main.get_command(app)
    ctx = click.Context(root)
    out: list[tuple[str, click.Command]] = []

    def walk(cmd: Any, path: list[str]) -> None:
        if hasattr(cmd, "list_commands"):
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), [*path, name])
        else:
            out.append((" ".join(path), cmd))

    walk(root, [])
    return out


def test_every_reporting_command_has_json_and_every_option_has_help() -> None:
    commands = _commands()
    assert len(commands) > 40
    missing_json = [
        name
        for name, cmd in commands
        if name not in SERVICES
        and "--json" not in [o for p in cmd.params for o in getattr(p, "opts", [])]
    ]
    assert missing_json == []
    no_help = [
        f"{name} {p.opts[0]}"
        for name, cmd in commands
        for p in cmd.params
        if isinstance(p, click.Option) and not (p.help or "").strip()
    ]
    assert no_help == []


def test_shell_completion_is_offered() -> None:
    out = CliRunner().invoke(app, ["--help"])
    assert "--install-completion" in out.output and "--show-completion" in out.output


def _json(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    out = CliRunner().invoke(app, args, env=env)
    assert out.exit_code == 0, (out.output, out.exception)
    doc = json.loads(out.stdout)
    assert isinstance(doc, dict)
    return doc


def test_json_outputs_of_offline_commands(tmp_path: Path) -> None:
    env = {"TEEFLOW_HOME": str(tmp_path / "home")}
    doc = _json(["keygen", "-o", str(tmp_path / "k.key"), "--json"], env)
    assert doc["path"].endswith("k.key") and len(doc["key_id"]) == 32
    (tmp_path / "plain").write_bytes(b"x" * 1000)
    doc = _json(["seal", str(tmp_path / "plain"), str(tmp_path / "sealed"), "-k",
                 str(tmp_path / "k.key"), "--json"], env)
    assert doc["input_bytes"] == 1000 and doc["output_bytes"] > 1000
    pubs = []
    for name in ("alice", "bob"):
        doc = _json(["party", "keygen", name, "--json"], env)
        assert doc["name"] == name and doc["public_file"].endswith(f"{name}.pub.json")
        pubs += ["--party", f"{name}={doc['public_file']}"]
    agreement = tmp_path / "agreement.yaml"
    doc = _json(["agreement", "init", "--federation", "study", *pubs, "-o", str(agreement),
                 "--json"], env)
    assert doc["parties"] == ["alice", "bob"] and len(doc["digest"]) == 64
    doc = _json(["agreement", "sign", str(agreement), "--party", "alice", "--json"], env)
    assert doc["signed_by"] == ["alice"] and doc["signed"] == 1
    doc = _json(["agreement", "show", str(agreement), "--json"], env)
    assert doc["status"] == "incomplete" and doc["parties"]["alice"]["signature"]
    doc = _json(["agreement", "diff", str(agreement), str(agreement), "--json"], env)
    assert doc["changes"] == [] and doc["successor"] is False
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "main.py").write_text("print(1)\n")
    doc = _json(["workload", "init", str(tmp_path / "w"), "--entrypoint", "python main.py",
                 "--json"], env)
    assert doc["trusted_files"] == 1 and len(doc["measurement"]) == 64


@pytest.mark.parametrize("role", ["aggregator", "client"])
def test_measurement_json(role: str) -> None:
    doc = _json([role, "measurement", "--json"], {})
    assert doc["role"] == role and len(doc["measurement"]) == 64
