"""``teeflow simulate``: the whole protocol in one process; a broken ``train()`` is reported
with the clients' failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from teeflow.errors import FLError
from teeflow.fl.simulation import simulate

REPO = Path(__file__).resolve().parents[2]


def test_simulate_command_json(tmp_path: Path) -> None:
    from teeflow.cli.main import app

    result = CliRunner().invoke(app, [
        "simulate", str(REPO / "examples" / "mnist"), "--clients", "2", "--rounds", "2",
        "--train-config", '{"lr": 0.1, "epochs": 1, "model": "mlp"}', "--json",
        "--workdir", str(tmp_path / "study")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rounds"] == 2 and summary["client_failures"] == []
    history = summary["history"]
    assert [h["round"] for h in history] == [0, 1, 2]
    assert history[-1]["eval_accuracy"] > history[0]["eval_accuracy"]
    assert history[-1]["clients"] == ["p01", "p02"]
    assert Path(summary["model"]).is_file()


def test_a_failing_train_is_reported_with_the_clients_reason(tmp_path: Path) -> None:
    package = tmp_path / "broken"
    shutil.copytree(REPO / "examples" / "mnist", package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    task = package / "task.py"
    task.write_text(task.read_text().replace(
        '    """``epochs`` epochs of minibatch SGD',
        '    raise ValueError("train is broken on purpose")\n    """``epochs`` epochs', 1))
    with pytest.raises(FLError, match="round 1 failed") as err:
        simulate(package, clients=2, rounds=1, train_config={"model": "mlp"},
                 workdir=tmp_path / "study", round_timeout=60)
    assert "ValueError: train is broken on purpose" in str(err.value)
