"""Pure steps shared by the card registry's stores: which indexed logs move which Safe's balance
and allowance. The Postgres repository and the in-memory fake both call these, so the rules
(nothing at or before the reading's block, one token per allowance change) are written once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cardpay.handlers.ports import BalanceMove
from domain.authorization import Allowance
from listener.classify import Activity
from listener.ports import AllowanceChange


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
