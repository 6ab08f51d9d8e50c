"""`cardpay network sweep` on real PostgreSQL, as a user runs it (a subprocess with
CARDPAY_DATABASE_URL), and the sweep loop of `cardpay api`: it releases lapsed holds on a timer,
counts them in /metrics, and a failing sweep never takes the API down."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from cardpay.bootstrap.api import build_app
from cardpay.bootstrap.network_sweep import sweep_forever
from cardpay.handlers.card_network import CardNetworkEffects
from cardpay.handlers.network_timers import PARKED_REASON, SweepResult
from cardpay.handlers.ports import Card, ChainReading
from cardpay.metrics.api import ApiMetrics
from cardpay.postgres.uow import unit_of_work_factory
from cardpay.settings import Settings
from domain.money import EUR, EURE, Money
from domain.network import AuthorizationRequest, Clearing, Merchant
from tests.support.api_process import ctrl_c_default

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAFE = "0x" + "5a" * 20
TOKEN = "0x" + "e0" * 20
SHOP = Merchant(name="Bakery", merchant_id="m1", country="DE", mcc="5411")
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _cardpay(pg_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CARDPAY_")}
    return subprocess.run([sys.executable, "-m", "cardpay.cli.main", *args], cwd=ROOT,
                          env={**base, "CARDPAY_DATABASE_URL": pg_url, **env},
                          capture_output=True, text=True, timeout=120)


def seed_hold_and_parked_clearing(engine: Engine, at: datetime) -> None:
    """Card-1 with 100.00 EURe; authorization a1 (10.00) and clearing c9 of p9 (parked) at `at`."""
    effects = CardNetworkEffects(clock=lambda: at)
    with unit_of_work_factory(engine, None)() as uow:
        uow.cards.add(Card("card-1", SAFE, TOKEN, EURE),
                      ChainReading(10, "0x" + "10" * 32, 10**20))
        decision = effects.decide(uow, AuthorizationRequest(
            authorization_id="a1", card_id="card-1", amount=Money(1_000, EUR),
            merchant=SHOP, network_time=at), at)
        assert decision.approved
        effects.apply(uow, Clearing(network_time=at, clearing_id="c9", authorization_id="p9",
                                    card_id="card-1", amount=Money(700, EUR), final=True))
        uow.commit()


def event_types(engine: Engine, payment_id: str) -> list[str]:
    with unit_of_work_factory(engine, None)() as uow:
        return [type(e).__name__ for e in uow.events.load(payment_id)]


def test_sweep_once_json_expires_lapsed_holds_and_raises_parked_clearings(
        pg_url: str, pg_engine: Engine) -> None:
    seed_hold_and_parked_clearing(pg_engine, datetime.now(UTC) - timedelta(days=8))
    first = _cardpay(pg_url, "network", "sweep", "--once", "--json")
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["holds_expired"] == 1 and result["payments_expired"] == ["a1"]
    assert result["exceptions_raised"] == ["p9"] and result["failures"] == []
    assert event_types(pg_engine, "a1") == ["PaymentAuthorized", "AuthorizationExpired"]
    with unit_of_work_factory(pg_engine, None)() as uow:
        row, = [r for r in uow.quarantine.list("network") if r.reason == PARKED_REASON]
    assert row.payload["payment_id"] == "p9"
    again = _cardpay(pg_url, "network", "sweep", "--once", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) | {"batches": 0} == SweepResult().as_json()


def test_the_parked_timeout_setting_is_followed(pg_url: str, pg_engine: Engine) -> None:
    seed_hold_and_parked_clearing(pg_engine, datetime.now(UTC) - timedelta(days=2))
    kept = _cardpay(pg_url, "network", "sweep", "--once", "--json")
    assert json.loads(kept.stdout)["exceptions_raised"] == []  # 72 h by default
    short = _cardpay(pg_url, "network", "sweep", "--once",
                     CARDPAY_PARKED_CLEARING_TIMEOUT="1d")
    assert short.returncode == 0, short.stderr
    assert "1 parked clearings raised as exceptions" in short.stdout and "p9" in short.stdout


@pytest.mark.parametrize(("args", "env", "says"), [
    (["--once", "--interval", "5"], {}, "--interval is for repeated sweeps"),
    (["--interval", "0"], {}, "must be"),
    (["--interval", "soon"], {}, "--interval"),
    ([], {"CARDPAY_SWEEP_INTERVAL_S": "0"}, "CARDPAY_SWEEP_INTERVAL_S is 0"),
    (["--once"], {"CARDPAY_PARKED_CLEARING_TIMEOUT": "72"}, "CARDPAY_PARKED_CLEARING_TIMEOUT"),
    (["--once"], {"CARDPAY_SWEEP_INTERVAL_S": "often"}, "CARDPAY_SWEEP_INTERVAL_S"),
])
def test_bad_input_is_one_line(pg_url: str, args: list[str], env: dict[str, str],
                               says: str) -> None:
    proc = _cardpay(pg_url, "network", "sweep", *args, **env)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr and says in lines[0], proc.stderr


def test_the_help_says_what_the_sweep_does() -> None:
    proc = subprocess.run([sys.executable, "-m", "cardpay.cli.main", "network", "sweep",
                           "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for words in ("--once", "--interval", "--json", "CARDPAY_PARKED_CLEARING_TIMEOUT",
                  "parked_clearing_unmatched", "7011"):
        assert words in proc.stdout


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_the_api_sweeps_in_the_background(pg_engine: Engine) -> None:
    seed_hold_and_parked_clearing(pg_engine, datetime.now(UTC) - timedelta(days=8))
    settings = Settings(database_url="postgresql://unused/x", webhook_secrets=(SECRET,),
                        sweep_interval_s=0.05)
    app = build_app(settings, pg_engine, registry=CollectorRegistry())
    with TestClient(app) as client:
        deadline = time.monotonic() + 20
        while event_types(pg_engine, "a1")[-1] != "AuthorizationExpired":
            assert time.monotonic() < deadline, "the background sweep did not run"
            time.sleep(0.05)
        metrics = client.get("/metrics").text
        assert client.get("/healthz").status_code == 200
    assert _metric(metrics, "cardpay_network_sweep_holds_expired_total") == 1
    assert _metric(metrics, "cardpay_network_sweep_exceptions_total") == 1


def test_a_failing_sweep_is_counted_and_the_loop_goes_on() -> None:
    class Broken:
        runs = 0

        def run(self) -> SweepResult:
            Broken.runs += 1
            raise RuntimeError("database went away")

    metrics = ApiMetrics(CollectorRegistry())

    async def briefly() -> None:
        task = asyncio.create_task(sweep_forever(Broken(), 0.01, metrics))  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        assert not task.done()  # still looping
        task.cancel()

    asyncio.run(briefly())
    assert Broken.runs >= 3
    failures = metrics.registry.get_sample_value("cardpay_network_sweep_failures_total")
    assert failures is not None and failures >= Broken.runs - 1  # the last may be cut short


def test_no_background_sweep_when_the_interval_is_zero(pg_engine: Engine) -> None:
    seed_hold_and_parked_clearing(pg_engine, datetime.now(UTC) - timedelta(days=8))
    settings = Settings(database_url="postgresql://unused/x", webhook_secrets=(SECRET,),
                        sweep_interval_s=0)
    with TestClient(build_app(settings, pg_engine, registry=CollectorRegistry())) as client:
        assert client.get("/healthz").status_code == 200
        time.sleep(0.3)
    assert event_types(pg_engine, "a1") == ["PaymentAuthorized"]


def test_without_once_it_sweeps_every_interval_until_ctrl_c(pg_url: str,
                                                            pg_engine: Engine) -> None:
    import signal

    seed_hold_and_parked_clearing(pg_engine, datetime.now(UTC) - timedelta(days=8))
    base = {k: v for k, v in os.environ.items() if not k.startswith("CARDPAY_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cardpay.cli.main", "network", "sweep", "--interval", "0.1",
         "--json"], cwd=ROOT, env={**base, "CARDPAY_DATABASE_URL": pg_url},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_default)
    try:
        assert proc.stdout is not None
        first, second, third = (json.loads(proc.stdout.readline()) for _ in range(3))
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert (first["holds_expired"], first["exceptions_raised"]) == (1, ["p9"])
    assert second["holds_expired"] == third["holds_expired"] == 0
    assert second["exceptions_raised"] == third["exceptions_raised"] == []
    assert proc.returncode == 130 and stderr.strip() == "cardpay network sweep: interrupted"
