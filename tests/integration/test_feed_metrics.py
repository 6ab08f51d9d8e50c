"""Relay and projector metrics: values follow a real relay → Kafka → projector run, and each
command serves them on loopback with --metrics-port (scraped over HTTP while Kafka is down)."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from prometheus_client import generate_latest
from sqlalchemy import Engine, update
from sqlalchemy import text as sql

from cardpay.bootstrap.project import build_projector, run_projector
from cardpay.bootstrap.relay import build_relay
from cardpay.devstack.kafka_broker import KafkaBroker
from cardpay.metrics.projector import ProjectorMetrics
from cardpay.metrics.relay import RelayMetrics
from cardpay.postgres.schema import outbox
from cardpay.settings import Settings
from tests.support.workload import expected_rows, payment_events, stored_rows, write

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]


def _value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        if metric.split("{")[0] == name and all(f'{k}="{v}"' in metric
                                                for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"{name} {labels} not exported")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_relay_and_projector_metrics_follow_a_run(
    pg_engine: Engine, kafka_broker: KafkaBroker
) -> None:
    topic = f"metrics-{random.randrange(10**9)}"
    kafka_broker.create_topic(topic, 3)
    payments = payment_events(25, seed=4)
    total = sum(len(events) for events in payments)
    write(pg_engine, payments, outbox_topic=topic)
    with pg_engine.begin() as conn:  # rows waiting for a minute already
        conn.execute(update(outbox).values(created_at=outbox.c.created_at
                                           - sql("interval '60 seconds'")))

    relay, publisher = build_relay(kafka_broker.bootstrap_servers, pg_engine, batch_size=10)
    relay_metrics = RelayMetrics()
    relay.observe_backlog(relay_metrics, force=True)
    before = generate_latest(relay_metrics.registry).decode()
    assert _value(before, "cardpay_relay_outbox_backlog") == total
    assert _value(before, "cardpay_relay_oldest_unpublished_age_seconds") >= 60
    assert _value(before, "cardpay_relay_published_total") == 0

    async def relay_all() -> None:
        try:
            await relay.run(until_idle=True, start_publisher=True, metrics=relay_metrics)
        finally:
            await publisher.stop()

    asyncio.run(relay_all())
    after = generate_latest(relay_metrics.registry).decode()
    assert _value(after, "cardpay_relay_published_total") == total
    assert _value(after, "cardpay_relay_outbox_backlog") == 0
    assert _value(after, "cardpay_relay_oldest_unpublished_age_seconds") == 0

    settings = Settings(kafka_bootstrap=kafka_broker.bootstrap_servers, kafka_topic=topic)
    projector, lag = build_projector(settings, pg_engine, batch_size=7)
    projector_metrics = ProjectorMetrics(projector="payments")

    async def one_batch() -> int | None:
        await projector.start()
        try:
            deadline = time.monotonic() + 30
            while await projector.run_once(0.5) == 0:
                assert time.monotonic() < deadline
            return lag()
        finally:
            await projector.stop()

    midway = asyncio.run(one_batch())
    assert midway is not None and 0 < midway < total  # the feed knows how far behind it is
    seen: list[int | None] = []

    def recording_lag() -> int | None:
        seen.append(lag())
        return seen[-1]

    asyncio.run(run_projector(projector, asyncio.Event(), until_idle=True,
                              metrics=projector_metrics, lag=recording_lag))
    text = generate_latest(projector_metrics.registry).decode()
    assert stored_rows(pg_engine) == expected_rows(payments)
    assert _value(text, "cardpay_projector_applied_total", projector="payments") == total - 7
    assert _value(text, "cardpay_projector_messages_total", projector="payments") == total - 7
    assert seen and seen[-1] == 0 and None not in seen  # the gauge's 0 was measured
    assert _value(text, "cardpay_projector_lag_messages", projector="payments") == 0


@pytest.mark.parametrize(("command", "component"), [("relay", "relay"),
                                                    ("project", "projector"),
                                                    ("sagas run", "saga worker")])
def test_commands_serve_their_metrics_on_loopback(
    command: str, component: str, pg_url: str, pg_engine: Engine
) -> None:
    write(pg_engine, payment_events(4, seed=6), outbox_topic="cardpay.payments")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        kafka_port = s.getsockname()[1]  # closed: Kafka is unreachable
    env = {**os.environ, "CARDPAY_DATABASE_URL": pg_url,
           "CARDPAY_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_port}"}
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cardpay.cli.main", *command.split(), "--metrics-port",
         str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = _scrape_until(port, lambda t: _errors(t, component) >= 1)
        later = _scrape_until(port, lambda t: _errors(t, component) > _errors(first, component))
        if command == "relay":
            assert _value(later, "cardpay_relay_outbox_backlog") > 0  # still waiting
            assert _value(later, "cardpay_relay_published_total") == 0
        if command == "sagas run":  # the saga counters are exported from the first scrape
            for family in ("cardpay_saga_steps_total", "cardpay_saga_retries_total",
                           "cardpay_saga_compensations_total",
                           "cardpay_saga_timers_fired_total"):
                assert f"# TYPE {family} counter" in first
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def _errors(text: str, component: str) -> float:
    try:
        return _value(text, "cardpay_supervised_errors_total", component=component,
                      error="KafkaUnreachable")
    except AssertionError:
        return 0.0


def _scrape_until(port: int, done: object, timeout: float = 60) -> str:
    assert callable(done)
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except requests.ConnectionError:
            text = ""
        if text and done(text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"metrics did not move within {timeout}s:\n{text[-2000:]}")


def test_a_metrics_port_in_use_is_one_line_and_exit_status_1(pg_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "CARDPAY_DATABASE_URL": pg_url,
               "CARDPAY_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
        for command in ("relay", "project"):
            proc = subprocess.run(
                [sys.executable, "-m", "cardpay.cli.main", command, "--metrics-port", str(port)],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 1
            assert proc.stderr.strip().splitlines() == [
                f"cardpay {command}: cannot serve metrics on 127.0.0.1:{port} (Address already "
                "in use); choose another --metrics-port"]
