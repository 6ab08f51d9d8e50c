"""The finance page as `build_app` wires it on real PostgreSQL: the figures are the settlement
query's records, a resolve through the form closes the row in the database, and a refused one
(wrong scope, CSRF) leaves it open."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from cardpay.api.finance_page import settlement_cells
from cardpay.bootstrap.api import build_app
from cardpay.handlers.ports import QuarantineItem
from cardpay.postgres.queries import quarantine_entry
from cardpay.postgres.repositories.settlement import PostgresSettlementBatches
from cardpay.postgres.uow import unit_of_work_factory
from cardpay.records import settlement_record
from cardpay.settings import Settings
from tests.integration.test_settlements_cli import seed

pytestmark = pytest.mark.integration

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKENS = {"cp_finance": frozenset({"finance:read", "ops:read", "ops:write"}),
          "cp_viewer": frozenset({"finance:read", "ops:read"})}


def open_exception(engine: Engine) -> int:
    with unit_of_work_factory(engine, None)() as uow:
        uow.quarantine.add(QuarantineItem(source="network", key="unmatched_return:r1",
                                          reason="unmatched_return", payload={"amount": 5}))
        uow.commit()
        row, = uow.quarantine.list("network")
    return row.id


@pytest.fixture
def client(pg_engine: Engine) -> Iterator[TestClient]:
    settings = Settings(database_url="postgresql://unused/x", webhook_secrets=(SECRET,),
                        sweep_interval_s=0)
    app = build_app(settings, pg_engine, registry=CollectorRegistry(), scopes_of=TOKENS.get)
    with TestClient(app, follow_redirects=False) as client:
        yield client


def csrf_of(page: str) -> str:
    marker = 'name="csrf" value="'
    start = page.index(marker) + len(marker)
    return page[start:page.index('"', start)]


def test_the_page_shows_the_settlement_records_and_resolves_in_the_database(
        client: TestClient, pg_engine: Engine) -> None:
    seed(pg_engine)
    item = open_exception(pg_engine)
    assert client.get("/finance").headers["location"] == "/finance/login"
    assert client.post("/finance/login", data={"token": "cp_finance"}).status_code == 303
    page = client.get("/finance")
    assert page.status_code == 200
    with pg_engine.connect() as conn:
        records = [settlement_record(b) for b in PostgresSettlementBatches(conn).find()]
    assert len(records) == 3
    for record in records:
        row = page.text[page.text.index(f'id="settlement-{record["day"]}-'
                                        f'{record["currency"]}"'):]
        row = row[:row.index("</tr>")]
        for field, shown in settlement_cells(record).items():
            assert f'data-field="{field}" class=n>{shown}</td>' in row or \
                f'data-field="{field}">{shown}</td>' in row, (record["day"], field)
    assert f'id="exception-{item}"' in page.text
    csrf = csrf_of(page.text)

    forged = client.post(f"/finance/exceptions/{item}/resolve",
                         data={"note": "done", "csrf": "0" * 64})
    assert forged.status_code == 403
    with pg_engine.connect() as conn:
        still = quarantine_entry(conn, item)
    assert still is not None and still.resolved_at is None

    done = client.post(f"/finance/exceptions/{item}/resolve",
                       data={"note": "refunded by bank transfer", "csrf": csrf})
    assert done.status_code == 303, done.text
    with pg_engine.connect() as conn:
        resolved = quarantine_entry(conn, item)
    assert resolved is not None and resolved.resolved_at is not None
    assert resolved.resolution == "resolved by hand: refunded by bank transfer"
    after = client.get("/finance").text
    assert f'id="exception-{item}"' not in after and "(no open exceptions)" in after


def test_without_ops_write_the_row_stays_open(client: TestClient, pg_engine: Engine) -> None:
    item = open_exception(pg_engine)
    client.post("/finance/login", data={"token": "cp_viewer"})
    page = client.get("/finance")
    assert page.status_code == 200 and f'id="exception-{item}"' in page.text
    refused = client.post(f"/finance/exceptions/{item}/resolve",
                          data={"note": "done", "csrf": "x"})
    assert refused.status_code == 403 and "<code>ops:write</code>" in refused.text
    with pg_engine.connect() as conn:
        row = quarantine_entry(conn, item)
    assert row is not None and row.resolved_at is None


def test_the_page_signs_in_with_the_apis_bearer_tokens(pg_engine: Engine) -> None:
    """`cardpay api` serves the page on the token store: a token from `cardpay tokens create`
    signs in; a revoked one does not; the page stays out of the OpenAPI document."""
    from cardpay.postgres.repositories.api_tokens import PostgresTokenStore

    store = PostgresTokenStore(pg_engine)
    issued = store.create(["finance:read"], name="page")
    settings = Settings(database_url="postgresql://unused/x", webhook_secrets=(SECRET,),
                        sweep_interval_s=0)
    with TestClient(build_app(settings, pg_engine, registry=CollectorRegistry())) as client:
        assert client.get("/finance", follow_redirects=False).status_code in (302, 303, 307)
        client.post("/finance/login", data={"token": issued.token})
        assert client.get("/finance").status_code == 200
        assert "/finance" not in client.get("/openapi.json").text
        store.revoke(issued.info.token_id)
        assert client.get("/finance", follow_redirects=False).status_code in (302, 303, 307)
