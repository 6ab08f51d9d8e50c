"""The stored state's health figures (`cardpay.handlers.health.SystemState`) in a few cheap
queries: small tables (ledger accounts, chain cursors, consumer positions), saga timers through
their due index, unresolved exceptions, the newest event position (an index answers), and the
transfers per code (one scan of a narrow table), so the API can refresh them every few seconds
on a database of millions of events.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

from cardpay.handlers.health import SystemState

LOG_SOURCE = "events"
"""The source name under which consumers of the PostgreSQL event log store their next position
(`cardpay.postgres.log_feed`)."""


def ledger_balanced(conn: Connection) -> bool:
    """Per ledger, the accounts' debits equal their credits (posted and pending): each transfer
    debits one account and credits another by the same amount, so any difference means a
    journal that did not balance (or a row changed behind the ledger's back)."""
    unbalanced = conn.execute(text(
        "SELECT count(*) FROM (SELECT ledger FROM ledger_accounts GROUP BY ledger "
        "HAVING sum(debits_posted) <> sum(credits_posted) "
        "OR sum(debits_pending) <> sum(credits_pending)) AS off")).scalar_one()
    return int(unbalanced) == 0


def feed_lag(conn: Connection) -> dict[str, int]:
    """Per consumer of the event log: events recorded at or beyond its next position."""
    newest = conn.execute(text("SELECT max(position) FROM events")).scalar()
    rows = conn.execute(text("SELECT consumer, position FROM consumer_positions "
                             "WHERE source = :source"), {"source": LOG_SOURCE}).all()
    return {str(consumer): max(0, int(newest or 0) + 1 - int(position))
            for consumer, position in rows}


def read_state(conn: Connection) -> SystemState:
    transfers = conn.execute(text(
        "SELECT code, count(*) FROM ledger_transfers GROUP BY code")).all()
    exceptions = conn.execute(text(
        "SELECT source, count(*) FROM quarantine WHERE resolved_at IS NULL GROUP BY source"
    )).all()
    timers_due = conn.execute(text(
        "SELECT count(*) FROM saga_timers WHERE due_at <= now()")).scalar_one()
    cursors = conn.execute(text(
        "SELECT name, extract(epoch FROM now() - updated_at) FROM chain_cursor")).all()
    return SystemState(
        ledger_balanced=ledger_balanced(conn),
        ledger_transfers={str(code): int(n) for code, n in transfers},
        open_exceptions={str(source): int(n) for source, n in exceptions},
        saga_timers_due=int(timers_due),
        feed_lag=feed_lag(conn),
        listener_cursor_age_s={str(name): max(0.0, float(age)) for name, age in cursors})
