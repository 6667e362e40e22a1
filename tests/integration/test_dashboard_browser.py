"""Operability end to end (issue 14): a federation on the emulated TEE (in-process KBS,
aggregator with ``--metrics-listen`` and two clients as processes on 127.0.0.1), scraped
metrics, and ``teeflow dashboard`` (a process) opened in Debian's headless Chromium driven by
Selenium through the system chromedriver (no browser download): the test waits until round 2
appears on the page, confirmed by the KBS rollback counter, and saves a screenshot under the
test's temp dir.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fl_helpers import TRAIN_CONFIG, federation
from prometheus_client.parser import text_string_to_metric_families

from teeflow.fl.session import LocalFederation, free_port

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT = 120.0  # bound on every wait (seconds): never reached on a healthy run


def _browser() -> Any:
    """Headless Chromium through the system chromedriver, or a skip naming the fix."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install 'teeflow[dev]'")
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("no system browser: apt-get install -y chromium chromium-driver (.ci/run)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=1300,2400"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def dashboard_env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    home = tmp_path / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEEFLOW_HOME", str(home))
        with federation(home, tmp_path) as fed, LocalFederation(
            tmp_path / "procs", platform="emulated-sgx", home=home
        ) as lf:
            yield {"fed": fed, "lf": lf, "home": home, "tmp": tmp_path}


def test_metrics_and_dashboard_in_chromium(dashboard_env: dict[str, Any]) -> None:
    fed, lf, home, tmp = (dashboard_env[k] for k in ("fed", "lf", "home", "tmp"))
    driver = _browser()  # before any process starts: a skip leaves nothing behind
    dashboard: subprocess.Popen[bytes] | None = None
    clients: list[Any] = []
    try:
        agg = lf.start_aggregator(
            pin=fed.pin_path,
            enrollment=fed.enroll(lf, "alice", "aggregator", session="ops-1"),
            session="ops-1", rounds=4, min_clients=2, wait_clients=2,
            manifest=fed.aggregator_manifest, package=fed.published.sealed_path,
            train_config=TRAIN_CONFIG, round_timeout=WAIT, connect_timeout=WAIT,
            state_dir=tmp / "agg-state", timeout=WAIT, metrics_listen="127.0.0.1:0",
        )
        metrics_url = f"http://127.0.0.1:{agg.wait_event('metrics-listening', WAIT)['port']}"
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        log = (tmp / "dashboard.log").open("wb")
        dashboard = subprocess.Popen(
            [sys.executable, "-m", "teeflow", "dashboard", "--party", "bob",
             "--pin", str(fed.pin_path), "--listen", f"127.0.0.1:{port}",
             "--aggregator", metrics_url, "--refresh", "0.5"],
            env={**os.environ, "TEEFLOW_HOME": str(home)}, stdout=log, stderr=log,
        )
        clients = [
            lf.start_client(
                party=party, pin=fed.pin_path, enrollment=fed.enroll(lf, party),
                aggregator=agg.address, data=fed.data(i + 1), manifest=fed.client_manifest,
                threads=1, connect_timeout=WAIT,
            )
            for i, party in enumerate(("bob", "carol"))
        ]

        # the aggregator's /metrics while the session runs (after round 1 was committed)
        agg.wait_event("round", WAIT, lambda e: e["round"] == 1)
        with httpx.Client(timeout=10) as http:
            scraped = _samples(http.get(metrics_url + "/metrics").text)
            progress = http.get(metrics_url + "/v1/progress").json()
        assert scraped[("teeflow_fl_rounds_total", (("outcome", "committed"),))] >= 2  # 0, 1
        assert scraped[("teeflow_fl_clients_connected", ())] == 2
        assert scraped[("teeflow_fl_update_bytes_total", (("kind", "train"),))] > 0
        # the round-duration histogram's observation count: one per committed round (0, 1);
        # a count of rounds, not a speed
        rounds_observed = scraped[("teeflow_fl_round_seconds_count", ())]
        assert rounds_observed >= 2
        assert [r["round"] for r in progress["rounds"]][:2] == [0, 1]
        assert sorted(progress["rounds"][1]["clients"]) == ["bob", "carol"]

        # freeze the clients once round 2 is committed: the session (4 rounds) then waits for
        # updates and its progress endpoint stays up however slowly the dashboard starts
        agg.wait_event("round", WAIT, lambda e: e["round"] == 2)
        for c in clients:
            c.signal(signal.SIGSTOP)

        # the dashboard in the browser: round 2, confirmed by the KBS counter
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        deadline = time.monotonic() + 30
        while True:  # the dashboard process answers (bounded)
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert dashboard.poll() is None, (tmp / "dashboard.log").read_text()
            assert time.monotonic() < deadline, "dashboard did not start"
            time.sleep(0.2)
        driver.get(url)
        row = '#sessions tr[data-round="2"][data-session="ops-1"]'

        def confirmed(d: Any) -> bool:
            return "KBS counter" in " ".join(e.text for e in d.find_elements(By.CSS_SELECTOR, row))

        WebDriverWait(driver, WAIT).until(confirmed)
        screenshot = tmp / "dashboard.png"
        assert driver.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
        status = driver.find_element(By.ID, "status").text
        assert "audit chain verified" in status and "no rollback seen" in status
        workloads = driver.find_element(By.ID, "workloads").text
        assert "aggregator" in workloads and "client" in workloads and "EMULATED" in workloads
        assert "study" in driver.find_element(By.ID, "federation").text
        assert driver.find_elements(By.CSS_SELECTOR, "#sessions svg.chart polyline")
        assert "session/ops-1" in driver.find_element(By.ID, "audit").text
        # ATTACK: another site's page (DNS rebinding: a foreign Host) cannot read the snapshot
        foreign = httpx.get(url + "api/snapshot", headers={"Host": "evil.example"}, timeout=5)
        assert foreign.status_code == 400
        snap = httpx.get(url + "api/snapshot", timeout=5)
        assert "default-src 'none'" in snap.headers["content-security-policy"]
        for c in clients:
            c.signal(signal.SIGCONT)
        agg.wait_done(WAIT)
    finally:
        for c in clients:  # never leave a stopped process behind
            if c.returncode is None:
                c.signal(signal.SIGCONT)
        driver.quit()
        if dashboard is not None:
            dashboard.terminate()
            try:
                dashboard.wait(10)
            except subprocess.TimeoutExpired:
                dashboard.kill()
                dashboard.wait(10)
