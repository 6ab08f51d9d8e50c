"""`cardpay exceptions` on real PostgreSQL, as a user runs it: a stuck saga retried to its
compensation, a card-network exception resolved with a note, and what is not an exception left
out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine

from cardpay.handlers.ports import QuarantineItem
from cardpay.postgres.uow import saga_uow_factory, unit_of_work_factory
from sagas.card_payment import KIND, REVERSAL_ADVICE
from sagas.engine.model import Effect, SagaInstance, Status, Waiting

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def cardpay(pg_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CARDPAY_")}
    return subprocess.run([sys.executable, "-m", "cardpay.cli.main", *args], cwd=ROOT,
                          env={**base, "CARDPAY_DATABASE_URL": pg_url},
                          capture_output=True, text=True, timeout=120)


def seed(engine: Engine) -> dict[str, int]:
    """A card-payment saga stuck on its reversal advice with its exception, a card-network
    exception, and a listener quarantine row (not an exception)."""
    advice = Effect("auth-1:1:undo:send_reversal_advice", REVERSAL_ADVICE,
                    {"payment_id": "auth-1", "amount": 850})
    stuck = SagaInstance("auth-1", KIND, version=4, status=Status.STUCK, stage="spending",
                         data={"spend": {"payment_id": "auth-1"}}, steps=1,
                         waiting=Waiting(advice, attempt=8, compensating=True),
                         problem="send_reversal_advice failed (temporary): network down")
    with saga_uow_factory(engine)() as uow:
        uow.sagas.save(stuck, 0)
        uow.add_exception(QuarantineItem(
            source=f"saga:{KIND}", key=f"{KIND}:auth-1:4", reason="compensation_failed",
            payload={"saga_id": "auth-1", "kind": KIND, "effect": REVERSAL_ADVICE,
                     "detail": "network down"}))
        uow.commit()
    with unit_of_work_factory(engine, None)() as uow:
        uow.quarantine.add(QuarantineItem(source="network", key="unmatched_return:r1",
                                          reason="unmatched_return", payload={"amount": 5}))
        uow.quarantine.add(QuarantineItem(source="listener:main", key="log:1",
                                          reason="undecodable", payload={}))
        uow.commit()
        ids = {row.key: row.id for row in uow.quarantine.list()}
    return ids


def test_exceptions_are_listed_retried_and_resolved(pg_url: str, pg_engine: Engine) -> None:
    ids = seed(pg_engine)
    saga_row, network_row = ids[f"{KIND}:auth-1:4"], ids["unmatched_return:r1"]

    listed = cardpay(pg_url, "exceptions", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "unmatched_return" in listed.stdout and "compensation_failed" in listed.stdout
    assert "undecodable" not in listed.stdout  # the listener's quarantine is not an exception

    shown = cardpay(pg_url, "exceptions", "show", str(saga_row))
    assert shown.returncode == 0 and '"effect": "send_reversal_advice"' in shown.stdout

    not_redoable = cardpay(pg_url, "exceptions", "retry", str(network_row))
    assert not_redoable.returncode == 1
    assert "not retryable" in not_redoable.stderr and "Traceback" not in not_redoable.stderr

    retried = cardpay(pg_url, "exceptions", "retry", str(saga_row))
    assert retried.returncode == 0, retried.stderr
    assert "saga auth-1 is compensating" in retried.stdout
    with saga_uow_factory(pg_engine)() as uow:
        saga = uow.sagas.load(KIND, ["auth-1"])["auth-1"]
        asked = uow.effects.claim([REVERSAL_ADVICE], 10)
    assert saga.status is Status.COMPENSATING and saga.version == 5
    assert [(r.request_id, r.attempt) for r in asked] == [(
        "auth-1:1:undo:send_reversal_advice", 1)]

    again = cardpay(pg_url, "exceptions", "retry", str(saga_row))
    assert again.returncode == 1 and "already resolved" in again.stderr

    no_note = cardpay(pg_url, "exceptions", "resolve", str(network_row), "--note", " ")
    assert no_note.returncode == 2 and "--note" in no_note.stderr
    resolved = cardpay(pg_url, "exceptions", "resolve", str(network_row), "--note",
                       "refunded the merchant by bank transfer")
    assert resolved.returncode == 0, resolved.stderr
    assert cardpay(pg_url, "exceptions", "list").stdout.strip() == "(no open exceptions)"
    everything = cardpay(pg_url, "exceptions", "list", "--all", "--json").stdout
    assert "refunded the merchant by bank transfer" in everything

    unknown = cardpay(pg_url, "exceptions", "show", str(ids["log:1"]))
    assert unknown.returncode == 1 and "no exception with id" in unknown.stderr
