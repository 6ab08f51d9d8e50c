"""The card-network simulator's oracle: what cardpay must answer and end with, predicted apart.

Written from the rules as documented (the precedence in `domain/authorization.py`'s docstring,
the ordering table in docs/card-network-payment.md), without importing cardpay's handlers or
`domain.authorization.decide`: an oracle that calls the code it checks checks nothing. Amounts are
fiat minor units (cents), as the network speaks. A token balance converts to cents by flooring;
that is exact for the decision because every hold is a whole number of cents.

Decision rules, first failing rule wins:
unknown card → closed → frozen → blocked MCC → velocity (the card's approvals so far reached its
limit; the whole run is taken to fall inside one velocity window) → funds: available =
min(balance - open holds, remaining allowance). An amount within it is approved; above it, a request
that allows partial approval gets `available` when that is at least one cent; otherwise declined
`insufficient_funds` when balance - holds is the binding limit (ties included) and
`over_daily_limit` when the allowance is. Open holds and the allowance are per Safe and token
(`SimCard.pool`): two cards on one Safe share them. Holds grow by the approvals cardpay actually
gave (not by the oracle's), so one wrong answer does not turn every later one wrong; only the
synchronous phase moves them, because every asynchronous message is sent after it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from domain.authorization import DeclineReason
from domain.money import Currency


class SimulationBug(AssertionError):
    """The workload broke its own rules (a message cardpay may refuse): a simulator bug."""


@dataclass(frozen=True, slots=True)
class SimCard:
    """A card as the simulator may use it. `balance` and `allowance` (None: no daily limit) are
    fiat minor units; `pool` names the Safe and token whose funds it spends (None: its own)."""

    card_id: str
    currency: Currency
    balance: int
    allowance: int | None = None
    status: str = "active"
    blocked_mccs: frozenset[int] = frozenset()
    velocity_limit: int | None = None
    pool: str | None = None

    @property
    def funds_key(self) -> str:
        return self.pool or f"card:{self.card_id}"


@dataclass(frozen=True, slots=True)
class Expected:
    """The answer the oracle expects: `approved_amount` 0 and a `reason` when declined."""

    authorization_id: str
    requested: int
    currency: str
    approved_amount: int
    reason: str | None = None

    @property
    def approved(self) -> bool:
        return self.reason is None

    def answer(self) -> dict[str, Any]:
        """The `DecisionResponse` body cardpay must send."""
        return {
            "authorization_id": self.authorization_id,
            "approved": self.approved,
            "approved_amount": self.approved_amount,
            "currency": self.currency,
            "partial": self.approved and self.approved_amount != self.requested,
            "decline_reason": self.reason,
            "decline_class": None if self.reason is None
            else DeclineReason(self.reason).decline_class.value,
        }


class Oracle:
    """Expected decisions, tracking each pool's open holds and each card's approvals."""

    def __init__(self, cards: Sequence[SimCard]) -> None:
        self.cards = {card.card_id: card for card in cards}
        self._balance: dict[str, int] = {}
        self._allowance: dict[str, int | None] = {}
        for card in cards:  # the first card of a pool carries its balance and allowance
            self._balance.setdefault(card.funds_key, card.balance)
            self._allowance.setdefault(card.funds_key, card.allowance)
        self._holds: dict[str, int] = {}
        self._approvals: dict[str, int] = {}

    def funds(self, card: SimCard) -> int:
        """Balance minus open holds."""
        return self._balance[card.funds_key] - self._holds.get(card.funds_key, 0)

    def available(self, card: SimCard) -> int:
        funds = self.funds(card)
        allowance = self._allowance[card.funds_key]
        return funds if allowance is None else min(funds, allowance)

    def velocity_reached(self, card: SimCard) -> bool:
        return card.velocity_limit is not None and \
            self._approvals.get(card.card_id, 0) >= card.velocity_limit

    def expect(self, authorization_id: str, card_id: str, amount: int, currency: str,
               mcc: int, partial_allowed: bool) -> Expected:
        def decline(reason: DeclineReason) -> Expected:
            return Expected(authorization_id, amount, currency, 0, reason.value)

        card = self.cards.get(card_id)
        if card is None:
            return decline(DeclineReason.UNKNOWN_CARD)
        if card.status == "closed":
            return decline(DeclineReason.CARD_CLOSED)
        if card.status == "frozen":
            return decline(DeclineReason.CARD_FROZEN)
        if mcc in card.blocked_mccs:
            return decline(DeclineReason.BLOCKED_MCC)
        if self.velocity_reached(card):
            return decline(DeclineReason.VELOCITY)
        funds, available = self.funds(card), self.available(card)
        if amount <= available:
            return Expected(authorization_id, amount, currency, amount)
        if partial_allowed and available >= 1:
            return Expected(authorization_id, amount, currency, available)
        return decline(DeclineReason.INSUFFICIENT_FUNDS if funds <= available
                       else DeclineReason.OVER_DAILY_LIMIT)

    def approved(self, card_id: str, amount: int) -> None:
        """cardpay approved `amount` on `card_id`: a hold opened and the approval counts."""
        card = self.cards.get(card_id)
        if card is None or amount <= 0:
            return
        self._holds[card.funds_key] = self._holds.get(card.funds_key, 0) + amount
        self._approvals[card_id] = self._approvals.get(card_id, 0) + 1


# -- what every payment must end as -----------------------------------------------------------
@dataclass(slots=True)
class PaymentModel:
    """The network side of one payment (one authorization id, or a force post's clearing id),
    moved by the messages in the order cardpay receives them, after the documented rules."""

    payment_id: str
    card_id: str
    currency: str
    kind: str
    lifecycle: str | None = None
    decision: dict[str, Any] | None = None
    status: str = "none"
    authorized: int = 0
    held: int = 0
    posted: int = 0
    reversed: int = 0
    released: int = 0
    cleared: int = 0
    over_cleared: int = 0
    returned: int = 0
    parked: list[tuple[int, bool]] = field(default_factory=list)

    def open(self, amount: int) -> None:
        """Our approval or an approving advice."""
        self.status, self.authorized, self.held = "authorized", amount, amount
        self._unpark()

    def decline(self) -> None:
        """Our decline, or a declining advice: after our approval too (the network stood in
        for an answer that came too late), when the hold is released whole."""
        if self.status == "authorized":
            self.released += self.held
            self.held = 0
        self.status = "declined"
        self._unpark()

    def _unpark(self) -> None:
        parked, self.parked = self.parked, []
        for amount, final in parked:
            self.clear(amount, final)

    def increase(self, amount: int) -> None:
        self._require_open("incremental_authorization")
        self.authorized += amount
        self.held += amount

    def reverse(self, amount: int, full: bool) -> None:
        if self.status == "none":
            raise SimulationBug(f"{self.payment_id}: reversal before its authorization")
        if self.status != "authorized":
            return
        released = self.held if full else min(amount, self.held)
        self.held -= released
        self.reversed += released
        if self.held == 0:
            self.status = "reversed"

    def expire(self) -> None:
        if self.status == "none":
            raise SimulationBug(f"{self.payment_id}: expiry before its authorization")
        if self.status == "authorized":
            self.released += self.held
            self.held, self.status = 0, "expired"

    def clear(self, amount: int, final: bool) -> None:
        if self.status == "none":
            self.parked.append((amount, final))
            return
        if self.status == "authorized":
            from_hold = min(amount, self.held)
            rest = self.held - from_hold if final else 0
            self.posted += from_hold
            self.over_cleared += amount - from_hold
            self.released += rest
            self.held -= from_hold + rest
        self.cleared += amount
        if final:
            self.status = "cleared"

    def own_clearing(self, amount: int) -> None:
        """A force post or a financial authorization: a payment of its own, cleared at once."""
        if self.status != "none":
            raise SimulationBug(f"{self.payment_id}: its own clearing on a payment that exists")
        self.status, self.cleared = "cleared", amount

    def add_return(self, amount: int) -> None:
        if amount > self.cleared - self.returned:
            raise SimulationBug(f"{self.payment_id}: return beyond what is cleared")
        self.returned += amount

    def reverse_return(self, amount: int) -> None:
        if amount > self.returned:
            raise SimulationBug(f"{self.payment_id}: return reversal beyond what is returned")
        self.returned -= amount

    def _require_open(self, what: str) -> None:
        if self.status != "authorized":
            raise SimulationBug(f"{self.payment_id}: {what} while {self.status}")

    def document(self) -> dict[str, Any]:
        if self.parked:
            raise SimulationBug(f"{self.payment_id}: clearings parked for an authorization "
                                "that never came")
        return {"card_id": self.card_id, "currency": self.currency, "kind": self.kind,
                "lifecycle": self.lifecycle, "decision": self.decision, "status": self.status,
                "authorized": self.authorized, "held": self.held, "posted": self.posted,
                "cleared": self.cleared, "reversed": self.reversed, "released": self.released,
                "over_cleared": self.over_cleared, "returned": self.returned}


class Ledger:
    """Every payment's model, moved message by message (`apply`), keyed by payment id."""

    def __init__(self) -> None:
        self.payments: dict[str, PaymentModel] = {}
        self._returns: dict[str, str] = {}  # return id -> payment id
        self.unmatched_returns: list[tuple[str, str, int]] = []  # card, currency, amount

    def add(self, model: PaymentModel) -> PaymentModel:
        if model.payment_id in self.payments:
            raise SimulationBug(f"payment {model.payment_id} twice")
        self.payments[model.payment_id] = model
        return model

    def apply(self, payload: Mapping[str, Any]) -> None:
        """One asynchronous message's effect, as cardpay must apply it."""
        kind = payload["type"]
        amount = int(payload.get("amount", 0))
        if kind == "settlement_report":
            return
        if kind == "return" and payload.get("authorization_id") is None:
            self.unmatched_returns.append((payload["card_id"], payload["currency"], amount))
            return
        if kind == "return_reversal":
            self.payments[self._returns[payload["return_id"]]].reverse_return(amount)
            return
        key = payload["clearing_id"] if kind == "force_post" else payload["authorization_id"]
        model = self.payments[key]
        match kind:
            case "authorization_advice":
                approved = int(payload["approved_amount"])
                if approved:
                    model.open(approved)
                else:
                    model.decline()
            case "incremental_authorization":
                model.increase(amount)
            case "authorization_reversal":
                model.reverse(amount, bool(payload["full"]))
            case "authorization_expiry":
                model.expire()
            case "clearing":
                model.clear(amount, bool(payload.get("final", True)))
            case "financial_authorization" | "force_post":
                model.own_clearing(amount)
            case "return":
                model.add_return(amount)
                self._returns[payload["return_id"]] = key
            case _:
                raise SimulationBug(f"no rule for message type {kind!r}")

    def documents(self) -> dict[str, dict[str, Any]]:
        return {key: model.document() for key, model in sorted(self.payments.items())}


# -- totals per currency and per card ---------------------------------------------------------
def _count(items: Iterable[int]) -> dict[str, int]:
    values = list(items)
    return {"count": len(values), "amount": sum(values)}


def currency_totals(currency: str, decisions: Sequence[Expected],
                    messages: Sequence[Mapping[str, Any]], ledger: Ledger) -> dict[str, Any]:
    """What cardpay must show for one currency after the run (amounts in minor units).

    `decisions` are the oracle's expectations of the synchronous requests in this currency,
    `messages` the asynchronous payloads sent in it (each once), `ledger` the payments' models.
    """
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for payload in messages:
        by_type.setdefault(payload["type"], []).append(payload)

    def amounts(kind: str, *, matched: bool | None = None) -> list[int]:
        found = by_type.get(kind, [])
        if matched is not None:
            found = [p for p in found if (p.get("authorization_id") is not None) == matched]
        return [int(p["amount"]) for p in found]

    approved = [d for d in decisions if d.approved]
    partial = [d for d in approved if d.approved_amount != d.requested]
    declined: dict[str, int] = {}
    for d in decisions:
        if d.reason is not None:
            declined[d.reason] = declined.get(d.reason, 0) + 1
    advices = by_type.get("authorization_advice", [])
    models = [m for m in ledger.payments.values() if m.currency == currency]
    reversals = by_type.get("authorization_reversal", [])
    cleared, financial, forced = (_count(amounts(k)) for k in
                                  ("clearing", "financial_authorization", "force_post"))
    returned, unmatched = _count(amounts("return", matched=True)), \
        _count(amounts("return", matched=False))
    return_reversed = _count(amounts("return_reversal"))
    spent = cleared["amount"] + financial["amount"] + forced["amount"]
    return {
        "authorization_requests": len(decisions),
        "approved": _count(d.approved_amount for d in approved),
        "partial": {**_count(d.approved_amount for d in partial),
                    "requested": sum(d.requested for d in partial)},
        "declined": {"count": sum(declined.values()), "by_reason": dict(sorted(declined.items()))},
        "advised": {"approved": _count(int(p["approved_amount"]) for p in advices
                                       if int(p["approved_amount"]) > 0),
                    "declined": {"count": sum(1 for p in advices
                                              if int(p["approved_amount"]) == 0)}},
        "incremented": _count(amounts("incremental_authorization")),
        "authorized": sum(m.authorized for m in models),
        "reversed": {"count": len(reversals), "amount": sum(m.reversed for m in models)},
        "expired": {"count": len(by_type.get("authorization_expiry", [])),
                    "amount": sum(m.released for m in models if m.status == "expired")},
        "cleared": cleared,
        "financial": financial,
        "force_posted": forced,
        "returned": returned,
        "return_reversed": return_reversed,
        "unmatched_returns": unmatched,
        "posted": sum(m.posted for m in models),
        "released": sum(m.released for m in models),
        "over_cleared": sum(m.over_cleared for m in models),
        "held": sum(m.held for m in models),
        "spent": spent,
        "net": spent - returned["amount"] - unmatched["amount"] + return_reversed["amount"],
    }


def card_totals(cards: Sequence[SimCard], decisions: Mapping[str, Expected],
                requests: Mapping[str, str], ledger: Ledger) -> dict[str, dict[str, Any]]:
    """Per card: the oracle's approvals and declines, and what its payments moved.
    `requests` maps each synchronous authorization id to its card id."""
    out: dict[str, dict[str, Any]] = {}
    for card in cards:
        mine = [decisions[a] for a, c in requests.items() if c == card.card_id]
        models = [m for m in ledger.payments.values() if m.card_id == card.card_id]
        unmatched = sum(a for c, _, a in ledger.unmatched_returns if c == card.card_id)
        cleared = sum(m.cleared for m in models)
        returned = sum(m.returned for m in models) + unmatched
        out[card.card_id] = {
            "currency": card.currency.code,
            "approved": _count(d.approved_amount for d in mine if d.approved),
            "declined": sum(1 for d in mine if not d.approved),
            "authorized": sum(m.authorized for m in models),
            "held": sum(m.held for m in models),
            "cleared": cleared, "returned": returned, "net": cleared - returned,
        }
    return out
