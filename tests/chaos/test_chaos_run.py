"""The short seeded chaos run of CI: the whole stack on Kafka, every fault kind at least once,
then every invariant holds; and the same run with a read-model row deleted afterwards fails the
check (the checker can fail). The long runs: `python -m tests.chaos --seed S --duration D`."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from cardpay.bootstrap.lifecycle import LifecycleStack
from tests.chaos.harness import ChaosOptions, run_chaos
from tests.chaos.schedule import KINDS

pytestmark = pytest.mark.e2e
SEED = 1


def delete_a_spent_payment_row(s: LifecycleStack) -> None:
    """What a projector that lost a record would leave: the read model misses one payment."""
    with s.engine.begin() as conn:
        gone = conn.execute(text(
            "DELETE FROM rm_payments WHERE payment_id = (SELECT payment_id FROM rm_payments"
            " WHERE spent > 0 ORDER BY payment_id LIMIT 1) RETURNING payment_id")).scalar_one()
    print("deleted the read-model row of", gone)


def test_a_short_seeded_chaos_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    report = run_chaos(ChaosOptions(SEED, duration=60.0, payments=120, directory=tmp_path,
                                    cardholders=10),
                       breaker=delete_a_spent_payment_row)
    print(report.summary())
    assert report.problems == [], report.problems[:10]
    applied = {k for k in report.injected if k in KINDS}
    assert applied | {s.split(":")[0] for s in report.skipped} >= set(KINDS) - applied
    assert len(applied) >= len(KINDS) - len(report.skipped), report.summary()
    assert report.figures["spent_on_chain"] > 20 and report.figures["refunds"] > 0
    assert report.figures["lost"] == report.figures["duplicated"] == 0
    assert any("read model" in p for p in report.problems_after_break), (
        report.problems_after_break)
