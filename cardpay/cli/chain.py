"""`cardpay listen`, `cardpay backfill` and `cardpay deploy`: the chain side of the CLI.

Backfill and live indexing share one cursor (per listener name), so a backfill followed by
`listen` hands over with no gap and no duplicate: live indexing starts at the block after the
backfill's last one, whatever happened in between.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from cardpay.bootstrap import database
from cardpay.cli.progress import Progress
from cardpay.handlers.chain import PostgresChainSink, make_uow_factory
from cardpay.metrics import ListenerMetrics
from cardpay.settings import Settings
from listener.poller import Listener, RangeResult
from listener.presets import ChainConfig, load_preset
from listener.rpc import HttpJsonRpc


class ChainCommandError(RuntimeError):
    """A chain command cannot start as asked (missing RPC URL, a gap it would leave...)."""


def register(sub: Any) -> None:
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
    backfill.set_defaults(run=_run)
    listen = sub.add_parser("listen", parents=[chain_args],
                            help="index the chain as it grows (Ctrl-C to stop)")
    listen.add_argument("--from-block", type=int, default=None,
                        help="first block when the listener has no cursor yet")
    listen.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus /metrics on 127.0.0.1:PORT")
    listen.add_argument("--poll-interval", type=float, default=2.0, help="seconds (default 2)")
    listen.set_defaults(run=_run)
    deploy = sub.add_parser("deploy", help="deploy the local contract replicas on a node and "
                            "write the local preset file")
    deploy.add_argument("--rpc-url", default=None, help="node URL (default CARDPAY_RPC_URL)")
    deploy.add_argument("--cardholders", type=int, default=5)
    deploy.add_argument("--out", type=Path, default=None,
                        help="preset file (default $CARDPAY_DATA_DIR/local-deployment.json)")
    deploy.set_defaults(run=_run)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.runtime import tune_gc

    if args.command != "deploy":
        tune_gc()
    try:
        if args.command == "backfill":
            return backfill(
                settings, preset=args.preset, deployment=args.deployment,
                rpc_url=args.rpc_url, from_block=args.from_block, to_block=args.to_block,
                show_progress=sys.stderr.isatty() or bool(os.environ.get("CARDPAY_PROGRESS")))
        if args.command == "listen":
            return listen(
                settings, preset=args.preset, deployment=args.deployment,
                rpc_url=args.rpc_url, from_block=args.from_block,
                metrics_port=args.metrics_port, poll_interval=args.poll_interval)
        return deploy(settings, rpc_url=args.rpc_url, cardholders=args.cardholders,
                      out=args.out)
    except (ChainCommandError, FileNotFoundError) as exc:
        print(f"cardpay {args.command}: {exc}", file=sys.stderr)
        return 2


def deployment_file(settings: Settings, given: Path | None) -> Path:
    return given or settings.data_dir / "local-deployment.json"


def build_listener(
    settings: Settings,
    engine: Engine,
    config: ChainConfig,
    *,
    rpc_url: str,
    start_block: int,
    metrics: ListenerMetrics,
    observers: Sequence[Callable[[RangeResult], None]] = (),
) -> Listener:
    rpc = HttpJsonRpc(rpc_url, observer=metrics)
    sink = PostgresChainSink(make_uow_factory(engine, settings.outbox_topic),
                             chain_id=config.chain_id, on_quarantine=metrics.log_quarantined)

    def observe(result: RangeResult) -> None:
        metrics.observe_range(result)
        for observer in observers:
            observer(result)

    return Listener(settings.listener_name, rpc, sink, config, start_block=start_block,
                    confirmations=settings.confirmations, max_range=settings.max_block_range,
                    initial_range=min(50, settings.max_block_range), on_range=observe)


def _check_start(listener: Listener, from_block: int | None, name: str) -> int:
    cursor = listener.cursor()
    if cursor is None:
        if from_block is None:
            raise ChainCommandError(
                f"listener {name!r} has no cursor yet: give --from-block (the first block to index)")
        return from_block
    if from_block is not None and from_block > cursor.block_number + 1:
        raise ChainCommandError(
            f"listener {name!r} is at block {cursor.block_number}; starting at {from_block} would "
            f"skip blocks {cursor.block_number + 1}..{from_block - 1}")
    return cursor.block_number + 1


def _rpc_url(settings: Settings, given: str | None) -> str:
    url = given or settings.rpc_url
    if not url:
        raise ChainCommandError("no node to read from: set CARDPAY_RPC_URL or pass --rpc-url")
    return url


def backfill(settings: Settings, *, preset: str, deployment: Path | None, rpc_url: str | None,
             from_block: int | None, to_block: int | None, show_progress: bool) -> int:
    config = load_preset(preset, deployment_file(settings, deployment))
    url = _rpc_url(settings, rpc_url)
    metrics = ListenerMetrics(listener=settings.listener_name)
    bar = Progress("backfill", unit="blocks", enabled=show_progress)
    started, logs, span = time.monotonic(), 0, [0, 0]

    def progress(result: RangeResult) -> None:
        nonlocal logs
        if result.reorg_depth:
            return
        logs += result.logs
        rate = logs / max(1e-9, time.monotonic() - started)
        bar.update(result.to_block - span[0] + 1, span[1] - span[0] + 1,
                   extra=f"{logs:,} logs ({rate:,.0f} logs/s)")

    with database(settings) as engine:
        listener = build_listener(settings, engine, config, rpc_url=url,
                                  start_block=from_block or 0, metrics=metrics,
                                  observers=[progress])
        first = _check_start(listener, from_block, settings.listener_name)
        last = to_block if to_block is not None else listener.head() - settings.confirmations
        if last < first:
            print(f"nothing to do: already at block {first - 1}", file=sys.stderr)
            return 0
        span[:] = [first, last]
        ranges = listener.run_until_caught_up(until_block=last)
        bar.close()
        print(f"backfilled blocks {first}..{last} in {ranges} ranges: {logs} logs in "
              f"{time.monotonic() - started:.1f}s")
    return 0


def listen(settings: Settings, *, preset: str, deployment: Path | None, rpc_url: str | None,
           from_block: int | None, metrics_port: int | None, poll_interval: float) -> int:
    config = load_preset(preset, deployment_file(settings, deployment))
    url = _rpc_url(settings, rpc_url)
    metrics = ListenerMetrics(listener=settings.listener_name)
    if metrics_port is not None:
        metrics.serve(metrics_port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with database(settings) as engine:
        listener = build_listener(settings, engine, config, rpc_url=url,
                                  start_block=from_block or 0, metrics=metrics)
        _check_start(listener, from_block, settings.listener_name)
        listener.run_forever(stop.is_set, poll_interval=poll_interval,
                             on_error=metrics.range_failed, sleep=stop.wait)
    return 0


def deploy(settings: Settings, *, rpc_url: str | None, cardholders: int, out: Path | None) -> int:
    """Deploy the local replicas on a node and write the `local` preset file."""
    from cardpay.devstack.local_chain import LocalChain

    url = _rpc_url(settings, rpc_url)
    deployment = LocalChain(url).deploy(cardholders)
    path = deployment_file(settings, out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(deployment.to_dict(), indent=2) + "\n")
    print(f"deployed at block {deployment.deployed_at_block}; local preset written to {path}")
    return 0
