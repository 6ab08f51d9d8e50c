"""The `cardpay` command line. Configuration comes from `CARDPAY_*` environment variables.

Each command group lives in its own module with a `register(sub)` function that adds its
subcommands and sets `run=<function(settings, args) -> exit status>` on them; this module
assembles the parser, reads the settings once and dispatches.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from cardpay.cli import (
    api,
    cards,
    chain,
    db,
    demo,
    exceptions,
    listener_admin,
    network,
    payments,
    projections,
    quarantine,
    reconcile,
    replay,
    run,
    sagas,
    services,
    settlements,
    status,
    tokens,
)
from cardpay.cli.errors import CliError, CommandFailed, UsageError
from cardpay.settings import Settings, SettingsError

EPILOG = """\
environment:
  CARDPAY_DATABASE_URL     PostgreSQL URL (default: embedded server in CARDPAY_DATA_DIR)
  CARDPAY_DATA_DIR         data directory for the embedded server (default ~/.local/share/cardpay)
  CARDPAY_KAFKA_BOOTSTRAP  Kafka bootstrap servers (default: none; feeds read the Postgres log)
  CARDPAY_KAFKA_TOPIC      topic of payment events (default cardpay.payments)
  CARDPAY_KAFKA_GROUP      `project` joins the consumer group GROUP:<topic>:payments and shares
                           the partitions (default: none; every partition read)
  CARDPAY_RPC_URL          JSON-RPC URL of the chain node
  CARDPAY_CONFIRMATIONS    blocks behind the head the listener stays (default 2; 0 allowed)
  CARDPAY_MAX_BLOCK_RANGE  largest eth_getLogs range in blocks (default 2000; it adapts below)
  CARDPAY_LISTENER_NAME    the cursor's name, shared by backfill and listen (default main)
  CARDPAY_PROGRESS         draw progress bars even when stderr is not a terminal (set to 1)
  CARDPAY_WEBHOOK_SECRETS  the card network's whsec_... secrets, comma separated (for `api`)
  CARDPAY_API_HOST         address `cardpay api` binds (default 127.0.0.1)
  CARDPAY_API_PORT         port of `cardpay api` (default 8080)
  CARDPAY_METRICS_HOST     address the --metrics-port endpoints bind (default 127.0.0.1)
  CARDPAY_AUTHORIZATION_DEADLINE_MS  answer deadline of an authorization (default 2000)
  CARDPAY_API_MAX_IN_FLIGHT  network requests `api` works on at once; more get 503 (default 48)
  CARDPAY_PARKED_CLEARING_TIMEOUT    a clearing parked this long without its authorization
                           becomes an exception (default 72h; units s, m, h, d)
  CARDPAY_SWEEP_INTERVAL_S seconds between network sweeps in `cardpay api` (default 60; 0: off)
  CARDPAY_NETWORK_ADVICE_URL  the card network's advice endpoint (for `sagas run`; default none)
  CARDPAY_SPEND_TIMEOUT    an approved spend not seen on chain by then is undone (default 10m)
  CARDPAY_SAGA_POLL_S      seconds `sagas run` waits for events between timer checks (default 0.5)
  CARDPAY_OVER_CLEARING    a clearing above what the Safe paid: exception (default) or
                           incremental_spend (collect the rest from the Safe)
  CARDPAY_RELAYER_KEY      the spend relayer's private key (for `sagas run`; never shown)
  CARDPAY_SETTLEMENT_KEY   the settlement account owner's private key, signs refunds (never shown)
  CARDPAY_TX_STUCK_AFTER   a transaction of ours not mined by then is replaced with higher fees
                           (default 120s)
  CARDPAY_TX_SIGNER        key (sign with the keys above) or impersonate (an Anvil fork: send
                           as the accounts the contracts expect, anvil_impersonateAccount)
  CARDPAY_RELAYER_ADDRESS  with impersonate: whom spends are sent as (default: the first
                           enabled module of the Spender module, read from the chain)
  CARDPAY_SETTLEMENT_SENDER  with impersonate: whom refunds are sent as (default: the Safe's first owner)
  CARDPAY_SETTLEMENT_CUTOFF  daily settlement cut-off, HH:MM UTC (default 02:00): day D's
                           batch is matched against the network's report then on D + 1

README.md lists the variables of the dev and test harnesses too.
"""

INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as shells report it."""
BROKEN_PIPE = 141
"""Exit status when the reader of stdout went away (128 + SIGPIPE)."""

COMMAND_GROUPS = (run, demo, status, payments, settlements, reconcile, quarantine, exceptions, sagas,
                  cards, db, services, api, tokens, projections, replay, chain, listener_admin,
                  network)
"""Modules with a `register(sub)`; their order is the order of `cardpay --help`."""


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors: what is wrong and where the help is, exit 2
    (argparse's default prints the whole usage block first). Subparsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def package_version() -> str:
    try:
        return importlib.metadata.version("cardpay")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="cardpay",
        description="On-chain card-payment indexer and saga engine (modelled on Gnosis Pay).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cardpay {package_version()}",
                        help="print the version of cardpay and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (default: one line)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def translate(exc: BaseException) -> CliError | None:
    """The user-facing errors of the layers below, as CLI errors (None: not one of them)."""
    import sqlalchemy.exc  # here: a command that never reaches the database does not import it

    from cardpay.bootstrap import DatabaseUnavailable

    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, SettingsError):
        return UsageError(str(exc))
    if isinstance(exc, DatabaseUnavailable):
        return CommandFailed(str(exc))
    if isinstance(exc, sqlalchemy.exc.OperationalError):
        from cardpay.bootstrap import short_reason

        return CommandFailed(f"PostgreSQL failed: {short_reason(exc)}; check the server "
                             "(CARDPAY_DATABASE_URL) and run the command again")
    return None


def command_name(args: argparse.Namespace) -> str:
    """`cardpay db upgrade`: the command and its action (groups name theirs `<group>_command`)."""
    actions = [value for key, value in sorted(vars(args).items())
               if key.endswith("_command") and isinstance(value, str)]
    return " ".join(["cardpay", args.command, *actions])


def one_line(text: str) -> str:
    return " ".join(text.split())


def shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    where = command_name(args)
    try:
        settings = Settings.from_env()
        status: int = args.run(settings, args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{where}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`cardpay payments --format csv | head`): stop quietly, as Unix
        # tools do; stdout points at /dev/null so the interpreter's final flush cannot fail
        with contextlib.suppress(OSError, ValueError):  # stdout may have no descriptor
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
    except Exception as exc:
        if args.debug:
            raise
        error = translate(exc)
        if error is None:
            print(f"{where}: unexpected error: {type(exc).__name__}: "
                  f"{shorten(one_line(str(exc)))} (run with --debug for the traceback)",
                  file=sys.stderr)
            return 1
        print(f"{where}: {one_line(str(error))}", file=sys.stderr)
        return error.status
    return status


if __name__ == "__main__":
    sys.exit(main())
