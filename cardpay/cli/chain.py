"""`cardpay listen`, `cardpay backfill` and `cardpay deploy`: the chain side of the CLI.

Backfill and live indexing share one cursor (per listener name), so a backfill followed by
`listen` hands over with no gap and no duplicate: live indexing starts at the block after the
backfill's last one, whatever happened in between. Both refuse a node on another chain than the
preset's or than the one the listener indexed before (see `cardpay.bootstrap.listen`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cardpay.cli.errors import CommandFailed, UsageError
from cardpay.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from cardpay.metrics import ListenerMetrics
    from listener.poller import Listener, RangeResult
    from listener.presets import ChainConfig

# The database, listener and RPC modules are imported where a command runs, not here: every
# `cardpay` command imports this module to build its parser, and these cost ~0.5 s of start-up
# (most of `cardpay --help`'s), paid by each command that never indexes a block.

__all__ = ["backfill", "deploy", "listen", "register"]


def chain_options() -> argparse.ArgumentParser:
    """`--preset`, `--deployment`, `--rpc-url`: which chain and node (a parent parser)."""
    chain_args = argparse.ArgumentParser(add_help=False)
    chain_args.add_argument("--preset", choices=["gnosis", "local"], default="local",
                            help="addresses: gnosis (mainnet Gnosis Pay) or local (default; "
                            "read from --deployment)")
    chain_args.add_argument("--deployment", type=Path, default=None,
                            help="local preset file written by `cardpay deploy` "
                            "(default $CARDPAY_DATA_DIR/local-deployment.json)")
    chain_args.add_argument("--rpc-url", default=None, help="node URL (default CARDPAY_RPC_URL)")
    return chain_args


def register(sub: Any) -> None:
    chain_args = chain_options()
    backfill_parser = sub.add_parser(
        "backfill", parents=[chain_args],
        help="index a block range with a progress bar (blocks, logs/s, ETA), then stop",
        description="Index from --from-block (or the listener's cursor) to --to-block (default: "
        "the confirmed head at start). Shares the cursor with `cardpay listen`, so live "
        "indexing continues exactly where a backfill ended.",
    )
    backfill_parser.add_argument("--from-block", type=int, default=None,
                                 help="first block (required when the listener has no cursor)")
    backfill_parser.add_argument("--to-block", type=int, default=None,
                                 help="last block (default: the confirmed head at start; a block "
                                 "past it stops at the head)")
    backfill_parser.add_argument("--match-refunds-from", type=int, default=None,
                                 metavar="BLOCK", help="as for `cardpay listen`")
    backfill_parser.set_defaults(run=_run)
    listen_parser = sub.add_parser("listen", parents=[chain_args],
                                   help="index the chain as it grows (Ctrl-C to stop)")
    listen_parser.add_argument("--from-block", type=int, default=None,
                               help="first block when the listener has no cursor yet")
    listen_parser.add_argument("--match-refunds-from", type=int, default=None,
                               metavar="BLOCK",
                               help="from BLOCK on, match transfers out of the settlement "
                               "account with the refunds cardpay sent (the local preset always "
                               "does; gnosis, in observer mode, does not unless told: on a fork "
                               "cardpay sends refunds itself after the fork block)")
    listen_parser.add_argument("--metrics-port", type=int, default=None,
                               help="serve Prometheus /metrics on PORT of "
                               "CARDPAY_METRICS_HOST (default 127.0.0.1)")
    listen_parser.add_argument("--poll-interval", type=float, default=2.0,
                               help="seconds (default 2)")
    listen_parser.set_defaults(run=_run)
    deploy_parser = sub.add_parser("deploy", help="deploy the local contract replicas on a node "
                                   "and write the local preset file")
    deploy_parser.add_argument("--rpc-url", default=None, help="node URL (default CARDPAY_RPC_URL)")
    deploy_parser.add_argument("--cardholders", type=int, default=5,
                               help="funded cardholder accounts to create (default 5)")
    deploy_parser.add_argument("--out", type=Path, default=None,
                               help="preset file (default $CARDPAY_DATA_DIR/local-deployment.json)")
    deploy_parser.add_argument("--no-cards", action="store_true",
                               help="do not register the cardholders' cards (no database needed)")
    deploy_parser.set_defaults(run=_run)


def validate(args: argparse.Namespace) -> None:
    """Option values no command can use, refused before anything starts."""
    for option in ("from_block", "to_block"):
        value = getattr(args, option, None)
        if value is not None and value < 0:
            raise UsageError(f"--{option.replace('_', '-')} must be >= 0, got {value}")
    cardholders = getattr(args, "cardholders", None)
    if cardholders is not None and cardholders < 1:
        raise UsageError(f"--cardholders must be >= 1, got {cardholders}")
    first, last = getattr(args, "from_block", None), getattr(args, "to_block", None)
    if first is not None and last is not None and first > last:
        raise UsageError(f"--from-block {first} is after --to-block {last}")
    interval = getattr(args, "poll_interval", None)
    if interval is not None and not interval > 0:
        raise UsageError(f"--poll-interval must be > 0 seconds, got {interval}")
    port = getattr(args, "metrics_port", None)
    if port is not None and not 1 <= port <= 65535:
        raise UsageError(f"--metrics-port must be a TCP port (1-65535), got {port}")


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.runtime import tune_gc

    validate(args)
    if args.command != "deploy":
        tune_gc()
    if args.command == "backfill":
        return backfill(
            settings, preset=args.preset, deployment=args.deployment,
            rpc_url=args.rpc_url, from_block=args.from_block, to_block=args.to_block,
            show_progress=sys.stderr.isatty() or bool(os.environ.get("CARDPAY_PROGRESS")),
            match_refunds_from=args.match_refunds_from)
    if args.command == "listen":
        return listen(
            settings, preset=args.preset, deployment=args.deployment,
            rpc_url=args.rpc_url, from_block=args.from_block,
            metrics_port=args.metrics_port, poll_interval=args.poll_interval,
            match_refunds_from=args.match_refunds_from)
    return deploy(settings, rpc_url=args.rpc_url, cardholders=args.cardholders, out=args.out,
                  cards=not args.no_cards)


def deployment_file(settings: Settings, given: Path | None) -> Path:
    return given or settings.data_dir / "local-deployment.json"


def chain_preset(settings: Settings, name: str, deployment: Path | None, *,
                 match_refunds_from: int | None = None) -> ChainConfig:
    """The preset; `match_refunds_from` turns refund matching on from that block (the `gnosis`
    preset on a fork, where cardpay sends the refunds after the fork block)."""
    from listener.presets import load_preset

    try:
        config = load_preset(name, deployment_file(settings, deployment))
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise UsageError(str(exc)) from None
    if match_refunds_from is None:
        return config
    return dataclasses.replace(config, match_refunds=True,
                               refunds_matched_from=match_refunds_from)


def _rpc_url(settings: Settings, given: str | None) -> str:
    url = given or settings.rpc_url
    if not url:
        raise UsageError("no node to read from: set CARDPAY_RPC_URL or pass --rpc-url")
    return url


def _start_block(listener: Listener, from_block: int | None, name: str) -> int:
    cursor = listener.cursor()
    if cursor is None:
        if from_block is None:
            raise UsageError(
                f"listener {name!r} has no cursor yet: give --from-block (the first block to index)")
        return from_block
    if from_block is not None and from_block > cursor.block_number + 1:
        raise UsageError(
            f"listener {name!r} is at block {cursor.block_number}; starting at {from_block} would "
            f"skip blocks {cursor.block_number + 1}..{from_block - 1}")
    return cursor.block_number + 1


@contextmanager
def _indexing(settings: Settings, engine: Engine, listener: Listener, config: ChainConfig,
              url: str, from_block: int | None) -> Iterator[None]:
    """Check the node is on the listener's chain; turn what stops indexing into one line."""
    from cardpay.bootstrap.listen import NodeUnreachable, WrongChain, check_chain, fork_floor
    from cardpay.postgres.chain_identity import PostgresChainIdentities
    from listener.errors import ReorgTooDeep
    from listener.rpc import HttpJsonRpc

    # The first block a reset goes back to. A cursor without a stored identity predates identities
    # (migration 0005): what it indexed may start anywhere, so a reset must start at 0.
    first = (from_block or 0) if listener.cursor() is None else 0
    probe = HttpJsonRpc(url, retries=1, timeout=5.0)
    try:
        check_chain(probe, url, config, PostgresChainIdentities(engine), settings.listener_name,
                    first_block=first)
        yield
    except NodeUnreachable as exc:
        raise CommandFailed(str(exc)) from None
    except WrongChain as exc:
        raise CommandFailed(str(exc)) from None
    except ReorgTooDeep as exc:
        try:  # the node restarted as another chain while listening: say that, not "reorg"
            check_chain(probe, url, config, PostgresChainIdentities(engine),
                        settings.listener_name, first_block=0)
        except (NodeUnreachable, WrongChain) as changed:
            raise CommandFailed(str(changed)) from None
        below = exc.oldest_kept if exc.oldest_kept is not None else exc.block
        start = fork_floor(engine, probe, config.chain_id, settings.listener_name, below)
        name = settings.listener_name
        raise CommandFailed(
            f"block {exc.block} was reorged out deeper than the kept window; run "
            f"`cardpay listener reset {name} --from-block {start}` then "
            f"`cardpay backfill --from-block {start}`") from None
    finally:
        probe.close()


def backfill(settings: Settings, *, preset: str, deployment: Path | None, rpc_url: str | None,
             from_block: int | None, to_block: int | None, show_progress: bool,
             match_refunds_from: int | None = None) -> int:
    from cardpay.bootstrap import database
    from cardpay.bootstrap.listen import build_listener
    from cardpay.cli.progress import Progress
    from cardpay.metrics import ListenerMetrics

    config = chain_preset(settings, preset, deployment, match_refunds_from=match_refunds_from)
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
        with _indexing(settings, engine, listener, config, url, from_block):
            first = _start_block(listener, from_block, settings.listener_name)
            head = listener.head() - settings.confirmations
            last = head if to_block is None else min(to_block, head)
            if last < first:
                asked = "" if to_block is None else f" (asked up to {to_block})"
                print(f"nothing to do: listener {settings.listener_name!r} is at block "
                      f"{first - 1}{asked}; the confirmed head is {head}", file=sys.stderr)
                return 0
            span[:] = [first, last]
            ranges = listener.run_until_caught_up(until_block=last)
        bar.close()
        done = listener.cursor()
        end = done.block_number if done is not None else last
        note = "" if to_block is None or to_block <= end else \
            f" (asked up to {to_block}; the confirmed head is {head})"
        print(f"backfilled blocks {first}..{end}{note} in {ranges} ranges: {logs} logs in "
              f"{time.monotonic() - started:.1f}s")
    return 0


def listen(settings: Settings, *, preset: str, deployment: Path | None, rpc_url: str | None,
           from_block: int | None, metrics_port: int | None, poll_interval: float,
           match_refunds_from: int | None = None) -> int:
    from cardpay.bootstrap import database
    from cardpay.bootstrap.listen import build_listener
    from cardpay.metrics import ListenerMetrics

    config = chain_preset(settings, preset, deployment, match_refunds_from=match_refunds_from)
    url = _rpc_url(settings, rpc_url)
    metrics = ListenerMetrics(listener=settings.listener_name)
    with database(settings) as engine:
        listener = build_listener(settings, engine, config, rpc_url=url,
                                  start_block=from_block or 0, metrics=metrics)
        with _indexing(settings, engine, listener, config, url, from_block):
            _start_block(listener, from_block, settings.listener_name)
            metrics.starting(listener.cursor(), _head_or_none(listener.head))
            if metrics_port is not None:  # served once the gauges hold the stored cursor
                _serve(metrics, metrics_port, settings.metrics_host)
            asyncio.run(_until_signal(listener, metrics, poll_interval))
    return 0


async def _until_signal(listener: Listener, metrics: ListenerMetrics,
                        poll_interval: float) -> None:
    from cardpay.bootstrap.listen import run_listener

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_listener(listener, stop=stop, poll_interval=poll_interval, metrics=metrics)


def _serve(metrics: ListenerMetrics, port: int, host: str) -> None:
    try:
        metrics.serve(port, host)
    except OSError as exc:
        raise CommandFailed(f"cannot serve metrics on {host}:{port}: "
                            f"{exc.strerror or exc}") from None


def _head_or_none(head: Callable[[], int]) -> int | None:
    try:
        return head()
    except Exception:  # the first range will retry; the gauges just start without a head
        return None


def deploy(settings: Settings, *, rpc_url: str | None, cardholders: int, out: Path | None,
           cards: bool = True) -> int:
    """Deploy the local replicas on a node, write the `local` preset file and register one EURe
    card per cardholder (ids local-0000, local-0001, ...)."""
    from cardpay.bootstrap.listen import NodeUnreachable, node_identity
    from cardpay.devstack.local_chain import LocalChain, LocalChainError
    from listener.rpc import HttpJsonRpc

    url = _rpc_url(settings, rpc_url)
    probe = HttpJsonRpc(url, retries=1, timeout=5.0)
    try:
        node_identity(probe, url)
    except NodeUnreachable as exc:
        raise CommandFailed(str(exc)) from None
    finally:
        probe.close()
    try:
        deployment = LocalChain(url).deploy(cardholders)
    except LocalChainError as exc:
        raise CommandFailed(f"deploying on {url} failed: {exc}") from None
    path = deployment_file(settings, out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(deployment.to_dict(), indent=2) + "\n")
    print(f"deployed at block {deployment.deployed_at_block}; local preset written to {path}")
    if cards:
        _register_local_cards(settings, url, deployment.to_dict())
    return 0


def _register_local_cards(settings: Settings, url: str, deployment: dict[str, Any]) -> None:
    """One card per cardholder Safe, in EURe (a Gnosis Pay Safe spends one token), with its
    Roles module so the daily allowance is followed; cards already registered are kept."""
    from cardpay.bootstrap import database
    from cardpay.bootstrap.cards import local_cards, register_cards
    from cardpay.handlers.cards import RegistrationRaced
    from cardpay.onchain.readings import ChainReadFailed
    from listener.presets import local_config

    config = local_config(deployment)
    symbol, wanted = local_cards(deployment)
    with database(settings) as engine:
        try:
            done = register_cards(settings, engine, config, url, wanted, skip_existing=True)
        except (ChainReadFailed, RegistrationRaced) as exc:
            raise CommandFailed(f"registering the local cards failed: {exc}") from None
    fresh = [d for d in done if d.reading is not None]
    kept = len(done) - len(fresh)
    print(f"registered {len(fresh)} {symbol} cards (local-0000..local-{len(done) - 1:04d})"
          + (f"; {kept} were already registered" if kept else ""))
