"""The replay's composition root: a fresh embedded PostgreSQL and the listener's sink on it."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from cardpay.bootstrap import database
from cardpay.handlers.chain import ChainSinkHandler
from cardpay.postgres.uow import PostgresUnitOfWork, unit_of_work_factory
from cardpay.settings import Settings


@dataclass
class ReplayStack:
    engine: Engine
    sink: ChainSinkHandler

    def uow(self) -> PostgresUnitOfWork:
        return PostgresUnitOfWork(self.engine)


@contextlib.contextmanager
def replay_stack(chain_id: int) -> Iterator[ReplayStack]:
    """A throw-away database (deleted on exit) with the sink that indexes into it."""
    with tempfile.TemporaryDirectory(prefix="cardpay-replay-") as d, \
            database(Settings(data_dir=Path(d))) as engine:
        yield ReplayStack(engine, ChainSinkHandler(unit_of_work_factory(engine, None),
                                                   chain_id=chain_id))
