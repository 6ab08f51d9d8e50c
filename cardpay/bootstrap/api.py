"""Composition root of `cardpay api`: the ASGI app on the database, with the network's effects.

`build_app` takes the effect ports (`decide`, `apply`) as arguments: the authorization decision
from account state and the Payment/ledger effects of each message are built elsewhere and wired
here by whoever composes them. Until they are, `not_wired_decide` and `not_wired_apply` answer
503 with nothing recorded: the network retries its messages, and stands in for authorizations
(its advice arrives later), which is what a real network does with an issuer that is down.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, text

from cardpay.api import create_app
from cardpay.api.signatures import SignatureVerifier
from cardpay.handlers.network import Apply, Decide, EffectUnavailable, NetworkIngress
from cardpay.handlers.ports import UnitOfWork
from cardpay.metrics.api import ApiMetrics
from cardpay.postgres.uow import unit_of_work_factory
from cardpay.settings import Settings
from domain.network import AuthorizationDecision, AuthorizationRequest, NetworkMessage


def not_wired_decide(uow: UnitOfWork, request: AuthorizationRequest,
                     received_at: datetime) -> AuthorizationDecision:
    raise EffectUnavailable("the authorization decision is not wired into this build yet")


def not_wired_apply(uow: UnitOfWork, message: NetworkMessage) -> dict[str, Any]:
    raise EffectUnavailable(f"the effect of {message.TYPE} is not wired into this build yet")


def database_ready(engine: Engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(text("SELECT 1")).scalar() == 1


def build_app(settings: Settings, engine: Engine, *, decide: Decide = not_wired_decide,
              apply: Apply = not_wired_apply,
              registry: CollectorRegistry | None = None) -> FastAPI:
    """The API of this process. `settings.webhook_secrets` must not be empty (the CLI says so
    in one line before calling this)."""
    ingress = NetworkIngress(unit_of_work_factory(engine, settings.outbox_topic), decide, apply)
    return create_app(ingress, SignatureVerifier(settings.webhook_secrets),
                      ApiMetrics(registry), lambda: database_ready(engine))
