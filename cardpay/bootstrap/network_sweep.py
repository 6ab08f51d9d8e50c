"""Composition root of the network sweep (`cardpay network sweep`, and the background loop of
`cardpay api`): `NetworkSweep` on the database, and the loop that runs it every interval."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from cardpay.handlers.card_network import CardNetworkEffects
from cardpay.handlers.network_timers import NetworkSweep, SweepResult
from cardpay.metrics.api import ApiMetrics
from cardpay.postgres.uow import sweep_uow_factory
from cardpay.settings import Settings

log = logging.getLogger(__name__)


def build_sweep(settings: Settings, engine: Engine, *,
                effects: CardNetworkEffects | None = None,
                clock: Callable[[], datetime] | None = None) -> NetworkSweep:
    effects = effects or CardNetworkEffects(
        deadline=timedelta(milliseconds=settings.authorization_deadline_ms))
    extra: dict[str, Any] = {} if clock is None else {"clock": clock}
    return NetworkSweep(sweep_uow_factory(engine, settings.outbox_topic), effects,
                        parked_timeout=settings.parked_clearing_timeout, **extra)


def count(metrics: ApiMetrics, result: SweepResult) -> None:
    metrics.sweep_holds_expired.inc(result.holds_expired)
    metrics.sweep_exceptions.inc(len(result.exceptions_raised))


async def sweep_forever(sweep: NetworkSweep, interval: float, metrics: ApiMetrics) -> None:
    """Sweep now, then every `interval` seconds, until cancelled. A failed sweep is logged and
    counted, never raised: the API keeps serving and the next interval tries again."""
    while True:
        try:
            result = await asyncio.to_thread(sweep.run)
        except Exception:
            metrics.sweep_failures.inc()
            log.exception("network sweep failed; retrying in %.0f s", interval)
        else:
            count(metrics, result)
            if result.holds_expired or result.exceptions_raised or result.failures:
                log.info("network sweep: %d holds expired, %d exceptions raised, %d left "
                         "for the next sweep", result.holds_expired,
                         len(result.exceptions_raised), len(result.failures))
        await asyncio.sleep(interval)


def sweep_lifespan(sweep: NetworkSweep, interval: float, metrics: ApiMetrics
                   ) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """An ASGI lifespan that runs `sweep_forever` beside the app and cancels it at shutdown."""
    return background_lifespan([lambda: sweep_forever(sweep, interval, metrics)])


def background_lifespan(loops: Sequence[Callable[[], Coroutine[Any, Any, None]]]
                        ) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """An ASGI lifespan that runs each of `loops` (coroutines that run until cancelled) beside
    the app and cancels them at shutdown."""

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(loop(), name=f"background-{n}")
                 for n, loop in enumerate(loops)]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with suppress(asyncio.CancelledError):
                    await task

    return lifespan
