"""Refund matching: submitted refunds waiting for their transfer, and transfers seen first."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, delete, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cardpay.handlers.ports import ExpectedRefund, UnmatchedTransfer
from cardpay.postgres import schema as s
from cardpay.postgres.repositories import chunks


class PostgresRefundMatching:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def expect(self, refund: ExpectedRefund) -> None:
        self._conn.execute(pg_insert(s.expected_refunds).values(
            payment_id=refund.payment_id, refund_id=refund.refund_id,
            tx_hash=refund.tx_hash.lower(), to_address=refund.to_address.lower(),
            token=refund.token.lower(), amount=refund.amount,
        ))

    def match(self, tx_hash: str, to_address: str, token: str, amount: int, *, log_key: str,
              block_hash: str) -> ExpectedRefund | None:
        t = s.expected_refunds
        row = self._conn.execute(
            select(t.c.payment_id, t.c.refund_id)
            .where(t.c.tx_hash == tx_hash.lower(), t.c.to_address == to_address.lower(),
                   t.c.token == token.lower(), t.c.amount == literal(amount, s.Amount),
                   t.c.matched_by.is_(None))
            .limit(1).with_for_update()
        ).first()
        if row is None:
            return None
        self._conn.execute(update(t).where(t.c.payment_id == row[0], t.c.refund_id == row[1])
                           .values(matched_by=log_key, matched_block=block_hash))
        return ExpectedRefund(row[0], row[1], tx_hash, to_address, token, amount)

    def keep_unmatched(self, transfer: UnmatchedTransfer) -> None:
        self._conn.execute(pg_insert(s.unmatched_transfers).values(
            command_id=transfer.command_id, tx_hash=transfer.tx_hash.lower(),
            recipient=transfer.recipient.lower(), token=transfer.token.lower(),
            amount=transfer.amount, block_hash=transfer.block_hash, command=transfer.command,
        ).on_conflict_do_nothing(index_elements=["command_id"]))

    def take_unmatched(self, tx_hash: str, recipient: str, token: str,
                       amount: int) -> UnmatchedTransfer | None:
        t = s.unmatched_transfers
        row = self._conn.execute(
            select(t)
            .where(t.c.tx_hash == tx_hash.lower(), t.c.recipient == recipient.lower(),
                   t.c.token == token.lower(), t.c.amount == literal(amount, s.Amount),
                   t.c.resolved_at.is_(None))
            .order_by(t.c.seen_at).limit(1).with_for_update()
        ).first()
        if row is None:
            return None
        m = row._mapping
        self._conn.execute(update(t).where(t.c.command_id == m["command_id"])
                           .values(resolved_at=func.now()))
        return UnmatchedTransfer(m["command_id"], m["tx_hash"], m["recipient"], m["token"],
                                 int(m["amount"]), m["block_hash"], dict(m["command"]))

    def forget_blocks(self, block_hashes: Sequence[str]) -> None:
        e, u = s.expected_refunds, s.unmatched_transfers
        for part in chunks(block_hashes):
            self._conn.execute(update(e).where(e.c.matched_block.in_(list(part)))
                               .values(matched_by=None, matched_block=None))
            self._conn.execute(delete(u).where(u.c.block_hash.in_(list(part))))
