"""The ops routes behind bearer tokens, with the app on real PostgreSQL: no, malformed, unknown,
guessed and revoked tokens get 401 with `WWW-Authenticate: Bearer`, a token without the scope
403, the right scope the exceptions queue; resolving one needs ops:write and is kept."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from starlette.testclient import TestClient

from cardpay.bootstrap.api import build_app
from cardpay.handlers.ports import QuarantineItem
from cardpay.postgres.repositories.api_tokens import PostgresTokenStore
from cardpay.postgres.uow import unit_of_work_factory
from cardpay.settings import Settings
from tests.support.network import SECRET

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

EXCEPTIONS = "/v1/exceptions"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def client(pg_engine: Engine, registry: CollectorRegistry) -> Iterator[TestClient]:
    settings = Settings(database_url="unused", webhook_secrets=(SECRET,), sweep_interval_s=0)
    app = build_app(settings, pg_engine, registry=registry)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def rejections(registry: CollectorRegistry) -> dict[str, float]:
    return {s.labels["reason"]: s.value for metric in registry.collect()
            if metric.name == "cardpay_api_token_rejections"
            for s in metric.samples if s.name.endswith("_total")}


@pytest.fixture
def store(pg_engine: Engine) -> PostgresTokenStore:
    return PostgresTokenStore(pg_engine)


@pytest.fixture
def seeded(pg_engine: Engine) -> dict[str, int]:
    """Two exceptions (card network, saga) and a listener quarantine row (not an exception)."""
    with unit_of_work_factory(pg_engine, None)() as uow:
        for source, key, reason in (("network", "unmatched_return:r1", "unmatched_return"),
                                    ("listener:main", "log:1", "undecodable"),
                                    ("saga:card_payment", "card_payment:a1:4",
                                     "compensation_failed")):
            uow.quarantine.add(QuarantineItem(source=source, key=key, reason=reason,
                                              payload={}))
        uow.commit()
        return {row.key: row.id for row in uow.quarantine.list()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refused(reply: Any, status: int) -> str:
    """The one-line reason of a refusal (and its RFC 6750 challenge for 401/403)."""
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"error", "reason"} and "\n" not in body["reason"]
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    return str(body["reason"])


def test_a_request_without_a_live_token_is_401(client: TestClient, store: PostgresTokenStore,
                                               registry: CollectorRegistry) -> None:
    issued = store.create(["ops:read"])
    _, token_id, secret = issued.token.split("_", 2)
    assert "no Authorization header" in refused(client.get(EXCEPTIONS), 401)
    assert "not `Bearer <token>`" in refused(
        client.get(EXCEPTIONS, headers={"Authorization": "Basic b3BzOnB3"}), 401)
    assert "not `Bearer <token>`" in refused(
        client.get(EXCEPTIONS, headers={"Authorization": "Bearer "}), 401)
    for malformed in ("not-a-token", issued.token + "x", f"cp_{token_id}"):
        reply = client.get(EXCEPTIONS, headers=bearer(malformed))
        assert "malformed" in refused(reply, 401)
        assert 'error="invalid_token"' in reply.headers["WWW-Authenticate"]
    for unknown in (f"cp_{'0' * 16}_{secret}", f"cp_{token_id}_{'A' * 43}"):
        assert refused(client.get(EXCEPTIONS, headers=bearer(unknown)), 401) == \
            "unknown or revoked token"
    assert client.get(EXCEPTIONS, headers=bearer(issued.token)).status_code == 200
    assert rejections(registry) == {"missing": 1, "not_bearer": 2, "malformed": 3,
                                    "unknown_or_revoked": 2}


def test_a_revoked_token_is_401_from_the_next_request(client: TestClient,
                                                      store: PostgresTokenStore) -> None:
    issued = store.create(["ops:read"])
    assert client.get(EXCEPTIONS, headers=bearer(issued.token)).status_code == 200
    store.revoke(issued.info.token_id)
    assert refused(client.get(EXCEPTIONS, headers=bearer(issued.token)), 401) == \
        "unknown or revoked token"


def test_a_token_without_the_scope_is_403(client: TestClient, store: PostgresTokenStore,
                                          seeded: dict[str, int],
                                          registry: CollectorRegistry) -> None:
    finance = store.create(["finance:read"])
    reply = client.get(EXCEPTIONS, headers=bearer(finance.token))
    assert refused(reply, 403) == "this token lacks the scope ops:read (it has finance:read)"
    assert reply.headers["WWW-Authenticate"] == (
        'Bearer realm="cardpay", error="insufficient_scope", scope="ops:read"')
    assert rejections(registry) == {"insufficient_scope": 1}


def test_the_right_scope_lists_the_open_exceptions(client: TestClient, store: PostgresTokenStore,
                                                   seeded: dict[str, int]) -> None:
    token = store.create(["ops:read"]).token
    reply = client.get(EXCEPTIONS, headers=bearer(token))
    assert reply.status_code == 200, reply.text
    listed = reply.json()["exceptions"]
    assert [(e["id"], e["source"], e["reason"], e["resolved_at"]) for e in listed] == [
        (seeded["unmatched_return:r1"], "network", "unmatched_return", None),
        (seeded["card_payment:a1:4"], "saga:card_payment", "compensation_failed", None)]
    first = client.get(EXCEPTIONS, params={"limit": 1}, headers=bearer(token)).json()
    assert [e["id"] for e in first["exceptions"]] == [seeded["unmatched_return:r1"]]
    assert client.get(EXCEPTIONS, params={"limit": 0}, headers=bearer(token)).status_code == 422


def test_resolving_needs_ops_write_and_is_kept(client: TestClient, store: PostgresTokenStore,
                                              seeded: dict[str, int]) -> None:
    reader = store.create(["ops:read"]).token
    writer = store.create(["ops:write"]).token
    item = seeded["unmatched_return:r1"]
    path = f"{EXCEPTIONS}/{item}/resolve"
    note = {"note": "refunded by bank transfer"}

    assert "lacks the scope ops:write" in refused(
        client.post(path, json=note, headers=bearer(reader)), 403)
    assert "no Authorization header" in refused(client.post(path, content=b"{not json"), 401)
    assert len(client.get(EXCEPTIONS, headers=bearer(reader)).json()["exceptions"]) == 2

    done = client.post(path, json=note, headers=bearer(writer))
    assert done.status_code == 200, done.text
    assert done.json() == {"id": item, "outcome": "resolved",
                           "message": "resolved by hand: refunded by bank transfer"}
    still_open = client.get(EXCEPTIONS, headers=bearer(reader)).json()["exceptions"]
    assert [e["id"] for e in still_open] == [seeded["card_payment:a1:4"]]
    every = client.get(EXCEPTIONS, params={"all": "true"}, headers=bearer(reader)).json()
    [resolved] = [e for e in every["exceptions"] if e["id"] == item]
    assert resolved["resolution"] == "resolved by hand: refunded by bank transfer"
    assert resolved["resolved_at"] is not None

    again = client.post(path, json=note, headers=bearer(writer))
    assert again.status_code == 409 and again.json()["error"] == "already_resolved"
    listener_row = seeded["log:1"]  # a quarantine row, not an exception
    for missing in (listener_row, 999_999):
        reply = client.post(f"{EXCEPTIONS}/{missing}/resolve", json=note, headers=bearer(writer))
        assert reply.status_code == 404 and reply.json()["error"] == "not_found"
    other = f"{EXCEPTIONS}/{seeded['card_payment:a1:4']}/resolve"
    for body in (b"{not json", b'{"note": "   "}', b"{}", b'{"note": "x", "by": "me"}'):
        bad = client.post(other, content=body, headers=bearer(writer))
        assert bad.status_code == 422 and bad.json()["error"] == "invalid", bad.text
    assert client.post(f"{EXCEPTIONS}/{2**63}/resolve", json=note,
                       headers=bearer(writer)).status_code == 422
    assert len(client.get(EXCEPTIONS, headers=bearer(reader)).json()["exceptions"]) == 1


def test_health_metrics_and_the_network_need_no_bearer_token(client: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    unsigned = client.post("/v1/network/events", content=b"{}")
    assert unsigned.status_code == 401  # the network's signature, not a bearer token
    assert "WWW-Authenticate" not in unsigned.headers


def test_a_card_network_exception_cannot_be_retried_only_resolved(
        client: TestClient, store: PostgresTokenStore, seeded: dict[str, int]) -> None:
    """Retry resumes a stuck saga (tests/integration/test_saga_worker.py shows it through this
    route); a card-network exception has nothing cardpay can redo: 409 saying so."""
    writer = store.create(["ops:write"]).token
    item = seeded["unmatched_return:r1"]
    answer = client.post(f"{EXCEPTIONS}/{item}/retry", headers=bearer(writer))
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == "not_retryable" and "resolve" in answer.json()["reason"]
    assert client.post(f"{EXCEPTIONS}/{item}/retry").status_code == 401
