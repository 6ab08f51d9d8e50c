"""The event feed a projector consumes: one Protocol, adapters for Kafka and the Postgres log.

A feed delivers recorded events at least once, in order per stream. Its position is a mapping from a
source name (a Kafka "topic:partition", or "events" for the Postgres log) to the next offset to read;
the consumer stores that mapping in the same transaction as its effects and hands it back to `start`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from domain.events import RecordedEvent

Positions = Mapping[str, int]


@dataclass(frozen=True, slots=True)
class FeedMessage:
    source: str
    offset: int
    event: RecordedEvent


@dataclass(frozen=True, slots=True)
class RejectedMessage:
    """A feed record that is not a recorded event: the consumer quarantines it with its position."""

    source: str
    offset: int
    raw: bytes
    reason: str


class Feed(Protocol):
    async def start(self, positions: Positions) -> None:
        """Resume after the stored positions (next offset to read per source; absent = beginning).

        Raises `FeedChanged` if the positions cannot be honoured."""
        ...

    async def poll(self, max_messages: int, timeout: float) -> list[FeedMessage]:
        """Up to `max_messages` messages, waiting at most `timeout` seconds for the first one."""
        ...

    def positions(self) -> dict[str, int]:
        """Next offset per source after everything polled so far, rejected records included.

        Store this with the effects of the polled batch (and the rejected records' quarantine)."""
        ...

    def take_rejected(self) -> list[RejectedMessage]:
        """Records polled since the last call that could not be decoded (then forgotten here)."""
        ...

    async def stop(self) -> None: ...


def advance(positions: Positions, batch: list[FeedMessage]) -> dict[str, int]:
    """Positions after consuming `batch`: for every source, one past the highest offset seen."""
    result = dict(positions)
    for message in batch:
        nxt = message.offset + 1
        if nxt > result.get(message.source, 0):
            result[message.source] = nxt
    return result


class BoundedFeed:
    """A feed that never goes past `bound` (next offset per source; a source the bound does not
    name lets nothing through): what is polled beyond it is held back, in order, until
    `raise_bound` lets it through. A rebuild uses it to stop exactly where the live projector
    stands, so both can be compared at the same position while the live one keeps moving.
    (Records the inner feed rejects are its own: they change no read-model row.)"""

    def __init__(self, inner: Feed, bound: Positions) -> None:
        self._inner = inner
        self._bound = dict(bound)
        self._held: list[FeedMessage] = []
        self._released: dict[str, int] = {}

    def raise_bound(self, bound: Positions) -> None:
        for source, offset in bound.items():
            self._bound[source] = max(offset, self._bound.get(source, 0))

    def reached(self, bound: Positions) -> bool:
        """Whether everything before `bound` has been handed out, for every source it names (a
        source whose next message, held back, is at or past the bound has reached it: offsets
        may have gaps)."""
        here = self.positions()
        first: dict[str, int] = {}
        for m in self._held:
            first.setdefault(m.source, m.offset)
        beyond = {source for source, offset in first.items() if offset >= bound.get(source, 0)}
        return all(here.get(source, 0) >= offset or source in beyond
                   for source, offset in bound.items())

    def _allowed(self, message: FeedMessage) -> bool:
        return message.offset < self._bound.get(message.source, 0)

    async def start(self, positions: Positions) -> None:
        self._held, self._released = [], dict(positions)
        await self._inner.start(positions)

    async def poll(self, max_messages: int, timeout: float) -> list[FeedMessage]:
        if not self._held:
            self._held = await self._inner.poll(max_messages, timeout)
        out: list[FeedMessage] = []
        blocked: set[str] = set()
        keep: list[FeedMessage] = []
        for message in self._held:
            # per source in order: once one message of a source is held, its later ones wait
            if message.source in blocked or not self._allowed(message) or len(out) >= max_messages:
                blocked.add(message.source)
                keep.append(message)
            else:
                out.append(message)
        self._held = keep
        self._released = advance(self._released, out)
        return out

    def positions(self) -> dict[str, int]:
        """Past what was handed out; where nothing is held back, the inner feed's position
        (which also counts the records it rejected)."""
        inner = self._inner.positions()
        held = {m.source for m in self._held}
        out = dict(self._released)
        for source, offset in inner.items():
            if source not in held:
                out[source] = offset
        return out

    def take_rejected(self) -> list[RejectedMessage]:
        return self._inner.take_rejected()

    async def stop(self) -> None:
        await self._inner.stop()


class _Positioned(Protocol):
    @property
    def source(self) -> str: ...
    @property
    def offset(self) -> int: ...


P = TypeVar("P", bound=_Positioned)


def not_yet_stored(records: Iterable[P], stored: Positions) -> list[P]:
    """The records at or past their source's stored position (absent: nothing stored yet).

    The fence of a batch at commit time: a record below the stored position was committed by
    another transaction of the same consumer already (a group member that owned the partition
    before a rebalance, or a second instance on the same feed), so applying it again would
    count it twice in a projection that is not idempotent per row (sums per day)."""
    return [record for record in records if record.offset >= stored.get(record.source, 0)]
