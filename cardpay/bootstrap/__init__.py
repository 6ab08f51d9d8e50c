"""The composition root: builds each process's adapters from `Settings`, in one place."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import Engine

from cardpay.devstack.embedded_postgres import EmbeddedPostgres
from cardpay.handlers.chain import make_uow_factory
from cardpay.postgres.engine import make_engine, upgrade
from cardpay.postgres.log_feed import PostgresLogFeed
from cardpay.settings import Settings
from projector.feed import Feed
from projector.runner import Projector


@contextlib.contextmanager
def database(settings: Settings, *, migrate: bool = True) -> Iterator[Engine]:
    """An engine on the configured PostgreSQL, or on the embedded server in the data dir."""
    with contextlib.ExitStack() as stack:
        url = settings.database_url
        if url is None:
            url = stack.enter_context(EmbeddedPostgres(settings.data_dir / "pgdata")).url
        engine = make_engine(url)
        stack.callback(engine.dispose)
        if migrate:
            upgrade(engine)
        yield engine


def feed(settings: Settings, engine: Engine) -> Feed:
    if settings.kafka_bootstrap:
        from cardpay.kafka.adapters import KafkaFeed

        return KafkaFeed(settings.kafka_bootstrap, settings.kafka_topic)
    return PostgresLogFeed(engine)


def payments_projector(settings: Settings, engine: Engine, *, batch_size: int = 500) -> Projector:
    return Projector("payments", feed(settings, engine), make_uow_factory(engine, None),
                     batch_size=batch_size)
