"""``teeflow demo`` (issue 4, "the main job"): the federated-learning demo as a user runs it —
a ``teeflow demo`` subprocess in a temporary work directory — its Ctrl-C behaviour, the
attestation round trip (``teeflow demo attestation``), and the pieces that need no processes
(work directory rules, options, the shipped compute package).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from teeflow.demo.fl_demo import SHIPPED_PACKAGE, DemoOptions, package_source
from teeflow.demo.fl_support import DEMO_MARKER, prepare_workdir
from teeflow.errors import FLError
from teeflow.fl.package import build_package

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "mnist"
SHIPPED = REPO / "src" / "teeflow" / "demo" / SHIPPED_PACKAGE
DEMO = [sys.executable, "-m", "teeflow", "demo"]
BOUND = 600.0  # bound on a whole demo subprocess (seconds); a healthy run needs far less


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["TEEFLOW_HOME"] = str(tmp / "unused-home")  # the demo uses <workdir>/home
    env.pop("TEEFLOW_DEBUG", None)
    return env


# -- no processes -------------------------------------------------------------------------------


def test_shipped_package_is_the_example_folder_built() -> None:
    """The archive shipped for wheel installs is exactly ``package build examples/mnist``
    (regenerate with: teeflow package build examples/mnist -o src/teeflow/demo/mnist-package.tar).
    """
    archive, _ = build_package(EXAMPLE)
    assert SHIPPED.read_bytes() == archive
    source, data = package_source()
    assert source == str(EXAMPLE) and data == archive  # a checkout prefers the folder


def test_workdir_is_fresh_and_only_a_demo_folder_is_replaced(tmp_path: Path) -> None:
    work = tmp_path / "wd"
    prepare_workdir(work).release()
    assert (work / DEMO_MARKER).is_file()
    (work / "old-output").write_text("x")
    with prepare_workdir(work):  # a previous demo's folder: replaced
        assert sorted(p.name for p in work.iterdir()) == [DEMO_MARKER]
    other = tmp_path / "precious"
    other.mkdir()
    (other / "data.csv").write_text("1,2\n")
    with pytest.raises(FLError, match="not a teeflow demo folder"):
        prepare_workdir(other)
    assert (other / "data.csv").read_text() == "1,2\n"


def test_a_second_demo_in_a_running_demos_workdir_is_refused(tmp_path: Path) -> None:
    """Issue 14, item 6: a second demo in the same --workdir used to delete the running
    demo's folder. Now the running demo holds a flock on the folder's marker; the second is
    refused (naming the running demo's pid) and every file stays; a demo in a separate
    process is refused just the same, and once the first ends the folder is reused."""
    work = tmp_path / "wd"
    with prepare_workdir(work):
        (work / "kbs.db").write_text("running")
        with pytest.raises(FLError, match=rf"another teeflow demo is running .*pid {os.getpid()}"):
            prepare_workdir(work)
        code = (
            "import sys; from pathlib import Path; from teeflow.errors import FLError\n"
            "from teeflow.demo.fl_support import prepare_workdir\n"
            "try:\n    prepare_workdir(Path(sys.argv[1]))\n"
            "except FLError as e:\n    print(e); sys.exit(3)\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, str(work)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 3, proc.stderr
        assert "pass another --workdir" in proc.stdout
        assert (work / "kbs.db").read_text() == "running"
    with prepare_workdir(work):
        assert not (work / "kbs.db").exists()


def test_options_and_data_specs(tmp_path: Path) -> None:
    o = DemoOptions(tmp_path, clients=3, non_iid=0.3)
    assert o.parties() == ["hospital-a", "hospital-b", "hospital-c"]
    assert o.data_spec(2) == "digits?clients=3&index=2&seed=7&partition=dirichlet&alpha=0.3"
    assert o.train_config() == {"lr": 0.1, "epochs": 3, "model": "mlp", "threads": 1}
    m = DemoOptions(tmp_path, dataset="mnist", data_dir=tmp_path / "mnist", model="cnn")
    assert m.data_spec(0) == f"mnist:{tmp_path / 'mnist'}?clients=3&index=0&seed=7"
    assert m.train_config() == {"lr": 0.01, "epochs": 1, "model": "cnn", "threads": 1}
    for bad in (
        {"dataset": "cifar"},
        {"model": "resnet"},
        {"clients": 0},
        {"rounds": 0},
        {"non_iid": 0.0},
        {"dp_epsilon": 0.0},
        {"platform": "auto"},  # the demo names its platform; auto is not one
        {"platform": "emulated"},
    ):
        with pytest.raises(FLError):
            DemoOptions(tmp_path, **bad).check()  # type: ignore[arg-type]


def test_attestation_demo_json(tmp_path: Path) -> None:
    for argv in (["attestation"], ["--attestation-only"]):
        work = tmp_path / argv[0].strip("-")
        out = subprocess.run(
            [*DEMO, *argv, "--json", "--workdir", str(work)],
            capture_output=True,
            text=True,
            timeout=BOUND,
            env=_env(tmp_path),
            check=False,
        )
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout)
        assert summary["ok"] is True and summary["emulated"] is True
        assert summary["default_policy_denied_emulated"] is True
        assert Path(summary["files"]["quote"]).is_file()


# -- the federated-learning demo ------------------------------------------------------------------

needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="the FL demo needs teeflow[torch]"
)


@needs_torch
@pytest.mark.slow
def test_fl_demo_two_rounds_json(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    out = subprocess.run(
        [*DEMO, "--json", "--rounds", "2", "--workdir", str(work)],
        capture_output=True,
        text=True,
        timeout=BOUND,
        env=_env(tmp_path),
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    s: dict[str, Any] = json.loads(out.stdout)
    assert s["ok"] is True and s["emulated"] is True
    assert s["rounds"] == 2 and s["dataset"] == "digits" and s["clients"] == 3
    assert s["provenance_verified"] is True and s["model_opened"] is True
    assert s["final_accuracy"] > s["initial_accuracy"] + 0.3
    assert [r["round"] for r in s["round_table"]] == [0, 1, 2]
    parties = {"hospital-a", "hospital-b", "hospital-c"}
    last = s["round_table"][-1]
    # every round had at least K = 2 of the three hospitals (all three unless one was dropped:
    # then the demo lists a warning)
    assert all(len(set(r["clients"]) & parties) >= 2 for r in s["round_table"][1:])
    # live trust (issue 11): the agreement version in force and the oldest attestation age
    assert all(r["agreement_version"] == 1 for r in s["round_table"][1:])
    assert all(0 <= r["attestation_age"] < BOUND for r in s["round_table"][1:])
    if last["eval_num_examples"] == s["test_examples"]:
        # all clients evaluated: their example-weighted mean is the accuracy on the whole test
        # split, which the demo measured itself on the opened model
        assert s["final_accuracy"] == pytest.approx(s["federated_accuracy"], abs=1e-9)
    else:
        assert s["warnings"]
    assert s["aggregator"]["torch_imported"] is False
    # issue 13: the rule the parties signed is what ran; no DP in the demo agreement: no ε
    assert s["training"] == {"strategy": "fedavg", "strategy_params": {}}
    assert s["kbs_audit"]["attestations_accepted"] >= 4  # the aggregator and three clients
    assert s["kbs_audit"]["counter_increments"] == 2
    for key in ("agreement", "KBS pin", "sealed model", "provenance log", "opened model"):
        assert Path(s["files"][key]).is_file(), key
    opened = Path(s["files"]["opened model"])
    assert opened.stat().st_mode & 0o777 == 0o600  # plaintext model: owner only
    agreement = Path(s["files"]["agreement"]).read_text()
    assert "allow_emulated: true" in agreement and "EMULATED TEE" in agreement
    assert "training:" in agreement
    commands = " ".join(c["command"] for c in s["commands"])
    for piece in ("kbs serve", "aggregator run", "client run", "model verify", "model open",
                  "party enroll", "--enrollment"):
        assert piece in commands
    # each hospital enrolled its own client, hospital-a (aggregator operator) the aggregator
    tokens = sorted(p.name for p in Path(s["files"]["enrollments"]).iterdir())
    assert tokens == ["hospital-a-aggregator-demo.jwt", *(
        f"{p}-client-demo.jwt" for p in sorted(parties))]
    assert json.loads((work / "summary.json").read_text())["final_accuracy"] == s["final_accuracy"]
    # issue 9: every workload reports the tee and the attester that produced its evidence
    assert s["platform"] == "emulated-sgx"
    assert s["workloads"] == {
        name: {"tee": "emulated-sgx", "attester": "emulated", "standin": None}
        for name in ("kbs", "aggregator", *(f"client-{p}" for p in sorted(parties)))
    }
    assert "--platform emulated-sgx" in commands


@needs_torch
@pytest.mark.slow
@pytest.mark.parametrize("platform", ["emulated-tdx", "emulated-snp"])
def test_fl_demo_on_emulated_tdx_and_snp(tmp_path: Path, platform: str) -> None:
    """The whole job with the workloads on another TEE type: each attests to the KBS over
    HTTPS with that TEE's evidence (``--platform`` of aggregator and clients)."""
    work = tmp_path / "demo"
    out = subprocess.run(
        [*DEMO, "--json", "--rounds", "1", "--clients", "2", "--platform", platform,
         "--workdir", str(work)],
        capture_output=True, text=True, timeout=BOUND, env=_env(tmp_path), check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    s: dict[str, Any] = json.loads(out.stdout)
    assert s["ok"] is True and s["platform"] == platform and s["emulated"] is True
    assert s["workloads"] == {
        "kbs": {"tee": platform, "attester": "emulated", "standin": None},
        "aggregator": {"tee": platform, "attester": "emulated", "standin": None},
        "client-hospital-a": {"tee": platform, "attester": "emulated", "standin": None},
        "client-hospital-b": {"tee": platform, "attester": "emulated", "standin": None},
    }
    assert s["kbs_audit"]["attestations_accepted"] >= 3
    key = "tdx" if platform == "emulated-tdx" else "snp"
    agreement = Path(s["files"]["agreement"]).read_text()
    assert f"{key}:" in agreement


def _children(pid: int) -> dict[int, float]:
    import psutil

    try:
        return {c.pid: c.create_time() for c in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return {}


def _alive(pid: int, created: float) -> bool:
    import psutil

    try:
        p = psutil.Process(pid)
        return p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@needs_torch
@pytest.mark.slow
def test_ctrl_c_stops_every_child(tmp_path: Path) -> None:
    pytest.importorskip("psutil")
    work = tmp_path / "demo"
    checkpoint = work / "aggregator" / "demo.checkpoint"
    demo = subprocess.Popen(
        [*DEMO, "--json", "--rounds", "200", "--workdir", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(tmp_path),
    )
    seen: dict[int, float] = {}
    try:
        end = time.monotonic() + BOUND
        # mid-run: KBS, aggregator and three clients up, round 1 committed
        while not (len(seen) >= 5 and checkpoint.is_file()):
            assert demo.poll() is None, demo.stderr.read().decode() if demo.stderr else ""
            assert time.monotonic() < end, "the demo did not reach round 1"
            seen.update(_children(demo.pid))
            time.sleep(0.2)
        seen.update(_children(demo.pid))
        demo.send_signal(signal.SIGINT)
        code = demo.wait(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert code == 130
    assert len(seen) >= 5
    survivors = [pid for pid, created in seen.items() if _alive(pid, created)]
    for pid in survivors:  # clean up before failing
        os.kill(pid, signal.SIGKILL)
    assert survivors == []
