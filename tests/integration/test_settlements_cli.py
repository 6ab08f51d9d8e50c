"""`cardpay settlements` on real PostgreSQL, as a user runs it: batches as a table, JSON and CSV
with our figures, the report's and the difference, filtered by day and currency; bad options
are one line with exit status 2."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from cardpay.postgres.uow import unit_of_work_factory
from domain.settlement import BatchStatus, Figures, ReportFigures, SettlementBatch

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 12, 3, 2, 0, 5, tzinfo=UTC)
D1, D2 = date(2026, 12, 1), date(2026, 12, 2)


def cardpay(pg_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CARDPAY_")}
    return subprocess.run([sys.executable, "-m", "cardpay.cli.main", *args], cwd=ROOT,
                          env={**base, "CARDPAY_DATABASE_URL": pg_url},
                          capture_output=True, text=True, timeout=120)


def seed(engine: Engine) -> None:
    """A settled EUR day, a mismatched EUR day (one clearing short, 5.00) and an open GBP day."""
    settled = SettlementBatch(
        day=D1, currency="EUR", status=BatchStatus.SETTLED, ours=Figures(3, 200, 1_850),
        report=ReportFigures("r-d1", Figures(3, 200, 1_850), 3, -1_647), window=1,
        payment_ids=("p1", "p2", "p3"), revision=9, updated_at=T0)
    mismatched = SettlementBatch(
        day=D2, currency="EUR", status=BatchStatus.MISMATCHED, ours=Figures(2, 0, 1_550),
        report=ReportFigures("r-d2", Figures(3, 0, 2_050), 4, -2_046), window=1,
        payment_ids=("p4", "p5"), revision=4, updated_at=T0)
    opened = SettlementBatch(day=D2, currency="GBP", status=BatchStatus.OPEN,
                             ours=Figures(1, 0, 999), payment_ids=("p6",), revision=1,
                             updated_at=T0)
    with unit_of_work_factory(engine, None)() as uow:
        for batch in (settled, mismatched, opened):
            uow.settlement_batches.put(batch)
        uow.commit()


@pytest.mark.integration
def test_batches_are_listed_with_the_report_and_the_difference(pg_url: str,
                                                              pg_engine: Engine) -> None:
    seed(pg_engine)
    table = cardpay(pg_url, "settlements")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert any("2026-12-01" in x and "settled" in x and "18.50" in x for x in lines)
    assert any("2026-12-02" in x and "mismatched" in x and "-5.00" in x for x in lines)

    listed = cardpay(pg_url, "settlements", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["day"], r["currency"], r["status"]) for r in rows] == [
        ("2026-12-01", "EUR", "settled"), ("2026-12-02", "EUR", "mismatched"),
        ("2026-12-02", "GBP", "open")]
    mismatch = rows[1]
    assert (mismatch["count"], mismatch["debit"], mismatch["net"]) == (2, "1550", "-1550")
    assert (mismatch["report_count"], mismatch["report_debit"], mismatch["report_net"]) == (
        3, "2050", "-2050")
    assert (mismatch["diff_count"], mismatch["diff_debit"], mismatch["diff_net"]) == (
        -1, "-500", "500")
    assert mismatch["report_fees"] == "4" and mismatch["payments"] == 2
    assert rows[2]["report_id"] is None and rows[2]["diff_net"] is None

    only = cardpay(pg_url, "settlements", "--day", "2026-12-02", "--currency", "gbp",
                   "--format", "csv")
    assert only.returncode == 0, only.stderr
    found = list(csv.DictReader(io.StringIO(only.stdout)))
    assert [(r["day"], r["currency"], r["debit"], r["report_net"]) for r in found] == [
        ("2026-12-02", "GBP", "999", "")]

    none = cardpay(pg_url, "settlements", "--day", "2026-11-30")
    assert none.returncode == 0 and "(no settlement batches for 2026-11-30)" in none.stdout


@pytest.mark.unit
@pytest.mark.parametrize(("args", "message"), [
    (["--day", "2026-13-01"], "argument --day: expected a day as YYYY-MM-DD, got '2026-13-01'"),
    (["--currency", "JPY"], "argument --currency: expected one of EUR, GBP, USD, got 'JPY'"),
    (["--json", "--format", "csv"], "argument --format: not allowed with argument --json"),
])
def test_bad_options_are_one_line_with_exit_2(args: list[str], message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from cardpay.cli import main as cli

    with pytest.raises(SystemExit) as stop:
        cli.main(["settlements", *args])
    assert stop.value.code == 2
    assert capsys.readouterr().err == (f"cardpay settlements: {message} "
                                       "(see `cardpay settlements --help`)\n")
