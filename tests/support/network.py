"""Test doubles for the network ingress's effect ports, and a signing client.

`RecordingEffects` is NOT the authorization decision or the payment effects (other parts of the
system build those): it stands in for them with rules simple enough to predict, and writes one
observable row per effect (a command claim `decision:<id>` / `effect:<type>:<id>`) through the
unit of work, so tests can see whether an effect committed with its delivery record or not.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select

from cardpay.api.signatures import sign
from cardpay.handlers.ports import UnitOfWork
from cardpay.postgres import schema as s
from domain.money import Money
from domain.network import (
    AuthorizationDecision,
    AuthorizationRequest,
    DeclineReason,
    NetworkMessage,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLD_SECRET = "whsec_c2VjcmV0LW9mLWxhc3QteWVhcg=="
PARTIAL_CAP = 10_000
"""The test decision approves at most this many minor units (partially when allowed)."""
BOOM = "boom"
"""An id containing this makes the test effect fail after it wrote its row."""


class EffectFailed(RuntimeError):
    pass


def _message_id(message: NetworkMessage) -> str:
    for name in ("increment_id", "reversal_id", "clearing_id", "return_reversal_id", "return_id",
                 "report_id", "authorization_id"):
        value = getattr(message, name, None)
        if isinstance(value, str):
            return value
    raise AssertionError(f"no id on {message}")


class RecordingEffects:
    """decide: unknown card "card_unknown" → decline unknown_card; "card_empty" → decline
    insufficient_funds; above `PARTIAL_CAP` → partial approval when allowed, else decline
    insufficient_funds; otherwise approve in full. apply: `{"status": "applied", "id": ...}`."""

    def decide(self, uow: UnitOfWork, request: AuthorizationRequest,
               received_at: datetime) -> AuthorizationDecision:
        uow.claims.claim(f"decision:{request.authorization_id}")
        if BOOM in request.authorization_id:
            raise EffectFailed(request.authorization_id)
        if request.card_id == "card_unknown":
            return AuthorizationDecision.decline(request, DeclineReason.UNKNOWN_CARD)
        if request.card_id == "card_empty":
            return AuthorizationDecision.decline(request, DeclineReason.INSUFFICIENT_FUNDS)
        if request.amount.units > PARTIAL_CAP:
            if not request.partial_approval_supported:
                return AuthorizationDecision.decline(request, DeclineReason.INSUFFICIENT_FUNDS)
            return AuthorizationDecision.approve(
                request, Money(PARTIAL_CAP, request.amount.currency))
        return AuthorizationDecision.approve(request)

    def apply(self, uow: UnitOfWork, message: NetworkMessage) -> dict[str, Any]:
        key = _message_id(message)
        uow.claims.claim(f"effect:{message.TYPE}:{key}")
        if BOOM in key:
            raise EffectFailed(key)
        return {"status": "applied", "id": key}


def signed_headers(body: bytes, webhook_id: str, *, secret: str = SECRET,
                   timestamp: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {"webhook-id": webhook_id, "webhook-timestamp": str(ts),
            "webhook-signature": sign(secret, webhook_id, ts, body),
            "content-type": "application/json"}


def dumps(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def counts(engine: Engine) -> dict[str, int]:
    """Rows per table the ingress may write: equal before and after means nothing changed."""
    tables = (s.network_deliveries, s.quarantine, s.processed_commands, s.events, s.outbox)
    with engine.connect() as conn:
        return {t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                for t in tables}


def quarantined(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(
            select(s.quarantine).order_by(s.quarantine.c.id))]


def claims(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(select(s.processed_commands.c.command_id))}
