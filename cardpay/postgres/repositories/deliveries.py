"""Card-network deliveries by webhook id (`cardpay.handlers.ports.DeliveryRepository`)."""

from __future__ import annotations

from sqlalchemy import Connection, insert, select

from cardpay.handlers.ports import Delivery
from cardpay.postgres import schema as s

t = s.network_deliveries


class PostgresDeliveries:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def get(self, webhook_id: str) -> Delivery | None:
        row = self._conn.execute(select(t).where(t.c.webhook_id == webhook_id)).first()
        if row is None:
            return None
        m = row._mapping
        return Delivery(webhook_id=m["webhook_id"], body_sha256=m["body_sha256"],
                        status=int(m["status"]), response=dict(m["response"]),
                        received_at=m["received_at"])

    def record(self, delivery: Delivery) -> None:
        # a plain insert: a second writer of the same id (one that skipped the lock) fails
        # and rolls its effect back with it, rather than overwriting the first answer
        self._conn.execute(insert(t).values(
            webhook_id=delivery.webhook_id, body_sha256=delivery.body_sha256,
            status=delivery.status, response=dict(delivery.response),
            received_at=delivery.received_at))
