"""The chaos run's own checks fail on what they look for: a payment spent twice, a refund seen
twice, a payment approved and left with nothing to move it on, an exception no workload makes.
(`lifecycle.check`, which the run also applies, has its own tests; the run's CI test breaks the
read model on purpose.)"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Engine, text

from tests.chaos.harness import chaos_problems, stuck_effects, unexpected_exceptions

pytestmark = pytest.mark.integration


def append(engine: Engine, stream_id: str, *types: str, **payload: Any) -> None:
    with engine.begin() as conn:
        version = int(conn.execute(text(
            "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = :s"),
            {"s": stream_id}).scalar_one())
        for i, type_ in enumerate(types, 1):
            conn.execute(text("INSERT INTO events (stream_id, version, type, data)"
                              " VALUES (:s, :v, :t, CAST(:d AS jsonb))"),
                         {"s": stream_id, "v": version + i, "t": type_,
                          "d": json.dumps({"payload": payload})})


def test_a_clean_history_has_no_problem(pg_engine: Engine) -> None:
    append(pg_engine, "p1", "PaymentAuthorized", "PaymentSpent", "SpendRetracted",
           "PaymentSpent")
    append(pg_engine, "p2", "PaymentAuthorized", "PaymentReversed")
    append(pg_engine, "p1", "PaymentRefunded", "RefundRetracted", "PaymentRefunded",
           refund_id="r1")
    assert chaos_problems(pg_engine, chain_spends=1) == []
    assert stuck_effects(pg_engine) == []


def test_double_spends_double_refunds_and_stuck_payments_are_named(pg_engine: Engine) -> None:
    append(pg_engine, "twice", "PaymentAuthorized", "PaymentSpent", "PaymentSpent")
    append(pg_engine, "twice", "PaymentRefunded", "PaymentRefunded", refund_id="r9")
    append(pg_engine, "stuck", "PaymentAuthorized")
    problems = chaos_problems(pg_engine, chain_spends=2)
    assert "payment twice: spent 2 times, retracted 0" in problems
    assert "the chain has 2 Spend logs, 1 payments are spent" in problems
    assert "payment twice: refund r9 seen on chain 2 times, retracted 0" in problems
    assert ("payment stuck: approved, neither spent nor reversed, and no timer or open "
            "exception") in problems
    with pg_engine.begin() as conn:  # a pending timer moves it on: not stuck
        conn.execute(text("INSERT INTO saga_timers (kind, saga_id, name, due_at)"
                          " VALUES ('card_payment', 'stuck', 'spend_deadline', now())"))
    assert not any("stuck" in p for p in chaos_problems(pg_engine, chain_spends=2))


def test_only_the_workloads_own_exceptions_are_expected() -> None:
    assert unexpected_exceptions({"network:unmatched_return": 3,
                                  "saga:card_payment:over_clearing": 1}) == []
    assert unexpected_exceptions({"listener:undecodable_log": 1}) == [
        "open exception listener:undecodable_log x1: not something the workload makes on "
        "purpose"]
