"""The listener's sink (the service layer) on the in-memory unit of work: no I/O.

These are the rules `cardpay.handlers.chain` owns: one unit of work per range, idempotent claims,
bad input quarantined (never dropped, never a crash), a stale cursor refused, reorged blocks
rolled back completely, and refund transfers matched whichever side is seen first.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from cardpay.handlers.chain import ChainSinkHandler, StaleCursor
from cardpay.handlers.payments import PaymentService
from cardpay.handlers.ports import Card, ChainReading
from domain import commands as c
from domain.authorization import Allowance
from domain.events import ChainEvidence, PaymentRefunded, PaymentSpent, SpendRetracted
from domain.money import Currency, Money
from listener.classify import Activity, Kind
from listener.logs import Log
from listener.ports import AllowanceChange, BlockRef, ChainBatch, Cursor, Rejected
from tests.fakes.storage import FakeDatabase

pytestmark = pytest.mark.unit

EURE = Currency("EURe", 18)
NOW = datetime(2026, 6, 8, tzinfo=UTC)
SAFE = "0x" + "5a" * 20
TOKEN = "0x" + "e0" * 20
CHAIN = 31337


def _hash(block: int, branch: str = "a") -> str:
    return "0x" + f"{branch}{block:063x}"


def _evidence(block: int, index: int, branch: str = "a") -> ChainEvidence:
    return ChainEvidence(chain_id=CHAIN, block_number=block, block_hash=_hash(block, branch),
                         tx_hash=f"0x{block * 100 + index:064x}", log_index=index)


def _spend(pid: str, block: int, index: int, units: int = 10**18,
           branch: str = "a") -> c.ConfirmSpend:
    ev = _evidence(block, index, branch)
    return c.ConfirmSpend(command_id=f"chain:{CHAIN}:{ev.block_hash}:{index}", payment_id=pid,
                          at=NOW, account=SAFE, amount=Money(units, EURE), evidence=ev)


def _transfer(block: int, index: int, tx_hash: str, units: int) -> c.RecordSettlementTransfer:
    ev = ChainEvidence(chain_id=CHAIN, block_number=block, block_hash=_hash(block),
                       tx_hash=tx_hash, log_index=index)
    return c.RecordSettlementTransfer(command_id=f"chain:{CHAIN}:{ev.block_hash}:{index}", at=NOW,
                                      recipient=SAFE, token=TOKEN, amount=Money(units, EURE),
                                      evidence=ev)


def _blocks(first: int, last: int, branch: str = "a") -> tuple[BlockRef, ...]:
    return tuple(BlockRef(n, _hash(n, branch), _hash(n - 1, branch)) for n in range(first, last + 1))


def _batch(previous: Cursor | None, last: int, commands: list[c.ConfirmSpend |
           c.RecordSettlementTransfer], *, first: int | None = None, branch: str = "a",
           rejected: tuple[Rejected, ...] = ()) -> ChainBatch:
    start = first if first is not None else (previous.block_number + 1 if previous else 1)
    return ChainBatch(cursor=Cursor(last, _hash(last, branch)), previous=previous,
                      commands=commands, rejected=rejected, blocks=_blocks(start, last, branch))


@pytest.fixture
def db() -> FakeDatabase:
    return FakeDatabase()


@pytest.fixture
def sink(db: FakeDatabase) -> ChainSinkHandler:
    return ChainSinkHandler(db.uow, chain_id=CHAIN)


def _spent_ids(db: FakeDatabase) -> list[str]:
    return [e.stream_id for e in db.read().events.events_of_type(PaymentSpent)]


def test_a_range_commits_its_events_claims_and_cursor_together(
        db: FakeDatabase, sink: ChainSinkHandler) -> None:
    sink.apply("main", _batch(None, 3, [_spend("p1", 2, 0), _spend("p2", 2, 1), _spend("p3", 3, 0)]))
    assert _spent_ids(db) == ["p1", "p2", "p3"]
    view = db.read()
    assert view.chain.load_cursor("main") == Cursor(3, _hash(3))
    assert view.claims.outcome(f"chain:{CHAIN}:{_hash(2)}:1") == "applied"
    assert [b.number for b in view.chain.blocks_above("main", -1)] == [3, 2, 1]
    assert db.commits == 1


def test_a_repeated_log_is_quarantined_as_a_duplicate_and_applied_once(
        db: FakeDatabase, sink: ChainSinkHandler) -> None:
    sink.apply("main", _batch(None, 2, [_spend("p1", 2, 0)]))
    # a second range that (wrongly) holds the same log again, in bulk with another spend
    sink.apply("main", _batch(Cursor(2, _hash(2)), 3, [_spend("p1", 2, 0), _spend("p2", 3, 0)]))
    assert _spent_ids(db) == ["p1", "p2"]
    (row,) = db.read().quarantine.list()
    assert row.key == f"duplicate:chain:{CHAIN}:{_hash(2)}:0"
    assert row.payload["command_type"] == "ConfirmSpend"
    assert row.block_hash == _hash(2)


def test_a_refused_command_is_quarantined_and_the_range_still_commits(
        db: FakeDatabase, sink: ChainSinkHandler) -> None:
    # the second log claims to spend the same payment again: the model refuses it
    sink.apply("main", _batch(None, 3, [_spend("p1", 2, 0), _spend("p1", 3, 0)]))
    view = db.read()
    assert _spent_ids(db) == ["p1"]
    (row,) = view.quarantine.list()
    assert row.key == f"chain:{CHAIN}:{_hash(3)}:0" and "p1" in row.reason
    assert view.claims.outcome(row.key) == "quarantined"
    assert view.chain.load_cursor("main") == Cursor(3, _hash(3))


def test_a_malformed_log_is_quarantined_with_its_block(
        db: FakeDatabase, sink: ChainSinkHandler) -> None:
    bad = Rejected("malformed:x", "data is not 32 bytes", {"blockHash": _hash(2).upper()})
    sink.apply("main", _batch(None, 2, [], rejected=(bad,)))
    (row,) = db.read().quarantine.list()
    assert (row.key, row.reason, row.block_hash) == ("malformed:x", "data is not 32 bytes",
                                                     _hash(2))


def test_a_batch_read_from_a_moved_cursor_changes_nothing(
        db: FakeDatabase, sink: ChainSinkHandler) -> None:
    sink.apply("main", _batch(None, 2, [_spend("p1", 2, 0)]))
    with pytest.raises(StaleCursor):
        sink.apply("main", _batch(None, 3, [_spend("p2", 3, 0)], first=1))
    assert _spent_ids(db) == ["p1"]
    assert db.read().chain.load_cursor("main") == Cursor(2, _hash(2))


def test_rollback_retracts_orphaned_effects_and_forgets_their_claims(
        db: FakeDatabase, sink: ChainSinkHandler) -> None:
    sink.apply("main", _batch(None, 4, [_spend("p1", 2, 0), _spend("p2", 4, 0)]))
    retracted = sink.rollback("main", BlockRef(3, _hash(3), _hash(2)), Cursor(4, _hash(4)))
    assert retracted == 1
    view = db.read()
    retractions = view.events.events_of_type(SpendRetracted)
    assert [e.stream_id for e in retractions] == ["p2"]
    assert view.chain.load_cursor("main") == Cursor(3, _hash(3))
    assert view.claims.outcome(f"chain:{CHAIN}:{_hash(4)}:0") is None
    assert view.claims.outcome(f"chain:{CHAIN}:{_hash(2)}:0") == "applied"
    assert [b.number for b in view.chain.blocks_above("main", -1)] == [3, 2, 1]
    # the new branch's block 4 holds another spend of p3: it applies
    sink.apply("main", _batch(Cursor(3, _hash(3)), 4, [_spend("p3", 4, 0, branch="b")],
                              branch="b"))
    assert _spent_ids(db) == ["p1", "p2", "p3"]


def test_rollback_of_the_same_blocks_twice_retracts_once(
        db: FakeDatabase, sink: ChainSinkHandler) -> None:
    sink.apply("main", _batch(None, 2, [_spend("p1", 2, 0)]))
    assert sink.rollback("main", BlockRef(1, _hash(1), _hash(0)), Cursor(2, _hash(2))) == 1
    # the kept blocks are gone with the first rollback; nothing rests on block 2 any more
    assert sink.rollback("main", BlockRef(1, _hash(1), _hash(0)), Cursor(1, _hash(1))) == 0
    assert len(db.read().events.events_of_type(SpendRetracted)) == 1


def _refund_requested(db: FakeDatabase, units: int) -> PaymentService:
    service = PaymentService(db.uow)
    service.submit(c.ConfirmSpend(command_id="spend", payment_id="p1", at=NOW, account=SAFE,
                                  amount=Money(10 * units, EURE), evidence=_evidence(1, 0)))
    service.submit(c.RequestRefund(command_id="ask", payment_id="p1", at=NOW, refund_id="r1",
                                   amount=Money(units, EURE), reason="merchant credit"))
    return service


def _submission(tx_hash: str) -> c.RecordRefundSubmission:
    return c.RecordRefundSubmission(command_id="sent", payment_id="p1", at=NOW, refund_id="r1",
                                    tx_hash=tx_hash)


def test_a_refund_transfer_seen_after_its_submission_confirms_it(
        db: FakeDatabase, sink: ChainSinkHandler) -> None:
    service = _refund_requested(db, 5)
    tx = "0x" + "77" * 32
    assert service.record_refund_submission(_submission(tx), recipient=SAFE, token=TOKEN, amount=5)
    sink.apply("main", _batch(None, 2, [_transfer(2, 0, tx, 5)]))
    (refunded,) = db.read().events.events_of_type(PaymentRefunded)
    assert refunded.stream_id == "p1" and refunded.amount == Money(5, EURE)
    assert db.read().quarantine.list() == []


def test_a_refund_transfer_seen_first_waits_in_quarantine_until_its_submission(
        db: FakeDatabase, sink: ChainSinkHandler) -> None:
    service = _refund_requested(db, 5)
    tx = "0x" + "78" * 32
    sink.apply("main", _batch(None, 2, [_transfer(2, 0, tx, 5)]))
    view = db.read()
    (row,) = view.quarantine.list()
    assert "matches no submitted refund" in row.reason
    assert view.claims.outcome(row.key) is None  # not claimed: it can still be matched
    assert service.record_refund_submission(_submission(tx), recipient=SAFE, token=TOKEN, amount=5)
    view = db.read()
    assert [e.refund_id for e in view.events.events_of_type(PaymentRefunded)] == ["r1"]
    assert view.quarantine.list() == []
    # a retry of the submission is a duplicate and changes nothing
    assert not service.record_refund_submission(_submission(tx), recipient=SAFE, token=TOKEN,
                                                amount=5)
    assert len(db.read().events.events_of_type(PaymentRefunded)) == 1


def test_a_transfer_of_another_amount_does_not_confirm_the_refund(
        db: FakeDatabase, sink: ChainSinkHandler) -> None:
    service = _refund_requested(db, 5)
    tx = "0x" + "79" * 32
    service.record_refund_submission(_submission(tx), recipient=SAFE, token=TOKEN, amount=5)
    sink.apply("main", _batch(None, 2, [_transfer(2, 0, tx, 6)]))
    assert db.read().events.events_of_type(PaymentRefunded) == []
    assert len(db.read().quarantine.list()) == 1


def test_a_reorged_refund_transfer_is_retracted_and_can_match_again(
        db: FakeDatabase, sink: ChainSinkHandler) -> None:
    service = _refund_requested(db, 5)
    tx = "0x" + "7a" * 32
    service.record_refund_submission(_submission(tx), recipient=SAFE, token=TOKEN, amount=5)
    sink.apply("main", _batch(None, 2, [_transfer(2, 0, tx, 5)]))
    assert sink.rollback("main", BlockRef(1, _hash(1), _hash(0)), Cursor(2, _hash(2))) == 1
    # the same transaction re-mined in another block confirms the refund again
    again = c.RecordSettlementTransfer(
        command_id=f"chain:{CHAIN}:{_hash(2, 'b')}:0", at=NOW, recipient=SAFE, token=TOKEN,
        amount=Money(5, EURE), evidence=ChainEvidence(chain_id=CHAIN, block_number=2,
                                                      block_hash=_hash(2, "b"), tx_hash=tx,
                                                      log_index=0))
    sink.apply("main", _batch(Cursor(1, _hash(1)), 2, [again], branch="b"))
    refunds = db.read().events.events_of_type(PaymentRefunded)
    assert [e.evidence.block_hash for e in refunds] == [_hash(2), _hash(2, "b")]


def test_payment_service_applies_a_command_once(db: FakeDatabase) -> None:
    service = PaymentService(db.uow)
    spend = _spend("p9", 5, 0)
    assert service.submit(spend)
    assert not service.submit(spend)
    assert _spent_ids(db) == ["p9"]


def test_a_repeated_log_alone_in_its_range_is_a_duplicate_and_keeps_its_claim(
        db: FakeDatabase, sink: ChainSinkHandler) -> None:
    """The one-by-one path (a range with a single command) detects repeats by the claim too."""
    sink.apply("main", _batch(None, 2, [_spend("p1", 2, 0)]))
    sink.apply("main", _batch(Cursor(2, _hash(2)), 3, [_spend("p1", 2, 0)]))
    view = db.read()
    assert _spent_ids(db) == ["p1"]
    (row,) = view.quarantine.list()
    assert row.key == f"duplicate:chain:{CHAIN}:{_hash(2)}:0"
    assert view.claims.outcome(f"chain:{CHAIN}:{_hash(2)}:0") == "applied"


def test_a_repeated_refund_transfer_alone_keeps_the_original_claim(
        db: FakeDatabase, sink: ChainSinkHandler) -> None:
    service = _refund_requested(db, 5)
    tx = "0x" + "7b" * 32
    service.record_refund_submission(_submission(tx), recipient=SAFE, token=TOKEN, amount=5)
    transfer = _transfer(2, 0, tx, 5)
    sink.apply("main", _batch(None, 2, [transfer]))
    sink.apply("main", _batch(Cursor(2, _hash(2)), 3, [transfer]))
    view = db.read()
    assert len(view.events.events_of_type(PaymentRefunded)) == 1
    assert view.claims.outcome(transfer.command_id) == "applied"
    assert [r.key for r in view.quarantine.list()] == [f"duplicate:{transfer.command_id}"]


# -- registered Safes' balances and allowances follow the range --------------------------------------
OTHER = "0x" + "77" * 20
ROLES = "0x" + "70" * 20


def _activity(block: int, index: int, sender: str, recipient: str, units: int,
              branch: str = "a") -> Activity:
    log = Log(TOKEN, (), "0x", block, _hash(block, branch), f"0x{block * 100 + index:064x}", 0,
              index)
    return Activity(log, Kind.OTHER, TOKEN, "EURe", sender, recipient, units, None, NOW)


def _register(db: FakeDatabase, *, with_allowance: bool = False) -> None:
    with db.uow() as uow:
        uow.cards.add(Card("c1", SAFE, TOKEN, EURE, roles_module=ROLES if with_allowance
                           else None),
                      ChainReading(1, _hash(1), 1_000, Allowance(50, 50, 50, 86_400, 0)))
        uow.commit()


def test_transfers_in_and_out_of_a_registered_safe_move_its_balance_and_a_reorg_undoes_it(
        db: FakeDatabase, sink: ChainSinkHandler) -> None:
    _register(db)
    sink.apply("main", dataclasses.replace(_batch(None, 3, [], first=1), activity=[
        _activity(1, 0, OTHER, SAFE, 999),  # at the reading's block: already counted
        _activity(2, 0, OTHER, SAFE, 300), _activity(3, 1, SAFE, OTHER, 100),
        _activity(3, 2, OTHER, "0x" + "66" * 20, 5)]))
    balance = db.read().cards.balance(SAFE, TOKEN)
    assert balance is not None and (balance.balance, balance.as_of_block) == (1_200, 3)
    sink.rollback("main", BlockRef(2, _hash(2), _hash(1)), Cursor(3, _hash(3)))
    balance = db.read().cards.balance(SAFE, TOKEN)
    assert balance is not None and (balance.balance, balance.as_of_block) == (1_300, 2)


def test_allowance_changes_follow_and_an_unattributable_one_is_quarantined(
        db: FakeDatabase, sink: ChainSinkHandler) -> None:
    _register(db, with_allowance=True)
    with db.uow() as uow:  # a second token on the same Roles module: SetAllowance is ambiguous
        uow.cards.add(Card("c2", SAFE, OTHER, EURE, roles_module=ROLES),
                      ChainReading(1, _hash(1), 0, Allowance(9, 9, 9, 86_400, 0)))
        uow.commit()
    stamp = int(NOW.timestamp())
    sink.apply("main", dataclasses.replace(_batch(None, 2, [], first=1), allowances=[
        AllowanceChange(ROLES, 2, _hash(2), 0, stamp, token=TOKEN, consumed=20, new_balance=30),
        AllowanceChange(ROLES, 2, _hash(2), 1, stamp, set_to=Allowance(1, 1, 1, 1, stamp))]))
    left = db.read().cards.allowance(SAFE, TOKEN)
    assert left is not None and left.balance == 30
    [item] = db.read().quarantine.list()
    assert item.key == f"allowance:{_hash(2)}:1" and item.block_hash == _hash(2)


# -- spends our relayer sent confirm the authorization's payment -----------------------------------
def _link(db: FakeDatabase, chain_payment_id: str, payment_id: str) -> None:
    from cardpay.handlers.onchain import spend_link

    with db.uow() as uow:
        uow.references.put(spend_link(chain_payment_id), payment_id)
        uow.commit()


@pytest.mark.parametrize("spends", [1, 3], ids=["one_by_one", "in_bulk"])
def test_a_linked_spend_is_confirmed_on_the_authorization_payment(
        db: FakeDatabase, sink: ChainSinkHandler, spends: int) -> None:
    commands = [_spend(f"chain-{i}", 2, i) for i in range(spends)]
    _link(db, "chain-0", "auth-1")  # ours: linked before it was broadcast
    sink.apply("main", _batch(None, 2, commands))
    assert sorted(_spent_ids(db)) == sorted(["auth-1", *[f"chain-{i}" for i in range(1, spends)]])
    assert db.read().events.load("chain-0") == []


def test_a_linked_spend_is_retracted_from_the_authorization_payment_by_a_reorg(
        db: FakeDatabase, sink: ChainSinkHandler) -> None:
    _link(db, "chain-0", "auth-1")
    sink.apply("main", _batch(None, 2, [_spend("chain-0", 2, 0)]))
    sink.rollback("main", BlockRef(1, _hash(1), _hash(0)), Cursor(2, _hash(2)))
    kinds = [type(e) for e in db.read().events.load("auth-1")]
    assert kinds == [PaymentSpent, SpendRetracted]


def test_a_ranges_ledger_moves_are_booked_in_chain_order(
        db: FakeDatabase, sink: ChainSinkHandler) -> None:
    """Found by reconciling a lifecycle: a Safe overcommitted by the network's stand-in approval
    could pay a spend only thanks to a refund that landed just before it, in the same listener
    range. Booking the range's spends first (the bulk path) sent the Safe's mirror below zero
    and the ledger refused the spend's movement; in chain order both are booked."""
    from domain.ledger.chart import AccountKind, ChartOfAccounts
    from domain.ledger.model import Transfer

    chart = ChartOfAccounts("EURe")
    unit = 10**18
    service = PaymentService(db.uow)
    for pid, amount in (("auth-r", 10), ("auth-a", 15)):
        service.submit(c.AuthorizePayment(
            command_id=f"{pid}:auth", payment_id=pid, at=NOW, account=SAFE,
            amount=Money(amount * unit, EURE), merchant="Shop", mcc="5411",
            expires_at=datetime(2026, 6, 15, tzinfo=UTC)))
    with db.uow() as uow:  # the ledger follows the Safe: its mirror holds 20
        uow.ledger.create_accounts([*chart.house_accounts(), chart.cardholder(SAFE),
                                    chart.safe_mirror(SAFE), chart.exposure(SAFE)])
        uow.ledger.create_transfers([Transfer("seed", chart.safe_mirror(SAFE).id,
                                              chart.cardholder(SAFE).id, 20 * unit, "EURe",
                                              "chain_balance")], NOW)
        uow.commit()
    _link(db, "chain-r", "auth-r")
    sink.apply("main", _batch(None, 2, [_spend("chain-r", 2, 0, 10 * unit)]))  # mirror 10
    tx = "0x" + "99" * 32
    service.submit(c.RequestRefund(command_id="ask", payment_id="auth-r", at=NOW,
                                   refund_id="r1", amount=Money(8 * unit, EURE), reason="return"))
    assert service.record_refund_submission(
        c.RecordRefundSubmission(command_id="sent", payment_id="auth-r", at=NOW,
                                 refund_id="r1", tx_hash=tx),
        recipient=SAFE, token=TOKEN, amount=8 * unit)
    _link(db, "chain-a", "auth-a")
    # one range: the refund (block 3), then auth-a's spend of 15 and someone else's (block 4)
    sink.apply("main", _batch(Cursor(2, _hash(2)), 4, [
        _spend("chain-a", 4, 0, 15 * unit), _spend("chain-x", 4, 1, unit),
        _transfer(3, 0, tx, 8 * unit)]))

    view = db.read()
    assert [q.reason for q in view.quarantine.list()] == []
    mirror, settlement = view.ledger.lookup_accounts(
        [chart.safe_mirror(SAFE).id, chart.account_id(AccountKind.ONCHAIN_SETTLEMENT)])
    assert mirror.debits_posted - mirror.credits_posted == (20 - 10 + 8 - 15) * unit
    assert settlement.debits_posted - settlement.credits_posted == (10 - 8 + 15) * unit
