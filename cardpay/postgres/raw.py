"""Statements on the hot path, run on the driver's cursor of the unit of work's connection.

SQLAlchemy Core costs 0.2-0.3 ms of CPU per statement here (statement building, cache keys,
result processing); the same statement on the psycopg cursor underneath costs ~0.07 ms
(docs/benchmarks.md). The statements the authorization runs on every request therefore go
through `execute` with their SQL text written once at module level; everything else keeps
SQLAlchemy.

Round trips cost more than statements (a wake-up of the server and of this thread each time), so
a statement whose result nobody reads (an advisory lock, a SAVEPOINT, an INSERT without
RETURNING) may be `defer`red: it is sent in one pipeline with the next statement that does return
something, or at the latest before the commit (`flush`). PostgreSQL runs pipelined statements one
after the other, each with its own snapshot under READ COMMITTED, so a lock deferred this way is
held before the next statement reads anything, exactly as if it had been sent alone. Statements
that go through SQLAlchemy flush the deferred ones first (an engine hook in
`cardpay.postgres.engine`), so the order is always the order of the calls.

It is the same connection and the same transaction: SQLAlchemy began it, commits it and rolls it
back. Driver errors are raised as SQLAlchemy's (`IntegrityError`, `OperationalError`...), so
callers catch one family of exceptions whichever way a statement went; an error of a deferred
statement is raised by the call that sent it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any
from weakref import WeakKeyDictionary

import psycopg
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, InvalidRequestError

Params = Mapping[str, Any] | Sequence[Any] | None
Configure = Callable[[psycopg.Cursor[Any]], None]

_deferred: WeakKeyDictionary[psycopg.Connection[Any], list[tuple[str, Params]]] = \
    WeakKeyDictionary()


def driver(conn: Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under a SQLAlchemy connection."""
    found = conn.connection.driver_connection
    assert isinstance(found, psycopg.Connection), "cardpay runs on psycopg 3"
    return found


@contextmanager
def errors(conn: Connection) -> Iterator[psycopg.Connection[Any]]:
    """The driver connection; its errors come out as SQLAlchemy's, as if the Connection had run
    the statement (the API's 503 on `OperationalError`, a `ConcurrencyConflict` on an
    `IntegrityError`), and a lost connection is invalidated so the pool does not hand it out
    again."""
    fairy = conn.connection
    pg = driver(conn)
    try:
        yield pg
    except psycopg.Error as exc:
        dialect = conn.dialect
        disconnect = dialect.is_disconnect(exc, fairy, None)  # type: ignore[arg-type]
        if disconnect:
            conn.invalidate(exc)
        raise DBAPIError.instance(None, None, exc, psycopg.Error,
                                  connection_invalidated=disconnect, dialect=dialect) from exc


def execute(conn: Connection, sql: str, params: Params = None, *,
            configure: Configure | None = None) -> psycopg.Cursor[Any]:
    """Run `sql` (psycopg's `%(name)s` / `%s` placeholders), after whatever was deferred on this
    connection (in the same round trip), and return the cursor to fetch from. psycopg prepares a
    statement server-side after it has run a few times on a connection. `configure` adapts the
    cursor first (e.g. a loader)."""
    cur, = pipeline(conn, (sql, params), configure=configure)
    return cur


def pipeline(conn: Connection, *statements: tuple[str, Params],
             configure: Configure | None = None) -> list[psycopg.Cursor[Any]]:
    """Run what was deferred, then `statements`, in order and in one round trip; the cursor of
    each statement, to fetch from."""
    with errors(conn) as pg:
        queued = _deferred.pop(pg, None) or []
        cursors = []
        for _ in statements:
            cur = pg.cursor()
            if configure is not None:
                configure(cur)
            cursors.append(cur)
        if not queued and len(statements) == 1:
            cursors[0].execute(statements[0][0], statements[0][1])
            return cursors
        with pg.pipeline():
            for sql, params in queued:
                pg.cursor().execute(sql, params)
            for cur, (sql, params) in zip(cursors, statements, strict=True):
                cur.execute(sql, params)
        return cursors


def defer(conn: Connection, sql: str, params: Params = None) -> None:
    """Send `sql` with the next statement on this connection (its result is not read)."""
    _deferred.setdefault(driver(conn), []).append((sql, params))


def flush(conn: Connection) -> None:
    """Send what was deferred now (before a commit, or a statement that goes another way)."""
    with errors(conn) as pg:
        flush_driver(pg)


def flush_driver(pg: psycopg.Connection[Any]) -> None:
    """`flush` on the driver connection (from SQLAlchemy's statement hook, whose errors are
    SQLAlchemy's to wrap)."""
    queued = _deferred.pop(pg, None)
    if queued:
        with pg.pipeline():
            for sql, params in queued:
                pg.cursor().execute(sql, params)


@contextmanager
def savepoint(conn: Connection, name: str) -> Iterator[None]:
    """`SAVEPOINT name` deferred; on an exception, what the block did is undone: if nothing was
    sent since the SAVEPOINT, its statements are simply not sent; otherwise the ones still
    queued are dropped and `ROLLBACK TO SAVEPOINT` runs."""
    pg = driver(conn)
    defer(conn, f"SAVEPOINT {name}")
    queue = _deferred[pg]
    start = len(queue) - 1
    try:
        yield
    except BaseException:
        if _deferred.get(pg) is queue:  # nothing sent since the SAVEPOINT
            del queue[start:]
        else:
            _deferred.pop(pg, None)
            # if the connection is gone with the transaction, the first error says why
            with suppress(DBAPIError):
                execute(conn, f"ROLLBACK TO SAVEPOINT {name}")
        raise
    defer(conn, f"RELEASE SAVEPOINT {name}")


def discard(conn: Connection) -> None:
    """Forget what was deferred (the transaction is being rolled back): a pooled connection
    must not carry it into its next transaction."""
    try:
        pg = conn.connection.driver_connection
    except InvalidRequestError:  # closed or invalidated: nothing will be sent on it
        return
    if pg is not None:
        _deferred.pop(pg, None)
