"""Registering a card, and the pure steps shared by the card registry's stores.

`register_card` seeds a Safe's balance with one `balanceOf` read at the block the listener has
reached, so that every Transfer after that block is counted by the listener and none at or
before it is counted twice. `balance_moves` and `follow_allowances` say which indexed logs move
which Safe's balance and allowance; the Postgres repository and the in-memory fake both call
them, so those rules are written once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cardpay.errors import CardpayError
from cardpay.handlers.payments import UowFactory
from cardpay.handlers.ports import BalanceMove, Card, ChainReader, ChainReading
from domain.authorization import Allowance, CardStatus, change_status
from listener.classify import Activity
from listener.ports import AllowanceChange

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class RegistrationRaced(CardpayError):
    """The listener kept moving past the block the balance was read at; try again."""


def register_card(uow: UowFactory, reader: ChainReader, card: Card, *, listener: str,
                  allowance_token: str | None = None, attempts: int = 3) -> ChainReading:
    """Register `card` with its Safe's balance (and allowance) read once from the node.

    The reading is taken at the listener's cursor (or at the confirmed head when the listener
    has not started), then stored under the listener's lock only if the listener has not indexed
    past that block meanwhile: the listener counts exactly the transfers after it. Raises
    `CardExists`, or `RegistrationRaced` if the listener outran every attempt.
    """
    for _ in range(attempts):
        with uow() as w:
            cursor = w.chain.load_cursor(listener)
        at = cursor or reader.confirmed_block()
        reading = reader.read(at, safe=card.safe, token=card.token,
                              roles_module=card.roles_module, allowance_token=allowance_token)
        with uow() as w:
            w.lock(f"listener:{listener}")  # the sink holds it while it applies a range
            now = w.chain.load_cursor(listener)
            if now is None or now.block_number <= at.block_number:
                w.cards.add(card, reading)
                w.commit()
                return reading
    raise RegistrationRaced(f"listener {listener!r} kept moving past the block the balance was "
                            f"read at ({attempts} attempts); run the command again")


class CardNotFound(CardpayError):
    """No card with this id."""


def set_card_status(uow: UowFactory, card_id: str, wanted: CardStatus) -> Card:
    """Freeze, unfreeze or close a card (a closed card stays closed: `StatusChangeRefused`).

    The card's row is locked first, so the change waits for an authorization in progress on
    the card and the next authorization sees it."""
    with uow() as w:
        locked = w.cards.lock_for_authorization(card_id, _EPOCH)
        if locked is None:
            raise CardNotFound(f"no card {card_id!r}: `cardpay cards list` shows the cards")
        status = change_status(locked.card.status, wanted)
        card = w.cards.set_status(card_id, status)
        assert card is not None  # locked above
        w.commit()
        return card


def balance_moves(activity: Iterable[Activity]) -> list[BalanceMove]:
    """Every classified token Transfer as two moves: -value for the sender, +value for the
    recipient (the store keeps those of registered Safes). Mirrors are already dropped, so an
    EURe transfer moves a balance once."""
    moves: list[BalanceMove] = []
    for a in activity:
        log = a.log
        if a.amount == 0 or a.sender == a.recipient:
            continue
        moves.append(BalanceMove(a.sender, a.token, -a.amount, log.block_number, log.block_hash,
                                 log.log_index))
        moves.append(BalanceMove(a.recipient, a.token, a.amount, log.block_number,
                                 log.block_hash, log.log_index))
    return moves


@dataclass(frozen=True, slots=True)
class TrackedAllowance:
    """A Safe's allowance for one token as stored: its current state and the reading's block."""

    safe: str
    token: str
    roles_module: str
    state: Allowance
    read_block: int


@dataclass(frozen=True, slots=True)
class AllowanceStep:
    """The allowance of (safe, token) after one change."""

    safe: str
    token: str
    block_number: int
    block_hash: str
    log_index: int
    state: Allowance


def follow_allowances(
    tracked: Sequence[TrackedAllowance], changes: Sequence[AllowanceChange]
) -> tuple[list[AllowanceStep], list[AllowanceChange]]:
    """The states the changes lead to, in chain order, and the changes that cannot be attributed.

    A ConsumeAllowance paired with a Spend names its token; a SetAllowance (or an unpaired
    ConsumeAllowance) names none and is attributed only when the module is tracked for one token.
    ConsumeAllowance's timestamp is not in the event: it is the refill the module applied at the
    block's time (`Allowance.consumed`), so the indexed state predicts the module's own.
    """
    by_module: dict[str, list[TrackedAllowance]] = {}
    for t in tracked:
        by_module.setdefault(t.roles_module, []).append(t)
    current = {(t.safe, t.token): t.state for t in tracked}
    steps: list[AllowanceStep] = []
    unattributed: list[AllowanceChange] = []
    for change in sorted(changes, key=lambda c: (c.block_number, c.log_index)):
        rows = by_module.get(change.roles_module.lower(), [])
        if change.token is not None:
            rows = [t for t in rows if t.token == change.token.lower()]
        elif len(rows) > 1:
            unattributed.append(change)
            continue
        for t in rows:
            if change.block_number <= t.read_block:
                continue  # already in the reading
            before = current[(t.safe, t.token)]
            if change.set_to is not None:
                after = change.set_to
            else:
                assert change.new_balance is not None
                accrued = before.accrued(change.block_time)
                after = Allowance(change.new_balance, accrued.max_refill, accrued.refill,
                                  accrued.period, accrued.timestamp)
            current[(t.safe, t.token)] = after
            steps.append(AllowanceStep(t.safe, t.token, change.block_number, change.block_hash,
                                       change.log_index, after))
    return steps, unattributed
