"""The card-network API on real PostgreSQL: signatures, delivery idempotency, atomicity of the
delivery record with the effect, and quarantine of bad bodies.

The effects are the test doubles of `tests.support.network` (the real decision and payment
effects are built elsewhere); what is tested here is what the ingress guarantees around them.
"""

from __future__ import annotations

import base64
import copy
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from starlette.testclient import TestClient

from cardpay.api.app import examples
from cardpay.api.models import EVENT_MODELS, AuthorizationRequestBody, ClearingBody
from cardpay.bootstrap.api import build_app
from cardpay.handlers.network import EffectUnavailable
from cardpay.handlers.ports import QuarantineItem, UnitOfWork
from cardpay.settings import Settings
from domain.network import AuthorizationDecision, AuthorizationRequest
from tests.support.network import (
    OLD_SECRET,
    SECRET,
    RecordingEffects,
    claims,
    counts,
    dumps,
    quarantined,
    signed_headers,
)

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

AUTH = "/v1/network/authorizations"
EVENTS = "/v1/network/events"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def client(pg_engine: Engine, registry: CollectorRegistry) -> Iterator[TestClient]:
    effects = RecordingEffects()
    settings = Settings(database_url="unused", webhook_secrets=(SECRET, OLD_SECRET))
    app = build_app(settings, pg_engine, decide=effects.decide, apply=effects.apply,
                    registry=registry)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def auth_body(**changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(examples(AuthorizationRequestBody)[0]), **changes}


def clearing_body(**changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(examples(ClearingBody)[0]), **changes}


def post(client: TestClient, path: str, body: bytes, webhook_id: str, **sign: Any) -> Any:
    return client.post(path, content=body, headers=signed_headers(body, webhook_id, **sign))


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# -- decisions and messages ----------
def test_an_authorization_is_answered_with_the_decision_and_recorded_once(
        client: TestClient, pg_engine: Engine) -> None:
    full = post(client, AUTH, dumps(auth_body()), "w1")
    assert full.status_code == 200
    assert full.json() == {"authorization_id": "auth_01", "approved": True,
                           "approved_amount": 850, "currency": "EUR", "partial": False,
                           "decline_reason": None, "decline_class": None}
    partial = post(client, AUTH, dumps(auth_body(authorization_id="auth_p", amount=25_000)), "w2")
    assert partial.json()["approved_amount"] == 10_000 and partial.json()["partial"] is True
    declined = post(client, AUTH, dumps(auth_body(authorization_id="auth_d",
                                                  card_id="card_unknown")), "w3")
    assert declined.status_code == 200
    assert (declined.json()["approved"], declined.json()["decline_reason"],
            declined.json()["decline_class"]) == (False, "unknown_card", "hard")
    assert claims(pg_engine) == {"decision:auth_01", "decision:auth_p", "decision:auth_d"}
    assert counts(pg_engine)["network_deliveries"] == 3


def test_every_message_type_is_applied_from_its_documented_example(
        client: TestClient, pg_engine: Engine) -> None:
    for number, model in enumerate(EVENT_MODELS):
        example = examples(model)[0]
        reply = post(client, EVENTS, dumps(example), f"ev{number}")
        assert reply.status_code == 200, reply.text
        assert reply.json()["type"] == example["type"]
        assert reply.json()["status"] == "applied"
    assert len(claims(pg_engine)) == len(EVENT_MODELS)
    assert counts(pg_engine)["network_deliveries"] == len(EVENT_MODELS)


# -- delivery idempotency ----------
def test_a_repeat_returns_the_first_answer_and_changes_nothing(
        client: TestClient, pg_engine: Engine) -> None:
    body = dumps(auth_body())
    first = post(client, AUTH, body, "w1")
    before = counts(pg_engine)
    # a later delivery of the same message (new timestamp, so a new signature)
    again = post(client, AUTH, body, "w1", timestamp=int(time.time()) + 2)
    assert (again.status_code, again.json()) == (first.status_code, first.json())
    assert counts(pg_engine) == before


def test_the_same_id_with_another_body_is_refused_409_and_changes_nothing(
        client: TestClient, pg_engine: Engine) -> None:
    assert post(client, EVENTS, dumps(clearing_body()), "w1").status_code == 200
    before, seen = counts(pg_engine), claims(pg_engine)
    other = post(client, EVENTS, dumps(clearing_body(amount=99_999, clearing_id="clr_x")), "w1")
    assert other.status_code == 409
    assert "another body" in other.json()["reason"]
    assert counts(pg_engine) == before and claims(pg_engine) == seen


def test_a_failed_effect_leaves_no_delivery_record_and_the_retry_is_processed(
        client: TestClient, pg_engine: Engine) -> None:
    before = counts(pg_engine)
    failed = post(client, EVENTS, dumps(clearing_body(clearing_id="clr_boom")), "w1")
    assert failed.status_code == 500
    # the effect wrote its row, then failed: the row and the delivery record rolled back together
    assert counts(pg_engine) == before
    ok = post(client, EVENTS, dumps(clearing_body()), "w2")
    assert ok.status_code == 200
    assert claims(pg_engine) == {"effect:clearing:clr_01"}


def test_concurrent_deliveries_of_one_id_apply_the_effect_once(
        client: TestClient, pg_engine: Engine) -> None:
    body = dumps(auth_body())
    headers = signed_headers(body, "w-race")
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: client.post(AUTH, content=body, headers=headers),
                                range(8)))
    assert {r.status_code for r in replies} == {200}
    assert all(r.json() == replies[0].json() for r in replies)
    assert counts(pg_engine)["network_deliveries"] == 1
    assert claims(pg_engine) == {"decision:auth_01"}


# -- signatures ----------
def test_unsigned_badly_signed_stale_and_future_requests_get_401_and_change_nothing(
        client: TestClient, pg_engine: Engine, registry: CollectorRegistry) -> None:
    body = dumps(auth_body())
    now = int(time.time())
    good = signed_headers(body, "w1")
    cases: list[tuple[str, dict[str, Any]]] = [
        ("unsigned", {}),
        ("unsigned", {k: v for k, v in good.items() if k != "webhook-signature"}),
        ("bad_signature", signed_headers(body, "w1", secret="whsec_" + "QUJD" * 8)),
        ("bad_signature", {**good, "webhook-id": "w2"}),  # signature of another id
        ("bad_signature", signed_headers(b"{}", "w1") | {"webhook-id": "w1"}),  # another body
        ("stale", signed_headers(body, "w1", timestamp=now - 6 * 60)),
        ("future", signed_headers(body, "w1", timestamp=now + 6 * 60)),
        ("malformed", {**good, "webhook-timestamp": "yesterday"}),
        ("malformed", {**good, "webhook-signature": "v1"}),
        ("malformed", {**good, "webhook-id": "é".encode("latin-1") * 3}),
        ("malformed", {**good, "webhook-id": "x" * 257}),
    ]
    before = counts(pg_engine)
    for reason, headers in cases:
        for path in (AUTH, EVENTS):
            reply = client.post(path, content=body, headers=headers)
            assert reply.status_code == 401, (reason, reply.text)
            assert reply.json()["reason"] == reason
    assert counts(pg_engine) == before
    for reason in ("unsigned", "bad_signature", "stale", "future", "malformed"):
        expected = 2 * sum(1 for r, _ in cases if r == reason)
        assert metric(registry, "cardpay_webhook_rejections_total", reason=reason) == expected
    # an unsigned bad body is not quarantined either: without the secret nothing is stored
    assert client.post(EVENTS, content=b"not json").status_code == 401
    assert counts(pg_engine) == before


def test_a_body_over_the_limit_is_refused_413_unread_and_unstored(
        client: TestClient, pg_engine: Engine, registry: CollectorRegistry) -> None:
    from cardpay.api.app import MAX_BODY_BYTES

    before = counts(pg_engine)
    big = dumps(clearing_body(clearing_id="c" * 100)) + b" " * MAX_BODY_BYTES
    reply = post(client, EVENTS, big, "w-big")
    assert reply.status_code == 413 and reply.json()["error"] == "too_large"
    assert metric(registry, "cardpay_webhook_rejections_total", reason="too_large") == 1
    assert counts(pg_engine) == before


def test_a_replay_of_a_signed_id_with_another_body_is_refused(
        client: TestClient, pg_engine: Engine) -> None:
    """An attacker who captured a delivery cannot reuse its headers on a new body (401), and a
    correctly signed different body under a used id is refused (409)."""
    body = dumps(auth_body())
    headers = signed_headers(body, "w1")
    assert client.post(AUTH, content=body, headers=headers).status_code == 200
    before = counts(pg_engine)
    forged = dumps(auth_body(amount=9_000))
    assert client.post(AUTH, content=forged, headers=headers).status_code == 401
    assert post(client, AUTH, forged, "w1").status_code == 409
    assert counts(pg_engine) == before


def test_rotated_secrets_are_all_accepted_alone_or_together(client: TestClient) -> None:
    body = dumps(auth_body())
    old = signed_headers(body, "w-old", secret=OLD_SECRET)
    assert client.post(AUTH, content=body, headers=old).status_code == 200
    ts = int(time.time())
    new = signed_headers(body, "w-both", timestamp=ts)
    also_old = signed_headers(body, "w-both", secret=OLD_SECRET, timestamp=ts)
    unknown = signed_headers(body, "w-both", secret="whsec_" + "QUJD" * 8, timestamp=ts)
    both = {**new, "webhook-signature": " ".join(
        [unknown["webhook-signature"], also_old["webhook-signature"],
         new["webhook-signature"]])}
    assert client.post(AUTH, content=body, headers=both).status_code == 200


# -- bad bodies ----------
BAD_BODIES: list[tuple[str, bytes, int, str]] = [
    ("empty", b"", 400, "not_json"),
    ("not JSON", b"amount=850&currency=EUR", 400, "not_json"),
    ("JSON array", b"[1, 2, 3]", 422, "schema"),
    ("JSON string", b'"clearing"', 422, "schema"),
    ("huge number", dumps(clearing_body()).replace(b"700", b"9" * 5000), 400, "not_json"),
    ("over the amount bound", dumps(clearing_body(amount=10**16)), 422, "schema"),
    ("float amount", dumps(clearing_body(amount=7.0)), 422, "schema"),
    ("fractional amount", dumps(clearing_body(amount=7.5)), 422, "schema"),
    ("string amount", dumps(clearing_body(amount="700")), 422, "schema"),
    ("negative amount", dumps(clearing_body(amount=-700)), 422, "schema"),
    ("zero amount", dumps(clearing_body(amount=0)), 422, "schema"),
    ("exponent amount", dumps(clearing_body()).replace(b"700", b"7e2"), 422, "schema"),
    ("missing field", dumps({k: v for k, v in clearing_body().items() if k != "amount"}),
     422, "schema"),
    ("missing type", dumps({k: v for k, v in clearing_body().items() if k != "type"}),
     422, "schema"),
    ("unknown type", dumps(clearing_body(type="chargeback")), 422, "unknown_type"),
    ("unknown field", dumps(clearing_body(surcharge=5)), 422, "schema"),
    ("wrong currency", dumps(clearing_body(currency="JPY")), 422, "schema"),
    ("naive time", dumps(clearing_body(network_time="2026-12-01T10:15:00")), 422, "schema"),
    ("NUL in an id", dumps(clearing_body(clearing_id="clr\u0000x")), 422, "schema"),
    ("NUL in the type", dumps(clearing_body(type="clearing\u0000")), 422, "unknown_type"),
    ("non-UTF-8 bytes", b'{"type": "clearing", "clearing_id": "\xff\xfe"}', 400, "not_json"),
    ("raw NUL byte", b"\x00\x00", 400, "not_json"),
    ("report net not credit minus debit", dumps({
        **examples(EVENT_MODELS[-1])[0],
        "lines": [{"business_mode": "issuer", "amount_type": "total", "count": 1,
                   "credit_amount": 0, "debit_amount": 500, "net_amount": 500}]}),
     422, "invalid"),
]


@pytest.mark.parametrize(("case", "body", "status", "code"), BAD_BODIES,
                         ids=[case[0] for case in BAD_BODIES])
def test_a_signed_bad_body_is_refused_quarantined_with_its_raw_body_and_counted(
        client: TestClient, pg_engine: Engine, registry: CollectorRegistry, case: str,
        body: bytes, status: int, code: str) -> None:
    before = counts(pg_engine)
    reply = post(client, EVENTS, body, "w-bad")
    assert reply.status_code == status, reply.text
    reason = reply.json()["reason"]
    assert reason and "\n" not in reason
    rows = quarantined(pg_engine)
    assert len(rows) == 1
    row = rows[0]
    assert (row["source"], row["key"], row["reason"]) == ("network", "webhook:w-bad", reason)
    assert base64.b64decode(row["payload"]["body_base64"]) == body
    assert row["payload"]["headers"]["webhook-id"] == "w-bad"
    assert metric(registry, "cardpay_network_rejected_total", reason=code) == 1
    # the refusal is recorded as the delivery's answer; nothing else changed
    assert counts(pg_engine) == {**before, "quarantine": before["quarantine"] + 1,
                                 "network_deliveries": before["network_deliveries"] + 1}
    # a repeat of the same bad delivery: the same answer, no second row, not counted again
    again = post(client, EVENTS, body, "w-bad")
    assert (again.status_code, again.json()) == (status, reply.json())
    assert len(quarantined(pg_engine)) == 1
    assert metric(registry, "cardpay_network_rejected_total", reason=code) == 1


def test_bad_authorization_bodies_are_refused_too(client: TestClient, pg_engine: Engine) -> None:
    reply = post(client, AUTH, dumps(auth_body(amount=8.5)), "w-a")
    assert reply.status_code == 422 and reply.json()["reason"].startswith("amount")
    assert quarantined(pg_engine)[0]["key"] == "webhook:w-a"
    assert claims(pg_engine) == set()


# -- the rest of the surface ----------
def test_health_readiness_metrics_and_latency_by_route_template(
        client: TestClient, registry: CollectorRegistry) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    post(client, EVENTS, dumps(clearing_body()), "w1")
    client.get("/no/such/path/123")
    text = client.get("/metrics").text
    assert 'cardpay_api_request_seconds_count{route="/v1/network/events",status="200"} 1.0' \
        in text
    assert 'route="unmatched",status="404"' in text
    assert "/no/such/path" not in text


def test_readyz_is_503_when_the_database_does_not_answer(registry: CollectorRegistry) -> None:
    from sqlalchemy import create_engine

    dead = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")
    settings = Settings(database_url="unused", webhook_secrets=(SECRET,))
    app = build_app(settings, dead, registry=registry)
    with TestClient(app) as c:
        reply = c.get("/readyz")
    assert reply.status_code == 503 and reply.json()["error"] == "not_ready"
    dead.dispose()


def test_when_an_effect_is_unavailable_a_signed_message_gets_503_and_nothing_is_recorded(
        pg_engine: Engine, registry: CollectorRegistry) -> None:
    def unavailable(uow: UnitOfWork, request: AuthorizationRequest,
                    received_at: datetime) -> AuthorizationDecision:
        uow.quarantine.add(QuarantineItem("test", "k", "written, then rolled back", {}))
        raise EffectUnavailable("the ledger is down")

    settings = Settings(database_url="unused", webhook_secrets=(SECRET,))
    with TestClient(build_app(settings, pg_engine, decide=unavailable,
                              registry=registry)) as c:
        before = counts(pg_engine)
        reply = post(c, AUTH, dumps(auth_body()), "w1")
        assert reply.status_code == 503 and "ledger is down" in reply.json()["reason"]
        assert counts(pg_engine) == before
