"""A deterministic stream of payment events and the read model an uninterrupted run must produce."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from sqlalchemy import Engine, select

from cardpay.postgres.schema import rm_payments
from cardpay.postgres.uow import PostgresProjectionUnitOfWork, PostgresUnitOfWork
from domain import commands as c
from domain.events import ChainEvidence, DomainEvent
from domain.money import Currency, Money
from domain.payment import Payment, handle
from projector.payments import PaymentRow, evolve

EURE = Currency("EURe", 18)
USDCE = Currency("USDCe", 6)
AT = datetime(2026, 6, 8, tzinfo=UTC)


def payment_events(n: int, seed: int = 1) -> list[list[DomainEvent]]:
    """Events of `n` payments: each spent, some refunded (requested, submitted, confirmed)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        pid = f"pay-{i:05d}"
        currency = rng.choice([EURE, USDCE])
        spent = rng.randint(1, 500) * 10 ** (currency.decimals - 1)
        payment = Payment(pid)
        evidence = ChainEvidence(chain_id=31337, block_number=i + 1, block_hash=f"0x{i:064x}",
                                 tx_hash=f"0x{i + 1:064x}", log_index=0)
        cmds: list[c.Command] = [c.ConfirmSpend(command_id=f"s{i}", payment_id=pid, at=AT,
                                                account=f"0x{i:040x}",
                                                amount=Money(spent, currency), evidence=evidence)]
        if rng.random() < 0.4:
            amount = Money(rng.randint(1, spent), currency)
            cmds += [
                c.RequestRefund(command_id=f"r{i}", payment_id=pid, at=AT, refund_id="r",
                                amount=amount, reason="test"),
                c.RecordRefundSubmission(command_id=f"t{i}", payment_id=pid, at=AT,
                                         refund_id="r", tx_hash=f"0x{i + 7:064x}"),
                c.ConfirmRefund(command_id=f"c{i}", payment_id=pid, at=AT, refund_id="r",
                                amount=amount, evidence=evidence),
            ]
        for cmd in cmds:
            handle(payment, cmd)
        out.append(payment.pending_events)
    return out


def write(engine: Engine, payments: list[list[DomainEvent]], *, outbox_topic: str | None,
          per_transaction: int = 50) -> None:
    for start in range(0, len(payments), per_transaction):
        with PostgresUnitOfWork(engine, outbox_topic=outbox_topic) as uow:
            for events in payments[start:start + per_transaction]:
                uow.events.append(events)
            uow.commit()


def expected_rows(payments: list[list[DomainEvent]]) -> dict[str, PaymentRow]:
    rows: dict[str, PaymentRow] = {}
    for events in payments:
        row: PaymentRow | None = None
        for event in events:
            row = evolve(row, event)
        assert row is not None
        rows[row.payment_id] = row
    return rows


def stored_rows(engine: Engine) -> dict[str, PaymentRow]:
    with PostgresProjectionUnitOfWork(engine) as uow:
        ids = [r[0] for r in uow.conn.execute(select(rm_payments.c.payment_id))]
        return uow.get_payments(ids)


def read_model_rows(engine: Engine) -> int:
    """Rows of every table the payments projector owns (what `projections reset` deletes)."""
    from sqlalchemy import func

    from cardpay.bootstrap.project import READ_MODELS
    from cardpay.postgres.schema import metadata

    with engine.connect() as conn:
        return sum(int(conn.execute(select(func.count()).select_from(metadata.tables[t]))
                       .scalar_one()) for t in READ_MODELS["payments"])
