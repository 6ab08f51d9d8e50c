"""Which chain each listener indexes (chain id + genesis hash), and what it indexed there.

`PostgresChainIdentities` keeps one `ChainIdentity` per listener name: the listener refuses a node
on another chain, and `cardpay listener reset` forgets it. `indexed_blocks` lists the blocks that
left payment effects or classified activity, which a reset hands to the sink's rollback so that
every effect is retracted (the sink's kept window only covers the newest 256 blocks).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import BigInteger, Engine, cast, delete, select, union
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cardpay.postgres import schema as s
from listener.ports import BlockRef


@dataclass(frozen=True, slots=True)
class ChainIdentity:
    chain_id: int
    genesis_hash: str
    first_block: int
    """The first block this listener was asked to index on this chain (where a reset starts)."""


class PostgresChainIdentities:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def load(self, listener: str) -> ChainIdentity | None:
        t = s.chain_identity
        with self._engine.connect() as conn:
            row = conn.execute(select(t.c.chain_id, t.c.genesis_hash, t.c.first_block)
                               .where(t.c.listener == listener)).first()
        return None if row is None else ChainIdentity(int(row[0]), str(row[1]), int(row[2]))

    def record(self, listener: str, identity: ChainIdentity) -> ChainIdentity:
        """Store the identity unless one is stored already; returns the stored one (first wins,
        so two listeners started at once on different chains cannot both claim the name)."""
        with self._engine.begin() as conn:
            conn.execute(pg_insert(s.chain_identity).values(
                listener=listener, chain_id=identity.chain_id,
                genesis_hash=identity.genesis_hash.lower(), first_block=identity.first_block,
            ).on_conflict_do_nothing(index_elements=["listener"]))
        stored = self.load(listener)
        assert stored is not None
        return stored

    def forget(self, listener: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(delete(s.chain_identity).where(s.chain_identity.c.listener == listener))

    def cursor_block(self, listener: str) -> int | None:
        with self._engine.connect() as conn:
            value = conn.execute(select(s.chain_cursor.c.block_number)
                                 .where(s.chain_cursor.c.name == listener)).scalar()
        return None if value is None else int(value)

    def forget_cursor(self, listener: str) -> None:
        """Delete the cursor and every kept block hash: the next run starts at --from-block."""
        with self._engine.begin() as conn:
            conn.execute(delete(s.chain_cursor).where(s.chain_cursor.c.name == listener))
            conn.execute(delete(s.chain_blocks).where(s.chain_blocks.c.listener == listener))

    def indexed_blocks(self, chain_id: int, from_block: int) -> list[BlockRef]:
        """Every (number, hash) at or above `from_block` that payment events (spends, refunds,
        retracted or not) or classified activity of `chain_id` rest on, lowest first."""
        evidence = s.events.c.data[("payload", "evidence")]
        number = cast(evidence["block_number"].astext, BigInteger)
        from_events = (
            select(number.label("n"), evidence["block_hash"].astext.label("h"))
            .where(s.events.c.type.in_(["PaymentSpent", "PaymentRefunded"]),
                   cast(evidence["chain_id"].astext, BigInteger) == chain_id,
                   number >= from_block)
        )
        a = s.chain_activity
        from_activity = select(a.c.block_number.label("n"), a.c.block_hash.label("h")).where(
            a.c.chain_id == chain_id, a.c.block_number >= from_block)
        both = union(from_events, from_activity).subquery()
        with self._engine.connect() as conn:
            rows = conn.execute(select(both.c.n, both.c.h).order_by(both.c.n, both.c.h)).all()
        return [BlockRef(int(n), str(h), "") for n, h in rows]

    def keep_blocks(self, listener: str, blocks: list[BlockRef], *, above: int) -> None:
        """Make `blocks` the listener's kept window above `above` (for the sink's rollback)."""
        t = s.chain_blocks
        with self._engine.begin() as conn:
            conn.execute(delete(t).where(t.c.listener == listener, t.c.block_number > above))
            if blocks:
                conn.execute(pg_insert(t), [
                    {"listener": listener, "block_number": b.number, "block_hash": b.hash,
                     "parent_hash": b.parent_hash} for b in blocks])

    def kept_block(self, listener: str, number: int) -> BlockRef | None:
        t = s.chain_blocks
        with self._engine.connect() as conn:
            row = conn.execute(select(t.c.block_hash, t.c.parent_hash).where(
                t.c.listener == listener, t.c.block_number == number)).first()
        return None if row is None else BlockRef(number, str(row[0]), str(row[1]))

    def activity_chain_ids(self) -> list[int]:
        with self._engine.connect() as conn:
            return [int(c) for c in conn.execute(select(s.chain_activity.c.chain_id).distinct())
                    .scalars()]
