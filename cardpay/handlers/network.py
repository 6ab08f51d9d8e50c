"""Network ingress: one card-network delivery, one unit of work, one answer — exactly once.

The webhook id of a signed delivery is its idempotency key. Under a lock on that id, the unit of
work looks the delivery up:
- not seen: the message's effect (`decide` for an authorization request, `apply` for an
  asynchronous message) and the delivery record with the answer commit in ONE transaction, so a
  crash or a failed effect leaves neither (and the network's retry is processed afresh);
- seen with the same body: the first answer again, and nothing changes;
- seen with another body: 409, nothing changes (a replay with a substituted body).

A signed body that does not parse is quarantined (source "network", with its raw body) and its
delivery recorded with the 4xx answer in the same transaction. Only signed bodies get here: the
HTTP layer answers unsigned or badly signed requests 401 before anything is stored, so an
attacker without the secret cannot fill the quarantine or the delivery table.

The effects are ports (`Decide`, `Apply`) the composition root supplies: this module knows no
database or HTTP library (ADR 0007).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from cardpay.errors import CardpayError, ConcurrencyConflict
from cardpay.handlers.ports import Delivery, QuarantineItem, UnitOfWork
from domain.errors import DomainError
from domain.network import AuthorizationDecision, AuthorizationRequest, NetworkMessage

log = logging.getLogger(__name__)

QUARANTINE_SOURCE = "network"


class Decide(Protocol):
    """The authorization decision with its effects (hold, `PaymentAuthorized`...) written on `uow`;
    they commit with the delivery record. `received_at` is when the request arrived (for the
    network's deadline)."""

    def __call__(self, uow: UnitOfWork, request: AuthorizationRequest,
                 received_at: datetime) -> AuthorizationDecision: ...


class Apply(Protocol):
    """An asynchronous message's effect written on `uow`; returns the JSON answer's body (e.g.
    `{"status": "applied"}` or `{"status": "parked"}`), kept for repeats."""

    def __call__(self, uow: UnitOfWork, message: NetworkMessage) -> dict[str, Any]: ...


class EffectUnavailable(CardpayError):
    """`decide` or `apply` cannot run now (a dependency is down, or not wired yet): nothing is
    recorded, the answer is 503 and the network retries (or stands in, for an authorization)."""

    code = "unavailable"
    """The answer's `error` (and the metric's reason)."""


@dataclass(frozen=True, slots=True)
class Received:
    """A signed delivery as it arrived: its webhook id, raw body and headers, and when."""

    webhook_id: str
    body: bytes
    headers: Mapping[str, str]
    received_at: datetime

    @property
    def body_sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Mapping[str, Any]
    replayed: bool = False
    """True: the first answer of an earlier delivery of this webhook id, nothing changed now."""


def decision_body(decision: AuthorizationDecision) -> dict[str, Any]:
    """The wire form of a decision (what `POST /v1/network/authorizations` answers)."""
    return {
        "authorization_id": decision.authorization_id,
        "approved": decision.approved,
        "approved_amount": decision.approved_amount.units,
        "currency": decision.approved_amount.currency.code,
        "partial": decision.partial,
        "decline_reason": None if decision.reason is None else decision.reason.value,
        "decline_class": None if decision.decline_class is None else decision.decline_class.value,
    }


UowFactory = Callable[[], UnitOfWork]


class DecisionObserver(Protocol):
    """Told of each authorization decision once it is committed (a repeated delivery, which
    decides nothing, is not told): the metrics port (`cardpay.metrics.api.ApiMetrics`), so
    this module needs no metrics library. `outcome` is approved, partial or declined; `reason`
    the decline reason's code, or "none"."""

    def authorization_decided(self, outcome: str, reason: str) -> None: ...


def decision_outcome(body: Mapping[str, Any]) -> tuple[str, str]:
    """(outcome, reason) of a decision's wire body: bounded codes, never an id or an amount."""
    if not body.get("approved"):
        return "declined", str(body.get("decline_reason") or "unknown")
    return ("partial" if body.get("partial") else "approved"), "none"


class NetworkIngress:
    """The service layer of `POST /v1/network/*`: dedup, effect and record in one transaction."""

    def __init__(self, uow_factory: UowFactory, decide: Decide, apply: Apply,
                 observer: DecisionObserver | None = None) -> None:
        self._uow = uow_factory
        self._decide = decide
        self._apply = apply
        self._observer = observer

    def authorize(self, received: Received, request: AuthorizationRequest) -> Reply:
        def effect(uow: UnitOfWork) -> Reply:
            return Reply(200, decision_body(self._decide(uow, request, received.received_at)))

        reply = self._once(received, effect)
        if self._observer is not None and reply.status == 200 and not reply.replayed:
            self._observer.authorization_decided(*decision_outcome(reply.body))
        return reply

    def handle(self, received: Received, message: NetworkMessage) -> Reply:
        def effect(uow: UnitOfWork) -> Reply:
            return Reply(200, {"type": message.TYPE, **self._apply(uow, message)})

        return self._once(received, effect)

    def reject(self, received: Received, status: int, reason: str) -> Reply:
        """A signed body that cannot be used: quarantined with its raw bytes, answered `status`."""

        def effect(uow: UnitOfWork) -> Reply:
            _quarantine(uow, received, reason)
            return Reply(status, {"error": "rejected", "reason": reason})

        return self._once(received, effect)

    def _once(self, received: Received, effect: Callable[[UnitOfWork], Reply]) -> Reply:
        webhook_id, sha = received.webhook_id, received.body_sha256
        with self._uow() as uow:
            # serialize deliveries of one id: the second waits, then finds the first's record
            uow.lock(f"network-delivery:{webhook_id}")
            seen = uow.deliveries.get(webhook_id)
            if seen is not None:
                if seen.body_sha256 != sha:
                    return Reply(409, {"error": "conflict", "reason": (
                        f"webhook id {webhook_id} was delivered before with another body")})
                return Reply(seen.status, seen.response, replayed=True)
            try:
                with uow.savepoint():
                    reply = effect(uow)
            except (EffectUnavailable, ConcurrencyConflict) as exc:
                # nothing recorded: the network's retry is decided afresh
                code = exc.code if isinstance(exc, EffectUnavailable) else "unavailable"
                return Reply(503, {"error": code, "reason": str(exc)})
            except DomainError as exc:
                # the model refused the message's facts (e.g. a partial approval the network
                # does not allow): kept for a person, answered 422, never a crash
                reason = f"refused: {exc}"
                log.warning("network delivery %s refused: %s", webhook_id, exc)
                _quarantine(uow, received, reason)
                reply = Reply(422, {"error": "refused", "reason": reason})
            uow.deliveries.record(Delivery(webhook_id, sha, reply.status, dict(reply.body),
                                           received.received_at))
            uow.commit()
            return reply


def _quarantine(uow: UnitOfWork, received: Received, reason: str) -> None:
    uow.quarantine.add(QuarantineItem(
        source=QUARANTINE_SOURCE, key=f"webhook:{received.webhook_id}", reason=reason,
        payload=raw_payload(received.body, received.headers)))


def raw_payload(raw_body: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
    """The quarantine payload of a body: the exact bytes (base64), the text when it is text that
    JSONB can hold (UTF-8 without NUL), and the webhook headers."""
    text: str | None
    try:
        text = raw_body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "\x00" in text:
        text = None
    return {"body": text, "body_base64": base64.b64encode(raw_body).decode("ascii"),
            "headers": dict(headers)}
