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
