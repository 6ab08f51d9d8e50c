"""What a payment's events do to the ledger: a pure mapping, one event at a time.

Every payment has at most one pending transfer at a time (its hold) from the cardholder's funds
to network payable, always for what the aggregate says is `held`. An event that changes the hold
voids the old pending transfer and opens a new one for the new amount (linked: both or neither);
a clearing posts the pending transfer for what came out of it (the post releases the rest) and,
when more clearings may follow, opens a new one for what is still held. Money with no hold behind
it (an over-clearing, a force post, a single-message purchase, a return reversal) moves directly.

Transfer ids are derived from the payment id and the event's version, so applying an event twice
writes nothing new (the ledger answers EXISTS) and every writer names the same transfers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from domain import events as e
from domain.ledger.chart import AccountKind, ChartOfAccounts
from domain.ledger.model import Transfer, TransferFlags


class Code:
    """Transfer codes (what a transfer is for), as stored in the ledger."""

    HOLD = "authorization_hold"
    """Also the code of the hold's post (a clearing) and void (a release): TigerBeetle keeps the
    pending transfer's code on both."""
    UNHELD_CLEARING = "clearing_without_hold"
    RETURN = "merchant_return"
    RETURN_REVERSAL = "return_reversal"
    UNMATCHED_RETURN = "unmatched_return"


@dataclass(frozen=True, slots=True)
class Hold:
    """The payment's open pending transfer."""

    transfer_id: str
    amount: int
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Postings:
    """The transfers of one event: `linked` go as one all-or-nothing chain; each of `direct`
    goes alone and debits the cardholder's funds — when those do not cover it, the caller books
    the shortfall to the Safe's exposure (suspense), as an exception for a person."""

    linked: tuple[Transfer, ...] = ()
    direct: tuple[Transfer, ...] = ()
    hold: Hold | None = None
    """The payment's hold after the event."""


def _seconds(start: datetime, end: datetime) -> int:
    """The hold's timeout, rounded up: the ledger never lapses it before `expires_at`."""
    return max(1, math.ceil((end - start).total_seconds()))


class PaymentPostings:
    """The postings of one payment's events; `hold` carries the open pending transfer between
    events (replay the history through `apply` to find it)."""

    def __init__(self, chart: ChartOfAccounts, safe: str) -> None:
        self._chart = chart
        self._funds = chart.account_id(AccountKind.CARDHOLDER_FUNDS, safe)
        self._payable = chart.account_id(AccountKind.NETWORK_PAYABLE)

    def _id(self, event: e.DomainEvent, what: str) -> str:
        return f"{event.stream_id}:{event.version}:{what}"

    def _open(self, event: e.DomainEvent, amount: int, expires_at: datetime) -> tuple[Transfer, Hold]:
        tid = self._id(event, "hold")
        transfer = Transfer(tid, self._funds, self._payable, amount, self._chart.ledger, Code.HOLD,
                            TransferFlags.PENDING,
                            timeout=_seconds(event.occurred_at, expires_at),
                            user_data=event.stream_id)
        return transfer, Hold(tid, amount, expires_at)

    def _void(self, event: e.DomainEvent, hold: Hold) -> Transfer:
        # post and void carry the pending transfer's accounts, ledger and code (empty = its own)
        return Transfer(self._id(event, "void"),
                        flags=TransferFlags.VOID_PENDING, pending_id=hold.transfer_id,
                        user_data=event.stream_id)

    def _direct(self, event: e.DomainEvent, what: str, amount: int, code: str, *,
                to_cardholder: bool = False) -> Transfer:
        debit, credit = (self._payable, self._funds) if to_cardholder else \
            (self._funds, self._payable)
        return Transfer(self._id(event, what), debit, credit, amount, self._chart.ledger, code,
                        user_data=event.stream_id)

    def _resize(self, event: e.DomainEvent, hold: Hold | None, held: int,
                expires_at: datetime | None) -> Postings:
        """Make the hold `held` (and `expires_at`, if given): void and re-open when it changes."""
        deadline = expires_at or (hold.expires_at if hold else None)
        if hold is not None and hold.amount == held and deadline == hold.expires_at:
            return Postings(hold=hold)
        chain: list[Transfer] = []
        if hold is not None:
            chain.append(self._void(event, hold))
        new: Hold | None = None
        if held > 0 and deadline is not None:
            opened, new = self._open(event, held, deadline)
            chain.append(opened)
        return Postings(linked=_link(chain), hold=new)

    def apply(self, event: e.DomainEvent, hold: Hold | None) -> Postings:
        match event:
            case e.PaymentAuthorized():
                opened, new = self._open(event, event.amount.units, event.expires_at)
                return Postings(linked=(opened,), hold=new)
            case e.AuthorizationAdvised():
                return self._resize(event, hold, event.held.units, event.expires_at)
            case e.AuthorizationIncreased():
                return self._resize(event, hold, event.held.units, event.expires_at)
            case e.AuthorizationReversed():
                return self._resize(event, hold, event.held.units, None)
            case e.AuthorizationExpired():
                return self._resize(event, hold, 0, None)
            case e.ClearingRecorded():
                return self._clearing(event, hold)
            case e.PaymentForcePosted() | e.FinancialAuthorizationRecorded():
                return Postings(direct=(self._direct(event, "clearing", event.amount.units,
                                                     Code.UNHELD_CLEARING),), hold=hold)
            case e.ReturnRecorded():
                return Postings(linked=(self._direct(event, "return", event.amount.units,
                                                     Code.RETURN, to_cardholder=True),),
                                hold=hold)
            case e.ReturnReversed():
                return Postings(direct=(self._direct(event, "return_reversal",
                                                     event.amount.units,
                                                     Code.RETURN_REVERSAL),), hold=hold)
        return Postings(hold=hold)

    def _clearing(self, event: e.ClearingRecorded, hold: Hold | None) -> Postings:
        chain: list[Transfer] = []
        new: Hold | None = None
        held = event.held.units
        if hold is not None and event.from_hold.units > 0:
            chain.append(Transfer(self._id(event, "post"), amount=event.from_hold.units,
                                  flags=TransferFlags.POST_PENDING,
                                  pending_id=hold.transfer_id, user_data=event.stream_id))
            if held > 0:
                opened, new = self._open(event, held, hold.expires_at)
                chain.append(opened)
        else:
            resized = self._resize(event, hold, held, None)
            chain.extend(resized.linked)
            new = resized.hold
        direct: tuple[Transfer, ...] = ()
        # with no hold left in the ledger (it lapsed by its timeout) all of it moves directly
        unheld = event.beyond_hold.units + (event.from_hold.units if hold is None else 0)
        if unheld > 0:
            direct = (self._direct(event, "beyond_hold", unheld, Code.UNHELD_CLEARING),)
        return Postings(linked=_link(chain), direct=direct, hold=new)


def _link(chain: list[Transfer]) -> tuple[Transfer, ...]:
    """All but the last flagged LINKED: the chain commits all-or-nothing."""
    return tuple(replace(t, flags=t.flags | TransferFlags.LINKED) if i < len(chain) - 1 else t
                 for i, t in enumerate(chain))


def current_hold(postings: PaymentPostings, history: list[e.DomainEvent]) -> Hold | None:
    """The payment's open hold after `history` (what `apply` left)."""
    hold: Hold | None = None
    for event in history:
        hold = postings.apply(event, hold).hold
    return hold


CHAIN_SPEND = "card_spend_onchain"
"""Code of the transfer that moves a card payment's tokens from the Safe's mirror to the on-chain
settlement account (and, reversed, of a refund or a retraction)."""


def chain_movements(safe: str, history: Sequence[e.DomainEvent],
                    new: Sequence[e.DomainEvent]) -> list[Transfer]:
    """What `new` chain events of a payment the network knows move between its Safe's mirror
    and the on-chain settlement account: a spend that landed, a refund that landed, and their
    retractions by a reorg (`history` holds the retracted spend). The cardholder's funds do not
    move: the payment's hold and clearing already account for the money, so when the Safe's
    indexed balance drops by the spend its mirror drops with it and nothing is counted twice.
    Ids derive from the event (idempotent). A payment the network never knew (observer mode)
    moves nothing here: the mirror's catch-up at the next authorization takes its spend out of
    the funds, as any money leaving the Safe."""
    out: list[Transfer] = []
    for event in new:
        match event:
            case e.PaymentSpent(amount=amount):
                out.append(_move(event, amount.currency.code, safe, amount.units, out=True))
            case e.PaymentRefunded(amount=amount):
                out.append(_move(event, amount.currency.code, safe, amount.units, out=False))
            case e.RefundRetracted(amount=amount):
                out.append(_move(event, amount.currency.code, safe, amount.units, out=True))
            case e.SpendRetracted(evidence=evidence, amount=retracted):
                spent = retracted if retracted is not None else next(
                    (ev.amount for ev in [*history, *new]
                     if isinstance(ev, e.PaymentSpent) and ev.evidence == evidence), None)
                if spent is not None:
                    out.append(_move(event, spent.currency.code, safe, spent.units, out=False))
    return [t for t in out if t.amount > 0]


def _move(event: e.DomainEvent, ledger: str, safe: str, amount: int, *,
          out: bool) -> Transfer:
    """`out`: tokens left the Safe for the settlement account (else they came back)."""
    chart = ChartOfAccounts(ledger)
    mirror = chart.safe_mirror(safe).id
    settlement = chart.account_id(AccountKind.ONCHAIN_SETTLEMENT)
    debit, credit = (settlement, mirror) if out else (mirror, settlement)
    return Transfer(f"{event.stream_id}:{event.version}:onchain", debit, credit, amount, ledger,
                    CHAIN_SPEND, user_data=event.stream_id)
