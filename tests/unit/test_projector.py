"""The payments read model (pure `evolve`) and the projector loop over in-memory feed and store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from cardpay.bootstrap.project import run_projector
from cardpay.metrics.projector import ProjectorMetrics
from cardpay.runtime.supervise import Backoff
from domain import commands as c
from domain import events as e
from domain.events import ChainEvidence, RecordedEvent
from domain.money import Currency, Money
from domain.payment import Payment, handle
from domain.serialization import to_data
from projector.errors import FeedChanged, OutOfOrder
from projector.feed import FeedMessage, Positions, RejectedMessage
from projector.payments import PaymentRow, evolve, is_duplicate
from projector.runner import Projector
from tests.fakes.projection import CommitFailed, FakeFeed, FakeProjectionStore

pytestmark = pytest.mark.unit

EURE = Currency("EURe", 18)
USDCE = Currency("USDCe", 6)
T0 = datetime(2024, 9, 17, 10, 0, tzinfo=UTC)
SAFE = "0x" + "5a" * 20
SPEND_TX = "0x" + "a1" * 32


def proof(n: int, tx: str = SPEND_TX) -> ChainEvidence:
    return ChainEvidence(chain_id=100, block_number=36_000_000 + n, block_hash=f"0x{n:064x}",
                         tx_hash=tx, log_index=n)


def envelope(stream: str, version: int) -> dict[str, object]:
    return {"stream_id": stream, "version": version, "occurred_at": T0 + timedelta(minutes=version),
            "correlation_id": "corr", "causation_id": f"cmd-{stream}-{version}"}


def authorized(stream: str = "p1", version: int = 1, units: int = 25_000_000) -> e.DomainEvent:
    return e.PaymentAuthorized(**envelope(stream, version), account=SAFE,  # type: ignore[arg-type]
                               amount=Money(units, USDCE), merchant="Bakery", mcc="5462",
                               expires_at=T0 + timedelta(days=7))


def spent(stream: str = "p1", version: int = 1, units: int = 25_000_000,
          tx: str = SPEND_TX) -> e.DomainEvent:
    return e.PaymentSpent(**envelope(stream, version), account=SAFE,  # type: ignore[arg-type]
                          amount=Money(units, USDCE), evidence=proof(version, tx))


def refund_requested(stream: str, version: int, units: int, rid: str = "r1") -> e.DomainEvent:
    return e.RefundRequested(**envelope(stream, version),  # type: ignore[arg-type]
                             refund_id=rid, amount=Money(units, USDCE), reason="merchant credit")


def refunded(stream: str, version: int, units: int, rid: str = "r1") -> e.DomainEvent:
    return e.PaymentRefunded(**envelope(stream, version),  # type: ignore[arg-type]
                             refund_id=rid, amount=Money(units, USDCE), evidence=proof(50))


CHAIN_FIELDS = ("payment_id", "status", "last_version", "account", "currency", "decimals",
                "authorized", "spent", "cleared", "refunded", "spend_tx")


def chain(r: PaymentRow | None) -> dict[str, object]:
    """The chain side of a row (the figures these tests are about; the network side and the
    times have tests of their own)."""
    assert r is not None
    return {k: getattr(r, k) for k in CHAIN_FIELDS}


def row(**fields: object) -> PaymentRow:
    base: dict[str, object] = {"payment_id": "p1", "status": "held", "last_version": 2,
                               "account": SAFE, "currency": "USDCe", "decimals": 6,
                               "authorized": 25_000_000, "spent": 25_000_000,
                               "spend_tx": SPEND_TX}
    base.update(fields)
    return PaymentRow(**base)  # type: ignore[arg-type]


# -- evolve, one event type at a time -------------------------------------------------------------
def test_authorized_opens_the_row() -> None:
    assert chain(evolve(None, authorized(units=25_000_000))) == chain(PaymentRow(
        payment_id="p1", status="authorized", last_version=1, account=SAFE, currency="USDCe",
        decimals=6, authorized=25_000_000))


def test_spent_opens_a_chain_first_row() -> None:
    assert chain(evolve(None, spent(units=12_340_000))) == chain(PaymentRow(
        payment_id="p1", status="held", last_version=1, account=SAFE, currency="USDCe",
        decimals=6, spent=12_340_000, spend_tx=SPEND_TX))


def test_spent_after_the_authorization() -> None:
    first = evolve(None, authorized(units=30_000_000))
    assert chain(evolve(first, spent(version=2, units=25_000_000))) == chain(row(authorized=30_000_000))


def test_cleared() -> None:
    event = e.PaymentCleared(**envelope("p1", 3), amount=Money(20_000_000, USDCE))  # type: ignore[arg-type]
    assert chain(evolve(row(), event)) == chain(row(status="cleared", last_version=3, cleared=20_000_000))


def test_reversed() -> None:
    event = e.PaymentReversed(**envelope("p1", 3), reason="expired")  # type: ignore[arg-type]
    assert chain(evolve(row(), event)) == chain(row(status="reversed", last_version=3))


@pytest.mark.parametrize(
    "event",
    [
        refund_requested("p1", 3, 5_000_000),
        e.RefundSubmitted(**envelope("p1", 3), refund_id="r1",  # type: ignore[arg-type]
                          tx_hash="0x" + "cd" * 32),
    ],
    ids=["requested", "submitted"],
)
def test_refund_requested_and_submitted_only_move_the_version(event: e.DomainEvent) -> None:
    assert chain(evolve(row(), event)) == chain(row(last_version=3))


def test_refunded_adds_and_refund_retracted_subtracts() -> None:
    current = evolve(row(refunded=1_000_000), refunded("p1", 3, 5_000_000))
    assert chain(current) == chain(row(last_version=3, refunded=6_000_000))
    retracted = e.RefundRetracted(**envelope("p1", 4), refund_id="r1",  # type: ignore[arg-type]
                                  amount=Money(5_000_000, USDCE), evidence=proof(50),
                                  reason="reorg")
    assert chain(evolve(current, retracted)) == chain(row(last_version=4, refunded=1_000_000))


def test_settled() -> None:
    event = e.PaymentSettled(**envelope("p1", 3), batch_id="2024-09-18")  # type: ignore[arg-type]
    assert chain(evolve(row(status="cleared", cleared=1), event)) == chain(row(
        status="settled", last_version=3, cleared=1))


def test_spend_retracted_empties_the_spend() -> None:
    event = e.SpendRetracted(**envelope("p1", 3), evidence=proof(2),  # type: ignore[arg-type]
                             reason="reorg")
    assert chain(evolve(row(), event)) == chain(row(status="retracted", last_version=3, spent=0,
                                       spend_tx=None))
    # The transaction mined again (another block): held again, with its spend back.
    again = evolve(evolve(row(), event), spent(version=4, units=25_000_000))
    assert chain(again) == chain(row(last_version=4))


def test_every_payment_event_type_is_evolved() -> None:
    """A real stream from the aggregate, every event type in it, folds into the expected row."""
    payment = Payment("p1")
    at = iter(T0 + timedelta(minutes=i) for i in range(100))
    ids = iter(f"cmd-{i}" for i in range(100))

    def base() -> dict[str, object]:
        return {"command_id": next(ids), "payment_id": "p1", "at": next(at)}

    def usdc(units: int) -> Money:
        return Money(units, USDCE)

    for cmd in [
        c.AuthorizePayment(**base(), account=SAFE, amount=usdc(30_000_000),  # type: ignore[arg-type]
                           merchant="m", mcc="5462", expires_at=T0 + timedelta(days=7)),
        c.ConfirmSpend(**base(), account=SAFE, amount=usdc(25_000_000),  # type: ignore[arg-type]
                       evidence=proof(1)),
        c.RetractSpend(**base(), evidence=proof(1), reason="reorg"),  # type: ignore[arg-type]
        c.ConfirmSpend(**base(), account=SAFE, amount=usdc(25_000_000),  # type: ignore[arg-type]
                       evidence=proof(2)),
        c.RequestRefund(**base(), refund_id="r1", amount=usdc(5_000_000),  # type: ignore[arg-type]
                        reason="credit"),
        c.RecordRefundSubmission(**base(), refund_id="r1",  # type: ignore[arg-type]
                                 tx_hash="0x" + "cd" * 32),
        c.ConfirmRefund(**base(), refund_id="r1", amount=usdc(5_000_000),  # type: ignore[arg-type]
                        evidence=proof(7)),
        c.RetractRefund(**base(), refund_id="r1", evidence=proof(7),  # type: ignore[arg-type]
                        reason="reorg"),
        c.ConfirmRefund(**base(), refund_id="r1", amount=usdc(5_000_000),  # type: ignore[arg-type]
                        evidence=proof(8)),
        c.ClearPayment(**base(), amount=usdc(18_000_000)),  # type: ignore[arg-type]
        c.SettlePayment(**base(), batch_id="b1"),  # type: ignore[arg-type]
    ]:
        handle(payment, cmd)
    events = payment.pending_events
    assert {type(ev) for ev in events} == set(e.CHAIN_EVENTS) - {e.PaymentReversed}
    current: PaymentRow | None = None
    for event in events:
        assert not is_duplicate(current, event)
        current = evolve(current, event)
        assert is_duplicate(current, event)
    assert chain(current) == chain(PaymentRow(
        payment_id="p1", status="settled", last_version=len(events), account=SAFE,
        currency="USDCe", decimals=6, authorized=30_000_000, spent=25_000_000,
        cleared=18_000_000, refunded=5_000_000, spend_tx=SPEND_TX))


# -- duplicates and gaps --------------------------------------------------------------------------
def test_is_duplicate() -> None:
    assert not is_duplicate(None, spent(version=1))
    current = row(last_version=2)
    assert is_duplicate(current, spent(version=1))
    assert is_duplicate(current, spent(version=2))
    assert not is_duplicate(current, spent(version=3))
    assert not is_duplicate(current, spent(version=4))  # a gap is not a duplicate: evolve says


@pytest.mark.parametrize(
    ("current", "version"),
    [(None, 2), (None, 0), (row(last_version=2), 4), (row(last_version=2), 2),
     (row(last_version=2), 1)],
    ids=["first-is-not-1", "zero", "gap", "same-version", "older"],
)
def test_an_event_out_of_order_is_refused(current: PaymentRow | None, version: int) -> None:
    with pytest.raises(OutOfOrder):
        evolve(current, refund_requested("p1", version, 1))


# -- the projector loop ---------------------------------------------------------------------------
def recorded(event: e.DomainEvent, position: int = 0) -> RecordedEvent:
    return RecordedEvent(stream_id=event.stream_id, version=event.version, position=position,
                         type=type(event).__name__, data=to_data(event), recorded_at=T0)


def messages(events: list[e.DomainEvent], source: str = "events",
             start: int = 0) -> list[FeedMessage]:
    return [FeedMessage(source, start + i, recorded(ev, start + i)) for i, ev in enumerate(events)]


def run(projector: Projector) -> None:
    async def go() -> None:
        await projector.start()
        await projector.run_until_idle(idle_polls=1, timeout=0)
        await projector.stop()

    asyncio.run(go())


def stream(pid: str, *units: int) -> list[e.DomainEvent]:
    """A spend of units[0], then one confirmed refund per further amount."""
    events = [spent(pid, 1, units[0], tx="0x" + pid.encode().hex().rjust(64, "0"))]
    for n, amount in enumerate(units[1:]):
        events.append(refunded(pid, 2 + n, amount, rid=f"r{n}"))
    return events


def test_a_redelivered_event_is_applied_once() -> None:
    a = stream("a", 100, 10, 20)
    feed = FakeFeed(messages([a[0], a[1], a[1], a[0], a[2]]))
    store = FakeProjectionStore()
    projector = Projector("payments", feed, store.uow)
    run(projector)
    assert projector.applied == 3
    assert store.rows["a"].last_version == 3
    assert store.rows["a"].refunded == 30
    assert store.quarantined == []
    assert store.positions == {"payments": {"events": 5}}


def test_restarting_from_older_positions_changes_nothing() -> None:
    a = stream("a", 100, 10, 20)
    store = FakeProjectionStore()
    run(Projector("payments", FakeFeed(messages(a)), store.uow))
    rows = dict(store.rows)
    store.positions["payments"] = {"events": 1}  # as if the positions lagged behind the rows
    again = Projector("payments", FakeFeed(messages(a)), store.uow)
    run(again)
    assert again.applied == 0
    assert store.rows == rows
    assert store.positions == {"payments": {"events": 3}}


def test_a_gap_is_quarantined_and_the_rest_applied() -> None:
    a = stream("a", 100, 10, 20, 30)  # versions 1..4
    b = stream("b", 50, 5)
    batch = [a[0], b[0], a[2], b[1], a[3]]  # a's version 2 is missing
    feed = FakeFeed(messages(batch))
    store = FakeProjectionStore()
    projector = Projector("payments", feed, store.uow)
    run(projector)
    assert store.rows["a"] == evolve(None, a[0])  # stopped before the gap
    assert store.rows["b"].last_version == 2 and store.rows["b"].refunded == 5
    assert [(q.source, q.key) for q in store.quarantined] == [
        ("projector:payments", "events@2"), ("projector:payments", "events@4")]
    assert "expected 2" in store.quarantined[0].reason
    assert store.quarantined[0].payload["version"] == 3
    assert store.quarantined[0].payload["stream_id"] == "a"
    assert store.positions == {"payments": {"events": 5}}  # past the quarantined events too
    assert projector.applied == 3


def test_rejected_feed_records_are_quarantined_and_passed() -> None:
    a = stream("a", 100, 10)
    ok = messages(a, "topic:0")
    records: list[FeedMessage | RejectedMessage] = [
        ok[0],
        RejectedMessage("topic:0", 1, b"\xffnot json", "not a recorded event"),
        FeedMessage("topic:0", 2, recorded(a[1], 2)),
        RejectedMessage("topic:1", 7, b"{}", "missing type"),
    ]
    store = FakeProjectionStore()
    run(Projector("payments", FakeFeed(records), store.uow))
    assert [(q.source, q.key, q.reason) for q in store.quarantined] == [
        ("projector:payments", "topic:0@1", "not a recorded event"),
        ("projector:payments", "topic:1@7", "missing type"),
    ]
    assert store.quarantined[0].payload == {"raw": "\ufffdnot json"}
    assert store.positions == {"payments": {"topic:0": 3, "topic:1": 8}}
    assert store.rows["a"].refunded == 10


def test_a_batch_of_only_rejected_records_still_saves_positions() -> None:
    feed = FakeFeed([RejectedMessage("events", 0, b"x", "garbage")])
    store = FakeProjectionStore()
    projector = Projector("payments", feed, store.uow)

    async def go() -> int:
        await projector.start()
        return await projector.run_once(timeout=0)

    assert asyncio.run(go()) == 1
    assert store.positions == {"payments": {"events": 1}}
    assert len(store.quarantined) == 1
    assert store.rows == {}


def test_an_undecodable_event_is_quarantined() -> None:
    a = stream("a", 100)
    bad = RecordedEvent(stream_id="a", version=2, position=1, type="PaymentTeleported",
                        data={"payload": {}, "meta": {}}, recorded_at=T0)
    store = FakeProjectionStore()
    run(Projector("payments", FakeFeed([*messages(a), FeedMessage("events", 1, bad)]),
                  store.uow))
    assert store.rows["a"].last_version == 1
    (q,) = store.quarantined
    assert (q.key, q.payload["type"]) == ("events@1", "PaymentTeleported")
    assert q.reason.startswith("undecodable event")
    assert store.positions == {"payments": {"events": 2}}


def test_positions_are_saved_in_the_same_commit_as_the_rows() -> None:
    a, b = stream("a", 100, 1, 2, 3), stream("b", 50, 4, 5)
    events = [a[0], b[0], a[1], a[2], b[1], a[3], b[2]]
    feed = FakeFeed(messages(events))
    store = FakeProjectionStore()
    run(Projector("payments", feed, store.uow, batch_size=2))
    assert len(store.commits) == 4
    for n, commit in enumerate(store.commits):
        end = min(2 * (n + 1), len(events))
        # Each commit carries its batch's rows and the position just past that batch.
        assert commit.positions == {"payments": {"events": end}}
        expected: dict[str, PaymentRow] = {}
        for event in events[:end]:
            expected[event.stream_id] = evolve(expected.get(event.stream_id), event)
        assert {r.payment_id: r for r in commit.rows} == {
            ev.stream_id: expected[ev.stream_id] for ev in events[2 * n:end]}
    assert store.rows["a"].refunded == 6 and store.rows["b"].refunded == 9


def test_a_failed_commit_leaves_rows_and_positions_unchanged() -> None:
    a = stream("a", 100, 1, 2)
    feed = FakeFeed(messages(a[:1]))
    store = FakeProjectionStore()
    projector = Projector("payments", feed, store.uow)
    run(projector)
    before = store.snapshot()

    for event in a[1:]:
        feed.append(FeedMessage("events", event.version - 1, recorded(event)))
    feed.append(RejectedMessage("events", 3, b"?", "garbage"))
    store.fail_commits = True

    async def crash() -> None:
        await projector.start()
        await projector.run_once(timeout=0)

    with pytest.raises(CommitFailed):
        asyncio.run(crash())
    assert store.snapshot() == before

    # The restarted projector resumes from the stored positions and ends where a clean run would.
    store.fail_commits = False
    restarted = Projector("payments", feed, store.uow)
    run(restarted)
    assert feed.started_with == {"events": 1}
    assert restarted.applied == 2
    assert (store.rows["a"].last_version, store.rows["a"].refunded) == (3, 3)
    assert store.positions == {"payments": {"events": 4}}
    assert [q.key for q in store.quarantined] == ["events@3"]


def test_the_projector_resumes_after_its_stored_positions() -> None:
    a = stream("a", 100, 1)
    store = FakeProjectionStore(positions={"payments": {"events": 1}, "other": {"events": 9}})
    store.rows["a"] = evolve(None, a[0])
    feed = FakeFeed(messages(a))
    projector = Projector("payments", feed, store.uow)
    run(projector)
    assert feed.started_with == {"events": 1}
    assert feed.stopped
    assert projector.applied == 1
    assert store.positions["other"] == {"events": 9}
    assert store.rows["a"].refunded == 1


def test_the_supervised_loop_resumes_from_stored_positions_after_a_failed_commit() -> None:
    """The feed has moved past a batch whose commit failed; the loop must not skip that batch."""
    feed = FakeFeed(messages([spent("p1"), spent("p2"), spent("p3")]))
    store = FakeProjectionStore(fail_commits=True)
    projector = Projector("payments", feed, store.uow, batch_size=1)
    registry = CollectorRegistry()
    metrics = ProjectorMetrics(registry)

    async def go() -> str:
        stop = asyncio.Event()
        task = asyncio.create_task(run_projector(
            projector, stop, backoff=Backoff(0.001, 0.01, 0.0), metrics=metrics, poll_timeout=0))
        for _ in range(500):
            if registry.get_sample_value("cardpay_supervised_errors_total",
                                         {"component": "projector", "error": "CommitFailed"}):
                break
            await asyncio.sleep(0.001)
        assert store.rows == {}  # every commit so far failed
        store.fail_commits = False
        for _ in range(500):
            if len(store.rows) == 3:
                break
            await asyncio.sleep(0.005)
        stop.set()
        return await task

    assert asyncio.run(go()) == "stopped"
    assert sorted(store.rows) == ["p1", "p2", "p3"]
    assert store.positions == {"payments": {"events": 3}}
    assert feed.stopped
    assert registry.get_sample_value("cardpay_projector_applied_total",
                                     {"projector": "payments"}) == 3


def test_a_changed_feed_ends_the_supervised_loop_without_retrying() -> None:
    class Recreated(FakeFeed):
        async def start(self, positions: Positions) -> None:
            self.starts = getattr(self, "starts", 0) + 1
            raise FeedChanged("topic recreated")

    feed = Recreated([])
    projector = Projector("payments", feed, FakeProjectionStore().uow)
    with pytest.raises(FeedChanged):
        asyncio.run(run_projector(projector, asyncio.Event(), backoff=Backoff(0.001, 0.01, 0.0)))
    assert feed.starts == 1


def test_until_idle_projects_everything_then_returns() -> None:
    feed = FakeFeed(messages([spent("p1"), spent("p2")]))
    store = FakeProjectionStore()
    projector = Projector("payments", feed, store.uow, batch_size=1)
    assert asyncio.run(run_projector(projector, asyncio.Event(), until_idle=True,
                                     poll_timeout=0)) == "idle"
    assert sorted(store.rows) == ["p1", "p2"] and feed.stopped


# -- the network side and the times ----------------------------------------------------------------
NETWORK_STEPS = st.lists(st.tuples(
    st.sampled_from(["increase", "reverse", "reverse_all", "clear", "clear_final", "expire",
                     "return", "unreturn", "force_post", "settle"]),
    st.integers(min_value=1, max_value=40)), max_size=12)


def network_command(kind: str, base: dict[str, Any], amount: Money) -> c.Command:
    match kind:
        case "increase":
            return c.IncreaseAuthorization(**base, amount=amount)
        case "reverse":
            return c.ReverseAuthorization(**base, amount=amount)
        case "reverse_all":
            return c.ReverseAuthorization(**base)
        case "clear":
            return c.RecordClearing(**base, amount=amount, final=False)
        case "clear_final":
            return c.RecordClearing(**base, amount=amount)
        case "expire":
            return c.ExpireAuthorization(**base, by_network=True)
        case "return":
            return c.RecordReturn(**base, amount=amount)
        case "unreturn":
            return c.ReverseReturn(**base, amount=amount)
        case "force_post":
            return c.ForcePost(**base, account=SAFE, amount=amount, merchant="Hotel", mcc="7011")
        case _:
            return c.SettlePayment(**base, batch_id="b1")


@settings(max_examples=150, deadline=None)
@given(steps=NETWORK_STEPS)
def test_the_network_figures_are_the_aggregates(steps: list[tuple[str, int]]) -> None:
    """Any stream of network messages the aggregate takes folds into a row whose network figures
    are the aggregate's own, with the times of the events that set them."""
    from domain.errors import DomainError

    payment = Payment("p1")
    n = iter(range(1000))

    def base(minutes: int) -> dict[str, Any]:
        return {"command_id": f"cmd-{next(n)}", "payment_id": "p1",
                "at": T0 + timedelta(minutes=minutes)}

    def usdc(units: int) -> Money:
        return Money(units * 1_000_000, USDCE)

    handle(payment, c.AuthorizePayment(**base(0), account=SAFE, amount=usdc(50),  # type: ignore[arg-type]
                                       merchant="Hotel", mcc="7011",
                                       expires_at=T0 + timedelta(days=30)))
    for minute, (kind, units) in enumerate(steps, 1):
        cmd = network_command(kind, base(minute), usdc(units))
        try:
            handle(payment, cmd)
        except DomainError:
            continue  # refused: records nothing
    current: PaymentRow | None = None
    for event in payment.pending_events:
        current = evolve(current, event)
    assert current is not None
    net = payment.network
    assert (current.network_status, current.authorized, current.held, current.posted,
            current.network_cleared, current.reversed, current.released, current.over_cleared,
            current.returned, current.expires_at, current.merchant, current.mcc) == (
        net.status.value, net.authorized_units, net.held_units, net.posted_units,
        net.cleared_units, net.reversed_units, net.released_units, net.over_cleared_units,
        net.returned_units, net.expires_at, net.merchant, net.mcc)
    events = payment.pending_events
    assert current.first_at == events[0].occurred_at and current.last_at == events[-1].occurred_at
    assert current.authorized_at == events[0].occurred_at
    clearings = [ev for ev in events if isinstance(ev, (e.ClearingRecorded, e.PaymentForcePosted))
                 and ev.amount.units > 0]
    assert current.cleared_at == (clearings[0].occurred_at if clearings else None)
    settled = [ev for ev in events if isinstance(ev, e.PaymentSettled)]
    assert current.settled_at == (settled[0].occurred_at if settled else None)
