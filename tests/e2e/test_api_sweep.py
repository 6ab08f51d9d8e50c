"""`cardpay api` as a real process runs the network sweep in its lifespan: a hold that lapsed
while nothing was running is released and recorded as expired, with no message sent, and
/metrics counts it."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import Engine

from tests.integration.test_network_sweep_cli import event_types, seed_hold_and_parked_clearing
from tests.support.api_process import running_api

pytestmark = pytest.mark.e2e


def test_the_api_process_expires_a_lapsed_hold_on_its_own(pg_url: str,
                                                           pg_engine: Engine) -> None:
    seed_hold_and_parked_clearing(pg_engine, datetime.now(UTC) - timedelta(days=8))
    with running_api(pg_url, CARDPAY_SWEEP_INTERVAL_S="0.2") as api:
        deadline = time.monotonic() + 30
        while event_types(pg_engine, "a1")[-1] != "AuthorizationExpired":
            assert time.monotonic() < deadline, "the API's sweep did not expire the hold"
            time.sleep(0.1)
        metrics = httpx.get(f"{api}/metrics", timeout=10).text
    assert "cardpay_network_sweep_holds_expired_total 1.0" in metrics
    assert "cardpay_network_sweep_exceptions_total 1.0" in metrics  # p9's parked clearing
