"""The finance page in a real headless Chromium, served by uvicorn from `build_app` on real
PostgreSQL: a settlement day built through the real code paths (authorized, spent on chain,
cleared, reported, settled; `tests.integration.test_reconcile_cli.Day`) with a break injected on
the chain side, a mismatched day, and one open exception. A person signs in with a token, reads
the figures — compared with what the same query functions return, not with numbers written
here — sees the break, and resolves the exception through the form; it leaves the page and the
database says it is resolved."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from cardpay.api.finance_page import COOKIE, reconciliation_figures, settlement_cells
from cardpay.bootstrap.api import build_app
from cardpay.bootstrap.lifecycle import serving
from cardpay.handlers.ports import QuarantineItem
from cardpay.handlers.reconciliation import reconcile_day
from cardpay.postgres.queries import quarantine_entry
from cardpay.postgres.reconciliation import PostgresReconciliationSource
from cardpay.postgres.repositories.settlement import PostgresSettlementBatches
from cardpay.postgres.uow import unit_of_work_factory
from cardpay.records import amount_text, settlement_record
from cardpay.settings import Settings
from domain import commands as c
from domain.money import EURE, Money
from domain.settlement import BatchStatus, Figures, ReportFigures, SettlementBatch
from tests.integration.test_reconcile_cli import CENT, DAY, SAFE, T0, TOKEN, Day, evidence

pytestmark = pytest.mark.e2e

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKEN_ALL = "cp_7_finance-and-ops"
SCOPES = {TOKEN_ALL: frozenset({"finance:read", "ops:read", "ops:write"})}
EARLIER = DAY - timedelta(days=1)


def seed(engine: Engine) -> int:
    """DAY settled through the real code paths, with 4.00 EURe leaving the settlement account in
    a transfer no refund explains (a chain-side break); the day before mismatched (the report
    counts one clearing more, 5.00); one open card-network exception. Returns its id."""
    day = Day(engine)
    day.chain([c.RecordSettlementTransfer(
        command_id="chain:stray", at=T0 + timedelta(hours=2), recipient=SAFE, token=TOKEN,
        amount=Money(400 * CENT, EURE), evidence=evidence(40))])
    uow = unit_of_work_factory(engine, None)
    with uow() as tx:
        tx.settlement_batches.put(SettlementBatch(
            day=EARLIER, currency="EUR", status=BatchStatus.MISMATCHED,
            ours=Figures(2, 0, 1_550), report=ReportFigures("r-earlier", Figures(3, 0, 2_050),
                                                           4, -2_046),
            window=1, payment_ids=("p4", "p5"), revision=4,
            updated_at=datetime(2026, 12, 2, 2, 0, 5, tzinfo=UTC)))
        tx.quarantine.add(QuarantineItem(source="network", key="unmatched_return:r9",
                                         reason="unmatched_return", payload={"amount": 700}))
        tx.commit()
        row, = tx.quarantine.list("network")
    return row.id


def cell(scope: Any, field: str) -> str:
    from selenium.webdriver.common.by import By

    return str(scope.find_element(By.CSS_SELECTOR, f'td[data-field="{field}"]').text)


def test_finance_signs_in_reads_the_figures_and_resolves_an_exception(
        pg_engine: Engine, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    item = seed(pg_engine)
    with pg_engine.connect() as conn:
        records = [settlement_record(b) for b in PostgresSettlementBatches(conn).find()]
        expected = reconcile_day(PostgresReconciliationSource(conn), DAY)
    assert [(r["day"], r["status"]) for r in records] == [
        (EARLIER.isoformat(), "mismatched"), (DAY.isoformat(), "settled")]
    assert [b.kind.value for r in expected for b in r.breaks] == ["chain_transfer_unmatched"]

    settings = Settings(database_url="postgresql://unused/x", webhook_secrets=(SECRET,),
                        sweep_interval_s=0)
    app = build_app(settings, pg_engine, registry=CollectorRegistry(), scopes_of=SCOPES.get)
    wait = WebDriverWait(browser, 15)
    # uvicorn on a thread: `scopes_of` is a Python callable, which a `cardpay api` process
    # cannot be handed until the token store is wired
    with serving(app) as base:
        browser.get(f"{base}/finance")
        wait.until(ec.url_to_be(f"{base}/finance/login"))
        browser.find_element(By.ID, "token").send_keys(TOKEN_ALL)
        browser.find_element(By.ID, "sign-in").click()
        wait.until(ec.presence_of_element_located((By.ID, "settlement-table")))
        assert browser.current_url == f"{base}/finance"
        cookie = browser.get_cookie(COOKIE)
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert browser.execute_script("return document.cookie") == ""

        # settlements: every cell the query's record gives, as the page formats it
        for record in records:
            row = browser.find_element(By.ID, f"settlement-{record['day']}-EUR")
            for field, shown in settlement_cells(record).items():
                assert cell(row, field) == shown, (record["day"], field)
        mismatched = browser.find_element(By.ID, f"settlement-{EARLIER.isoformat()}-EUR")
        assert "bad" in (mismatched.get_attribute("class") or "")

        # the reconciliation of the latest batch day, with its break
        for r in expected:
            box = browser.find_element(By.ID, f"reconciliation-{r.currency}")
            assert box.get_attribute("data-clean") == ("true" if r.clean else "false")
            for key, _, text in reconciliation_figures(r):
                figure = box.find_element(By.CSS_SELECTOR, f'tr[data-figure="{key}"]')
                assert cell(figure, "value") == text, key
            shown = box.find_elements(By.CSS_SELECTOR, "tr.break")
            assert [(cell(x, "kind"), cell(x, "amount"),
                     cell(x, "payments")) for x in shown] == [
                (b.kind.value, amount_text(b.amount, r.decimals), " ".join(b.payments) or "-")
                for b in r.breaks]

        # another day through the day picker
        browser.find_element(By.LINK_TEXT, EARLIER.isoformat()).click()
        wait.until(ec.url_contains(f"day={EARLIER.isoformat()}"))
        with pg_engine.connect() as conn:
            earlier = reconcile_day(PostgresReconciliationSource(conn), EARLIER)
        headings = [h.text for h in browser.find_elements(By.CSS_SELECTOR,
                                                          "#reconciliation h3")]
        assert len(headings) == len(earlier)
        assert all(h.startswith(EARLIER.isoformat()) for h in headings)

        # the exception, resolved through its form
        row = browser.find_element(By.ID, f"exception-{item}")
        assert cell(row, "reason") == "unmatched_return"
        row.find_element(By.NAME, "note").send_keys("refunded by bank transfer")
        row.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        notice = wait.until(ec.presence_of_element_located((By.ID, "notice")))
        assert notice.text == f"Exception {item} resolved."
        assert browser.find_elements(By.ID, f"exception-{item}") == []
        assert browser.find_element(By.ID, "exceptions-empty").text == "(no open exceptions)"

    with pg_engine.connect() as conn:
        resolved = quarantine_entry(conn, item)
    assert resolved is not None and resolved.resolved_at is not None
    assert resolved.resolution == "resolved by hand: refunded by bank transfer"
