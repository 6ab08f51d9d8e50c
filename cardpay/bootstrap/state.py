"""The state gauges' refresh loop and the readiness check, on the database (composition root
shared by `cardpay api`, which runs the loop in its lifespan and answers `/readyz` with it).

Why the API: it always runs, already serves /metrics, and its queries here are cheap
(`cardpay.postgres.health`). The reconciliation is dearer (it decodes a day's chain events: about
a second for 10,000 payments, tens of seconds for 100,000), so it runs less often, only over the
recent settled days, and in a worker process of its own (`ReconcilerProcess`): in a thread of the
API it would hold the interpreter's lock while authorizations wait, and an approval that misses
the network's deadline is a late one.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time

from sqlalchemy import Engine, text

from cardpay.handlers.health import feed_lag_reasons
from cardpay.handlers.reconciliation import reconcile_day
from cardpay.metrics.state import StateMetrics
from cardpay.postgres.health import feed_lag, read_state
from cardpay.postgres.reconciliation import PostgresReconciliationSource
from cardpay.runtime.processes import parent_death_signal

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


def breaks_at(url: str, days: Sequence[date]) -> dict[str, int]:
    """`reconciliation_breaks` on an engine of its own (what a worker process runs)."""
    from cardpay.postgres.engine import make_engine

    engine = make_engine(url, pool_size=1)
    try:
        return reconciliation_breaks(engine, days)
    finally:
        engine.dispose()


Breaks = Callable[[Sequence[date]], Awaitable[dict[str, int]]]
"""The breaks per currency over some days, awaited by the refresh loop."""


def _die_with(parent: int) -> None:
    """The worker's initializer: the kernel sends it SIGTERM when the process that started it
    dies, `kill -9` included (Linux), so a killed API leaves no worker behind; if that parent is
    already gone, the worker stops at once."""
    set_pdeathsig = parent_death_signal(signal.SIGTERM)
    if set_pdeathsig is not None:
        set_pdeathsig()
    if os.getppid() != parent:
        os._exit(0)


class ReconcilerProcess:
    """Runs the reconciliation of some days in one worker process (started on first use, with
    `spawn`: a fresh interpreter, not a fork of the API's threads and connections), so its CPU
    never holds the API's interpreter lock. `close` stops the worker; the API's death does too
    (`_die_with`)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._pool: ProcessPoolExecutor | None = None

    async def __call__(self, days: Sequence[date]) -> dict[str, int]:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_die_with, initargs=(os.getpid(),))
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, breaks_at, self._url, list(days))

    def close(self) -> None:
        """Stop the worker now, mid-reconciliation too (it only reads): the API's shutdown
        does not wait for it."""
        if self._pool is not None:
            workers = list((self._pool._processes or {}).values())  # (no public accessor)
            self._pool.shutdown(wait=False, cancel_futures=True)
            for process in workers:
                process.terminate()
            self._pool = None


def refresh_state(engine: Engine, metrics: StateMetrics) -> None:
    with engine.connect() as conn:
        state = read_state(conn)
    metrics.update(state, time.time())


async def refresh_forever(engine: Engine, metrics: StateMetrics, *, cutoff: clock_time,
                          interval: float = STATE_INTERVAL_S,
                          breaks_interval: float = BREAKS_INTERVAL_S,
                          clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                          breaks: Breaks | None = None) -> None:
    """Refresh the gauges now, then every `interval` seconds, and the breaks every
    `breaks_interval` (by `breaks`: default a `ReconcilerProcess` on the engine's database,
    closed when the loop ends), until cancelled. The two run side by side: a slow
    reconciliation never holds up the other gauges. A failed refresh is logged and counted,
    never raised: the API keeps serving, and `cardpay_state_refreshed_timestamp_seconds` stops
    moving (alerted on)."""
    own = ReconcilerProcess(engine.url.render_as_string(hide_password=False)) \
        if breaks is None else None
    reconcile = breaks or own
    assert reconcile is not None

    async def gauges() -> None:
        await asyncio.to_thread(refresh_state, engine, metrics)

    async def breaks_now() -> None:
        metrics.update_breaks(await reconcile(settled_days(clock(), cutoff)))

    try:
        await asyncio.gather(_every(interval, gauges, metrics),
                             _every(breaks_interval, breaks_now, metrics))
    finally:
        if own is not None:
            own.close()


async def _every(interval: float, refresh: Callable[[], Awaitable[None]],
                 metrics: StateMetrics) -> None:
    while True:
        try:
            await refresh()
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
