"""The card-network simulator without I/O: its oracle against the real decision rule, seed
determinism, coverage of every message type, duplicate and reorder fractions, the invariance of
every payment's end state under its reorderings, retries and signatures, cards files, the CLI's
one-line errors."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cardpay.api.models import AUTHORIZATION, EVENTS
from cardpay.api.signatures import SignatureVerifier
from cardpay.cli import main as cli
from cardpay.devstack.network_oracle import Ledger, Oracle, PaymentModel, SimCard
from cardpay.devstack.network_simulator import (
    ApiUnreachable,
    CardsFileError,
    HttpSender,
    Run,
    SignatureRefused,
    load_cards,
    simulate,
)
from cardpay.devstack.network_workload import (
    AUTHORIZATIONS,
    LATE_REASON,
    Message,
    check_order,
    message,
    reorder,
)
from domain.money import EUR, GBP, USD
from domain.network import ASYNC_MESSAGES
from tests.support.network import SECRET
from tests.support.network_api import DecidingApi

pytestmark = pytest.mark.unit

DAY = date(2026, 12, 1)


def cards() -> list[SimCard]:
    return [SimCard("c-eur", EUR, 500_000, None, blocked_mccs=frozenset({7995})),
            SimCard("c-shared-1", EUR, 300_000, 20_000, pool="safe-a"),
            SimCard("c-shared-2", EUR, 999_999, None, pool="safe-a"),
            SimCard("c-usd", USD, 100_000, None, velocity_limit=4),
            SimCard("c-gbp", GBP, 80_000, None),
            SimCard("c-frozen", GBP, 50_000, None, status="frozen"),
            SimCard("c-closed", EUR, 50_000, None, status="closed")]


def run(seed: int = 7, payments: int = 60, duplicates: float = 0.0, reorder_fraction: float = 0.0,
        api: DecidingApi | None = None) -> Run:
    return simulate(cards(), payments=payments, seed=seed, sender=api or DecidingApi(cards()),
                    duplicates=duplicates, reorder_fraction=reorder_fraction, day=DAY)


# -- the oracle ------------------------------------------------------------------------------------
def expect(oracle: Oracle, card: str, amount: int, *, mcc: int = 5411,
           partial: bool = False) -> tuple[int, str | None]:
    e = oracle.expect("a", card, amount, "EUR", mcc, partial)
    return e.approved_amount, e.reason


def test_the_oracle_follows_the_documented_precedence() -> None:
    o = Oracle([SimCard("c", EUR, 1_000, 600, blocked_mccs=frozenset({7995}), velocity_limit=2),
                SimCard("f", EUR, 1_000, status="frozen", blocked_mccs=frozenset({7995})),
                SimCard("x", EUR, 1_000, status="closed")])
    assert expect(o, "nobody", 1) == (0, "unknown_card")
    assert expect(o, "x", 1) == (0, "card_closed")
    assert expect(o, "f", 1, mcc=7995) == (0, "card_frozen")  # frozen comes before the MCC
    assert expect(o, "c", 1, mcc=7995) == (0, "blocked_mcc")
    assert expect(o, "c", 600) == (600, None)  # the allowance is inclusive
    assert expect(o, "c", 601) == (0, "over_daily_limit")  # funds 1000, allowance 600 binds
    assert expect(o, "c", 5_000, partial=True) == (600, None)
    o.approved("c", 600)  # a hold of 600: funds 400 now bind (ties go to funds)
    assert expect(o, "c", 401) == (0, "insufficient_funds")
    assert expect(o, "c", 401, partial=True) == (400, None)
    o.approved("c", 1)
    assert expect(o, "c", 1) == (0, "velocity")  # two approvals: the limit is reached


def test_cards_of_one_safe_share_funds_and_no_funds_means_no_partial_approval() -> None:
    o = Oracle([SimCard("a", EUR, 1_000, pool="safe"), SimCard("b", EUR, 0, pool="safe")])
    o.approved("a", 900)
    assert expect(o, "b", 100) == (100, None)  # b spends the Safe's balance, less a's hold
    o.approved("b", 100)
    assert expect(o, "a", 1, partial=True) == (0, "insufficient_funds")


@settings(max_examples=200, deadline=None)
@given(balance=st.integers(0, 5_000), allowance=st.none() | st.integers(0, 5_000),
       holds=st.lists(st.integers(1, 2_000), max_size=3), amount=st.integers(1, 6_000),
       partial=st.booleans(), status=st.sampled_from(["active", "frozen", "closed"]),
       mcc=st.sampled_from([5411, 7995]), limit=st.none() | st.integers(1, 3))
def test_the_oracle_agrees_with_the_decision_code(balance: int, allowance: int | None,
                                                  holds: list[int], amount: int, partial: bool,
                                                  status: str, mcc: int,
                                                  limit: int | None) -> None:
    """Written apart from `domain.authorization.decide`, the oracle answers as it does."""
    card = SimCard("c", EUR, balance, allowance, status, frozenset({7995}), limit)
    oracle, api = Oracle([card]), DecidingApi([card])
    for number, hold in enumerate(holds):  # the same history on both sides
        body = {"authorization_id": f"h{number}", "card_id": "c", "amount": hold,
                "currency": "EUR", "merchant": {"mcc": "5411"}, "partial_approval_supported": False}
        answer = api._decide(body)
        if answer["approved"]:
            oracle.approved("c", answer["approved_amount"])
    body = {"authorization_id": "a", "card_id": "c", "amount": amount, "currency": "EUR",
            "merchant": {"mcc": str(mcc)}, "partial_approval_supported": partial}
    assert oracle.expect("a", "c", amount, "EUR", mcc, partial).answer() == api._decide(body)


# -- the workload ---------------------------------------------------------------------------------
def test_the_same_seed_sends_byte_identical_bodies_and_another_seed_does_not() -> None:
    first = run(seed=11, duplicates=0.2, reorder_fraction=0.3)
    again = run(seed=11, duplicates=0.2, reorder_fraction=0.3)
    sent = [(s.message.webhook_id, s.message.body) for s in first.sent]
    assert sent == [(s.message.webhook_id, s.message.body) for s in again.sent]
    assert json.dumps(first.expected) == json.dumps(again.expected)
    other = run(seed=12, duplicates=0.2, reorder_fraction=0.3)
    assert [s.message.body for s in other.sent] != [b for _, b in sent]


@pytest.mark.parametrize("seed", [*range(1, 13), 99])
def test_fifty_payments_send_every_message_type_and_every_answer_matches(seed: int) -> None:
    result = run(seed=seed, payments=50)
    types = Counter(s.message.type for s in result.sent)
    assert set(types) == {"authorization_request", *(m.TYPE for m in ASYNC_MESSAGES)}
    assert result.ok and not result.mismatches
    reasons = set()
    for totals in result.expected["currencies"].values():
        reasons |= set(totals["declined"]["by_reason"])
        assert totals["held"] == 0  # every hold ends
        assert totals["authorized"] == totals["posted"] + totals["released"] + \
            totals["reversed"]["amount"]
    for p in result.expected["payments"].values():  # each hold resolved exactly
        assert p["authorized"] == p["posted"] + p["released"] + p["reversed"] + p["held"]
    assert {"unknown_card", "card_closed", "card_frozen", "blocked_mcc"} <= reasons
    partial = sum(t["partial"]["count"] for t in result.expected["currencies"].values())
    assert partial >= 1


def test_every_body_is_valid_on_the_wire() -> None:
    for sent in run(seed=5, payments=80).sent:
        adapter: Any = AUTHORIZATION if sent.message.path == AUTHORIZATIONS else EVENTS
        adapter.validate_json(sent.message.body).to_domain()


@pytest.mark.parametrize(("duplicates", "moved"), [(0.0, 0.0), (0.1, 0.25), (0.5, 1.0)])
def test_duplicates_and_reorder_fractions_are_respected(duplicates: float, moved: float) -> None:
    result = run(seed=3, payments=80, duplicates=duplicates, reorder_fraction=moved)
    sync = [s for s in result.sent if s.message.path == AUTHORIZATIONS]
    events = [s for s in result.sent if s.message.path != AUTHORIZATIONS]
    firsts = [s for s in sync if not s.duplicate]
    assert sum(s.duplicate for s in sync) == round(duplicates * len(firsts))
    unique_events = [s for s in events if not s.duplicate]
    assert sum(s.duplicate for s in events) == round(duplicates * len(unique_events))
    seen: dict[str, bytes] = {}
    for s in result.sent:  # a repeat is the same id and body, after its first
        if s.duplicate:
            assert seen[s.message.webhook_id] == s.message.body
        else:
            assert s.message.webhook_id not in seen
        seen[s.message.webhook_id] = s.message.body
    reorderable = len(unique_events) - len(result.expected["currencies"])  # reports stay last
    assert sum(s.reordered for s in events) <= round(moved * reorderable)
    if moved:
        assert sum(s.reordered for s in events) >= round(moved * reorderable) // 2
    check_order([s.message for s in unique_events])
    assert not result.duplicate_differences and result.ok


def test_late_answers_are_stand_in_declines_of_approvals_that_release_their_hold() -> None:
    """A late answer: the network stood in after its deadline and declined an approval of
    ours. Only approvals are picked (a late decline changes nothing), their share is the one
    asked for, the advice names the same authorization and nothing else follows it, and the
    oracle expects the whole hold released and the payment declined."""
    base = run(seed=4, payments=120)
    result = simulate(cards(), payments=120, seed=4, sender=DecidingApi(cards()),
                      late_answers=0.25, day=DAY)
    assert result.ok
    approvals = {s.message.payment_id: s.delivery.answer for s in result.sent
                 if s.message.path == AUTHORIZATIONS and s.delivery.answer["approved"]}
    # the same answers as without late answers: the authorizations are sent alike
    assert approvals == {s.message.payment_id: s.delivery.answer for s in base.sent
                         if s.message.path == AUTHORIZATIONS and s.delivery.answer["approved"]}
    late = [s.message for s in result.sent if s.message.type == "authorization_advice"
            and s.message.payload["reason"] == LATE_REASON]
    assert result.summary()["answered_late"] == len(late) > 0
    sync = sum(1 for s in result.sent if s.message.path == AUTHORIZATIONS and not s.duplicate)
    assert len(late) <= round(0.25 * sync)  # picks among all requests: approvals get advices
    for advice in late:
        auth = advice.payment_id
        assert auth in approvals and advice.payload["approved_amount"] == 0
        assert [s.message.type for s in result.sent if s.message.payment_id == auth] == [
            "authorization_request", "authorization_advice"]
        want = result.expected["payments"][auth]
        held = approvals[auth]["approved_amount"]
        assert (want["status"], want["authorized"], want["held"], want["released"]) == (
            "declined", held, 0, held)
        assert base.expected["payments"][auth]["status"] != "declined"  # on time, it lived on
    for totals in result.expected["currencies"].values():
        assert totals["held"] == 0 and totals["authorized"] == totals["posted"] + \
            totals["released"] + totals["reversed"]["amount"]


def test_a_declining_advice_releases_what_an_approval_holds() -> None:
    model = PaymentModel("a", "c", "EUR", "approve")
    model.open(700)
    model.decline()
    assert (model.status, model.held, model.released, model.authorized) == (
        "declined", 0, 700, 700)
    never = PaymentModel("b", "c", "EUR", "advice_declined")
    never.decline()
    assert (never.status, never.held, never.released) == ("declined", 0, 0)


def ends(document: dict[str, Any]) -> dict[str, Any]:
    return {k: document[k] for k in ("status", "authorized", "held", "posted", "cleared",
                                     "reversed", "released", "over_cleared", "returned")}


def test_reordering_never_changes_what_a_payment_ends_as() -> None:
    """Each allowed order, applied with the documented rules, ends every payment as the
    network's own order does (so the e2e can compare end states, whatever arrived first)."""
    api = DecidingApi(cards())
    result = run(seed=21, payments=120, api=api)
    natural = [s.message for s in result.sent
               if s.message.path != AUTHORIZATIONS and s.message.type != "settlement_report"]
    parked = 0
    for attempt in range(20):
        order, moved = reorder(natural, 1.0, random.Random(attempt))
        check_order(order)
        ledger = Ledger()
        for key, p in result.expected["payments"].items():
            model = ledger.add(PaymentModel(key, p["card_id"], p["currency"], p["kind"]))
            if p["decision"] is not None:
                if p["decision"]["approved"]:
                    model.open(p["decision"]["approved_amount"])
                else:
                    model.decline()
        ids = {m.payment_id for m in order if m.type == "authorization_advice"}
        for m in order:
            if m.type == "clearing" and m.payment_id in ids and \
                    ledger.payments[m.payment_id].status == "none":
                parked += 1
            ledger.apply(m.payload)
        assert {k: ends(d) for k, d in ledger.documents().items()} == \
            {k: ends(d) for k, d in result.expected["payments"].items()}, attempt
        assert moved
    assert parked  # some clearings did arrive before their advice


# -- sending -----------------------------------------------------------------------------------------
def one_message() -> Message:
    return message(AUTHORIZATIONS, "a1", {"authorization_id": "a1", "amount": 5}, DAY_TIME, "a1")


DAY_TIME = datetime(2026, 12, 1, tzinfo=UTC)


def sender(handler: Any) -> tuple[HttpSender, list[float]]:
    waits: list[float] = []
    client = httpx.Client(transport=httpx.MockTransport(handler))
    return HttpSender(client, "http://api.test/", SECRET, attempts=4, sleep=waits.append), waits


def test_a_5xx_or_no_answer_is_sent_again_with_the_same_id_and_a_valid_signature() -> None:
    seen: list[httpx.Request] = []
    verifier = SignatureVerifier([SECRET])

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        assert verifier.verify(request.content, request.headers) == "wh_a1"
        if len(seen) == 1:
            raise httpx.ConnectError("refused")
        if len(seen) == 2:
            return httpx.Response(503, json={"error": "unavailable"})
        return httpx.Response(200, json={"ok": True})

    http, waits = sender(handler)
    delivery = http.send(one_message())
    assert (delivery.status, delivery.answer, delivery.attempts) == (200, {"ok": True}, 3)
    assert {r.headers["webhook-id"] for r in seen} == {"wh_a1"}
    assert {r.content for r in seen} == {one_message().body}
    assert str(seen[0].url) == "http://api.test/v1/network/authorizations"
    assert waits == [0.1, 0.2]  # bounded exponential backoff


def test_retries_are_bounded_and_a_refused_signature_stops_the_run() -> None:
    http, waits = sender(lambda r: httpx.Response(500, json={"error": "boom"}))
    assert http.send(one_message()).status == 500 and len(waits) == 3
    http, _ = sender(lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused")))
    with pytest.raises(ApiUnreachable, match=r"no answer from http://api\.test"):
        http.send(one_message())
    http, _ = sender(lambda r: httpx.Response(401, json={"reason": "bad_signature"}))
    with pytest.raises(SignatureRefused, match="401 bad_signature"):
        http.send(one_message())


# -- cards files and the CLI -----------------------------------------------------------------------
LISTED = [{"card_id": "card_01", "status": "active", "currency": "EURe", "decimals": 18,
           "balance": str(123_456 * 10**16 + 99), "allowance_left": str(50_000 * 10**16),
           "safe": "0xAA", "token": "0xee", "blocked_mccs": [7995], "velocity_limit": None},
          {"card_id": "card_02", "status": "frozen", "currency": "USDCe", "decimals": 6,
           "balance": "2500000", "allowance_left": None, "safe": "0xaa", "token": "0xee",
           "blocked_mccs": [], "velocity_limit": 3}]


def test_cards_load_from_the_cards_list_json_with_amounts_in_whole_cents(tmp_path: Path) -> None:
    path = tmp_path / "cards.json"
    path.write_text(json.dumps(LISTED))
    first, second = load_cards(path)
    assert (first.currency, first.balance, first.allowance, first.blocked_mccs) == \
        (EUR, 123_456, 50_000, frozenset({7995}))
    assert (second.currency, second.balance, second.status, second.velocity_limit) == \
        (USD, 250, "frozen", 3)
    assert first.funds_key == second.funds_key == "0xaa:0xee"


@pytest.mark.parametrize(("content", "says"), [
    ("not json", "is not JSON"), ("[]", "non-empty JSON list"), ('[{"status": "active"}]',
                                                                 "has no 'card_id'"),
    ('[{"card_id": "c", "currency": "JPY"}]', "currency one of"),
    ('[{"card_id": "c", "currency": "EURe", "balance": "x"}]', "card 1:"),
    ('[{"card_id": "c", "currency": "EUR", "status": "lost"}]', "status 'lost'")])
def test_a_bad_cards_file_is_named(tmp_path: Path, content: str, says: str) -> None:
    path = tmp_path / "cards.json"
    path.write_text(content)
    with pytest.raises(CardsFileError, match=says):
        load_cards(path)


@pytest.mark.parametrize(("argv", "env", "status", "says"), [
    (["--api", "ftp://x"], {"CARDPAY_WEBHOOK_SECRETS": SECRET}, 2, "is not an http(s) URL"),
    (["--api", "not a url"], {"CARDPAY_WEBHOOK_SECRETS": SECRET}, 2, "is not an http(s) URL"),
    (["--api", "http://127.0.0.1:9"], {}, 2, "no webhook secret"),
    (["--api", "http://127.0.0.1:9", "--secret", "nope"], {}, 2, "whsec_"),
    (["--api", "http://127.0.0.1:9", "--cards", "/nonexistent/cards.json"],
     {"CARDPAY_WEBHOOK_SECRETS": SECRET}, 2, "cannot read cards file"),
    (["--api", "http://127.0.0.1:9", "--cards", "CARDS"], {"CARDPAY_WEBHOOK_SECRETS": SECRET},
     1, "cannot reach the API at http://127.0.0.1:9"),
    (["--reorder", "1.5"], {}, 2, "must be from 0 to 1"),
])
def test_the_cli_says_what_is_wrong_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: list[str], env: dict[str, str], status: int, says: str) -> None:
    for name in ("CARDPAY_WEBHOOK_SECRETS", "CARDPAY_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cards_file = tmp_path / "cards.json"
    cards_file.write_text(json.dumps(LISTED))
    argv = [str(cards_file) if a == "CARDS" else a for a in argv]
    with pytest.raises(SystemExit) if status == 2 and "1.5" in argv else _nothing():
        code = cli.main(["network", "simulate", *argv])
        assert code == status
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1, err


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
