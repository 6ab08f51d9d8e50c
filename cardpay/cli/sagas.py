"""`cardpay sagas run|list`: the saga worker, and what each saga is doing.

`run` is a long-running feed process like `cardpay project` (same supervision, signals and
`--until-idle`); `list` reads the saga tables and changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace
from typing import Any

from cardpay.cli.chain import chain_options
from cardpay.cli.errors import CommandFailed, UsageError
from cardpay.cli.options import positive_int
from cardpay.cli.output import Column, add_format_options, emit
from cardpay.cli.services import (
    gave_up_failure,
    quiet_kafka_client,
    serve_metrics,
    until_signal,
    validate_loop_options,
)
from cardpay.settings import Settings

STATUSES = ("running", "compensating", "completed", "compensated", "stuck")
COLUMNS = (
    Column("kind", "kind"), Column("saga_id", "saga"), Column("status", "status"),
    Column("stage", "stage"), Column("waiting_for", "waiting for"),
    Column("effect_status", "effect"), Column("next_timer", "next timer"),
    Column("version", "version", "right"), Column("updated_at", "updated"),
)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "sagas", help="run the saga worker; list sagas and what they wait for",
        description="Sagas drive each card payment from approval to the last refund: they "
        "consume the event feed, fire their timers and ask for side effects (a reversal advice "
        "to the network, a spend or refund on chain) through the effects outbox.")
    actions = parser.add_subparsers(dest="sagas_command", required=True, metavar="ACTION")

    run = actions.add_parser(
        "run", parents=[chain_options()], help="consume the event feed, fire due timers, perform effects",
        description="Route the event feed (Kafka with CARDPAY_KAFKA_BOOTSTRAP, else the "
        "PostgreSQL event log) to the sagas, fire their due timers and perform the effects "
        "whose party is configured: the settlement desk, the network's advices "
        "(CARDPAY_NETWORK_ADVICE_URL), the spend relayer (CARDPAY_RELAYER_KEY) and the refund "
        "sender (CARDPAY_SETTLEMENT_KEY) on the chain of --preset. What is missing is said at "
        "start. "
        "Effects with no party stay pending and are listed by `cardpay sagas list`. Several "
        "workers may run: a saga is advanced by one at a time.")
    run.add_argument("--until-idle", action="store_true",
                     help="exit when there is nothing left to do")
    run.add_argument("--idle-timeout", type=float, default=30.0, metavar="SECONDS",
                     help="with --until-idle: give up (exit status 1) after failing for this "
                     "long (default 30)")
    run.add_argument("--batch-size", type=int, default=500,
                     help="feed messages per transaction (500)")
    run.add_argument("--metrics-port", type=int, metavar="PORT",
                     help="serve Prometheus /metrics on 127.0.0.1:PORT")
    run.set_defaults(run=run_command)

    listing = actions.add_parser(
        "list", help="sagas, most recently changed first",
        description="List sagas with their status, stage, the effect each waits for (and "
        "whether it is answered) and its next timer. `--status stuck` shows those an exception "
        "is open for (`cardpay exceptions list`).")
    listing.add_argument("--status", choices=STATUSES, help="only sagas in this status")
    listing.add_argument("--kind", metavar="KIND", help="only sagas of this kind "
                         "(card_payment)")
    listing.add_argument("--limit", type=positive_int, default=100, metavar="N",
                         help="at most N rows (default 100)")
    add_format_options(listing)
    listing.set_defaults(run=list_command)


def run_command(settings: Settings, args: argparse.Namespace) -> int:
    validate_loop_options(args)
    from cardpay.bootstrap import database
    from cardpay.bootstrap.sagas import build_worker, missing_parties, run_saga_worker
    from cardpay.cli.chain import chain_preset
    from cardpay.runtime.supervise import GaveUp
    from projector.errors import FeedChanged

    quiet_kafka_client()
    if args.rpc_url:
        settings = replace(settings, rpc_url=args.rpc_url)
    chain = None
    if settings.sends_spends or settings.sends_refunds:
        if not settings.rpc_url:
            raise UsageError("CARDPAY_RELAYER_KEY/CARDPAY_SETTLEMENT_KEY (or "
                             "CARDPAY_TX_SIGNER=impersonate) need a node: set CARDPAY_RPC_URL "
                             "or --rpc-url")
        chain = chain_preset(settings, args.preset, args.deployment)
    for line in missing_parties(settings, chain):
        print(f"cardpay sagas run: {line}", file=sys.stderr)

    metrics = None
    if args.metrics_port is not None:
        from cardpay.bootstrap.sagas import SAGA_EFFECTS
        from cardpay.metrics.sagas import SagaMetrics

        metrics = SagaMetrics()
        metrics.expect(SAGA_EFFECTS)
        serve_metrics(metrics, args.metrics_port, settings.metrics_host)

    async def main() -> None:
        with database(settings) as engine:
            worker = build_worker(settings, engine, chain=chain, batch_size=args.batch_size,
                                  metrics=metrics)
            stop = asyncio.Event()
            await until_signal(run_saga_worker(
                worker, stop, until_idle=args.until_idle, poll_timeout=settings.saga_poll_s,
                give_up_after=args.idle_timeout if args.until_idle else None), stop)
            t = worker.totals
            print(f"routed {t.events} feed messages, fired {t.timers} timers, "
                  f"answered {t.effects} effects")

    try:
        asyncio.run(main())
    except GaveUp as exc:
        raise gave_up_failure(exc) from exc
    except FeedChanged as exc:
        raise CommandFailed(f"{exc}; the saga worker's stored positions cannot be used on this "
                            "feed") from exc
    except KeyboardInterrupt:
        return 130
    return 0


def list_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.cli.db import reading
    from cardpay.postgres.queries import sagas

    with reading(settings) as (_, conn):
        rows = sagas(conn, status=args.status, kind=args.kind, limit=args.limit)
    records = [{"kind": r.kind, "saga_id": r.saga_id, "status": r.status, "stage": r.stage,
                "waiting_for": r.waiting_for, "effect_status": r.effect_status,
                "next_timer": r.next_timer, "version": r.version, "updated_at": r.updated_at}
               for r in rows]
    emit(args.format, COLUMNS, records, empty="(no sagas)")
    return 0
