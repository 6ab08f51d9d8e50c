"""The finance page's router on plain callables (no database): sign-in and its cookie, the scope
each part needs, the CSRF check of the resolve form, what the page shows and that it escapes
what it shows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cardpay.api.finance_page import COOKIE, finance_page_router, settlement_cells
from cardpay.handlers.exceptions import ExceptionOutcome
from domain.reconciliation import (
    Break,
    BreakKind,
    ChainFigures,
    LedgerFigures,
    NetworkFigures,
    Reconciliation,
)
from domain.settlement import Figures

pytestmark = pytest.mark.unit

EVERYTHING = frozenset({"finance:read", "ops:read", "ops:write"})
SETTLEMENTS = [
    {"day": "2026-12-01", "currency": "EUR", "status": "settled", "window": 1, "payments": 3,
     "decimals": 2, "count": 3, "credit": "200", "debit": "1850", "net": "-1650",
     "report_id": "r-d1", "report_count": 3, "report_credit": "200", "report_debit": "1850",
     "report_net": "-1650", "report_fees": "3", "diff_count": 0, "diff_credit": "0",
     "diff_debit": "0", "diff_net": "0", "updated_at": None},
    {"day": "2026-12-02", "currency": "EUR", "status": "mismatched", "window": 1,
     "payments": 2, "decimals": 2, "count": 2, "credit": "0", "debit": "1550", "net": "-1550",
     "report_id": "r-d2", "report_count": 3, "report_credit": "0", "report_debit": "2050",
     "report_net": "-2050", "report_fees": "4", "diff_count": -1, "diff_credit": "0",
     "diff_debit": "-500", "diff_net": "500", "updated_at": None},
]


class Backend:
    """The page's callables, recording what they were asked."""

    def __init__(self) -> None:
        self.tokens: dict[str, frozenset[str]] = {
            "cp_all": EVERYTHING, "cp_read": frozenset({"finance:read"}),
            "cp_ops": frozenset({"ops:read", "ops:write"}),
            "cp_reader": frozenset({"finance:read", "ops:read"})}
        self.days: list[date] = []
        self.resolved: list[tuple[int, str]] = []
        self.queue: list[dict[str, Any]] = [
            {"id": 7, "source": "network", "key": "unmatched_return:r1",
             "reason": "unmatched_return <script>alert(1)</script>", "attempts": 0,
             "created_at": datetime(2026, 12, 2, 10, tzinfo=UTC), "resolved_at": None,
             "resolution": None}]

    def scopes_of(self, token: str) -> frozenset[str] | None:
        return self.tokens.get(token)

    def reconcile(self, day: date) -> list[Reconciliation]:
        self.days.append(day)
        return [Reconciliation(
            day, "EUR", "EURe", 18, ("a1", "a2"), ChainFigures(spent=15_50 * 10**16),
            LedgerFigures(onchain=15_50 * 10**16, payable=15_50 * 10**16),
            NetworkFigures(ours=Figures(2, 0, 15_50 * 10**16), batch_status="settled"),
            (Break(BreakKind.CHAIN_TRANSFER_UNMATCHED, -4 * 10**18, (), "4.00 EURe left"),))]

    def resolve(self, item_id: int, note: str) -> ExceptionOutcome:
        if not any(row["id"] == item_id for row in self.queue):
            return ExceptionOutcome("not_found", f"no exception {item_id}")
        self.resolved.append((item_id, note))
        self.queue = [row for row in self.queue if row["id"] != item_id]
        return ExceptionOutcome("resolved", f"resolved by hand: {note}")


@pytest.fixture
def backend() -> Backend:
    return Backend()


@pytest.fixture
def client(backend: Backend) -> Iterator[TestClient]:
    app = FastAPI()
    app.include_router(finance_page_router(
        scopes_of=backend.scopes_of, settlements=lambda: [dict(r) for r in SETTLEMENTS],
        reconcile=backend.reconcile, exceptions=lambda: list(backend.queue),
        resolve=backend.resolve, csrf_secret=b"k" * 32))
    with TestClient(app, follow_redirects=False) as client:
        yield client


def sign_in(client: TestClient, token: str) -> None:
    answer = client.post("/finance/login", data={"token": token})
    assert answer.status_code == 303 and answer.headers["location"] == "/finance"


def csrf_of(page: str) -> str:
    marker = 'name="csrf" value="'
    start = page.index(marker) + len(marker)
    return page[start:page.index('"', start)]


def test_without_a_session_the_page_sends_you_to_sign_in(client: TestClient) -> None:
    answer = client.get("/finance")
    assert answer.status_code == 303 and answer.headers["location"] == "/finance/login"
    form = client.get("/finance/login")
    assert form.status_code == 200 and 'name="token"' in form.text
    client.cookies.set(COOKIE, "cp_nobody", path="/finance")
    assert client.get("/finance").headers["location"] == "/finance/login"


def test_signing_in_sets_a_strict_http_only_cookie_for_the_page_only(
        client: TestClient) -> None:
    answer = client.post("/finance/login", data={"token": "cp_all"})
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=cp_all;")
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/finance"} <= attributes
    assert "secure" not in attributes  # plain http here; set under https
    page = client.get("/finance")
    assert page.status_code == 200 and "finance:read ops:read ops:write" in page.text

    out = client.post("/finance/logout")
    assert out.status_code == 303 and out.headers["location"] == "/finance/login"
    assert client.get("/finance").status_code == 303


def test_an_unknown_token_is_refused_and_sets_no_cookie(client: TestClient) -> None:
    answer = client.post("/finance/login", data={"token": "cp_guess"})
    assert answer.status_code == 401 and "unknown or revoked" in answer.text
    assert "set-cookie" not in answer.headers
    assert client.post("/finance/login", data={"token": "a b"}).status_code == 401
    assert client.post("/finance/login", content=b'{"token": "cp_all"}',
                       headers={"content-type": "application/json"}).status_code == 415


def test_a_revoked_token_loses_the_page_at_once(client: TestClient, backend: Backend) -> None:
    sign_in(client, "cp_all")
    assert client.get("/finance").status_code == 200
    del backend.tokens["cp_all"]
    assert client.get("/finance").headers["location"] == "/finance/login"


def test_the_wrong_scope_is_a_403_page_naming_the_missing_one(client: TestClient) -> None:
    sign_in(client, "cp_ops")
    answer = client.get("/finance")
    assert answer.status_code == 403
    assert "lacks the scope <code>finance:read</code>" in answer.text


def test_the_page_shows_the_settlements_the_reconciliation_and_the_queue(
        client: TestClient, backend: Backend) -> None:
    sign_in(client, "cp_all")
    page = client.get("/finance")
    assert page.status_code == 200
    text = page.text
    for record in SETTLEMENTS:
        cells = settlement_cells(record)
        row = text[text.index(f'id="settlement-{record["day"]}-EUR"'):]
        row = row[:row.index("</tr>")]
        for field, shown in cells.items():
            assert f'data-field="{field}"' in row
            assert f">{shown}</td>" in row.split(f'data-field="{field}"')[1][:80], field
    assert settlement_cells(SETTLEMENTS[1])["diff_net"] == "5.00"
    # the default day is the latest batch day
    assert backend.days == [date(2026, 12, 2)]
    assert 'data-kind="chain_transfer_unmatched"' in text and ">-4.00</td>" in text
    assert ">15.50</td>" in text
    # the queue, escaped
    assert 'id="exception-7"' in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script>" not in text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"

    chosen = client.get("/finance", params={"day": "2026-12-01"})
    assert chosen.status_code == 200 and backend.days[-1] == date(2026, 12, 1)
    assert client.get("/finance", params={"day": "2026-12-32"}).status_code == 400


def test_the_queue_needs_ops_read_and_resolving_ops_write(client: TestClient,
                                                           backend: Backend) -> None:
    sign_in(client, "cp_read")
    page = client.get("/finance").text
    assert "needs the scope <code>ops:read</code>" in page and "exception-7" not in page
    refused = client.post("/finance/exceptions/7/resolve", data={"note": "x", "csrf": "y"})
    assert refused.status_code == 403 and "<code>ops:write</code>" in refused.text

    sign_in(client, "cp_reader")
    page = client.get("/finance").text
    assert 'id="exception-7"' in page and "/resolve" not in page
    assert "Resolving needs the scope <code>ops:write</code>" in page
    assert backend.resolved == []


def test_a_resolve_without_this_sessions_csrf_token_is_refused(client: TestClient,
                                                               backend: Backend) -> None:
    sign_in(client, "cp_reader")  # a CSRF token of another session
    other = client.get("/finance")
    sign_in(client, "cp_all")
    mine = csrf_of(client.get("/finance").text)
    assert 'name="csrf"' not in other.text  # no form without ops:write
    for forged in ({"note": "done"}, {"note": "done", "csrf": ""},
                   {"note": "done", "csrf": mine[:-1] + ("0" if mine[-1] != "0" else "1")}):
        answer = client.post("/finance/exceptions/7/resolve", data=forged)
        assert answer.status_code == 403 and "CSRF" in answer.text
    crossed = client.post("/finance/exceptions/7/resolve", data={"note": "x", "csrf": mine},
                          headers={"origin": "https://evil.example"})
    assert crossed.status_code == 403 and "another site" in crossed.text
    assert backend.resolved == []


def test_resolving_through_the_form_closes_the_exception(client: TestClient,
                                                         backend: Backend) -> None:
    sign_in(client, "cp_all")
    csrf = csrf_of(client.get("/finance").text)
    blank = client.post("/finance/exceptions/7/resolve", data={"note": "  ", "csrf": csrf})
    assert blank.status_code == 400 and backend.resolved == []
    done = client.post("/finance/exceptions/7/resolve",
                       data={"note": "refunded by bank transfer", "csrf": csrf})
    assert done.status_code == 303
    assert done.headers["location"] == "/finance?resolved=7#exceptions"
    assert backend.resolved == [(7, "refunded by bank transfer")]
    page = client.get("/finance", params={"resolved": "7"}).text
    assert "Exception 7 resolved." in page and 'id="exception-7"' not in page
    again = client.post("/finance/exceptions/7/resolve", data={"note": "x", "csrf": csrf})
    assert again.status_code == 404 and "no exception 7" in again.text
