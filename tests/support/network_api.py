"""An in-memory stand-in for cardpay's network API, for the simulator's unit tests.

Its decisions are `domain.authorization.decide`'s (the real pure rule) on snapshots built from the
cards and the holds its approvals opened; its asynchronous messages are only acknowledged. So a
simulator run against it checks the oracle, written apart, against the decision code, and the
run's determinism and shape without any I/O.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from cardpay.devstack.network_oracle import SimCard
from cardpay.devstack.network_simulator import Delivery
from cardpay.devstack.network_workload import AUTHORIZATIONS, Message
from domain.authorization import (
    AccountSnapshot,
    Allowance,
    AuthorizationRequest,
    CardStatus,
    decide,
)
from domain.money import Money

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class DecidingApi:
    """A `Sender` answering as cardpay would with `decide`; repeats get the first answer."""

    def __init__(self, cards: list[SimCard]) -> None:
        self.cards = {c.card_id: c for c in cards}
        self.holds: dict[str, int] = {}
        self.approvals: dict[str, int] = {}
        self.answers: dict[str, tuple[str, Delivery]] = {}
        self.bodies: list[tuple[str, bytes]] = []

    def send(self, message: Message) -> Delivery:
        self.bodies.append((message.webhook_id, message.body))
        seen = self.answers.get(message.webhook_id)
        if seen is not None:
            assert seen[0] == message.body.decode(), "same id, another body"
            return seen[1]
        if message.path == AUTHORIZATIONS:
            answer = self._decide(json.loads(message.body))
        else:
            answer = {"type": message.type, "status": "applied"}
        delivery = Delivery(200, answer, 1, 0)
        self.answers[message.webhook_id] = (message.body.decode(), delivery)
        return delivery

    def _pool(self, card: SimCard) -> list[SimCard]:
        return [c for c in self.cards.values() if c.funds_key == card.funds_key]

    def _decide(self, body: dict[str, Any]) -> dict[str, Any]:
        card = self.cards.get(body["card_id"])
        currency = next(iter(self.cards.values())).currency if card is None else card.currency
        snapshot = None
        if card is not None:
            first = self._pool(card)[0]
            allowance = None if first.allowance is None else Allowance(
                first.allowance, first.allowance, first.allowance, 86_400,
                int(NOW.timestamp()))
            snapshot = AccountSnapshot(
                card.card_id, CardStatus(card.status), Money(first.balance, currency),
                Money(self.holds.get(card.funds_key, 0), currency), allowance,
                card.blocked_mccs, card.velocity_limit, self.approvals.get(card.card_id, 0))
        request = AuthorizationRequest(body["card_id"], Money(body["amount"], currency),
                                       int(body["merchant"]["mcc"]),
                                       body["partial_approval_supported"])
        d = decide(request, snapshot, NOW)
        if card is not None and d.approved:
            self.holds[card.funds_key] = self.holds.get(card.funds_key, 0) + \
                d.approved_amount.units
            self.approvals[card.card_id] = self.approvals.get(card.card_id, 0) + 1
        return {"authorization_id": body["authorization_id"], "approved": d.approved,
                "approved_amount": d.approved_amount.units, "currency": body["currency"],
                "partial": d.partial,
                "decline_reason": None if d.reason is None else d.reason.value,
                "decline_class": None if d.decline_class is None else d.decline_class.value}
