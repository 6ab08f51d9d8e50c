"""The wire form of recorded events on Kafka and in the outbox.

Key: the payment (stream) id, so every event of a payment lands on one partition, in order.
Value: UTF-8 JSON of the `RecordedEvent` (amounts are strings of minor units inside `data`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from cardpay.errors import CardpayError
from domain.events import RecordedEvent


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A row of the outbox: written with the events, published by the relay, then marked."""

    id: int
    topic: str
    key: str
    value: bytes


class UndecodableMessage(CardpayError, ValueError):
    """A feed message whose bytes are not a recorded event (quarantined by the consumer)."""


def encode_event(event: RecordedEvent) -> bytes:
    return json.dumps(
        {
            "stream_id": event.stream_id,
            "version": event.version,
            "position": event.position,
            "type": event.type,
            "data": event.data,
            "recorded_at": event.recorded_at.isoformat(),
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


def decode_event(raw: bytes) -> RecordedEvent:
    try:
        obj = json.loads(raw)
        return RecordedEvent(
            stream_id=str(obj["stream_id"]),
            version=int(obj["version"]),
            position=int(obj["position"]),
            type=str(obj["type"]),
            data=dict(obj["data"]),
            recorded_at=datetime.fromisoformat(obj["recorded_at"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise UndecodableMessage(f"not a recorded event: {exc}") from exc
