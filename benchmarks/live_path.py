"""The live path: a card spend's block mined -> its payment row visible in the read model, at 0
confirmations, through the real `cardpay listen` and `cardpay project` processes.

    python -m benchmarks.live_path [--spends 200] [--poll-interval 0.1 0.5 2.0] [--json]

What runs (one command, everything in a temp dir, stopped at the end): embedded PostgreSQL with
the schema, Anvil with the Gnosis Pay replicas (automine: each spend is mined the moment it
arrives), and for each `--poll-interval` P in turn a fresh pair of processes on the same database
and chain: `cardpay listen --preset local --poll-interval P` (CARDPAY_CONFIRMATIONS=0, from the
head: the earlier rounds' spends are not backfilled again) and `cardpay project`, both on the
PostgreSQL event-log feed (the embedded default; the projector's feed polls every 0.05 s when
idle).

Then `--spends` card spends, one at a time, each after a random pause of 0.2-0.6 s (so the spends
fall anywhere in the listener's poll cycle, not in phase with it): a spend by the local relayer
through the spender module, as in production. Its latency runs from the moment this process
called the spend (the transaction is mined on arrival; the call returns once the receipt is
there, 5-20 ms later, so the figure is an upper bound by that much) to the moment a poller of
`rm_payments` every 2 ms saw one more row. Percentiles p50/p90/p99/max per poll interval, the
machine and its load are printed (and `--json` writes them as one document).

The path: the listener's poll (`eth_blockNumber`, `eth_getLogs` and the block header of the new
range, decoded, the events appended with the outbox in one transaction), the projector's feed
(PostgreSQL log), the row written. On Kafka the relay and the broker add their hop (not measured
here; benchmarks/e2e.py measures chain -> read model on Kafka at depth 2).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from benchmarks.machine import describe as describe_machine
from benchmarks.machine import facts
from cardpay.devstack.anvil import AnvilNode
from cardpay.devstack.embedded_postgres import EmbeddedPostgres
from cardpay.devstack.local_chain import LocalChain
from cardpay.postgres.engine import make_engine, upgrade

CARDHOLDERS = 10


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class RowCounter:
    """Polls `SELECT count(*) FROM rm_payments` every `every` seconds; `wait_above(n)` returns
    the monotonic time the count was first seen above `n`."""

    def __init__(self, engine: Engine, every: float = 0.002) -> None:
        self._engine, self._every = engine, every
        self._seen: list[tuple[float, int]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self._engine.connect() as conn:
            while not self._stop.is_set():
                count = int(conn.execute(text("SELECT count(*) FROM rm_payments")).scalar_one())
                conn.commit()  # a fresh snapshot for the next read
                now = time.monotonic()
                with self._cond:
                    if not self._seen or self._seen[-1][1] != count:
                        self._seen.append((now, count))
                        self._cond.notify_all()
                time.sleep(self._every)

    def count(self) -> int:
        with self._cond:
            return self._seen[-1][1] if self._seen else 0

    def wait_above(self, n: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, count in self._seen:
                    if count > n:
                        return at
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the read model did not pass {n} rows in {timeout:.0f}s")
                self._cond.wait(left)

    def __enter__(self) -> RowCounter:
        self._thread.start()
        while self.count() == 0 and not self._seen:
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


@contextlib.contextmanager
def processes(env: dict[str, str], deployment: Path, from_block: int, poll: float,
              log: Path) -> Iterator[None]:
    cardpay = [sys.executable, "-m", "cardpay.cli.main"]
    with log.open("a") as out:
        started = [subprocess.Popen(
            [*cardpay, "listen", "--preset", "local", "--deployment", str(deployment),
             "--from-block", str(from_block), "--poll-interval", str(poll)],
            env=env, stdout=out, stderr=out),
            subprocess.Popen([*cardpay, "project"], env=env, stdout=out, stderr=out)]
        try:
            yield
        finally:
            for proc in started:
                proc.terminate()
            for proc in started:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def one_round(chain: LocalChain, engine: Engine, rows: RowCounter, spends: int,
              rng: random.Random) -> tuple[list[float], list[float], list[float]]:
    """`spends` spends one after another: the latency of each (seconds), the part of it
    before the listener's write transaction began (the events' `recorded_at`, the database's
    clock on this host: waiting for the poll, fetching and decoding the range), and the part
    before the projector's transaction began (the row's `updated_at`)."""
    latencies: list[float] = []
    to_write: list[float] = []
    to_projector: list[float] = []
    for n in range(spends):
        time.sleep(rng.uniform(0.2, 0.6))
        before = rows.count()
        symbol = "EURe" if n % 2 == 0 else "USDCe"
        amount = rng.randint(100, 5_000) * 10 ** (16 if symbol == "EURe" else 4)
        sent, sent_wall = time.monotonic(), time.time()
        chain.spend(symbol, n % CARDHOLDERS, amount)
        latencies.append(rows.wait_above(before, 60) - sent)
        with engine.connect() as conn:
            recorded = conn.execute(text(
                "SELECT extract(epoch FROM max(recorded_at)) FROM events")).scalar_one()
            projected = conn.execute(text(
                "SELECT extract(epoch FROM max(updated_at)) FROM rm_payments")).scalar_one()
        to_write.append(float(recorded) - sent_wall)
        to_projector.append(float(projected) - sent_wall)
    return latencies, to_write, to_projector


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    out: dict[str, Any] = {"spends_per_interval": args.spends, "confirmations": 0,
                           "feed": "PostgreSQL event log", "rounds": []}
    with EmbeddedPostgres(work / "pgdata") as pg, AnvilNode() as anvil:
        engine = make_engine(pg.url)
        upgrade(engine)
        chain = LocalChain(anvil.rpc_url)
        deployment = chain.deploy(n_cardholders=CARDHOLDERS)
        path = work / "local-deployment.json"
        path.write_text(json.dumps(deployment.to_dict()))
        env = {**os.environ, "CARDPAY_DATABASE_URL": pg.url, "CARDPAY_CONFIRMATIONS": "0",
               "CARDPAY_DATA_DIR": str(work), "CARDPAY_RPC_URL": anvil.rpc_url}
        env.pop("CARDPAY_KAFKA_BOOTSTRAP", None)
        with RowCounter(engine) as rows:
            for poll in args.poll_interval:
                head = int(chain.w3.eth.block_number)
                with processes(env, path, head + 1, poll, work / "processes.log"):
                    # warm-up: both processes up and the path exercised once
                    one_round(chain, engine, rows, 3, rng)
                    latencies, to_write, to_projector = one_round(chain, engine, rows,
                                                                  args.spends, rng)
                ms = [1000 * s for s in latencies]
                write = [1000 * (b - a) for a, b in zip(to_write, to_projector, strict=True)]
                rest = [1000 * (a - b) for a, b in zip(latencies, to_projector, strict=True)]
                result = {"poll_interval_s": poll, "p50_ms": percentile(ms, 0.5),
                          "p90_ms": percentile(ms, 0.9), "p99_ms": percentile(ms, 0.99),
                          "max_ms": max(ms), "mean_ms": statistics.fmean(ms),
                          "to_listener_write_p50_ms": percentile([1000 * w for w in to_write],
                                                                 0.5),
                          "write_to_projector_p50_ms": percentile(write, 0.5),
                          "projector_to_visible_p50_ms": percentile(rest, 0.5),
                          "load_average": os.getloadavg()[0]}
                out["rounds"].append(result)
                print(f"poll {poll:g} s: {len(ms)} spends, block mined -> row visible p50 "
                      f"{result['p50_ms']:.0f} ms, p90 {result['p90_ms']:.0f} ms, p99 "
                      f"{result['p99_ms']:.0f} ms, max {result['max_ms']:.0f} ms (p50 split: "
                      f"{result['to_listener_write_p50_ms']:.0f} ms to the listener's write, "
                      f"{result['write_to_projector_p50_ms']:.0f} ms to the projector's, "
                      f"{result['projector_to_visible_p50_ms']:.0f} ms to the row); load "
                      f"{result['load_average']:.1f}", flush=True)
        engine.dispose()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.live_path",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--spends", type=int, default=200,
                        help="spends measured per poll interval (default 200)")
    parser.add_argument("--poll-interval", type=float, nargs="+", default=[0.1, 0.5, 2.0],
                        metavar="S", help="the listener's poll intervals to measure, in turn "
                        "(default 0.1 0.5 2.0; 2.0 is `cardpay listen`'s default)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the results (and the machine) here")
    args = parser.parse_args(argv)
    print(describe_machine(), flush=True)
    with tempfile.TemporaryDirectory(prefix="cardpay-live-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # the embedded server's own user reaches it when run as root
        result = run(args, work)
    result["machine"] = facts()
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
