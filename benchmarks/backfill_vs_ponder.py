"""Backfill side by side, fairly: cardpay vs the best-configured Ponder 0.16.10 (issue 11).

    python -m benchmarks.backfill_vs_ponder --shape sparse            # 50 events/block x 2,000
    python -m benchmarks.backfill_vs_ponder --shape dense             # 1,000 events/block x 100
    python -m benchmarks.backfill_vs_ponder --shape sparse --proxy    # + RPC calls per method
    python -m benchmarks.backfill_vs_ponder --shape sparse --latency-ms 20   # a remote node

One Anvil node, one workload of card spends (a Spend log from the spender module + the token
Transfer into the settlement account), 100,000 card events by default. Set up so neither side is
handicapped:
- the same database: one embedded PostgreSQL server (cardpay.devstack.embedded_postgres), started
  before either clock, a database of its own for each indexer (Ponder is not given PGlite);
- the same finality: FINALITY_MARGIN empty blocks are mined after the workload, more than Ponder's
  30-block finality for chain 31337, so every card event is final for both (cardpay runs at 0
  confirmations, Ponder indexes everything in its historical sync);
- Ponder's client-side RPC rate limiter (20 requests/s per URL at start, +5 % every ~5 s) is
  sidestepped by listing the node's URL ``--rpc-copies`` times (8 by default): one limiter per copy;
- with ``--proxy`` (implied by ``--latency-ms``) each indexer talks to the node through its own
  loopback proxy (benchmarks/rpc_proxy.py) that counts calls per method and adds the latency to
  every HTTP request.
Each clock runs from the indexer's start until every row is visible with the exact per-token
totals: cardpay = migrations, then `cardpay backfill` (listener -> event store) and `cardpay
project` (event log -> payments read model) as two processes, as in production; Ponder = `ponder
start` (build, its own schema set-up, indexing). Prints both clocks, the ratio, the RPC counts,
the load and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import func, make_url, select

from benchmarks.machine import describe
from benchmarks.ponder_bench import machine_info, run_ponder
from benchmarks.rpc_proxy import RpcProxy, rpc_proxy
from benchmarks.workload import Workload, generate
from cardpay.devstack.anvil import AnvilNode
from cardpay.devstack.embedded_postgres import EmbeddedPostgres
from cardpay.postgres.engine import make_engine, upgrade
from cardpay.postgres.schema import rm_payments

SHAPES = {"sparse": 50, "dense": 1_000}
"""Card events per block (one SpendBatcher transaction per block) of each workload shape."""
FINALITY_MARGIN = 40
"""Empty blocks mined after the workload: more than Ponder's 30-block finality on chain 31337."""
DEFAULT_RPC_COPIES = 8
GAS_LIMIT = 2_000_000_000
"""Anvil's block gas limit: a dense block (1,000 spends in one transaction) is over the default."""


@dataclass(frozen=True)
class CardpayResult:
    seconds: float
    rows: int
    backfill_line: str = ""

    @property
    def events_per_second(self) -> float:
        return self.rows / self.seconds


def _spawn(env: dict[str, str], *args: str, log: Path,
           profile: Path | None = None) -> subprocess.Popen[bytes]:
    head = [sys.executable] + ([] if profile is None else ["-m", "cProfile", "-o", str(profile)])
    return subprocess.Popen([*head, "-m", "cardpay.cli.main", *args], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def run_cardpay(workload: Workload, work_dir: Path, database_url: str, rpc_url: str, *,
                to_block: int | None = None, timeout: float = 1800,
                profile_dir: Path | None = None) -> CardpayResult:
    """Migrate the (empty) database at ``database_url``, run `cardpay project` and `cardpay
    backfill` against the node at ``rpc_url`` until the payments read model holds every card
    event with the exact totals. With ``profile_dir``, both processes run under cProfile and
    stop with SIGINT so their profiles are written there (backfill.prof, project.prof)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    deployment = work_dir / "local-deployment.json"
    deployment.write_text(json.dumps(workload.deployment.to_dict()))
    env = {**os.environ, "CARDPAY_DATABASE_URL": database_url, "CARDPAY_CONFIRMATIONS": "0",
           "CARDPAY_DATA_DIR": str(work_dir), "CARDPAY_MAX_BLOCK_RANGE": "2000"}
    started = time.perf_counter()
    engine = make_engine(database_url)
    backfill_log = work_dir / "backfill.log"
    with ExitStack() as stack:
        stack.callback(engine.dispose)
        upgrade(engine)

        def prof(name: str) -> Path | None:
            return None if profile_dir is None else profile_dir / f"{name}.prof"

        project = _spawn(env, "project", "--batch-size", "5000", log=work_dir / "project.log",
                         profile=prof("project"))
        stack.callback(_stop, project, profile_dir is not None)
        backfill = _spawn(env, "backfill", "--preset", "local", "--deployment", str(deployment),
                          "--rpc-url", rpc_url, "--from-block", str(workload.start_block),
                          "--to-block", str(to_block or workload.head_block),
                          log=backfill_log, profile=prof("backfill"))
        stack.callback(_stop, backfill, profile_dir is not None)
        expected = {s: (t.count, t.amount) for s, t in workload.per_token.items() if t.count}
        while True:
            with engine.connect() as conn:
                rows = dict((cur, (int(n), int(total))) for cur, n, total in conn.execute(
                    select(rm_payments.c.currency, func.count(), func.sum(rm_payments.c.spent))
                    .group_by(rm_payments.c.currency)))
            if rows == expected:
                seconds = time.perf_counter() - started
                break
            for proc in (project, backfill):
                if proc.poll() not in (None, 0):
                    raise RuntimeError(f"cardpay process failed; see {work_dir}")
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"cardpay did not finish in {timeout:.0f}s: {rows}")
            time.sleep(0.1)
        backfill.wait(timeout=60)
    lines = backfill_log.read_text(errors="replace").strip().splitlines()
    done = next((line for line in reversed(lines) if line.startswith("backfilled")), "")
    return CardpayResult(seconds, workload.events, done)


def _stop(proc: subprocess.Popen[bytes], interrupt: bool = False) -> None:
    """SIGTERM (SIGINT first when profiling, so cProfile writes its file) the process group."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT if interrupt else signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _create_database(server_url: str, name: str) -> str:
    """A fresh database ``name`` on the server; its URL (same user and socket)."""
    url = make_url(server_url)
    with psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False),
                         autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)


def _load() -> float:
    return os.getloadavg()[0]


def _counts(proxy: RpcProxy | None) -> dict[str, int] | None:
    return None if proxy is None else dict(sorted(proxy.counts().items()))


def _fmt_counts(counts: dict[str, int] | None) -> str:
    if counts is None:
        return "(not counted: run with --proxy)"
    total = sum(n for m, n in counts.items() if m != "batch" and not m.startswith("("))
    parts = ", ".join(f"{m} {n:,}" for m, n in counts.items())
    return f"{total:,} calls: {parts}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="sparse",
                        help="sparse: 50 card events per block; dense: 1,000 per block")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rpc-copies", type=int, default=DEFAULT_RPC_COPIES,
                        help="list the node's URL this many times in Ponder's config "
                             "(one rate limiter each)")
    parser.add_argument("--proxy", action="store_true",
                        help="count RPC calls per method through a loopback proxy")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="latency added to every RPC request by the proxy (implies --proxy)")
    parser.add_argument("--only", choices=("cardpay", "ponder"), default=None)
    parser.add_argument("--profile-dir", type=Path, default=None,
                        help="run cardpay's processes under cProfile, profiles written here")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    use_proxy = args.proxy or args.latency_ms > 0
    per_block = SHAPES[args.shape]
    result: dict[str, Any] = {"shape": args.shape, "events_per_block": per_block,
                              "rpc_copies": args.rpc_copies, "latency_ms": args.latency_ms,
                              "machine": machine_info()}
    print(describe())
    anvil = AnvilNode(extra_args=("--gas-limit", str(GAS_LIMIT)))
    with tempfile.TemporaryDirectory(prefix="cardpay-fair-") as tmp, anvil as node, \
            ExitStack() as stack:
        work = Path(tmp)
        workload = generate(node.rpc_url, args.events, args.seed, events_per_tx=per_block)
        node.rpc("anvil_mine", [hex(FINALITY_MARGIN)])
        head = int(node.rpc("eth_blockNumber"), 16)
        print(f"workload: {workload.events:,} card events, {per_block:,} per block, in "
              f"{workload.blocks:,} blocks ({workload.first_block}..{workload.last_block}), "
              f"{FINALITY_MARGIN} empty blocks after (head {head}: every event final for both); "
              f"generated in {workload.seconds:.1f}s")
        pg = stack.enter_context(EmbeddedPostgres(work / "pgdata"))
        print("database: one embedded PostgreSQL server, one database per indexer")
        if use_proxy:
            print(f"rpc: each indexer through its own loopback proxy, "
                  f"{args.latency_ms:g} ms added per request")
        cardpay_rpc = stack.enter_context(rpc_proxy(node.rpc_url, args.latency_ms)) \
            if use_proxy else None
        ponder_rpc = stack.enter_context(rpc_proxy(node.rpc_url, args.latency_ms)) \
            if use_proxy else None
        ours = ponder = None
        if args.only in (None, "cardpay"):
            load = _load()
            ours = run_cardpay(workload, work / "cardpay", _create_database(pg.url, "cardpay"),
                               cardpay_rpc.url if cardpay_rpc else node.rpc_url, to_block=head,
                               profile_dir=args.profile_dir)
            result["cardpay"] = {"seconds": round(ours.seconds, 2),
                                 "events_per_second": round(ours.events_per_second),
                                 "load_at_start": load, "load_at_end": _load(),
                                 "rpc": _counts(cardpay_rpc), "backfill": ours.backfill_line}
            print(f"cardpay: {ours.rows:,} events in {ours.seconds:.1f}s = "
                  f"{ours.events_per_second:,.0f} events/s (load {load:.2f} -> {_load():.2f})")
            print(f"  {ours.backfill_line}")
            print(f"  rpc: {_fmt_counts(_counts(cardpay_rpc))}")
        if args.only in (None, "ponder"):
            load = _load()
            ponder = run_ponder(ponder_rpc.url if ponder_rpc else node.rpc_url, workload,
                                work / "ponder", database_url=_create_database(pg.url, "ponder"),
                                rpc_copies=args.rpc_copies)
            result["ponder"] = {"seconds": round(ponder.seconds, 2),
                                "events_per_second": round(ponder.events_per_second),
                                "ready_seconds": ponder.ready_seconds,
                                "load_at_start": load, "load_at_end": _load(),
                                "rpc": _counts(ponder_rpc)}
            print(f"ponder:  {ponder.rows:,} events in {ponder.seconds:.1f}s = "
                  f"{ponder.events_per_second:,.0f} events/s (PostgreSQL, the RPC URL listed "
                  f"{args.rpc_copies}x to sidestep its 20 requests/s-per-URL limiter; "
                  f"load {load:.2f} -> {_load():.2f})")
            print(f"  rpc: {_fmt_counts(_counts(ponder_rpc))}")
        if ours is not None and ponder is not None:
            ratio = ours.events_per_second / ponder.events_per_second
            result["ratio"] = round(ratio, 2)
            print(f"ratio cardpay / ponder: {ratio:.2f}x")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
