"""One contract for the service layer's unit of work and repositories, run against the in-memory
fakes (tests/fakes/storage.py) and the PostgreSQL implementations (cardpay/postgres/).

What a handler relies on is written here once; a fake that passes it can stand in for PostgreSQL
in the handler unit tests, and a PostgreSQL change that breaks it is caught on the real server.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from cardpay.errors import ConcurrencyConflict
from cardpay.handlers.ports import (
    BalanceMove,
    Card,
    CardExists,
    ChainReading,
    Delivery,
    ExpectedRefund,
    IndexedBalance,
    QuarantineItem,
    UnitOfWork,
    UnmatchedTransfer,
)
from domain.authorization import Allowance, CardStatus
from domain.events import PaymentRefunded, PaymentSpent
from domain.money import Currency, Money
from listener.classify import Activity, Kind
from listener.logs import Log
from listener.ports import AllowanceChange, BlockRef, Cursor
from tests.eventsourcing_helpers import refund_requested, spent
from tests.fakes.storage import FakeDatabase

Factory = Callable[[], UnitOfWork]


@pytest.fixture(params=[pytest.param("memory", marks=pytest.mark.unit),
                        pytest.param("postgres", marks=pytest.mark.integration)])
def uow(request: pytest.FixtureRequest) -> Factory:
    if request.param == "memory":
        return FakeDatabase().uow
    from cardpay.postgres.uow import unit_of_work_factory

    engine: Engine = request.getfixturevalue("pg_engine")
    return unit_of_work_factory(engine, None)


H1, H2, H3 = ("0x" + c * 64 for c in "123")


# -- the unit of work -----------------------------------------------------------------------------
def test_nothing_is_kept_without_commit(uow: Factory) -> None:
    with uow() as w:
        w.claims.claim("c1")
        w.events.append([spent("p1")])
        w.chain.save_cursor("main", Cursor(1, H1))
    with uow() as w:
        assert w.claims.claim("c1")
        assert w.events.load("p1") == []
        assert w.chain.load_cursor("main") is None


def test_everything_is_kept_with_commit(uow: Factory) -> None:
    with uow() as w:
        w.claims.claim("c1")
        w.events.append([spent("p1")])
        w.quarantine.add(QuarantineItem("listener:main", "k", "bad", {"a": 1}))
        w.commit()
    with uow() as w:
        assert not w.claims.claim("c1")
        assert w.events.load("p1") == [spent("p1")]
        assert [r.key for r in w.quarantine.list()] == ["k"]


def test_a_savepoint_undoes_only_what_happened_inside(uow: Factory) -> None:
    with uow() as w:
        w.claims.claim("outside")
        with pytest.raises(RuntimeError), w.savepoint():
            w.claims.claim("inside")
            w.events.append([spent("p1")])
            raise RuntimeError("refused")
        with w.savepoint():
            w.claims.claim("kept")
        w.commit()
    with uow() as w:
        assert not w.claims.claim("outside") and not w.claims.claim("kept")
        assert w.claims.claim("inside")
        assert w.events.load("p1") == []


def test_append_refuses_a_version_another_writer_took(uow: Factory) -> None:
    with uow() as w:
        w.events.append([spent("p1")])
        w.commit()
    with uow() as w, pytest.raises(ConcurrencyConflict):
        w.events.append([spent("p1", version=1)])


# -- the event store's queries for the handlers ----------------------------------------------------
def test_chain_effects_finds_spends_and_refunds_by_block_newest_first(uow: Factory) -> None:
    def refunded(stream: str, version: int, block_hash: str) -> PaymentRefunded:
        s = spent(stream)
        assert isinstance(s, PaymentSpent)
        return PaymentRefunded(stream_id=stream, version=version, occurred_at=s.occurred_at,
                               correlation_id="c", causation_id="x", refund_id=f"r{version}",
                               amount=s.amount,
                               evidence=type(s.evidence)(chain_id=1, block_number=9,
                                                         block_hash=block_hash, tx_hash=H3,
                                                         log_index=0))
    with uow() as w:
        w.events.append([spent("p1"), refund_requested("p1", 2), refunded("p1", 3, H2)])
        w.events.append([spent("p2")])
        w.commit()
    with uow() as w:
        found = w.events.chain_effects([H2, "0x" + "ab" * 32])
        assert [(type(e).__name__, e.stream_id) for e in found] == [
            ("PaymentSpent", "p2"), ("PaymentRefunded", "p1"), ("PaymentSpent", "p1")]
        assert w.events.chain_effects([H1]) == []
        assert [e.stream_id for e in w.events.load_many(["p2", "none"])["p2"]] == ["p2"]
        assert w.events.load_many(["none"]) == {"none": []}
        assert [(type(e).__name__, e.version) for e in w.events.load_many(["p1"])["p1"]] == [
            ("PaymentSpent", 1), ("RefundRequested", 2), ("PaymentRefunded", 3)]
        chain_only = w.events.load_many(["p1", "p2"], only=(PaymentSpent, PaymentRefunded))
        assert {sid: [(type(e).__name__, e.version) for e in events]
                for sid, events in chain_only.items()} == {
            "p1": [("PaymentSpent", 1), ("PaymentRefunded", 3)], "p2": [("PaymentSpent", 1)]}


# -- command claims --------------------------------------------------------------------------------
def test_claims_are_once_per_id_and_forgotten_with_their_block(uow: Factory) -> None:
    with uow() as w:
        assert w.claims.claim("a", block_hash=H1)
        assert not w.claims.claim("a", block_hash=H1)
        assert w.claims.claim_many({"a": H1, "b": H1, "c": H2, "d": None}) == {"b", "c", "d"}
        w.claims.set_outcome("b", "quarantined")
        assert w.claims.outcome("b") == "quarantined" and w.claims.outcome("zz") is None
        w.claims.forget_blocks([H1])
        assert w.claims.outcome("a") is None and w.claims.outcome("b") is None
        assert w.claims.outcome("c") == "applied" and w.claims.outcome("d") == "applied"
        w.claims.release(["c"])
        assert w.claims.claim("c")


# -- quarantine ------------------------------------------------------------------------------------
def test_quarantine_keeps_an_item_once_and_forgets_by_key_or_block(uow: Factory) -> None:
    with uow() as w:
        w.quarantine.add(QuarantineItem("listener:main", "k1", "first", {"n": 1}, H1))
        w.quarantine.add(QuarantineItem("listener:main", "k1", "again", {"n": 2}, H1))
        w.quarantine.add(QuarantineItem("projector:payments", "k2", "gap", {}, None))
        w.quarantine.add(QuarantineItem("listener:main", "k3", "bad", {"raw": [1, "x"]}, H2))
        rows = w.quarantine.list()
        assert [(r.key, r.reason) for r in rows] == [("k1", "first"), ("k2", "gap"), ("k3", "bad")]
        assert [r.key for r in w.quarantine.list("listener:")] == ["k1", "k3"]
        assert w.quarantine.get(rows[2].id) == rows[2] and rows[2].payload == {"raw": [1, "x"]}
        w.quarantine.forget_blocks([H1])
        w.quarantine.forget("k2")
        assert [r.key for r in w.quarantine.list()] == ["k3"]


def test_quarantine_resolution_and_attempts_are_kept(uow: Factory) -> None:
    with uow() as w:
        w.quarantine.add(QuarantineItem("listener:main", "k1", "first", {}))
        w.quarantine.add(QuarantineItem("listener:main", "k2", "second", {}))
        one, two = w.quarantine.list()
        w.quarantine.attempted(one.id, "still refused")
        w.quarantine.resolve(two.id, "applied on retry")
        w.commit()
    with uow() as w:
        one, two = w.quarantine.list()
        assert (one.reason, one.attempts, one.resolved_at) == ("still refused", 1, None)
        assert (two.resolution, two.attempts) == ("applied on retry", 1)
        assert two.resolved_at is not None
        assert [r.key for r in w.quarantine.list(include_resolved=False)] == ["k1"]
        assert w.quarantine.get(10**9) is None


# -- chain state -----------------------------------------------------------------------------------
def _activity(block: int, block_hash: str, index: int) -> Activity:
    log = Log("0x" + "ee" * 20, (), "0x", block, block_hash, H3, 0, index)
    return Activity(log, Kind.CARD_SPEND, "0x" + "ee" * 20, "EURe", "0x" + "01" * 20,
                    "0x" + "02" * 20, 5, "0x" + "01" * 20, datetime(2026, 1, 1, tzinfo=UTC))


def test_cursor_blocks_and_activity(uow: Factory) -> None:
    with uow() as w:
        assert w.chain.load_cursor("main") is None
        w.chain.save_cursor("main", Cursor(5, H1))
        w.chain.save_cursor("main", Cursor(6, H2))
        w.chain.keep_blocks("main", [BlockRef(n, f"0x{n:064x}", f"0x{n - 1:064x}")
                                     for n in range(1, 7)], below=3)
        w.chain.keep_blocks("other", [BlockRef(9, H3, H2)], below=0)
        w.chain.add_activity(1, [_activity(5, f"0x{5:064x}", 0), _activity(6, H2, 1)])
        w.chain.add_activity(1, [_activity(6, H2, 1)])  # again: kept once
        w.commit()
    with uow() as w:
        assert w.chain.load_cursor("main") == Cursor(6, H2)
        assert [b.number for b in w.chain.blocks_above("main", -1)] == [6, 5, 4, 3]
        assert w.chain.blocks_above("main", 4)[0] == BlockRef(6, f"0x{6:064x}", f"0x{5:064x}")
        w.chain.forget_above("main", 1, 4)
        assert [b.number for b in w.chain.blocks_above("main", -1)] == [4, 3]
        assert [b.number for b in w.chain.blocks_above("other", -1)] == [9]


# -- refund matching -------------------------------------------------------------------------------
def test_an_expected_refund_is_matched_once_by_its_facts(uow: Factory) -> None:
    token, to = "0x" + "AB" * 20, "0x" + "CD" * 20
    with uow() as w:
        w.refunds.expect(ExpectedRefund("p1", "r1", H3.upper().replace("0X", "0x"), to, token, 7))
        assert w.refunds.match(H3, to.lower(), token, 8, log_key="l0", block_hash=H1) is None
        hit = w.refunds.match(H3, to, token.lower(), 7, log_key="l1", block_hash=H1)
        assert hit is not None and (hit.payment_id, hit.refund_id) == ("p1", "r1")
        assert w.refunds.match(H3, to, token, 7, log_key="l2", block_hash=H2) is None
        w.refunds.forget_blocks([H1])  # the matching transfer was reorged out
        again = w.refunds.match(H3, to, token, 7, log_key="l3", block_hash=H2)
        assert again is not None and again.refund_id == "r1"


def test_unmatched_transfers_are_taken_oldest_first_once(uow: Factory) -> None:
    def seen(cid: str, block: str) -> UnmatchedTransfer:
        return UnmatchedTransfer(cid, H3, "0x" + "CD" * 20, "0x" + "ab" * 20, 7, block,
                                 {"command_id": cid})
    with uow() as w:
        w.refunds.keep_unmatched(seen("t1", H1))
        w.refunds.keep_unmatched(seen("t1", H1))
        w.refunds.keep_unmatched(seen("t2", H2))
        w.commit()
    with uow() as w:
        first = w.refunds.take_unmatched(H3, "0x" + "cd" * 20, "0x" + "AB" * 20, 7)
        assert first is not None and first.command_id == "t1" and first.command == {
            "command_id": "t1"}
        assert w.refunds.take_unmatched(H3, "0x" + "cd" * 20, "0x" + "ab" * 20, 8) is None
        w.refunds.forget_blocks([H2])  # t2's block was orphaned: it is not waiting any more
        assert w.refunds.take_unmatched(H3, "0x" + "cd" * 20, "0x" + "ab" * 20, 7) is None



def test_a_delivery_is_kept_with_its_answer_once_per_webhook_id(uow: Factory) -> None:
    at = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    first = Delivery("msg_1", "ab" * 32, 200, {"approved": True, "amount": 850}, at)
    with uow() as w:
        assert w.deliveries.get("msg_1") is None
        w.deliveries.record(first)
    with uow() as w:
        assert w.deliveries.get("msg_1") is None  # no commit, nothing kept
        w.deliveries.record(first)
        w.commit()
    with uow() as w:
        assert w.deliveries.get("msg_1") == first
        # refused by the time it would commit (Postgres sends the insert with the next round
        # trip, the fake refuses at once): the fake's ValueError, Postgres' IntegrityError
        with pytest.raises(Exception):  # noqa: B017
            w.deliveries.record(Delivery("msg_1", "cd" * 32, 409, {}, at))
            w.commit()
    with uow() as w:
        assert w.deliveries.get("msg_1") == first


# -- the card registry -----------------------------------------------------------------------------
SAFE_A, SAFE_B, ROLES_A = "0x" + "5a" * 20, "0x" + "5b" * 20, "0x" + "7a" * 20
EURE_T, USDC_T = "0x" + "e0" * 20, "0x" + "dc" * 20
EURE_C = Currency("EURe", 18)
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAILY = Allowance(100, 100, 100, 86_400, int(NOW.timestamp()) - 3_600)


def _card(card_id: str, safe: str = SAFE_A, **kw: Any) -> Card:
    return Card(card_id, safe.upper().replace("0X", "0x"), EURE_T, EURE_C, **kw)


def _block(n: int, fork: str = "0") -> str:
    return f"0x{n:062x}{fork * 2}"


def _move(safe: str, delta: int, n: int, index: int = 0, fork: str = "0") -> BalanceMove:
    return BalanceMove(safe, EURE_T, delta, n, _block(n, fork), index)


def test_cards_are_registered_once_listed_and_change_status(uow: Factory) -> None:
    with uow() as w:
        w.cards.add(_card("c1", roles_module=ROLES_A.upper().replace("0X", "0x"),
                          blocked_mccs=frozenset({7995, 5933}), velocity_limit=3,
                          velocity_window=timedelta(minutes=10)),
                    ChainReading(10, _block(10), 500, DAILY))
        w.cards.add(_card("c2", SAFE_B), ChainReading(10, _block(10), 7))
        with pytest.raises(CardExists):
            w.cards.add(_card("c1", SAFE_B), ChainReading(11, _block(11), 1))
        w.commit()
    with uow() as w:
        c1 = w.cards.get("c1")
        assert c1 is not None and c1.created_at is not None
        assert (c1.safe, c1.token, c1.roles_module, c1.currency) == (SAFE_A, EURE_T, ROLES_A,
                                                                     EURE_C)
        assert (c1.blocked_mccs, c1.velocity_limit, c1.velocity_window) == (
            frozenset({7995, 5933}), 3, timedelta(minutes=10))
        assert [c.card_id for c in w.cards.all()] == ["c1", "c2"]
        frozen = w.cards.set_status("c2", CardStatus.FROZEN)
        assert frozen is not None and frozen.status is CardStatus.FROZEN
        assert w.cards.set_status("nope", CardStatus.CLOSED) is None and w.cards.get("x") is None
        w.commit()
    with uow() as w:
        c2 = w.cards.get("c2")
        assert c2 is not None and c2.status is CardStatus.FROZEN


def test_lock_for_authorization_reads_the_snapshot_data(uow: Factory) -> None:
    with uow() as w:
        w.cards.add(_card("c1", roles_module=ROLES_A, velocity_limit=2,
                          velocity_window=timedelta(minutes=10)),
                    ChainReading(10, _block(10), 500, DAILY))
        w.cards.add(_card("c2"), ChainReading(99, _block(99), 1))  # same Safe: reading kept
        for minutes in (11, 9, 1, -1):  # two inside the window; one too old, one in the future
            w.cards.record_authorization("c1", NOW - timedelta(minutes=minutes))
        w.commit()
    with uow() as w:
        locked = w.cards.lock_for_authorization("c1", NOW)
        assert locked is not None
        assert (locked.card.card_id, locked.balance, locked.allowance,
                locked.recent_authorizations) == ("c1", 500, DAILY, 2)
        snap = locked.snapshot(Money(120, EURE_C))
        assert snap.funds() == Money(380, EURE_C) and snap.available(NOW) == Money(100, EURE_C)
        other = w.cards.lock_for_authorization("c2", NOW)
        assert other is not None and (other.balance, other.allowance) == (500, None)
        assert other.recent_authorizations == 0  # no velocity rule: not counted
        assert w.cards.lock_for_authorization("nope", NOW) is None


def test_transfers_move_registered_balances_once_after_the_reading(uow: Factory) -> None:
    with uow() as w:
        w.cards.add(_card("c1"), ChainReading(10, _block(10), 500))
        applied = w.cards.apply_transfers([
            _move(SAFE_A, +40, 10),  # at the reading's block: already in the balance
            _move(SAFE_A, +30, 11), _move(SAFE_A, -5, 12, 1),
            _move(SAFE_B, +99, 12),  # not registered
            BalanceMove(SAFE_A, USDC_T, 7, 12, _block(12), 2),  # another token
        ])
        assert applied == 2
        assert w.cards.apply_transfers([_move(SAFE_A, +30, 11)]) == 0  # the same log again
        w.commit()
    with uow() as w:
        assert w.cards.balance(SAFE_A.upper().replace("0X", "0x"), EURE_T) == IndexedBalance(
            SAFE_A, EURE_T, 525, 12, _block(12))
        assert w.cards.balance(SAFE_B, EURE_T) is None
        locked = w.cards.lock_for_authorization("c1", NOW)
        assert locked is not None and locked.balance == 525


def test_a_reorg_forgets_balance_moves_and_allowance_changes_by_block_hash(uow: Factory) -> None:
    stamp = int(NOW.timestamp())
    with uow() as w:
        w.cards.add(_card("c1", roles_module=ROLES_A), ChainReading(10, _block(10), 500, DAILY))
        w.cards.apply_transfers([_move(SAFE_A, +30, 11), _move(SAFE_A, -20, 12)])
        left = w.cards.apply_allowance_changes([
            AllowanceChange(ROLES_A, 11, _block(11), 3, stamp, token=EURE_T, consumed=20,
                            new_balance=80),
            AllowanceChange(ROLES_A, 12, _block(12), 4, stamp + 5, token=USDC_T, consumed=1,
                            new_balance=1),  # a token not tracked for this module
            AllowanceChange("0x" + "99" * 20, 12, _block(12), 5, stamp, token=EURE_T,
                            consumed=1, new_balance=1),  # a module not tracked
            AllowanceChange(ROLES_A, 12, _block(12), 6, stamp + 5,
                            set_to=Allowance(300, 300, 300, 86_400, stamp + 5)),
        ])
        assert left == []
        w.commit()
    with uow() as w:
        assert w.cards.allowance(SAFE_A, EURE_T) == Allowance(300, 300, 300, 86_400, stamp + 5)
        w.cards.forget_blocks([_block(12)])
        balance = w.cards.balance(SAFE_A, EURE_T)
        assert balance == IndexedBalance(SAFE_A, EURE_T, 530, 11, _block(11))
        consumed = w.cards.allowance(SAFE_A, EURE_T)
        assert consumed == Allowance(80, 100, 100, 86_400, DAILY.timestamp)
        w.cards.forget_blocks([_block(11)])
        assert w.cards.balance(SAFE_A, EURE_T) == IndexedBalance(SAFE_A, EURE_T, 500, 10,
                                                                 _block(10))
        assert w.cards.allowance(SAFE_A, EURE_T) == DAILY
        locked = w.cards.lock_for_authorization("c1", NOW)
        assert locked is not None and (locked.balance, locked.allowance) == (500, DAILY)


def test_a_set_allowance_with_no_token_is_not_guessed_between_tokens(uow: Factory) -> None:
    stamp = int(NOW.timestamp())
    with uow() as w:
        w.cards.add(_card("c1", roles_module=ROLES_A), ChainReading(10, _block(10), 5, DAILY))
        w.cards.add(Card("c2", SAFE_A, USDC_T, Currency("USDCe", 6), roles_module=ROLES_A),
                    ChainReading(10, _block(10), 5, DAILY))
        ambiguous = AllowanceChange(ROLES_A, 11, _block(11), 0, stamp,
                                    set_to=Allowance(1, 1, 1, 1, stamp))
        assert w.cards.apply_allowance_changes([ambiguous]) == [ambiguous]
        assert w.cards.allowance(SAFE_A, EURE_T) == DAILY
        assert w.cards.allowance(SAFE_A, USDC_T) == DAILY


# -- network references and settlement reports -----------------------------------------------------
def test_a_reference_keeps_its_first_payment_and_commits_with_the_unit(uow: Factory) -> None:
    with uow() as w:
        w.references.put("return:r1", "auth_1")
    with uow() as w:
        assert w.references.get("return:r1") is None  # no commit, nothing kept
        w.references.put("return:r1", "auth_1")
        w.references.put("return:r1", "auth_2")  # again: the first payment stays
        w.commit()
    with uow() as w:
        assert w.references.get("return:r1") == "auth_1"
        assert w.references.get("return:r2") is None
        w.references.put("spend:p9", "auth_9")
        assert w.references.get_many(["return:r1", "return:r2", "spend:p9", "return:r1"]) == {
            "return:r1": "auth_1", "spend:p9": "auth_9"}
        assert w.references.get_many([]) == {}


def test_a_settlement_report_is_kept_once_per_id(uow: Factory) -> None:
    report = {"lines": [{"business_mode": "issuer", "count": 2, "net": -850}], "currency": "EUR"}
    day = date(2026, 12, 1)
    with uow() as w:
        assert w.settlement_reports.add("vss_1", day, "EUR", report)
        w.commit()
    with uow() as w:
        assert not w.settlement_reports.add("vss_1", day, "EUR", {"lines": []})
        assert w.settlement_reports.get("vss_1") == report
        assert w.settlement_reports.get("vss_2") is None
