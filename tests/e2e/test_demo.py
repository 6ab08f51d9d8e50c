"""The README's demo command, end to end on real embedded PostgreSQL and Anvil."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_demo_json_agrees_with_the_chain() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cardpay.cli.main", "demo", "--json", "--payments", "30", "--seed", "3"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["check"] == "ok"
    assert report["quarantined"] == 0
    currencies = report["currencies"]
    assert set(currencies) == {"EURe", "USDCe"}
    assert sum(c["chain"]["payments"] for c in currencies.values()) == 30
    assert report["refunds_requested"] > 0
    refunded = sum(int(c["chain"]["refunded"]) for c in currencies.values())
    assert refunded > 0
    for c in currencies.values():
        assert c["read_model"] == c["chain"]
        assert int(c["chain"]["net"]) == int(c["chain"]["spent"]) - int(c["chain"]["refunded"])


def test_demo_table_ends_with_the_check_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cardpay.cli.main", "demo", "--payments", "4"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "check: ok"
    assert "read model" in proc.stdout and "chain" in proc.stdout


def test_demo_rejects_a_nonsense_payment_count() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cardpay.cli.main", "demo", "--payments", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "--payments must be at least 1" in proc.stderr
