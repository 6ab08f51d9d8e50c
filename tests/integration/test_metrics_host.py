"""CARDPAY_METRICS_HOST: the `--metrics-port` endpoints bind the address it names, not always
loopback, so that a Prometheus in another container can scrape `listen`, `project` and `relay`
(docker/compose.yaml sets it to 0.0.0.0). Shown with a second loopback address, 127.0.0.2: the
endpoint answers there and nothing listens on 127.0.0.1 at that port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.2"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _env(pg_url: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CARDPAY_")}
    # An unreachable broker: the relay keeps retrying it with backoff and serves its metrics.
    return {**base, "CARDPAY_DATABASE_URL": pg_url, "CARDPAY_KAFKA_BOOTSTRAP": "127.0.0.1:1",
            "CARDPAY_METRICS_HOST": HOST}


def test_the_relay_serves_its_metrics_on_the_configured_host(pg_url: str) -> None:
    port = _free_port(HOST)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cardpay.cli.main", "relay", "--metrics-port", str(port)],
        cwd=ROOT, env=_env(pg_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                text = requests.get(f"http://{HOST}:{port}/metrics", timeout=5).text
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        assert "cardpay_relay_" in text, proc.stderr.read() if proc.poll() is not None else text
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:  # SIGTERM: the relay's own stop; communicate() also closes the pipes
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_a_port_in_use_names_the_configured_host(pg_url: str) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "cardpay.cli.main", "project", "--metrics-port", str(port)],
            cwd=ROOT, env=_env(pg_url), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"cardpay project: cannot serve metrics on {HOST}:{port} (Address already in use); "
        "choose another --metrics-port"]
