"""`cardpay sagas run --metrics-port` serves the saga worker's metrics on loopback: its failed
turns are counted while Kafka is unreachable, and the saga counters are exported from the
first scrape."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.integration.test_feed_metrics import ROOT, _errors, _free_port, _scrape_until

pytestmark = pytest.mark.integration


def test_the_saga_worker_serves_its_metrics(pg_url: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        kafka_port = s.getsockname()[1]  # closed: Kafka is unreachable
    env = {**os.environ, "CARDPAY_DATABASE_URL": pg_url,
           "CARDPAY_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_port}"}
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cardpay.cli.main", "sagas", "run", "--metrics-port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = _scrape_until(port, lambda t: _errors(t, "saga worker") >= 1)
        _scrape_until(port, lambda t: _errors(t, "saga worker") > _errors(first, "saga worker"))
        for family in ("cardpay_saga_steps_total", "cardpay_saga_retries_total",
                       "cardpay_saga_compensations_total", "cardpay_saga_timers_fired_total"):
            assert f"# TYPE {family} counter" in first
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_a_metrics_port_out_of_range_is_a_usage_error(pg_url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cardpay.cli.main", "sagas", "run", "--metrics-port", "70000"],
        cwd=ROOT, env={**os.environ, "CARDPAY_DATABASE_URL": pg_url}, capture_output=True,
        text=True, timeout=60)
    assert proc.returncode == 2
    assert "--metrics-port must be a TCP port (1-65535), got 70000" in proc.stderr
