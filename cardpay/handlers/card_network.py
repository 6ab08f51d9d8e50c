"""The card network's effects: the authorization decision and every asynchronous message.

`CardNetworkEffects.decide` and `.apply` are the `Decide` and `Apply` ports of
`cardpay.handlers.network.NetworkIngress`: they run inside the delivery's unit of work, so the
decision or effect, its events, its ledger transfers and the delivery record commit together.

The ledger mirrors each cardholder Safe's indexed token balance (ADR 0009): before a decision the
difference between the chain's balance and the Safe's mirror account is moved into (or out of)
the cardholder's funds, so the funds account holds what the chain says minus what cards have
committed (holds, clearings, returns). The decision uses exactly that, under the card's row lock,
and the database refuses a hold the funds do not cover: two authorizations of one card can never
together approve more than the Safe holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from cardpay.handlers.network import EffectUnavailable
from cardpay.handlers.payments import safe_lock
from cardpay.handlers.ports import Card, LockedCard, QuarantineItem, UnitOfWork
from domain import commands as c
from domain import events as e
from domain.authorization import AuthorizationRequest as DecisionInput
from domain.authorization import DeclineReason
from domain.authorization import decide as decide_authorization
from domain.card_network import authorization_expires_at
from domain.errors import AuthorizationNotFound, CurrencyMismatch, DomainError
from domain.ledger.chart import AccountKind, ChartOfAccounts
from domain.ledger.model import CreateTransferResult, Transfer, TransferFlags
from domain.ledger.payments import Code, PaymentPostings, current_hold
from domain.ledger.units import to_ledger_units
from domain.money import Currency, Money
from domain.network import (
    AuthorizationAdvice,
    AuthorizationDecision,
    AuthorizationExpiry,
    AuthorizationRequest,
    AuthorizationReversal,
    Clearing,
    FinancialAuthorization,
    ForcePost,
    IncrementalAuthorization,
    NetworkMessage,
    Return,
    ReturnReversal,
    SettlementReport,
)
from domain.payment import Payment, handle

log = logging.getLogger(__name__)

DEFAULT_DEADLINE = timedelta(seconds=2)
"""The network stands in after this (Stripe Issuing, Airwallex: 2 s; Marqeta, Lithic: 3 s)."""
LATE = "late_approval"
UNMATCHED_RETURN = "unmatched_return"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class UnknownCard(DomainError):
    """A message that needs the card (a force post, a single-message purchase) names a card
    that is not registered: refused (422) and quarantined for a person."""


class ReturnNotFound(DomainError):
    """A return reversal for a return that was never recorded."""


class ConflictingReturn(DomainError):
    """An unmatched return whose id was booked before with another amount or currency: the
    network contradicts itself, which no retry mends (a person looks at it)."""


class UnknownMessage(DomainError):
    """A message type with no effect defined (a new type the API accepted)."""


class NotYetKnown(EffectUnavailable):
    """A message about an authorization or return that has not arrived yet: answered 503 with
    nothing recorded, so the network's retry finds it. Its own `error` code: this 503 is the
    protocol's "send it again later" for a reordered message, not an outage."""

    code = "not_yet_known"


class PastDeadline(EffectUnavailable):
    """An authorization request that waited longer than the network's deadline before its turn
    came (the API is overloaded): the network has stood in already, so it is not decided at all
    (answered 503, nothing recorded; the network's advice opens the hold). Deciding it anyway
    would only spend the time the requests still in their deadline need."""

    code = "past_deadline"


class LedgerOutOfStep(EffectUnavailable):
    """The ledger refused a transfer the payment's events call for: nothing is written, the
    network retries, and the log says which transfer and why."""


class CardNetworkEffects:
    def __init__(self, *, deadline: timedelta = DEFAULT_DEADLINE,
                 clock: Callable[[], datetime] = _utcnow) -> None:
        self._deadline = deadline
        self._clock = clock

    # -- the synchronous decision ----------------------------------------------------------------
    def decide(self, uow: UnitOfWork, request: AuthorizationRequest,
               received_at: datetime) -> AuthorizationDecision:
        now = self._clock()
        if now - received_at > self._deadline:
            raise PastDeadline(f"authorization {request.authorization_id} waited "
                               f"{(now - received_at).total_seconds():.1f} s, past the network's "
                               f"{self._deadline.total_seconds():.1f} s deadline: not decided")
        amount = to_ledger_units(request.amount)
        locked = uow.cards.lock_for_authorization(request.card_id, now)
        wanted = DecisionInput(card_id=request.card_id, amount=amount,
                               mcc=int(request.merchant.mcc),
                               allow_partial=request.partial_approval_supported,
                               partial_unit=amount.units // request.amount.units)
        if locked is None:
            decision = decide_authorization(wanted, None, now)
            self._run(uow, c.DeclineAuthorization(
                command_id=request.authorization_id, payment_id=request.authorization_id,
                at=now, account="", amount=amount, merchant=request.merchant.name,
                mcc=request.merchant.mcc, reason=str(decision.reason)))
            assert decision.reason is not None
            return AuthorizationDecision.decline(request, decision.reason)
        card = locked.card
        if card.currency != amount.currency:
            raise CurrencyMismatch(f"card {card.card_id} spends {card.currency}, the network "
                                   f"asked in {request.amount.currency}")
        uow.lock(f"payment:{request.authorization_id}")  # after the card's: one lock order
        history = uow.events.load(request.authorization_id)
        earlier = _earlier_answer(history, request)
        if earlier is not None:
            return earlier  # the same authorization again (another delivery): decided once
        chart = ChartOfAccounts(card.currency.code)
        committed, balance = self._mirror(uow, chart, locked, request.authorization_id, now)
        locked = replace(locked, balance=balance)
        decision = decide_authorization(wanted, locked.snapshot(Money(committed, amount.currency)),
                                        now)
        late = self._clock() - received_at > self._deadline
        auth_id, merchant, mcc = request.authorization_id, request.merchant.name, \
            request.merchant.mcc
        if decision.approved and not late:
            uow.cards.record_authorization(card.card_id, now)  # velocity counts approvals
            self._run(uow, c.AuthorizePayment(
                command_id=auth_id, payment_id=auth_id, at=now, account=card.safe,
                merchant=merchant, mcc=mcc, amount=decision.approved_amount, requested=amount,
                expires_at=authorization_expires_at(now, mcc)),
                history=history, accounts_ready=True)
        else:
            if decision.approved:  # late: answered as decided, but nothing is held
                log.warning("authorization %s approved after the %.1f s deadline: recorded as "
                            "late, nothing held (the network stood in)",
                            request.authorization_id, self._deadline.total_seconds())
            self._run(uow, c.DeclineAuthorization(
                command_id=auth_id, payment_id=auth_id, at=now, account=card.safe,
                merchant=merchant, mcc=mcc, amount=amount,
                reason=LATE if decision.approved else str(decision.reason)),
                history=history, accounts_ready=True)
        if decision.approved:
            return AuthorizationDecision.approve(
                request, decision.approved_amount.convert(request.amount.currency))
        assert decision.reason is not None
        return AuthorizationDecision.decline(request, decision.reason)

    def _mirror(self, uow: UnitOfWork, chart: ChartOfAccounts, locked: LockedCard, key: str,
                now: datetime) -> tuple[int, int]:
        """Bring the Safe's mirror to the indexed balance (under the Safe's lock: several cards
        may spend from one Safe); returns what its cards have committed (holds + clearings -
        returns, whether booked to the funds or to the Safe's exposure), which the mirror never
        changes."""
        safe = locked.card.safe
        uow.lock(safe_lock(chart.ledger, safe))
        # the balance again, now that the Safe is ours: the listener moves the mirror and the
        # indexed balance together under this lock, and a balance read before it could be older
        # than the mirror read after it (a spend counted as money coming in)
        fresh = uow.cards.balance(safe, locked.card.token)
        balance = locked.balance if fresh is None else fresh.balance
        ids = [chart.cardholder(safe).id, chart.safe_mirror(safe).id, chart.exposure(safe).id]
        found = {a.id: a for a in uow.ledger.lookup_accounts(ids)}
        if len(found) < len(ids):
            self._ensure_accounts(uow, chart, safe)
            found = {a.id: a for a in uow.ledger.lookup_accounts(ids)}
        funds, mirror, exposure = (found[i] for i in ids)
        mirrored = mirror.debits_posted - mirror.credits_posted
        available = funds.credits_posted - funds.debits_posted - funds.debits_pending
        owed = exposure.debits_pending + exposure.debits_posted - exposure.credits_posted
        committed = mirrored - available + owed
        delta = balance - mirrored
        # money out of the Safe leaves the funds only as far as they are not committed; the
        # rest waits (and shows: the Safe holds less than its cards committed)
        moved = delta if delta > 0 else -min(-delta, max(available, 0))
        if moved:
            debit, credit = (mirror.id, funds.id) if moved > 0 else (funds.id, mirror.id)
            result, = uow.ledger.create_transfers([Transfer(
                f"mirror:{key}", debit, credit, abs(moved), chart.ledger, "chain_balance",
                user_data=safe)], now)
            if not result.applied:
                raise LedgerOutOfStep(f"mirror of Safe {safe} refused: {result.value}")
        if moved != delta:
            uow.quarantine.add(QuarantineItem(
                source="network", key=f"overcommitted:{safe}:{balance}",
                reason="safe_overcommitted",
                payload={"safe": safe, "ledger": chart.ledger, "balance": balance,
                         "committed": committed}))
        return committed, balance

    def expire_by_timer(self, uow: UnitOfWork, payment_id: str, at: datetime) -> dict[str, Any]:
        """Our own timer's expiry of a payment's hold (`cardpay.handlers.network_timers`): the
        Payment records `AuthorizationExpired` (refused before its `expires_at`) and the ledger
        releases the hold, exactly as for the network's expiry message, through the same
        `_run`."""
        return self._run(uow, c.ExpireAuthorization(
            command_id=f"timer-expiry:{payment_id}", payment_id=payment_id, at=at,
            by_network=False))

    # -- asynchronous messages -------------------------------------------------------------------
    def apply(self, uow: UnitOfWork, message: NetworkMessage) -> dict[str, Any]:
        try:
            return self._apply(uow, message)
        except (AuthorizationNotFound, ReturnNotFound) as exc:
            # sent before what it refers to (reordered): not recorded, so the network's retry
            # is processed afresh once the authorization or return has arrived
            raise NotYetKnown(str(exc)) from exc

    def _apply(self, uow: UnitOfWork, message: NetworkMessage) -> dict[str, Any]:
        now = self._clock()
        match message:
            case AuthorizationAdvice():
                card = self._known(uow, message.card_id)
                approved = self._tokens(message.approved_amount)
                return self._run(uow, c.AdviseAuthorization(
                    command_id=f"advice:{message.authorization_id}",
                    payment_id=message.authorization_id, at=now, account=card.safe,
                    amount=approved if not approved.is_zero else self._tokens(message.amount),
                    merchant=message.merchant.name, mcc=message.merchant.mcc,
                    expires_at=authorization_expires_at(now, message.merchant.mcc),
                    approved=not approved.is_zero, reason=message.reason),
                    card_id=message.card_id)
            case IncrementalAuthorization():
                return self._run(uow, c.IncreaseAuthorization(
                    command_id=message.increment_id, payment_id=message.authorization_id,
                    at=now, amount=self._tokens(message.amount)), card_id=message.card_id)
            case AuthorizationReversal():
                return self._run(uow, c.ReverseAuthorization(
                    command_id=message.reversal_id, payment_id=message.authorization_id, at=now,
                    amount=None if message.full else self._tokens(message.amount),
                    reason="network reversal"))
            case AuthorizationExpiry():
                # the network says when it expired (our own timer would use its clock)
                return self._run(uow, c.ExpireAuthorization(
                    command_id=f"expiry:{message.authorization_id}",
                    payment_id=message.authorization_id, at=max(now, message.network_time),
                    by_network=True))
            case Clearing():
                uow.references.put(f"clearing:{message.clearing_id}", message.authorization_id)
                return self._run(uow, c.RecordClearing(
                    command_id=message.clearing_id, payment_id=message.authorization_id, at=now,
                    amount=self._tokens(message.amount), final=message.final),
                    card_id=message.card_id)
            case FinancialAuthorization():
                card = self._known(uow, message.card_id)
                return self._run(uow, c.RecordFinancialAuthorization(
                    command_id=message.authorization_id, payment_id=message.authorization_id,
                    at=now, account=card.safe, amount=self._tokens(message.amount),
                    merchant=message.merchant.name, mcc=message.merchant.mcc),
                    card_id=message.card_id)
            case ForcePost():
                card = self._known(uow, message.card_id)
                uow.references.put(f"clearing:{message.clearing_id}", message.clearing_id)
                return self._run(uow, c.ForcePost(
                    command_id=message.clearing_id, payment_id=message.clearing_id, at=now,
                    account=card.safe, amount=self._tokens(message.amount),
                    merchant=message.merchant.name, mcc=message.merchant.mcc),
                    card_id=message.card_id)
            case Return():
                return self._return(uow, message, now)
            case ReturnReversal():
                payment_id = uow.references.get(f"return:{message.return_id}")
                if payment_id is None:
                    raise ReturnNotFound(f"return reversal {message.return_reversal_id}: no "
                                         f"return {message.return_id} was recorded")
                return self._run(uow, c.ReverseReturn(
                    command_id=message.return_reversal_id, payment_id=payment_id, at=now,
                    amount=self._tokens(message.amount)), card_id=message.card_id)
            case SettlementReport():
                added = uow.settlement_reports.add(
                    message.report_id, message.settlement_date, message.currency.code,
                    _report_body(message))
                return {"status": "recorded" if added else "already_recorded",
                        "report_id": message.report_id}
        raise UnknownMessage(f"no effect is defined for {type(message).__name__}")

    def _return(self, uow: UnitOfWork, message: Return, now: datetime) -> dict[str, Any]:
        amount = self._tokens(message.amount)
        payment_id: str | None = None
        if message.authorization_id and uow.events.load(message.authorization_id):
            payment_id = message.authorization_id
        if payment_id is None and message.clearing_id:
            payment_id = uow.references.get(f"clearing:{message.clearing_id}")
        if payment_id is None:
            # money the network gave back that no payment explains: suspense, and an exception
            chart = ChartOfAccounts(amount.currency.code)
            self._ensure_accounts(uow, chart)
            result, = uow.ledger.create_transfers([Transfer(
                f"return:{message.return_id}:suspense",
                chart.account_id(AccountKind.NETWORK_PAYABLE),
                chart.account_id(AccountKind.SUSPENSE), amount.units, chart.ledger,
                Code.UNMATCHED_RETURN, user_data=message.return_id)], now)
            if result.value.startswith("exists_with_different"):
                raise ConflictingReturn(f"return {message.return_id} was booked to suspense "
                                        f"before with another amount or currency")
            if not result.applied:
                raise LedgerOutOfStep(f"unmatched return {message.return_id}: {result.value}")
            uow.quarantine.add(QuarantineItem(
                source="network", key=f"return:{message.return_id}", reason=UNMATCHED_RETURN,
                payload={"return_id": message.return_id, "card_id": message.card_id,
                         "amount": amount.units, "currency": amount.currency.code,
                         "authorization_id": message.authorization_id,
                         "clearing_id": message.clearing_id}))
            return {"status": "suspense", "return_id": message.return_id}
        uow.references.put(f"return:{message.return_id}", payment_id)
        return self._run(uow, c.RecordReturn(
            command_id=message.return_id, payment_id=payment_id, at=now, amount=amount),
            card_id=message.card_id)

    # -- pieces ----------------------------------------------------------------------------------
    @staticmethod
    def _tokens(amount: Money) -> Money:
        return to_ledger_units(amount)

    @staticmethod
    def _known(uow: UnitOfWork, card_id: str) -> Card:
        card = uow.cards.get(card_id)
        if card is None:
            raise UnknownCard(f"card {card_id} is not registered")
        return card

    @staticmethod
    def _ensure_accounts(uow: UnitOfWork, chart: ChartOfAccounts, safe: str | None = None) -> None:
        """The ledger's house accounts, and the Safe's funds and mirror (created on first use;
        creating again is a harmless EXISTS)."""
        wanted = [*chart.house_accounts()]
        if safe:
            wanted += [chart.cardholder(safe), chart.safe_mirror(safe), chart.exposure(safe)]
        if len(uow.ledger.lookup_accounts([a.id for a in wanted])) < len(wanted):
            uow.ledger.create_accounts(wanted)

    def _run(self, uow: UnitOfWork, command: c.Command, card_id: str | None = None, *,
             history: list[e.DomainEvent] | None = None,
             accounts_ready: bool = False) -> dict[str, Any]:
        """Decide the command on the payment and post what its new events move in the ledger.

        Locks in one order everywhere, the card's row first (when the message names the card),
        then the payment: a message and an authorization of one card serialize, so the Safe's
        mirror is brought up to date by one writer at a time. `decide` passes the `history` it
        loaded under those locks and says its accounts exist (`_mirror` made them)."""
        locked = uow.cards.lock_for_authorization(card_id, command.at) if card_id else None
        if history is None:  # else the caller holds the payment's lock and loaded it
            uow.lock(f"payment:{command.payment_id}")
            history = uow.events.load(command.payment_id)
        payment = Payment.rehydrate(command.payment_id, history)
        handle(payment, command)
        new = list(payment.pending_events)
        # a clearing parked before its authorization has no account yet: the card's Safe
        safe = payment.network.account or (locked.card.safe if locked else None)
        currency = _currency([*history, *new])
        if new and safe and currency is not None:
            chart = ChartOfAccounts(currency.code)
            if not accounts_ready:
                self._ensure_accounts(uow, chart, safe)
            if locked is not None and locked.card.safe == safe:
                self._mirror(uow, chart, locked,
                             f"{command.payment_id}:{command.command_id}", command.at)
            postings = PaymentPostings(chart, safe)
            hold = current_hold(postings, history)
            if hold is not None and hold.expires_at <= command.at:
                # the ledger lapses a hold at its timeout; release this one now (not a sweep of
                # everyone's: that would lock other Safes' accounts)
                uow.ledger.expire_pending(command.at, [hold.transfer_id])
                hold = None
            for event in new:
                step = postings.apply(event, hold)
                # only what the network imposed may exceed the funds; our own approval never
                self._post(uow, chart, safe, step.linked, step.direct, command.at,
                           imposed=not isinstance(event, e.PaymentAuthorized))
                hold = step.hold
        elif new and currency is not None and _moves_money(new):
            raise UnknownCard(f"payment {command.payment_id} names no registered card; its "
                              "money cannot be booked")
        if new:
            # last: appending takes the event store's table lock (ADR 0002), held to the commit
            uow.events.append(new)
        status = "duplicate" if not new else payment.network.status.value
        return {"status": status, "payment_id": command.payment_id,
                "events": [type(event).__name__ for event in new]}

    def _post(self, uow: UnitOfWork, chart: ChartOfAccounts, safe: str,
              linked: tuple[Transfer, ...], direct: tuple[Transfer, ...], now: datetime, *,
              imposed: bool) -> None:
        exposure = chart.exposure(safe).id
        linked = tuple(t for r in linked for t in self._returned(uow, exposure, r))
        if linked:
            results = uow.ledger.create_transfers(list(linked), now)
            if imposed and CreateTransferResult.EXCEEDS_CREDITS in results:
                # a hold the network imposed (stand-in advice, increment) beyond the funds: it is
                # honoured, held against the Safe's exposure, and shown as an exception
                linked = tuple(self._exposed(uow, exposure, t) if r is
                               CreateTransferResult.EXCEEDS_CREDITS else t
                               for t, r in zip(linked, results, strict=True))
                results = uow.ledger.create_transfers(list(linked), now)
            failed = [(t.id, r) for t, r in zip(linked, results, strict=True) if not r.applied]
            if failed:
                raise LedgerOutOfStep(f"the ledger refused {failed[0][0]}: {failed[0][1].value}")
        for transfer in direct:
            result, = uow.ledger.create_transfers([transfer], now)
            if result is CreateTransferResult.EXCEEDS_CREDITS:
                # money the network took anyway: what the funds cover from them, the rest from
                # the Safe's exposure
                result = self._split(uow, transfer, exposure, now)
            if not result.applied:
                raise LedgerOutOfStep(f"the ledger refused {transfer.id}: {result.value}")

    def _split(self, uow: UnitOfWork, transfer: Transfer, exposure: str,
               now: datetime) -> CreateTransferResult:
        funds, = uow.ledger.lookup_accounts([transfer.debit_account_id])
        covered = max(0, funds.credits_posted - funds.debits_posted - funds.debits_pending)
        parts = [replace(transfer, id=transfer.id + ":exposure", debit_account_id=exposure,
                         amount=transfer.amount - covered)]
        if covered:
            parts = [replace(transfer, amount=covered, flags=TransferFlags.LINKED), *parts]
        self._short(uow, parts[-1], "funds_short")
        results = uow.ledger.create_transfers(parts, now)
        return next((r for r in results if not r.applied), results[-1])

    @staticmethod
    def _returned(uow: UnitOfWork, exposure: str, transfer: Transfer) -> list[Transfer]:
        """A merchant return pays back the Safe's exposure first (what the network took beyond
        its funds), then the funds: it never hands the cardholder money they never had."""
        if transfer.code != Code.RETURN:
            return [transfer]
        found = uow.ledger.lookup_accounts([exposure])
        owed = found[0].debits_posted - found[0].credits_posted if found else 0
        if owed <= 0:
            return [transfer]
        back = min(owed, transfer.amount)
        parts = [replace(transfer, id=transfer.id + ":exposure", credit_account_id=exposure,
                         amount=back)]
        if transfer.amount > back:
            parts.append(replace(transfer, amount=transfer.amount - back))
        return _chain(parts)

    def _exposed(self, uow: UnitOfWork, exposure: str, hold: Transfer) -> Transfer:
        """The hold against the Safe's exposure instead of its funds (same id: post and void
        still find it), with an exception row for a person."""
        self._short(uow, hold, "stand_in_exposure")
        return replace(hold, debit_account_id=exposure)

    @staticmethod
    def _short(uow: UnitOfWork, transfer: Transfer, reason: str) -> None:
        uow.quarantine.add(QuarantineItem(
            source="network", key=f"ledger:{transfer.id}", reason=reason,
            payload={"transfer_id": transfer.id, "amount": transfer.amount,
                     "ledger": transfer.ledger, "payment_id": transfer.user_data,
                     "funds_account": transfer.debit_account_id}))


def _chain(parts: list[Transfer]) -> list[Transfer]:
    return [replace(t, flags=t.flags | TransferFlags.LINKED) if i < len(parts) - 1 else t
            for i, t in enumerate(parts)]


MONEY_EVENTS = (e.PaymentAuthorized, e.AuthorizationAdvised, e.AuthorizationIncreased,
                e.ClearingRecorded, e.PaymentForcePosted, e.FinancialAuthorizationRecorded,
                e.ReturnRecorded, e.ReturnReversed)


def _moves_money(events: list[e.DomainEvent]) -> bool:
    return any(isinstance(event, MONEY_EVENTS) for event in events)


def _earlier_answer(history: list[e.DomainEvent],
                    request: AuthorizationRequest) -> AuthorizationDecision | None:
    """The answer already given to this authorization id, from its recorded decision."""
    fiat = request.amount.currency
    for event in history:
        if isinstance(event, e.PaymentAuthorized):
            return AuthorizationDecision.approve(
                request, min(event.amount.convert(fiat), request.amount))
        if isinstance(event, e.AuthorizationDeclined):
            if event.reason == LATE:
                return AuthorizationDecision.approve(
                    request, min(event.amount.convert(fiat), request.amount))
            return AuthorizationDecision.decline(request, DeclineReason(event.reason))
    return None


def _currency(events: list[e.DomainEvent]) -> Currency | None:
    """The payment's token: every event with money is in it (the aggregate checks)."""
    for event in events:
        for name in ("amount", "released", "held"):
            money = getattr(event, name, None)
            if isinstance(money, Money):
                return money.currency
    return None


def _report_body(report: SettlementReport) -> dict[str, Any]:
    """The report as kept: amounts in the currency's minor units."""
    return {
        "report_id": report.report_id, "currency": report.currency.code,
        "settlement_date": report.settlement_date.isoformat(),
        "funds_transfer_date": report.funds_transfer_date.isoformat(),
        "network_time": report.network_time.isoformat(),
        "lines": [{"business_mode": line.business_mode.value,
                   "amount_type": line.amount_type.value, "count": line.count,
                   "credit_amount": line.credit_amount.units,
                   "debit_amount": line.debit_amount.units,
                   "net_amount": line.net_amount.units} for line in report.lines],
    }

