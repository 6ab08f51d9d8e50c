"""The projector's error family: everything `projector` raises derives from `ProjectorError`."""

from __future__ import annotations


class ProjectorError(Exception):
    """Base of the projector's errors."""


class OutOfOrder(ProjectorError):
    """An event that does not follow the row's last version (the runner quarantines it)."""


class FeedChanged(ProjectorError):
    """The stored positions no longer describe this feed: resuming would skip or misread events.

    Raised by `start` or `poll` when, for example, a Kafka topic was deleted and created again, or
    a stored offset lies outside what the topic holds. Not transient: the consumer must stop and
    its read model be rebuilt from the start of the feed (`cardpay projections reset NAME`).
    """
