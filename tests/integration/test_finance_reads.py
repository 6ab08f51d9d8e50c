"""The finance read side on real PostgreSQL: payments made by the aggregate's own commands,
projected by the real projector, then read back with filters and cursor pages, one payment with
its audit trail, open holds and the daily figures — through the query functions and through the
CLI as a user runs it."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from cardpay.handlers.finance import BadQuery, PaymentFilter
from cardpay.handlers.payments import execute
from cardpay.handlers.ports import Card, ChainReading
from cardpay.postgres.engine import make_engine
from cardpay.postgres.finance import (
    daily,
    holds,
    payment,
    payments_page,
)
from cardpay.postgres.uow import unit_of_work_factory
from domain import commands as c
from domain.errors import DomainError
from domain.money import EURE, USDCE, Money
from tests.support.cli import run_cardpay
from tests.support.indexing import project

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
SAFES = ["0x" + f"{i:02x}" * 20 for i in range(1, 4)]


def build(engine: Engine) -> dict[str, dict[str, Any]]:
    """25 payments over three days, two tokens and three Safes; some cleared (partly), some
    returned, some reversed, the rest still held. Returns what each should show."""
    want: dict[str, dict[str, Any]] = {}
    with unit_of_work_factory(engine, None)() as uow:
        uow.cards.add(Card("card-eur-1", SAFES[1], "0x" + "e0" * 20, EURE),
                      ChainReading(1, "0x" + "11" * 32, 0))
        uow.commit()
    for i in range(25):
        token = EURE if i % 3 else USDCE
        unit = 10 ** (token.decimals - 2)
        pid, at = f"auth-{i:03d}", T0 + timedelta(days=i % 3, minutes=i)
        amount = (100 + i) * unit
        steps: list[c.Command] = [c.AuthorizePayment(
            command_id=f"{pid}:a", payment_id=pid, at=at, account=SAFES[i % 3],
            amount=Money(amount, token), merchant=f"shop {i % 4}", mcc="5411",
            expires_at=at + timedelta(days=7))]
        cleared = returned = 0
        if i % 4 in (1, 2):
            cleared = amount - 10 * unit
            steps.append(c.RecordClearing(command_id=f"{pid}:c", payment_id=pid,
                                          at=at + timedelta(days=1),
                                          amount=Money(cleared, token)))
        if i % 4 == 2:
            returned = 5 * unit
            steps.append(c.RecordReturn(command_id=f"{pid}:r", payment_id=pid,
                                        at=at + timedelta(days=2),
                                        amount=Money(returned, token)))
        if i % 4 == 3:
            steps.append(c.ReverseAuthorization(command_id=f"{pid}:v", payment_id=pid,
                                                at=at + timedelta(hours=1)))
        with unit_of_work_factory(engine, None)() as uow:
            for cmd in steps:
                with contextlib.suppress(DomainError):
                    execute(uow, cmd)
            uow.commit()
        want[pid] = {"currency": token.code, "authorized": amount, "cleared": cleared,
                     "returned": returned, "safe": SAFES[i % 3], "first_at": at,
                     "held": amount if i % 4 == 0 else 0,
                     "network_status": {0: "authorized", 1: "cleared", 2: "cleared",
                                        3: "reversed"}[i % 4]}
    project(engine)
    return want


@pytest.fixture(scope="module")
def read_engine(module_pg_url: str) -> Iterator[Engine]:
    """One database for the whole module: every test here only reads what `built` wrote, so
    building the 25 payments once serves them all (per test it cost ~1-3 s, ten times)."""
    engine = make_engine(module_pg_url, pool_size=10)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def built(read_engine: Engine) -> dict[str, dict[str, Any]]:
    return build(read_engine)


def test_pages_cover_every_payment_once_newest_first(read_engine: Engine,
                                                     built: dict[str, Any]) -> None:
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    with read_engine.connect() as conn:
        while True:
            page, cursor = payments_page(conn, PaymentFilter(), after=cursor, limit=7)
            seen.extend(page)
            if cursor is None:
                break
    assert [r["payment_id"] for r in seen] == sorted(
        built, key=lambda pid: (built[pid]["first_at"], pid), reverse=True)
    for r in seen:
        w = built[r["payment_id"]]
        assert (r["currency"], int(r["authorized"]), int(r["network_cleared"]),
                int(r["returned"]), int(r["held"]), r["network_status"]) == (
            w["currency"], w["authorized"], w["cleared"], w["returned"], w["held"],
            w["network_status"]), r


@pytest.mark.parametrize(("wanted", "keep"), [
    (PaymentFilter(currency="EUR"), lambda w: w["currency"] == "EURe"),
    (PaymentFilter(currency="usdce"), lambda w: w["currency"] == "USDCe"),
    (PaymentFilter(network_status="reversed"), lambda w: w["network_status"] == "reversed"),
    (PaymentFilter(account=SAFES[2].upper().replace("0X", "0x")),
     lambda w: w["safe"] == SAFES[2]),
    (PaymentFilter(card="card-eur-1"),
     lambda w: w["safe"] == SAFES[1] and w["currency"] == "EURe"),
    (PaymentFilter(day=date(2026, 11, 29), currency="EURe"),
     lambda w: w["first_at"].date() == date(2026, 11, 29) and w["currency"] == "EURe"),
], ids=["fiat", "token", "network_status", "account", "card", "day_and_currency"])
def test_filters(read_engine: Engine, built: dict[str, Any], wanted: PaymentFilter,
                 keep: Any) -> None:
    with read_engine.connect() as conn:
        page, cursor = payments_page(conn, wanted, limit=1000)
    assert cursor is None
    expected = {pid for pid, w in built.items() if keep(w)}
    assert expected and {r["payment_id"] for r in page} == expected


def test_bad_filters_and_cursors_are_one_clear_error(read_engine: Engine) -> None:
    with read_engine.connect() as conn:
        for wanted, after, message in [
            (PaymentFilter(currency="JPY"), None, "unknown currency 'JPY'"),
            (PaymentFilter(card="nope"), None, "no card 'nope'"),
            (PaymentFilter(), "not-a-cursor", "is not one this API gave out"),
            (PaymentFilter(network_status="lost"), None, "unknown network status"),
        ]:
            with pytest.raises(BadQuery, match=message):
                payments_page(conn, wanted, after=after)


def test_one_payment_has_its_audit_trail_and_holds_are_the_open_ones(
        read_engine: Engine, built: dict[str, Any]) -> None:
    with read_engine.connect() as conn:
        found = payment(conn, "auth-002")
        assert payment(conn, "nope") is None
        open_holds = holds(conn)
        card_holds = holds(conn, card="card-eur-1")
    assert found is not None and found["payment"]["payment_id"] == "auth-002"
    assert [h["type"] for h in found["history"]] == [
        "PaymentAuthorized", "ClearingRecorded", "ReturnRecorded"]
    assert found["history"][1]["data"]["amount"]["units"] == str(built["auth-002"]["cleared"])
    assert {h["payment_id"] for h in open_holds} == {
        pid for pid, w in built.items() if w["held"]}
    assert [h["expires_at"] for h in open_holds] == sorted(h["expires_at"] for h in open_holds)
    assert {h["payment_id"] for h in card_holds} == {
        pid for pid, w in built.items()
        if w["held"] and w["safe"] == SAFES[1] and w["currency"] == "EURe"}


def test_the_days_add_up_to_the_payments(read_engine: Engine, built: dict[str, Any]) -> None:
    with read_engine.connect() as conn:
        days = daily(conn)
        eur_only = daily(conn, currencies=["EUR"], day_from=date(2026, 11, 29))
    for token in ("EURe", "USDCe"):
        mine = [w for w in built.values() if w["currency"] == token]
        rows = [d for d in days if d["currency"] == token]
        assert sum(d["approved"] for d in rows) == len(mine)
        assert sum(int(d["authorized"]) for d in rows) == sum(w["authorized"] for w in mine)
        assert sum(int(d["cleared"]) for d in rows) == sum(w["cleared"] for w in mine)
        assert sum(int(d["returned"]) for d in rows) == sum(w["returned"] for w in mine)
    # each clearing counts on its own day: the first day saw approvals only
    first = next(d for d in days if d["day"] == "2026-11-28" and d["currency"] == "USDCe")
    assert first["cleared"] == "0" and first["approved"] > 0
    assert eur_only and all(d["currency"] == "EURe" and d["day"] >= "2026-11-29"
                            for d in eur_only)


def test_the_cli_pages_filters_and_shows_one_payment(module_pg_url: str,
                                                     built: dict[str, Any]) -> None:
    env = {"CARDPAY_DATABASE_URL": module_pg_url}
    first = run_cardpay(("payments", "--currency", "EUR", "--limit", "10", "--json"), env)
    assert first.returncode == 0, first.stderr
    page = json.loads(first.stdout)
    cursor = first.stderr.strip().rsplit(" ", 1)[-1]
    rest = run_cardpay(("payments", "--currency", "EUR", "--limit", "1000", "--json",
                        "--after", cursor), env)
    assert rest.returncode == 0 and rest.stderr == "", rest.stderr
    ids = [r["payment_id"] for r in page + json.loads(rest.stdout)]
    assert sorted(ids) == sorted(pid for pid, w in built.items() if w["currency"] == "EURe")
    assert len(set(ids)) == len(ids)

    shown = run_cardpay(("payment", "show", "auth-002"), env)
    assert shown.returncode == 0, shown.stderr
    assert "ReturnRecorded" in shown.stdout
    assert re.search(r"^network_status:\s+cleared$", shown.stdout, re.M), shown.stdout
    as_json = json.loads(run_cardpay(("payment", "show", "auth-002", "--json"), env).stdout)
    assert as_json["payment"]["returned"] == str(built["auth-002"]["returned"])

    missing = run_cardpay(("payment", "show", "nope"), env)
    assert missing.returncode == 1
    assert missing.stderr.strip() == ("cardpay payment show: no payment 'nope': "
                                      "`cardpay payments` lists them")
    bad = run_cardpay(("payments", "--currency", "JPY"), env)
    assert bad.returncode == 2 and "unknown currency 'JPY'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
