"""`cardpay sagas run|list` as a user runs them, on real PostgreSQL, with the simulator's advice
endpoint over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from cardpay.devstack.network_advices import AdviceRecorder
from cardpay.handlers.payments import PaymentService
from cardpay.postgres.uow import unit_of_work_factory
from domain import commands as c
from domain.money import EURE, Money

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def cardpay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CARDPAY_")}
    return subprocess.run([sys.executable, "-m", "cardpay.cli.main", *args], cwd=ROOT,
                          env={**base, **env}, capture_output=True, text=True, timeout=120)


def test_run_until_idle_starts_the_saga_and_list_shows_what_it_waits_for(
        pg_url: str, pg_engine: Engine) -> None:
    now = datetime.now(UTC)
    PaymentService(unit_of_work_factory(pg_engine, "t")).submit(c.AuthorizePayment(
        command_id="a1", payment_id="auth-1", at=now, account="0x" + "5a" * 20,
        amount=Money(10**18, EURE), merchant="Shop", mcc="5411",
        expires_at=now + timedelta(days=7)))
    with AdviceRecorder(SECRET) as recorder:
        env = {"CARDPAY_DATABASE_URL": pg_url, "CARDPAY_WEBHOOK_SECRETS": SECRET,
               "CARDPAY_NETWORK_ADVICE_URL": recorder.url, "CARDPAY_SAGA_POLL_S": "0.05"}
        run = cardpay(env, "sagas", "run", "--until-idle")
        assert run.returncode == 0, run.stderr
        assert "routed 1 feed messages" in run.stdout
        assert recorder.advices == {}  # the spend is not late: nothing to tell the network

    listed = cardpay(env, "sagas", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["kind"], row["saga_id"], row["status"], row["stage"], row["waiting_for"],
            row["effect_status"]) == ("card_payment", "auth-1", "running", "spending",
                                      "submit_spend", "pending")
    due = datetime.fromisoformat(row["next_timer"])
    assert now + timedelta(minutes=9) < due < now + timedelta(minutes=11)  # the spend deadline

    stuck = cardpay(env, "sagas", "list", "--status", "stuck")
    assert stuck.returncode == 0 and "(no sagas)" in stuck.stdout

    bad = cardpay(env, "sagas", "list", "--status", "lost")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    assert "Traceback" not in bad.stderr
