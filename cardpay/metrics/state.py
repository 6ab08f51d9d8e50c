"""Gauges of the stored state, refreshed by one process's loop (the API's): ledger balance check
and transfers, open exceptions, saga timers overdue, event-log consumers' lag, chain cursors'
age, reconciliation breaks per currency.

They are state, not events: any process could read them, so exactly one exports them (the API,
which always runs), and every alert on them reads one series. A label value that disappears
(an exception source with none left open) is set to 0, not left at its last value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from cardpay.handlers.health import SystemState
from domain.money import FIAT_CURRENCIES


class _Labelled:
    """A one-label gauge whose series that are no longer reported drop to 0."""

    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge
        self._seen: set[str] = set()

    def set_all(self, values: Mapping[str, float]) -> None:
        for value in self._seen - set(values):
            self._gauge.labels(value).set(0)
        for value, figure in values.items():
            self._gauge.labels(value).set(figure)
        self._seen |= set(values)


class StateMetrics:
    def __init__(self, registry: CollectorRegistry, *,
                 currencies: Iterable[str] = tuple(FIAT_CURRENCIES)) -> None:
        """`currencies`: those the reconciliation gauge exports from the start, NaN until
        the first reconciliation (then 0 when it found nothing in them)."""
        self.registry = r = registry
        self.ledger_balanced = Gauge(
            "cardpay_ledger_balanced",
            "1 when every ledger's accounts have equal debits and credits (posted and pending: "
            "every journal balanced), 0 otherwise; NaN until the first refresh (unknown is "
            "neither)", registry=r)
        self.ledger_balanced.set(math.nan)
        self._ledger_transfers = _Labelled(Gauge(
            "cardpay_ledger_transfers",
            "Ledger transfers recorded by every process, by transfer code (a running total "
            "read from the database: use increase())", ["code"], registry=r))
        self._open_exceptions = _Labelled(Gauge(
            "cardpay_open_exceptions",
            "Unresolved exceptions and quarantined items, by source (network, saga:<kind>, "
            "saga-worker:<name>, listener sources, ...)", ["source"], registry=r))
        self.saga_timers_due = Gauge(
            "cardpay_saga_timers_due",
            "Saga timers due and not yet fired (a saga worker down or behind)", registry=r)
        self._feed_lag = _Labelled(Gauge(
            "cardpay_feed_lag_events",
            "Events in the PostgreSQL event log beyond a consumer's stored position, by "
            "consumer (projector, sagas)", ["consumer"], registry=r))
        self._cursor_age = _Labelled(Gauge(
            "cardpay_listener_cursor_age_seconds",
            "Seconds since the listener last moved its chain cursor, by cursor name",
            ["listener"], registry=r))
        self._breaks = _Labelled(Gauge(
            "cardpay_reconciliation_breaks",
            "Reconciliation breaks (chain vs ledger vs network report) over the recent "
            "settled days, by currency", ["currency"], registry=r))
        # Why from the start: a currency appears in a reconciliation only once a settled day
        # holds something in it, so a young system (or a test stack) would have no series at
        # all, and an alert or a panel on it could not be told from one on a renamed metric.
        # NaN, as the balance gauge before its first refresh: unknown is not "no breaks".
        self._breaks.set_all({code: math.nan for code in currencies})
        self.refreshed = Gauge(
            "cardpay_state_refreshed_timestamp_seconds",
            "Unix time of the last successful refresh of the state gauges", registry=r)
        self.refresh_failures = Counter(
            "cardpay_state_refresh_failures_total",
            "Refreshes of the state gauges that failed (the last values stay)", registry=r)

    def update(self, state: SystemState, now: float) -> None:
        self.ledger_balanced.set(1 if state.ledger_balanced else 0)
        self._ledger_transfers.set_all(state.ledger_transfers)
        self._open_exceptions.set_all(state.open_exceptions)
        self.saga_timers_due.set(state.saga_timers_due)
        self._feed_lag.set_all(state.feed_lag)
        self._cursor_age.set_all(state.listener_cursor_age_s)
        self.refreshed.set(now)

    def update_breaks(self, breaks: Mapping[str, int]) -> None:
        self._breaks.set_all(breaks)
