"""Builders for domain events used across tests."""

from __future__ import annotations

from datetime import UTC, datetime

from domain.events import ChainEvidence, DomainEvent, PaymentSpent, RefundRequested
from domain.money import Currency, Money

EURE = Currency("EURe", 18)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def spent(stream_id: str, version: int = 1, units: int = 10**18) -> DomainEvent:
    return PaymentSpent(
        stream_id=stream_id,
        version=version,
        occurred_at=T0,
        correlation_id="corr",
        causation_id=f"cmd-{stream_id}-{version}",
        account="0x" + "11" * 20,
        amount=Money(units, EURE),
        evidence=ChainEvidence(
            chain_id=31337, block_number=1, block_hash="0x" + "ab" * 32,
            tx_hash="0x" + "cd" * 32, log_index=version,
        ),
    )


def refund_requested(stream_id: str, version: int, units: int = 1) -> DomainEvent:
    return RefundRequested(
        stream_id=stream_id, version=version, occurred_at=T0, correlation_id="corr",
        causation_id=f"cmd-{stream_id}-{version}", refund_id=f"r{version}",
        amount=Money(units, EURE), reason="test",
    )
