"""Composition root of `cardpay relay`: the outbox relay and its Kafka publisher."""

from __future__ import annotations

from sqlalchemy import Engine

from cardpay.kafka.adapters import KafkaPublisher
from cardpay.kafka.relay import OutboxRelay


def build_relay(bootstrap_servers: str, engine: Engine, *, batch_size: int = 500
                ) -> tuple[OutboxRelay, KafkaPublisher]:
    """The relay and its publisher, not started: `OutboxRelay.run(start_publisher=True)` starts
    it inside the supervision loop, so an unreachable broker is retried like any failure."""
    publisher = KafkaPublisher(bootstrap_servers)
    return OutboxRelay(engine, publisher, batch_size=batch_size), publisher
