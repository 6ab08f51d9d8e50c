"""`cardpay api` as a real process on a free port against the test database, spoken to with
httpx as the card network would: signed messages, unsigned ones, a signed bad body; and its
one-line refusals to start (no secret, a busy port)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine

from tests.support.api_process import running_api
from tests.support.cli import message_lines, run_cardpay
from tests.support.network import SECRET, counts, dumps, quarantined, signed_headers

pytestmark = pytest.mark.e2e

AUTHORIZATION = {"authorization_id": "auth_e2e", "card_id": "card_01", "amount": 850,
                 "currency": "EUR", "network_time": "2026-12-01T10:15:00Z",
                 "merchant": {"name": "Shop", "id": "m1", "country": "DE", "mcc": "5411"}}


@pytest.fixture
def api(pg_url: str) -> Iterator[str]:
    with running_api(pg_url) as base:
        yield base


def test_the_api_process_answers_the_network(api: str, pg_engine: Engine) -> None:
    with httpx.Client(base_url=api, timeout=10) as client:
        assert client.get("/readyz").json() == {"status": "ready"}
        assert "NetworkEventBody" in client.get("/openapi.json").json()["components"]["schemas"]
        before = counts(pg_engine)

        body = dumps(AUTHORIZATION)
        unsigned = client.post("/v1/network/authorizations", content=body)
        assert (unsigned.status_code, unsigned.json()["reason"]) == (401, "unsigned")

        # signed and valid: decided (no such card: a hard decline) and recorded once
        signed = client.post("/v1/network/authorizations", content=body,
                             headers=signed_headers(body, "e2e-1"))
        assert signed.status_code == 200, signed.text
        assert (signed.json()["approved"], signed.json()["decline_reason"]) == (
            False, "unknown_card")
        again = client.post("/v1/network/authorizations", content=body,
                            headers=signed_headers(body, "e2e-1"))
        assert again.json() == signed.json()
        after = counts(pg_engine)
        assert after["network_deliveries"] == before["network_deliveries"] + 1

        bad = b'{"type": "clearing", "amount": 8.5}'
        refused = client.post("/v1/network/events", content=bad,
                              headers=signed_headers(bad, "e2e-2"))
        assert refused.status_code == 422
        [row] = quarantined(pg_engine)
        assert (row["source"], row["key"], row["payload"]["body"]) == (
            "network", "webhook:e2e-2", bad.decode())

        metrics = client.get("/metrics").text
        assert 'cardpay_webhook_rejections_total{reason="unsigned"} 1.0' in metrics
        assert 'cardpay_network_rejected_total{reason="schema"} 1.0' in metrics
        assert 'cardpay_api_request_seconds_count{route="/v1/network/events",status="422"} 1.0' \
            in metrics


def test_the_api_refuses_to_start_without_a_secret_or_on_a_busy_port(pg_url: str) -> None:
    no_secret = run_cardpay(("api",), {"CARDPAY_DATABASE_URL": pg_url})
    assert no_secret.returncode == 2
    assert message_lines(no_secret.stderr) == [
        "cardpay api: CARDPAY_WEBHOOK_SECRETS is not set: give the card network's whsec_... "
        "secret(s), comma separated"]

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = run_cardpay(("api", "--port", str(port)),
                           {"CARDPAY_DATABASE_URL": pg_url, "CARDPAY_WEBHOOK_SECRETS": SECRET})
    assert busy.returncode == 1
    assert message_lines(busy.stderr) == [
        f"cardpay api: port {port} on 127.0.0.1 is already in use; stop what uses it or choose "
        "another (--port or CARDPAY_API_PORT)"]
