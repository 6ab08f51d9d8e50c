"""Engine creation and schema migration (Alembic, run programmatically by `cardpay db upgrade`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, func, select

from cardpay.postgres import raw

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK = 0x63617264706179  # "cardpay": one advisory-lock key for every migrating process


def normalize_url(url: str) -> str:
    """Accept plain `postgresql://` URLs (libpq style) and select the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    raise ValueError(f"not a PostgreSQL URL: {url!r}")


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    engine = create_engine(normalize_url(url), pool_size=pool_size, pool_pre_ping=True)
    # statements deferred on the driver's cursor (`raw.defer`) go before any SQLAlchemy
    # statement on the same connection, and never outlive a rollback (the units of work send
    # the rest before they commit)
    event.listen(engine, "before_cursor_execute", _flush_deferred)
    event.listen(engine, "rollback", raw.discard)
    return engine


def _flush_deferred(conn: Connection, cursor: Any, statement: str, parameters: Any,
                    context: Any, executemany: bool) -> None:
    raw.flush_driver(cursor.connection)


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision`; safe to run again (a no-op when already there).

    Any number of processes may start at once on a fresh database: each takes a session-level
    advisory lock around the Alembic run, so one migrates and the others then find the schema at
    `revision` (without it two of them race on CREATE TABLE alembic_version and one fails). The
    lock is session-level, not transaction-level, because Alembic commits once per migration.
    """
    config = alembic_config()
    with engine.connect() as conn:
        conn.execute(select(func.pg_advisory_lock(MIGRATION_LOCK)))
        conn.commit()
        try:
            with conn.begin():
                config.attributes["connection"] = conn
                command.upgrade(config, revision)
        finally:
            if conn.in_transaction():
                conn.rollback()
            conn.execute(select(func.pg_advisory_unlock(MIGRATION_LOCK)))
            conn.commit()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
