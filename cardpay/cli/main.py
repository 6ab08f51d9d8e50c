"""The `cardpay` command line. Configuration comes from `CARDPAY_*` environment variables.

Each command group lives in its own module with a `register(sub)` function that adds its
subcommands and sets `run=<function(settings, args) -> exit status>` on them; this module
assembles the parser, reads the settings once and dispatches.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cardpay.cli import chain, db, demo, projections, replay, services
from cardpay.cli.errors import CliError
from cardpay.settings import Settings, SettingsError

EPILOG = """\
environment:
  CARDPAY_DATABASE_URL     PostgreSQL URL (default: embedded server in CARDPAY_DATA_DIR)
  CARDPAY_DATA_DIR         data directory for the embedded server (default ~/.local/share/cardpay)
  CARDPAY_KAFKA_BOOTSTRAP  Kafka bootstrap servers (default: none; feeds read the Postgres log)
  CARDPAY_KAFKA_TOPIC      topic of payment events (default cardpay.payments)
  CARDPAY_RPC_URL          JSON-RPC URL of the chain node
  CARDPAY_CONFIRMATIONS    blocks behind the head the listener stays (default 2; 0 allowed)
  CARDPAY_MAX_BLOCK_RANGE  largest eth_getLogs range in blocks (default 2000; it adapts below)
  CARDPAY_LISTENER_NAME    the cursor's name, shared by backfill and listen (default main)
"""

COMMAND_GROUPS = (demo, db, services, projections, replay, chain)
"""Modules with a `register(sub)`; their order is the order of `cardpay --help`."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cardpay",
        description="On-chain card-payment indexer and saga engine (modelled on Gnosis Pay).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (default: one line)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"cardpay: {exc}", file=sys.stderr)
        return 2
    try:
        status: int = args.run(settings, args)
    except CliError as exc:
        if args.debug:
            raise
        print(f"cardpay {args.command}: {exc}", file=sys.stderr)
        return exc.status
    return status


if __name__ == "__main__":
    sys.exit(main())
