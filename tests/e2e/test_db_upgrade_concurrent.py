"""`cardpay db upgrade` from many processes at once on a fresh database: all of them come up."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, text

from cardpay.devstack.embedded_postgres import EmbeddedPostgres
from cardpay.postgres.engine import alembic_config, normalize_url

pytestmark = pytest.mark.e2e

PROCESSES = 5
_names = itertools.count()


@pytest.fixture
def empty_db(pg_server: EmbeddedPostgres) -> Iterator[tuple[Engine, list[str]]]:
    """An admin engine and the names of the empty (never migrated) databases made with it."""
    admin = create_engine(normalize_url(pg_server.url), isolation_level="AUTOCOMMIT")
    names: list[str] = []
    yield admin, names
    with admin.connect() as conn:
        for name in names:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.mark.parametrize("round_", range(3))
def test_many_processes_upgrade_a_fresh_database_at_once(
    round_: int, pg_server: EmbeddedPostgres, empty_db: tuple[Engine, list[str]]
) -> None:
    admin, names = empty_db
    name = f"cardpay_fresh_{os.getpid()}_{round_}_{next(_names)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    names.append(name)
    url = pg_server.url.replace("/postgres?", f"/{name}?")
    env = {**os.environ, "CARDPAY_DATABASE_URL": url}
    procs = [subprocess.Popen([sys.executable, "-m", "cardpay.cli.main", "db", "upgrade"],
                              env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(PROCESSES)]
    outcomes = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    for status, out, err in outcomes:
        assert status == 0, err
        assert out.strip() == f"schema at revision {head}"
    engine = create_engine(normalize_url(url))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() \
            == [head]
    engine.dispose()
