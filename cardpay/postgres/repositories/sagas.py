"""The saga store, its durable timers and the effects outbox (`cardpay.handlers.sagas` ports).

Every saga reaction loads and saves its instance and sets timers and asks for effects, so the
statements run on the driver's cursor (`cardpay.postgres.raw`), and those whose result nobody
reads (setting or cancelling a timer, asking for an effect) are deferred: they travel with the
next statement or the commit, so a reaction costs about two round trips whatever it asks for.
(An error of a deferred statement is raised by the call that sends it.)
Three guards are written into the SQL:
- an instance is saved only over the version it was read at (INSERT ... ON CONFLICT DO NOTHING
  for a new one, UPDATE ... WHERE version = expected otherwise): a concurrent writer's UPDATE
  waits for the first one's row lock, then finds the version moved and changes nothing, which
  is raised as `ConcurrencyConflict`;
- due timers are taken with FOR UPDATE SKIP LOCKED and deleted in the same statement: another
  worker skips them while this transaction is open, and they come back if it rolls back;
- an effect is finished only while pending (UPDATE ... WHERE status = 'pending' RETURNING), so a
  duplicate answer finds nothing and is reported as such.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import Connection

from cardpay.errors import ConcurrencyConflict
from cardpay.handlers.sagas import DueTimer, EffectRequest
from cardpay.postgres import raw
from sagas.engine.codec import from_json, to_json
from sagas.engine.model import Json, SagaInstance, Status

_LOAD = ("SELECT saga_id, version, state FROM saga_instances "
         "WHERE kind = %s AND saga_id = ANY(%s)")
_INSERT = ("INSERT INTO saga_instances (kind, saga_id, version, status, stage, state) "
           "VALUES (%(kind)s, %(saga_id)s, %(version)s, %(status)s, %(stage)s, %(state)s) "
           "ON CONFLICT (kind, saga_id) DO NOTHING")
_UPDATE = ("UPDATE saga_instances SET version = %(version)s, status = %(status)s, "
           "stage = %(stage)s, state = %(state)s, updated_at = now() "
           "WHERE kind = %(kind)s AND saga_id = %(saga_id)s AND version = %(expected)s")
_FIND = ("SELECT kind, saga_id, version, state FROM saga_instances "
         "WHERE (%(status)s::text IS NULL OR status = %(status)s) "
         "AND (%(kind)s::text IS NULL OR kind = %(kind)s) "
         "ORDER BY updated_at, kind, saga_id LIMIT %(limit)s")

_SET_TIMER = ("INSERT INTO saga_timers (kind, saga_id, name, due_at) VALUES (%s, %s, %s, %s) "
              "ON CONFLICT (kind, saga_id, name) DO UPDATE SET due_at = EXCLUDED.due_at")
_CANCEL_TIMER = "DELETE FROM saga_timers WHERE kind = %s AND saga_id = %s AND name = %s"
_TAKE_DUE = (
    "DELETE FROM saga_timers t USING ("
    "  SELECT kind, saga_id, name FROM saga_timers WHERE due_at <= %(now)s"
    "  ORDER BY due_at, kind, saga_id, name LIMIT %(limit)s FOR UPDATE SKIP LOCKED) due "
    "WHERE t.kind = due.kind AND t.saga_id = due.saga_id AND t.name = due.name "
    "RETURNING t.kind, t.saga_id, t.name, t.due_at")

_REQUEST = (
    "INSERT INTO saga_effects (request_id, kind, saga_id, name, payload, attempt) "
    "VALUES (%(request_id)s, %(kind)s, %(saga_id)s, %(name)s, %(payload)s, %(attempt)s) "
    "ON CONFLICT (request_id) DO UPDATE SET payload = EXCLUDED.payload, "
    "attempt = EXCLUDED.attempt, status = 'pending', result = NULL, answered_at = NULL, "
    "requested_at = now()")
_CLAIM = ("SELECT request_id, kind, saga_id, name, payload, attempt FROM saga_effects "
          "WHERE status = 'pending' AND name = ANY(%(names)s) "
          "ORDER BY requested_at, request_id LIMIT %(limit)s FOR UPDATE SKIP LOCKED")
_FINISH = ("UPDATE saga_effects SET status = %(status)s, result = %(result)s, "
           "answered_at = now() WHERE request_id = %(request_id)s AND status = 'pending' "
           "RETURNING request_id, kind, saga_id, name, payload, attempt")


class PostgresSagaStore:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def load(self, kind: str, saga_ids: Sequence[str]) -> dict[str, SagaInstance]:
        if not saga_ids:
            return {}
        rows = raw.execute(self._conn, _LOAD, (kind, list(saga_ids))).fetchall()
        return {sid: from_json(sid, kind, int(version), state) for sid, version, state in rows}

    def save(self, instance: SagaInstance, expected_version: int) -> None:
        params: dict[str, Any] = {
            "kind": instance.kind, "saga_id": instance.saga_id, "version": instance.version,
            "status": instance.status.value, "stage": instance.stage,
            "state": Jsonb(to_json(instance)), "expected": expected_version}
        cur = raw.execute(self._conn, _INSERT if expected_version == 0 else _UPDATE, params)
        if cur.rowcount != 1:
            raise ConcurrencyConflict(
                f"saga {instance.kind}/{instance.saga_id} is no longer at version "
                f"{expected_version}: another worker advanced it")

    def find(self, status: Status | None = None, kind: str | None = None,
             limit: int = 100) -> list[SagaInstance]:
        rows = raw.execute(self._conn, _FIND, {
            "status": None if status is None else status.value, "kind": kind,
            "limit": limit}).fetchall()
        return [from_json(sid, k, int(version), state) for k, sid, version, state in rows]


class PostgresSagaTimers:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def set(self, timer: DueTimer) -> None:
        raw.defer(self._conn, _SET_TIMER, (timer.kind, timer.saga_id, timer.name, timer.due))

    def cancel(self, kind: str, saga_id: str, name: str) -> None:
        raw.defer(self._conn, _CANCEL_TIMER, (kind, saga_id, name))

    def take_due(self, now: datetime, limit: int) -> list[DueTimer]:
        rows = raw.execute(self._conn, _TAKE_DUE, {"now": now, "limit": limit}).fetchall()
        taken = [DueTimer(kind, saga_id, name, due) for kind, saga_id, name, due in rows]
        # RETURNING keeps no order: earliest first again, as the subquery chose them
        return sorted(taken, key=lambda t: (t.due, t.kind, t.saga_id, t.name))


class PostgresEffectRequests:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def request(self, request: EffectRequest) -> None:
        raw.defer(self._conn, _REQUEST, {
            "request_id": request.request_id, "kind": request.kind,
            "saga_id": request.saga_id, "name": request.name,
            "payload": Jsonb(dict(request.payload)), "attempt": request.attempt})

    def claim(self, names: Sequence[str], limit: int) -> list[EffectRequest]:
        if not names:
            return []
        rows = raw.execute(self._conn, _CLAIM, {"names": list(names), "limit": limit})
        return [_request(row) for row in rows.fetchall()]

    def finish(self, request_id: str, *, succeeded: bool, result: Json) -> EffectRequest | None:
        row = raw.execute(self._conn, _FINISH, {
            "status": "succeeded" if succeeded else "failed", "result": Jsonb(dict(result)),
            "request_id": request_id}).fetchone()
        return None if row is None else _request(row)


def _request(row: Sequence[Any]) -> EffectRequest:
    request_id, kind, saga_id, name, payload, attempt = row
    return EffectRequest(request_id, kind, saga_id, name, payload, int(attempt))
