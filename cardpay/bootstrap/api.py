"""Composition root of `cardpay api`: the ASGI app on the database, with the network's effects
(`CardNetworkEffects`: the authorization decision and every message's Payment and ledger effects).
Tests may pass other `decide`/`apply` ports.

The finance web page (`cardpay.api.finance_page`) is served when `build_app` is given
`scopes_of`, the token store's answer to "which scopes has this token": its reads are the
CLI's (`cardpay settlements`, `cardpay reconcile`, `cardpay exceptions list`), each on its own
connection, and resolving goes through `cardpay.handlers.exceptions.resolve`.

The app's lifespan runs the network sweep (lapsed holds, clearings parked too long) every
CARDPAY_SWEEP_INTERVAL_S seconds in the background (0: not at all).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, text

from cardpay.api import create_app
from cardpay.api.finance_page import ScopesOf, finance_page_router
from cardpay.api.signatures import SignatureVerifier
from cardpay.bootstrap.network_sweep import build_sweep, sweep_lifespan
from cardpay.bootstrap.sagas import build_runner
from cardpay.handlers import exceptions as exception_queue
from cardpay.handlers.api_tokens import TokenStore
from cardpay.handlers.card_network import CardNetworkEffects
from cardpay.handlers.exceptions import ExceptionsQueue
from cardpay.handlers.network import Apply, Decide, NetworkIngress
from cardpay.handlers.reconciliation import reconcile_day
from cardpay.metrics.api import ApiMetrics
from cardpay.postgres.finance import PostgresFinanceReads
from cardpay.postgres.queries import quarantine_entries
from cardpay.postgres.reconciliation import PostgresReconciliationSource
from cardpay.postgres.repositories.api_tokens import PostgresTokenStore
from cardpay.postgres.repositories.settlement import PostgresSettlementBatches
from cardpay.postgres.uow import unit_of_work_factory
from cardpay.records import quarantine_records, settlement_record
from cardpay.settings import Settings
from domain.reconciliation import Reconciliation


def database_ready(engine: Engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(text("SELECT 1")).scalar() == 1


def build_app(settings: Settings, engine: Engine, *, decide: Decide | None = None,
              apply: Apply | None = None,
              registry: CollectorRegistry | None = None,
              tokens: TokenStore | None = None, scopes_of: ScopesOf | None = None) -> FastAPI:
    """The API of this process. `settings.webhook_secrets` must not be empty (the CLI says so
    in one line before calling this). The bearer tokens are `api_tokens` in the database unless
    a test passes another store; the finance page signs in with the same tokens (or with
    `scopes_of`, a test's)."""
    effects = CardNetworkEffects(
        deadline=timedelta(milliseconds=settings.authorization_deadline_ms))
    decide = decide or effects.decide
    apply = apply or effects.apply
    uow = unit_of_work_factory(engine, settings.outbox_topic)
    ingress = NetworkIngress(uow, decide, apply)
    metrics = ApiMetrics(registry)
    store = tokens or PostgresTokenStore(engine)
    page = build_finance_page(settings, engine, scopes_of or store.verify)
    app = create_app(ingress, SignatureVerifier(settings.webhook_secrets), metrics,
                     lambda: database_ready(engine), tokens=store,
                     exceptions=ExceptionsQueue(uow, build_runner(settings, engine)),
                     finance=PostgresFinanceReads(engine),
                     finance_page=page, max_in_flight=settings.api_max_in_flight)
    if settings.sweep_interval_s > 0:
        sweep = build_sweep(settings, engine, effects=effects)
        app.router.lifespan_context = sweep_lifespan(sweep, settings.sweep_interval_s, metrics)
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
