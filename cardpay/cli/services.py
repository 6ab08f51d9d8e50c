"""`cardpay relay` and `cardpay project`: the long-running feed processes.

Both run under `cardpay.runtime.supervise`: an unreachable Kafka or database is retried with
backoff, one log line per retry. With `--until-idle` they give up after `--idle-timeout` seconds
of failures in a row (exit status 1, one line). SIGINT/SIGTERM stop them between batches (exit
status 0); a batch still waiting on a dead service after a grace period is cancelled, and it
committed nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import math
import signal
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from cardpay.cli.errors import CommandFailed, UsageError
from cardpay.runtime import tune_gc
from cardpay.settings import Settings

if TYPE_CHECKING:  # supervise imports prometheus_client and tenacity: start-up cost otherwise
    from cardpay.runtime.supervise import GaveUp

T = TypeVar("T")

STOP_GRACE = 5.0
"""Seconds a stopping process waits for the step in progress before cancelling it."""

KAFKA_HINT = "check CARDPAY_KAFKA_BOOTSTRAP"


def register(sub: Any) -> None:
    relay = sub.add_parser(
        "relay", help="publish the outbox to Kafka (needs CARDPAY_KAFKA_BOOTSTRAP)",
        description="Publish unpublished outbox rows to Kafka in id order, then mark them. "
        "Retries an unreachable broker or database with backoff.")
    _common_options(relay, "rows per publish")
    relay.set_defaults(run=relay_command)

    project = sub.add_parser(
        "project", help="run the payments projector on the event feed",
        description="Apply the event feed (Kafka with CARDPAY_KAFKA_BOOTSTRAP, else the "
        "PostgreSQL event log) to the payments read model. Stops with exit status 1 if the "
        "Kafka topic was recreated or no longer holds the stored offsets; then see "
        "`cardpay projections reset --help`.")
    _common_options(project, "feed messages per transaction")
    project.add_argument("--group", metavar="NAME",
                         help="join the Kafka consumer group NAME:<topic>:payments and share "
                         "the partitions with the other `cardpay project` processes of that "
                         "group (default: CARDPAY_KAFKA_GROUP; unset: read every partition)")
    project.set_defaults(run=project_command)


def _common_options(parser: argparse.ArgumentParser, batch: str) -> None:
    parser.add_argument("--until-idle", action="store_true",
                        help="exit when there is nothing left to do")
    parser.add_argument("--idle-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="with --until-idle: give up (exit status 1) after failing for this "
                        "long, e.g. Kafka unreachable (default 30)")
    parser.add_argument("--batch-size", type=int, default=500, help=f"{batch} (500)")
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus /metrics on PORT of CARDPAY_METRICS_HOST "
                        "(default 127.0.0.1)")


def validate_loop_options(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not math.isfinite(args.idle_timeout) or args.idle_timeout <= 0:
        raise UsageError(f"--idle-timeout must be a number of seconds above 0, got "
                         f"{args.idle_timeout}")
    if args.metrics_port is not None and not 1 <= args.metrics_port <= 65535:
        raise UsageError(f"--metrics-port must be a TCP port (1-65535), got {args.metrics_port}")


class _Served(Protocol):
    def serve(self, port: int, host: str = "127.0.0.1") -> None: ...


def serve_metrics(metrics: _Served, port: int | None, host: str) -> None:
    """Serve /metrics on `host:port` (`settings.metrics_host`, CARDPAY_METRICS_HOST): loopback
    unless told, `0.0.0.0` in a container so Prometheus in another one can scrape it."""
    if port is None:
        return
    try:
        metrics.serve(port, host)
    except OSError as exc:
        raise CommandFailed(f"cannot serve metrics on {host}:{port} "
                            f"({exc.strerror or exc}); choose another --metrics-port") from exc


def quiet_kafka_client() -> None:
    """aiokafka logs every failed connection attempt at ERROR, some with a traceback; the
    supervision loop already says once per retry what failed."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


async def until_signal(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """Run `work`; SIGINT/SIGTERM set `stop` (the loop ends after its current step). If the
    step does not end within `STOP_GRACE` seconds it is cancelled; returns None then."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.ensure_future(work)
    try:
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if not task.done():
            done, _ = await asyncio.wait({task}, timeout=STOP_GRACE)
            if not done:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    return None
        return task.result()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def gave_up_failure(exc: GaveUp) -> CommandFailed:
    from cardpay.kafka.adapters import KafkaUnreachable
    from cardpay.runtime.supervise import describe

    if isinstance(exc.last, KafkaUnreachable):
        return CommandFailed(f"{exc.last} for {exc.seconds:.0f}s; {KAFKA_HINT}")
    return CommandFailed(f"gave up after failing for {exc.seconds:.0f}s: {describe(exc.last)}")


def relay_command(settings: Settings, args: argparse.Namespace) -> int:
    validate_loop_options(args)
    if not settings.kafka_bootstrap:
        raise UsageError("set CARDPAY_KAFKA_BOOTSTRAP (host:port) to publish the outbox")
    from cardpay.bootstrap import database
    from cardpay.bootstrap.relay import build_relay
    from cardpay.kafka.relay import RelayAlreadyRunning
    from cardpay.metrics.relay import RelayMetrics
    from cardpay.runtime.supervise import GaveUp

    bootstrap = settings.kafka_bootstrap
    quiet_kafka_client()
    metrics = RelayMetrics()
    serve_metrics(metrics, args.metrics_port, settings.metrics_host)

    async def main() -> None:
        with database(settings) as engine:
            relay, publisher = build_relay(bootstrap, engine, batch_size=args.batch_size)
            try:
                stop = asyncio.Event()
                await until_signal(relay.run(
                    stop, until_idle=args.until_idle, start_publisher=True, metrics=metrics,
                    give_up_after=args.idle_timeout if args.until_idle else None), stop)
                print(f"published {relay.published} messages")
            finally:
                await publisher.stop()

    try:
        asyncio.run(main())
    except GaveUp as exc:
        raise gave_up_failure(exc) from exc
    except RelayAlreadyRunning as exc:
        raise CommandFailed(f"{exc}; is another `cardpay relay` running?") from exc
    except KeyboardInterrupt:
        return 130  # Ctrl-C before the signal handlers were installed
    return 0


def project_command(settings: Settings, args: argparse.Namespace) -> int:
    validate_loop_options(args)
    if args.group is not None:
        if not args.group.strip():
            raise UsageError("--group needs a name")
        settings = dataclasses.replace(settings, kafka_group=args.group.strip())
    if settings.kafka_group is not None and not settings.kafka_bootstrap:
        raise UsageError("a consumer group (--group, CARDPAY_KAFKA_GROUP) needs Kafka: set "
                         "CARDPAY_KAFKA_BOOTSTRAP")
    from cardpay.bootstrap import PAYMENTS, database
    from cardpay.bootstrap.project import (
        build_projector,
        run_projector,
        running_projector,
    )
    from cardpay.metrics.projector import ProjectorMetrics
    from cardpay.runtime.supervise import GaveUp
    from projector.errors import FeedChanged

    tune_gc()
    quiet_kafka_client()
    metrics = ProjectorMetrics(projector=PAYMENTS)
    serve_metrics(metrics, args.metrics_port, settings.metrics_host)

    async def main() -> None:
        with database(settings) as engine, running_projector(engine, PAYMENTS):
            projector, lag = build_projector(settings, engine, batch_size=args.batch_size)
            stop = asyncio.Event()
            await until_signal(run_projector(
                projector, stop, until_idle=args.until_idle, metrics=metrics, lag=lag,
                give_up_after=args.idle_timeout if args.until_idle else None), stop)
            print(f"applied {projector.applied} events (skipped {projector.redelivered} "
                  f"delivered again, {projector.fenced} applied by another process)")

    try:
        asyncio.run(main())
    except GaveUp as exc:
        raise gave_up_failure(exc) from exc
    except FeedChanged as exc:
        raise CommandFailed(
            f"{exc}; the stored positions of projector {PAYMENTS} cannot be used: run "
            f"`cardpay projections reset {PAYMENTS} --republish`, then `cardpay relay` and "
            f"`cardpay project` to rebuild the read model") from exc
    except KeyboardInterrupt:
        return 130
    return 0
