"""The outbox relay on real PostgreSQL with a publisher that fails: nothing is lost or skipped."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from sqlalchemy import Engine

from cardpay.kafka.relay import OutboxRelay
from cardpay.kafka.wire import OutboxMessage
from cardpay.metrics.relay import RelayMetrics
from cardpay.runtime.supervise import Backoff
from tests.support.workload import payment_events, write

pytestmark = pytest.mark.integration


class FlakyPublisher:
    """Fails its first `failures` publishes (as a broker going away would), then delivers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.delivered: list[int] = []
        self.resets = 0

    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker unreachable")
        self.delivered.extend(m.id for m in messages)

    async def reset(self) -> None:
        self.resets += 1


def test_failed_publishes_are_retried_and_every_row_is_published_in_order(
    pg_engine: Engine,
) -> None:
    write(pg_engine, payment_events(30, seed=3), outbox_topic="t")
    publisher = FlakyPublisher(failures=3)
    relay = OutboxRelay(pg_engine, publisher, batch_size=7)
    asyncio.run(relay.run(until_idle=True, backoff=Backoff(0.001, 0.01, 0.0)))
    assert relay.backlog() == 0
    assert publisher.resets == 3
    assert publisher.delivered == sorted(publisher.delivered)  # id order, nothing skipped
    assert len(publisher.delivered) == len(set(publisher.delivered)) == relay.published


def test_relay_metrics_count_publishes_and_failures(pg_engine: Engine) -> None:
    write(pg_engine, payment_events(10, seed=4), outbox_topic="t")
    relay = OutboxRelay(pg_engine, FlakyPublisher(failures=2), batch_size=4)
    metrics = RelayMetrics()
    relay.observe_backlog(metrics, force=True)
    backlog = metrics.registry.get_sample_value("cardpay_relay_outbox_backlog")
    assert backlog is not None and backlog > 0
    asyncio.run(relay.run(until_idle=True, backoff=Backoff(0.001, 0.01, 0.0), metrics=metrics))

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert sample("cardpay_relay_published_total") == backlog == relay.published
    assert sample("cardpay_relay_outbox_backlog") == 0
    assert sample("cardpay_relay_oldest_unpublished_age_seconds") == 0
    assert sample("cardpay_supervised_errors_total", component="relay",
                  error="ConnectionError") == 2
