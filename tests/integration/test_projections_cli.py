"""`cardpay projections reset` on real PostgreSQL (the Postgres event-log feed, no Kafka): one
transaction, refused under a running projector, and the next `project` rebuilds everything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import ColumnElement, Engine, Table, func, select

from cardpay.bootstrap.project import ProjectorBusy, reset_projection, running_projector
from cardpay.postgres.schema import consumer_positions, outbox
from tests.support.workload import (
    expected_rows,
    payment_events,
    read_model_rows,
    stored_rows,
    write,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _cardpay(pg_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CARDPAY_KAFKA_BOOTSTRAP"}
    return subprocess.run([sys.executable, "-m", "cardpay.cli.main", *args], cwd=ROOT,
                          env={**env, "CARDPAY_DATABASE_URL": pg_url}, capture_output=True,
                          text=True, timeout=120)


def _one_line(stderr: str) -> str:
    """The message of the single line `cardpay projections[ reset]: MESSAGE` on stderr."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    prefix, sep, message = lines[0].partition(": ")
    assert sep and prefix in ("cardpay projections", "cardpay projections reset"), lines[0]
    return message


def _count(engine: Engine, table: Table, *where: ColumnElement[bool]) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where))
                   .scalar_one())


def test_reset_then_project_rebuilds_the_read_model(pg_url: str, pg_engine: Engine) -> None:
    payments = payment_events(12, seed=8)
    write(pg_engine, payments, outbox_topic="cardpay.payments")
    assert _cardpay(pg_url, "project", "--until-idle").returncode == 0
    assert stored_rows(pg_engine) == expected_rows(payments)

    rows = read_model_rows(pg_engine)  # a row per payment, and the days' rows
    assert rows > len(payments)
    proc = _cardpay(pg_url, "projections", "reset", "payments")
    assert proc.returncode == 0, proc.stderr
    assert f"deleted {rows} read-model rows, 1 stored positions" in proc.stdout
    assert stored_rows(pg_engine) == {}
    assert _count(pg_engine, consumer_positions, consumer_positions.c.consumer == "payments") == 0
    assert _count(pg_engine, outbox, outbox.c.published_at.is_(None)) == sum(
        len(events) for events in payments)  # nothing was published: untouched

    assert _cardpay(pg_url, "project", "--until-idle").returncode == 0
    assert stored_rows(pg_engine) == expected_rows(payments)


def test_republish_marks_every_outbox_row_unpublished(pg_engine: Engine) -> None:
    payments = payment_events(5, seed=9)
    write(pg_engine, payments, outbox_topic="t")
    with pg_engine.begin() as conn:
        conn.execute(outbox.update().values(published_at=func.now()))
    result = reset_projection(pg_engine, "payments", republish=True)
    total = sum(len(events) for events in payments)
    assert result.republished == total
    assert _count(pg_engine, outbox, outbox.c.published_at.is_(None)) == total


def test_reset_is_refused_while_a_projector_runs(pg_url: str, pg_engine: Engine) -> None:
    write(pg_engine, payment_events(3, seed=10), outbox_topic="t")
    assert _cardpay(pg_url, "project", "--until-idle").returncode == 0
    with running_projector(pg_engine, "payments"):
        with pytest.raises(ProjectorBusy):
            reset_projection(pg_engine, "payments")
        proc = _cardpay(pg_url, "projections", "reset", "payments", "--republish")
        assert proc.returncode == 1
        assert _one_line(proc.stderr) == (
            "projector 'payments' is running; stop `cardpay project` first")
    assert len(stored_rows(pg_engine)) == 3  # nothing deleted
    assert _count(pg_engine, outbox, outbox.c.published_at.is_(None)) == _count(pg_engine, outbox)
    reset_projection(pg_engine, "payments")  # free again once it stopped
    assert stored_rows(pg_engine) == {}


def test_an_unknown_projector_is_a_usage_error(pg_url: str) -> None:
    proc = _cardpay(pg_url, "projections", "reset", "nope")
    assert proc.returncode == 2
    assert _one_line(proc.stderr) == "no projector named 'nope' (known: payments)"
