"""Command claims (`processed_commands`): a command's natural key is processed once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cardpay.postgres import raw
from cardpay.postgres import schema as s
from cardpay.postgres.repositories import chunks

t = s.processed_commands

_CLAIM_MANY = """
    INSERT INTO processed_commands (command_id, outcome, block_hash)
    SELECT c, 'applied', b FROM unnest(%b::text[], %b::text[]) AS u(c, b)
    ON CONFLICT (command_id) DO NOTHING
    RETURNING command_id
"""


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
        """One INSERT of every claim, the columns as binary arrays through `unnest` (a range's
        thousands of claims as `executemany` were a statement each: issue 11's profile)."""
        if not claims:
            return set()
        return {row[0] for row in raw.execute(self._conn, _CLAIM_MANY,
                                              (list(claims), list(claims.values())))}

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
