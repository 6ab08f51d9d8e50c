"""The whole stack on Kafka with every `cardpay` command its own supervised OS process, as the
seeded chaos run (tests/chaos/harness.py) and the end-to-end benchmark (benchmarks/e2e.py)
start it on top of a `lifecycle_stack` (Anvil with the replicas and the cards, PostgreSQL, the
advice recorder): `cardpay api`, `sagas run`, `listen`, `project` and `relay`, under
`cardpay.runtime.processes.Supervisor`, each reading its settings from the environment
`child_env` builds. Also the payment invariants both check after a run (`payment_problems`).

Kept here, not under tests/, so a benchmark can use it without importing test code.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO

import httpx
from sqlalchemy import Engine, text

from cardpay.bootstrap.lifecycle import LifecycleStack
from cardpay.runtime.processes import ChildSpec, RestartPolicy, Supervisor, os_spawner
from cardpay.runtime.supervise import Backoff
from cardpay.settings import Settings

PROCESSES = ("api", "sagas", "listen", "project", "relay")


def child_env(s: LifecycleStack, engine_url: str, rpc_url: str) -> dict[str, str]:
    """The environment of every child: the stack's settings as CARDPAY_* variables (none
    inherited from this process's environment), Kafka as the feed, the saga worker polling
    every 0.2 s and the API's hold sweep off (as in `lifecycle_stack`)."""
    st = s.settings
    assert st.kafka_bootstrap and st.relayer_key and st.settlement_key
    base = {k: v for k, v in os.environ.items() if not k.startswith("CARDPAY_")}
    return {**base, "PYTHONUNBUFFERED": "1", "CARDPAY_DATABASE_URL": engine_url,
            "CARDPAY_DATA_DIR": str(st.data_dir), "CARDPAY_RPC_URL": rpc_url,
            "CARDPAY_CONFIRMATIONS": str(st.confirmations),
            "CARDPAY_KAFKA_BOOTSTRAP": st.kafka_bootstrap, "CARDPAY_KAFKA_TOPIC": st.kafka_topic,
            "CARDPAY_WEBHOOK_SECRETS": ",".join(st.webhook_secrets),
            "CARDPAY_NETWORK_ADVICE_URL": st.network_advice_url or "",
            "CARDPAY_RELAYER_KEY": st.relayer_key.reveal(),
            "CARDPAY_SETTLEMENT_KEY": st.settlement_key.reveal(),
            "CARDPAY_SWEEP_INTERVAL_S": "0", "CARDPAY_SAGA_POLL_S": "0.2"}


def child_specs(s: LifecycleStack, env: dict[str, str], deployment: Path, api_port: int, *,
                metrics_ports: Mapping[str, int] | None = None,
                listen_poll: float = 0.5) -> list[ChildSpec]:
    """The five commands (`PROCESSES`), `python -m cardpay ...` each. `metrics_ports` gives
    the listener, saga worker, projector and relay (by process name) a `--metrics-port`."""
    cardpay = (sys.executable, "-m", "cardpay")
    preset = ("--preset", "local", "--deployment", str(deployment))
    ports = metrics_ports or {}

    def metrics(name: str) -> tuple[str, ...]:
        return ("--metrics-port", str(ports[name])) if name in ports else ()

    return [
        ChildSpec("api", (*cardpay, "api", "--port", str(api_port)), env),
        ChildSpec("sagas", (*cardpay, "sagas", "run", *preset, *metrics("sagas")), env),
        ChildSpec("listen", (*cardpay, "listen", *preset, "--from-block",
                             str(s.deployment.deployed_at_block), "--poll-interval",
                             str(listen_poll), *metrics("listen")), env),
        ChildSpec("project", (*cardpay, "project", *metrics("project")), env),
        ChildSpec("relay", (*cardpay, "relay", *metrics("relay")), env),
    ]


class SupervisedStack:
    """The supervisor stepped on a thread of its own (restarts continue while the caller
    blocks). `max_restarts=0`: a child is restarted for ever (a chaos run kills them)."""

    def __init__(self, specs: list[ChildSpec], log: IO[str], *, name: str = "stack") -> None:
        self._lock = threading.Lock()
        self._log = log
        self.supervisor = Supervisor(
            specs, spawn=os_spawner(log, threading.Lock()), say=self._say,
            policy=RestartPolicy(backoff=Backoff(initial=0.2, maximum=2.0, jitter=0.0),
                                 max_restarts=0))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"{name}-supervisor",
                                        daemon=True)

    def _say(self, line: str) -> None:
        self._log.write(f"supervisor| {line}\n")
        self._log.flush()

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            with self._lock:
                self.supervisor.step()

    def start(self) -> None:
        with self._lock:
            self.supervisor.start_all()
        self._thread.start()

    def pid(self, name: str) -> int | None:
        with self._lock:
            return self.supervisor.pids().get(name)

    def pids(self) -> dict[str, int]:
        with self._lock:
            return dict(self.supervisor.pids())

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        with self._lock:
            self.supervisor.stop(grace=10.0)


@contextlib.contextmanager
def api_at(port: int) -> Iterator[Callable[[Settings, Engine],
                                          contextlib.AbstractContextManager[str]]]:
    """A `lifecycle_stack` API starter that starts nothing: `cardpay api` is one of the
    supervised processes, on `port`."""

    @contextlib.contextmanager
    def starter(_settings: Settings, _engine: Engine) -> Iterator[str]:
        yield f"http://127.0.0.1:{port}"

    yield starter


def wait_answering(url: str, timeout: float, what: str = "cardpay api") -> None:
    """Until `url` answers 200 (e.g. the API's /healthz, a process's /metrics)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} at {url} did not answer within {timeout:.0f}s")


def wait_healthy(url: str, timeout: float) -> None:
    wait_answering(f"{url}/healthz", timeout)


def payment_problems(engine: Engine, chain_spends: int) -> list[str]:
    """What a run over the whole stack must never leave, one line per problem:
    - no payment spent twice: its spend events net of retractions are at most one, and the
      chain's Spend logs equal the payments whose last spend event is a spend;
    - no refund sent twice: each refund id seen on chain once (net of retractions);
    - no payment stuck: an approved payment is spent or reversed, or has a pending timer or an
      open exception; no saga is `stuck` or `compensating` without one."""
    out: list[str] = []
    with engine.connect() as conn:
        for stream_id, spends, retracted in conn.execute(text(
                "SELECT stream_id, count(*) FILTER (WHERE type = 'PaymentSpent'),"
                " count(*) FILTER (WHERE type = 'SpendRetracted') FROM events"
                " GROUP BY stream_id HAVING count(*) FILTER (WHERE type = 'PaymentSpent')"
                "  - count(*) FILTER (WHERE type = 'SpendRetracted') > 1")):
            out.append(f"payment {stream_id}: spent {spends} times, retracted {retracted}")
        active = int(conn.execute(text(
            "SELECT count(*) FROM (SELECT DISTINCT ON (stream_id) stream_id, type FROM events"
            " WHERE type IN ('PaymentSpent', 'SpendRetracted')"
            " ORDER BY stream_id, position DESC) last WHERE type = 'PaymentSpent'")).scalar_one())
        if active != chain_spends:
            out.append(f"the chain has {chain_spends} Spend logs, {active} payments are spent")
        for stream_id, refund_id, seen, retracted in conn.execute(text(
                "SELECT stream_id, data->'payload'->>'refund_id',"
                " count(*) FILTER (WHERE type = 'PaymentRefunded'),"
                " count(*) FILTER (WHERE type = 'RefundRetracted') FROM events"
                " WHERE type IN ('PaymentRefunded', 'RefundRetracted') GROUP BY 1, 2"
                " HAVING count(*) FILTER (WHERE type = 'PaymentRefunded')"
                "  - count(*) FILTER (WHERE type = 'RefundRetracted') > 1")):
            out.append(f"payment {stream_id}: refund {refund_id} seen on chain {seen} times, "
                       f"retracted {retracted}")
        open_for = ("(EXISTS (SELECT 1 FROM saga_timers t WHERE t.saga_id = {0})"
                    " OR EXISTS (SELECT 1 FROM quarantine q WHERE q.resolved_at IS NULL"
                    "  AND (q.key = {0} OR q.payload->>'saga_id' = {0}"
                    "       OR q.payload->>'payment_id' = {0})))")
        for (stream_id,) in conn.execute(text(
                "SELECT stream_id FROM events GROUP BY stream_id"
                " HAVING bool_or(type = 'PaymentAuthorized' OR (type = 'AuthorizationAdvised'"
                "  AND (data->'payload'->>'approved')::boolean))"
                " AND NOT bool_or(type IN ('PaymentSpent', 'PaymentReversed'))"
                " AND NOT " + open_for.format("stream_id"))):
            out.append(f"payment {stream_id}: approved, neither spent nor reversed, and no "
                       "timer or open exception")
        for kind, saga_id, status, stage in conn.execute(text(
                "SELECT kind, saga_id, status, stage FROM saga_instances i"
                " WHERE status IN ('stuck', 'compensating') AND NOT "
                + open_for.format("i.saga_id"))):
            out.append(f"saga {kind} {saga_id}: {status} at {stage} with no timer or exception")
    return out
