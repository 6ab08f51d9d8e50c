"""Card-network deliveries by webhook id (`cardpay.handlers.ports.DeliveryRepository`).

Both statements run on every delivery, so they go on the driver's cursor (`cardpay.postgres.raw`).
"""

from __future__ import annotations

from psycopg.types.json import Jsonb
from sqlalchemy import Connection

from cardpay.handlers.ports import Delivery
from cardpay.postgres import raw

_GET = ("SELECT webhook_id, body_sha256, status, response, received_at FROM network_deliveries "
        "WHERE webhook_id = %s")
# a plain insert: a second writer of the same id (one that skipped the lock) fails and rolls its
# effect back with it, rather than overwriting the first answer
_RECORD = ("INSERT INTO network_deliveries (webhook_id, body_sha256, status, response, "
           "received_at) VALUES (%s, %s, %s, %s, %s)")


class PostgresDeliveries:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def get(self, webhook_id: str) -> Delivery | None:
        row = raw.execute(self._conn, _GET, (webhook_id,)).fetchone()
        if row is None:
            return None
        return Delivery(webhook_id=row[0], body_sha256=row[1], status=int(row[2]),
                        response=dict(row[3]), received_at=row[4])

    def record(self, delivery: Delivery) -> None:
        raw.defer(self._conn, _RECORD, (
            delivery.webhook_id, delivery.body_sha256, delivery.status,
            Jsonb(dict(delivery.response)), delivery.received_at))
