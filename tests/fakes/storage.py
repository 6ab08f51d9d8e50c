"""An in-memory database for the service layer: the event store and every repository of
`cardpay.handlers.ports`, behind a unit of work that commits all or nothing.

`FakeDatabase` holds the committed state. A `FakeUnitOfWork` works on a private copy and publishes
it on `commit`; leaving without a commit drops it; a savepoint restores the copy as it was when an
exception leaves it. Locks are no-ops (tests using these are single-threaded).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

from cardpay.handlers.cards import AllowanceStep, TrackedAllowance, follow_allowances
from cardpay.handlers.ports import (
    BalanceMove,
    Card,
    CardExists,
    ChainReading,
    Delivery,
    ExpectedRefund,
    IndexedBalance,
    LockedCard,
    QuarantinedRow,
    QuarantineItem,
    UnmatchedTransfer,
)
from cardpay.postgres.eventstore import check_sequence
from domain.authorization import Allowance, CardStatus
from domain.events import DomainEvent, PaymentRefunded, PaymentSpent, RecordedEvent
from domain.ledger.memory import Ledger
from domain.ledger.model import (
    Account,
    CreateAccountResult,
    CreateTransferResult,
    Transfer,
    TransferRecord,
)
from domain.serialization import from_recorded, to_data
from domain.settlement import BatchTotals, Figures, SettlementBatch, SettlementItem
from listener.classify import Activity
from listener.ports import AllowanceChange, BlockRef, Cursor


@dataclass
class _Expected:
    refund: ExpectedRefund
    matched_by: str | None = None
    matched_block: str | None = None


@dataclass
class _Unmatched:
    transfer: UnmatchedTransfer
    seq: int
    resolved: bool = False


@dataclass
class _Tracked:
    """A Safe's balance or allowance for one token: the reading it started from."""

    read_block: int
    read_block_hash: str
    read_balance: int = 0
    read_allowance: Allowance | None = None
    roles_module: str = ""


@dataclass
class State:
    log: list[RecordedEvent] = field(default_factory=list)
    claims: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    quarantine: dict[int, QuarantinedRow] = field(default_factory=dict)
    cursors: dict[str, Cursor] = field(default_factory=dict)
    blocks: dict[tuple[str, int], BlockRef] = field(default_factory=dict)
    activity: dict[tuple[int, str, int], Activity] = field(default_factory=dict)
    expected: list[_Expected] = field(default_factory=list)
    unmatched: dict[str, _Unmatched] = field(default_factory=dict)
    deliveries: dict[str, Delivery] = field(default_factory=dict)
    references: dict[str, str] = field(default_factory=dict)
    settlement_reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    settlement_report_days: dict[str, tuple[date, str]] = field(default_factory=dict)
    settlement_batches: dict[tuple[date, str], SettlementBatch] = field(default_factory=dict)
    settlement_items: dict[tuple[date, str, str], SettlementItem] = field(default_factory=dict)
    cards: dict[str, Card] = field(default_factory=dict)
    authorizations: list[tuple[str, datetime]] = field(default_factory=list)
    balances: dict[tuple[str, str], _Tracked] = field(default_factory=dict)
    balance_moves: dict[tuple[str, int, str], BalanceMove] = field(default_factory=dict)
    allowances: dict[tuple[str, str], _Tracked] = field(default_factory=dict)
    allowance_steps: dict[tuple[str, int, str, str], AllowanceStep] = field(default_factory=dict)
    sequence: int = 0
    ledger: Ledger = field(default_factory=Ledger)
    parked_watch: dict[str, Any] = field(default_factory=dict)
    """The network sweep's watch list (tests.fakes.timers)."""
    sweep_position: int = 0

    def next(self) -> int:
        self.sequence += 1
        return self.sequence


class InMemoryEventStore:
    """The event store contract in memory."""

    def __init__(self, state: State | None = None) -> None:
        self._state = state or State()

    def _stream(self, stream_id: str) -> list[RecordedEvent]:
        return [r for r in self._state.log if r.stream_id == stream_id]

    def load(self, stream_id: str) -> list[DomainEvent]:
        return [from_recorded(r) for r in self._stream(stream_id)]

    def load_many(self, stream_ids: Sequence[str], *,
                  only: Sequence[type[DomainEvent]] = ()) -> dict[str, list[DomainEvent]]:
        return {sid: [e for e in self.load(sid) if not only or isinstance(e, tuple(only))]
                for sid in stream_ids}

    def append(self, new: Sequence[DomainEvent]) -> list[RecordedEvent]:
        by_stream: dict[str, list[DomainEvent]] = {}
        for event in new:
            by_stream.setdefault(event.stream_id, []).append(event)
        for stream_id, stream_events in by_stream.items():
            check_sequence(len(self._stream(stream_id)), stream_events)
        now = datetime.now(UTC)
        recorded = []
        for event in new:
            r = RecordedEvent(stream_id=event.stream_id, version=event.version,
                              position=len(self._state.log) + 1, type=type(event).__name__,
                              data=to_data(event), recorded_at=now)
            self._state.log.append(r)
            recorded.append(r)
        return recorded

    def read_after(self, position: int, limit: int) -> list[RecordedEvent]:
        return self._state.log[position:position + limit]

    def chain_effects(self, block_hashes: Sequence[str]) -> list[PaymentSpent | PaymentRefunded]:
        wanted = set(block_hashes)
        found = []
        for r in reversed(self._state.log):
            event = from_recorded(r)
            if isinstance(event, PaymentSpent | PaymentRefunded) \
                    and event.evidence.block_hash in wanted:
                found.append(event)
        return found

    def events_of_type(self, *types: type[DomainEvent]) -> list[DomainEvent]:
        names = {cls.__name__ for cls in types}
        return [from_recorded(r) for r in self._state.log if r.type in names]


class FakeCommandClaims:
    def __init__(self, state: State) -> None:
        self._s = state

    def claim(self, command_id: str, *, block_hash: str | None = None,
              outcome: str = "applied") -> bool:
        if command_id in self._s.claims:
            return False
        self._s.claims[command_id] = (outcome, block_hash)
        return True

    def claim_many(self, claims: Mapping[str, str | None]) -> set[str]:
        return {cid for cid, block in claims.items() if self.claim(cid, block_hash=block)}

    def set_outcome(self, command_id: str, outcome: str) -> None:
        if command_id in self._s.claims:
            self._s.claims[command_id] = (outcome, self._s.claims[command_id][1])

    def outcome(self, command_id: str) -> str | None:
        claim = self._s.claims.get(command_id)
        return None if claim is None else claim[0]

    def release(self, command_ids: Sequence[str]) -> None:
        for cid in command_ids:
            self._s.claims.pop(cid, None)

    def forget_blocks(self, block_hashes: Sequence[str]) -> None:
        gone = set(block_hashes)
        for cid in [c for c, (_, block) in self._s.claims.items() if block in gone]:
            del self._s.claims[cid]


class FakeQuarantine:
    def __init__(self, state: State) -> None:
        self._s = state

    def add(self, item: QuarantineItem) -> None:
        if any(r.source == item.source and r.key == item.key for r in self._s.quarantine.values()):
            return
        row_id = self._s.next()
        self._s.quarantine[row_id] = QuarantinedRow(
            id=row_id, source=item.source, key=item.key, reason=item.reason,
            payload=copy.deepcopy(dict(item.payload)), block_hash=item.block_hash,
            created_at=datetime.now(UTC))

    def forget(self, key: str) -> None:
        for row_id in [i for i, r in self._s.quarantine.items() if r.key == key]:
            del self._s.quarantine[row_id]

    def forget_blocks(self, block_hashes: Sequence[str]) -> None:
        gone = set(block_hashes)
        for row_id in [i for i, r in self._s.quarantine.items() if r.block_hash in gone]:
            del self._s.quarantine[row_id]

    def list(self, source_prefix: str = "", *, include_resolved: bool = True
             ) -> list[QuarantinedRow]:
        return [r for _, r in sorted(self._s.quarantine.items())
                if r.source.startswith(source_prefix)
                and (include_resolved or r.resolved_at is None)]

    def get(self, item_id: int) -> QuarantinedRow | None:
        return self._s.quarantine.get(item_id)

    def resolve(self, item_id: int, resolution: str) -> None:
        row = self._s.quarantine.get(item_id)
        if row is not None:
            self._s.quarantine[item_id] = replace(row, resolved_at=datetime.now(UTC),
                                                  resolution=resolution,
                                                  attempts=row.attempts + 1)

    def attempted(self, item_id: int, reason: str) -> None:
        row = self._s.quarantine.get(item_id)
        if row is not None:
            self._s.quarantine[item_id] = replace(row, reason=reason, attempts=row.attempts + 1)


class FakeChainState:
    def __init__(self, state: State) -> None:
        self._s = state

    def load_cursor(self, name: str) -> Cursor | None:
        return self._s.cursors.get(name)

    def save_cursor(self, name: str, cursor: Cursor) -> None:
        self._s.cursors[name] = cursor

    def keep_blocks(self, name: str, blocks: Sequence[BlockRef], *, below: int) -> None:
        for b in blocks:
            self._s.blocks[(name, b.number)] = BlockRef(b.number, b.hash, b.parent_hash)
        for key in [k for k in self._s.blocks if k[0] == name and k[1] < below]:
            del self._s.blocks[key]

    def blocks_above(self, name: str, number: int) -> list[BlockRef]:
        return sorted((b for (n, num), b in self._s.blocks.items() if n == name and num > number),
                      key=lambda b: -b.number)

    def add_activity(self, chain_id: int, activity: Sequence[Activity]) -> None:
        for a in activity:
            self._s.activity.setdefault((chain_id, a.log.block_hash, a.log.log_index), a)

    def forget_above(self, name: str, chain_id: int, ancestor: int) -> None:
        for key in [k for k, a in self._s.activity.items()
                    if k[0] == chain_id and a.log.block_number > ancestor]:
            del self._s.activity[key]
        for key in [k for k in self._s.blocks if k[0] == name and k[1] > ancestor]:
            del self._s.blocks[key]


class FakeRefundMatching:
    def __init__(self, state: State) -> None:
        self._s = state

    def expect(self, refund: ExpectedRefund) -> None:
        key = (refund.payment_id, refund.refund_id, refund.tx_hash.lower())
        if any((e.refund.payment_id, e.refund.refund_id, e.refund.tx_hash) == key
               for e in self._s.expected):
            raise ValueError(f"expected refund {key} exists")  # the primary key, as in Postgres
        self._s.expected.append(_Expected(replace(
            refund, tx_hash=refund.tx_hash.lower(), to_address=refund.to_address.lower(),
            token=refund.token.lower())))

    def match(self, tx_hash: str, to_address: str, token: str, amount: int, *, log_key: str,
              block_hash: str) -> ExpectedRefund | None:
        facts = (tx_hash.lower(), to_address.lower(), token.lower(), amount)
        for e in self._s.expected:
            r = e.refund
            if e.matched_by is None and (r.tx_hash, r.to_address, r.token, r.amount) == facts:
                e.matched_by, e.matched_block = log_key, block_hash
                return ExpectedRefund(r.payment_id, r.refund_id, tx_hash, to_address, token,
                                      amount)
        return None

    def keep_unmatched(self, transfer: UnmatchedTransfer) -> None:
        if transfer.command_id not in self._s.unmatched:
            self._s.unmatched[transfer.command_id] = _Unmatched(
                replace(transfer, tx_hash=transfer.tx_hash.lower(),
                        recipient=transfer.recipient.lower(), token=transfer.token.lower()),
                self._s.next())

    def take_unmatched(self, tx_hash: str, recipient: str, token: str,
                       amount: int) -> UnmatchedTransfer | None:
        facts = (tx_hash.lower(), recipient.lower(), token.lower(), amount)
        for u in sorted(self._s.unmatched.values(), key=lambda u: u.seq):
            t = u.transfer
            if not u.resolved and (t.tx_hash, t.recipient, t.token, t.amount) == facts:
                u.resolved = True
                return t
        return None

    def forget_blocks(self, block_hashes: Sequence[str]) -> None:
        gone = set(block_hashes)
        for e in self._s.expected:
            if e.matched_block in gone:
                e.matched_by = e.matched_block = None
        for cid in [c for c, u in self._s.unmatched.items() if u.transfer.block_hash in gone]:
            del self._s.unmatched[cid]


class FakeDeliveries:
    def __init__(self, state: State) -> None:
        self._s = state

    def get(self, webhook_id: str) -> Delivery | None:
        return self._s.deliveries.get(webhook_id)

    def record(self, delivery: Delivery) -> None:
        if delivery.webhook_id in self._s.deliveries:
            # the primary key, as in Postgres
            raise ValueError(f"delivery {delivery.webhook_id!r} exists")
        self._s.deliveries[delivery.webhook_id] = replace(
            delivery, response=copy.deepcopy(dict(delivery.response)))


class FakePaymentReferences:
    def __init__(self, state: State) -> None:
        self._s = state

    def put(self, ref: str, payment_id: str) -> None:
        self._s.references.setdefault(ref, payment_id)

    def get(self, ref: str) -> str | None:
        return self._s.references.get(ref)

    def get_many(self, refs: Sequence[str]) -> dict[str, str]:
        return {ref: self._s.references[ref] for ref in refs if ref in self._s.references}


class FakeSettlementReports:
    def __init__(self, state: State) -> None:
        self._s = state

    def add(self, report_id: str, settlement_date: date, currency: str,
            report: Mapping[str, Any]) -> bool:
        if report_id in self._s.settlement_reports:
            return False
        self._s.settlement_reports[report_id] = copy.deepcopy(dict(report))
        self._s.settlement_report_days[report_id] = (settlement_date, currency)
        return True

    def get(self, report_id: str) -> dict[str, Any] | None:
        found = self._s.settlement_reports.get(report_id)
        return None if found is None else copy.deepcopy(found)

    def for_day(self, settlement_date: date, currency: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(r) for rid, r in sorted(self._s.settlement_reports.items())
                if self._s.settlement_report_days[rid] == (settlement_date, currency)]


class FakeSettlementBatches:
    """`PostgresSettlementBatches` in memory: a batch replaces only an older revision."""

    def __init__(self, state: State) -> None:
        self._s = state

    def put(self, batch: SettlementBatch) -> bool:
        key = (batch.day, batch.currency)
        stored = self._s.settlement_batches.get(key)
        if stored is not None and stored.revision > batch.revision:
            return False
        self._s.settlement_batches[key] = batch
        return True

    def get(self, day: date, currency: str) -> SettlementBatch | None:
        return self._s.settlement_batches.get((day, currency))

    def find(self, *, day: date | None = None, currency: str | None = None,
             limit: int = 1000) -> list[SettlementBatch]:
        found = [b for (d, cur), b in sorted(self._s.settlement_batches.items())
                 if (day is None or d == day) and (currency is None or cur == currency)]
        return found[:limit]

    def add_item(self, item: SettlementItem) -> bool:
        key = (item.day, item.currency, item.key)
        if key in self._s.settlement_items:
            return False
        self._s.settlement_items[key] = item
        return True

    def totals(self, day: date, currency: str) -> BatchTotals:
        mine = [i for (d, cur, _), i in self._s.settlement_items.items()
                if (d, cur) == (day, currency)]
        total = Figures()
        for item in mine:
            total = total + item.figures
        return BatchTotals(total, tuple(sorted({i.payment_id for i in mine
                                                if i.payment_id is not None})))


class FakeCardRegistry:
    """The card registry in memory; balances and allowances are derived from the reading and
    the kept moves each time, which is what the Postgres cache columns must agree with."""

    def __init__(self, state: State) -> None:
        self._s = state

    def add(self, card: Card, reading: ChainReading) -> None:
        if card.card_id in self._s.cards:
            raise CardExists(f"card {card.card_id} is already registered")
        now = datetime.now(UTC)
        card = replace(card, safe=card.safe.lower(), token=card.token.lower(),
                       roles_module=card.roles_module.lower() if card.roles_module else None,
                       created_at=now, updated_at=now)
        self._s.cards[card.card_id] = card
        key = (card.safe, card.token)
        self._s.balances.setdefault(key, _Tracked(reading.block_number, reading.block_hash,
                                                  reading.balance))
        if card.roles_module is not None and reading.allowance is not None:
            self._s.allowances.setdefault(key, _Tracked(
                reading.block_number, reading.block_hash, read_allowance=reading.allowance,
                roles_module=card.roles_module))

    def get(self, card_id: str) -> Card | None:
        return self._s.cards.get(card_id)

    def all(self) -> list[Card]:
        return sorted(self._s.cards.values(),
                      key=lambda c: (c.created_at or datetime.min.replace(tzinfo=UTC),
                                     c.card_id))

    def set_status(self, card_id: str, status: CardStatus) -> Card | None:
        card = self._s.cards.get(card_id)
        if card is None:
            return None
        card = self._s.cards[card_id] = replace(card, status=status,
                                                updated_at=datetime.now(UTC))
        return card

    def lock_for_authorization(self, card_id: str, now: datetime) -> LockedCard | None:
        card = self._s.cards.get(card_id)
        if card is None:
            return None
        balance = self.balance(card.safe, card.token)
        tracked = self._s.allowances.get((card.safe, card.token))
        allowance = None if tracked is None or tracked.roles_module != card.roles_module \
            else self.allowance(card.safe, card.token)
        since = now - card.velocity_window
        recent = 0 if card.velocity_limit is None else sum(
            1 for cid, at in self._s.authorizations if cid == card_id and since < at <= now)
        return LockedCard(card, 0 if balance is None else balance.balance, allowance, recent)

    def record_authorization(self, card_id: str, at: datetime) -> None:
        self._s.authorizations.append((card_id, at))

    def balance(self, safe: str, token: str) -> IndexedBalance | None:
        key = (safe.lower(), token.lower())
        tracked = self._s.balances.get(key)
        if tracked is None:
            return None
        moves = [m for m in self._s.balance_moves.values() if (m.safe, m.token) == key]
        newest = max(moves, key=lambda m: (m.block_number, m.log_index), default=None)
        return IndexedBalance(
            *key, tracked.read_balance + sum(m.delta for m in moves),
            tracked.read_block if newest is None else newest.block_number,
            tracked.read_block_hash if newest is None else newest.block_hash)

    def allowance(self, safe: str, token: str) -> Allowance | None:
        key = (safe.lower(), token.lower())
        tracked = self._s.allowances.get(key)
        if tracked is None:
            return None
        steps = [st for st in self._s.allowance_steps.values() if (st.safe, st.token) == key]
        newest = max(steps, key=lambda st: (st.block_number, st.log_index), default=None)
        return tracked.read_allowance if newest is None else newest.state

    def apply_transfers(self, moves: Sequence[BalanceMove]) -> int:
        applied = 0
        for m in moves:
            m = replace(m, safe=m.safe.lower(), token=m.token.lower())
            tracked = self._s.balances.get((m.safe, m.token))
            key = (m.block_hash, m.log_index, m.safe)
            if tracked is None or m.block_number <= tracked.read_block \
                    or key in self._s.balance_moves:
                continue
            self._s.balance_moves[key] = m
            applied += 1
        return applied

    def apply_allowance_changes(self, changes: Sequence[AllowanceChange]
                                ) -> list[AllowanceChange]:
        tracked = []
        for (safe, token), t in sorted(self._s.allowances.items()):
            state = self.allowance(safe, token)
            assert state is not None
            tracked.append(TrackedAllowance(safe, token, t.roles_module, state, t.read_block))
        steps, unattributed = follow_allowances(tracked, changes)
        for st in steps:
            self._s.allowance_steps.setdefault(
                (st.block_hash, st.log_index, st.safe, st.token), st)
        return unattributed

    def forget_blocks(self, block_hashes: Sequence[str]) -> None:
        gone = set(block_hashes)
        for key in [k for k in self._s.balance_moves if k[0] in gone]:
            del self._s.balance_moves[key]
        for skey in [k for k in self._s.allowance_steps if k[0] in gone]:
            del self._s.allowance_steps[skey]


class FakeLedger:
    """The reference `domain.ledger.Ledger` on the unit of work's staged state."""

    def __init__(self, state: State) -> None:
        self._s = state  # the savepoint swaps `state.ledger`: read it each time

    def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        return self._s.ledger.create_accounts(accounts)

    def create_transfers(self, batch: Sequence[Transfer],
                         now: datetime) -> list[CreateTransferResult]:
        return self._s.ledger.create_transfers(batch, now)

    def lookup_accounts(self, ids: Sequence[str]) -> list[Account]:
        return self._s.ledger.lookup_accounts(ids)

    def lookup_transfers(self, ids: Sequence[str]) -> list[TransferRecord]:
        return self._s.ledger.lookup_transfers(ids)

    def expire_pending(self, now: datetime, ids: Sequence[str] | None = None) -> list[str]:
        return self._s.ledger.expire_pending(now, ids)


class FakeDatabase:
    """The committed state; `uow()` opens a unit of work on it."""

    def __init__(self) -> None:
        self.state = State()
        self.commits = 0

    def uow(self) -> FakeUnitOfWork:
        return FakeUnitOfWork(self)

    def read(self) -> FakeUnitOfWork:
        """A unit of work for looking at the committed state (never committed)."""
        return FakeUnitOfWork(self).__enter__()


class FakeUnitOfWork:
    def __init__(self, db: FakeDatabase) -> None:
        self._db = db
        self._state: State | None = None

    def __enter__(self) -> FakeUnitOfWork:
        self._state = copy.deepcopy(self._db.state)
        self.events = InMemoryEventStore(self._state)
        self.claims = FakeCommandClaims(self._state)
        self.quarantine = FakeQuarantine(self._state)
        self.chain = FakeChainState(self._state)
        self.refunds = FakeRefundMatching(self._state)
        self.deliveries = FakeDeliveries(self._state)
        self.cards = FakeCardRegistry(self._state)


        self.ledger = FakeLedger(self._state)
        self.references = FakePaymentReferences(self._state)
        self.settlement_reports = FakeSettlementReports(self._state)
        self.settlement_batches = FakeSettlementBatches(self._state)
        return self

    def __exit__(self, *exc: object) -> None:
        self._state = None

    def _staged(self) -> State:
        if self._state is None:
            raise RuntimeError("unit of work used outside its `with` block")
        return self._state

    def commit(self) -> None:
        self._db.state = copy.deepcopy(self._staged())
        self._db.commits += 1

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        staged = self._staged()
        before = copy.deepcopy(staged)
        try:
            yield
        except BaseException:
            staged.__dict__.update(before.__dict__)  # in place: the repositories keep `staged`
            raise

    def lock(self, key: str) -> None:
        self._staged()
