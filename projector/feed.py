"""The event feed a projector consumes: one Protocol, adapters for Kafka and the Postgres log.

A feed delivers recorded events at least once, in order per stream. Its position is a mapping from a
source name (a Kafka "topic:partition", or "events" for the Postgres log) to the next offset to read;
the consumer stores that mapping in the same transaction as its effects and hands it back to `start`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

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
