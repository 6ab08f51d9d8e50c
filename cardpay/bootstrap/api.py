"""Composition root of `cardpay api`: the ASGI app on the database, with the network's effects
(`CardNetworkEffects`: the authorization decision and every message's Payment and ledger effects).
Tests may pass other `decide`/`apply` ports.

The app's lifespan runs the network sweep (lapsed holds, clearings parked too long) every
CARDPAY_SWEEP_INTERVAL_S seconds in the background (0: not at all).
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, text

from cardpay.api import create_app
from cardpay.api.signatures import SignatureVerifier
from cardpay.bootstrap.network_sweep import build_sweep, sweep_lifespan
from cardpay.handlers.api_tokens import TokenStore
from cardpay.handlers.card_network import CardNetworkEffects
from cardpay.handlers.exceptions import ExceptionsQueue
from cardpay.handlers.network import Apply, Decide, NetworkIngress
from cardpay.metrics.api import ApiMetrics
from cardpay.postgres.finance import PostgresFinanceReads
from cardpay.postgres.repositories.api_tokens import PostgresTokenStore
from cardpay.postgres.uow import unit_of_work_factory
from cardpay.settings import Settings


def database_ready(engine: Engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(text("SELECT 1")).scalar() == 1


def build_app(settings: Settings, engine: Engine, *, decide: Decide | None = None,
              apply: Apply | None = None,
              registry: CollectorRegistry | None = None,
              tokens: TokenStore | None = None) -> FastAPI:
    """The API of this process. `settings.webhook_secrets` must not be empty (the CLI says so
    in one line before calling this). The bearer tokens are `api_tokens` in the database unless
    a test passes another store."""
    effects = CardNetworkEffects(
        deadline=timedelta(milliseconds=settings.authorization_deadline_ms))
    decide = decide or effects.decide
    apply = apply or effects.apply
    uow = unit_of_work_factory(engine, settings.outbox_topic)
    ingress = NetworkIngress(uow, decide, apply)
    metrics = ApiMetrics(registry)
    app = create_app(ingress, SignatureVerifier(settings.webhook_secrets), metrics,
                     lambda: database_ready(engine), tokens=tokens or PostgresTokenStore(engine),
                     exceptions=ExceptionsQueue(uow), finance=PostgresFinanceReads(engine),
                     max_in_flight=settings.api_max_in_flight)
    if settings.sweep_interval_s > 0:
        sweep = build_sweep(settings, engine, effects=effects)
        app.router.lifespan_context = sweep_lifespan(sweep, settings.sweep_interval_s, metrics)
    return app
