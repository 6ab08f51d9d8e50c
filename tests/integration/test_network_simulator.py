"""The network simulator against the real API on PostgreSQL, with the TEST DOUBLES of the
decision and the payment effects (`tests.support.network.RecordingEffects`).

What is checked is the simulator's side of the contract: every request is signed so the API
accepts it (no 401), nothing it sends crashes the ingress (no 500), repeats get the first answer
and change nothing, every message reaches its effect exactly once, and a second run of the same
seed is all replays. The doubles decide by their own simple rule, so the oracle's comparison is
not asserted here; the e2e test against the real decision does that.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
import uvicorn
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from starlette.testclient import TestClient

from cardpay.bootstrap.api import build_app
from cardpay.cli import main as cli
from cardpay.devstack.network_oracle import SimCard
from cardpay.devstack.network_simulator import HttpSender, Run, simulate
from cardpay.settings import Settings
from domain.money import EUR, GBP, USD
from tests.support.network import OLD_SECRET, SECRET, RecordingEffects, claims, counts

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

DAY = date(2026, 12, 1)
CARDS = [SimCard("card_a", EUR, 400_000, 60_000, blocked_mccs=frozenset({7995})),
         SimCard("card_b", USD, 90_000, None, velocity_limit=10),
         SimCard("card_empty", GBP, 0, None),
         SimCard("card_f", EUR, 10_000, None, status="frozen"),
         SimCard("card_x", GBP, 10_000, None, status="closed")]


def app(pg_engine: Engine) -> object:
    settings = Settings(database_url="unused", webhook_secrets=(SECRET, OLD_SECRET))
    effects = RecordingEffects()
    return build_app(settings, pg_engine, decide=effects.decide, apply=effects.apply,
                     registry=CollectorRegistry())


@pytest.fixture
def client(pg_engine: Engine) -> Iterator[TestClient]:
    with TestClient(app(pg_engine), raise_server_exceptions=False) as c:  # type: ignore[arg-type]
        yield c


def play(client: TestClient) -> Run:
    return simulate(CARDS, payments=70, seed=5, sender=HttpSender(client, str(client.base_url),
                                                                   SECRET),
                    duplicates=0.2, reorder_fraction=0.4, day=DAY)


def test_the_simulator_is_accepted_by_the_api_and_repeats_change_nothing(
        client: TestClient, pg_engine: Engine) -> None:
    run = play(client)
    statuses = {s.delivery.status for s in run.sent}
    assert statuses == {200}, [s.line() for s in run.sent if s.delivery.status != 200][:3]
    assert not run.duplicate_differences and not run.refused
    assert sum(s.duplicate for s in run.sent) > 10 and sum(s.reordered for s in run.sent) > 10
    unique = {s.message.webhook_id for s in run.sent}
    assert counts(pg_engine)["network_deliveries"] == len(unique)
    # every message reached its effect once: one claim per authorization and per event
    firsts = [s.message for s in run.sent if not s.duplicate]
    assert len(claims(pg_engine)) == len(firsts)
    assert {f"decision:{m.payment_id}" for m in firsts if m.type == "authorization_request"} <= \
        claims(pg_engine)
    # the doubles approve up to 10,000 and decline the empty card: the comparison sees it
    empty = [m for m in run.mismatches if m["card_id"] == "card_empty"]
    assert all(m["answer"]["decline_reason"] == "insufficient_funds" for m in empty)

    before = counts(pg_engine)
    again = play(client)  # the same seed: the same ids and bodies, all replays
    assert [s.delivery.answer for s in again.sent] == [s.delivery.answer for s in run.sent]
    assert counts(pg_engine) == before


@pytest.fixture
def served(pg_engine: Engine) -> Iterator[str]:
    """The API over real HTTP (uvicorn in a thread), for the CLI."""
    config = uvicorn.Config(app(pg_engine), host="127.0.0.1", port=0,  # type: ignore[arg-type]
                            log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_the_cli_runs_against_a_served_api_and_writes_what_it_sent(
        served: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CARDPAY_WEBHOOK_SECRETS", OLD_SECRET)  # a rotated secret signs too
    cards = tmp_path / "cards.json"
    cards.write_text(json.dumps([
        {"card_id": "card_a", "status": "active", "currency": "EURe", "decimals": 18,
         "balance": str(300_000 * 10**16), "allowance_left": None, "safe": "0x01",
         "token": "0x02", "blocked_mccs": [], "velocity_limit": None}]))
    out = tmp_path / "out"
    status = cli.main(["network", "simulate", "--api", served, "--payments", "30", "--seed",
                       "9", "--duplicates", "0.1", "--reorder", "0.5", "--cards", str(cards),
                       "--day", "2026-12-01", "--out", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    # the doubles' decisions are not the oracle's: the run says so with status 1
    assert status == (0 if summary["ok"] else 1)
    assert summary["statuses"] == {"200": summary["requests"]}
    lines = [json.loads(line) for line in (out / "sent.jsonl").read_text().splitlines()]
    assert len(lines) == summary["requests"] and all(line["status"] == 200 for line in lines)
    expected = json.loads((out / "expected.json").read_text())
    assert expected["seed"] == 9 and set(expected["currencies"]) == {"EUR"}
    report = expected["currencies"]["EUR"]["settlement_report"]
    assert report["type"] == "settlement_report" and report["settlement_date"] == "2026-12-02"


def test_without_a_cards_file_the_cli_uses_the_card_registry(
        served: str, pg_engine: Engine, pg_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from cardpay.handlers.ports import Card, ChainReading
    from cardpay.postgres.uow import PostgresUnitOfWork
    from domain.money import EURE

    with PostgresUnitOfWork(pg_engine) as uow:
        uow.cards.add(Card("reg_card", "0x" + "5a" * 20, "0x" + "e0" * 20, EURE),
                      ChainReading(1, "0x" + "11" * 32, 5_000 * 10**16 + 7))
        uow.commit()
    monkeypatch.setenv("CARDPAY_WEBHOOK_SECRETS", SECRET)
    monkeypatch.setenv("CARDPAY_DATABASE_URL", pg_url)
    out = tmp_path / "out"
    status = cli.main(["network", "simulate", "--api", served, "--payments", "12", "--seed", "3",
                       "--day", "2026-12-01", "--out", str(out)])
    said = capsys.readouterr().out
    assert status in (0, 1) and "requests" in said and "EUR" in said
    expected = json.loads((out / "expected.json").read_text())
    assert set(expected["cards"]) == {"reg_card"}
    cards_used = {json.loads(line)["body"] for line in (out / "sent.jsonl").read_text()
                  .splitlines()}
    assert any('"card_id":"reg_card"' in body for body in cards_used)
