"""Several projector instances on one feed (a consumer group's members around a rebalance, or
two processes reading every partition): every event is applied exactly once and stored
positions never move back, whatever batch a member had polled when another took over.

Two `Projector`s share one in-memory store; each reads the same records through a feed whose
poll can be held between the fetch and the commit (a member that polled a batch, then lost its
partitions without noticing: a long GC pause, a database lock wait past the session timeout).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import pytest

from domain.events import DomainEvent, RecordedEvent
from domain.serialization import to_data
from projector.feed import FeedMessage, Positions, RejectedMessage, not_yet_stored
from projector.runner import Projector
from tests.fakes.projection import FakeFeed, FakeProjectionStore
from tests.support.workload import AT, expected_rows, payment_events

pytestmark = pytest.mark.unit

PARTITIONS = 3


def _records(payments: int, seed: int) -> list[FeedMessage]:
    """The events of `payments` payments on three partitions, a payment's events on one
    (the relay's key is the payment id), partitions interleaved as a fetch returns them."""
    by_partition: list[list[FeedMessage]] = [[] for _ in range(PARTITIONS)]
    for number, events in enumerate(payment_events(payments, seed=seed)):
        partition = by_partition[number % PARTITIONS]
        for event in events:
            source = f"t:{number % PARTITIONS}"
            partition.append(FeedMessage(source, len(partition), _recorded(event)))
    rng = random.Random(seed)
    out: list[FeedMessage] = []
    cursors = [0] * PARTITIONS
    while any(cursors[p] < len(by_partition[p]) for p in range(PARTITIONS)):
        p = rng.choice([p for p in range(PARTITIONS) if cursors[p] < len(by_partition[p])])
        out.append(by_partition[p][cursors[p]])
        cursors[p] += 1
    return out


def _recorded(event: DomainEvent) -> RecordedEvent:
    return RecordedEvent(stream_id=event.stream_id, version=event.version, position=0,
                         type=type(event).__name__, data=to_data(event), recorded_at=AT)


class HeldFeed:
    """A `FakeFeed` whose poll, once `hold()` is called, waits after fetching until `release()`."""

    def __init__(self, records: list[FeedMessage]) -> None:
        self.inner = FakeFeed(records)
        self._gate: asyncio.Event | None = None

    def hold(self) -> None:
        self._gate = asyncio.Event()

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()
        self._gate = None

    async def start(self, positions: Positions) -> None:
        await self.inner.start(positions)

    async def poll(self, max_messages: int, timeout: float) -> list[FeedMessage]:
        gate = self._gate
        batch = await self.inner.poll(max_messages, timeout)
        if gate is not None:
            await gate.wait()
        return batch

    def positions(self) -> dict[str, int]:
        return self.inner.positions()

    def take_rejected(self) -> list[RejectedMessage]:
        return self.inner.take_rejected()

    async def stop(self) -> None:
        await self.inner.stop()


@dataclass
class Member:
    projector: Projector
    feed: HeldFeed
    held: asyncio.Task[int] | None = None


def _member(store: FakeProjectionStore, records: list[FeedMessage], batch: int) -> Member:
    feed = HeldFeed(records)
    return Member(Projector("payments", feed, store.uow, batch_size=batch), feed)


async def _hold(member: Member) -> None:
    member.feed.hold()
    member.held = asyncio.create_task(member.projector.run_once(0))
    await asyncio.sleep(0)  # it fetches its batch and waits at the gate


async def _release(member: Member) -> None:
    if member.held is not None:
        member.feed.release()
        await member.held
        member.held = None


def _stored(store: FakeProjectionStore) -> dict[str, int]:
    return dict(store.positions.get("payments", {}))


def _assert_forward(before: dict[str, int], after: dict[str, int]) -> None:
    for source, position in before.items():
        assert after.get(source, -1) >= position, (source, before, after)


def test_a_batch_polled_before_another_member_took_over_is_fenced_not_applied() -> None:
    records = _records(60, seed=3)
    store = FakeProjectionStore()
    zombie, heir = _member(store, records, 25), _member(store, records, 1000)

    async def scenario() -> None:
        await zombie.projector.start()
        await heir.projector.start()
        await _hold(zombie)                      # polled 25 records, then stalls
        await heir.projector.run_until_idle(idle_polls=1, timeout=0)  # took everything over
        done = _stored(store)
        await _release(zombie)                   # wakes up and commits its stale batch
        assert _stored(store) == done            # nothing moved back
        await zombie.projector.run_until_idle(idle_polls=1, timeout=0)
        assert _stored(store) == done

    asyncio.run(scenario())
    assert zombie.projector.applied == 0 and zombie.projector.redelivered == 0
    assert zombie.projector.fenced == len(records)
    assert heir.projector.applied == len(records)
    assert store.rows == expected_rows(payment_events(60, seed=3))
    assert store.quarantined == []


def test_the_member_behind_skips_what_the_other_committed_and_applies_the_rest() -> None:
    records = _records(30, seed=4)
    store = FakeProjectionStore()
    first, second = _member(store, records, 20), _member(store, records, 35)

    async def scenario() -> None:
        await first.projector.start()
        await second.projector.start()            # both from nothing stored
        await first.projector.run_once(0)         # commits 20 records
        await second.projector.run_once(0)        # polled 35: the first 20 are fenced
        assert second.projector.fenced == 20 and second.projector.applied == 15

    asyncio.run(scenario())
    assert store.quarantined == []


@pytest.mark.parametrize("seed", range(40))
def test_any_interleaving_of_two_members_applies_every_event_once(seed: int) -> None:
    """Random schedules of two members reading every partition: full batches, batches held
    between fetch and commit, restarts from the stored positions (what a rebalance does). The
    stored positions never move back, every event is applied once (none delivered again to a
    row that had it, none quarantined) and the rows equal one uninterrupted projection."""
    rng = random.Random(seed)
    payments = payment_events(40, seed=seed)
    records = _records(40, seed=seed)
    store = FakeProjectionStore()
    members = [_member(store, records, rng.randint(1, 30)) for _ in range(2)]

    async def scenario() -> None:
        for member in members:
            await member.projector.start()
        for _ in range(40):
            member = rng.choice(members)
            action = rng.choice(["run", "hold", "release", "restart"])
            before = _stored(store)
            if action == "release":
                await _release(member)
            elif member.held is not None:
                continue
            elif action == "run":
                await member.projector.run_once(0)
            elif action == "hold":
                await _hold(member)
            else:
                await member.projector.stop()
                await member.projector.start()
            _assert_forward(before, _stored(store))
        for member in members:
            await _release(member)
            await member.projector.run_until_idle(idle_polls=1, timeout=0)

    asyncio.run(scenario())
    assert sum(m.projector.applied for m in members) == len(records)
    assert sum(m.projector.redelivered for m in members) == 0
    assert store.quarantined == []
    assert store.rows == expected_rows(payments)
    ends: dict[str, int] = {}
    for record in records:
        ends[record.source] = max(ends.get(record.source, 0), record.offset + 1)
    assert _stored(store) == ends


def test_not_yet_stored_keeps_records_at_or_past_their_source_position() -> None:
    records = [RejectedMessage("t:0", offset, b"", "x") for offset in range(4)]
    records += [RejectedMessage("t:1", 0, b"", "x")]
    kept = not_yet_stored(records, {"t:0": 2})
    assert [(r.source, r.offset) for r in kept] == [("t:0", 2), ("t:0", 3), ("t:1", 0)]


def test_each_batch_locks_its_own_sources_not_the_whole_projector() -> None:
    records = _records(9, seed=5)
    store = FakeProjectionStore()
    member = _member(store, [r for r in records if r.source == "t:1"], 100)

    async def scenario() -> None:
        await member.projector.start()
        await member.projector.run_once(0)

    asyncio.run(scenario())
    assert store.locks == ["projector:payments:t:1"]
