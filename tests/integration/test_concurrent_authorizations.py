"""Parallel authorization requests for one card, through the HTTP API on real PostgreSQL, never
approve more than the Safe holds: the card's row lock serializes the decisions, and the ledger
refuses a hold its funds do not cover."""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from starlette.testclient import TestClient

from cardpay.api.app import examples
from cardpay.api.models import AuthorizationRequestBody
from cardpay.bootstrap.api import build_app
from cardpay.handlers.ports import Card, ChainReading
from cardpay.postgres.uow import unit_of_work_factory
from cardpay.settings import Settings
from domain.ledger.chart import ChartOfAccounts
from domain.money import EURE
from tests.support.network import SECRET, dumps, signed_headers

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SAFE = "0x" + "5a" * 20
CENT = 10**16


def _register(engine: Engine, euros: int) -> None:
    with unit_of_work_factory(engine, None)() as uow:
        uow.cards.add(Card("card-1", SAFE, "0x" + "e0" * 20, EURE),
                      ChainReading(1, "0x" + "01" * 32, euros * 100 * CENT))
        uow.commit()


def _body(n: int, cents: int) -> bytes:
    body: dict[str, Any] = copy.deepcopy(examples(AuthorizationRequestBody)[0])
    body.update(authorization_id=f"auth-{n}", card_id="card-1", amount=cents,
                partial_approval_supported=False)
    return dumps(body)


@pytest.mark.parametrize("round_", range(3))
def test_parallel_authorizations_never_approve_more_than_the_balance(
        pg_engine: Engine, round_: int) -> None:
    _register(pg_engine, 100)  # 100.00 EURe; 24 requests of 15.00 each: 6 fit
    settings = Settings(database_url="unused", webhook_secrets=(SECRET,))
    app = build_app(settings, pg_engine, registry=CollectorRegistry())
    with TestClient(app) as client:
        def ask(n: int) -> Any:
            body = _body(n, 1_500)
            return client.post("/v1/network/authorizations", content=body,
                               headers=signed_headers(body, f"wh-{n}"))

        with ThreadPoolExecutor(max_workers=12) as pool:
            replies = list(pool.map(ask, range(24)))
    assert {r.status_code for r in replies} == {200}
    approved = [r.json() for r in replies if r.json()["approved"]]
    declined = [r.json() for r in replies if not r.json()["approved"]]
    assert len(approved) == 6 and sum(a["approved_amount"] for a in approved) == 9_000
    assert {d["decline_reason"] for d in declined} == {"insufficient_funds"}
    with unit_of_work_factory(pg_engine, None)() as uow:
        funds, = uow.ledger.lookup_accounts([ChartOfAccounts("EURe").cardholder(SAFE).id])
    assert funds.debits_pending == 9_000 * CENT
    assert funds.credits_posted - funds.debits_pending - funds.debits_posted == 1_000 * CENT
