"""Command claims (`processed_commands`): a command's natural key is processed once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cardpay.postgres import schema as s
from cardpay.postgres.repositories import chunks

t = s.processed_commands


class PostgresCommandClaims:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def claim(self, command_id: str, *, block_hash: str | None = None,
              outcome: str = "applied") -> bool:
        inserted = self._conn.execute(
            pg_insert(t).values(command_id=command_id, outcome=outcome, block_hash=block_hash)
            .on_conflict_do_nothing(index_elements=["command_id"])
            .returning(t.c.command_id)
        ).first()
        return inserted is not None

    def claim_many(self, claims: Mapping[str, str | None]) -> set[str]:
        if not claims:
            return set()
        stmt = (pg_insert(t).on_conflict_do_nothing(index_elements=["command_id"])
                .returning(t.c.command_id))
        rows = [{"command_id": cid, "outcome": "applied", "block_hash": block}
                for cid, block in claims.items()]
        fresh: set[str] = set()
        for part in chunks(rows, params_per_item=3):  # executemany: chunked for the row count
            fresh.update(self._conn.execute(stmt, list(part)).scalars())
        return fresh

    def set_outcome(self, command_id: str, outcome: str) -> None:
        self._conn.execute(update(t).where(t.c.command_id == command_id).values(outcome=outcome))

    def outcome(self, command_id: str) -> str | None:
        return self._conn.execute(
            select(t.c.outcome).where(t.c.command_id == command_id)).scalar_one_or_none()

    def release(self, command_ids: Sequence[str]) -> None:
        for part in chunks(command_ids):
            self._conn.execute(delete(t).where(t.c.command_id.in_(list(part))))

    def forget_blocks(self, block_hashes: Sequence[str]) -> None:
        for part in chunks(block_hashes):
            self._conn.execute(delete(t).where(t.c.block_hash.in_(list(part))))
