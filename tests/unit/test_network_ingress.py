"""The card network's messages, the decision's rules, the wire models and their OpenAPI document,
signature verification and the ingress's outcomes on the in-memory fakes (no I/O)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from cardpay.api import create_app
from cardpay.api.app import examples, one_line
from cardpay.api.models import AUTHORIZATION, EVENT_MODELS, EVENTS, AuthorizationRequestBody
from cardpay.api.signatures import SignatureRejected, SignatureVerifier, sign
from cardpay.handlers.card_network import PastDeadline
from cardpay.handlers.exceptions import ExceptionsQueue
from cardpay.handlers.network import EffectUnavailable, NetworkIngress, Received
from cardpay.handlers.ports import UnitOfWork
from cardpay.metrics.api import ApiMetrics
from cardpay.settings import Settings, SettingsError
from domain.errors import CurrencyMismatch, InvalidNetworkMessage, NaiveTimestamp
from domain.money import EUR, EURE, GBP, GBPE, USD, USDCE, Currency, Money, to_token
from domain.network import (
    ASYNC_MESSAGES,
    AmountType,
    AuthorizationDecision,
    AuthorizationRequest,
    BusinessMode,
    DeclineClass,
    DeclineReason,
    Merchant,
    NetworkMessage,
    SettlementLine,
)
from tests.fakes.storage import FakeDatabase
from tests.fakes.tokens import InMemoryTokenStore
from tests.support.network import OLD_SECRET, SECRET, dumps, signed_headers

pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

T = datetime(2026, 12, 1, 10, 15, tzinfo=UTC)
SHOP = Merchant(name="Shop", merchant_id="m1", country="DE", mcc="5411")


def request(units: int = 850, *, partial: bool = False,
            currency: Currency = EUR) -> AuthorizationRequest:
    return AuthorizationRequest(authorization_id="a1", card_id="c1",
                                amount=Money(units, currency), merchant=SHOP, network_time=T,
                                partial_approval_supported=partial)


# -- money and messages ----------
def test_network_amounts_convert_exactly_to_their_card_token() -> None:
    assert to_token(Money(850, EUR)) == Money(85 * 10**17, EURE)
    assert to_token(Money(850, GBP)) == Money(85 * 10**17, GBPE)
    assert to_token(Money(850, USD)) == Money(8_500_000, USDCE)
    with pytest.raises(CurrencyMismatch):
        to_token(Money(1, Currency("JPY", 0)))


def test_a_request_is_a_positive_fiat_amount_at_a_utc_time() -> None:
    for bad in (0, -1):
        with pytest.raises(InvalidNetworkMessage):
            request(bad)
    with pytest.raises(InvalidNetworkMessage):
        request(currency=EURE)  # the network speaks fiat, not tokens
    with pytest.raises(NaiveTimestamp):
        AuthorizationRequest(authorization_id="a", card_id="c", amount=Money(1, EUR),
                             merchant=SHOP, network_time=datetime(2026, 12, 1))
    with pytest.raises(InvalidNetworkMessage):
        Merchant(name="x", merchant_id="m", country="DE", mcc="58")


def test_decline_reasons_have_their_classes() -> None:
    classes = {reason: reason.decline_class for reason in DeclineReason}
    assert classes == {
        DeclineReason.INSUFFICIENT_FUNDS: DeclineClass.SOFT,
        DeclineReason.OVER_DAILY_LIMIT: DeclineClass.SOFT,
        DeclineReason.CARD_FROZEN: DeclineClass.HARD,
        DeclineReason.CARD_CLOSED: DeclineClass.HARD,
        DeclineReason.BLOCKED_MCC: DeclineClass.HARD,
        DeclineReason.UNKNOWN_CARD: DeclineClass.HARD,
        DeclineReason.VELOCITY: DeclineClass.FRAUD,
    }
    declined = AuthorizationDecision.decline(request(), DeclineReason.VELOCITY)
    assert (declined.approved, declined.approved_amount, declined.decline_class) == (
        False, Money(0, EUR), DeclineClass.FRAUD)


def test_a_partial_approval_only_where_the_network_allows_and_never_above_the_request() -> None:
    with pytest.raises(InvalidNetworkMessage):
        AuthorizationDecision.approve(request(1000), Money(400, EUR))
    partial = AuthorizationDecision.approve(request(1000, partial=True), Money(400, EUR))
    assert partial.partial and partial.approved and partial.decline_class is None
    assert not AuthorizationDecision.approve(request(1000)).partial
    for amount in (Money(1001, EUR), Money(0, EUR)):
        with pytest.raises(InvalidNetworkMessage):
            AuthorizationDecision.approve(request(1000, partial=True), amount)


def test_a_settlement_line_nets_credits_minus_debits() -> None:
    def line(credit: int, debit: int, net: int) -> SettlementLine:
        return SettlementLine(business_mode=BusinessMode.ISSUER, amount_type=AmountType.TOTAL,
                              count=1, credit_amount=Money(credit, EUR),
                              debit_amount=Money(debit, EUR), net_amount=Money(net, EUR))

    assert line(100, 450, -350).net_amount == Money(-350, EUR)
    with pytest.raises(InvalidNetworkMessage):
        line(100, 450, 350)


# -- the wire models ----------
def test_every_example_converts_to_its_domain_message() -> None:
    # as the API reads them: JSON text (the models are strict, so a Python str is no datetime)
    converted = [EVENTS.validate_json(json.dumps(examples(model)[0])).to_domain()
                 for model in EVENT_MODELS]
    assert {type(message) for message in converted} == set(ASYNC_MESSAGES)
    for message, model in zip(converted, EVENT_MODELS, strict=True):
        assert isinstance(message, NetworkMessage)
        assert examples(model)[0]["type"] == message.TYPE
    auth = AuthorizationRequestBody.model_validate_json(
        json.dumps(examples(AuthorizationRequestBody)[0]))
    assert auth.to_domain().amount == Money(850, EUR)


@pytest.mark.parametrize(("model", "field", "value"), [
    (AuthorizationRequestBody, "partial_approval_supported", 0),
    (AuthorizationRequestBody, "partial_approval_supported", "true"),
    (AuthorizationRequestBody, "network_time", 1796195930),
    (EVENT_MODELS[-1], "settlement_date", 20261201),
    (EVENT_MODELS[-1], "network_time", 1796195930.5),
    # strings pydantic's strict mode still reads as seconds, or that are not RFC 3339's form
    (AuthorizationRequestBody, "network_time", "5"),
    (EVENT_MODELS[-1], "network_time", "1796195930"),
    (AuthorizationRequestBody, "network_time", "2026-12-03 10:00:00Z"),
    (AuthorizationRequestBody, "network_time", "2026-12-03T10:00:00"),
])
def test_a_value_of_another_json_type_is_refused_not_coerced(model: Any, field: str,
                                                            value: Any) -> None:
    """The OpenAPI document declares booleans, date-times and dates; schemathesis found that
    lax parsing took 0 for false and a number of seconds for a time, and that strict parsing
    still took a string of digits as seconds."""
    body = json.dumps({**examples(model)[0], field: value})
    adapter = AUTHORIZATION if model is AuthorizationRequestBody else EVENTS
    with pytest.raises(ValidationError) as refused:
        adapter.validate_json(body)
    assert refused.value.errors()[0]["loc"][-1] == field


@pytest.mark.parametrize("when", ["2026-12-03T10:00:00Z", "2026-12-03t10:00:00.125+01:00",
                                  "2026-12-03T10:00:00-05:30"])
def test_an_rfc3339_network_time_is_read_as_utc(when: str) -> None:
    body = json.dumps({**examples(AuthorizationRequestBody)[0], "network_time": when})
    parsed = AUTHORIZATION.validate_json(body)
    assert parsed.network_time.utcoffset() is not None
    assert parsed.to_domain().network_time.tzinfo == UTC


def test_a_one_line_reason_is_printable_and_bounded() -> None:
    assert one_line("a\nb\x00c\ud800") == "a b c?"
    assert len(one_line("x" * 1000)) == 300


# -- the OpenAPI document ----------
def app_on(db: FakeDatabase, ingress: NetworkIngress | None = None) -> TestClient:
    ingress = ingress or NetworkIngress(db.uow, _approve, _applied)
    return TestClient(create_app(ingress, SignatureVerifier([SECRET]), ApiMetrics(),
                                 lambda: True, tokens=InMemoryTokenStore(),
                                 exceptions=ExceptionsQueue(db.uow)))


def _approve(uow: UnitOfWork, req: AuthorizationRequest,
             received_at: datetime) -> AuthorizationDecision:
    return AuthorizationDecision.approve(req)


def _applied(uow: UnitOfWork, message: NetworkMessage) -> dict[str, Any]:
    return {"status": "applied"}


def test_openapi_documents_every_message_type_with_an_example() -> None:
    doc = app_on(FakeDatabase()).get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for model in (*EVENT_MODELS, AuthorizationRequestBody):
        assert schemas[model.__name__]["examples"], model.__name__
    types = {examples(model)[0]["type"] for model in EVENT_MODELS}
    assert set(schemas["NetworkEventBody"]["discriminator"]["mapping"]) == types
    assert len(types) == 10
    body = doc["paths"]["/v1/network/events"]["post"]["requestBody"]["content"][
        "application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/NetworkEventBody"}
    assert {example["value"]["type"] for example in body["examples"].values()} == types
    auth = doc["paths"]["/v1/network/authorizations"]["post"]
    assert auth["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AuthorizationRequestBody"}
    assert auth["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DecisionResponse"}
    assert {"401", "409", "422"} <= set(auth["responses"])
    for path in ("/healthz", "/readyz", "/metrics"):
        assert path in doc["paths"]


# -- signatures ----------
def test_a_signature_made_by_the_library_verifies_and_a_tampered_one_does_not() -> None:
    from standardwebhooks.webhooks import Webhook

    body = b'{"a": 1}'
    ts = int(time.time())
    library = Webhook(SECRET).sign("m1", datetime.fromtimestamp(ts, UTC), body.decode())
    assert library == sign(SECRET, "m1", ts, body)
    headers = {"webhook-id": "m1", "webhook-timestamp": str(ts), "webhook-signature": library}
    assert SignatureVerifier([OLD_SECRET, SECRET]).verify(body, headers) == "m1"
    with pytest.raises(SignatureRejected) as refused:
        SignatureVerifier([OLD_SECRET]).verify(body, headers)
    assert refused.value.reason == "bad_signature"


def test_a_body_that_is_not_utf8_is_verified_over_its_bytes() -> None:
    body = b"\xff\xfe\x00 not text"
    ts = int(time.time())
    headers = {"webhook-id": "m1", "webhook-timestamp": str(ts),
               "webhook-signature": sign(SECRET, "m1", ts, body)}
    assert SignatureVerifier([SECRET]).verify(body, headers) == "m1"
    with pytest.raises(SignatureRejected):
        SignatureVerifier([SECRET]).verify(body + b"!", headers)


# -- the ingress on the fakes ----------
def received(body: bytes = b"{}", webhook_id: str = "w1") -> Received:
    return Received(webhook_id, body, {"webhook-id": webhook_id}, T)


def test_an_effect_that_cannot_run_records_nothing_and_answers_503() -> None:
    db = FakeDatabase()

    def unavailable(uow: UnitOfWork, message: NetworkMessage) -> dict[str, Any]:
        uow.claims.claim("written before failing")
        raise EffectUnavailable("ledger down")

    ingress = NetworkIngress(db.uow, _approve, unavailable)
    message = EVENTS.validate_json(json.dumps(examples(EVENT_MODELS[0])[0])).to_domain()
    reply = ingress.handle(received(), message)
    assert (reply.status, reply.body["error"], reply.body["reason"]) == (
        503, "unavailable", "ledger down")
    assert db.state.deliveries == {} and db.state.claims == {}


def test_a_decision_past_the_deadline_answers_503_with_its_reason_and_records_nothing() -> None:
    db = FakeDatabase()

    def overloaded(uow: UnitOfWork, req: AuthorizationRequest,
                   received_at: datetime) -> AuthorizationDecision:
        raise PastDeadline("waited 2.5 s")

    ingress = NetworkIngress(db.uow, overloaded, _applied)
    reply = ingress.authorize(received(), AUTHORIZATION.validate_json(
        json.dumps(examples(AuthorizationRequestBody)[0])).to_domain())
    assert (reply.status, reply.body["error"]) == (503, "past_deadline")
    assert db.state.deliveries == {}


def test_a_decision_the_model_refuses_is_quarantined_and_answered_422_once() -> None:
    db = FakeDatabase()

    def too_much(uow: UnitOfWork, req: AuthorizationRequest,
                 received_at: datetime) -> AuthorizationDecision:
        uow.claims.claim("partial effect")
        return AuthorizationDecision.approve(req, Money(1, EUR))  # partial not allowed

    ingress = NetworkIngress(db.uow, too_much, _applied)
    body = dumps(examples(AuthorizationRequestBody)[0])
    first = ingress.authorize(received(body), request())
    assert first.status == 422 and "partial" in first.body["reason"]
    assert db.state.claims == {}  # the effect before the refusal was undone
    [row] = db.state.quarantine.values()
    assert (row.source, row.key, row.payload["body"]) == ("network", "webhook:w1",
                                                          body.decode())
    again = ingress.authorize(received(body), request())
    assert (again.status, again.body, again.replayed) == (422, first.body, True)
    assert len(db.state.quarantine) == 1


# -- settings ----------
def test_webhook_secrets_and_the_api_address_come_from_settings() -> None:
    s = Settings.from_env({"CARDPAY_WEBHOOK_SECRETS": f" {SECRET} ,{OLD_SECRET}",
                           "CARDPAY_API_PORT": "9100"})
    assert s.webhook_secrets == (SECRET, OLD_SECRET)
    assert (s.api_host, s.api_port) == ("127.0.0.1", 9100)
    assert SECRET not in repr(s)
    assert Settings.from_env({}).webhook_secrets == ()
    for bad in ("secret", "whsec_***", "whsec_"):
        with pytest.raises(SettingsError, match="CARDPAY_WEBHOOK_SECRETS"):
            Settings.from_env({"CARDPAY_WEBHOOK_SECRETS": bad})
    with pytest.raises(SettingsError, match="CARDPAY_API_PORT"):
        Settings.from_env({"CARDPAY_API_PORT": "70000"})


def test_requests_beyond_the_in_flight_limit_are_answered_503_at_once() -> None:
    """Admission control: with one request in progress and a limit of one, the next one is
    refused before anything is read or stored; once the first is done, requests are taken
    again."""
    import asyncio
    import threading

    import httpx

    release = threading.Event()
    started = threading.Event()

    def slow(uow: UnitOfWork, req: AuthorizationRequest,
             received_at: datetime) -> AuthorizationDecision:
        started.set()
        release.wait(10)
        return AuthorizationDecision.approve(req)

    db = FakeDatabase()
    metrics = ApiMetrics()
    app = create_app(NetworkIngress(db.uow, slow, _applied), SignatureVerifier([SECRET]),
                     metrics, lambda: True, tokens=InMemoryTokenStore(),
                     exceptions=ExceptionsQueue(db.uow), max_in_flight=1)
    example = examples(AuthorizationRequestBody)[0]

    def request(n: int) -> tuple[bytes, dict[str, str]]:
        body = dumps({**example, "authorization_id": f"auth-{n}"})
        return body, signed_headers(body, f"wh-{n}")

    async def scenario() -> tuple[int, dict[str, Any], int, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            first = asyncio.create_task(client.post(
                "/v1/network/authorizations", content=request(1)[0], headers=request(1)[1]))
            await asyncio.to_thread(started.wait, 10)
            body, headers = request(2)
            refused = await client.post("/v1/network/authorizations", content=body,
                                        headers=headers)
            release.set()
            done = await first
            body, headers = request(3)
            later = await client.post("/v1/network/authorizations", content=body,
                                      headers=headers)
            return refused.status_code, refused.json(), done.status_code, later.status_code

    status, answer, first_status, later_status = asyncio.run(scenario())
    assert (status, answer["error"]) == (503, "overloaded")
    assert (first_status, later_status) == (200, 200)
    assert set(db.state.deliveries) == {"wh-1", "wh-3"}  # the refused one left nothing
    assert metrics.registry.get_sample_value(
        "cardpay_network_unavailable_total", {"reason": "overloaded"}) == 1


def test_the_in_flight_limit_setting() -> None:
    assert Settings.from_env({}).api_max_in_flight == 48
    assert Settings.from_env({"CARDPAY_API_MAX_IN_FLIGHT": "8"}).api_max_in_flight == 8
    for bad in ("0", "-1", "many"):
        with pytest.raises(SettingsError, match="CARDPAY_API_MAX_IN_FLIGHT"):
            Settings.from_env({"CARDPAY_API_MAX_IN_FLIGHT": bad})
