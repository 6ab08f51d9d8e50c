"""The quarantine: inputs that could not be used, with their reason, for people to see and retry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cardpay.handlers.ports import QuarantinedRow, QuarantineItem
from cardpay.postgres import schema as s
from cardpay.postgres.repositories import chunks

t = s.quarantine


class PostgresQuarantine:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add(self, item: QuarantineItem) -> None:
        self._conn.execute(
            pg_insert(t).values(source=item.source, key=item.key, reason=item.reason,
                                payload=dict(item.payload), block_hash=item.block_hash)
            .on_conflict_do_nothing(constraint="quarantine_source_key")
        )

    def forget(self, key: str) -> None:
        self._conn.execute(delete(t).where(t.c.key == key))

    def forget_blocks(self, block_hashes: Sequence[str]) -> None:
        for part in chunks(block_hashes):
            self._conn.execute(delete(t).where(t.c.block_hash.in_(list(part))))

    def list(self, source_prefix: str = "", *, include_resolved: bool = True
             ) -> list[QuarantinedRow]:
        query = select(t).where(t.c.source.startswith(source_prefix)).order_by(t.c.id)
        if not include_resolved:
            query = query.where(t.c.resolved_at.is_(None))
        return [_row(r._mapping) for r in self._conn.execute(query)]

    def get(self, item_id: int) -> QuarantinedRow | None:
        row = self._conn.execute(select(t).where(t.c.id == item_id)).first()
        return None if row is None else _row(row._mapping)

    def resolve(self, item_id: int, resolution: str) -> None:
        self._conn.execute(update(t).where(t.c.id == item_id)
                           .values(resolved_at=func.now(), resolution=resolution,
                                   attempts=t.c.attempts + 1))

    def attempted(self, item_id: int, reason: str) -> None:
        self._conn.execute(update(t).where(t.c.id == item_id)
                           .values(reason=reason, attempts=t.c.attempts + 1))


def _row(m: Any) -> QuarantinedRow:
    return QuarantinedRow(id=int(m["id"]), source=m["source"], key=m["key"], reason=m["reason"],
                          payload=dict(m["payload"]), block_hash=m["block_hash"],
                          created_at=m["created_at"], resolved_at=m["resolved_at"],
                          resolution=m["resolution"], attempts=int(m["attempts"]))
