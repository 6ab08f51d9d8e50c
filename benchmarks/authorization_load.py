"""Authorization decisions under open-loop load: `cardpay api` in its own process, the load from
another, both on embedded PostgreSQL.

    python -m benchmarks.authorization_load [--rate 200] [--seconds 60] [--search] [--cards 1000]

The parent process starts embedded PostgreSQL (a temp data dir), migrates, registers `--cards`
EUR cards each backed by a Safe holding far more than the run can spend (so nearly every request
is approved: the approval share is printed), starts `cardpay api` as users run it (one uvicorn
process, the CLI's settings) on a free loopback port, then runs the load generator as a third
process (this module with `--api URL`).

The load is OPEN-LOOP: request i is due at t0 + i / rate whatever happened to earlier ones, and
its latency is measured from that due time, not from when it went out, so a server (or a
generator) that falls behind shows up in the percentiles instead of silently slowing the offered
rate (coordinated omission). Each request has its own authorization id and webhook id, picks a
card at random, and is signed with the Standard Webhooks scheme before the timed phase (the
signing cost is measured and printed; the signature timestamp is the signing time, well inside the
API's ±5 minute tolerance). The first `--warmup` seconds of each run are sent at the same rate
and left out of the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_SEARCH_RATES = (10, 20, 30, 40, 50, 75, 100, 150, 200, 300, 400, 600, 800)
"""Starts low: on the shared 2-core machine this was written on, one `cardpay api` process held
well under 100 requests/s, and a ladder starting at 100 would only have said "none"."""
P99_LIMIT_MS = 100.0
GOAL_RATE, GOAL_P99_MS = 200, 50.0
CARD_BALANCE_CENTS = 100_000_000
"""1,000,000 EUR per card: a run of 100,000 requests of at most 50 EUR over 1,000 cards spends
at most 5 % of it."""
CENT = 10**16  # EURe base units per euro cent
EURE_TOKEN = "0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430"  # EURe v2 on Gnosis Chain
MCCS = ("5812", "5411", "5999", "5732", "4121")
REQUEST_TIMEOUT_S = 10.0
NOISY = ("the machine is shared with other sessions and noisy: the load average below is "
         "what else ran; compare numbers from one run, not across runs")


# -- pure helpers (unit tested) -------------------------------------------------------------------
def send_offsets(rate: float, seconds: float) -> list[float]:
    """When each request is due, in seconds after t0: every one due within [0, seconds), evenly
    spaced at `rate` per second, fixed in advance (open loop: nothing that happens during the run
    moves it)."""
    if rate <= 0 or seconds <= 0:
        raise ValueError(f"rate and seconds must be positive, got {rate} and {seconds}")
    return [i / rate for i in range(math.ceil(rate * seconds - 1e-9))]


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (`q` in 0..100) of `values`: always one of the values, so a
    p99 of 100 samples is the 99th smallest, never an interpolation below the real tail."""
    if not values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least 1
    return ordered[int(rank) - 1]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request: when it was due, sent and answered (seconds after t0), and how."""

    due: float
    sent: float
    done: float
    status: str
    """The HTTP status ("200", "503", ...) or "timeout" / "connection" when none came."""
    approved: bool | None = None


@dataclass(frozen=True, slots=True)
class Summary:
    rate: float
    seconds: float
    warmup: float
    sent: int
    answered: int
    ok: int
    approved: int
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    achieved_rate: float
    send_lag_p99_ms: float
    """How late the generator itself sent (sent - due): large means the generator, not only the
    API, fell behind; the latencies include it either way."""
    ok_p50_ms: float | None = None
    ok_p99_ms: float | None = None
    """Of the requests answered 200 only: what the ones the API admitted waited (under
    overload the others are refused at once, which pulls the overall percentiles down)."""

    @property
    def approval_share(self) -> float:
        return self.approved / self.ok if self.ok else 0.0


def summarize(outcomes: Sequence[Outcome], *, rate: float, seconds: float,
              warmup: float) -> Summary:
    """The numbers of the requests due after the warm-up. Latency is `done - due` for every one
    of them, answered or not (a timeout counts with the time it took to give up), so the
    percentiles cover everything that was offered."""
    measured = [o for o in outcomes if o.due >= warmup]
    if not measured:
        raise ValueError("no request was due after the warm-up")
    latencies = [(o.done - o.due) * 1000 for o in measured]
    answered = [o for o in measured if o.status.isdigit()]
    ok = [o for o in answered if o.status == "200"]
    errors = Counter(o.status for o in measured if o.status != "200")
    ok_ms = [(o.done - o.due) * 1000 for o in ok]
    span = max(o.done for o in measured) - min(o.due for o in measured)
    return Summary(
        rate=rate, seconds=seconds, warmup=warmup, sent=len(measured), answered=len(answered),
        ok=len(ok), approved=sum(1 for o in ok if o.approved), errors=dict(sorted(errors.items())),
        p50_ms=percentile(latencies, 50), p90_ms=percentile(latencies, 90),
        p99_ms=percentile(latencies, 99), max_ms=max(latencies),
        achieved_rate=len(ok) / span if span > 0 else 0.0,
        send_lag_p99_ms=percentile([(o.sent - o.due) * 1000 for o in measured], 99),
        ok_p50_ms=percentile(ok_ms, 50) if ok_ms else None,
        ok_p99_ms=percentile(ok_ms, 99) if ok_ms else None)


def held(summary: Summary, limit_ms: float = P99_LIMIT_MS) -> bool:
    """A rate is held when every request was answered 200 and the p99 is within the limit."""
    return summary.ok == summary.sent and summary.p99_ms <= limit_ms


def highest_held(steps: Sequence[Summary], limit_ms: float = P99_LIMIT_MS) -> float | None:
    """The highest rate held before the first step that was not (a step up the ladder only
    counts when every step below it held too)."""
    best = None
    for step in sorted(steps, key=lambda s: s.rate):
        if not held(step, limit_ms):
            break
        best = step.rate
    return best


def card_id(i: int) -> str:
    return f"bench-card-{i:05d}"


# -- the load generator process --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Prepared:
    body: bytes
    headers: dict[str, str]


def prepare(count: int, cards: int, secret: str, tag: str, seed: int) -> list[Prepared]:
    """`count` signed authorization requests, each with its own ids, spread over the cards."""
    from standardwebhooks import Webhook

    hook = Webhook(secret)
    rng = random.Random(seed)
    signed_at = datetime.now(UTC).replace(microsecond=0)
    timestamp = str(int(signed_at.timestamp()))
    out = []
    for i in range(count):
        auth_id = f"bench-{tag}-{i:07d}"
        body = json.dumps({
            "authorization_id": auth_id, "card_id": card_id(rng.randrange(cards)),
            "amount": rng.randint(100, 5_000), "currency": "EUR",
            "merchant": {"name": "Bench Shop", "id": f"mer_{rng.randrange(500)}",
                         "country": "DE", "mcc": rng.choice(MCCS)},
            "network_time": signed_at.isoformat(), "partial_approval_supported": True,
        }).encode()
        out.append(Prepared(body, {
            "webhook-id": f"wh-{auth_id}", "webhook-timestamp": timestamp,
            "webhook-signature": hook.sign(f"wh-{auth_id}", signed_at, body.decode()),
            "content-type": "application/json"}))
    return out


async def _fire(session: Any, url: str, request: Prepared, due: float, t0: float,
                loop: asyncio.AbstractEventLoop) -> Outcome:
    import aiohttp

    sent = loop.time() - t0
    approved = None
    try:
        async with session.post(url, data=request.body, headers=request.headers) as reply:
            payload = await reply.read()
            status = str(reply.status)
            if reply.status == 200:
                approved = bool(json.loads(payload).get("approved"))
    except TimeoutError:
        status = "timeout"
    except aiohttp.ClientError as exc:
        status = f"connection:{type(exc).__name__}"
    return Outcome(due, sent, loop.time() - t0, status, approved)


async def run_load(api: str, requests: Sequence[Prepared], offsets: Sequence[float],
                   connections: int) -> list[Outcome]:
    """Send request i at t0 + offsets[i] (never waiting for answers) and wait for them all."""
    import aiohttp

    loop = asyncio.get_running_loop()
    url = api.rstrip("/") + "/v1/network/authorizations"
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = []
        t0 = loop.time() + 0.2
        for request, offset in zip(requests, offsets, strict=True):
            delay = t0 + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(_fire(session, url, request, offset, t0, loop)))
        return list(await asyncio.gather(*tasks))


def generate(args: argparse.Namespace) -> dict[str, Any]:
    """The load process: prepare, sign, send, summarize (one JSON object on stdout)."""
    offsets = send_offsets(args.rate, args.warmup + args.seconds)
    started = time.perf_counter()
    requests = prepare(len(offsets), args.cards, os.environ["CARDPAY_WEBHOOK_SECRETS"],
                       args.tag, args.seed)
    signing_us = (time.perf_counter() - started) / len(requests) * 1e6
    cpu = time.process_time()
    outcomes = asyncio.run(run_load(args.api, requests, offsets, args.connections))
    cpu_ms = (time.process_time() - cpu) * 1000 / len(outcomes)
    summary = summarize(outcomes, rate=args.rate, seconds=args.seconds, warmup=args.warmup)
    return {"summary": asdict(summary), "prepare_us_per_request": round(signing_us, 1),
            "generator_cpu_ms_per_request": round(cpu_ms, 3)}


# -- the orchestrating process ---------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _register_cards(url: str, count: int) -> None:
    from cardpay.handlers.ports import Card, ChainReading
    from cardpay.postgres.engine import make_engine
    from cardpay.postgres.uow import unit_of_work_factory
    from domain.money import EURE

    engine = make_engine(url)
    try:
        with unit_of_work_factory(engine, None)() as uow:
            for i in range(count):
                uow.cards.add(Card(card_id(i), f"0x{0xbe7c << 144 | i:040x}", EURE_TOKEN, EURE),
                              ChainReading(1, "0x" + "01" * 32, CARD_BALANCE_CENTS * CENT))
            uow.commit()
    finally:
        engine.dispose()


def _pg_settings(url: str) -> str:
    from sqlalchemy import text

    from cardpay.postgres.engine import make_engine, upgrade

    engine = make_engine(url)
    try:
        upgrade(engine)
        with engine.connect() as conn:
            names = ("server_version", "fsync", "synchronous_commit", "max_connections",
                     "shared_buffers")
            values = {n: conn.execute(text(f"SHOW {n}")).scalar() for n in names}
    finally:
        engine.dispose()
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _deliveries(url: str) -> int:
    from sqlalchemy import func, select

    from cardpay.postgres import schema as s
    from cardpay.postgres.engine import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(s.network_deliveries))
                       .scalar_one())
    finally:
        engine.dispose()


@contextmanager
def api_process(env: dict[str, str],
                log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`cardpay api` on a free loopback port, as a user starts it; stopped with Ctrl-C after.
    Its log goes to a file: a pipe nobody reads would block it once full (an overloaded API
    logs a warning per late approval)."""
    import httpx

    port = _free_port()
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cardpay.cli.main", "api", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=sink)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"cardpay api exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("cardpay api did not come up within 60 s")
            time.sleep(0.2)
        yield base, proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cpu_seconds(pid: int, *, with_children: bool = False) -> float:
    """CPU time of a process; `with_children`: and of its children, live ones and the ones it has
    reaped (PostgreSQL backends come and go with the API's overflow connections)."""
    import psutil

    try:
        procs = [psutil.Process(pid)]
        if with_children:
            procs += procs[0].children(recursive=True)
        total = 0.0
        for i, p in enumerate(procs):
            try:
                t = p.cpu_times()
                total += t.user + t.system
                if with_children and i == 0:
                    total += t.children_user + t.children_system
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        return 0.0


def _postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])


def _step(args: argparse.Namespace, api: str, env: dict[str, str], rate: float, seconds: float,
          tag: str, pids: tuple[int, int]) -> dict[str, Any]:
    api_pid, pg_pid = pids
    before = _cpu_seconds(api_pid), _cpu_seconds(pg_pid, with_children=True)
    cmd = [sys.executable, "-m", "benchmarks.authorization_load", "--api", api,
           "--rate", str(rate), "--seconds", str(seconds), "--warmup", str(args.warmup),
           "--cards", str(args.cards), "--connections", str(args.connections), "--tag", tag,
           "--seed", str(args.seed)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True,
                          timeout=seconds + args.warmup + 600)
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed: {done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    total = len(send_offsets(rate, seconds + args.warmup))
    result["api_cpu_ms_per_request"] = round(
        (_cpu_seconds(api_pid) - before[0]) * 1000 / total, 2)
    result["postgres_cpu_ms_per_request"] = round(
        (_cpu_seconds(pg_pid, with_children=True) - before[1]) * 1000 / total, 2)
    return result


def _print_step(result: dict[str, Any]) -> Summary:
    s = Summary(**result["summary"])
    errors = ", ".join(f"{k}: {v}" for k, v in s.errors.items()) or "none"
    print(f"rate {s.rate:>6.0f}/s for {s.seconds:.0f} s (+{s.warmup:.0f} s warm-up): "
          f"sent {s.sent:,}, answered {s.answered:,}, 200 {s.ok:,} "
          f"(approved {s.approval_share:.1%}), errors {errors}")
    print(f"    latency from due time: p50 {s.p50_ms:.1f} ms, p90 {s.p90_ms:.1f} ms, "
          f"p99 {s.p99_ms:.1f} ms, max {s.max_ms:.1f} ms; achieved {s.achieved_rate:.1f}/s; "
          f"generator send lag p99 {s.send_lag_p99_ms:.1f} ms")
    if s.ok_p99_ms is not None and s.ok != s.sent:
        print(f"    of the {s.ok:,} answered 200: p50 {s.ok_p50_ms:.1f} ms, "
              f"p99 {s.ok_p99_ms:.1f} ms")
    print(f"    CPU per request: api {result['api_cpu_ms_per_request']} ms, postgres "
          f"{result['postgres_cpu_ms_per_request']} ms, generator "
          f"{result['generator_cpu_ms_per_request']} ms; load average {_loadavg()}",
          flush=True)
    return s


def orchestrate(args: argparse.Namespace) -> int:
    from benchmarks.machine import describe
    from cardpay.devstack.embedded_postgres import EmbeddedPostgres

    print(describe())
    print(f"load average (1/5/15 min) at start: {_loadavg()}; {NOISY}")
    run_tag = secrets.token_hex(3)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    with tempfile.TemporaryDirectory(prefix="cardpay-authload-") as tmp, \
            EmbeddedPostgres(Path(tmp) / "pgdata") as pg:
        print(f"PostgreSQL (embedded, temp data dir): {_pg_settings(pg.url)}")
        _register_cards(pg.url, args.cards)
        print(f"{args.cards:,} EUR cards registered, each Safe holding "
              f"{CARD_BALANCE_CENTS // 100:,} EURe; no velocity limit, no allowance tracked")
        base = {k: v for k, v in os.environ.items() if not k.startswith("CARDPAY_")}
        env = {**base, "CARDPAY_DATABASE_URL": pg.url, "CARDPAY_WEBHOOK_SECRETS": secret}
        api_log = Path(tmp) / "api.log"
        with api_process(env, api_log) as (api, proc):
            print(f"cardpay api: {api}, pid {proc.pid}: one uvicorn process (what `cardpay api` "
                  "runs: uvloop, httptools, access log off, log level warning), sync handlers "
                  "in anyio's thread pool (40 threads), SQLAlchemy pool 5 + overflow 10, "
                  "authorization deadline 2 s, at most "
                  f"{env.get('CARDPAY_API_MAX_IN_FLIGHT', '48')} requests in flight "
                  "(CARDPAY_API_MAX_IN_FLIGHT)")
            print(f"load: a separate process, aiohttp, open loop, up to {args.connections} "
                  f"connections, timeout {REQUEST_TIMEOUT_S:.0f} s, requests pre-signed before "
                  f"the timed phase, random card of {args.cards:,}, 1-50 EUR, warm-up "
                  f"{args.warmup:.0f} s excluded", flush=True)
            pids = (proc.pid, _postmaster_pid(Path(tmp) / "pgdata"))
            if args.search:
                steps = []
                for i, rate in enumerate(args.rates):
                    step = _print_step(_step(args, api, env, rate, args.step_seconds,
                                             f"{run_tag}s{i}", pids))
                    steps.append(step)
                    if not held(step):
                        break
                best = highest_held(steps)
                print(f"highest rate held with p99 <= {P99_LIMIT_MS:.0f} ms and every request "
                      f"answered 200: {'none' if best is None else f'{best:.0f}/s'}")
            else:
                s = _print_step(_step(args, api, env, args.rate, args.seconds, run_tag, pids))
                if s.rate == GOAL_RATE:
                    met = s.p99_ms <= GOAL_P99_MS and s.ok == s.sent
                    print(f"goal p99 <= {GOAL_P99_MS:.0f} ms at {GOAL_RATE}/s: "
                          f"{'met' if met else 'NOT met'}")
        late = api_log.read_text(errors="replace").count("recorded as late")
        print(f"deliveries recorded by the API: {_deliveries(pg.url):,} (including what it "
              f"answered after the generator gave up); approvals past the 2 s deadline, "
              f"recorded as late: {late:,}")
    print(f"load average at end: {_loadavg()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=GOAL_RATE, help="requests per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds sent first at the same rate and not measured")
    parser.add_argument("--cards", type=int, default=1000)
    parser.add_argument("--search", action="store_true",
                        help="step the rate up and report the highest with p99 <= 100 ms")
    parser.add_argument("--rates", type=lambda v: [float(x) for x in v.split(",")],
                        default=list(DEFAULT_SEARCH_RATES), help="the --search ladder")
    parser.add_argument("--step-seconds", type=float, default=20.0,
                        help="measured seconds per --search step")
    parser.add_argument("--connections", type=int, default=1000,
                        help="most connections the generator opens")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--api", help="only generate load against this running API (the load "
                        "process; needs CARDPAY_WEBHOOK_SECRETS); prints one JSON object")
    parser.add_argument("--tag", default="x", help="makes the generated ids unique per run")
    args = parser.parse_args(argv)
    if args.api:
        print(json.dumps(generate(args)))
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
