"""Consumer positions (feed offsets per source), stored in the transaction of the effects."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Connection, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cardpay.postgres import schema as s

t = s.consumer_positions


class PostgresConsumerPositions:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def load(self, consumer: str) -> dict[str, int]:
        rows = self._conn.execute(
            select(t.c.source, t.c.position).where(t.c.consumer == consumer))
        return {source: int(position) for source, position in rows}

    def save(self, consumer: str, positions: Mapping[str, int]) -> None:
        if not positions:
            return
        stmt = pg_insert(t).values(
            [{"consumer": consumer, "source": k, "position": v} for k, v in positions.items()])
        self._conn.execute(stmt.on_conflict_do_update(
            index_elements=["consumer", "source"],
            set_={"position": stmt.excluded.position, "updated_at": func.now()},
            # positions only move forward: a stale consumer cannot rewind them
            where=t.c.position < stmt.excluded.position,
        ))
