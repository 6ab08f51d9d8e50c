"""`PostgresOutgoingTransactions` (migration 0014): nonces taken once each under a lock, even
by two workers at once; a request never gets a second transaction; replacements belong to their
slot; settled slots leave the in-flight list."""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from cardpay.handlers.onchain import Call, Fees, RequestRef, SignedTx, Slot
from cardpay.postgres.uow import onchain_uow_factory
from tests.integration.test_saga_store_contract import run_threads

pytestmark = pytest.mark.integration

SENDER = "0x" + "70" * 20
T0 = datetime(2026, 12, 2, 4, 0, tzinfo=UTC)


def _tx(nonce: int, n: int = 0, fee: int = 100) -> SignedTx:
    return SignedTx(f"0x{nonce:032x}{n:032x}", bytes([nonce, n]), SENDER, nonce, 50_000,
                    Fees(fee, fee // 10), T0 + timedelta(seconds=n))


def _slot(nonce: int, *refs: RequestRef, purpose: str = "submit_spend") -> Slot:
    return Slot(SENDER, nonce, purpose, Call("0x" + "ab" * 20, "8a320255" + "00" * 32), 50_000,
                refs, {"payment_id": f"p{nonce}"}, (_tx(nonce),))


def test_nonces_start_at_the_nodes_and_are_taken_once_each(pg_engine: Engine) -> None:
    uow = onchain_uow_factory(pg_engine)
    asked: list[int] = []

    def node() -> int:
        asked.append(1)
        return 7

    with uow() as w:
        assert w.transactions.take_nonce(SENDER, node) == 7
        w.commit()
    with uow() as w:
        assert w.transactions.take_nonce(SENDER, node) == 8
        # rolled back: 8 is not used and is taken again
    with uow() as w:
        assert w.transactions.take_nonce(SENDER, node) == 8
        assert w.transactions.take_nonce(SENDER, node) == 9
        w.commit()
    assert asked == [1]


def test_two_workers_never_share_a_nonce(pg_engine: Engine) -> None:
    uow = onchain_uow_factory(pg_engine)
    taken: list[int] = []
    first_holds = threading.Event()

    def worker(hold: bool) -> None:
        with uow() as w:
            if not hold:
                first_holds.wait(5)
            taken.append(w.transactions.take_nonce(SENDER, lambda: 0))
            if hold:
                first_holds.set()
                time.sleep(0.3)  # the other worker waits for this commit
            w.commit()

    run_threads(lambda: worker(True), lambda: worker(False))
    assert taken == [0, 1]


def test_a_request_gets_one_transaction_and_replacements_join_its_slot(
        pg_engine: Engine) -> None:
    uow = onchain_uow_factory(pg_engine)
    r1, r2 = RequestRef("req-1", 1), RequestRef("req-2", 1)
    with uow() as w:
        w.transactions.record(_slot(3, r1))
        w.transactions.record(_slot(4, r2, purpose="send_refund"))
        w.commit()
    with uow() as w, pytest.raises(IntegrityError):  # the same try of the same request again
        w.transactions.record(_slot(5, r1))
    with uow() as w:
        assert w.transactions.recorded([r1, RequestRef("req-1", 2), r2]) == {r1, r2}
        w.transactions.add_replacement(_tx(3, 1, fee=200))
        w.commit()
    with uow() as w:
        [slot] = w.transactions.in_flight(SENDER, ["submit_spend"])
        assert (slot.nonce, slot.requests, slot.meta) == (3, (r1,), {"payment_id": "p3"})
        assert [t.tx_hash for t in slot.txs] == [_tx(3).tx_hash, _tx(3, 1).tx_hash]
        assert slot.txs[1].fees == Fees(200, 20) and slot.txs[1].raw == bytes([3, 1])
        assert slot.call == _slot(3).call
        assert [s.nonce for s in w.transactions.in_flight(SENDER, ["submit_spend",
                                                                   "send_refund"])] == [3, 4]
        w.transactions.settle(SENDER, 3, mined_hash=_tx(3, 1).tx_hash, outcome="mined")
        w.commit()
    with uow() as w:
        assert w.transactions.in_flight(SENDER, ["submit_spend"]) == []


def test_the_same_spend_is_found_and_reorged_slots_are_followed_again(pg_engine: Engine) -> None:
    uow = onchain_uow_factory(pg_engine)
    spend = dataclasses.replace(_slot(3, RequestRef("req-1", 1)),
                                meta={"payment_id": "p1", "amount": 10**18})
    with uow() as w:
        w.transactions.record(spend)
        w.transactions.record(_slot(4, RequestRef("req-r", 1), purpose="send_refund"))
        assert w.transactions.same_spend("submit_spend", "p1", 10**18) == (SENDER, 3)
        assert w.transactions.same_spend("submit_spend", "p1", 2 * 10**18) is None
        w.transactions.settle(SENDER, 3, mined_hash=_tx(3).tx_hash, outcome="mined")
        w.transactions.settle(SENDER, 4, mined_hash=_tx(4).tx_hash, outcome="reverted")
        assert w.transactions.same_spend("submit_spend", "p1", 10**18) == (SENDER, 3)
        w.transactions.add_requests(SENDER, 3, [RequestRef("req-2", 1)])
        [again] = w.transactions.in_flight(SENDER, ["submit_spend"])
        assert again.requests == (RequestRef("req-1", 1), RequestRef("req-2", 1))
        w.transactions.settle(SENDER, 3, mined_hash=_tx(3).tx_hash, outcome="mined")
        assert w.transactions.reopen_from(SENDER, 4) == [4]
        assert [s.nonce for s in w.transactions.in_flight(SENDER, ["send_refund"])] == [4]
        assert w.transactions.reopen_from(SENDER, 0) == [3]
        w.transactions.settle(SENDER, 3, mined_hash=None, outcome="lost")
        assert w.transactions.same_spend("submit_spend", "p1", 10**18) is None


def test_requests_in_flight_are_not_claimed_again(pg_engine: Engine) -> None:
    from cardpay.handlers.sagas import EffectRequest
    from cardpay.postgres.uow import saga_uow_factory

    with saga_uow_factory(pg_engine)() as w:
        for n in range(3):
            w.effects.request(EffectRequest(f"req-{n}", "card_payment", f"p{n}",
                                            "submit_spend", {"n": n}, 1))
        w.commit()
    uow = onchain_uow_factory(pg_engine)
    with uow() as w:
        w.transactions.record(_slot(0, RequestRef("req-0", 1)))
        w.commit()
    with uow() as w:
        assert [r.request_id for r in w.transactions.claim_unsent(["submit_spend"], 10)] == \
            ["req-1", "req-2"]
        with uow() as other:  # locked by the first: skipped
            assert other.transactions.claim_unsent(["submit_spend"], 10) == []
    with saga_uow_factory(pg_engine)() as w:  # a retry is a new attempt: claimed again
        w.effects.request(EffectRequest("req-0", "card_payment", "p0", "submit_spend", {}, 2))
        w.commit()
    with uow() as w:
        claimed = w.transactions.claim_unsent(["submit_spend"], 1)
        assert [(r.request_id, r.attempt) for r in claimed] == [("req-1", 1)]
        assert ("req-0", 2) in [(r.request_id, r.attempt)
                                for r in w.transactions.claim_unsent(["submit_spend"], 10)]
