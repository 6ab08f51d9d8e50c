"""The README's demo command, end to end on real embedded PostgreSQL and Anvil."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    assert proc.stderr == ("cardpay demo: argument --payments: must be at least 1, got 0 "
                           "(see `cardpay demo --help`)\n")


def test_demo_keep_leaves_a_database_the_read_commands_open(tmp_path: Path) -> None:
    kept = tmp_path / "demo-db"
    proc = subprocess.run(
        [sys.executable, "-m", "cardpay.cli.main", "demo", "--json", "--payments", "6",
         "--keep", str(kept)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert f"CARDPAY_DATA_DIR={kept} cardpay db shell" in proc.stderr
    assert (kept / "pgdata" / "PG_VERSION").is_file()

    env = {**os.environ, "CARDPAY_DATA_DIR": str(kept), "CARDPAY_DATABASE_URL": ""}
    payments = subprocess.run(
        [sys.executable, "-m", "cardpay.cli.main", "payments", "--json", "--limit", "100"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert payments.returncode == 0, payments.stderr
    rows = json.loads(payments.stdout)
    assert len(rows) == 6
    for code, totals in report["currencies"].items():
        assert sum(int(r["spent"]) for r in rows if r["currency"] == code) == int(
            totals["chain"]["spent"])

    status = subprocess.run(
        [sys.executable, "-m", "cardpay.cli.main", "status", "--json"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert status.returncode == 0, status.stderr
    listeners = json.loads(status.stdout)["listeners"]
    assert [(li["name"], li["cursor_block"]) for li in listeners] == [
        ("demo", report["blocks"]["to"])]

    again = subprocess.run(
        [sys.executable, "-m", "cardpay.cli.main", "demo", "--keep", str(kept)],
        capture_output=True, text=True, timeout=60,
    )
    assert again.returncode == 2
    assert again.stderr.strip() == (f"cardpay demo: --keep {kept}: give a new or empty directory "
                                    "(it is not empty)")


def test_demo_funds_more_payments_than_the_initial_balances_cover() -> None:
    """1,400 spends of up to 250 tokens over 8 cardholders outrun the 10,000 tokens each starts
    with (before top-ups this died with TransactionReverted)."""
    proc = subprocess.run(
        [sys.executable, "-m", "cardpay.cli.main", "demo", "--payments", "1400", "--seed", "5"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    topped = [line for line in proc.stderr.splitlines() if "topped up" in line]
    assert len(topped) == 1 and not topped[0].startswith("· topped up 0 balances"), proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "check: ok"
