"""`retry` of quarantined items on the in-memory unit of work: through the normal path, once."""

from __future__ import annotations

import pytest

from cardpay.handlers.chain import ChainSinkHandler
from cardpay.handlers.payments import PaymentService
from cardpay.handlers.ports import QuarantineItem
from cardpay.handlers.quarantine import retry
from domain import commands as c
from domain.events import PaymentSpent
from domain.payment import Payment
from listener.ports import Cursor
from tests.fakes.storage import FakeDatabase
from tests.unit.test_chain_sink_handler import CHAIN, _batch, _hash, _spend, _transfer

pytestmark = pytest.mark.unit


def _rows(db: FakeDatabase) -> list[tuple[str, str | None, int]]:
    return [(r.key, r.resolution, r.attempts) for r in db.read().quarantine.list()]


def test_a_refused_spend_applies_on_retry_once_its_cause_is_gone() -> None:
    db = FakeDatabase()
    sink = ChainSinkHandler(db.uow, chain_id=CHAIN)
    # p1 spent in block 2; a second spend log of p1 in block 4 is refused and quarantined
    sink.apply("main", _batch(None, 4, [_spend("p1", 2, 0), _spend("p1", 4, 0)]))
    (refused,) = db.read().quarantine.list()
    still = retry(db.uow, refused.id)
    assert still.outcome == "still_quarantined" and "p1" in still.message
    assert _rows(db) == [(refused.key, None, 1)]
    # the first spend is retracted (as a reorg does): p1 is unspent again, the refused log applies
    first = _spend("p1", 2, 0)
    assert PaymentService(db.uow).submit(c.RetractSpend(
        command_id="retract", payment_id="p1", at=first.at, evidence=first.evidence,
        reason="test: block orphaned"))
    done = retry(db.uow, refused.id)
    assert done.outcome == "applied"
    spends = [e for e in db.read().events.events_of_type(PaymentSpent)]
    assert [e.evidence.block_hash for e in spends] == [_hash(2), _hash(4)]
    assert Payment.rehydrate("p1", db.read().events.load("p1")).spend_evidence == spends[1].evidence
    assert db.read().claims.outcome(refused.key) == "applied"
    assert _rows(db) == [(refused.key, "ConfirmSpend applied on retry", 2)]
    # a retry of a resolved item changes nothing
    assert retry(db.uow, refused.id).outcome == "resolved"
    assert len(db.read().events.events_of_type(PaymentSpent)) == 2


def test_an_unmatched_transfer_stays_quarantined_and_counts_the_attempt() -> None:
    db = FakeDatabase()
    ChainSinkHandler(db.uow, chain_id=CHAIN).apply(
        "main", _batch(None, 2, [_transfer(2, 0, "0x" + "71" * 32, 5)]))
    (row,) = db.read().quarantine.list()
    result = retry(db.uow, row.id)
    assert result.outcome == "still_quarantined" and "matches no submitted refund" in result.message
    assert _rows(db) == [(row.key, None, 1)]
    assert db.read().claims.outcome(row.key) is None


def test_duplicates_resolve_and_undecodable_logs_are_not_retryable() -> None:
    db = FakeDatabase()
    sink = ChainSinkHandler(db.uow, chain_id=CHAIN)
    sink.apply("main", _batch(None, 2, [_spend("p1", 2, 0)]))
    sink.apply("main", _batch(Cursor(2, _hash(2)), 3, [_spend("p1", 2, 0), _spend("p2", 3, 0)]))
    with db.uow() as uow:
        uow.quarantine.add(QuarantineItem("listener:main", "malformed:1", "not a log", {"raw": 1}))
        uow.quarantine.add(QuarantineItem("projector:payments", "events@7", "gap", {}))
        uow.commit()
    duplicate, malformed, projector = db.read().quarantine.list()
    assert retry(db.uow, duplicate.id).outcome == "duplicate"
    assert retry(db.uow, malformed.id).outcome == "not_retryable"
    gap = retry(db.uow, projector.id)
    assert gap.outcome == "not_retryable" and "cardpay projections reset payments" in gap.message
    assert retry(db.uow, 999).outcome == "not_found"
    assert [r.resolved_at is not None for r in db.read().quarantine.list()] == [True, False, False]
    assert len(db.read().events.events_of_type(PaymentSpent)) == 2


def test_a_quarantined_network_body_is_not_retryable_and_says_why() -> None:
    db = FakeDatabase()
    with db.uow() as w:
        w.quarantine.add(QuarantineItem("network", "webhook:w1", "body is not JSON",
                                        {"body": "x", "body_base64": "eA==", "headers": {}}))
        w.commit()
    (row,) = db.read().quarantine.list()
    result = retry(db.uow, row.id)
    assert result.outcome == "not_retryable" and "new id" in result.message
    assert _rows(db) == [("webhook:w1", None, 0)]
