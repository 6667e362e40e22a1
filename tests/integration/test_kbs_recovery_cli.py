"""``teeflow kbs serve`` on a "new host" (another emulation authority: the sealed state does
not unseal) starts in recovery mode; ``teeflow kbs recovery-share save`` and ``teeflow kbs
recover`` (real CLI, child-process KBS over TLS on 127.0.0.1) bring it back on the same
port with the same key set, and the audit log records the recovery.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from teeflow.cli import kbs_cmds
from teeflow.errors import VerificationError
from teeflow.kbs.client.pinning import Pin
from teeflow.kbs.client.sdk import KbsClient
from teeflow.kbs.policy.agreement import FederationAgreement
from teeflow.kbs.policy.parties import PartyKeys, party_dir
from teeflow.kbs.policy.signing import SignedAgreement, sign_agreement
from teeflow.kbs.service.self_attestation import kbs_measurement

NAMES = ("alice", "bob", "carol")
_SERVE = """
import sys, typer
from teeflow.cli import kbs_cmds
app = typer.Typer()
@app.callback()
def _root() -> None:
    pass
kbs_cmds.register(app)
app(sys.argv[1:])
"""


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test root"""

    kbs_cmds.register(app)
    return app


CLI = _cli()


def run(*args: str | Path) -> str:
    result = CliRunner().invoke(CLI, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def serve(home: Path, tmp: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "TEEFLOW_HOME": str(home)}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE, "kbs", "serve", "--db",
             f"sqlite:///{tmp / 'kbs.db'}", "--listen", f"127.0.0.1:{port}",
             "--state-dir", str(tmp / "state"), "--federation", "fed",
             "--log-level", "warning", "--platform", "emulated-sgx",
             # the first agreement is fixed (bootstrap); ignored once the store holds one
             "--expect-agreement", str(tmp / "agreement.yaml")],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while not _accepts(port):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "kbs serve did not start: " + log.read_text()
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _mode(url: str) -> str | None:
    try:
        with httpx.Client(verify=False, timeout=2) as http:  # status only, no trust needed
            doc = http.get(f"{url}/v1/recovery").json()
    except (httpx.HTTPError, ValueError):
        return None
    return doc.get("mode") if isinstance(doc, dict) else None


def test_new_host_recovery_through_the_cli(teeflow_home: Path, tmp_path: Path) -> None:
    parties = {n: PartyKeys.generate(n) for n in NAMES}
    for n, keys in parties.items():
        keys.save(party_dir(n))
    agreement = FederationAgreement.from_mapping(
        {
            "federation": "fed",
            "version": 1,
            "parties": {
                n: {
                    "sign_key": k.public().sign_key,
                    "recipient_key": k.public().recipient_key,
                    "roles": ["data-owner"],
                }
                for n, k in parties.items()
            },
            "workloads": {"kbs": {"sgx": {"mrenclave": [kbs_measurement().hex()]}}},
            "allow_emulated": True,
            "update_quorum": {"k": 2},
            "recovery": {"k": 2},
        }
    )
    agreement_file = tmp_path / "agreement.yaml"
    agreement_file.write_text(agreement.to_yaml())
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    log = tmp_path / "kbs.log"
    pin_file = tmp_path / "pin.json"

    with serve(teeflow_home, tmp_path, port, log):
        run("kbs", "verify", url, "--reference-values", agreement_file, "--allow-emulated",
            "-o", pin_file)
        pin = Pin.load(pin_file)
        signed = SignedAgreement(
            agreement=agreement,
            signatures={n: sign_agreement(agreement, k) for n, k in parties.items()},
        )
        with KbsClient(None, pin) as client:
            client.submit_agreement(signed)
        for n in NAMES:
            info = json.loads(
                run("kbs", "recovery-share", "save", "--party", n, "--pin", pin_file, "--json")
            )
            assert info["k"] == 2 and info["n"] == 3
            assert Path(info["path"]).stat().st_mode & 0o777 == 0o600

    # a new host: another emulation authority, so the sealed state does not unseal
    shutil.rmtree(teeflow_home / "emulation")
    with serve(teeflow_home, tmp_path, port, log) as proc:
        assert _mode(url) == "recovery"
        assert "RECOVERY MODE" in log.read_text()
        refused = CliRunner().invoke(
            CLI,
            ["kbs", "verify", url, "--reference-values", str(agreement_file),
             "--allow-emulated", "-o", str(tmp_path / "other-pin.json")],
        )
        assert refused.exit_code != 0 and "RECOVERY MODE" in str(refused.exception)
        # the pin of the old KBS does not fit the recovery-mode TLS key
        with pytest.raises(VerificationError), KbsClient(None, pin) as client:
            client.current_agreement()
        first = json.loads(
            run("kbs", "recover", url, "--party", "alice", "--agreement", agreement_file,
                "--allow-emulated", "--json")
        )
        assert first["mode"] == "recovery" and first["submitted"] == ["alice"]
        second = json.loads(
            run("kbs", "recover", url, "--party", "carol", "--agreement", agreement_file,
                "--allow-emulated", "--json")
        )
        assert second["mode"] == "recovered"
        deadline = time.monotonic() + 60
        while _mode(url) != "normal":
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the KBS did not resume: " + log.read_text()
            time.sleep(0.2)
        # the same key set: the old pin works again, and the audit log says what happened
        with KbsClient(None, pin, party=parties["alice"]) as client:
            current = client.current_agreement()
            assert current is not None and current.agreement.version == 1
            entries = client.audit()
        assert entries[-1].kind == "kbs-recovery"
        assert entries[-1].data["parties"] == ["alice", "carol"]
        assert entries[-1].data["upgrade"] is False
        assert "audit log verified" in run("kbs", "audit", "verify", "--party", "alice",
                                           "--pin", pin_file)
