"""End to end on Kafka: every cardpay process running as its own OS process, measured from
outside as the card network and the chain see it.

    python -m benchmarks.e2e [--seconds 60] [--rate 20] [--concurrency 100] [--cardholders 100]

What runs (one command, everything in a temp dir, stopped at the end):
- a Kafka broker (KRaft, `cardpay.devstack.kafka_broker`), one topic of `--partitions`;
- `lifecycle_stack` (cardpay/bootstrap/lifecycle.py): embedded PostgreSQL, Anvil with the
  Gnosis Pay replicas, `--cardholders` Safes with one card each (EURe on even Safes, USDCe on
  odd ones, 10,000 tokens each), the cards registered, the advice recorder; the replicas are
  deployed under automine, then the node mines a block every second;
- under `cardpay.runtime.processes.Supervisor` (cardpay/devstack/kafka_stack.py, as the chaos
  run): `cardpay api`, `cardpay sagas run` (spend relayer, refund sender, settlement desk),
  `cardpay listen` (depth 2, polling every `--listen-poll` s), `cardpay project` and
  `cardpay relay` (the outbox to Kafka; the saga worker and the projector consume Kafka), each
  with its metrics endpoint.

Then, one after the other:
1. **Authorizations** (`--seconds`, after `--warmup` s at the same rate left out): a separate
   load process (this module with `--load`, aiohttp) sends signed 1.00 authorizations to the
   API, OPEN LOOP at `--rate`: request i is due at t0 + i / rate and its latency counts from
   that due time (a server that falls behind shows in the percentiles). Every approval is a
   real payment: the saga has the relayer spend it on chain, the listener sees the spend at
   depth, the projector shows it in the read model. After the load, the run waits until every
   approved payment shows spent in the read model (the drain time says whether the pipeline
   kept up), then sends each its final clearing (not timed).
2. **Lifecycles** (`--seconds`): a CLOSED LOOP of `--concurrency` clients in this process, as
   benchmarks/lifecycle.py: authorization -> wait for `PaymentSpent` at depth (one poller of
   the event store for all clients) -> the final clearing; at the end of the window no new
   lifecycle starts, those in flight finish; then the network's settlement report per currency
   (for every clearing of both phases) is POSTed and the settlement runs. The sagas' clock has
   to reach the cut-off (02:00 UTC the next day): the `sagas run` process is stopped and the
   same saga worker (`lifecycle_stack`'s, on the same Kafka group and offsets) runs in this
   process with its clock moved to the cut-off until every batch is settled (report matched,
   payouts posted to the ledger). Lifecycles/s = lifecycles settled / the phase's clock (first
   authorization to batches settled).
3. **Checked** (exit 1 otherwise): `lifecycle.check` (chain = read model = the network side of
   our events = ledger = settlement reports per currency; no hold left, nothing owed to the
   network; reconciliation clean), the payment invariants of the chaos run (nothing spent or
   refunded twice, nothing approved and stuck), every journal balanced, no open exception, and
   every approved authorization of both phases spent once, in the read model and settled.

Lags: chain -> read model: from the moment this process first saw the Spend's block (a head
poller every 0.1 s) to the moment it first saw the payment's read-model row spent (a poller
every 0.2 s): it includes the listener's depth of 2 blocks (~2 s by design); it is split at
the moment the listener recorded `PaymentSpent` (its `recorded_at`, this host's clock). Clearing ->
settled ledger: from the clearing's answer to the moment the batches were seen settled; the
batch closes at the cut-off, so it is mostly the rest of the phase. Backlogs: every second the
relay's, projector's and listener's Prometheus metrics (outbox backlog and oldest age,
projector lag in messages, listener lag) and, from the database, the saga worker's Kafka lag
(records published minus its committed offsets) and the effects pending (spends not yet sent);
the maximum of each per phase. CPU: each process's CPU seconds per phase (PostgreSQL with its
exited backends, Kafka's JVM, Anvil, the five cardpay processes, this process, the load process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, text

from benchmarks.authorization_load import (
    Prepared,
    Summary,
    percentile,
    run_load,
    send_offsets,
    summarize,
)
from benchmarks.lifecycle import (
    AMOUNT,
    MERCHANT,
    Network,
    Phase,
    closed_loop,
    reports,
    wire,
)
from benchmarks.machine import describe
from cardpay.bootstrap.lifecycle import LifecycleStack
from cardpay.devstack.kafka_stack import SupervisedStack
from cardpay.devstack.network_workload import Message

log = logging.getLogger("benchmarks.e2e")
HEAD_POLL_S = 0.1
ROW_POLL_S = 0.2
SAMPLE_S = 1.0
DRAIN_TIMEOUT_S = 600.0
SETTLE_TIMEOUT_S = 600.0
CLEARING_CONCURRENCY = 40
RESEND_TIMEOUT_S = 300.0
NOISY = ("the machine has 2 cores shared with other sessions: compare numbers within one run, "
         "not across runs")


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def pct(values: Sequence[float], q: float) -> float | None:
    return round(percentile(values, q), 2) if values else None


# -- the load process ----------------------------------------------------------------------------
def prepare(cards: Sequence[dict[str, str]], count: int, secret: str,
            tag: str) -> tuple[list[Prepared], list[tuple[str, str]]]:
    """`count` signed 1.00 authorizations, round robin over the cards (ids `e2e-a-<tag>-<i>`),
    and each one's (authorization id, card id)."""
    from standardwebhooks import Webhook

    from cardpay.devstack.network_workload import AUTHORIZATIONS, message

    hook = Webhook(secret)
    now = datetime.now(UTC).replace(microsecond=0)
    out, ids = [], []
    for i in range(count):
        card = cards[i % len(cards)]
        auth_id = f"e2e-a-{tag}-{i:07d}"
        payload = {"authorization_id": auth_id, "card_id": card["card_id"], "amount": AMOUNT,
                   "currency": card["currency"], "merchant": MERCHANT,
                   "network_time": wire(now), "partial_approval_supported": False}
        m = message(AUTHORIZATIONS, auth_id, payload, now, auth_id)
        out.append(Prepared(m.body, {
            "webhook-id": m.webhook_id, "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": hook.sign(m.webhook_id, now, m.body.decode()),
            "content-type": "application/json"}))
        ids.append((auth_id, card["card_id"]))
    return out, ids


def load_process(args: argparse.Namespace) -> dict[str, Any]:
    """The load generator (`--load`): prepare and sign, send open loop, summarize; prints one
    JSON object with the summary, the approved authorizations and its own CPU."""
    cards = json.loads(Path(args.cards_file).read_text())
    offsets = send_offsets(args.rate, args.warmup + args.seconds)
    requests, ids = prepare(cards, len(offsets), os.environ["CARDPAY_WEBHOOK_SECRETS"],
                            args.tag)
    print("sending", flush=True)  # the parent's CPU window starts here
    cpu = time.process_time()
    outcomes = asyncio.run(run_load(args.api, requests, offsets, args.connections))
    summary = summarize(outcomes, rate=args.rate, seconds=args.seconds, warmup=args.warmup)
    return {"summary": asdict(summary), "cpu_s": round(time.process_time() - cpu, 2),
            "approved": [[auth, card] for (auth, card), o in zip(ids, outcomes, strict=True)
                         if o.status == "200" and o.approved],
            "answered_not_approved": sum(1 for o in outcomes if o.status == "200"
                                         and not o.approved),
            "not_answered": sum(1 for o in outcomes if o.status != "200")}


# -- watchers (threads of this process) ----------------------------------------------------------
class HeadWatcher:
    """When each block was first seen (monotonic), polling the node every 0.1 s."""

    def __init__(self, rpc_url: str) -> None:
        self.rpc_url = rpc_url
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="e2e-head", daemon=True)

    def _run(self) -> None:
        last = -1
        with httpx.Client(timeout=5) as client:
            while not self._stop.wait(HEAD_POLL_S):
                with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                    head = int(client.post(self.rpc_url, json={
                        "jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber",
                        "params": []}).json()["result"], 16)
                    now = time.monotonic()
                    for n in range(max(last + 1, head - 50), head + 1):
                        self.seen.setdefault(n, now)
                    last = max(last, head)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class RowWatcher:
    """When each payment's read-model row was first seen spent, and settled (monotonic), and
    its spend transaction; polls `rm_payments` every 0.2 s for rows updated since the last
    poll (less a margin: `updated_at` is the projector's transaction start, visible at its
    commit)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.spent: dict[str, float] = {}
        self.settled: dict[str, float] = {}
        self.spend_tx: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="e2e-rows", daemon=True)

    def _run(self) -> None:
        since = datetime(2000, 1, 1, tzinfo=UTC)
        while not self._stop.wait(ROW_POLL_S):
            try:
                with self.engine.connect() as conn:
                    rows = conn.execute(text(
                        "SELECT payment_id, spend_tx, settled > 0, updated_at FROM rm_payments"
                        " WHERE (spent > 0 OR settled > 0) AND updated_at > :since"),
                        {"since": since - timedelta(seconds=30)}).all()
            except Exception as exc:
                log.warning("read-model poll failed: %s", exc)
                continue
            now = time.monotonic()
            for payment_id, tx, is_settled, updated in rows:
                self.spent.setdefault(payment_id, now)
                if tx:
                    self.spend_tx.setdefault(payment_id, str(tx))
                if is_settled:
                    self.settled.setdefault(payment_id, now)
                since = max(since, updated)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def scrape(url: str, client: httpx.Client) -> dict[str, float]:
    """A Prometheus text page's samples, by metric name: the largest value over its labels."""
    out: dict[str, float] = {}
    for line in client.get(url).text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            v = float(value)
            if v == v:  # not NaN
                out[name] = max(out.get(name, v), v)
    return out


API_COUNTERS = ("cardpay_network_unavailable_total", "cardpay_authorization_decisions_total")


def api_counters(api_url: str) -> dict[str, float]:
    """The API's counters of refusals (503 by reason) and decisions (by outcome and reason),
    one entry per label set, to subtract one reading from another."""
    out: dict[str, float] = {}
    with contextlib.suppress(httpx.HTTPError):
        for line in httpx.get(f"{api_url}/metrics", timeout=5).text.splitlines():
            if line.startswith(API_COUNTERS):
                key, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[key] = float(value)
    return out


def counter_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    return {k.removeprefix("cardpay_"): int(v - before.get(k, 0.0))
            for k, v in sorted(after.items()) if v - before.get(k, 0.0) > 0}


BACKLOG_METRICS = {
    "relay": ("cardpay_relay_outbox_backlog", "cardpay_relay_oldest_unpublished_age_seconds"),
    "project": ("cardpay_projector_lag_messages",),
    "listen": ("cardpay_listener_lag_blocks", "cardpay_listener_lag_seconds"),
}


class Sampler:
    """Every second, the backlog metrics (`BACKLOG_METRICS`) and from the database the saga
    worker's Kafka lag and the effects pending; keeps the maximum of each since `reset`."""

    def __init__(self, engine: Engine, metrics_urls: dict[str, str]) -> None:
        self.engine, self.urls = engine, metrics_urls
        self.maxima: dict[str, float] = {}
        self.failures = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="e2e-sampler", daemon=True)

    def reset(self) -> dict[str, float]:
        with self._lock:
            out, self.maxima = self.maxima, {}
        return out

    def _keep(self, name: str, value: float) -> None:
        with self._lock:
            self.maxima[name] = max(self.maxima.get(name, value), value)

    def _run(self) -> None:
        with httpx.Client(timeout=2) as client:
            while not self._stop.wait(SAMPLE_S):
                try:
                    for process, names in BACKLOG_METRICS.items():
                        page = scrape(self.urls[process], client)
                        for name in names:
                            if name in page:
                                self._keep(name, page[name])
                    with self.engine.connect() as conn:
                        row = conn.execute(text(
                            "SELECT (SELECT count(*) FROM outbox WHERE published_at IS NOT NULL),"
                            " (SELECT coalesce(sum(position), 0) FROM consumer_positions"
                            "   WHERE consumer = 'sagas'),"
                            " (SELECT coalesce(sum(position), 0) FROM consumer_positions"
                            "   WHERE consumer = 'payments'),"
                            " (SELECT count(*) FROM saga_effects WHERE status = 'pending')")).one()
                    published, sagas, payments, pending = (int(v) for v in row)
                    self._keep("sagas kafka lag (published - committed offsets)",
                               max(0, published - sagas))
                    self._keep("projector kafka lag (published - committed offsets)",
                               max(0, published - payments))
                    self._keep("saga effects pending", pending)
                except Exception as exc:
                    self.failures += 1
                    log.debug("sample failed: %s", exc)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# -- CPU per process -----------------------------------------------------------------------------
def cpu_of(pid: int | None, *, reaped: bool = False, children: bool = True) -> float:
    """CPU seconds (user + system) of `pid` and (`children`) its live children; `reaped`: and
    of the children it has waited for (PostgreSQL's exited backends)."""
    import psutil

    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        t = root.cpu_times()
        total = t.user + t.system + ((t.children_user + t.children_system) if reaped else 0.0)
        for child in root.children(recursive=True) if children else []:
            with contextlib.suppress(psutil.Error):
                c = child.cpu_times()
                total += c.user + c.system
        return float(total)
    except psutil.Error:
        return 0.0


def anvil_pid() -> int | None:
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "anvil" in child.name():
                return int(child.pid)
    return None


@dataclass
class Processes:
    """Who to measure: the supervised children by name, and the rest by pid."""

    children: dict[str, int]
    others: dict[str, tuple[int | None, bool]]

    def cpu(self) -> dict[str, float]:
        out = {name: cpu_of(pid) for name, pid in self.children.items()}
        out.update({name: cpu_of(pid, reaped=reaped) for name, (pid, reaped)
                    in self.others.items()})
        out["this process (driver, watchers)"] = cpu_of(os.getpid(), children=False)
        return out


def cpu_delta(before: dict[str, float], after: dict[str, float],
              seconds: float) -> dict[str, dict[str, float]]:
    return {k: {"cpu_s": round(after[k] - before[k], 1),
                "cores": round((after[k] - before[k]) / seconds, 2) if seconds > 0 else 0.0}
            for k in before}


# -- the phases ----------------------------------------------------------------------------------
@dataclass
class Run:
    """What a run measured and what it knows of each payment."""

    cards: dict[str, Any] = field(default_factory=dict)
    approved_a: list[tuple[str, str]] = field(default_factory=list)
    clearings: list[Any] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)


def chain_lags(s: LifecycleStack, rows: RowWatcher, head: HeadWatcher,
               ids: Sequence[str]) -> dict[str, Any]:
    """Seconds from the Spend's block first seen to the read-model row first seen spent, for
    `ids` (their spend transactions' blocks from the node's Spend logs)."""
    from listener.decode import SPEND_TOPIC

    query: Any = {"fromBlock": s.deployment.deployed_at_block, "toBlock": "latest",
                  "address": s.deployment.spender_module, "topics": [SPEND_TOPIC]}
    logs = s.chain.w3.eth.get_logs(query)
    block_of = {"0x" + bytes(e["transactionHash"]).hex().removeprefix("0x"):
                int(e["blockNumber"]) for e in logs}
    # the event store's clock is this host's: its wall-clock times onto this process's monotonic
    to_mono = time.monotonic() - time.time()
    with s.engine.connect() as conn:
        recorded = {str(i): at.timestamp() + to_mono for i, at in conn.execute(text(
            "SELECT stream_id, min(recorded_at) FROM events WHERE type = 'PaymentSpent'"
            " AND stream_id = ANY(:ids) GROUP BY 1"), {"ids": list(ids)})}
    lags, to_store, to_model, missing = [], [], [], 0
    for payment_id in ids:
        tx = rows.spend_tx.get(payment_id)
        block = block_of.get(tx.lower()) if tx else None
        seen_rm = rows.spent.get(payment_id)
        if block is None or seen_rm is None or block not in head.seen:
            missing += 1
            continue
        lags.append(seen_rm - head.seen[block])
        if payment_id in recorded:
            to_store.append(recorded[payment_id] - head.seen[block])
            to_model.append(seen_rm - recorded[payment_id])
    return {"payments": len(lags), "without a figure": missing, "p50_s": pct(lags, 50),
            "p99_s": pct(lags, 99), "max_s": round(max(lags), 2) if lags else None,
            "split p50/p99 s: block -> PaymentSpent recorded (listener at depth 2)":
                [pct(to_store, 50), pct(to_store, 99)],
            "split p50/p99 s: PaymentSpent recorded -> read model (relay, Kafka, projector)":
                [pct(to_model, 50), pct(to_model, 99)]}


def authorizations(args: argparse.Namespace, s: LifecycleStack, work: Path, env: dict[str, str],
                   procs: Processes, sampler: Sampler, rows: RowWatcher, head: HeadWatcher,
                   run: Run, tag: str) -> None:
    cards = [{"card_id": c.card_id, "currency": c.currency.code} for c in s.cards]
    cards_file = work / "cards.json"
    cards_file.write_text(json.dumps(cards))
    cmd = [sys.executable, "-m", "benchmarks.e2e", "--load", "--api", s.api_url,
           "--rate", str(args.rate), "--seconds", str(args.seconds), "--warmup",
           str(args.warmup), "--connections", str(args.connections), "--tag", tag,
           "--cards-file", str(cards_file)]
    print(f"phase 1: authorizations, open loop at {args.rate:g}/s for {args.seconds:g} s "
          f"(+{args.warmup:g} s warm-up) from a separate process", flush=True)
    errors = (work / "load.err").open("w")
    proc = subprocess.Popen(cmd, env={**env, "CARDPAY_WEBHOOK_SECRETS": s.secret},
                            stdout=subprocess.PIPE, stderr=errors, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()  # "sending": prepared and signed, the load starts now
    sampler.reset()
    counters = api_counters(s.api_url)
    before, t0 = procs.cpu(), time.monotonic()
    rest = proc.stdout.read()
    status = proc.wait()
    t_load = time.monotonic()
    errors.close()
    if status != 0 or first.strip() != "sending":
        raise RuntimeError(f"the load process failed: {first}{rest[-1000:]}"
                           f"{(work / 'load.err').read_text()[-3000:]}")
    out = json.loads(rest)
    window = cpu_delta(before, procs.cpu(), t_load - t0)
    window["load process"] = {"cpu_s": out["cpu_s"],
                              "cores": round(out["cpu_s"] / (t_load - t0), 2)}
    backlog_in_window = sampler.reset()
    api_answers = counter_delta(counters, api_counters(s.api_url))
    answered_approved = {a: c for a, c in out["approved"]}
    authorized = authorized_ids(s.engine, f"e2e-a-{tag}-")
    run.approved_a = [(a, c) for a, c in answered_approved.items() if a in authorized]
    summary = Summary(**out["summary"])
    ids = [a for a, _ in run.approved_a]
    print(f"  load done: {summary.ok:,} of {summary.sent:,} measured answered 200; waiting for "
          f"all {len(ids):,} authorized payments to show spent in the read model", flush=True)
    deadline = t_load + DRAIN_TIMEOUT_S
    while any(i not in rows.spent for i in ids):
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    last_seen = max((rows.spent[i] for i in ids if i in rows.spent), default=t_load)
    backlog_drain = sampler.reset()
    pipeline = cpu_delta(before, procs.cpu(), time.monotonic() - t0)
    per_payment = {k: round(1000 * v["cpu_s"] / len(ids), 1) if ids else None
                   for k, v in pipeline.items()}
    per_payment["load process"] = round(1000 * out["cpu_s"] / len(ids), 1) if ids else None
    run.results["authorizations"] = {
        "summary": asdict(summary), "authorized (warm-up included)": len(ids),
        "answered approved after the 2 s deadline (recorded as late, nothing held)":
            len(set(answered_approved) - authorized),
        "authorized without an approved answer": len(authorized - set(answered_approved)),
        "answered, not approved": out["answered_not_approved"],
        "not answered 200 (warm-up included)": out["not_answered"],
        "spent in the read model": sum(1 for i in ids if i in rows.spent),
        "drain_s (load end -> last approved payment spent in the read model)":
            round(max(0.0, last_seen - t_load), 1),
        "chain_to_read_model": chain_lags(s, rows, head, ids),
        "api counters during the load": api_answers,
        "backlog_max_during_load": backlog_in_window, "backlog_max_during_drain": backlog_drain,
        "cpu_during_load": window,
        "cpu_ms_per_authorized_payment (load and drain: authorization, spend, indexed, "
        "projected)": per_payment}
    print(json.dumps(run.results["authorizations"]), flush=True)


async def clear_phase_a(s: LifecycleStack, run: Run) -> float:
    """The final clearing of every approved authorization of phase 1 (not timed as a result)."""
    by_id = {c.card_id: c for c in s.cards}
    started = time.monotonic()
    gate = asyncio.Semaphore(CLEARING_CONCURRENCY)
    async with httpx.AsyncClient(timeout=60) as client:
        network = Network(s, client, "e2e-clear")

        async def one(auth_id: str, card_id: str) -> None:
            async with gate:
                m = network.clearing(auth_id, by_id[card_id])
                await post_until_answered(network, m)
                run.clearings.append(m)

        await asyncio.gather(*(one(a, c) for a, c in run.approved_a))
    return time.monotonic() - started


async def post_until_answered(network: Network, m: Message,
                              timeout: float = RESEND_TIMEOUT_S) -> Any:
    """`m` sent again (after 1 s) while the API refuses it with 503 (`Network.post` gives up
    after 5 tries in ~3 s): the network resends a clearing or a report until it is taken, and a
    payment whose clearing the driver dropped would be left held, not a finding about cardpay."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await network.post(m)
        except RuntimeError as exc:
            if "no answer" not in str(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)


def authorized_ids(engine: Engine, prefix: str) -> set[str]:
    """The payments whose authorization the API booked (an approval answered after the
    deadline is booked as declined, `late_approval`: the network stood in)."""
    with engine.connect() as conn:
        return {str(i) for (i,) in conn.execute(text(
            "SELECT DISTINCT stream_id FROM events WHERE type = 'PaymentAuthorized'"
            " AND starts_with(stream_id, :p)"), {"p": prefix})}


class LateApproval(Exception):
    """The API answered approved after the deadline: booked as declined, nothing to spend."""


def _last_position(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT coalesce(max(position), 0) FROM events")
                                ).scalar_one())


def _spent_since(engine: Engine, last: int) -> list[tuple[int, str, str]]:
    with engine.connect() as conn:
        return [(int(p), str(i), str(t)) for p, i, t in conn.execute(text(
            "SELECT position, stream_id, type FROM events WHERE position > :last"
            " AND type IN ('PaymentSpent', 'AuthorizationDeclined') ORDER BY position"),
            {"last": last})]


def _batches_settled(engine: Engine) -> bool:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT status, count(*) FROM settlement_batches"
                                 " GROUP BY status")).all()
    return bool(rows) and all(status == "settled" for status, _ in rows)


async def lifecycles(args: argparse.Namespace, s: LifecycleStack,
                     sagas_stack: SupervisedStack, procs: Processes,
                     sampler: Sampler, rows: RowWatcher, head: HeadWatcher, run: Run,
                     tag: str) -> Phase:
    from cardpay.bootstrap.lifecycle import counts, settled
    from cardpay.bootstrap.sagas import run_saga_worker
    from domain.settlement import cutoff_at

    phase = Phase("lifecycles, every process its own OS process, Kafka")
    waiting: dict[str, asyncio.Future[None]] = {}
    stop_poll = asyncio.Event()

    async def spent_poller() -> None:
        last = await asyncio.to_thread(_last_position, s.engine)
        while not stop_poll.is_set():
            for position, stream, kind in await asyncio.to_thread(_spent_since, s.engine,
                                                                    last):
                last = max(last, position)
                fut = waiting.pop(stream, None)
                if fut is not None and not fut.done():
                    if kind == "PaymentSpent":
                        fut.set_result(None)
                    else:
                        fut.set_exception(LateApproval(
                            "answered approved after the deadline, booked declined"))
            await asyncio.sleep(0.2)

    print(f"phase 2: lifecycles, closed loop, {args.concurrency} clients for "
          f"{args.seconds:g} s, then the settlement", flush=True)
    sampler.reset()
    counters = api_counters(s.api_url)
    before = procs.cpu()
    limits = httpx.Limits(max_connections=args.concurrency,
                          max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        network = Network(s, client, "e2e-b")
        poller = asyncio.create_task(spent_poller())

        async def one(p: Any) -> bool:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiting[p.auth_id] = fut
            if not await network.authorize(p.auth_id, p.card):
                waiting.pop(p.auth_id, None)
                return False
            p.authorized = time.monotonic()
            await asyncio.wait_for(fut, timeout=300)
            p.on_chain = time.monotonic()
            clearing = network.clearing(p.auth_id, p.card)
            await post_until_answered(network, clearing)
            run.clearings.append(clearing)
            p.cleared = time.monotonic()
            return True

        try:
            await closed_loop(phase, s.cards, args.concurrency, args.seconds, one,
                              f"e2e-b-{tag}")
        finally:
            stop_poll.set()
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        backlog_window = sampler.reset()
        api_answers = counter_delta(counters, api_counters(s.api_url))
        cpu_window = cpu_delta(before, procs.cpu(), time.monotonic() - phase.t0)
        for m in reports(s, run.clearings):
            await post_until_answered(network, m)
        phase.retries = network.retries
    # the settlement: the sagas' clock at the cut-off, which only an in-process worker can have
    t_cut = time.monotonic()
    await asyncio.to_thread(sagas_stack.stop)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_saga_worker(s.worker, stop, poll_timeout=0.2))
    today = datetime.now(UTC).date()
    s.clock.offset = (cutoff_at(today, s.settings.settlement_cutoff) - datetime.now(UTC)
                      + timedelta(minutes=1))
    try:
        while True:
            now = await asyncio.to_thread(counts, s.engine, True)
            if settled(now) and await asyncio.to_thread(_batches_settled, s.engine):
                break
            if worker.done():
                raise RuntimeError(f"the in-process saga worker ended: {worker.exception()!r}")
            if time.monotonic() - t_cut > SETTLE_TIMEOUT_S:
                raise TimeoutError(f"the settlement did not finish: {now}")
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await worker
    phase.settled_at = time.monotonic()
    phase.settle_seconds = phase.settled_at - t_cut
    for p in phase.payments:
        if p.cleared is not None:
            p.settled = phase.settled_at
    summary = phase.summary()
    summary.pop("cpu_s"), summary.pop("cpu_ms_per_lifecycle"), summary.pop("cores_busy")
    ids = [p.auth_id for p in phase.payments if p.cleared is not None]
    rm_settled = [rows.settled[p.auth_id] - p.cleared for p in phase.payments
                  if p.cleared is not None and p.auth_id in rows.settled]
    summary.update({
        "chain_to_read_model": chain_lags(s, rows, head, ids),
        "clearing_to_read_model_settled_p50_s": pct(rm_settled, 50),
        "clearing_to_read_model_settled_p99_s": pct(rm_settled, 99),
        "api counters during the window": api_answers,
        "backlog_max_during_window": backlog_window,
        "backlog_max_during_settlement": sampler.reset(),
        "cpu_during_window": cpu_window})
    run.results["lifecycles"] = summary
    print(json.dumps(summary), flush=True)
    return phase


# -- the checks ----------------------------------------------------------------------------------
def verify(s: LifecycleStack, run: Run, phase: Phase) -> list[str]:
    """Every problem found after the run (empty: the run was right)."""
    from cardpay.bootstrap.lifecycle import (
        LifecycleResult,
        check,
        figures_now,
        reconciliation_breaks,
    )
    from cardpay.devstack.kafka_stack import payment_problems
    from cardpay.postgres.health import ledger_balanced

    figures, exceptions = figures_now(s)
    result = LifecycleResult(0, 0, {sym: t.decimals for sym, t in s.deployment.tokens.items()},
                             figures, True, [], exceptions, list(s.errors), 0.0)
    result.breaks = reconciliation_breaks(s.engine)
    problems = check(result)
    chain_spends = sum(t.payments for t in figures.chain.values())
    problems += payment_problems(s.engine, chain_spends)
    problems += [f"open exception {k} x{n}" for k, n in sorted(exceptions.items())]
    approved = [a for a, _ in run.approved_a] + [p.auth_id for p in phase.payments
                                                 if p.cleared is not None]
    with s.engine.connect() as conn:
        if not ledger_balanced(conn):
            problems.append("a ledger's debits differ from its credits")
        rows = {str(r[0]): (int(r[1]), int(r[2]), int(r[3] or 0)) for r in conn.execute(text(
            "SELECT payment_id, spent, settled, decimals FROM rm_payments"
            " WHERE payment_id = ANY(:ids)"), {"ids": approved})}
        authorized_total = int(conn.execute(text(
            "SELECT count(DISTINCT stream_id) FROM events WHERE type = 'PaymentAuthorized'"
        )).scalar_one())
    for auth_id in approved:
        row = rows.get(auth_id)
        if row is None:
            problems.append(f"{auth_id}: approved, no read-model row")
            continue
        spent, settled_units, decimals = row
        unit = AMOUNT * 10 ** (decimals - 2)
        if spent != unit or settled_units != unit:
            problems.append(f"{auth_id}: spent {spent}, settled {settled_units}, want {unit}")
    if authorized_total != len(approved) or chain_spends != len(approved):
        problems.append(f"approved answers {len(approved)}, PaymentAuthorized streams "
                        f"{authorized_total}, Spend logs on chain {chain_spends}")
    run.results["checked"] = {
        "approved payments": len(approved), "spends on chain": chain_spends,
        "per token": {sym: t.as_json() for sym, t in figures.chain.items()},
        "settlement": {k: {"net": v["net"], "report_net": v["report_net"],
                           "statuses": sorted(set(v["statuses"]))}
                       for k, v in figures.settlement.items()},
        "ledger": figures.ledger, "problems": len(problems)}
    return problems


def deadlocks(work: Path) -> dict[str, Any]:
    """What PostgreSQL's log and the processes' log say about deadlocks during the run: how
    many the server broke, which statements waited on each other (the first one's), and the
    lines each process logged about one (the API answers 503 `database`; the listener retries
    its range)."""
    server = (work / "pgdata" / "log").read_text(errors="replace") \
        if (work / "pgdata" / "log").is_file() else ""
    first = server.split("ERROR:  deadlock detected", 1)
    detail = [line.strip() for line in first[1].splitlines()[1:8]
              if "Process" in line] if len(first) == 2 else []
    by_process: dict[str, int] = {}
    for line in (work / "processes.log").read_text(errors="replace").splitlines():
        if "deadlock" in line.lower():
            name = line.split("|", 1)[0].strip()
            by_process[name] = by_process.get(name, 0) + 1
    return {"broken by the server": server.count("ERROR:  deadlock detected"),
            "logged by process": by_process, "first": detail}


# -- the command ---------------------------------------------------------------------------------
@contextlib.contextmanager
def whole_stack(args: argparse.Namespace, work: Path) -> Iterator[tuple[Any, ...]]:
    """Kafka, `lifecycle_stack` and the five supervised processes (the saga worker under a
    supervisor of its own, so the settlement step can stop it alone)."""
    from cardpay.bootstrap.lifecycle import lifecycle_stack
    from cardpay.devstack.anvil import free_port
    from cardpay.devstack.kafka_broker import KafkaBroker
    from cardpay.devstack.kafka_stack import (
        SupervisedStack,
        api_at,
        child_env,
        child_specs,
        wait_answering,
        wait_healthy,
    )
    from cardpay.settings import Settings

    topic = f"e2e-{secrets.token_hex(3)}"
    broker = KafkaBroker(data_dir=work / "kafka")
    with contextlib.ExitStack() as exits:
        t = time.monotonic()
        broker.start()
        exits.callback(broker.stop)
        broker.create_topic(topic, args.partitions)
        print(f"Kafka up at {broker.bootstrap_servers} ({time.monotonic() - t:.1f} s), topic "
              f"{topic} with {args.partitions} partitions", flush=True)
        api_port = free_port()
        settings = Settings(data_dir=work, kafka_bootstrap=broker.bootstrap_servers,
                            kafka_topic=topic)
        t = time.monotonic()
        s = exits.enter_context(lifecycle_stack(settings, cardholders=args.cardholders,
                                                api=exits.enter_context(api_at(api_port))))
        print(f"PostgreSQL, Anvil, {args.cardholders} Safes deployed and {len(s.cards)} cards "
              f"registered ({time.monotonic() - t:.1f} s)", flush=True)
        deployment = work / "local-deployment.json"
        deployment.write_text(json.dumps(s.deployment.to_dict()))
        ports = {name: free_port() for name in ("listen", "sagas", "project", "relay")}
        env = child_env(s, s.engine.url.render_as_string(hide_password=False),
                        str(s.settings.rpc_url))
        specs = child_specs(s, env, deployment, api_port, metrics_ports=ports,
                            listen_poll=args.listen_poll)
        plog = exits.enter_context((work / "processes.log").open("w"))
        core = SupervisedStack([c for c in specs if c.name != "sagas"], plog, name="core")
        sagas = SupervisedStack([c for c in specs if c.name == "sagas"], plog, name="sagas")
        core.start()
        exits.callback(core.stop)
        sagas.start()
        exits.callback(sagas.stop)
        wait_healthy(s.api_url, 120)
        urls = {name: f"http://127.0.0.1:{port}/metrics" for name, port in ports.items()}
        for name, url in urls.items():
            wait_answering(url, 120, f"cardpay {name}'s metrics")
        pg_pid = int((work / "pgdata" / "postmaster.pid").read_text().split()[0])
        procs = Processes({**core.pids(), **sagas.pids()},
                          {"postgres": (pg_pid, True), "kafka": (broker.pid, False),
                           "anvil": (anvil_pid(), False)})
        print(f"processes up: {json.dumps(procs.children)}", flush=True)
        try:
            yield s, core, sagas, procs, urls, env
        finally:
            restarts = {**core.supervisor.restarts(), **sagas.supervisor.restarts()}
            if any(restarts.values()):
                print(f"restarts: {restarts} (see {work / 'processes.log'})", flush=True)


def orchestrate(args: argparse.Namespace) -> int:
    print(describe(), flush=True)
    print(f"load (1/5/15 min) at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{NOISY}", flush=True)
    print(f"settings: authorizations open loop at {args.rate:g}/s for {args.seconds:g} s "
          f"(+{args.warmup:g} s warm-up), {args.connections} connections, 1.00 per payment, "
          f"round robin over the cards; lifecycles closed loop with {args.concurrency} "
          f"clients for {args.seconds:g} s; {args.cardholders} Safes/cards (EURe even, USDCe "
          f"odd); Anvil 1 s blocks; listener depth 2, poll {args.listen_poll:g} s; saga worker "
          f"poll 0.2 s; Kafka topic of {args.partitions} partitions; API admission control 48 "
          "in flight, authorization deadline 2 s (the CLI's defaults)", flush=True)
    tag = secrets.token_hex(3)
    run = Run()
    status = 0
    with tempfile.TemporaryDirectory(prefix="cardpay-e2e-") as d:
        work = Path(d)
        with whole_stack(args, work) as (s, _core, sagas, procs, urls, env):
            head = HeadWatcher(str(s.settings.rpc_url))
            rows = RowWatcher(s.engine)
            sampler = Sampler(s.engine, urls)
            for w in (head, rows, sampler):
                w.start()
            try:
                authorizations(args, s, work, env, procs, sampler, rows, head, run, tag)
                seconds = asyncio.run(clear_phase_a(s, run))
                print(f"  phase 1's {len(run.approved_a):,} payments cleared in {seconds:.1f} s "
                      "(not part of a result)", flush=True)
                phase = asyncio.run(lifecycles(args, s, sagas, procs, sampler, rows, head,
                                               run, tag))
            finally:
                for w in (head, rows, sampler):
                    w.stop()
            problems = verify(s, run, phase)
            run.results["deadlocks"] = deadlocks(work)
            print(f"deadlocks: {json.dumps(run.results['deadlocks'])}", flush=True)
            print(f"checked: {json.dumps(run.results['checked'])}", flush=True)
            for p in problems[:30]:
                print(f"  PROBLEM: {p}", flush=True)
            status = 1 if problems else 0
    a, b = run.results["authorizations"]["summary"], run.results["lifecycles"]
    print(f"result: authorizations {a['achieved_rate']:.1f}/s achieved of {args.rate:g}/s "
          f"offered, p50 {a['p50_ms']:.1f} ms, p99 {a['p99_ms']:.1f} ms; lifecycles "
          f"{b['lifecycles_per_s']}/s settled; chain -> read model p50/p99 "
          f"{run.results['authorizations']['chain_to_read_model']['p50_s']}/"
          f"{run.results['authorizations']['chain_to_read_model']['p99_s']} s (phase 1), "
          f"{b['chain_to_read_model']['p50_s']}/{b['chain_to_read_model']['p99_s']} s "
          f"(phase 2); clearing -> settled ledger p50/p99 {b['clearing_to_settled_p50_s']}/"
          f"{b['clearing_to_settled_p99_s']} s; {'checked: right' if not status else 'WRONG'}",
          flush=True)
    print(f"load (1/5/15 min) at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="each phase's window")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="authorizations per second offered in phase 1")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=100,
                        help="closed-loop clients in phase 2")
    parser.add_argument("--cardholders", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--listen-poll", type=float, default=0.2)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--api", help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="x", help=argparse.SUPPRESS)
    parser.add_argument("--cards-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load:
        result = load_process(args)
        print(json.dumps(result))
        return 0
    logging.basicConfig(level=logging.WARNING)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
