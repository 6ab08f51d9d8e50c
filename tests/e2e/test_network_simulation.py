"""The card-network simulator against a running `cardpay api` on real PostgreSQL.

The simulator sends a seeded workload of every message type, signed, with duplicates and
reordering, and approvals the network treats as answered too late (it stands in, declines and
advises), and writes what it expects. cardpay's state must equal it: every decision, every
payment's network side, the ledger (no hold left open, what each card spent, suspense for the
returns no payment explains), the settlement reports and one delivery per webhook id.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from cardpay.bootstrap.lifecycle import network_figures
from cardpay.devstack.network_workload import LATE_REASON
from cardpay.handlers.ports import Card, ChainReading
from cardpay.postgres import schema as s
from cardpay.postgres.uow import unit_of_work_factory
from domain.authorization import CardStatus
from domain.ledger.chart import AccountKind, ChartOfAccounts
from domain.money import EURE, USDCE
from domain.payment import Payment
from tests.support.api_process import env_for, running_api
from tests.support.network import signed_headers

pytestmark = pytest.mark.e2e

TO_TOKEN = {"EUR": 10**16, "USD": 10**4}  # token base units per fiat cent
CARDS = [  # id, Safe, token, balance in cents, status
    ("eur-rich", "0x" + "a1" * 20, EURE, 500_000, CardStatus.ACTIVE),
    ("eur-poor", "0x" + "a2" * 20, EURE, 3_000, CardStatus.ACTIVE),
    ("usd-card", "0x" + "a3" * 20, USDCE, 200_000, CardStatus.ACTIVE),
    ("eur-frozen", "0x" + "a4" * 20, EURE, 100_000, CardStatus.FROZEN),
]


def _register(engine: Engine) -> None:
    with unit_of_work_factory(engine, None)() as uow:
        for card_id, safe, token, cents, status in CARDS:
            per_cent = TO_TOKEN["USD" if token == USDCE else "EUR"]
            uow.cards.add(Card(card_id, safe, "0x" + card_id.encode().hex()[:40].ljust(40, "0"),
                               token, status=status),
                          ChainReading(1, "0x" + "01" * 32, cents * per_cent))
        uow.commit()


def _simulate(api: str, pg_url: str, out: Path, seed: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "cardpay.cli.main", "network", "simulate", "--api", api,
         "--payments", "80", "--seed", str(seed), "--duplicates", "0.2", "--reorder", "0.3",
         "--late-answers", "0.1", "--out", str(out), "--json"],
        env=env_for(pg_url), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def _totals(engine: Engine) -> tuple[int, ...]:
    with engine.connect() as conn:
        return tuple(int(conn.execute(select(func.count()).select_from(t)).scalar() or 0)
                     for t in (s.events, s.ledger_transfers, s.network_deliveries, s.quarantine))


def test_the_simulated_network_and_cardpay_agree(pg_url: str, pg_engine: Engine,
                                                 tmp_path: Path) -> None:
    _register(pg_engine)
    with running_api(pg_url) as api:
        summary = _simulate(api, pg_url, tmp_path, seed=11)
        assert summary["ok"], summary
        sent = [json.loads(line) for line in (tmp_path / "sent.jsonl").read_text().splitlines()]
        # the network delivers everything once more: the first answers, and nothing changes
        before = _totals(pg_engine)
        with httpx.Client(base_url=api, timeout=30) as client:
            for line in sent:
                body = line["body"].encode()
                again = client.post(line["path"], content=body,
                                    headers=signed_headers(body, line["webhook_id"]))
                assert again.status_code == line["status"], line["webhook_id"]
                assert again.json() == line["answer"], line["webhook_id"]
        assert _totals(pg_engine) == before
    expected = json.loads((tmp_path / "expected.json").read_text())
    assert any(line.get("duplicate") for line in sent) and any(
        line.get("reordered") for line in sent)
    late = {line["payment_id"] for line in sent if line["type"] == "authorization_advice"
            and json.loads(line["body"])["reason"] == LATE_REASON}
    assert len(late) == summary["answered_late"] > 0
    # approvals the network stood in for and declined after its deadline: held, then released
    assert all((p["status"], p["held"], p["released"]) == ("declined", 0, p["authorized"]) and
               p["authorized"] > 0 for a, p in expected["payments"].items() if a in late)

    # every payment's network side, as the simulator moved it message by message
    with unit_of_work_factory(pg_engine, None)() as uow:
        for payment_id, want in expected["payments"].items():
            payment = Payment.rehydrate(payment_id, uow.events.load(payment_id))
            got = network_figures(payment.network, TO_TOKEN[want["currency"]])
            assert got == {k: want[k] for k in got}, payment_id

        # the ledger: no hold left open; what the network is owed per currency; per card what
        # it was charged net of returns (cards whose funds fell short carry the rest in suspense)
        rows = uow.quarantine.list("network")
        short = {row.payload.get("funds_account") for row in rows
                 if row.reason in ("stand_in_exposure", "funds_short")}
        for code, want in expected["currencies"].items():
            chart = ChartOfAccounts("USDCe" if code == "USD" else "EURe")
            payable, = uow.ledger.lookup_accounts(
                [chart.account_id(AccountKind.NETWORK_PAYABLE)])
            owed = payable.credits_posted - payable.debits_posted
            assert owed == want["net"] * TO_TOKEN[code]  # net of every return, matched or not
            assert payable.credits_pending == 0, code
        checked = 0
        for card_id, safe, token, _, _ in CARDS:
            chart = ChartOfAccounts(token.code)
            found = uow.ledger.lookup_accounts([chart.cardholder(safe).id])
            if not found:
                assert expected["cards"].get(card_id, {}).get("net", 0) == 0
                continue
            funds, = found
            assert funds.debits_pending == 0, card_id
            if funds.id in short:
                continue
            checked += 1
            mirror, = uow.ledger.lookup_accounts([chart.safe_mirror(safe).id])
            charged = (funds.debits_posted - mirror.credits_posted) - (
                funds.credits_posted - mirror.debits_posted)
            unit = TO_TOKEN["USD" if token == USDCE else "EUR"]
            assert charged == expected["cards"][card_id]["net"] * unit, card_id

        assert checked >= 1  # the rich card's funds never fall short

    # returns that name no payment: suspense and an exception each
    unmatched = sum(c["unmatched_returns"]["count"] for c in expected["currencies"].values())
    assert sum(row.reason == "unmatched_return" for row in rows) == unmatched

    with pg_engine.connect() as conn:
        deliveries = conn.execute(select(func.count()).select_from(s.network_deliveries)).scalar()
        reports = conn.execute(select(func.count()).select_from(s.settlement_reports)).scalar()
    assert deliveries == len({line["webhook_id"] for line in sent})
    assert reports == len({json.loads(line["body"])["report_id"] for line in sent
                           if line["type"] == "settlement_report"}) > 0
