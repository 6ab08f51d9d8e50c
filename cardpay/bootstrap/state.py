"""The state gauges' refresh loop and the readiness check, on the database (composition root
shared by `cardpay api`, which runs the loop in its lifespan and answers `/readyz` with it).

Why the API: it always runs, already serves /metrics, and its queries here are cheap
(`cardpay.postgres.health`); the reconciliation is dearer (it reads a day's events), so it runs
less often and only over the recent settled days.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time

from sqlalchemy import Engine, text

from cardpay.handlers.health import feed_lag_reasons
from cardpay.handlers.reconciliation import reconcile_day
from cardpay.metrics.state import StateMetrics
from cardpay.postgres.health import feed_lag, read_state
from cardpay.postgres.reconciliation import PostgresReconciliationSource

log = logging.getLogger(__name__)

STATE_INTERVAL_S = 15.0
"""Seconds between refreshes of the cheap state gauges (Prometheus scrapes every 15 s)."""
BREAKS_INTERVAL_S = 300.0
"""Seconds between reconciliations of the recent days (a break matters in hours, not seconds)."""
RECENT_DAYS = 2
REPORT_GRACE = timedelta(hours=1)
"""After the cut-off of day D + 1, the network's report of day D has had this long to arrive."""


def settled_days(now: datetime, cutoff: clock_time, count: int = RECENT_DAYS) -> list[date]:
    """The `count` latest days whose settlement should be complete at `now`: day D once the
    cut-off of D + 1 and `REPORT_GRACE` have passed (a day still waiting for its report would
    show breaks that are only lateness)."""
    day = now.astimezone(UTC).date() - timedelta(days=1)
    while datetime.combine(day + timedelta(days=1), cutoff, UTC) + REPORT_GRACE > now:
        day -= timedelta(days=1)
    return [day - timedelta(days=n) for n in range(count)]


def reconciliation_breaks(engine: Engine, days: Sequence[date]) -> dict[str, int]:
    """Breaks per fiat currency over `days` (a currency with none: 0, once it was seen)."""
    breaks: dict[str, int] = {}
    with engine.connect() as conn:
        source = PostgresReconciliationSource(conn)
        for day in days:
            for result in reconcile_day(source, day):
                breaks[result.currency] = breaks.get(result.currency, 0) + len(result.breaks)
    return breaks


def refresh_state(engine: Engine, metrics: StateMetrics) -> None:
    with engine.connect() as conn:
        state = read_state(conn)
    metrics.update(state, time.time())


async def refresh_forever(engine: Engine, metrics: StateMetrics, *, cutoff: clock_time,
                          interval: float = STATE_INTERVAL_S,
                          breaks_interval: float = BREAKS_INTERVAL_S,
                          clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
    """Refresh now, then every `interval` seconds (the breaks every `breaks_interval`), until
    cancelled. A failed refresh is logged and counted, never raised: the API keeps serving,
    and `cardpay_state_refreshed_timestamp_seconds` stops moving (alerted on)."""
    breaks_due = 0.0
    while True:
        try:
            await asyncio.to_thread(refresh_state, engine, metrics)
            if time.monotonic() >= breaks_due:
                days = settled_days(clock(), cutoff)
                metrics.update_breaks(
                    await asyncio.to_thread(reconciliation_breaks, engine, days))
                breaks_due = time.monotonic() + breaks_interval
        except Exception as exc:
            metrics.refresh_failures.inc()
            log.warning("state metrics not refreshed: %s", str(exc).splitlines()[0]
                        if str(exc) else type(exc).__name__)
        await asyncio.sleep(interval)


def readiness(engine: Engine, max_feed_lag: int) -> list[str]:
    """Why the system is not ready (empty: ready): the database does not answer, or a
    consumer of the event log is more than `max_feed_lag` events behind."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            lag = feed_lag(conn)
    except Exception as exc:
        log.warning("readiness: the database does not answer: %s",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return ["the database does not answer"]
    return feed_lag_reasons(lag, max_feed_lag)
