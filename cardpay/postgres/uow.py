"""The Postgres Unit of Work: one connection, one transaction, every table a consumer touches.

Events, outbox rows, read-model rows, quarantine rows and the consumer's position (feed offsets or
the chain cursor) are written through one of these and commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cardpay.postgres import schema as s
from cardpay.postgres.eventstore import PostgresEventStore
from domain.events import ChainEvidence
from listener.classify import Activity
from listener.ports import BlockRef, Cursor
from projector.payments import PaymentRow


@dataclass(frozen=True, slots=True)
class ChainEffect:
    """A payment event that rests on a chain log (a spend, or a refund with its id)."""

    payment_id: str
    refund_id: str | None
    evidence: ChainEvidence


@dataclass(frozen=True, slots=True)
class ExpectedRefund:
    payment_id: str
    refund_id: str
    tx_hash: str
    to_address: str
    token: str
    amount: int


class PostgresUnitOfWork:
    def __init__(self, engine: Engine, *, outbox_topic: str | None = None) -> None:
        self._engine = engine
        self._outbox_topic = outbox_topic
        self._conn: Connection | None = None

    # -- transaction ----------------------------------------------------------------------------
    def __enter__(self) -> PostgresUnitOfWork:
        self._conn = self._engine.connect()
        self._conn.begin()
        self.events = PostgresEventStore(self._conn, outbox_topic=self._outbox_topic)
        return self

    def __exit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if conn.in_transaction():
                conn.rollback()
            conn.close()

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("unit of work used outside its `with` block")
        return self._conn

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()
        self.conn.begin()

    # -- consumer positions ---------------------------------------------------------------------
    def load_positions(self, consumer: str) -> dict[str, int]:
        rows = self.conn.execute(
            select(s.consumer_positions.c.source, s.consumer_positions.c.position).where(
                s.consumer_positions.c.consumer == consumer
            )
        )
        return {source: int(position) for source, position in rows}

    def save_positions(self, consumer: str, positions: Mapping[str, int]) -> None:
        if not positions:
            return
        stmt = pg_insert(s.consumer_positions).values(
            [{"consumer": consumer, "source": k, "position": v} for k, v in positions.items()]
        )
        self.conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["consumer", "source"],
                set_={"position": stmt.excluded.position, "updated_at": func.now()},
                # positions only move forward: a stale consumer cannot rewind them
                where=s.consumer_positions.c.position < stmt.excluded.position,
            )
        )

    # -- idempotent commands --------------------------------------------------------------------
    def claim_command(self, command_id: str, outcome: str) -> bool:
        """Record the command as processed; False when it already was (a duplicate delivery)."""
        inserted = self.conn.execute(
            pg_insert(s.processed_commands)
            .values(command_id=command_id, outcome=outcome)
            .on_conflict_do_nothing(index_elements=["command_id"])
            .returning(s.processed_commands.c.command_id)
        ).first()
        return inserted is not None

    def claim_commands(self, command_ids: Sequence[str]) -> set[str]:
        """Claim many at once; returns the ids that were new (the others are duplicates)."""
        if not command_ids:
            return set()
        stmt = (pg_insert(s.processed_commands)
                .on_conflict_do_nothing(index_elements=["command_id"])
                .returning(s.processed_commands.c.command_id))
        rows = [{"command_id": cid, "outcome": "applied"} for cid in command_ids]
        return set(self.conn.execute(stmt, rows).scalars())

    def set_outcome(self, command_id: str, outcome: str) -> None:
        self.conn.execute(update(s.processed_commands)
                          .where(s.processed_commands.c.command_id == command_id)
                          .values(outcome=outcome))

    def release_commands(self, command_ids: Sequence[str]) -> None:
        if command_ids:
            self.conn.execute(delete(s.processed_commands)
                              .where(s.processed_commands.c.command_id.in_(list(command_ids))))

    def release_command(self, command_id: str) -> None:
        """Un-claim: the command may be processed again later (it found nothing to act on yet)."""
        self.conn.execute(delete(s.processed_commands)
                          .where(s.processed_commands.c.command_id == command_id))

    def lock(self, key: str) -> None:
        """A transaction-scoped advisory lock: one writer per consumer name at a time."""
        self.conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(key))))

    # -- quarantine -----------------------------------------------------------------------------
    def quarantine(self, source: str, key: str, reason: str, payload: dict[str, Any]) -> None:
        self.conn.execute(
            pg_insert(s.quarantine)
            .values(source=source, key=key, reason=reason, payload=payload)
            .on_conflict_do_nothing(constraint="quarantine_source_key")
        )

    def forget_quarantine(self, key: str) -> None:
        """The exception resolved itself (e.g. a refund transfer matched later): not one any more."""
        self.conn.execute(delete(s.quarantine).where(s.quarantine.c.key == key))

    def quarantined(self, source_prefix: str = "") -> list[dict[str, Any]]:
        rows = self.conn.execute(
            select(s.quarantine)
            .where(s.quarantine.c.source.startswith(source_prefix))
            .order_by(s.quarantine.c.id)
        )
        return [dict(r._mapping) for r in rows]

    # -- chain cursor ---------------------------------------------------------------------------
    def load_cursor(self, name: str) -> Cursor | None:
        row = self.conn.execute(
            select(s.chain_cursor.c.block_number, s.chain_cursor.c.block_hash).where(
                s.chain_cursor.c.name == name
            )
        ).first()
        return None if row is None else Cursor(int(row[0]), str(row[1]))

    def save_cursor(self, name: str, cursor: Cursor) -> None:
        stmt = pg_insert(s.chain_cursor).values(
            name=name, block_number=cursor.block_number, block_hash=cursor.block_hash
        )
        self.conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["name"],
                set_={
                    "block_number": stmt.excluded.block_number,
                    "block_hash": stmt.excluded.block_hash,
                    "updated_at": func.now(),
                },
            )
        )

    # -- classified activity and the unfinalized block window ----------------------------------
    def add_activity(self, chain_id: int, activity: Sequence[Activity]) -> None:
        if not activity:
            return
        rows = [
            {
                "chain_id": chain_id, "block_hash": a.log.block_hash, "log_index": a.log.log_index,
                "block_number": a.log.block_number, "block_time": a.block_time,
                "tx_hash": a.log.tx_hash, "kind": a.kind.value, "token": a.token,
                "symbol": a.symbol, "sender": a.sender, "recipient": a.recipient,
                "amount": a.amount, "cardholder": a.cardholder,
            }
            for a in activity
        ]
        self.conn.execute(pg_insert(s.chain_activity).on_conflict_do_nothing(), rows)

    def keep_blocks(self, listener: str, blocks: Sequence[BlockRef], *, below: int) -> None:
        """Remember these block hashes; forget those older than `below` (final by then)."""
        if blocks:
            stmt = pg_insert(s.chain_blocks)
            self.conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["listener", "block_number"],
                    set_={"block_hash": stmt.excluded.block_hash,
                          "parent_hash": stmt.excluded.parent_hash},
                ),
                [{"listener": listener, "block_number": b.number, "block_hash": b.hash,
                  "parent_hash": b.parent_hash} for b in blocks],
            )
        self.conn.execute(
            delete(s.chain_blocks).where(s.chain_blocks.c.listener == listener,
                                         s.chain_blocks.c.block_number < below)
        )

    def recent_blocks(self, listener: str) -> list[BlockRef]:
        return self.blocks_above(listener, -1)

    def blocks_above(self, listener: str, number: int) -> list[BlockRef]:
        t = s.chain_blocks
        rows = self.conn.execute(
            select(t.c.block_number, t.c.block_hash, t.c.parent_hash)
            .where(t.c.listener == listener, t.c.block_number > number)
            .order_by(t.c.block_number.desc())
        )
        return [BlockRef(int(n), h, p) for n, h, p in rows]

    def chain_effects(self, blocks: Sequence[BlockRef]) -> list[ChainEffect]:
        """Spends and refunds recorded from logs in these blocks, newest first."""
        if not blocks:
            return []
        block_hash = s.events.c.data[("payload", "evidence", "block_hash")].astext
        rows = self.conn.execute(
            select(s.events.c.stream_id, s.events.c.data)
            .where(s.events.c.type.in_(["PaymentSpent", "PaymentRefunded"]),
                   block_hash.in_([b.hash for b in blocks]))
            .order_by(s.events.c.position.desc())
        )
        effects = []
        for stream_id, data in rows:
            payload = data["payload"]
            effects.append(ChainEffect(stream_id, payload.get("refund_id"),
                                       ChainEvidence(**payload["evidence"])))
        return effects

    def forget_chain_blocks(
        self, listener: str, chain_id: int, ancestor: int, orphaned: Sequence[BlockRef]
    ) -> None:
        """Drop what orphaned blocks left behind: activity, claimed log ids, matched refunds."""
        self.conn.execute(
            delete(s.chain_activity).where(s.chain_activity.c.chain_id == chain_id,
                                           s.chain_activity.c.block_number > ancestor)
        )
        for block in orphaned:
            pattern = f"chain:{chain_id}:{block.hash}:%"
            self.conn.execute(
                delete(s.processed_commands).where(s.processed_commands.c.command_id.like(pattern))
            )
            self.conn.execute(
                update(s.expected_refunds).where(s.expected_refunds.c.matched_by.like(pattern))
                .values(matched_by=None)
            )
            self.conn.execute(delete(s.unmatched_transfers)
                              .where(s.unmatched_transfers.c.block_hash == block.hash))
            self.conn.execute(delete(s.quarantine).where(s.quarantine.c.key.like(pattern)))
        self.conn.execute(
            delete(s.chain_blocks).where(s.chain_blocks.c.listener == listener,
                                         s.chain_blocks.c.block_number > ancestor)
        )

    # -- refunds awaiting their on-chain transfer -----------------------------------------------
    def expect_refund(self, refund: ExpectedRefund) -> None:
        self.conn.execute(
            pg_insert(s.expected_refunds).values(
                payment_id=refund.payment_id,
                refund_id=refund.refund_id,
                tx_hash=refund.tx_hash.lower(),
                to_address=refund.to_address.lower(),
                token=refund.token.lower(),
                amount=refund.amount,
            )
        )

    def match_refund(
        self, tx_hash: str, to_address: str, token: str, amount: int, log_key: str
    ) -> ExpectedRefund | None:
        """Claim the one unmatched expected refund this transfer confirms (None if there is none)."""
        t = s.expected_refunds
        candidate = (
            select(t.c.payment_id, t.c.refund_id)
            .where(
                t.c.tx_hash == tx_hash.lower(),
                t.c.to_address == to_address.lower(),
                t.c.token == token.lower(),
                t.c.amount == literal(amount, s.Amount),
                t.c.matched_by.is_(None),
            )
            .limit(1)
            .with_for_update()
        )
        row = self.conn.execute(candidate).first()
        if row is None:
            return None
        self.conn.execute(
            update(t)
            .where(t.c.payment_id == row[0], t.c.refund_id == row[1])
            .values(matched_by=log_key)
        )
        return ExpectedRefund(row[0], row[1], tx_hash, to_address, token, amount)

    def keep_unmatched(self, command_id: str, tx_hash: str, recipient: str, token: str,
                       amount: int, block_hash: str, command: dict[str, Any]) -> None:
        self.conn.execute(
            pg_insert(s.unmatched_transfers).values(
                command_id=command_id, tx_hash=tx_hash.lower(), recipient=recipient.lower(),
                token=token.lower(), amount=amount, block_hash=block_hash, command=command,
            ).on_conflict_do_nothing(index_elements=["command_id"])
        )

    def take_unmatched(self, tx_hash: str, recipient: str, token: str,
                       amount: int) -> dict[str, Any] | None:
        """Resolve the oldest unresolved transfer with exactly these facts; its stored command."""
        t = s.unmatched_transfers
        row = self.conn.execute(
            select(t.c.command_id, t.c.command)
            .where(t.c.tx_hash == tx_hash.lower(), t.c.recipient == recipient.lower(),
                   t.c.token == token.lower(), t.c.amount == literal(amount, s.Amount),
                   t.c.resolved_at.is_(None))
            .order_by(t.c.seen_at).limit(1).with_for_update()
        ).first()
        if row is None:
            return None
        self.conn.execute(update(t).where(t.c.command_id == row[0]).values(resolved_at=func.now()))
        return dict(row[1])

    # -- payments read model --------------------------------------------------------------------
    def get_payments(self, payment_ids: list[str]) -> dict[str, PaymentRow]:
        if not payment_ids:
            return {}
        rows = self.conn.execute(
            select(s.rm_payments).where(s.rm_payments.c.payment_id.in_(payment_ids))
        )
        return {r.payment_id: _payment_row(r._mapping) for r in rows}

    def put_payments(self, rows: list[PaymentRow]) -> None:
        if not rows:
            return
        values = [
            {
                "payment_id": r.payment_id,
                "account": r.account,
                "currency": r.currency,
                "decimals": r.decimals,
                "status": r.status,
                "authorized": r.authorized,
                "spent": r.spent,
                "cleared": r.cleared,
                "refunded": r.refunded,
                "spend_tx": r.spend_tx,
                "last_version": r.last_version,
            }
            for r in rows
        ]
        stmt = pg_insert(s.rm_payments)
        updatable = {k: stmt.excluded[k] for k in values[0] if k != "payment_id"}
        self.conn.execute(  # executemany: the statement is compiled once, not per row
            stmt.on_conflict_do_update(
                index_elements=["payment_id"], set_={**updatable, "updated_at": func.now()},
                # a row only moves to a newer version: a stale projector cannot overwrite it
                where=s.rm_payments.c.last_version < stmt.excluded.last_version,
            ),
            values,
        )


def _payment_row(m: Any) -> PaymentRow:
    return PaymentRow(
        payment_id=m["payment_id"],
        status=m["status"],
        last_version=int(m["last_version"]),
        account=m["account"],
        currency=m["currency"],
        decimals=m["decimals"],
        authorized=None if m["authorized"] is None else int(m["authorized"]),
        spent=int(m["spent"]),
        cleared=None if m["cleared"] is None else int(m["cleared"]),
        refunded=int(m["refunded"]),
        spend_tx=m["spend_tx"],
    )
