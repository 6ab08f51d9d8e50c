"""kill -9 of the projector (and, with Kafka, the relay) mid-run, then restart: same read model."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from cardpay.postgres.schema import consumer_positions, outbox, quarantine
from tests.support.workload import expected_rows, payment_events, stored_rows, write

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _cardpay(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cardpay.cli.main", *args], cwd=ROOT, env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def _kill_midway(env: dict[str, str], progress: callable, *args: str) -> None:  # type: ignore[valid-type]
    """Start the process, wait until it has made some progress, then SIGKILL it."""
    proc = _cardpay(env, *args)
    deadline = time.monotonic() + 60
    while progress() == 0:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        assert time.monotonic() < deadline, "no progress within 60 s"
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.2))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the process finished before it could be killed"


def _finish(env: dict[str, str], *args: str) -> None:
    proc = _cardpay(env, *args, "--until-idle")
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]


def _count(engine: Engine, table: object, *where: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where))  # type: ignore[arg-type]
                   .scalar_one())


def _projected(engine: Engine) -> int:
    return _count(engine, consumer_positions)


def test_projector_killed_mid_run_on_the_postgres_feed(pg_url: str, pg_engine: Engine) -> None:
    payments = payment_events(1500, seed=11)
    write(pg_engine, payments, outbox_topic=None)
    env = {"CARDPAY_DATABASE_URL": pg_url}
    _kill_midway(env, lambda: _projected(pg_engine), "project", "--batch-size", "20")
    before = len(stored_rows(pg_engine))
    assert 0 < before < len(payments), "the kill did not land mid-run"
    _finish(env, "project", "--batch-size", "20")
    assert stored_rows(pg_engine) == expected_rows(payments)
    assert _count(pg_engine, quarantine) == 0
    assert _count(pg_engine, quarantine) == 0  # redelivery was absorbed, not quarantined


@pytest.mark.parametrize("victim", ["relay", "projector"])
def test_relay_or_projector_killed_mid_run_with_kafka(
    victim: str, pg_url: str, pg_engine: Engine, kafka_broker: object
) -> None:
    topic = f"payments-{victim}-{random.randrange(10**9)}"
    env = {"CARDPAY_DATABASE_URL": pg_url,
           "CARDPAY_KAFKA_BOOTSTRAP": kafka_broker.bootstrap_servers,  # type: ignore[attr-defined]
           "CARDPAY_KAFKA_TOPIC": topic}
    kafka_broker.create_topic(topic, 3)  # type: ignore[attr-defined]
    payments = payment_events(1500, seed=12)
    write(pg_engine, payments, outbox_topic=topic)

    def published() -> int:
        return _count(pg_engine, outbox, outbox.c.published_at.is_not(None))

    if victim == "relay":
        _kill_midway(env, published, "relay", "--batch-size", "20")
        assert 0 < published() < _count(pg_engine, outbox)
    _finish(env, "relay")
    assert published() == _count(pg_engine, outbox)

    if victim == "projector":
        _kill_midway(env, lambda: _projected(pg_engine), "project", "--batch-size", "20")
        assert 0 < len(stored_rows(pg_engine)) < len(payments)
    _finish(env, "project", "--batch-size", "20")
    assert stored_rows(pg_engine) == expected_rows(payments)
    assert _count(pg_engine, quarantine) == 0
