"""Our signed transactions (`cardpay.handlers.onchain.OutgoingTransactions`), migration 0014.

The nonce is taken with `SELECT ... FOR UPDATE` on the sender's row, and that row is created
under a transaction-scoped advisory lock the first time (two workers starting at once must not
both initialise it from the node): the lock or the row lock is held until the commit that
records the transaction signed with that nonce, so the next worker reads the next one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import Connection, text

from cardpay.handlers.onchain import Call, Fees, RequestRef, SignedTx, Slot
from cardpay.handlers.sagas import EffectRequest

_LOCK = text("SELECT pg_advisory_xact_lock(hashtext(:key))")
_NEXT = text("SELECT next_nonce FROM onchain_nonces WHERE sender = :sender FOR UPDATE")
_STORE_NEXT = text("INSERT INTO onchain_nonces (sender, next_nonce) VALUES (:sender, :next) "
                   "ON CONFLICT (sender) DO UPDATE SET next_nonce = EXCLUDED.next_nonce")
_RECORDED = text("SELECT request_id, attempt FROM onchain_requests "
                 "WHERE request_id = ANY(:ids)")
_SLOT = text("INSERT INTO onchain_slots (sender, nonce, purpose, to_address, data, gas, meta) "
             "VALUES (:sender, :nonce, :purpose, :to, :data, :gas, :meta)")
_TX = text("INSERT INTO onchain_transactions (tx_hash, sender, nonce, raw, gas, max_fee, "
           "priority_fee, signed_at) VALUES (:tx_hash, :sender, :nonce, :raw, :gas, :max_fee, "
           ":priority_fee, :signed_at)")
_REQUEST = text("INSERT INTO onchain_requests (request_id, attempt, sender, nonce) "
                "VALUES (:request_id, :attempt, :sender, :nonce)")
_IN_FLIGHT = text(
    "SELECT s.nonce, s.purpose, s.to_address, s.data, s.gas, s.meta, "
    "  (SELECT coalesce(json_agg(json_build_array(r.request_id, r.attempt) "
    "                            ORDER BY r.request_id, r.attempt), '[]'::json) "
    "   FROM onchain_requests r WHERE r.sender = s.sender AND r.nonce = s.nonce) "
    "FROM onchain_slots s WHERE s.sender = :sender AND s.status = 'pending' "
    "AND s.purpose = ANY(:purposes) ORDER BY s.nonce")
_TXS = text("SELECT tx_hash, nonce, raw, gas, max_fee, priority_fee, signed_at "
            "FROM onchain_transactions WHERE sender = :sender AND nonce = ANY(:nonces) "
            "ORDER BY nonce, signed_at, tx_hash")
_SETTLE = text("UPDATE onchain_slots SET status = :outcome, mined_hash = :mined_hash, "
               "settled_at = now() WHERE sender = :sender AND nonce = :nonce "
               "AND status = 'pending'")
_SAME_SPEND = text("SELECT sender, nonce FROM onchain_slots WHERE purpose = :purpose "
                   "AND meta->>'payment_id' = :payment_id AND meta->'amount' = :amount "
                   "AND status IN ('pending', 'mined') ORDER BY nonce DESC LIMIT 1")
_ADD_REQUESTS = text("UPDATE onchain_slots SET status = 'pending', mined_hash = NULL, "
                     "settled_at = NULL WHERE sender = :sender AND nonce = :nonce")
_REOPEN_FROM = text("UPDATE onchain_slots SET status = 'pending', mined_hash = NULL, "
                    "settled_at = NULL WHERE sender = :sender AND nonce >= :nonce "
                    "AND status IN ('mined', 'reverted') RETURNING nonce")

_REOPEN_UNANSWERED = text(
    "UPDATE onchain_slots s SET status = 'pending', mined_hash = NULL, settled_at = NULL "
    "FROM (SELECT DISTINCT r.sender, r.nonce FROM saga_effects e JOIN onchain_requests r "
    "      ON r.request_id = e.request_id AND r.attempt = e.attempt "
    "      WHERE e.status = 'pending' AND r.sender = :sender) p "
    "WHERE s.sender = p.sender AND s.nonce = p.nonce AND s.status <> 'pending' "
    "RETURNING s.nonce")


_CLAIM_UNSENT = text(
    "SELECT e.request_id, e.kind, e.saga_id, e.name, e.payload, e.attempt FROM saga_effects e "
    "WHERE e.status = 'pending' AND e.name = ANY(:names) AND NOT EXISTS ("
    "  SELECT 1 FROM onchain_requests r WHERE r.request_id = e.request_id "
    "  AND r.attempt = e.attempt) "
    "ORDER BY e.requested_at, e.request_id LIMIT :limit FOR UPDATE OF e SKIP LOCKED")


class PostgresOutgoingTransactions:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def claim_unsent(self, names: Sequence[str], limit: int) -> list[EffectRequest]:
        if not names:
            return []
        rows = self._conn.execute(_CLAIM_UNSENT, {"names": list(names), "limit": limit})
        return [EffectRequest(request_id, kind, saga_id, name, payload, int(attempt))
                for request_id, kind, saga_id, name, payload, attempt in rows]

    def recorded(self, refs: Sequence[RequestRef]) -> set[RequestRef]:
        if not refs:
            return set()
        rows = self._conn.execute(_RECORDED, {"ids": sorted({r.request_id for r in refs})})
        found = {RequestRef(request_id, int(attempt)) for request_id, attempt in rows}
        return {r for r in refs if r in found}

    def take_nonce(self, sender: str, initial: Callable[[], int]) -> int:
        self._conn.execute(_LOCK, {"key": f"onchain-nonce:{sender}"})
        nonce = self._conn.execute(_NEXT, {"sender": sender}).scalar()
        if nonce is None:
            nonce = initial()
        self._conn.execute(_STORE_NEXT, {"sender": sender, "next": int(nonce) + 1})
        return int(nonce)

    def record(self, slot: Slot) -> None:
        self._conn.execute(_SLOT, {
            "sender": slot.sender, "nonce": slot.nonce, "purpose": slot.purpose,
            "to": slot.call.to.lower(), "data": bytes.fromhex(slot.call.data), "gas": slot.gas,
            "meta": Jsonb(dict(slot.meta))})
        for tx in slot.txs:
            self.add_replacement(tx)
        if slot.requests:
            self._conn.execute(_REQUEST, [
                {"request_id": r.request_id, "attempt": r.attempt, "sender": slot.sender,
                 "nonce": slot.nonce} for r in slot.requests])

    def add_replacement(self, tx: SignedTx) -> None:
        self._conn.execute(_TX, {
            "tx_hash": tx.tx_hash, "sender": tx.sender, "nonce": tx.nonce, "raw": tx.raw,
            "gas": tx.gas, "max_fee": tx.fees.max_fee, "priority_fee": tx.fees.priority_fee,
            "signed_at": tx.signed_at})

    def in_flight(self, sender: str, purposes: Sequence[str]) -> list[Slot]:
        rows = self._conn.execute(_IN_FLIGHT, {"sender": sender,
                                               "purposes": list(purposes)}).fetchall()
        if not rows:
            return []
        txs: dict[int, list[SignedTx]] = {}
        for tx_hash, nonce, raw, gas, max_fee, priority_fee, signed_at in self._conn.execute(
                _TXS, {"sender": sender, "nonces": [int(r[0]) for r in rows]}):
            txs.setdefault(int(nonce), []).append(SignedTx(
                tx_hash, bytes(raw), sender, int(nonce), int(gas),
                Fees(int(max_fee), int(priority_fee)), signed_at))
        return [_slot(sender, row, tuple(txs.get(int(row[0]), ()))) for row in rows]

    def same_spend(self, purpose: str, payment_id: str, amount: int) -> tuple[str, int] | None:
        row = self._conn.execute(_SAME_SPEND, {"purpose": purpose, "payment_id": payment_id,
                                               "amount": Jsonb(amount)}).first()
        return None if row is None else (str(row[0]), int(row[1]))

    def add_requests(self, sender: str, nonce: int, requests: Sequence[RequestRef]) -> None:
        self._conn.execute(_ADD_REQUESTS, {"sender": sender, "nonce": nonce})
        if requests:
            self._conn.execute(_REQUEST, [
                {"request_id": r.request_id, "attempt": r.attempt, "sender": sender,
                 "nonce": nonce} for r in requests])

    def reopen_from(self, sender: str, nonce: int) -> list[int]:
        rows = self._conn.execute(_REOPEN_FROM, {"sender": sender, "nonce": nonce})
        return sorted(int(n) for (n,) in rows)

    def reopen_unanswered(self, sender: str) -> list[int]:
        rows = self._conn.execute(_REOPEN_UNANSWERED, {"sender": sender})
        return sorted(int(n) for (n,) in rows)

    def settle(self, sender: str, nonce: int, *, mined_hash: str | None, outcome: str) -> None:
        self._conn.execute(_SETTLE, {"sender": sender, "nonce": nonce, "mined_hash": mined_hash,
                                     "outcome": outcome})


def _slot(sender: str, row: Sequence[Any], txs: tuple[SignedTx, ...]) -> Slot:
    nonce, purpose, to, data, gas, meta, requests = row
    return Slot(sender, int(nonce), purpose, Call(to, bytes(data).hex()), int(gas),
                tuple(RequestRef(str(r), int(a)) for r, a in requests), dict(meta), txs)

