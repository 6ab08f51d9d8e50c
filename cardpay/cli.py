"""The `cardpay` command line. Configuration comes from `CARDPAY_*` environment variables."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cardpay",
        description="On-chain card-payment indexer and saga engine (modelled on Gnosis Pay).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run the whole slice on embedded PostgreSQL + Anvil and check it against the chain",
        description="Start embedded PostgreSQL and Anvil, deploy the contracts, make card spends "
        "and refunds, index and project them, and compare the read model's totals per currency "
        "with totals computed independently from the chain's logs. Exits 1 on a mismatch.",
    )
    demo.add_argument("--payments", type=int, default=20, help="card spends to make (default 20)")
    demo.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    demo.add_argument("--json", action="store_true", help="print one JSON object")

    db = sub.add_parser("db", help="database administration")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser("upgrade", help="apply the schema migrations (idempotent)")

    relay = sub.add_parser("relay", help="publish the outbox to Kafka (needs CARDPAY_KAFKA_BOOTSTRAP)")
    relay.add_argument("--until-idle", action="store_true", help="exit when the outbox is empty")
    relay.add_argument("--batch-size", type=int, default=500, help="rows per publish (500)")

    project = sub.add_parser("project", help="run the payments projector on the event feed")
    project.add_argument("--until-idle", action="store_true",
                         help="exit when the feed has nothing new")
    project.add_argument("--batch-size", type=int, default=500,
                         help="feed messages per transaction (500)")
    replay = sub.add_parser(
        "replay",
        help="index a recorded chain (logs.jsonl + blocks.jsonl) into a fresh embedded database",
        description="Replay DIR/logs.jsonl (eth_getLogs results, one per line) and DIR/blocks.jsonl "
        "(eth_getBlockByNumber results) through the real listener code into a fresh embedded "
        "PostgreSQL, then print counts and totals per class and token. The local preset reads "
        "DIR/deployment.json.",
    )
    replay.add_argument("directory", type=Path, metavar="DIR")
    replay.add_argument("--preset", choices=["gnosis", "local"], default="gnosis",
                        help="which addresses mean what (default gnosis: mainnet Gnosis Pay)")
    replay.add_argument("--json", action="store_true",
                        help='one JSON object: "activity" (every classified transfer) and "totals"')
    chain_args = argparse.ArgumentParser(add_help=False)
    chain_args.add_argument("--preset", choices=["gnosis", "local"], default="local",
                            help="addresses: gnosis (mainnet Gnosis Pay) or local (default; "
                            "read from --deployment)")
    chain_args.add_argument("--deployment", type=Path, default=None,
                            help="local preset file written by `cardpay deploy` "
                            "(default $CARDPAY_DATA_DIR/local-deployment.json)")
    chain_args.add_argument("--rpc-url", default=None, help="node URL (default CARDPAY_RPC_URL)")
    backfill = sub.add_parser(
        "backfill", parents=[chain_args],
        help="index a block range with a progress bar (blocks, logs/s, ETA), then stop",
        description="Index from --from-block (or the listener's cursor) to --to-block (default: "
        "the confirmed head at start). Shares the cursor with `cardpay listen`, so live "
        "indexing continues exactly where a backfill ended.",
    )
    backfill.add_argument("--from-block", type=int, default=None)
    backfill.add_argument("--to-block", type=int, default=None)
    listen = sub.add_parser("listen", parents=[chain_args],
                            help="index the chain as it grows (Ctrl-C to stop)")
    listen.add_argument("--from-block", type=int, default=None,
                        help="first block when the listener has no cursor yet")
    listen.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus /metrics on 127.0.0.1:PORT")
    listen.add_argument("--poll-interval", type=float, default=2.0, help="seconds (default 2)")
    deploy = sub.add_parser("deploy", help="deploy the local contract replicas on a node and "
                            "write the local preset file")
    deploy.add_argument("--rpc-url", default=None, help="node URL (default CARDPAY_RPC_URL)")
    deploy.add_argument("--cardholders", type=int, default=5)
    deploy.add_argument("--out", type=Path, default=None,
                        help="preset file (default $CARDPAY_DATA_DIR/local-deployment.json)")
    return parser


def _database_upgrade(settings: Settings) -> int:
    from cardpay.bootstrap import database
    from cardpay.db.engine import current_revision

    with database(settings) as engine:
        print(f"schema at revision {current_revision(engine)}")
    return 0


async def _until_signal(run: asyncio.Future[None] | asyncio.Task[None], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run


def _relay(settings: Settings, until_idle: bool, batch_size: int) -> int:
    if not settings.kafka_bootstrap:
        print("cardpay relay: set CARDPAY_KAFKA_BOOTSTRAP (host:port)", file=sys.stderr)
        return 2
    from cardpay.adapters.kafka import KafkaPublisher
    from cardpay.bootstrap import database
    from cardpay.relay import OutboxRelay

    async def main() -> None:
        assert settings.kafka_bootstrap is not None
        with database(settings) as engine:
            publisher = KafkaPublisher(settings.kafka_bootstrap)
            await publisher.start()
            try:
                stop = asyncio.Event()
                relay = OutboxRelay(engine, publisher, batch_size=batch_size)
                await _until_signal(asyncio.create_task(relay.run(stop, until_idle=until_idle)),
                                    stop)
                print(f"published {relay.published} messages")
            finally:
                await publisher.stop()

    asyncio.run(main())
    return 0


def _project(settings: Settings, until_idle: bool, batch_size: int) -> int:
    from cardpay.bootstrap import database, payments_projector

    async def main() -> None:
        with database(settings) as engine:
            projector = payments_projector(settings, engine, batch_size=batch_size)
            await projector.start()
            try:
                stop = asyncio.Event()
                task = (projector.run_until_idle() if until_idle
                        else projector.run_forever(stop))
                await _until_signal(asyncio.ensure_future(task), stop)
                print(f"applied {projector.applied} events")
            finally:
                await projector.stop()

    asyncio.run(main())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"cardpay: {exc}", file=sys.stderr)
        return 2
    if args.command == "demo":
        from cardpay import demo

        if args.payments < 1:
            print("cardpay demo: --payments must be at least 1", file=sys.stderr)
            return 2
        return demo.run(args.payments, args.seed, as_json=args.json)
    if args.command == "db":
        return _database_upgrade(settings)
    if args.command in ("replay", "backfill", "listen", "project", "demo"):
        from cardpay.runtime import tune_gc

        tune_gc()
    if args.command == "replay":
        from cardpay import replay as replay_command
        from listener.errors import ListenerError

        try:
            return replay_command.main(args.directory, args.preset, args.json)
        except (ListenerError, FileNotFoundError) as exc:
            print(f"cardpay replay: {exc}", file=sys.stderr)
            return 2
    if args.command in ("backfill", "listen", "deploy"):
        from cardpay import chain_cli

        try:
            if args.command == "backfill":
                return chain_cli.backfill(
                    settings, preset=args.preset, deployment=args.deployment,
                    rpc_url=args.rpc_url, from_block=args.from_block, to_block=args.to_block,
                    show_progress=sys.stderr.isatty() or bool(os.environ.get("CARDPAY_PROGRESS")))
            if args.command == "listen":
                return chain_cli.listen(
                    settings, preset=args.preset, deployment=args.deployment,
                    rpc_url=args.rpc_url, from_block=args.from_block,
                    metrics_port=args.metrics_port, poll_interval=args.poll_interval)
            return chain_cli.deploy(settings, rpc_url=args.rpc_url, cardholders=args.cardholders,
                                    out=args.out)
        except (chain_cli.ChainCommandError, FileNotFoundError) as exc:
            print(f"cardpay {args.command}: {exc}", file=sys.stderr)
            return 2
    if args.command == "relay":
        return _relay(settings, args.until_idle, args.batch_size)
    if args.command == "project":
        return _project(settings, args.until_idle, args.batch_size)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
