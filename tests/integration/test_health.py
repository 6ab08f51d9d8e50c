"""The stored state's health figures on PostgreSQL (ledger balance check, open exceptions,
timers due, feed lag), the API's /readyz answering 503 with the reason (database unreachable,
a consumer beyond the lag bound), and the state gauges on the API's /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, create_engine, text
from starlette.testclient import TestClient

from cardpay.bootstrap.api import build_app
from cardpay.bootstrap.state import readiness, refresh_forever
from cardpay.metrics.state import StateMetrics
from cardpay.postgres.health import read_state
from cardpay.postgres.uow import unit_of_work_factory
from cardpay.settings import Settings
from domain.ledger.model import CreateTransferResult
from tests.support.ledger import ACCOUNTS, ALICE, BOB, NOW, deposit, hold, post, void
from tests.support.network import SECRET

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SETTINGS = Settings(database_url="unused", webhook_secrets=(SECRET,), sweep_interval_s=0)


def add_events(engine: Engine, n: int) -> None:
    with engine.begin() as conn:
        for version in range(1, n + 1):
            conn.execute(text("INSERT INTO events (stream_id, version, type, data) "
                              "VALUES ('s1', :v, 'Test', '{}')"), {"v": version})


def set_position(engine: Engine, consumer: str, position: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO consumer_positions (consumer, source, position) "
                          "VALUES (:c, 'events', :p) ON CONFLICT (consumer, source) "
                          "DO UPDATE SET position = :p"), {"c": consumer, "p": position})


def test_a_fresh_database_is_balanced_and_quiet(pg_engine: Engine) -> None:
    with pg_engine.connect() as conn:
        state = read_state(conn)
    assert state.ledger_balanced is True
    assert (dict(state.ledger_transfers), dict(state.open_exceptions), state.saga_timers_due,
            dict(state.feed_lag)) == ({}, {}, 0, {})


def test_the_ledger_written_through_its_repository_balances_holds_posts_and_voids(
        pg_engine: Engine) -> None:
    with unit_of_work_factory(pg_engine, None)() as uow:
        uow.ledger.create_accounts(ACCOUNTS)
        results = uow.ledger.create_transfers(
            [deposit("d1", ALICE, 1000), deposit("d2", BOB, 500), hold("h1", ALICE, 300),
             hold("h2", BOB, 200), post("p1", "h1", 250), void("v2", "h2")], NOW)
        assert set(results) == {CreateTransferResult.OK}, results
        uow.commit()
    with pg_engine.connect() as conn:
        state = read_state(conn)
    assert state.ledger_balanced is True
    assert dict(state.ledger_transfers) == {"deposit": 2, "authorization": 4}  # holds, post, void


def test_an_account_whose_debits_exceed_the_credits_of_its_ledger_is_an_imbalance(
        pg_engine: Engine) -> None:
    with pg_engine.begin() as conn:  # behind the ledger's back: one side of a journal only
        conn.execute(text("INSERT INTO ledger_account_rows (id, ledger, code, flags, "
                          "debits_posted) VALUES ('a:1', 'EURe', 'test', 0, 5)"))
    with pg_engine.connect() as conn:
        assert read_state(conn).ledger_balanced is False
    with pg_engine.begin() as conn:  # the other side: balanced again
        conn.execute(text("INSERT INTO ledger_account_rows (id, ledger, code, flags, "
                          "credits_posted) VALUES ('a:2', 'EURe', 'test', 0, 5)"))
    with pg_engine.connect() as conn:
        assert read_state(conn).ledger_balanced is True


def test_open_exceptions_timers_due_and_feed_lag(pg_engine: Engine) -> None:
    now = datetime.now(UTC)
    with pg_engine.begin() as conn:
        for key, resolved in (("k1", None), ("k2", None), ("k3", now)):
            conn.execute(text("INSERT INTO quarantine (source, key, reason, payload, "
                              "resolved_at) VALUES ('saga:card_payment', :k, 'r', '{}', :r)"),
                         {"k": key, "r": resolved})
        for name, due in (("t1", now - timedelta(minutes=1)), ("t2", now + timedelta(days=1))):
            conn.execute(text("INSERT INTO saga_timers (kind, saga_id, name, due_at) "
                              "VALUES ('card_payment', 'p1', :n, :d)"), {"n": name, "d": due})
    add_events(pg_engine, 5)
    set_position(pg_engine, "payments", 3)  # next to read: 3, so 3, 4 and 5 are behind
    set_position(pg_engine, "sagas", 6)
    with pg_engine.connect() as conn:
        state = read_state(conn)
    assert dict(state.open_exceptions) == {"saga:card_payment": 2}
    assert state.saga_timers_due == 1
    assert dict(state.feed_lag) == {"payments": 3, "sagas": 0}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def client(pg_engine: Engine, registry: CollectorRegistry) -> Iterator[TestClient]:
    app = build_app(SETTINGS, pg_engine, registry=registry, max_feed_lag=2,
                    state_interval_s=0.1)
    with TestClient(app) as c:
        yield c


def test_readyz_is_503_with_the_consumer_beyond_the_lag_bound(
        client: TestClient, pg_engine: Engine) -> None:
    add_events(pg_engine, 5)
    set_position(pg_engine, "payments", 4)  # 2 behind: within the bound
    assert client.get("/readyz").json() == {"status": "ready"}
    set_position(pg_engine, "payments", 1)  # 5 behind
    reply = client.get("/readyz")
    assert reply.status_code == 503
    assert reply.json() == {"error": "not_ready", "reason": "consumer payments is 5 events "
                            "behind the event log (bound 2)"}
    assert readiness(pg_engine, 10) == []


def test_readyz_is_503_when_the_database_is_unreachable(registry: CollectorRegistry) -> None:
    dead = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")
    app = build_app(SETTINGS, dead, registry=registry, state_interval_s=None)
    with TestClient(app) as c:
        reply = c.get("/readyz")
        assert c.get("/healthz").json() == {"status": "ok"}  # the process is up all the same
    assert reply.status_code == 503
    assert reply.json() == {"error": "not_ready", "reason": "the database does not answer"}
    dead.dispose()


def test_the_api_exports_the_state_gauges_and_refreshes_them(
        client: TestClient, pg_engine: Engine, registry: CollectorRegistry) -> None:
    def sample(name: str, wanted: float, **labels: str) -> float | None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = registry.get_sample_value(name, labels)
            if found == wanted:
                break
            time.sleep(0.05)
        return found

    assert sample("cardpay_ledger_balanced", 1) == 1
    assert "cardpay_ledger_balanced 1.0" in client.get("/metrics").text
    with pg_engine.begin() as conn:
        conn.execute(text("INSERT INTO quarantine (source, key, reason, payload) "
                          "VALUES ('network', 'webhook:w1', 'r', '{}')"))
    assert sample("cardpay_open_exceptions", 1, source="network") == 1


def test_a_failed_refresh_is_counted_and_the_loop_goes_on() -> None:
    dead = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")
    state = StateMetrics(CollectorRegistry())

    async def two_tries() -> None:
        task = asyncio.create_task(refresh_forever(dead, state, cutoff=SETTINGS.settlement_cutoff,
                                                   interval=0.05))
        while (state.registry.get_sample_value("cardpay_state_refresh_failures_total")
               or 0) < 2:
            await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(two_tries(), 30))
    assert state.registry.get_sample_value("cardpay_state_refreshed_timestamp_seconds") == 0
    dead.dispose()
