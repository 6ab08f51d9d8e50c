"""Finance routes (scope `finance:read`): payments with filters and cursor pages, one payment with
its audit trail, open holds, the daily figures, the settlement batches (JSON or CSV) and a
settlement day's reconciliation — the same records `cardpay payments|payment show|settlements|
reconcile` print, from `cardpay.handlers.finance.FinanceReads`.

Amounts are strings of base units next to their `decimals` (token units for payments and days,
fiat minor units for settlement batches), so no client rounds on the way. A filter or cursor that
cannot be used is a 400 with one line saying why.
"""

from __future__ import annotations

import csv
import io
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from cardpay.api import models as m
from cardpay.api.auth import GUARDED, require
from cardpay.handlers.api_tokens import FINANCE_READ
from cardpay.handlers.finance import (
    BadQuery,
    ChainStatus,
    CurrencyCode,
    FinanceReads,
    NetworkStatus,
    PaymentFilter,
    UnknownCard,
)
from cardpay.records import reconciliation_record, settlement_record

Amount = Annotated[str | None, Field(description="base units, exact (a string of digits)")]
BAD_QUERY: dict[int | str, dict[str, Any]] = {
    400: {"model": m.ErrorResponse, "description": "a filter or cursor that cannot be used"}}
NO_CARD: dict[int | str, dict[str, Any]] = {
    404: {"model": m.ErrorResponse, "description": "the card filter names no registered card"}}
Guard = Annotated[frozenset[str], Depends(require(FINANCE_READ))]
DAY = r"^[1-9]\d{3}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$"
"""A day as YYYY-MM-DD only (a bare number would otherwise be read as a Unix time); the
document says `format: date` too, so a client knows 2026-02-30 is no day."""
CURSOR = r"^[A-Za-z0-9_-]{1,500}$"


def _day(text: str | None, name: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadQuery(f"{name}: {text!r} is not a day (YYYY-MM-DD)") from None


def _day_query(description: str = "", alias: str | None = None) -> Any:
    return Query(pattern=DAY, alias=alias, description=description or "YYYY-MM-DD",
                 examples=["2026-12-02"], json_schema_extra={"format": "date"})


class Payment(BaseModel):
    """One payment of the payments read model: the chain side, the network's, the settlement."""

    payment_id: str
    status: str = Field(description="the chain side: new, authorized, held, cleared, "
                        "reversed, settled, retracted")
    network_status: str = Field(description="none, authorized, declined, cleared, reversed, "
                                "expired")
    account: str | None = Field(description="the cardholder's Safe")
    currency: str | None = Field(description="the token (EURe, GBPe, USDCe)")
    decimals: int | None
    merchant: str | None
    mcc: str | None
    authorized: Amount
    spent: Amount
    cleared: Amount = Field(description="what the chain side posted")
    refunded: Amount
    held: Amount
    posted: Amount
    network_cleared: Amount = Field(description="every clearing the network sent")
    reversed: Amount
    released: Amount
    over_cleared: Amount
    returned: Amount
    settled: Amount
    spend_tx: str | None
    refund_txs: list[str]
    settlement_batch: str | None
    expires_at: datetime | None
    first_at: datetime | None
    authorized_at: datetime | None
    cleared_at: datetime | None
    settled_at: datetime | None
    last_at: datetime | None
    updated_at: datetime | None
    last_version: int


class PaymentPage(BaseModel):
    payments: list[Payment]
    next: str | None = Field(description="the cursor of the next page (`after`); null on the "
                             "last page")


class Event(BaseModel):
    version: int
    position: int
    type: str
    occurred_at: str | None
    recorded_at: str
    caused_by: str | None
    data: dict[str, Any]


class PaymentHistory(BaseModel):
    payment: Payment | None = Field(description="null while the event is not projected yet")
    history: list[Event] = Field(description="every event of the payment's stream, in order")


class Holds(BaseModel):
    holds: list[Payment]


class Day(BaseModel):
    day: date
    currency: str
    decimals: int | None
    approved: int
    declined: int
    authorized: str
    cleared_payments: int
    cleared: str
    returned: str
    spent: str
    refunded: str
    settled_payments: int
    settled: str


class Days(BaseModel):
    days: list[Day]


class Settlement(BaseModel):
    """One settlement batch: our figures, the report's interchange line and the difference
    (fiat minor units)."""

    day: date
    currency: str
    status: str
    window: int
    payments: int
    decimals: int
    count: int
    credit: str
    debit: str
    net: str
    report_id: str | None
    report_count: int | None
    report_credit: str | None
    report_debit: str | None
    report_net: str | None
    report_fees: str | None
    diff_count: int | None
    diff_credit: str | None
    diff_debit: str | None
    diff_net: str | None
    updated_at: datetime | None


class Settlements(BaseModel):
    settlements: list[Settlement]


class ReconciliationDay(BaseModel):
    day: date
    clean: bool = Field(description="no break in any currency")
    currencies: list[dict[str, Any]] = Field(
        description="per currency: the chain's, the ledger's and the network's figures and "
        "the breaks (`cardpay reconcile --json`)")


def _bad(exc: BadQuery) -> JSONResponse:
    if isinstance(exc, UnknownCard):
        return JSONResponse({"error": "not_found", "reason": str(exc)}, status_code=404)
    return JSONResponse({"error": "bad_query", "reason": str(exc)}, status_code=400)


def finance_router(reads: FinanceReads) -> APIRouter:
    router = APIRouter(tags=["finance"])

    @router.get("/v1/payments", response_model=PaymentPage,
                responses={**GUARDED, **BAD_QUERY, **NO_CARD},
                summary="Payments, newest first, with filters and cursor pages")
    async def list_payments(
            _: Guard,
            status: Annotated[ChainStatus | None, Query(
                description="the chain side's status")] = None,
            network_status: Annotated[NetworkStatus | None, Query()] = None,
            card: Annotated[str | None, Query(max_length=200)] = None,
            account: Annotated[str | None, Query(max_length=200)] = None,
            day: Annotated[str | None, _day_query("first seen on this UTC day")] = None,
            currency: Annotated[CurrencyCode | None, Query(
                description="the card currency or its token")] = None,
            after: Annotated[str | None, Query(
                pattern=CURSOR, description="the previous page's `next` (a cursor this API "
                "did not give out is a 400)")] = None,
            limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
        try:
            wanted = PaymentFilter(status=status, network_status=network_status,
                                   account=account, card=card, day=_day(day, "day"),
                                   currency=currency)
            page, cursor = await run_in_threadpool(reads.payments, wanted, after=after,
                                                   limit=limit)
        except BadQuery as exc:
            return _bad(exc)
        return {"payments": page, "next": cursor}

    @router.get("/v1/payments/{payment_id}", response_model=PaymentHistory,
                responses={**GUARDED, 404: {"model": m.ErrorResponse,
                                            "description": "no such payment"}},
                summary="One payment with its audit trail (every event, in order)")
    async def one_payment(_: Guard,
                          payment_id: Annotated[str, Path(max_length=300)]) -> Any:
        found = await run_in_threadpool(reads.payment, payment_id)
        if found is None:
            return JSONResponse({"error": "not_found", "reason": f"no payment {payment_id!r}"},
                                status_code=404)
        return found

    @router.get("/v1/holds", response_model=Holds, responses={**GUARDED, **NO_CARD},
                summary="Open network holds, soonest expiry first")
    async def open_holds(_: Guard,
                         account: Annotated[str | None, Query(max_length=200)] = None,
                         card: Annotated[str | None, Query(max_length=200)] = None) -> Any:
        try:
            rows = await run_in_threadpool(reads.holds, account=account, card=card)
        except BadQuery as exc:
            return _bad(exc)
        return {"holds": rows}

    @router.get("/v1/days", response_model=Days, responses={**GUARDED, **BAD_QUERY},
                summary="Per UTC day and token: approvals, clearings, returns, spends, refunds, "
                "settlements")
    async def days(_: Guard,
                   day_from: Annotated[str | None, _day_query(alias="from")] = None,
                   day_to: Annotated[str | None, _day_query(alias="to")] = None,
                   currency: Annotated[list[CurrencyCode] | None, Query()] = None) -> Any:
        try:
            rows = await run_in_threadpool(reads.days, day_from=_day(day_from, "from"),
                                           day_to=_day(day_to, "to"),
                                           currencies=list(currency or []))
        except BadQuery as exc:
            return _bad(exc)
        return {"days": rows}

    @router.get("/v1/settlements", response_model=Settlements,
                responses={**GUARDED, **BAD_QUERY,
                           200: {"content": {"text/csv": {"schema": {"type": "string"}}},
                                 "description": "JSON, or CSV with `format=csv`"}},
                summary="Settlement batches per day and currency, against the network's report")
    async def settlements(
            _: Guard, day: Annotated[str | None, _day_query()] = None,
            currency: Annotated[Literal["EUR", "GBP", "USD"] | None, Query()] = None,
            fmt: Annotated[Literal["json", "csv"], Query(alias="format")] = "json") -> Any:
        try:
            wanted = _day(day, "day")
        except BadQuery as exc:
            return _bad(exc)
        batches = await run_in_threadpool(reads.settlements, day=wanted, currency=currency)
        records = [settlement_record(b) for b in batches]
        if fmt == "csv":
            return Response(_csv(records, list(Settlement.model_fields)),
                            media_type="text/csv")
        return {"settlements": records}

    @router.get("/v1/reconciliation", response_model=ReconciliationDay,
                responses={**GUARDED, **BAD_QUERY},
                summary="A settlement day three ways: chain, ledger, the network's report")
    async def reconciliation(
            _: Guard, day: Annotated[str, _day_query()],
            currency: Annotated[Literal["EUR", "GBP", "USD"] | None, Query()] = None) -> Any:
        try:
            on = _day(day, "day")
        except BadQuery as exc:
            return _bad(exc)
        assert on is not None
        results = await run_in_threadpool(reads.reconcile, on, currency)
        return {"day": on, "clean": all(r.clean for r in results),
                "currencies": [reconciliation_record(r) for r in results]}

    return router


def _csv(records: list[dict[str, Any]], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for r in records:
        writer.writerow(["" if r.get(c) is None else
                         (r[c].isoformat() if isinstance(r[c], datetime) else r[c])
                         for c in columns])
    return out.getvalue()
