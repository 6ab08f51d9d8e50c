"""Read-only queries behind the finance read side: the payments read model with filters and
cursor pages, one payment with its audit trail from the event store, open holds, and the daily
figures. Shared by the CLI and the finance API, so both show the same numbers.

Records are dicts of JSON-ready values: amounts are strings of token base units next to the
token's `decimals` (exact; nothing is rounded on the way), times ISO 8601 in UTC.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, get_args

from sqlalchemy import ColumnElement, Connection, Engine, and_, func, literal, select, tuple_

from cardpay.handlers.finance import BadQuery, NetworkStatus, PaymentFilter, UnknownCard
from cardpay.postgres.schema import cards, events, rm_daily, rm_payments
from domain.money import FIAT_CURRENCIES, FIAT_TOKENS
from domain.reconciliation import Reconciliation
from domain.settlement import SettlementBatch

AMOUNT_COLUMNS = ("authorized", "spent", "cleared", "refunded", "held", "posted",
                  "network_cleared", "reversed", "released", "over_cleared", "returned", "settled")
TIME_COLUMNS = ("expires_at", "first_at", "authorized_at", "cleared_at", "settled_at", "last_at",
                "updated_at")
PAYMENT_COLUMNS = ("payment_id", "status", "network_status", "account", "currency", "decimals",
                   "merchant", "mcc", *AMOUNT_COLUMNS, "spend_tx", "refund_txs",
                   "settlement_batch", *TIME_COLUMNS, "last_version")
DAY_COLUMNS = ("approved", "declined", "authorized", "cleared_payments", "cleared", "returned",
               "spent", "refunded", "settled_payments", "settled")
NETWORK_STATUSES: tuple[str, ...] = get_args(NetworkStatus)
MAX_PAGE = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def token_code(currency: str) -> str:
    """The token code of a fiat code (EUR -> EURe) or a token code (any case); BadQuery if
    neither."""
    wanted = currency.strip()
    fiat = FIAT_CURRENCIES.get(wanted.upper())
    if fiat is not None:
        return FIAT_TOKENS[fiat].code
    for token in FIAT_TOKENS.values():
        if token.code.lower() == wanted.lower():
            return token.code
    known = sorted(FIAT_CURRENCIES) + sorted(t.code for t in FIAT_TOKENS.values())
    raise BadQuery(f"unknown currency {currency!r}: one of {', '.join(known)}")


def _of_card(conn: Connection, card_id: str) -> ColumnElement[bool]:
    """The payments of one card: its Safe's, in its token (UnknownCard if not registered)."""
    card = conn.execute(select(cards.c.safe, cards.c.currency)
                        .where(cards.c.card_id == card_id)).first()
    if card is None:
        raise UnknownCard(f"no card {card_id!r}")
    return and_(rm_payments.c.account == card.safe, rm_payments.c.currency == card.currency)


def encode_cursor(first_at: datetime | None, payment_id: str) -> str:
    raw = json.dumps([(first_at or _EPOCH).isoformat(), payment_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, payment_id = json.loads(raw)
        return datetime.fromisoformat(at), str(payment_id)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise BadQuery(f"the cursor {cursor[:40]!r} is not one this API gave out ({exc})") \
            from None


def payments_page(conn: Connection, f: PaymentFilter, *, after: str | None = None,
                  limit: int = 100) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first (by the first event's time, then payment id): one page and the cursor of
    the next (None on the last page). Rows that change between pages keep their place: the
    order is by values a payment never changes."""
    if not 1 <= limit <= MAX_PAGE:
        raise BadQuery(f"limit must be 1..{MAX_PAGE}, got {limit}")
    p = rm_payments
    order_at = func.coalesce(p.c.first_at, literal(_EPOCH))
    query = select(p)
    if f.status is not None:
        query = query.where(p.c.status == f.status)
    if f.network_status is not None:
        if f.network_status not in NETWORK_STATUSES:
            raise BadQuery(f"unknown network status {f.network_status!r}: one of "
                           f"{', '.join(NETWORK_STATUSES)}")
        query = query.where(p.c.network_status == f.network_status)
    if f.account is not None:
        query = query.where(p.c.account == f.account.lower())
    if f.currency is not None:
        query = query.where(p.c.currency == token_code(f.currency))
    if f.card is not None:
        query = query.where(_of_card(conn, f.card))
    if f.day is not None:
        start = datetime(f.day.year, f.day.month, f.day.day, tzinfo=UTC)
        query = query.where(p.c.first_at >= start, p.c.first_at < start + timedelta(days=1))
    if after is not None:
        at, payment_id = decode_cursor(after)
        query = query.where(tuple_(order_at, p.c.payment_id) < tuple_(literal(at),
                                                                        literal(payment_id)))
    rows = list(conn.execute(query.order_by(order_at.desc(), p.c.payment_id.desc())
                             .limit(limit + 1)))
    page = [payment_record(r._mapping) for r in rows[:limit]]
    more = len(rows) > limit
    last = rows[limit - 1] if more else None
    return page, (encode_cursor(last.first_at, last.payment_id) if last is not None else None)


def payment_record(m: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in PAYMENT_COLUMNS:
        value = m[k]
        if k in AMOUNT_COLUMNS:
            value = None if value is None else str(int(value))
        elif k in TIME_COLUMNS:
            value = None if value is None else value.astimezone(UTC).isoformat()
        elif k == "refund_txs":
            value = list(value or [])
        out[k] = value
    return out


def payment(conn: Connection, payment_id: str) -> dict[str, Any] | None:
    """The payment's row and its audit trail: every event of its stream, in order, as stored
    (None when neither exists)."""
    row = conn.execute(select(rm_payments).where(rm_payments.c.payment_id == payment_id)).first()
    e = events
    history = [
        {"version": int(r.version), "position": int(r.position), "type": r.type,
         "occurred_at": r.data["meta"].get("occurred_at"),
         "recorded_at": r.recorded_at.astimezone(UTC).isoformat(),
         "caused_by": r.data["meta"].get("causation_id"), "data": r.data["payload"]}
        for r in conn.execute(select(e.c.version, e.c.position, e.c.type, e.c.data,
                                     e.c.recorded_at)
                              .where(e.c.stream_id == payment_id).order_by(e.c.version))]
    if row is None and not history:
        return None
    return {"payment": None if row is None else payment_record(row._mapping),
            "history": history}


def holds(conn: Connection, *, account: str | None = None, card: str | None = None
          ) -> list[dict[str, Any]]:
    """Open network holds (what the network may still clear), soonest expiry first."""
    p = rm_payments
    query = select(p).where(p.c.held > 0)
    if account is not None:
        query = query.where(p.c.account == account.lower())
    if card is not None:
        query = query.where(_of_card(conn, card))
    return [payment_record(r._mapping)
            for r in conn.execute(query.order_by(p.c.expires_at, p.c.payment_id))]


def daily(conn: Connection, *, day_from: date | None = None, day_to: date | None = None,
          currencies: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The daily read model, oldest day first; amounts as strings with the token's decimals."""
    d = rm_daily
    query = select(d).order_by(d.c.day, d.c.currency)
    if day_from is not None:
        query = query.where(d.c.day >= day_from)
    if day_to is not None:
        query = query.where(d.c.day <= day_to)
    if currencies:
        query = query.where(d.c.currency.in_([token_code(c) for c in currencies]))
    decimals = {t.code: t.decimals for t in FIAT_TOKENS.values()}
    return [{"day": r.day.isoformat(), "currency": r.currency,
             "decimals": decimals.get(r.currency),
             **{k: (int(r._mapping[k]) if k in ("approved", "declined", "cleared_payments",
                                                  "settled_payments")
                    else str(int(r._mapping[k]))) for k in DAY_COLUMNS}}
            for r in conn.execute(query)]


class PostgresFinanceReads:
    """`cardpay.handlers.finance.FinanceReads` on PostgreSQL: one short read transaction per
    call."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def payments(self, wanted: PaymentFilter, *, after: str | None,
                 limit: int) -> tuple[list[dict[str, Any]], str | None]:
        with self._engine.connect() as conn:
            return payments_page(conn, wanted, after=after, limit=limit)

    def payment(self, payment_id: str) -> dict[str, Any] | None:
        with self._engine.connect() as conn:
            return payment(conn, payment_id)

    def holds(self, *, account: str | None, card: str | None) -> list[dict[str, Any]]:
        with self._engine.connect() as conn:
            return holds(conn, account=account, card=card)

    def days(self, *, day_from: date | None, day_to: date | None,
             currencies: list[str]) -> list[dict[str, Any]]:
        with self._engine.connect() as conn:
            return daily(conn, day_from=day_from, day_to=day_to, currencies=currencies)

    def settlements(self, *, day: date | None, currency: str | None) -> list[SettlementBatch]:
        from cardpay.postgres.repositories.settlement import PostgresSettlementBatches

        with self._engine.connect() as conn:
            return PostgresSettlementBatches(conn).find(day=day, currency=currency)

    def reconcile(self, day: date, currency: str | None) -> list[Reconciliation]:
        from cardpay.handlers.reconciliation import reconcile_day
        from cardpay.postgres.reconciliation import PostgresReconciliationSource

        with self._engine.connect() as conn:
            return reconcile_day(PostgresReconciliationSource(conn), day, currency)
