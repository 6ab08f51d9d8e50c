"""Ports the domain's callers depend on. Adapters are named by technology (`PostgresEventStore`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from domain.events import DomainEvent, RecordedEvent


class EventStore(Protocol):
    """Append-only streams with optimistic concurrency and one global order for readers."""

    def load(self, stream_id: str) -> list[DomainEvent]:
        """All events of the stream in version order (empty if the stream does not exist)."""
        ...

    def append(self, events: Sequence[DomainEvent]) -> list[RecordedEvent]:
        """Append events whose versions follow the stream's last one; raise a concurrency conflict
        (the store's error, not a DomainError) if another writer got there first. Returns them with
        their global positions."""
        ...

    def read_after(self, position: int, limit: int) -> list[RecordedEvent]:
        """Events with a global position above `position`, in order. A reader that resumes from the
        last position it saw never misses an event committed later with a lower position."""
        ...

