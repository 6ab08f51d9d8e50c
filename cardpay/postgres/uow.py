"""PostgreSQL Units of Work: one connection, one transaction, the repositories on it.

`PostgresUnitOfWork` is the write side's (the service layer in `cardpay.handlers`): events with
their outbox rows, command claims, quarantine, chain state, refund matching and network
deliveries commit together or not at all. `PostgresProjectionUnitOfWork` is a projector's:
read-model rows, quarantine and the feed positions, in one transaction per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine

from cardpay.handlers.ports import QuarantineItem
from cardpay.postgres import raw
from cardpay.postgres.eventstore import PostgresEventStore
from cardpay.postgres.repositories.cards import PostgresCardRegistry
from cardpay.postgres.repositories.chain import PostgresChainState
from cardpay.postgres.repositories.claims import PostgresCommandClaims
from cardpay.postgres.repositories.deliveries import PostgresDeliveries
from cardpay.postgres.repositories.ledger import PostgresLedger
from cardpay.postgres.repositories.network_timers import PostgresNetworkTimers
from cardpay.postgres.repositories.onchain import PostgresOutgoingTransactions
from cardpay.postgres.repositories.payments_view import PostgresPaymentsView
from cardpay.postgres.repositories.positions import PostgresConsumerPositions
from cardpay.postgres.repositories.quarantine import PostgresQuarantine
from cardpay.postgres.repositories.references import (
    PostgresPaymentReferences,
    PostgresSettlementReports,
)
from cardpay.postgres.repositories.refunds import PostgresRefundMatching
from cardpay.postgres.repositories.sagas import (
    PostgresEffectRequests,
    PostgresSagaStore,
    PostgresSagaTimers,
)
from cardpay.postgres.repositories.settlement import PostgresSettlementBatches
from projector.daily import DayFigures, DayKey
from projector.payments import PaymentRow

_LOCK = "SELECT pg_advisory_xact_lock(hashtext(%s))"
_SHARED_LOCK = "SELECT pg_advisory_xact_lock_shared(hashtext(%s))"
# The two-key form: its key space is apart from the one-key locks above.
_SOURCE_LOCK = "SELECT pg_advisory_xact_lock(hashtext(%s), %s)"


class _Transaction:
    """One connection with an open transaction for the length of a `with` block."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None

    def _open(self) -> Connection:
        self._conn = self._engine.connect()
        self._conn.begin()
        return self._conn

    def __exit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            raw.discard(conn)
            if conn.in_transaction():
                conn.rollback()
            conn.close()

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("unit of work used outside its `with` block")
        return self._conn

    def commit(self) -> None:
        raw.flush(self.conn)  # what was deferred goes first: its errors end the transaction
        self.conn.commit()

    def lock(self, key: str) -> None:
        """A transaction-scoped advisory lock: one writer per key at a time. Sent with the next
        statement (`raw.defer`): it is held before that statement reads anything."""
        raw.defer(self.conn, _LOCK, (key,))


class PostgresUnitOfWork(_Transaction):
    events: PostgresEventStore
    claims: PostgresCommandClaims
    quarantine: PostgresQuarantine
    chain: PostgresChainState
    refunds: PostgresRefundMatching
    deliveries: PostgresDeliveries
    cards: PostgresCardRegistry
    ledger: PostgresLedger
    references: PostgresPaymentReferences
    settlement_reports: PostgresSettlementReports
    settlement_batches: PostgresSettlementBatches

    def __init__(self, engine: Engine, *, outbox_topic: str | None = None) -> None:
        super().__init__(engine)
        self._outbox_topic = outbox_topic
        self._savepoints = 0

    def __enter__(self) -> PostgresUnitOfWork:
        conn = self._open()
        self.events = PostgresEventStore(conn, outbox_topic=self._outbox_topic)
        self.claims = PostgresCommandClaims(conn)
        self.quarantine = PostgresQuarantine(conn)
        self.chain = PostgresChainState(conn)
        self.refunds = PostgresRefundMatching(conn)
        self.deliveries = PostgresDeliveries(conn)
        self.cards = PostgresCardRegistry(conn)
        self.ledger = PostgresLedger(conn)
        self.references = PostgresPaymentReferences(conn)
        self.settlement_reports = PostgresSettlementReports(conn)
        self.settlement_batches = PostgresSettlementBatches(conn)
        return self

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Inner work undone alone when it raises (the transaction goes on). Plain SQL, deferred
        into the next round trip (`cardpay.postgres.raw`): a delivery runs in one, on the
        authorization's hot path; SQLAlchemy's outer transaction is unaffected either way."""
        self._savepoints += 1
        with raw.savepoint(self.conn, f"cardpay_sp_{self._savepoints}"):
            yield


def source_lock_key(key: str, source: str) -> tuple[str, int]:
    """The two-key advisory lock of one feed source: `topic:3` -> (`key:topic`, 3), so the
    partitions of one topic never share a lock (no hash collision between them); a source with
    no partition number (`events`, the PostgreSQL log) is (`key:events`, 0)."""
    prefix, _, number = source.rpartition(":")
    if prefix and number.isdigit() and int(number) < 2**31:
        return f"{key}:{prefix}", int(number)
    return f"{key}:{source}", 0


class PostgresProjectionUnitOfWork(_Transaction):
    """Implements `projector.runner.ProjectionUnitOfWork` on the repositories."""

    def __init__(self, engine: Engine, *, suffix: str = "") -> None:
        super().__init__(engine)
        self._suffix = suffix

    def lock_sources(self, key: str, sources: Collection[str]) -> None:
        """`key` shared (`cardpay projections reset` takes it exclusively: it waits for the
        batches in flight and holds new ones off), then every source exclusively in sorted
        order, so two batches never wait for each other in a cycle. Deferred like `lock`."""
        raw.defer(self.conn, _SHARED_LOCK, (key,))
        for lock_key in sorted({source_lock_key(key, source) for source in sources}):
            raw.defer(self.conn, _SOURCE_LOCK, lock_key)

    def __enter__(self) -> PostgresProjectionUnitOfWork:
        conn = self._open()
        self._positions = PostgresConsumerPositions(conn)
        self._payments = PostgresPaymentsView(conn, self._suffix)
        self._quarantine = PostgresQuarantine(conn)
        return self

    def load_positions(self, consumer: str) -> dict[str, int]:
        return self._positions.load(consumer)

    def save_positions(self, consumer: str, positions: Mapping[str, int]) -> None:
        self._positions.save(consumer, positions)

    def get_payments(self, payment_ids: list[str]) -> dict[str, PaymentRow]:
        return self._payments.get(payment_ids)

    def put_payments(self, rows: list[PaymentRow]) -> None:
        self._payments.put(rows)

    def add_daily(self, figures: dict[DayKey, DayFigures]) -> None:
        self._payments.add_daily(figures)

    def get_daily(self, keys: list[DayKey]) -> dict[DayKey, DayFigures]:
        return self._payments.get_daily(keys)

    def quarantine(self, source: str, key: str, reason: str, payload: dict[str, Any]) -> None:
        self._quarantine.add(QuarantineItem(source, key, reason, payload))


def unit_of_work_factory(engine: Engine,
                         outbox_topic: str | None) -> Callable[[], PostgresUnitOfWork]:
    return lambda: PostgresUnitOfWork(engine, outbox_topic=outbox_topic)


def projection_uow_factory(engine: Engine, *, suffix: str = ""
                           ) -> Callable[[], PostgresProjectionUnitOfWork]:
    """`suffix`: write the read models' shadow tables (a rebuild's) instead of the live ones."""
    return lambda: PostgresProjectionUnitOfWork(engine, suffix=suffix)


class PostgresSweepUnitOfWork(PostgresUnitOfWork):
    """The write side's unit of work with the network sweep's repository
    (`cardpay.handlers.network_timers.SweepUnitOfWork`)."""

    timers: PostgresNetworkTimers

    def __enter__(self) -> PostgresSweepUnitOfWork:
        super().__enter__()
        self.timers = PostgresNetworkTimers(self.conn)
        return self


def sweep_uow_factory(engine: Engine,
                      outbox_topic: str | None) -> Callable[[], PostgresSweepUnitOfWork]:
    return lambda: PostgresSweepUnitOfWork(engine, outbox_topic=outbox_topic)


class PostgresSagaUnitOfWork(PostgresUnitOfWork):
    """The write side's unit of work with the sagas' repositories
    (`cardpay.handlers.sagas.SagaUnitOfWork`): a saga's new state, its timers, its effect
    requests, the domain commands it issued (on the write side's repositories), its exceptions
    (the quarantine, source "saga:<kind>") and the feed positions commit together."""

    sagas: PostgresSagaStore
    saga_timers: PostgresSagaTimers
    effects: PostgresEffectRequests

    def __enter__(self) -> PostgresSagaUnitOfWork:
        super().__enter__()
        conn = self.conn
        self.sagas = PostgresSagaStore(conn)
        self.saga_timers = PostgresSagaTimers(conn)
        self.effects = PostgresEffectRequests(conn)
        self._positions = PostgresConsumerPositions(conn)
        return self

    def add_exception(self, item: QuarantineItem) -> None:
        self.quarantine.add(item)

    def load_positions(self, consumer: str) -> dict[str, int]:
        return self._positions.load(consumer)

    def save_positions(self, consumer: str, positions: Mapping[str, int]) -> None:
        self._positions.save(consumer, positions)


def saga_uow_factory(engine: Engine, outbox_topic: str | None = None
                     ) -> Callable[[], PostgresSagaUnitOfWork]:
    return lambda: PostgresSagaUnitOfWork(engine, outbox_topic=outbox_topic)


class PostgresOnchainUnitOfWork(PostgresSagaUnitOfWork):
    """The saga unit of work plus our signed transactions
    (`cardpay.handlers.onchain.OnchainUnitOfWork`): the effect requests an adapter claims, the
    transactions it signs for them, their nonces and the spends' payment links commit together,
    before anything is broadcast."""

    transactions: PostgresOutgoingTransactions

    def __enter__(self) -> PostgresOnchainUnitOfWork:
        super().__enter__()
        self.transactions = PostgresOutgoingTransactions(self.conn)
        return self


def onchain_uow_factory(engine: Engine) -> Callable[[], PostgresOnchainUnitOfWork]:
    return lambda: PostgresOnchainUnitOfWork(engine)
