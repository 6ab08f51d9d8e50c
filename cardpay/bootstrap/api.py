"""Composition root of `cardpay api`: the ASGI app on the database, with the network's effects
(`CardNetworkEffects`: the authorization decision and every message's Payment and ledger effects).
Tests may pass other `decide`/`apply` ports.

The finance web page (`cardpay.api.finance_page`) is served when `build_app` is given
`scopes_of`, the token store's answer to "which scopes has this token": its reads are the
CLI's (`cardpay settlements`, `cardpay reconcile`, `cardpay exceptions list`), each on its own
connection, and resolving goes through `cardpay.handlers.exceptions.resolve`.

The app's lifespan runs, in the background, the network sweep (lapsed holds, clearings parked
too long) every CARDPAY_SWEEP_INTERVAL_S seconds (0: not at all) and the refresh of the state
gauges (`cardpay.bootstrap.state`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import date, timedelta
from typing import Any

from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from cardpay.api import create_app
from cardpay.api.finance_page import ScopesOf, finance_page_router
from cardpay.api.signatures import SignatureVerifier
from cardpay.bootstrap.network_sweep import background_lifespan, build_sweep, sweep_forever
from cardpay.bootstrap.sagas import build_runner
from cardpay.bootstrap.state import STATE_INTERVAL_S, readiness, refresh_forever
from cardpay.handlers import exceptions as exception_queue
from cardpay.handlers.api_tokens import TokenStore
from cardpay.handlers.card_network import CardNetworkEffects
from cardpay.handlers.exceptions import ExceptionsQueue
from cardpay.handlers.health import DEFAULT_MAX_FEED_LAG
from cardpay.handlers.network import Apply, Decide, NetworkIngress
from cardpay.handlers.reconciliation import reconcile_day
from cardpay.metrics.api import ApiMetrics
from cardpay.metrics.state import StateMetrics
from cardpay.postgres.finance import PostgresFinanceReads
from cardpay.postgres.queries import quarantine_entries
from cardpay.postgres.reconciliation import PostgresReconciliationSource
from cardpay.postgres.repositories.api_tokens import PostgresTokenStore
from cardpay.postgres.repositories.settlement import PostgresSettlementBatches
from cardpay.postgres.uow import unit_of_work_factory
from cardpay.records import quarantine_records, settlement_record
from cardpay.settings import Settings
from domain.reconciliation import Reconciliation


def build_app(settings: Settings, engine: Engine, *, decide: Decide | None = None,
              apply: Apply | None = None,
              registry: CollectorRegistry | None = None,
              tokens: TokenStore | None = None, scopes_of: ScopesOf | None = None,
              max_feed_lag: int = DEFAULT_MAX_FEED_LAG,
              state_interval_s: float | None = STATE_INTERVAL_S) -> FastAPI:
    """The API of this process. `settings.webhook_secrets` must not be empty (the CLI says so
    in one line before calling this). The bearer tokens are `api_tokens` in the database unless
    a test passes another store; the finance page signs in with the same tokens (or with
    `scopes_of`, a test's). `/readyz` is 503 while the database does not answer or a consumer
    of the event log is more than `max_feed_lag` events behind. The state gauges
    (`cardpay.metrics.state`) are refreshed every `state_interval_s` seconds on the app's
    registry (None: not at all)."""
    effects = CardNetworkEffects(
        deadline=timedelta(milliseconds=settings.authorization_deadline_ms))
    decide = decide or effects.decide
    apply = apply or effects.apply
    uow = unit_of_work_factory(engine, settings.outbox_topic)
    metrics = ApiMetrics(registry)
    ingress = NetworkIngress(uow, decide, apply, observer=metrics)
    store = tokens or PostgresTokenStore(engine)
    page = build_finance_page(settings, engine, scopes_of or store.verify)
    app = create_app(ingress, SignatureVerifier(settings.webhook_secrets), metrics,
                     lambda: readiness(engine, max_feed_lag), tokens=store,
                     exceptions=ExceptionsQueue(uow, build_runner(settings, engine)),
                     finance=PostgresFinanceReads(engine),
                     finance_page=page, max_in_flight=settings.api_max_in_flight)
    loops: list[Callable[[], Coroutine[Any, Any, None]]] = []
    if settings.sweep_interval_s > 0:
        sweep = build_sweep(settings, engine, effects=effects)
        loops.append(lambda: sweep_forever(sweep, settings.sweep_interval_s, metrics))
    if state_interval_s is not None:
        state = StateMetrics(metrics.registry)
        loops.append(lambda: refresh_forever(engine, state, cutoff=settings.settlement_cutoff,
                                             interval=state_interval_s))
    if loops:
        app.router.lifespan_context = background_lifespan(loops)
    return app


def build_finance_page(settings: Settings, engine: Engine, scopes_of: ScopesOf) -> APIRouter:
    """The finance page's routes on the database; `scopes_of` is the token store's (required:
    the page has no sign-in of its own)."""
    uow = unit_of_work_factory(engine, settings.outbox_topic)

    def settlements() -> list[dict[str, Any]]:
        with engine.connect() as conn:
            return [settlement_record(b) for b in PostgresSettlementBatches(conn).find()]

    def reconcile(day: date) -> list[Reconciliation]:
        with engine.connect() as conn:
            return reconcile_day(PostgresReconciliationSource(conn), day)

    def exceptions() -> list[dict[str, Any]]:
        with engine.connect() as conn:
            return quarantine_records(quarantine_entries(conn,
                                                         prefixes=exception_queue.SOURCES))

    return finance_page_router(
        scopes_of=scopes_of, settlements=settlements, reconcile=reconcile,
        exceptions=exceptions,
        resolve=lambda item_id, note: exception_queue.resolve(uow, item_id, note))
