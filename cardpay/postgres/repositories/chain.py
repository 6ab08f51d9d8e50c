"""The listener's state: cursor (block number + hash), kept block hashes, classified activity."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cardpay.postgres import raw
from cardpay.postgres import schema as s
from cardpay.postgres.repositories import chunks
from listener.classify import Activity
from listener.ports import BlockRef, Cursor

_ADD_ACTIVITY = """
    INSERT INTO chain_activity (chain_id, block_hash, log_index, block_number, block_time,
        tx_hash, kind, token, symbol, sender, recipient, amount, cardholder)
    SELECT %s, h, i, n, t, x, k, tk, sy, se, re, a::numeric, c
    FROM unnest(%b::text[], %b::int[], %b::bigint[], %b::timestamptz[], %b::text[], %b::text[],
                %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[])
        AS u(h, i, n, t, x, k, tk, sy, se, re, a, c)
    ON CONFLICT DO NOTHING
"""


class PostgresChainState:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def load_cursor(self, name: str) -> Cursor | None:
        t = s.chain_cursor
        row = self._conn.execute(
            select(t.c.block_number, t.c.block_hash).where(t.c.name == name)).first()
        return None if row is None else Cursor(int(row[0]), str(row[1]))

    def save_cursor(self, name: str, cursor: Cursor) -> None:
        stmt = pg_insert(s.chain_cursor).values(
            name=name, block_number=cursor.block_number, block_hash=cursor.block_hash)
        self._conn.execute(stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={"block_number": stmt.excluded.block_number,
                  "block_hash": stmt.excluded.block_hash, "updated_at": func.now()},
        ))

    def keep_blocks(self, name: str, blocks: Sequence[BlockRef], *, below: int) -> None:
        t = s.chain_blocks
        if blocks:
            stmt = pg_insert(t)
            stmt = stmt.on_conflict_do_update(
                index_elements=["listener", "block_number"],
                set_={"block_hash": stmt.excluded.block_hash,
                      "parent_hash": stmt.excluded.parent_hash},
            )
            rows = [{"listener": name, "block_number": b.number, "block_hash": b.hash,
                     "parent_hash": b.parent_hash} for b in blocks]
            for part in chunks(rows, params_per_item=4):
                self._conn.execute(stmt, list(part))
        self._conn.execute(delete(t).where(t.c.listener == name, t.c.block_number < below))

    def blocks_above(self, name: str, number: int) -> list[BlockRef]:
        t = s.chain_blocks
        rows = self._conn.execute(
            select(t.c.block_number, t.c.block_hash, t.c.parent_hash)
            .where(t.c.listener == name, t.c.block_number > number)
            .order_by(t.c.block_number.desc())
        )
        return [BlockRef(int(n), h, p) for n, h, p in rows]

    def add_activity(self, chain_id: int, activity: Sequence[Activity]) -> None:
        """One INSERT of every row, the columns as binary arrays through `unnest`: a range's
        thousands of rows as `executemany` cost a statement each (issue 11's profile)."""
        if not activity:
            return
        columns: tuple[list[Any], ...] = tuple([] for _ in range(12))
        for a in activity:
            for column, value in zip(columns, (
                    a.log.block_hash, a.log.log_index, a.log.block_number, a.block_time,
                    a.log.tx_hash, a.kind.value, a.token, a.symbol, a.sender, a.recipient,
                    str(a.amount), a.cardholder), strict=True):
                column.append(value)
        raw.execute(self._conn, _ADD_ACTIVITY, (chain_id, *columns))

    def forget_above(self, name: str, chain_id: int, ancestor: int) -> None:
        self._conn.execute(delete(s.chain_activity).where(
            s.chain_activity.c.chain_id == chain_id, s.chain_activity.c.block_number > ancestor))
        self._conn.execute(delete(s.chain_blocks).where(
            s.chain_blocks.c.listener == name, s.chain_blocks.c.block_number > ancestor))
