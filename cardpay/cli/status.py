"""`cardpay status`: where every consumer stands, in one screen (or one JSON object).

Per listener: cursor block, and the chain head and lag when a node is configured and answers;
per feed consumer: stored positions (and lag behind the Postgres event log); the outbox backlog
and the age of its oldest unpublished row; quarantined rows by source and reason.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cardpay.cli.output import Column, add_format_options, console, print_json, print_table
from cardpay.settings import Settings

HEAD_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Head:
    block: int | None
    chain_id: int | None
    error: str | None
    """Why the head is unknown: no RPC URL configured, or the node's answer."""


def register(sub: Any) -> None:
    status = sub.add_parser(
        "status", help="show listener cursors, consumer positions, outbox backlog and quarantine",
        description="Read-only overview of the database: per listener its cursor block and, when "
        "CARDPAY_RPC_URL (or --rpc-url) answers, the chain head and the lag behind it; per feed "
        "consumer its positions (and lag behind the Postgres event log); the outbox backlog and "
        "the age of its oldest unpublished row; quarantined rows by source and reason.",
    )
    status.add_argument("--rpc-url", default=None,
                        help="node to read the chain head from (default CARDPAY_RPC_URL; "
                        "without one the head and lag are 'unknown')")
    add_format_options(status, with_csv=False)
    status.set_defaults(run=status_command)


def chain_head(rpc_url: str | None) -> Head:
    if not rpc_url:
        return Head(None, None, "no RPC URL (set CARDPAY_RPC_URL)")
    from listener.rpc import HttpJsonRpc

    rpc = HttpJsonRpc(rpc_url, timeout=HEAD_TIMEOUT_SECONDS, retries=0)
    try:
        return Head(int(rpc.call("eth_blockNumber", []), 16),
                    int(rpc.call("eth_chainId", []), 16), None)
    except Exception as exc:  # any failure only makes the head unknown; status still reports
        return Head(None, None, f"node did not answer: {' '.join(str(exc).split())[:160]}")
    finally:
        rpc.close()


def _age_seconds(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else max(0.0, (now - then).total_seconds())


def _age_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def collect(settings: Settings, rpc_url: str | None) -> dict[str, Any]:
    from cardpay.cli.db import psql_url, reading
    from cardpay.postgres import queries as q

    head = chain_head(rpc_url or settings.rpc_url)
    with reading(settings) as (engine, conn):
        now = q.database_now(conn)
        listeners = q.listeners(conn)
        consumers = q.consumers(conn)
        event_count, last_position = q.event_log_size(conn)
        backlog = q.outbox_backlog(conn)
        quarantined = q.quarantine_counts(conn)
        database = psql_url(engine.url)
    return {
        "database": database,
        "chain": {"head": head.block, "chain_id": head.chain_id, "unknown_because": head.error},
        "listeners": [
            {"name": li.name, "chain_id": li.chain_id, "cursor_block": li.block_number,
             "head": head.block,
             "lag_blocks": None if head.block is None else max(0, head.block - li.block_number),
             "updated_at": li.updated_at}
            for li in listeners
        ],
        "consumers": [
            {"consumer": c.consumer, "source": c.source, "position": c.position, "lag": c.lag,
             "updated_at": c.updated_at}
            for c in consumers
        ],
        "event_log": {"events": event_count, "last_position": last_position},
        "outbox": {"unpublished": backlog.unpublished,
                   "oldest_unpublished_at": backlog.oldest_created_at,
                   "oldest_unpublished_age_seconds": _age_seconds(now, backlog.oldest_created_at)},
        "quarantine": [{"source": r.source, "reason": r.reason, "count": r.count}
                       for r in quarantined],
    }


def _unknown(value: Any) -> str:
    return "unknown" if value is None else str(value)


def print_status(report: dict[str, Any]) -> None:
    out = console()
    out.print(f"database: {report['database']}", markup=False, highlight=False)
    chain = report["chain"]
    if chain["head"] is None:
        out.print(f"chain head: unknown ({chain['unknown_because']})", markup=False)
    else:
        out.print(f"chain head: {chain['head']} (chain id {chain['chain_id']})", markup=False)
    out.print()
    print_table([
        Column("name", "listener"),
        Column("chain_id", "chain id", render=lambda r: _unknown(r["chain_id"])),
        Column("cursor_block", "cursor block", "right"),
        Column("head", "head", "right", render=lambda r: _unknown(r["head"])),
        Column("lag_blocks", "lag (blocks)", "right", render=lambda r: _unknown(r["lag_blocks"])),
        Column("updated_at", "updated", render=lambda r: f"{r['updated_at']:%Y-%m-%d %H:%M:%S}"),
    ], report["listeners"], title="Listeners", empty="(no listener has a cursor yet)")
    out.print()
    print_table([
        Column("consumer", "consumer"),
        Column("source", "source"),
        Column("position", "next offset", "right"),
        Column("lag", "lag", "right",
               render=lambda r: "unknown (Kafka)" if r["lag"] is None else str(r["lag"])),
        Column("updated_at", "updated", render=lambda r: f"{r['updated_at']:%Y-%m-%d %H:%M:%S}"),
    ], report["consumers"], title="Feed consumers", empty="(no consumer has stored a position)")
    out.print()
    log, box = report["event_log"], report["outbox"]
    out.print(f"Event log: {log['events']} events (last position {_unknown(log['last_position'])})",
              markup=False)
    out.print(f"Outbox: {box['unpublished']} unpublished"
              + (f", oldest {_age_text(box['oldest_unpublished_age_seconds'])} old"
                 if box["unpublished"] else ""), markup=False)
    out.print()
    print_table([
        Column("source", "source"),
        Column("reason", "reason"),
        Column("count", "rows", "right"),
    ], report["quarantine"], title="Quarantine", empty="(empty)")


def status_command(settings: Settings, args: argparse.Namespace) -> int:
    report = collect(settings, args.rpc_url)
    if args.format == "json":
        print_json(report)
    else:
        print_status(report)
    return 0
