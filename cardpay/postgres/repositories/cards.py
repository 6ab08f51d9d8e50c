"""The card registry: cards, and their Safes' balances and allowances as indexed from the chain.

`lock_for_authorization` is the authorization's hot path: two statements, one that locks the
card's row (`SELECT ... FOR UPDATE`) and one that reads the balance, the allowance and the
velocity count once the lock is held. Two authorizations of one card therefore serialize on that
row until the first one's transaction ends; another card is not blocked.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Text,
    any_,
    bindparam,
    case,
    delete,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cardpay.handlers.cards import AllowanceStep, TrackedAllowance, follow_allowances
from cardpay.handlers.ports import (
    BalanceMove,
    Card,
    CardExists,
    ChainReading,
    IndexedBalance,
    LockedCard,
)
from cardpay.postgres import raw
from cardpay.postgres import schema as s
from cardpay.postgres.repositories import chunks
from domain.authorization import Allowance, CardStatus
from domain.money import Currency
from listener.ports import AllowanceChange

_CARD_COLUMNS = [s.cards.c[name] for name in (
    "card_id", "safe", "token", "currency", "decimals", "status", "roles_module", "blocked_mccs",
    "velocity_limit", "velocity_window_seconds", "created_at", "updated_at")]


def _card(row: Any) -> Card:
    return _card_of(tuple(row))


def _card_of(row: Sequence[Any]) -> Card:
    """A card from a row of `_CARD_COLUMNS`, in that order."""
    (card_id, safe, token, currency, decimals, status, roles_module, blocked_mccs,
     velocity_limit, velocity_window_seconds, created_at, updated_at) = row
    return Card(
        card_id=card_id, safe=safe, token=token, currency=Currency(currency, int(decimals)),
        status=CardStatus(status), roles_module=roles_module,
        blocked_mccs=frozenset(blocked_mccs or ()), velocity_limit=velocity_limit,
        velocity_window=timedelta(seconds=int(velocity_window_seconds)),
        created_at=created_at, updated_at=updated_at)


_LOCK_CARD = (f"SELECT {', '.join(c.name for c in _CARD_COLUMNS)} FROM cards "
              "WHERE card_id = %s FOR UPDATE")
_AUTHORIZATION_STATE = """
    SELECT
        (SELECT balance FROM safe_balances WHERE safe = %(safe)s AND token = %(token)s),
        CASE WHEN %(counted)s THEN
            (SELECT count(*) FROM card_authorizations
             WHERE card_id = %(card)s AND at > %(since)s AND at <= %(now)s)
        ELSE 0 END,
        a.balance, a.max_refill, a.refill, a.period, a.stamp
    FROM (SELECT 1) one
    LEFT JOIN safe_allowances a
        ON a.safe = %(safe)s AND a.token = %(token)s AND a.roles_module = %(module)s
"""
"""The Safe's indexed balance, the card's approvals in its velocity window (when it has a
limit) and the Safe's allowance on the card's Roles module (NULLs when none is tracked)."""
_RECORD_AUTHORIZATION = "INSERT INTO card_authorizations (card_id, at) VALUES (%s, %s)"


def _texts(name: str, values: Sequence[str]) -> Any:
    """One array parameter (`= ANY(:name)`), however many values: a block range can name more
    addresses than PostgreSQL's bind-parameter limit."""
    return any_(bindparam(name, list(values), type_=ARRAY(Text)))


def _allowance(m: Any, prefix: str = "") -> Allowance:
    return Allowance(int(m[f"{prefix}balance"]), int(m[f"{prefix}max_refill"]),
                     int(m[f"{prefix}refill"]), int(m[f"{prefix}period"]),
                     int(m[f"{prefix}stamp"]))


def _allowance_values(a: Allowance, prefix: str = "") -> dict[str, int]:
    return {f"{prefix}balance": a.balance, f"{prefix}max_refill": a.max_refill,
            f"{prefix}refill": a.refill, f"{prefix}period": a.period,
            f"{prefix}stamp": a.timestamp}


class PostgresCardRegistry:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    # -- the registry ----------------------------------------------------------------------------
    def add(self, card: Card, reading: ChainReading) -> None:
        safe, token = card.safe.lower(), card.token.lower()
        module = card.roles_module.lower() if card.roles_module else None
        inserted = self._conn.execute(pg_insert(s.cards).values(
            card_id=card.card_id, safe=safe, token=token, currency=card.currency.code,
            decimals=card.currency.decimals, status=card.status.value, roles_module=module,
            blocked_mccs=sorted(card.blocked_mccs), velocity_limit=card.velocity_limit,
            velocity_window_seconds=int(card.velocity_window.total_seconds()),
        ).on_conflict_do_nothing().returning(s.cards.c.card_id)).first()
        if inserted is None:
            raise CardExists(f"card {card.card_id} is already registered")
        block = {"read_block": reading.block_number, "read_block_hash": reading.block_hash,
                 "as_of_block": reading.block_number, "as_of_block_hash": reading.block_hash}
        self._conn.execute(pg_insert(s.safe_balances).values(
            safe=safe, token=token, balance=reading.balance, read_balance=reading.balance,
            **block).on_conflict_do_nothing())
        if module is not None and reading.allowance is not None:
            self._conn.execute(pg_insert(s.safe_allowances).values(
                safe=safe, token=token, roles_module=module,
                **_allowance_values(reading.allowance),
                **_allowance_values(reading.allowance, "read_"), **block,
            ).on_conflict_do_nothing())

    def get(self, card_id: str) -> Card | None:
        row = self._conn.execute(select(*_CARD_COLUMNS).where(s.cards.c.card_id == card_id)
                                 ).first()
        return None if row is None else _card(row)

    def all(self) -> list[Card]:
        rows = self._conn.execute(select(*_CARD_COLUMNS)
                                  .order_by(s.cards.c.created_at, s.cards.c.card_id))
        return [_card(row) for row in rows]

    def set_status(self, card_id: str, status: CardStatus) -> Card | None:
        row = self._conn.execute(
            update(s.cards).where(s.cards.c.card_id == card_id)
            .values(status=status.value, updated_at=func.now()).returning(*_CARD_COLUMNS)
        ).first()
        return None if row is None else _card(row)

    # -- the authorization's read ------------------------------------------------------------------
    def lock_for_authorization(self, card_id: str, now: datetime) -> LockedCard | None:
        # Two statements on purpose: under READ COMMITTED a statement that waited for the lock
        # re-reads the locked row but keeps its own snapshot for everything else, so a count or
        # balance read in the same statement would miss what the previous lock holder committed.
        # The second statement takes a fresh snapshot after the lock is ours. Both run on every
        # authorization: on the driver's cursor (`cardpay.postgres.raw`).
        row = raw.execute(self._conn, _LOCK_CARD, (card_id,)).fetchone()
        if row is None:
            return None
        card = _card_of(row)
        window_start = now - card.velocity_window
        state = raw.execute(self._conn, _AUTHORIZATION_STATE, {
            "safe": card.safe, "token": card.token, "module": card.roles_module,
            "card": card_id, "counted": card.velocity_limit is not None,
            "since": window_start, "now": now}).fetchone()
        assert state is not None
        balance, recent, *allowance = state
        return LockedCard(card, int(balance or 0),
                          None if allowance[0] is None else Allowance(*map(int, allowance)),
                          int(recent))

    def record_authorization(self, card_id: str, at: datetime) -> None:
        raw.defer(self._conn, _RECORD_AUTHORIZATION, (card_id, at))

    # -- what the chain says ---------------------------------------------------------------------
    def balance(self, safe: str, token: str) -> IndexedBalance | None:
        b = s.safe_balances
        row = self._conn.execute(
            select(b.c.balance, b.c.as_of_block, b.c.as_of_block_hash)
            .where(b.c.safe == safe.lower(), b.c.token == token.lower())).first()
        return None if row is None else IndexedBalance(safe.lower(), token.lower(), int(row[0]),
                                                       int(row[1]), row[2])

    def allowance(self, safe: str, token: str) -> Allowance | None:
        a = s.safe_allowances
        row = self._conn.execute(select(a).where(a.c.safe == safe.lower(),
                                                 a.c.token == token.lower())).first()
        return None if row is None else _allowance(row._mapping)

    def apply_transfers(self, moves: Sequence[BalanceMove]) -> int:
        if not moves:
            return 0
        b = s.safe_balances
        safes = sorted({m.safe.lower() for m in moves})
        read = {(r[0], r[1]): int(r[2]) for r in self._conn.execute(
            select(b.c.safe, b.c.token, b.c.read_block).where(b.c.safe == _texts("safes", safes)))}
        rows = [{"block_hash": m.block_hash, "log_index": m.log_index, "safe": m.safe.lower(),
                 "token": m.token.lower(), "block_number": m.block_number, "delta": m.delta}
                for m in moves
                if m.block_number > read.get((m.safe.lower(), m.token.lower()), m.block_number)]
        if not rows:
            return 0
        m = s.safe_balance_moves
        applied = [row for part in chunks(rows, params_per_item=6) for row in self._conn.execute(
            pg_insert(m).values(list(part)).on_conflict_do_nothing()
            .returning(m.c.safe, m.c.token, m.c.delta, m.c.block_number, m.c.block_hash))]
        totals: dict[tuple[str, str], tuple[int, int, str]] = {}
        for safe, token, delta, number, block_hash in applied:
            total, newest, newest_hash = totals.get((safe, token), (0, -1, ""))
            if number > newest:
                newest, newest_hash = int(number), block_hash
            totals[(safe, token)] = (total + int(delta), newest, newest_hash)
        for (safe, token), (total, newest, newest_hash) in sorted(totals.items()):
            self._conn.execute(update(b).where(b.c.safe == safe, b.c.token == token).values(
                balance=b.c.balance + literal(total, s.Amount),
                as_of_block_hash=case((b.c.as_of_block <= newest, newest_hash),
                                      else_=b.c.as_of_block_hash),
                as_of_block=func.greatest(b.c.as_of_block, newest), updated_at=func.now()))
        return len(applied)

    def apply_allowance_changes(self, changes: Sequence[AllowanceChange]
                                ) -> list[AllowanceChange]:
        if not changes:
            return []
        a = s.safe_allowances
        modules = sorted({c.roles_module.lower() for c in changes})
        tracked = [TrackedAllowance(r.safe, r.token, r.roles_module, _allowance(r._mapping),
                                    int(r.read_block))
                   for r in self._conn.execute(select(a).where(a.c.roles_module == _texts("modules", modules))
                                               .order_by(a.c.safe, a.c.token))]
        steps, unattributed = follow_allowances(tracked, changes)
        if steps:
            self._conn.execute(pg_insert(s.safe_allowance_changes).values([
                {"block_hash": st.block_hash, "log_index": st.log_index, "safe": st.safe,
                 "token": st.token, "block_number": st.block_number,
                 **_allowance_values(st.state)} for st in steps]).on_conflict_do_nothing())
            last: dict[tuple[str, str], AllowanceStep] = {}
            for st in steps:
                last[(st.safe, st.token)] = st
            for (safe, token), st in sorted(last.items()):
                self._conn.execute(update(a).where(a.c.safe == safe, a.c.token == token).values(
                    **_allowance_values(st.state), as_of_block=st.block_number,
                    as_of_block_hash=st.block_hash, updated_at=func.now()))
        return unattributed

    def forget_blocks(self, block_hashes: Sequence[str]) -> None:
        if not block_hashes:
            return
        hashes = list(block_hashes)
        m = s.safe_balance_moves
        gone = self._conn.execute(delete(m).where(m.c.block_hash == _texts("hashes", hashes))
                                  .returning(m.c.safe, m.c.token)).all()
        for safe, token in sorted(set(gone)):
            self._conn.execute(_RESTORE_BALANCE, {"safe": safe, "token": token})
        ch = s.safe_allowance_changes
        gone = self._conn.execute(delete(ch).where(ch.c.block_hash == _texts("hashes", hashes))
                                  .returning(ch.c.safe, ch.c.token)).all()
        for safe, token in sorted(set(gone)):
            self._conn.execute(_RESTORE_ALLOWANCE, {"safe": safe, "token": token})


# The balance is the reading plus every remaining move; its as-of block is the newest remaining
# move's, or the reading's when none is left.
_RESTORE_BALANCE = text("""
    UPDATE safe_balances b SET
        balance = b.read_balance + COALESCE(
            (SELECT sum(delta) FROM safe_balance_moves m
             WHERE m.safe = b.safe AND m.token = b.token), 0),
        as_of_block = COALESCE(newest.block_number, b.read_block),
        as_of_block_hash = COALESCE(newest.block_hash, b.read_block_hash),
        updated_at = now()
    FROM (SELECT 1) one
    LEFT JOIN LATERAL (
        SELECT block_number, block_hash FROM safe_balance_moves m
        WHERE m.safe = :safe AND m.token = :token
        ORDER BY block_number DESC, log_index DESC LIMIT 1) newest ON true
    WHERE b.safe = :safe AND b.token = :token
""")

# The allowance is the newest remaining change's state, or the reading's.
_RESTORE_ALLOWANCE = text("""
    UPDATE safe_allowances a SET
        balance = COALESCE(newest.balance, a.read_balance),
        max_refill = COALESCE(newest.max_refill, a.read_max_refill),
        refill = COALESCE(newest.refill, a.read_refill),
        period = COALESCE(newest.period, a.read_period),
        stamp = COALESCE(newest.stamp, a.read_stamp),
        as_of_block = COALESCE(newest.block_number, a.read_block),
        as_of_block_hash = COALESCE(newest.block_hash, a.read_block_hash),
        updated_at = now()
    FROM (SELECT 1) one
    LEFT JOIN LATERAL (
        SELECT * FROM safe_allowance_changes ch
        WHERE ch.safe = :safe AND ch.token = :token
        ORDER BY block_number DESC, log_index DESC LIMIT 1) newest ON true
    WHERE a.safe = :safe AND a.token = :token
""")
