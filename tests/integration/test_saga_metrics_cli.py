"""`cardpay sagas run --metrics-port` checks its port (serving the metrics is tested with the
other feed commands' in test_feed_metrics.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration.test_feed_metrics import ROOT

pytestmark = pytest.mark.integration


def test_a_metrics_port_out_of_range_is_a_usage_error(pg_url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cardpay.cli.main", "sagas", "run", "--metrics-port", "70000"],
        cwd=ROOT, env={**os.environ, "CARDPAY_DATABASE_URL": pg_url}, capture_output=True,
        text=True, timeout=60)
    assert proc.returncode == 2
    assert "--metrics-port must be a TCP port (1-65535), got 70000" in proc.stderr
