"""The bearer guard and its OpenAPI document, on the in-memory token store and fake database:
which operations declare the `bearer` scheme (and with which scope), what a route with an
unknown scope does, how the header is read, and a database away while checking a token."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

from cardpay.api import create_app
from cardpay.api.auth import BearerRejected, bearer_token, require
from cardpay.api.signatures import SignatureVerifier
from cardpay.handlers.api_tokens import UnknownScope
from cardpay.handlers.exceptions import ExceptionsQueue
from cardpay.handlers.network import NetworkIngress
from cardpay.metrics.api import ApiMetrics
from tests.fakes.storage import FakeDatabase
from tests.fakes.tokens import InMemoryTokenStore
from tests.support.network import SECRET

pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def app_with(tokens: Any) -> TestClient:
    db = FakeDatabase()
    ingress = NetworkIngress(db.uow, lambda *a: None, lambda *a: None)  # no network calls here
    return TestClient(create_app(ingress, SignatureVerifier([SECRET]), ApiMetrics(),
                                 lambda: True, tokens=tokens, exceptions=ExceptionsQueue(db.uow)),
                      raise_server_exceptions=False)


def test_the_openapi_document_declares_the_bearer_scheme_per_operation() -> None:
    document = app_with(InMemoryTokenStore()).get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "cp_<id>_<secret>",
        "description": "A token from `cardpay tokens create --scope SCOPE`, sent as "
        "`Authorization: Bearer <token>`. Scopes: finance:read, ops:read, ops:write."}
    security = {(path, method): operation.get("security")
                for path, item in document["paths"].items()
                for method, operation in item.items()}
    assert security[("/v1/exceptions", "get")] == [{"bearer": ["ops:read"]}]
    assert security[("/v1/exceptions/{item_id}/resolve", "post")] == [{"bearer": ["ops:write"]}]
    for open_route in (("/healthz", "get"), ("/readyz", "get"), ("/metrics", "get"),
                       ("/v1/network/events", "post"), ("/v1/network/authorizations", "post")):
        assert security[open_route] is None, open_route
    resolve = document["paths"]["/v1/exceptions/{item_id}/resolve"]["post"]
    assert resolve["requestBody"]["content"]["application/json"]["schema"]["required"] == ["note"]
    for status in ("401", "403"):
        assert resolve["responses"][status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"}


def test_a_route_cannot_ask_for_an_unknown_scope() -> None:
    with pytest.raises(UnknownScope, match="ops:admin"):
        require("ops:admin")


@pytest.mark.parametrize("header, token", [
    ("Bearer cp_00ff00ff00ff00ff_" + "a" * 43, "cp_00ff00ff00ff00ff_" + "a" * 43),
    ("bearer   cp_00ff00ff00ff00ff_" + "a" * 43 + " ", "cp_00ff00ff00ff00ff_" + "a" * 43),
])
def test_the_token_is_read_from_a_bearer_header(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize("header, code, reason, challenge", [
    (None, "missing", "no Authorization header", 'Bearer realm="cardpay"'),
    ("Token abc", "not_bearer", "not `Bearer <token>`", 'Bearer realm="cardpay"'),
    ("Bearer", "not_bearer", "not `Bearer <token>`", 'Bearer realm="cardpay"'),
    ("Bearer cp_1_2", "malformed", "malformed", 'Bearer realm="cardpay", error="invalid_token"'),
])
def test_a_header_without_a_token_is_refused_with_its_reason(
        header: str | None, code: str, reason: str, challenge: str) -> None:
    with pytest.raises(BearerRejected) as refused:
        bearer_token(header)
    assert (refused.value.status, refused.value.code, refused.value.challenge) == (
        401, code, challenge)
    assert reason in refused.value.reason


class DatabaseAway(InMemoryTokenStore):
    def verify(self, token: str) -> frozenset[str] | None:
        raise OperationalError("SELECT", {}, Exception("connection refused"))


def test_a_token_that_cannot_be_checked_is_503_not_401() -> None:
    store = DatabaseAway()
    token = store.create(["ops:read"]).token
    reply = app_with(store).get("/v1/exceptions", headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 503
    assert reply.json() == {"error": "unavailable", "reason": "the database did not answer; retry"}


def test_the_guard_admits_the_right_scope_on_the_fakes() -> None:
    store = InMemoryTokenStore()
    client = app_with(store)
    reader, finance = store.create(["ops:read"]).token, store.create(["finance:read"]).token
    ok = client.get("/v1/exceptions", headers={"Authorization": f"Bearer {reader}"})
    assert (ok.status_code, ok.json()) == (200, {"exceptions": []})
    assert client.get("/v1/exceptions",
                      headers={"Authorization": f"Bearer {finance}"}).status_code == 403
