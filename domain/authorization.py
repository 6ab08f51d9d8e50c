"""The authorization decision: approve (fully or partly) or decline, from account state alone.

The card network wants an answer within about two seconds, so the decision reads no chain and no
network: the caller locks the card, gathers an `AccountSnapshot` (the Safe's token balance as
indexed from the chain, the open holds from the ledger, the Roles module's daily allowance, the
card's status, blocked MCCs and recent authorizations) and calls `decide`, a pure function.

Precedence — the first rule that fails names the decline, so one request always gets one reason:

1. unknown card        (hard)   no card with this id
2. card closed         (hard)   closed is final
3. card frozen         (hard)   the cardholder or ops froze it
4. blocked MCC         (hard)   the merchant category is on the card's blocked list
5. velocity            (fraud)  the card already had `velocity_limit` authorizations in the window
6. funds and allowance (soft)   available = min(balance - open holds, remaining allowance);
                                an amount above it is declined — `insufficient_funds` when the
                                balance is what falls short (ties included), `over_daily_limit`
                                when only the allowance does — unless the request allows a
                                partial approval and at least one approvable unit is available.

Card state comes before fraud and funds: a frozen card is "frozen" whatever its balance, and a
velocity decline is not a hint about the balance. Funds come last because they are the only
soft, retry-later reason.

Invariants (tests/unit/test_authorization.py checks them with hypothesis):
- an approval never exceeds available = min(balance - holds, allowance), nor the request;
- an unknown, frozen or closed card is always declined;
- a partial approval happens only when the request allows it, and is a whole number of
  `partial_unit`s.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from domain.errors import DomainError, InvalidAmount, NaiveTimestamp
from domain.money import Currency, Money


class CardStatus(enum.StrEnum):
    ACTIVE = "active"
    FROZEN = "frozen"
    CLOSED = "closed"


class DeclineClass(enum.StrEnum):
    """Soft: may succeed later (funds, limits). Hard: will not succeed on this card. Fraud: risk."""

    SOFT = "soft"
    HARD = "hard"
    FRAUD = "fraud"


class DeclineReason(enum.StrEnum):
    INSUFFICIENT_FUNDS = "insufficient_funds"
    OVER_DAILY_LIMIT = "over_daily_limit"
    CARD_FROZEN = "card_frozen"
    CARD_CLOSED = "card_closed"
    BLOCKED_MCC = "blocked_mcc"
    UNKNOWN_CARD = "unknown_card"
    VELOCITY = "velocity"

    @property
    def decline_class(self) -> DeclineClass:
        return _CLASS[self]


_CLASS = {
    DeclineReason.INSUFFICIENT_FUNDS: DeclineClass.SOFT,
    DeclineReason.OVER_DAILY_LIMIT: DeclineClass.SOFT,
    DeclineReason.CARD_FROZEN: DeclineClass.HARD,
    DeclineReason.CARD_CLOSED: DeclineClass.HARD,
    DeclineReason.BLOCKED_MCC: DeclineClass.HARD,
    DeclineReason.UNKNOWN_CARD: DeclineClass.HARD,
    DeclineReason.VELOCITY: DeclineClass.FRAUD,
}


class StatusChangeRefused(DomainError):
    """A card status change that is not allowed (a closed card stays closed)."""


def change_status(current: CardStatus, wanted: CardStatus) -> CardStatus:
    """The status after a freeze, unfreeze or close: closing is final, the rest toggles."""
    if current is CardStatus.CLOSED and wanted is not CardStatus.CLOSED:
        raise StatusChangeRefused(f"the card is closed; it cannot become {wanted.value}")
    return wanted


@dataclass(frozen=True, slots=True)
class Allowance:
    """A Zodiac Roles allowance as the Roles module stores it, in token base units.

    `refill` is added every `period` seconds of block time (from `timestamp`, epoch seconds) up
    to `max_refill`; spends lower `balance`. A daily limit L is (L, L, L, 86400, start). The
    arithmetic below is the module's `accruedAllowance`, so the indexed state predicts what the
    chain will allow.
    """

    balance: int
    max_refill: int
    refill: int
    period: int
    timestamp: int

    def accrued(self, at: int) -> Allowance:
        """The allowance as the module sees it at block time `at` (refills applied)."""
        if self.period == 0 or at < self.timestamp + self.period:
            return self
        elapsed = (at - self.timestamp) // self.period
        balance = self.balance
        if balance < self.max_refill:
            balance = min(balance + self.refill * elapsed, self.max_refill)
        return Allowance(balance, self.max_refill, self.refill, self.period,
                         self.timestamp + elapsed * self.period)

    def consumed(self, amount: int, at: int) -> Allowance:
        """After a spend of `amount` at block time `at` (ConsumeAllowance)."""
        now = self.accrued(at)
        return Allowance(now.balance - amount, now.max_refill, now.refill, now.period,
                         now.timestamp)

    def remaining(self, now: datetime) -> int:
        return self.accrued(_epoch(now)).balance

    def resets_at(self, now: datetime) -> datetime | None:
        """When the next refill lands (None: the allowance never refills)."""
        if self.period == 0 or self.refill == 0:
            return None
        return datetime.fromtimestamp(self.accrued(_epoch(now)).timestamp + self.period, UTC)


def _epoch(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise NaiveTimestamp(f"{moment!r} has no UTC offset")
    return int(moment.timestamp())


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    """What the decision reads about one card, taken under the card's row lock.

    `balance` is the Safe's token balance as indexed from the chain; `open_holds` the sum of the
    card's pending ledger holds (supplied by the caller). `allowance` None means the Roles
    module's allowance is not tracked for this card (then only the balance limits it).
    `recent_authorizations` counts the card's authorizations in its velocity window;
    `velocity_limit` None means no velocity rule.
    """

    card_id: str
    status: CardStatus
    balance: Money
    open_holds: Money
    allowance: Allowance | None = None
    blocked_mccs: frozenset[int] = frozenset()
    velocity_limit: int | None = None
    recent_authorizations: int = 0

    @property
    def currency(self) -> Currency:
        return self.balance.currency

    def funds(self) -> Money:
        """Balance minus open holds (may be negative after a reorg or an over-clearing)."""
        return self.balance - self.open_holds

    def allowance_left(self, now: datetime) -> Money | None:
        return None if self.allowance is None else \
            Money(self.allowance.remaining(now), self.currency)

    def available(self, now: datetime) -> Money:
        """min(balance - holds, remaining allowance): the most any approval may be."""
        funds = self.funds()
        left = self.allowance_left(now)
        return funds if left is None or funds <= left else left


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """`amount` in the card's token currency (the API converts the network's fiat amount).

    `partial_unit`: the smallest step a partial approval may take, in token base units — the
    network counts fiat minor units, so an EURe card answering in cents uses 10**16.
    """

    card_id: str
    amount: Money
    mcc: int
    allow_partial: bool = False
    partial_unit: int = 1

    def __post_init__(self) -> None:
        if self.amount.units <= 0:
            raise InvalidAmount(f"an authorization is for a positive amount, got {self.amount}")
        if self.partial_unit < 1:
            raise InvalidAmount(f"partial_unit must be at least 1, got {self.partial_unit}")
        if not 0 <= self.mcc <= 9999:
            raise InvalidAmount(f"MCC {self.mcc} is not a 4-digit merchant category code")


@dataclass(frozen=True, slots=True)
class Decision:
    requested: Money
    approved_amount: Money
    """Zero when declined."""
    reason: DeclineReason | None = None
    """None when approved."""

    @property
    def approved(self) -> bool:
        return self.reason is None

    @property
    def partial(self) -> bool:
        return self.approved and self.approved_amount < self.requested

    @property
    def decline_class(self) -> DeclineClass | None:
        return None if self.reason is None else self.reason.decline_class


def _decline(request: AuthorizationRequest, reason: DeclineReason) -> Decision:
    return Decision(request.amount, Money.zero(request.amount.currency), reason)


def decide(request: AuthorizationRequest, snapshot: AccountSnapshot | None,
           now: datetime) -> Decision:
    """Approve or decline `request` against `snapshot` (None: no such card) at `now`.

    Raises `CurrencyMismatch` if the request is not in the card's token currency: converting is
    the caller's job, and a silent mismatch would compare cents with wei.
    """
    if snapshot is None:
        return _decline(request, DeclineReason.UNKNOWN_CARD)
    if snapshot.status is CardStatus.CLOSED:
        return _decline(request, DeclineReason.CARD_CLOSED)
    if snapshot.status is CardStatus.FROZEN:
        return _decline(request, DeclineReason.CARD_FROZEN)
    if request.mcc in snapshot.blocked_mccs:
        return _decline(request, DeclineReason.BLOCKED_MCC)
    if snapshot.velocity_limit is not None and \
            snapshot.recent_authorizations >= snapshot.velocity_limit:
        return _decline(request, DeclineReason.VELOCITY)
    funds = snapshot.funds()
    available = snapshot.available(now)
    if request.amount <= available:  # raises CurrencyMismatch on another currency
        return Decision(request.amount, request.amount)
    if request.allow_partial:
        steps = max(0, available.units) // request.partial_unit
        if steps > 0:
            return Decision(request.amount,
                            Money(steps * request.partial_unit, request.amount.currency))
    short = DeclineReason.INSUFFICIENT_FUNDS if funds <= available else \
        DeclineReason.OVER_DAILY_LIMIT
    return _decline(request, short)


LONG_HOLD_MCCS = frozenset({*range(3501, 4000), 7011, 7512})
"""Hotels (3501-3999 lodging brands, 7011) and car rental (7512): their authorizations stay
valid for 30 days, because the final amount is known only at check-out or return."""

HOLD_VALIDITY = timedelta(days=7)
LONG_HOLD_VALIDITY = timedelta(days=30)


def hold_validity(mcc: int) -> timedelta:
    """How long an approved authorization's hold stays open before it expires."""
    return LONG_HOLD_VALIDITY if mcc in LONG_HOLD_MCCS else HOLD_VALIDITY
