"""The README's demo command, end to end on real embedded PostgreSQL and Anvil: the whole
card-payment lifecycle, checked across the chain, the read model, the network, the settlement
and the ledger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class KeptDemo:
    proc: subprocess.CompletedProcess[str]
    kept: Path


@pytest.fixture(scope="module")
def kept_demo(tmp_path_factory: pytest.TempPathFactory) -> KeptDemo:
    """One `demo --json --keep DIR` run read by two tests: the JSON report's agreement and the
    kept database the read commands open are two views of the same run (a demo costs ~20 s, most
    of it starting PostgreSQL and Anvil and deploying, so one run instead of two saves that)."""
    kept = tmp_path_factory.mktemp("demo") / "demo-db"
    proc = subprocess.run(
        [sys.executable, "-m", "cardpay.cli.main", "demo", "--json", "--payments", "30",
         "--seed", "3", "--keep", str(kept)],
        capture_output=True, text=True, timeout=600,
    )
    return KeptDemo(proc, kept)


def test_demo_json_agrees_across_the_parties(kept_demo: KeptDemo) -> None:
    proc = kept_demo.proc
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["check"] == "ok" and report["mismatches"] == []
    currencies = report["currencies"]
    assert set(currencies) == {"EURe", "USDCe"}
    for c in currencies.values():
        assert c["read_model"] == c["chain"]
        assert int(c["chain"]["net"]) == int(c["chain"]["spent"]) - int(c["chain"]["refunded"])
        assert c["ledger"] == {"network_payable": "0", "pending_holds": "0"}
    assert sum(int(c["chain"]["refunded"]) for c in currencies.values()) > 0
    assert {k: v["statuses"] for k, v in report["settlement"].items()} == {
        "EUR": ["settled"], "USD": ["settled"]}
    for row in report["settlement"].values():
        assert row["net"] == row["report_net"]


def test_demo_table_ends_with_the_check_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cardpay.cli.main", "demo", "--payments", "6"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "check: ok"
    assert any(line.startswith("spent on chain") for line in lines)
    assert any(line.startswith("settlement EUR: settled") for line in lines)
    assert "Traceback" not in proc.stderr


def test_demo_rejects_a_nonsense_payment_count() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cardpay.cli.main", "demo", "--payments", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr == ("cardpay demo: argument --payments: must be at least 1, got 0 "
                           "(see `cardpay demo --help`)\n")


def test_demo_keep_leaves_a_database_the_read_commands_open(kept_demo: KeptDemo) -> None:
    proc, kept = kept_demo.proc, kept_demo.kept
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert f"CARDPAY_DATA_DIR={kept} cardpay db shell" in proc.stderr
    assert (kept / "pgdata" / "PG_VERSION").is_file()

    env = {**os.environ, "CARDPAY_DATA_DIR": str(kept), "CARDPAY_DATABASE_URL": ""}
    payments = subprocess.run(
        [sys.executable, "-m", "cardpay.cli.main", "payments", "--json", "--limit", "1000"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert payments.returncode == 0, payments.stderr
    rows = json.loads(payments.stdout)
    for code, totals in report["currencies"].items():
        assert sum(int(r["spent"]) for r in rows if r["currency"] == code) == int(
            totals["chain"]["spent"])

    settlements = subprocess.run(
        [sys.executable, "-m", "cardpay.cli.main", "settlements", "--json"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert settlements.returncode == 0, settlements.stderr
    assert {b["currency"] for b in json.loads(settlements.stdout)} == {"EUR", "USD"}

    again = subprocess.run(
        [sys.executable, "-m", "cardpay.cli.main", "demo", "--keep", str(kept)],
        capture_output=True, text=True, timeout=60,
    )
    assert again.returncode == 2
    assert again.stderr.strip() == (f"cardpay demo: --keep {kept}: give a new or empty directory "
                                    "(it is not empty)")
