"""The simulator's workload: seeded scenarios and the network's message bodies, pure.

Everything here is a function of the seed, the day, the cards and cardpay's answers to the
authorization requests, so one seed gives byte-identical bodies. Each payment is one scenario:
an authorization request (approvable, over the balance, over the allowance, partial approval
allowed, frozen, closed, unknown card, blocked MCC), or a message the network decided alone
(a stand-in advice, approved or declined; a financial authorization; a force post; a return
naming no payment). An approved authorization or advice then gets a lifecycle (`LIFECYCLES`).

Time: authorizations fall in the first 12 hours of the day, increments and reversals up to 3 hours
after theirs, clearings, returns and force posts on the next day (the settlement day of the
report), expiries one day after the hold's validity (7 days, 30 for lodging and car rental),
the settlement report two hours into the day after.

`Message.after` lists the webhook ids a message must follow; `reorder` moves messages only where
that holds, which keeps every order one cardpay must accept AND one that ends each payment in the
same state: an increment or partial reversal before the final clearing, non-final clearings
anywhere before the final one (before an advice too: cardpay parks them), the end of a hold
(final clearing, full reversal, expiry) after everything that changes it, a return after the
clearings it refunds, a return reversal after its return.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from cardpay.devstack.network_oracle import Oracle, SimCard, SimulationBug

AUTHORIZATIONS = "/v1/network/authorizations"
EVENTS = "/v1/network/events"

SYNC_KINDS = ("approve", "partial", "insufficient", "over_limit", "frozen", "closed", "unknown",
              "blocked_mcc")
ASYNC_KINDS = ("advice", "advice_declined", "financial", "force_post", "unmatched_return")
LIFECYCLES = ("clear_full", "clear_partial", "clear_multiple", "clear_over", "increment",
              "reverse_full", "reverse_partial", "expire", "return", "return_reversal")
WEIGHTS = {"approve": 60, "partial": 4, "insufficient": 5, "over_limit": 3, "frozen": 2,
           "closed": 2, "unknown": 2, "blocked_mcc": 2, "advice": 4, "advice_declined": 1,
           "financial": 3, "force_post": 2, "unmatched_return": 1}
LIFECYCLE_WEIGHTS = {"clear_full": 30, "clear_partial": 8, "clear_multiple": 8, "clear_over": 6,
                     "increment": 6, "reverse_full": 6, "reverse_partial": 6, "expire": 5,
                     "return": 6, "return_reversal": 3}

LATE_REASON = "issuer_timeout"
"""The reason of the network's stand-in decline for an answer of ours that came too late."""
ANSWER_DEADLINE = timedelta(seconds=8)

MERCHANTS: tuple[tuple[str, str, str, str], ...] = (
    ("Edeka Mitte", "mer_grocery_01", "DE", "5411"),
    ("Café Central", "mer_cafe_02", "AT", "5812"),
    ("Shell Autobahn", "mer_fuel_03", "DE", "5541"),
    ("Bol.com", "mer_online_04", "NL", "5999"),
    ("Taxi Lisboa", "mer_taxi_05", "PT", "4121"),
    ("Hotel Adlon", "mer_hotel_06", "DE", "7011"),
    ("Sixt Rent", "mer_car_07", "DE", "7512"),
    ("MediaMarkt", "mer_tech_08", "ES", "5732"),
)
ATM = ("Sparkasse ATM", "mer_atm_09", "DE", "6011")
PREFERRED_MCC = {"increment": "7011", "clear_over": "5812", "clear_multiple": "5999"}
LONG_HOLD_MCCS = frozenset({*range(3501, 4000), 7011, 7512})
MAX_AMOUNT = 10**12


@dataclass(frozen=True, slots=True)
class Scenario:
    index: int
    kind: str
    lifecycle: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """One request the network sends (once; duplicates resend it unchanged)."""

    webhook_id: str
    path: str
    type: str
    payment_id: str
    payload: dict[str, Any]
    body: bytes
    at: datetime
    after: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Payment:
    """An authorization that opened a hold: what its lifecycle builds on."""

    authorization_id: str
    card_id: str
    currency: str
    amount: int
    merchant: dict[str, str]
    at: datetime
    lifecycle: str
    after: tuple[str, ...] = ()
    """The webhook ids its messages must follow (an advice's own id)."""


def wire_time(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def merchant(entry: tuple[str, str, str, str]) -> dict[str, str]:
    name, merchant_id, country, mcc = entry
    return {"name": name, "id": merchant_id, "country": country, "mcc": mcc}


def message(path: str, payment_id: str, payload: dict[str, Any], at: datetime, key: str,
            after: Sequence[str] = ()) -> Message:
    """The message with webhook id `wh_<key>`: one id per message, stable across runs."""
    return Message(f"wh_{key}", path, payload.get("type", "authorization_request"), payment_id,
                   payload, encode(payload), at, tuple(after))


# -- planning --------------------------------------------------------------------------------------
def plan(cards: Sequence[SimCard], payments: int, rng: random.Random) -> list[Scenario]:
    """`payments` scenarios: first one of each kind and lifecycle (in a seeded order) so that a
    run of a few dozen payments sends every message type, then weighted draws. A kind the cards
    cannot produce (no frozen card, no blocked MCC...) becomes an approvable request."""
    possible = _possible_kinds(cards)
    cover: list[tuple[str, str | None]] = [("approve", lc) for lc in LIFECYCLES]
    cover += [(k, None) for k in (*SYNC_KINDS[1:], *ASYNC_KINDS) if k in possible]
    cover += [("advice", "clear_multiple")]
    cover = [(k, lc) for k, lc in cover if k in possible]
    rng.shuffle(cover)
    kinds = [k for k in WEIGHTS if k in possible]
    out: list[Scenario] = []
    for index in range(payments):
        if index < len(cover):
            kind, lifecycle = cover[index]
        else:
            kind = rng.choices(kinds, [WEIGHTS[k] for k in kinds])[0]
            lifecycle = None
        if lifecycle is None and (kind in SYNC_KINDS or kind == "advice"):
            # a request the oracle expects declined still has one, used if cardpay approves
            lifecycle = rng.choices(LIFECYCLES, [LIFECYCLE_WEIGHTS[c] for c in LIFECYCLES])[0]
        out.append(Scenario(index, kind, lifecycle))
    return out


def _possible_kinds(cards: Sequence[SimCard]) -> set[str]:
    active = [c for c in cards if c.status == "active"]
    possible = {"unknown"}
    if active:
        possible |= {"approve", "partial", "insufficient", *ASYNC_KINDS}
    if any(c.allowance is not None and c.allowance < c.balance for c in active):
        possible.add("over_limit")
    if any(c.blocked_mccs for c in active):
        possible.add("blocked_mcc")
    possible |= {s for s in ("frozen", "closed") if any(c.status == s for c in cards)}
    return possible


# -- authorization requests -------------------------------------------------------------------------
@dataclass(slots=True)
class Workload:
    """Builds the messages of one run; `prefix` starts every id (one per seed)."""

    cards: Sequence[SimCard]
    seed: int
    day: date
    payments: int
    prefix: str = ""
    _start: datetime = field(init=False)

    def __post_init__(self) -> None:
        self.prefix = self.prefix or f"sim{self.seed}"
        self._start = datetime.combine(self.day, time(0), UTC)

    def rng(self, *parts: object) -> random.Random:
        """A generator of its own per purpose and payment, so one answer never shifts another
        payment's draws (string seeds hash the same in every process)."""
        return random.Random(":".join(map(str, (self.seed, *parts))))

    def auth_time(self, index: int) -> datetime:
        return self._start + timedelta(seconds=index * 43_200 // max(self.payments, 1))

    def settlement_day(self) -> date:
        return self.day + timedelta(days=1)

    def _pick(self, rng: random.Random, oracle: Oracle, *, status: str = "active",
              want: Any = None) -> SimCard | None:
        cards = [c for c in self.cards if c.status == status and (want is None or want(c))]
        if status == "active":  # prefer cards with velocity left: a velocity decline is noise
            fresh = [c for c in cards if not oracle.velocity_reached(c)]
            cards = fresh or cards
        return rng.choice(cards) if cards else None

    @staticmethod
    def _merchant_for(rng: random.Random, card: SimCard | None, lifecycle: str | None
                      ) -> dict[str, str]:
        blocked = set() if card is None else card.blocked_mccs
        allowed = [m for m in MERCHANTS if int(m[3]) not in blocked] or list(MERCHANTS)
        if lifecycle in PREFERRED_MCC:
            preferred = [m for m in allowed if m[3] == PREFERRED_MCC[lifecycle]]
            allowed = preferred or allowed
        if lifecycle == "expire":  # an ordinary 7-day hold most of the time
            allowed = [m for m in allowed if int(m[3]) not in LONG_HOLD_MCCS] or allowed
        return merchant(rng.choice(allowed))

    def authorization(self, scenario: Scenario, oracle: Oracle) -> Message:
        """The request of a synchronous scenario, its amount chosen against the oracle's view
        of the card (an approvable amount is within what is available now)."""
        rng = self.rng("auth", scenario.index)
        kind = scenario.kind
        partial = rng.random() < 0.2
        card: SimCard | None
        if kind in ("frozen", "closed"):
            card = self._pick(rng, oracle, status=kind)
        elif kind == "over_limit":
            card = self._pick(rng, oracle, want=lambda c: c.allowance is not None
                              and oracle.available(c) < oracle.funds(c))
        elif kind == "blocked_mcc":
            card = self._pick(rng, oracle, want=lambda c: bool(c.blocked_mccs))
        elif kind == "unknown":
            card = None
        elif kind == "approve":  # a card with money left, while there is one
            card = self._pick(rng, oracle, want=lambda c: oracle.available(c) >= 100)
        else:
            card = self._pick(rng, oracle)
        if card is None and kind != "unknown":  # no card fits any more: any active one will do
            card = self._pick(rng, oracle)
        shop = self._merchant_for(rng, card, scenario.lifecycle)
        if kind == "blocked_mcc" and card is not None:
            mcc = rng.choice(sorted(card.blocked_mccs))
            shop = {"name": f"Merchant {mcc:04d}", "id": f"mer_{mcc:04d}", "country": "DE",
                    "mcc": f"{mcc:04d}"}
        available = 0 if card is None else max(oracle.available(card), 0)
        funds = 0 if card is None else max(oracle.funds(card), 0)
        if kind == "approve":
            amount = rng.randint(1, max(1, min(50_000, available // 8))) if available else \
                rng.randint(100, 5_000)
        elif kind == "partial":
            amount, partial = available + rng.randint(1, 20_000), True
        elif kind == "insufficient":
            amount, partial = funds + rng.randint(1, 20_000), False
        elif kind == "over_limit":
            amount, partial = available + rng.randint(1, max(1, funds - available)), False
        else:
            amount = rng.randint(100, 20_000)
        currency = card.currency.code if card is not None else \
            rng.choice(sorted({c.currency.code for c in self.cards} or {"EUR"}))
        auth_id = f"{self.prefix}-auth-{scenario.index:06d}"
        payload = {"authorization_id": auth_id,
                   "card_id": card.card_id if card is not None
                   else f"{self.prefix}-nocard-{scenario.index:06d}",
                   "amount": min(amount, MAX_AMOUNT), "currency": currency, "merchant": shop,
                   "network_time": wire_time(self.auth_time(scenario.index)),
                   "partial_approval_supported": partial}
        return message(AUTHORIZATIONS, auth_id, payload, self.auth_time(scenario.index), auth_id)

    @staticmethod
    def stand_in_decline(request: Message) -> Message:
        """The network's advice for an authorization whose answer came after its deadline: it
        stood in and declined (whatever cardpay answered), approved amount 0."""
        p = request.payload
        at = request.at + ANSWER_DEADLINE
        return message(EVENTS, p["authorization_id"], {
            "type": "authorization_advice", "authorization_id": p["authorization_id"],
            "card_id": p["card_id"], "currency": p["currency"], "amount": p["amount"],
            "approved_amount": 0, "merchant": p["merchant"], "reason": LATE_REASON,
            "network_time": wire_time(at)}, at, f"{p['authorization_id']}-late")

    # -- messages the network sends without asking ------------------------------------------------
    def network_only(self, scenario: Scenario, oracle: Oracle) -> tuple[list[Message],
                                                                       Payment | None]:
        """An async-only scenario's messages, and the payment an approving advice opens."""
        rng = self.rng("net", scenario.index)
        card = self._pick(rng, oracle)
        if card is None:
            raise SimulationBug(f"scenario {scenario.kind} needs an active card")
        at = self.auth_time(scenario.index)
        base = {"card_id": card.card_id, "currency": card.currency.code}
        amount = rng.randint(100, 30_000)
        key = f"{self.prefix}-{scenario.index:06d}"
        shop = self._merchant_for(rng, card, scenario.lifecycle)
        if scenario.kind in ("advice", "advice_declined"):
            auth_id = f"{self.prefix}-auth-{scenario.index:06d}"
            approved = amount if scenario.kind == "advice" else 0
            advice = message(EVENTS, auth_id, {
                "type": "authorization_advice", "authorization_id": auth_id, **base,
                "amount": amount, "approved_amount": approved, "merchant": shop,
                "reason": "stand_in" if approved else "stand_in_decline",
                "network_time": wire_time(at)}, at, f"{key}-advice")
            if not approved:
                return [advice], None
            assert scenario.lifecycle is not None
            return [advice], Payment(auth_id, card.card_id, card.currency.code, amount, shop, at,
                                     scenario.lifecycle, (advice.webhook_id,))
        day = self._day_time(scenario.index)
        if scenario.kind == "financial":
            fin_id = f"{self.prefix}-fin-{scenario.index:06d}"
            first = message(EVENTS, fin_id, {
                "type": "financial_authorization", "authorization_id": fin_id, **base,
                "amount": amount, "merchant": merchant(ATM) if rng.random() < 0.5 else shop,
                "network_time": wire_time(day)}, day, f"{key}-financial")
            if rng.random() < 0.5:
                return [first], None
            back = rng.randint(1, amount)
            return [first, message(EVENTS, fin_id, {
                "type": "return", "return_id": f"{self.prefix}-ret-{scenario.index:06d}",
                **base, "amount": back, "merchant": first.payload["merchant"],
                "authorization_id": fin_id, "network_time": wire_time(day + timedelta(hours=2))},
                day + timedelta(hours=2), f"{key}-return", [first.webhook_id])], None
        if scenario.kind == "force_post":
            clearing_id = f"{self.prefix}-fp-{scenario.index:06d}"
            return [message(EVENTS, clearing_id, {
                "type": "force_post", "clearing_id": clearing_id, **base, "amount": amount,
                "merchant": shop, "network_time": wire_time(day)}, day, f"{key}-force")], None
        if scenario.kind == "unmatched_return":
            return [message(EVENTS, "", {
                "type": "return", "return_id": f"{self.prefix}-ret-{scenario.index:06d}", **base,
                "amount": rng.randint(100, 5_000), "merchant": shop,
                "network_time": wire_time(day)}, day, f"{key}-return")], None
        raise SimulationBug(f"no network-only scenario {scenario.kind!r}")

    def _day_time(self, index: int) -> datetime:
        """The scenario's slot on the settlement day."""
        return self.auth_time(index) + timedelta(days=1)

    # -- lifecycles ------------------------------------------------------------------------------------
    def lifecycle(self, payment: Payment, index: int) -> list[Message]:
        """The messages that follow an approval of `payment.amount` (see `LIFECYCLES`)."""
        rng = self.rng("life", index)
        a, lc = payment.amount, payment.lifecycle
        auth_id = payment.authorization_id
        base = {"authorization_id": auth_id}
        money = {"currency": payment.currency}
        day = self._day_time(index)
        key = f"{self.prefix}-{index:06d}"
        out: list[Message] = []

        def add(payload: dict[str, Any], at: datetime, name: str,
                after: Sequence[str] = (), *, parkable: bool = False) -> Message:
            # a clearing may come before an advice (cardpay parks it); nothing else may
            msg = message(EVENTS, auth_id, payload, at, f"{key}-{name}",
                          [*after] if parkable else [*payment.after, *after])
            out.append(msg)
            return msg

        def clearing(n: int, amount: int, final: bool, after: Sequence[str] = ()) -> Message:
            return add({"type": "clearing", "clearing_id": f"{self.prefix}-clr-{index:06d}-{n}",
                        **base, "card_id": payment.card_id, "amount": amount, **money,
                        "final": final, "network_time": wire_time(day + timedelta(minutes=n))},
                       day + timedelta(minutes=n), f"clearing{n}", after, parkable=True)

        def hold_change(n: int, payload: dict[str, Any], name: str) -> Message:
            at = payment.at + timedelta(hours=1 + n)
            return add({**payload, "network_time": wire_time(at)}, at, name)

        if lc == "expire":
            validity = 30 if int(payment.merchant["mcc"]) in LONG_HOLD_MCCS else 7
            at = payment.at + timedelta(days=validity + 1)
            add({"type": "authorization_expiry", **base, "network_time": wire_time(at)}, at,
                "expiry")
        elif lc == "reverse_full":
            hold_change(0, {"type": "authorization_reversal",
                            "reversal_id": f"{self.prefix}-rev-{index:06d}", **base,
                            "amount": a, **money, "full": True}, "reversal")
        elif lc == "reverse_partial" and a >= 2:
            back = rng.randint(1, a - 1)
            first = clearing(1, rng.randint(1, a - back - 1), False) if a - back >= 2 and \
                rng.random() < 0.5 else None
            done = 0 if first is None else int(first.payload["amount"])
            rev = hold_change(0, {"type": "authorization_reversal",
                                  "reversal_id": f"{self.prefix}-rev-{index:06d}", **base,
                                  "amount": back, **money, "full": False}, "reversal")
            rest = a - back - done
            ends = [rev.webhook_id] + ([] if first is None else [first.webhook_id])
            clearing(2, rest, True, ends)
        elif lc == "increment":
            more = rng.randint(1, max(1, a // 2))
            inc = hold_change(0, {"type": "incremental_authorization",
                                  "increment_id": f"{self.prefix}-inc-{index:06d}", **base,
                                  "card_id": payment.card_id, "amount": more, **money},
                              "increment")
            first = clearing(1, rng.randint(1, a - 1), False) if a >= 2 else None
            done = 0 if first is None else int(first.payload["amount"])
            ends = [inc.webhook_id] + ([] if first is None else [first.webhook_id])
            clearing(2, a + more - done, True, ends)
        elif lc == "clear_multiple" and a >= 3:
            cuts = sorted(rng.sample(range(1, a), 2))
            parts = [cuts[0], cuts[1] - cuts[0]]
            firsts = [clearing(n + 1, part, False) for n, part in enumerate(parts)]
            clearing(3, a - sum(parts), True, [m.webhook_id for m in firsts])
        elif lc == "clear_partial" and a >= 2:
            clearing(1, rng.randint(1, a - 1), True)
        elif lc == "clear_over":
            clearing(1, min(a + max(1, a * rng.randint(5, 20) // 100), MAX_AMOUNT), True)
        else:  # clear_full, return, return_reversal (and the short amounts of the others)
            final = clearing(1, a, True)
            if lc in ("return", "return_reversal"):
                back = a if rng.random() < 0.4 else rng.randint(1, a)
                at = day + timedelta(hours=2)
                ret = add({"type": "return", "return_id": f"{self.prefix}-ret-{index:06d}",
                           "card_id": payment.card_id, "amount": back, **money,
                           "merchant": payment.merchant, **base,
                           "clearing_id": final.payload["clearing_id"],
                           "network_time": wire_time(at)}, at, "return", [final.webhook_id])
                if lc == "return_reversal":
                    at = day + timedelta(hours=3)
                    add({"type": "return_reversal",
                         "return_reversal_id": f"{self.prefix}-rrv-{index:06d}",
                         "return_id": ret.payload["return_id"], "card_id": payment.card_id,
                         "amount": rng.randint(1, back), **money,
                         "network_time": wire_time(at)}, at, "return-reversal",
                        [ret.webhook_id])
        return out

    # -- the settlement report --------------------------------------------------------------------------
    def settlement_reports(self, messages: Sequence[Message]) -> list[Message]:
        """One VSS-110-like report per card currency for the settlement day: interchange (credits:
        returns; debits: clearings, financial authorizations, force posts, return reversals),
        the issuer's reimbursement fees (0.2 % of each purchase, rounded down, a credit), total."""
        day = self.settlement_day()
        at = datetime.combine(day + timedelta(days=1), time(2), self._start.tzinfo)
        out: list[Message] = []
        for currency in sorted({c.currency.code for c in self.cards}):
            mine = [m.payload for m in messages if m.payload.get("currency") == currency
                    and m.path == EVENTS]
            purchases = [int(p["amount"]) for p in mine if p["type"] in
                         ("clearing", "financial_authorization", "force_post")]
            credits = sum(int(p["amount"]) for p in mine if p["type"] == "return")
            debits = sum(purchases) + sum(int(p["amount"]) for p in mine
                                          if p["type"] == "return_reversal")
            count = len(purchases) + sum(1 for p in mine
                                         if p["type"] in ("return", "return_reversal"))
            fees = sum(amount * 2 // 1000 for amount in purchases)
            report_id = f"{self.prefix}-vss110-{day.isoformat()}-{currency}"

            def line(mode: str, kind: str, n: int, credit: int, debit: int) -> dict[str, Any]:
                return {"business_mode": mode, "amount_type": kind, "count": n,
                        "credit_amount": credit, "debit_amount": debit,
                        "net_amount": credit - debit}

            payload = {"type": "settlement_report", "report_id": report_id,
                       "settlement_date": day.isoformat(), "currency": currency,
                       "funds_transfer_date": (day + timedelta(days=1)).isoformat(),
                       "lines": [line("issuer", "interchange", count, credits, debits),
                                 line("issuer", "reimbursement_fees", len(purchases), fees, 0),
                                 line("total", "total", count, credits + fees, debits)],
                       "network_time": wire_time(at)}
            out.append(message(EVENTS, "", payload, at, report_id))
        return out


# -- reordering and duplicates ----------------------------------------------------------------------
def reorder(messages: Sequence[Message], fraction: float, rng: random.Random
            ) -> tuple[list[Message], set[str]]:
    """Move round(fraction x len) messages, each to a random place its `after` constraints (and
    those of the messages that follow it) allow. Returns the order and the webhook ids moved."""
    order = list(messages)
    followers: dict[str, list[str]] = {}
    for m in order:
        for dep in m.after:
            followers.setdefault(dep, []).append(m.webhook_id)
    chosen = rng.sample(range(len(order)), round(fraction * len(order))) if order else []
    picked = [messages[i] for i in chosen]
    moved: set[str] = set()
    for m in picked:
        current = order.index(m)
        order.pop(current)
        place = {x.webhook_id: i for i, x in enumerate(order)}
        low = max((place[d] + 1 for d in m.after if d in place), default=0)
        high = min((place[f] for f in followers.get(m.webhook_id, []) if f in place),
                   default=len(order))
        slots = [s for s in range(low, high + 1) if s != current] or [current]
        target = rng.choice(slots)
        order.insert(target, m)
        if target != current:
            moved.add(m.webhook_id)
    return order, moved


def duplicate_picks(count: int, fraction: float, rng: random.Random) -> set[int]:
    """Which of `count` messages are sent twice: round(fraction x count) of them."""
    return set(rng.sample(range(count), round(fraction * count))) if count else set()


def with_duplicates(order: Sequence[Message], fraction: float, rng: random.Random
                    ) -> list[tuple[Message, bool]]:
    """`order` with round(fraction x len) messages sent again (same webhook id, same body) at a
    random later place; the bool marks the repeat."""
    out: list[tuple[Message, bool]] = [(m, False) for m in order]
    for index in sorted(duplicate_picks(len(order), fraction, rng), reverse=True):
        at = rng.randint(index + 1, len(out))
        out.insert(at, (order[index], True))
    return out


def check_order(order: Sequence[Message]) -> None:
    """Raise `SimulationBug` if a message comes before one it must follow."""
    seen: set[str] = set()
    every = {m.webhook_id for m in order}
    for m in order:
        missing = [d for d in m.after if d in every and d not in seen]
        if missing:
            raise SimulationBug(f"{m.webhook_id} sent before {missing}")
        seen.add(m.webhook_id)


