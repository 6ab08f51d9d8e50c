"""Payment commands: load the aggregate, decide, append — inside the caller's unit of work.

`PaymentService` is the entry for commands from outside the chain (the network, sagas, operators):
one unit of work per command, idempotent by the command id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from cardpay.errors import ConcurrencyConflict
from cardpay.handlers.ports import ExpectedRefund, QuarantineItem, UnitOfWork
from domain import commands as c
from domain.card_network import Network
from domain.events import SpendRetracted
from domain.ledger.chart import ChartOfAccounts
from domain.ledger.model import Transfer
from domain.ledger.payments import chain_movements
from domain.payment import Payment, handle
from domain.serialization import from_json

log = logging.getLogger(__name__)

CONFLICT_RETRIES = 3
UowFactory = Callable[[], UnitOfWork]


def safe_lock(ledger: str, safe: str) -> str:
    """The advisory lock of one Safe in one token ledger. Lock order, everywhere: a Safe's lock
    (several in sorted order) BEFORE the event store's append lock (`LOCK TABLE events`, held to
    the commit). The authorization decision takes the Safe's lock, then appends; a writer that
    appended first and then took a Safe's lock deadlocked with it (found by the end-to-end
    benchmark: the listener's ranges against the API, 29-132 deadlocks a minute, each a 503 to
    the network or a range tried again)."""
    return f"safe:{ledger}:{safe.lower()}"


def lock_safes(uow: UnitOfWork, safes: Iterable[tuple[str, str]]) -> None:
    """Take the locks of these (ledger, Safe) pairs in one order (a holder of one of them may
    wait for another)."""
    for key in sorted({safe_lock(ledger, safe) for ledger, safe in safes}):
        uow.lock(key)


def moved_safes(uow: UnitOfWork, payments: Iterable[Payment]) -> set[tuple[str, str]]:
    """(ledger, Safe) of every ledger movement the payments' pending chain events will book:
    the locks to take before they are appended."""
    return {(transfer.ledger, safe) for payment in payments
            if any(getattr(ev, "evidence", None) is not None for ev in payment.pending_events)
            for _, safe, transfer in chain_moves(uow, payment)}


def execute(uow: UnitOfWork, command: c.Command) -> Payment:
    """Decide one payment command inside the caller's transaction (no commit here).

    Runs in a savepoint and decides again on fresh state when another writer appended first.
    A command whose events move tokens on chain takes its Safe's lock before the append
    (`safe_lock`: one lock order).
    """
    for attempt in range(1, CONFLICT_RETRIES + 1):
        try:
            with uow.savepoint():
                payment = Payment.rehydrate(command.payment_id,
                                            uow.events.load(command.payment_id))
                handle(payment, command)
                lock_safes(uow, moved_safes(uow, [payment]))
                uow.events.append(payment.pending_events)
                return payment
        except ConcurrencyConflict:
            if attempt == CONFLICT_RETRIES:
                raise
            log.info("concurrent write to %s; deciding %s again", command.payment_id,
                     command.command_id)
    raise AssertionError("unreachable")


ChainMove = tuple[tuple[int, int, int], str, Transfer]
"""(chain order: block, log index, and the transfer's place among the event's; the Safe; the
ledger transfer) of one chain movement."""


def chain_moves(uow: UnitOfWork, payment: Payment) -> list[ChainMove]:
    """The ledger side of a card payment's new chain events (`chain_movements`): its Safe's
    mirror and the on-chain settlement account move with the tokens, each in the chain order of
    the log that moved them. Only for payments the network knows (observer mode moves nothing
    here: the next authorization's catch-up takes such a spend out of the funds)."""
    new = list(payment.pending_events)
    if not new or payment.network.status is Network.NONE or payment.account is None:
        return []
    history = uow.events.load(payment.id) \
        if any(isinstance(ev, SpendRetracted) for ev in new) else []
    out: list[ChainMove] = []
    for event in new:
        evidence = getattr(event, "evidence", None)
        for n, transfer in enumerate(chain_movements(payment.account, [*history, *new],
                                                     [event])):
            where = (evidence.block_number, evidence.log_index) if evidence else (0, 0)
            out.append(((*where, n), payment.account, transfer))
    return out


def book_chain_moves(uow: UnitOfWork, moves: list[ChainMove]) -> list[tuple[Transfer, str]]:
    """Book `moves` in the ledger in chain order, in the caller's unit of work, under each Safe's
    lock (the authorization decision's: it reads the indexed balance and the mirror under it, so
    it sees the moves and the balance together or neither). Chain order matters: the mirror may
    never go below zero, and a refund that landed before a spend may be what paid for it (a
    Safe overcommitted by the network's stand-in approvals), so booking the range's spends before
    its refunds would refuse a spend the chain accepted. Safes the ledger does not follow yet
    (no mirror: their first authorization will) move nothing. Returns the movements the ledger
    refused, with its answer."""
    if not moves:
        return []
    followed: list[ChainMove] = []
    pairs = sorted({(t.ledger, safe) for _, safe, t in moves})
    lock_safes(uow, pairs)
    for ledger, safe in pairs:
        chart = ChartOfAccounts(ledger)
        if not uow.ledger.lookup_accounts([chart.safe_mirror(safe).id]):
            continue
        house = chart.house_accounts()
        if len(uow.ledger.lookup_accounts([a.id for a in house])) < len(house):
            uow.ledger.create_accounts(house)
        followed += [m for m in moves if m[2].ledger == ledger and m[1] == safe]
    transfers = [t for _, _, t in sorted(followed, key=lambda m: m[0])]
    if not transfers:
        return []
    results = uow.ledger.create_transfers(transfers, datetime.now(UTC))
    return [(transfer, str(result.value))
            for transfer, result in zip(transfers, results, strict=True) if not result.applied]


def move_chain_tokens(uow: UnitOfWork, payment: Payment) -> list[tuple[Transfer, str]]:
    """`chain_moves` of one payment, booked at once (`book_chain_moves`)."""
    return book_chain_moves(uow, chain_moves(uow, payment))


def confirmation(seen: c.RecordSettlementTransfer, expected: ExpectedRefund) -> c.ConfirmRefund:
    """The refund confirmation a settlement transfer amounts to, once matched to its refund."""
    return c.ConfirmRefund(
        command_id=seen.command_id, payment_id=expected.payment_id, at=seen.at,
        refund_id=expected.refund_id, amount=seen.amount, evidence=seen.evidence,
    )


def submit_refund(uow: UnitOfWork, command: c.RecordRefundSubmission, *, recipient: str,
                  token: str, amount: int) -> None:
    """Record the refund's transaction and the settlement transfer that will confirm it, in the
    caller's unit of work; a transfer the listener saw before (kept unmatched) confirms it here.
    The refund's Safe is locked first: the confirmation books it after the submission's append
    (`safe_lock`: one lock order).
    """
    refund = Payment.rehydrate(command.payment_id,
                               uow.events.load(command.payment_id)).refunds.get(command.refund_id)
    if refund is not None:
        lock_safes(uow, [(refund.amount.currency.code, recipient)])
    execute(uow, command)
    expected = ExpectedRefund(command.payment_id, command.refund_id, command.tx_hash,
                              recipient, token, amount)
    uow.refunds.expect(expected)
    seen = uow.refunds.take_unmatched(command.tx_hash, recipient, token, amount)
    if seen is not None and uow.claims.claim(seen.command_id, block_hash=seen.block_hash):
        uow.refunds.match(command.tx_hash, recipient, token, amount,
                          log_key=seen.command_id, block_hash=seen.block_hash)
        confirmed = execute(uow, confirmation(from_json(c.RecordSettlementTransfer,
                                                        seen.command), expected))
        uow.quarantine.forget(seen.command_id)
        for transfer, refusal in move_chain_tokens(uow, confirmed):
            uow.quarantine.add(QuarantineItem(
                "ledger", f"ledger:{transfer.id}",
                f"the ledger refused the chain movement {transfer.id}: {refusal}",
                {"transfer": transfer.id, "amount": transfer.amount,
                 "payment_id": confirmed.id}))


def submit_own_refund(uow: UnitOfWork, command: c.RecordRefundSubmission) -> None:
    """`submit_refund` for a refund our refund sender sent (the saga's command names only its
    hash): the transfer goes to the payment's Safe, in the token of its card, for the amount
    the refund asked for. Without a card for that Safe and currency (nothing to match the
    transfer against) the submission is recorded alone."""
    payment = Payment.rehydrate(command.payment_id, uow.events.load(command.payment_id))
    refund = payment.refunds.get(command.refund_id)
    card = None if refund is None or payment.account is None else next(
        (card for card in uow.cards.all() if card.safe == payment.account.lower()
         and card.currency == refund.amount.currency), None)
    if refund is None or payment.account is None or card is None:
        execute(uow, command)  # refused with its reason when the refund is unknown
        return
    submit_refund(uow, command, recipient=payment.account.lower(), token=card.token,
                  amount=refund.amount.units)


class PaymentService:
    """Application service for commands from outside the chain (network, sagas, operators)."""

    def __init__(self, uow_factory: UowFactory) -> None:
        self._uow = uow_factory

    def submit(self, command: c.Command) -> bool:
        """Apply a command once; False if this command id was already processed (a retry)."""
        with self._uow() as uow:
            if not uow.claims.claim(command.command_id):
                return False
            execute(uow, command)
            uow.commit()
        return True

    def record_refund_submission(
        self, command: c.RecordRefundSubmission, *, recipient: str, token: str, amount: int
    ) -> bool:
        """The refund tx was (or is about to be) sent: record it and what transfer confirms it.

        If the listener already saw that transfer, the refund is confirmed right here.
        """
        with self._uow() as uow:
            if not uow.claims.claim(command.command_id):
                return False
            submit_refund(uow, command, recipient=recipient, token=token, amount=amount)
            uow.commit()
        return True
