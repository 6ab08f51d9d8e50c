"""kill -9 of `cardpay sagas run` at seeded moments, then a restart: the same final state as an
uninterrupted run, and the network told once per payment.

Every approved payment here waits for a spend nobody sends (no relayer), so each saga's deadline
fires, the payment is reversed and the network gets a reversal advice: a timer, a domain
command, a withdrawal and an HTTP side effect per payment, with the worker killed between any
two of them. The advice endpoint keeps advices by idempotency key; a delivery repeated after a
kill is allowed, a second advice is not.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text

from cardpay.devstack.network_advices import AdviceRecorder
from cardpay.handlers.payments import PaymentService
from cardpay.postgres.engine import make_engine
from cardpay.postgres.schema import events, quarantine
from cardpay.postgres.uow import unit_of_work_factory
from domain import commands as c
from domain.money import EURE, Money
from tests.support.api_process import env_for
from tests.support.network import SECRET

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
PAYMENTS = 30
SEED = 8


@pytest.fixture
def recorder() -> Iterator[AdviceRecorder]:
    with AdviceRecorder(SECRET) as r:
        yield r


def authorize_all(engine: Engine) -> None:
    now = datetime.now(UTC)
    service = PaymentService(unit_of_work_factory(engine, "t"))
    for i in range(PAYMENTS):
        service.submit(c.AuthorizePayment(
            command_id=f"auth-{i}", payment_id=f"auth-{i}", at=now,
            account="0x" + f"{i % 7 + 1:02x}" * 20, amount=Money((i + 1) * 10**17, EURE),
            merchant="Shop", mcc="5411", expires_at=now + timedelta(days=7)))


def worker(pg_url: str, advice_url: str, *args: str) -> subprocess.Popen[str]:
    env = env_for(pg_url, CARDPAY_NETWORK_ADVICE_URL=advice_url, CARDPAY_SPEND_TIMEOUT="2s",
                  CARDPAY_SAGA_POLL_S="0.05")
    return subprocess.Popen([sys.executable, "-m", "cardpay.cli.main", "sagas", "run", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(pg_url: str, advice_url: str) -> None:
    """Route what is left, wait past every deadline, run until nothing is left to do."""
    for pause in (0.0, 2.5):
        time.sleep(pause)
        done = worker(pg_url, advice_url, "--until-idle")
        _, err = done.communicate(timeout=180)
        assert done.returncode == 0, err[-3000:]


def state(engine: Engine) -> dict[str, Any]:
    """What must not depend on kills: per payment its event types in order, per saga its
    status, and the exceptions."""
    with engine.connect() as conn:
        history: dict[str, list[str]] = {}
        for row in conn.execute(select(events.c.stream_id, events.c.type)
                                .order_by(events.c.stream_id, events.c.version)):
            history.setdefault(row.stream_id, []).append(row.type)
        sagas = {r.saga_id: (r.status, r.stage) for r in conn.execute(
            text("SELECT saga_id, status, stage FROM saga_instances"))}
        effects = sorted((r.request_id, r.status) for r in conn.execute(
            text("SELECT request_id, status FROM saga_effects")))
        problems = conn.execute(select(quarantine.c.reason)).scalars().all()
    return {"history": history, "sagas": sagas, "effects": effects, "problems": problems}


def run(pg_url: str, recorder: AdviceRecorder, kills: int,
        progress: list[int] | None = None) -> dict[str, Any]:
    """`kills` seeded kill points: the first while the worker starts up, the others as soon as
    the network has received a seeded number of advices (the worker is then in the middle of
    sending them; the deadlines fired and the payments were reversed in one transaction)."""
    engine = make_engine(pg_url)
    try:
        authorize_all(engine)
        rng = random.Random(SEED)
        targets = sorted(rng.sample(range(1, PAYMENTS), kills - 1)) if kills > 1 else []
        for k in range(kills):
            proc = worker(pg_url, recorder.url)
            if k == 0:
                time.sleep(rng.uniform(0.3, 1.5))
            else:
                deadline = time.monotonic() + 60
                while len(recorder.advices) < targets[k - 1]:
                    assert time.monotonic() < deadline and proc.poll() is None
                    time.sleep(0.005)
            proc.kill()  # SIGKILL: no cleanup, a transaction may be open
            proc.wait(timeout=30)
            if progress is not None:
                progress.append(len(recorder.advices))
        finish(pg_url, recorder.url)
        return state(engine)
    finally:
        engine.dispose()


def test_kill_9_of_the_saga_worker_changes_nothing_in_the_end(
        make_db: Any, recorder: AdviceRecorder) -> None:
    calm = run(make_db(), recorder, kills=0)
    calm_advices = dict(recorder.advices)
    assert sorted(a["authorization_id"] for a in calm_advices.values()) == sorted(
        f"auth-{i}" for i in range(PAYMENTS))

    with AdviceRecorder(SECRET) as killed_recorder:
        progress: list[int] = []
        killed = run(make_db(), killed_recorder, kills=4, progress=progress)
        print("advices received at each kill:", progress)
        # each kill came before the end of the work
        assert all(sent < PAYMENTS for sent in progress), progress
        assert killed == calm
        # one advice per payment, the same keys; repeated deliveries are the network's to drop
        assert killed_recorder.advices.keys() == calm_advices.keys()
        assert killed_recorder.deliveries >= PAYMENTS

    # every compensation resumed its saga (a spend landing late would still be refunded)
    assert set(calm["sagas"].values()) == {("running", "reversed")}
    assert calm["problems"] == []
    assert all(h[-1] == "PaymentReversed" for h in calm["history"].values())
