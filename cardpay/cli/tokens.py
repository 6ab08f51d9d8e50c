"""`cardpay tokens create|list|revoke`: bearer tokens for the finance and ops API.

`create` prints the token once, alone on stdout (so `TOKEN=$(cardpay tokens create ...)` works);
cardpay keeps only its SHA-256 digest and cannot show it again. Callers send it as
`Authorization: Bearer <token>`; a route answers 401 without a live token and 403 without its
scope (docs/adr/0015-api-tokens.md).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cardpay.cli.errors import CommandFailed
from cardpay.cli.output import Column, Record, add_format_options, emit, print_json
from cardpay.handlers.api_tokens import SCOPES, ApiToken
from cardpay.settings import Settings

SCOPE_HELP = ("finance:read (payments, settlements, reconciliation), ops:read (exceptions), "
              "ops:write (resolve exceptions)")


def scope(text: str) -> str:
    """An argparse type: a known scope, or one line naming the known ones (exit 2)."""
    if text not in SCOPES:
        raise argparse.ArgumentTypeError(
            f"unknown scope {text!r} (known: {', '.join(sorted(SCOPES))})")
    return text


def register(sub: Any) -> None:
    parser = sub.add_parser("tokens", help="create, list and revoke API bearer tokens",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")

    create = actions.add_parser(
        "create", help="make a token with scopes and print it once",
        description="Make a bearer token granting the given scopes and print it once, alone on "
        "stdout (a note on stderr says its id). cardpay stores only its hash: keep the token "
        f"now. Scopes: {SCOPE_HELP}.")
    create.add_argument("--scope", type=scope, action="append", required=True, metavar="SCOPE",
                        help=f"grant this scope (repeatable): {', '.join(sorted(SCOPES))}")
    create.add_argument("--name", default=None, metavar="NAME",
                        help="a label saying who or what uses it (shown by `list`)")
    create.add_argument("--json", action="store_true",
                        help="print one JSON object: id, name, scopes, created_at and token")
    create.set_defaults(run=create_command)

    listing = actions.add_parser(
        "list", help="every token (revoked ones too), never their secrets",
        description="List the tokens, oldest first: id, name, scopes, when created, last used "
        "(to the minute) and revoked. Secrets and hashes are never shown.")
    add_format_options(listing)
    listing.set_defaults(run=list_command)

    revoke = actions.add_parser(
        "revoke", help="revoke a token (requests with it get 401 from now on)",
        description="Revoke a token by its id (from `list`): the API refuses it from the next "
        "request on. Revoking is final; the token stays listed with when it was revoked.")
    revoke.add_argument("token_id", metavar="ID", help="the token's id (from `list`)")
    revoke.set_defaults(run=revoke_command)


def as_record(token: ApiToken) -> dict[str, Any]:
    return {"id": token.token_id, "name": token.name, "scopes": sorted(token.scopes),
            "created_at": token.created_at, "last_used_at": token.last_used_at,
            "revoked_at": token.revoked_at}


def _when(key: str) -> Any:
    return lambda r: "-" if r[key] is None else f"{r[key]:%Y-%m-%d %H:%M:%S}"


COLUMNS = [
    Column("id", "id"),
    Column("name", "name"),
    Column("scopes", "scopes", render=lambda r: ",".join(r["scopes"])),
    Column("created_at", "created", render=_when("created_at")),
    Column("last_used_at", "last used", render=_when("last_used_at")),
    Column("revoked_at", "revoked", render=_when("revoked_at")),
]


def _csv_ready(record: Record) -> Record:
    """CSV cells are text: the scopes as one space-separated cell."""
    return {**record, "scopes": " ".join(record["scopes"])}


def create_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.bootstrap import database
    from cardpay.postgres.repositories.api_tokens import PostgresTokenStore

    with database(settings) as engine:
        issued = PostgresTokenStore(engine).create(args.scope, (args.name or "").strip() or None)
    if args.json:
        print_json({**as_record(issued.info), "token": issued.token})
        return 0
    print(issued.token)
    print(f"token {issued.info.token_id} created with {', '.join(sorted(issued.info.scopes))}: "
          "shown once, cardpay keeps only its hash", file=sys.stderr)
    return 0


def list_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.cli.db import reading
    from cardpay.postgres.repositories.api_tokens import PostgresTokenStore

    with reading(settings) as (engine, _):
        tokens = PostgresTokenStore(engine).list()
    records = [as_record(t) for t in tokens]
    if args.format == "csv":
        records = [dict(_csv_ready(r)) for r in records]
    emit(args.format, COLUMNS, records,
         empty="(no tokens yet: `cardpay tokens create --scope ...`)")
    return 0


def revoke_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.bootstrap import database
    from cardpay.postgres.repositories.api_tokens import PostgresTokenStore

    with database(settings, migrate=False) as engine:
        token = PostgresTokenStore(engine).revoke(args.token_id)
    if token is None or token.revoked_at is None:
        raise CommandFailed(f"no token with id {args.token_id!r}: `cardpay tokens list` shows "
                            "the ids")
    # a token revoked before keeps its first time: the line is true either way
    print(f"token {token.token_id} revoked at {token.revoked_at.isoformat(timespec='seconds')}: the API "
          "refuses it")
    return 0
