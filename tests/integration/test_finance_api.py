"""The finance routes on real PostgreSQL, behind bearer tokens: the same figures as the query
functions and the CLI (payments with filters and cursor pages, one payment's audit trail, holds,
days, settlement batches as JSON and CSV, a day's reconciliation); finance:read is needed, a
filter that cannot be used is a 400 with the reason."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from starlette.testclient import TestClient

from cardpay.bootstrap.api import build_app
from cardpay.handlers.finance import PaymentFilter
from cardpay.postgres.finance import PostgresFinanceReads
from cardpay.postgres.repositories.api_tokens import PostgresTokenStore
from cardpay.records import settlement_record
from cardpay.settings import Settings
from tests.integration.test_finance_reads import build
from tests.integration.test_settlements_cli import D1, D2
from tests.integration.test_settlements_cli import seed as seed_batches
from tests.support.network import SECRET

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture
def client(pg_engine: Engine) -> Iterator[TestClient]:
    settings = Settings(database_url="unused", webhook_secrets=(SECRET,), sweep_interval_s=0)
    app = build_app(settings, pg_engine, registry=CollectorRegistry())
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def built(pg_engine: Engine) -> dict[str, Any]:
    seed_batches(pg_engine)
    return build(pg_engine)


def auth(pg_engine: Engine, *scopes: str) -> dict[str, str]:
    token = PostgresTokenStore(pg_engine).create(scopes, name="test").token
    return {"Authorization": f"Bearer {token}"}


def test_payments_pages_and_filters_match_the_queries(
        client: TestClient, pg_engine: Engine, built: dict[str, Any]) -> None:
    headers = auth(pg_engine, "finance:read")
    reads = PostgresFinanceReads(pg_engine)
    got: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        reply = client.get("/v1/payments", params={"limit": 6, **({"after": after} if after
                                                                  else {})}, headers=headers)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        got += body["payments"]
        after = body["next"]
        if after is None:
            break
    everything, _ = reads.payments(PaymentFilter(), after=None, limit=1000)
    assert [p["payment_id"] for p in got] == [p["payment_id"] for p in everything]
    assert len(got) == len(built)
    assert got[0]["authorized"] == everything[0]["authorized"]  # strings of base units

    eur = client.get("/v1/payments", params={"currency": "EUR", "network_status": "cleared",
                                             "limit": 1000}, headers=headers).json()
    want, _ = reads.payments(PaymentFilter(currency="EUR", network_status="cleared"),
                             after=None, limit=1000)
    assert eur["payments"] and [p["payment_id"] for p in eur["payments"]] == [
        p["payment_id"] for p in want]

    assert client.get("/v1/payments", params={"currency": "JPY"},
                      headers=headers).status_code == 422  # not a currency the document names
    bad_cursor = client.get("/v1/payments", params={"after": "zzz"}, headers=headers)
    assert bad_cursor.status_code == 400 and "not one this API gave out" in bad_cursor.text
    for query in ({"day": "0"}, {"day": "2026-02-30"}):
        assert client.get("/v1/payments", params=query, headers=headers).status_code in (
            400, 422), query  # never read as a Unix time or rolled over
    unknown = client.get("/v1/holds", params={"card": "nope"}, headers=headers)
    assert unknown.status_code == 404 and "no card 'nope'" in unknown.text


def test_one_payment_holds_and_days(client: TestClient, pg_engine: Engine,
                                    built: dict[str, Any]) -> None:
    headers = auth(pg_engine, "finance:read")
    reads = PostgresFinanceReads(pg_engine)
    one = client.get("/v1/payments/auth-002", headers=headers)
    assert one.status_code == 200
    assert [e["type"] for e in one.json()["history"]] == [
        "PaymentAuthorized", "ClearingRecorded", "ReturnRecorded"]
    assert one.json()["payment"]["returned"] == str(built["auth-002"]["returned"])
    assert client.get("/v1/payments/nope", headers=headers).status_code == 404

    holds = client.get("/v1/holds", headers=headers).json()["holds"]
    assert [h["payment_id"] for h in holds] == [
        h["payment_id"] for h in reads.holds(account=None, card=None)]
    assert holds and all(int(h["held"]) > 0 for h in holds)

    days = client.get("/v1/days", params={"currency": ["EUR", "USD"]}, headers=headers)
    assert days.status_code == 200
    assert days.json()["days"] == reads.days(day_from=None, day_to=None,
                                             currencies=["EUR", "USD"])
    assert sum(int(d["authorized"]) for d in days.json()["days"]) == sum(
        w["authorized"] for w in built.values())


def test_settlements_as_json_and_csv_and_the_reconciliation(
        client: TestClient, pg_engine: Engine, built: dict[str, Any]) -> None:
    headers = auth(pg_engine, "finance:read")
    reads = PostgresFinanceReads(pg_engine)
    as_json = client.get("/v1/settlements", headers=headers).json()["settlements"]
    want = [settlement_record(b) for b in reads.settlements(day=None, currency=None)]
    assert [(s["day"], s["currency"], s["status"], s["net"], s["diff_net"]) for s in as_json] == [
        (w["day"], w["currency"], w["status"], w["net"], w["diff_net"]) for w in want]
    as_csv = client.get("/v1/settlements", params={"format": "csv", "day": D2.isoformat(),
                                                   "currency": "EUR"}, headers=headers)
    assert as_csv.headers["content-type"].startswith("text/csv")
    [row] = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert (row["day"], row["status"], row["diff_count"]) == (D2.isoformat(), "mismatched", "-1")

    day = client.get("/v1/reconciliation", params={"day": D1.isoformat()}, headers=headers)
    assert day.status_code == 200
    body = day.json()
    expected = reads.reconcile(D1, None)
    assert body["clean"] == all(r.clean for r in expected)
    assert [c["currency"] for c in body["currencies"]] == [r.currency for r in expected]
    assert client.get("/v1/reconciliation", headers=headers).status_code == 422  # no day


def test_the_finance_routes_need_finance_read(client: TestClient, pg_engine: Engine) -> None:
    ops_only = auth(pg_engine, "ops:read", "ops:write")
    for path in ("/v1/payments", "/v1/payments/x", "/v1/holds", "/v1/days",
                 "/v1/settlements", "/v1/reconciliation?day=2026-12-01"):
        assert client.get(path).status_code == 401, path
        forbidden = client.get(path, headers=ops_only)
        assert forbidden.status_code == 403, path
        assert "finance:read" in forbidden.text
