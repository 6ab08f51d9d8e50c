"""`cardpay relay` and `cardpay project`: the long-running feed processes."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from cardpay.runtime import tune_gc
from cardpay.settings import Settings


def register(sub: Any) -> None:
    relay = sub.add_parser("relay", help="publish the outbox to Kafka (needs CARDPAY_KAFKA_BOOTSTRAP)")
    relay.add_argument("--until-idle", action="store_true", help="exit when the outbox is empty")
    relay.add_argument("--batch-size", type=int, default=500, help="rows per publish (500)")
    relay.set_defaults(run=relay_command)

    project = sub.add_parser("project", help="run the payments projector on the event feed")
    project.add_argument("--until-idle", action="store_true",
                         help="exit when the feed has nothing new")
    project.add_argument("--batch-size", type=int, default=500,
                         help="feed messages per transaction (500)")
    project.set_defaults(run=project_command)


async def _until_signal(run: asyncio.Future[None] | asyncio.Task[None], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run


def relay_command(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.kafka_bootstrap:
        print("cardpay relay: set CARDPAY_KAFKA_BOOTSTRAP (host:port)", file=sys.stderr)
        return 2
    from cardpay.bootstrap import database
    from cardpay.kafka.adapters import KafkaPublisher
    from cardpay.kafka.relay import OutboxRelay

    async def main() -> None:
        assert settings.kafka_bootstrap is not None
        with database(settings) as engine:
            publisher = KafkaPublisher(settings.kafka_bootstrap)
            await publisher.start()
            try:
                stop = asyncio.Event()
                relay = OutboxRelay(engine, publisher, batch_size=args.batch_size)
                await _until_signal(
                    asyncio.create_task(relay.run(stop, until_idle=args.until_idle)), stop)
                print(f"published {relay.published} messages")
            finally:
                await publisher.stop()

    asyncio.run(main())
    return 0


def project_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.bootstrap import database, payments_projector

    tune_gc()

    async def main() -> None:
        with database(settings) as engine:
            projector = payments_projector(settings, engine, batch_size=args.batch_size)
            await projector.start()
            try:
                stop = asyncio.Event()
                task = (projector.run_until_idle() if args.until_idle
                        else projector.run_forever(stop))
                await _until_signal(asyncio.ensure_future(task), stop)
                print(f"applied {projector.applied} events")
            finally:
                await projector.stop()

    asyncio.run(main())
    return 0
