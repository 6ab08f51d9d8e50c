"""What the service layer needs from storage, as Protocols: one repository per concern.

A handler opens one `UnitOfWork` per message (or per block range) and reaches every table it
touches through the repositories on it; everything commits together or not at all. The Postgres
implementations live in `cardpay.postgres`, the in-memory fakes in `tests/fakes`; one contract
suite (tests/integration/test_repository_contract.py) runs against both.

A new concern (a ledger, saga state, timers) is a new repository here, a Postgres class beside the
others and a fake that passes the same contract.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from cardpay.errors import CardpayError
from domain.authorization import AccountSnapshot, Allowance, CardStatus
from domain.events import DomainEvent, PaymentRefunded, PaymentSpent, RecordedEvent
from domain.ledger.model import (
    Account,
    CreateAccountResult,
    CreateTransferResult,
    Transfer,
    TransferRecord,
)
from domain.money import Currency, Money
from listener.classify import Activity
from listener.ports import AllowanceChange, BlockRef, Cursor


@dataclass(frozen=True, slots=True)
class ExpectedRefund:
    """A refund the system sent, waiting for the settlement-account transfer that confirms it."""

    payment_id: str
    refund_id: str
    tx_hash: str
    to_address: str
    token: str
    amount: int


@dataclass(frozen=True, slots=True)
class UnmatchedTransfer:
    """A settlement-account transfer seen before the refund submission that explains it."""

    command_id: str
    tx_hash: str
    recipient: str
    token: str
    amount: int
    block_hash: str
    command: dict[str, Any]
    """The listener's command, serialized with `domain.serialization.to_json`."""


@dataclass(frozen=True, slots=True)
class QuarantineItem:
    """Something that could not be used, with why; kept for a person to look at and retry."""

    source: str
    key: str
    reason: str
    payload: Mapping[str, Any]
    block_hash: str | None = None
    """The block of the chain log behind it: a reorg that drops the block drops the item."""


@dataclass(frozen=True, slots=True)
class QuarantinedRow:
    id: int
    source: str
    key: str
    reason: str
    payload: dict[str, Any]
    block_hash: str | None
    created_at: datetime | None
    resolved_at: datetime | None = None
    resolution: str | None = None
    attempts: int = 0


class EventStore(Protocol):
    """The event store as the handlers use it (see `domain.ports.EventStore` for the rules)."""

    def load(self, stream_id: str) -> list[DomainEvent]: ...

    def load_many(self, stream_ids: Sequence[str], *,
                  only: Sequence[type[DomainEvent]] = ()) -> dict[str, list[DomainEvent]]:
        """Several streams at once (an empty list for a stream that does not exist); `only`:
        just the events of these types."""
        ...

    def append(self, new: Sequence[DomainEvent]) -> list[RecordedEvent]: ...

    def chain_effects(
        self, block_hashes: Sequence[str]
    ) -> list[PaymentSpent | PaymentRefunded]:
        """Spends and refunds whose chain evidence lies in these blocks, newest first."""
        ...


class CommandClaims(Protocol):
    """Idempotency: a command's natural key is claimed once; a second claim is a duplicate."""

    def claim(self, command_id: str, *, block_hash: str | None = None,
              outcome: str = "applied") -> bool:
        """True if the command is new; False if it was already claimed."""
        ...

    def claim_many(self, claims: Mapping[str, str | None]) -> set[str]:
        """Claim command id → block hash pairs at once; returns the ids that were new."""
        ...

    def set_outcome(self, command_id: str, outcome: str) -> None: ...

    def outcome(self, command_id: str) -> str | None: ...

    def release(self, command_ids: Sequence[str]) -> None:
        """Un-claim: these commands may be processed again (they found nothing to act on yet)."""
        ...

    def forget_blocks(self, block_hashes: Sequence[str]) -> None:
        """Un-claim every chain log of these (orphaned) blocks."""
        ...


class Quarantine(Protocol):
    def add(self, item: QuarantineItem) -> None:
        """Keep the item (once per source and key)."""
        ...

    def forget(self, key: str) -> None:
        """The item resolved itself (e.g. a refund transfer matched later): not one any more."""
        ...

    def forget_blocks(self, block_hashes: Sequence[str]) -> None:
        """Drop items about logs of these (orphaned) blocks: the logs no longer exist."""
        ...

    def list(self, source_prefix: str = "", *, include_resolved: bool = True
             ) -> list[QuarantinedRow]: ...

    def get(self, item_id: int) -> QuarantinedRow | None: ...

    def resolve(self, item_id: int, resolution: str) -> None: ...

    def attempted(self, item_id: int, reason: str) -> None:
        """A retry failed again: count it and keep the newest reason."""
        ...


class ChainState(Protocol):
    """The listener's cursor, the unfinalized window of block hashes, and classified activity."""

    def load_cursor(self, name: str) -> Cursor | None: ...

    def save_cursor(self, name: str, cursor: Cursor) -> None: ...

    def keep_blocks(self, name: str, blocks: Sequence[BlockRef], *, below: int) -> None:
        """Remember these block hashes; forget those older than `below` (final by then)."""
        ...

    def blocks_above(self, name: str, number: int) -> list[BlockRef]:
        """Kept blocks above `number`, newest first (number -1: all of them)."""
        ...

    def add_activity(self, chain_id: int, activity: Sequence[Activity]) -> None: ...

    def forget_above(self, name: str, chain_id: int, ancestor: int) -> None:
        """Drop the activity and kept blocks above `ancestor` (a reorg rolled them back)."""
        ...


class RefundMatching(Protocol):
    """Refund submissions waiting for their on-chain transfer, and transfers seen first."""

    def expect(self, refund: ExpectedRefund) -> None: ...

    def match(self, tx_hash: str, to_address: str, token: str, amount: int, *, log_key: str,
              block_hash: str) -> ExpectedRefund | None:
        """Claim the one unmatched expected refund this transfer confirms (None if none)."""
        ...

    def keep_unmatched(self, transfer: UnmatchedTransfer) -> None: ...

    def take_unmatched(self, tx_hash: str, recipient: str, token: str,
                       amount: int) -> UnmatchedTransfer | None:
        """Resolve the oldest unresolved transfer with exactly these facts."""
        ...

    def forget_blocks(self, block_hashes: Sequence[str]) -> None:
        """Orphaned blocks: their transfers match nothing any more and are no longer waiting."""
        ...


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook delivery from the card network, kept so a repeat gets the first answer."""

    webhook_id: str
    body_sha256: str
    """Hex SHA-256 of the raw body: the same id with another body is refused, not replayed."""
    status: int
    response: Mapping[str, Any]
    received_at: datetime


class DeliveryRepository(Protocol):
    """Deliveries by webhook id, recorded in the transaction of the message's effect."""

    def get(self, webhook_id: str) -> Delivery | None: ...

    def record(self, delivery: Delivery) -> None:
        """Keep a new delivery (its id must not be recorded yet: check with `get` under
        `UnitOfWork.lock` first)."""
        ...


@dataclass(frozen=True, slots=True)
class Card:
    """A card in the registry: it spends `token` (canonical address) from the Safe `safe`.

    `roles_module` is the Safe's Roles module, whose allowance events say how much of the daily
    limit is left (None: not tracked). Addresses are lowercase hex.
    """

    card_id: str
    safe: str
    token: str
    currency: Currency
    status: CardStatus = CardStatus.ACTIVE
    roles_module: str | None = None
    blocked_mccs: frozenset[int] = frozenset()
    velocity_limit: int | None = None
    """At most this many authorizations per `velocity_window` (None: no limit)."""
    velocity_window: timedelta = timedelta(hours=1)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ChainReading:
    """A value read from the node at one block (`balanceOf`, the Roles module's allowance):
    indexed transfers and allowance events after that block move it, none at or before it."""

    block_number: int
    block_hash: str
    balance: int
    allowance: Allowance | None = None


@dataclass(frozen=True, slots=True)
class IndexedBalance:
    safe: str
    token: str
    balance: int
    as_of_block: int
    as_of_block_hash: str


@dataclass(frozen=True, slots=True)
class BalanceMove:
    """One token Transfer's effect on one Safe: `delta` is +value in, -value out."""

    safe: str
    token: str
    delta: int
    block_number: int
    block_hash: str
    log_index: int


@dataclass(frozen=True, slots=True)
class LockedCard:
    """A card read under its row lock, with what `decide` needs except the open holds (the
    ledger's). `allowance` is the Roles module's state at its last indexed change."""

    card: Card
    balance: int
    allowance: Allowance | None
    recent_authorizations: int

    def snapshot(self, open_holds: Money) -> AccountSnapshot:
        currency = self.card.currency
        return AccountSnapshot(
            card_id=self.card.card_id, status=self.card.status,
            balance=Money(self.balance, currency), open_holds=open_holds,
            allowance=self.allowance, blocked_mccs=self.card.blocked_mccs,
            velocity_limit=self.card.velocity_limit,
            recent_authorizations=self.recent_authorizations)


class CardExists(CardpayError):
    """A card with this id is already registered."""


class CardRegistry(Protocol):
    """Cards, and what the chain says about their Safes: token balances and daily allowances.

    Balances and allowances start from a `ChainReading` taken when the first card of a Safe and
    token is registered; the listener then moves them with every indexed Transfer and allowance
    event after that block, in its own transaction, and a reorg forgets the orphaned blocks'
    effects by block hash. Nothing here calls the node.
    """

    def add(self, card: Card, reading: ChainReading) -> None:
        """Register `card`; `reading` seeds the Safe's balance (and allowance) unless another
        card of the same Safe and token already did. Raises `CardExists`."""
        ...

    def get(self, card_id: str) -> Card | None: ...

    def all(self) -> list[Card]:
        """Every card, oldest first."""
        ...

    def set_status(self, card_id: str, status: CardStatus) -> Card | None:
        """Store the new status (the caller checks the transition); None if no such card."""
        ...

    def lock_for_authorization(self, card_id: str, now: datetime) -> LockedCard | None:
        """Lock the card's row until the end of the transaction (SELECT ... FOR UPDATE), so two
        authorizations of one card serialize, and read its snapshot data. None: no such card."""
        ...

    def record_authorization(self, card_id: str, at: datetime) -> None:
        """Count an authorization for the velocity rule."""
        ...

    def balance(self, safe: str, token: str) -> IndexedBalance | None: ...

    def allowance(self, safe: str, token: str) -> Allowance | None: ...

    def apply_transfers(self, moves: Sequence[BalanceMove]) -> int:
        """Move the balances of registered Safes (other moves, and moves at or before the
        Safe's reading, are ignored; a move already applied is not applied again). Returns how
        many moved a balance."""
        ...

    def apply_allowance_changes(self, changes: Sequence[AllowanceChange]
                                ) -> list[AllowanceChange]:
        """Follow the allowance of tracked Roles modules, in chain order. Returns the changes
        of tracked modules that cannot be attributed to one token (a SetAllowance or an
        unpaired ConsumeAllowance on a module tracked for several tokens)."""
        ...

    def forget_blocks(self, block_hashes: Sequence[str]) -> None:
        """Undo the balance moves and allowance changes of these (orphaned) blocks."""
        ...


class ChainReader(Protocol):
    """Reads a Safe's token balance and allowance from the node at one block (registration
    only: an authorization never calls the node)."""

    def confirmed_block(self) -> Cursor:
        """The newest block the listener would index now (head minus the confirmations)."""
        ...

    def read(self, at: Cursor, *, safe: str, token: str, roles_module: str | None,
             allowance_token: str | None) -> ChainReading:
        """`token.balanceOf(safe)` at block `at`, and the Roles module's allowance for
        `allowance_token` (the address the module scopes; EURe's v1 frontend) if both given."""
        ...


class UnitOfWork(Protocol):
    """One transaction: every repository's writes commit together, or none do."""

    @property
    def events(self) -> EventStore: ...

    @property
    def claims(self) -> CommandClaims: ...

    @property
    def quarantine(self) -> Quarantine: ...

    @property
    def chain(self) -> ChainState: ...

    @property
    def refunds(self) -> RefundMatching: ...

    @property
    def deliveries(self) -> DeliveryRepository: ...

    @property
    def cards(self) -> CardRegistry: ...

    @property
    def ledger(self) -> LedgerRepository: ...

    @property
    def references(self) -> PaymentReferences: ...

    @property
    def settlement_reports(self) -> SettlementReports: ...

    def __enter__(self) -> UnitOfWork: ...

    def __exit__(self, *exc: object) -> None:
        """Leaving without `commit` rolls everything back."""
        ...

    def commit(self) -> None: ...

    def savepoint(self) -> AbstractContextManager[None]:
        """A nested transaction: an exception inside undoes only what happened inside."""
        ...

    def lock(self, key: str) -> None:
        """Serialize writers of `key` until the end of the transaction."""
        ...


class PaymentReferences(Protocol):
    """What a later network message may name a payment by (`clearing:<id>`, `return:<id>`)."""

    def put(self, ref: str, payment_id: str) -> None:
        """Remember `ref` for the payment (again: nothing changes; the first payment stays)."""
        ...

    def get(self, ref: str) -> str | None: ...

    def get_many(self, refs: Sequence[str]) -> dict[str, str]:
        """The payments of those of `refs` that are known (one round trip for a range)."""
        ...


class SettlementReports(Protocol):
    """The network's daily settlement reports, once per report id, as sent."""

    def add(self, report_id: str, settlement_date: date, currency: str,
            report: Mapping[str, Any]) -> bool:
        """Keep a report; False when this report id was kept before (nothing changes)."""
        ...

    def get(self, report_id: str) -> dict[str, Any] | None: ...

    def for_day(self, settlement_date: date, currency: str) -> list[dict[str, Any]]:
        """Every report kept for that settlement day and currency (a correction is another
        report id), by report id."""
        ...


class LedgerRepository(Protocol):
    """The double-entry ledger (domain.ledger; ADR 0009), TigerBeetle's semantics.

    Results come one per item, in order. Writes are part of the unit of work: they commit with it.
    """

    def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        """OK, or EXISTS for the same account again (harmless), or why it was refused."""
        ...

    def create_transfers(self, batch: Sequence[Transfer],
                         now: datetime) -> list[CreateTransferResult]:
        """Apply transfers in order at `now` (UTC): plain, PENDING (a hold with `timeout`
        seconds), POST_PENDING / VOID_PENDING of a pending id, LINKED chains all-or-nothing."""
        ...

    def lookup_accounts(self, ids: Sequence[str]) -> list[Account]:
        """Those that exist, with their balances, in the order asked."""
        ...

    def lookup_transfers(self, ids: Sequence[str]) -> list[TransferRecord]:
        """Those that exist, in the order asked; a pending one with its status."""
        ...

    def expire_pending(self, now: datetime, ids: Sequence[str] | None = None) -> list[str]:
        """Release every pending transfer whose timeout has passed (only those of `ids`, when
        given: a handler releases its own payment's hold without sweeping others'); their ids,
        sorted."""
        ...
