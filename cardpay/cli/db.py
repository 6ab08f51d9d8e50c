"""`cardpay db upgrade`: apply the schema migrations."""

from __future__ import annotations

import argparse
from typing import Any

from cardpay.settings import Settings


def register(sub: Any) -> None:
    db = sub.add_parser("db", help="database administration")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = db_sub.add_parser("upgrade", help="apply the schema migrations (idempotent)")
    upgrade.set_defaults(run=upgrade_command)


def upgrade_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.bootstrap import database
    from cardpay.postgres.engine import current_revision

    with database(settings) as engine:
        print(f"schema at revision {current_revision(engine)}")
    return 0
