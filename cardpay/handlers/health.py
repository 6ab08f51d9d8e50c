"""What the system's stored state says about its health: the figures the state gauges export
(`cardpay.metrics.state`) and the readiness rule of `/readyz`.

The figures are read by one cheap query set (`cardpay.postgres.health.read_state`) in whichever
process refreshes them (the API's loop); the rules on them are here, without I/O, so they are
tested on plain values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_MAX_FEED_LAG = 10_000
"""Events a consumer of the PostgreSQL event log (projector, sagas) may be behind the newest
event before `/readyz` says not ready: far beyond a burst, well before a read model is stale
enough to mislead finance."""


@dataclass(frozen=True, slots=True)
class SystemState:
    """The stored state's health figures at one moment."""

    ledger_balanced: bool
    """Per ledger (currency), the accounts' debits equal their credits, posted and pending
    alike: every journal that was ever written balanced (TigerBeetle's invariant)."""
    ledger_transfers: Mapping[str, int]
    """Ledger transfers recorded so far (all processes), by transfer code (what it is for)."""
    open_exceptions: Mapping[str, int] = field(default_factory=dict)
    """Unresolved quarantine/exception rows by source (`network`, `saga:card_payment`, ...)."""
    saga_timers_due: int = 0
    """Saga timers already due and not yet fired: a saga worker that is down or behind."""
    feed_lag: Mapping[str, int] = field(default_factory=dict)
    """Per consumer of the PostgreSQL event log: events recorded beyond its stored position
    (consumers on Kafka store Kafka offsets, which the database cannot compare: not here)."""
    listener_cursor_age_s: Mapping[str, float] = field(default_factory=dict)
    """Per chain cursor: seconds since the listener last moved it."""


def feed_lag_reasons(feed_lag: Mapping[str, int], max_lag: int) -> list[str]:
    """Why the feeds make the system not ready (empty: they are within `max_lag` events)."""
    return [f"consumer {consumer} is {lag} events behind the event log (bound {max_lag})"
            for consumer, lag in sorted(feed_lag.items()) if lag > max_lag]
