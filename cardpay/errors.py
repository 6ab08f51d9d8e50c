"""The application shell's error family: everything the shell raises derives from `CardpayError`.

The domain has its own (`domain.errors.DomainError`: a rule of the model refused a command), the
listener its own (`listener.errors.ListenerError`), the projector its own
(`projector.errors.ProjectorError`). A `ConcurrencyConflict` is none of those: nothing is wrong
with the command; another writer got there first and the handler decides it again.
"""

from __future__ import annotations


class CardpayError(Exception):
    """Base of the shell's errors."""


class ConcurrencyConflict(CardpayError):
    """Another writer appended to the stream first (optimistic concurrency in the event store)."""
