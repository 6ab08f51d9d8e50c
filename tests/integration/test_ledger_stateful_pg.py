"""The ledger state machine (tests/support/ledger_machine.py) on PostgreSQL: the same random
operations give the same results and balances as the pure reference ledger, and the stored rows
themselves balance (every journal, and every account's balances are the sum of its entries)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import invariant, run_state_machine_as_test
from sqlalchemy import Engine, text

from cardpay.postgres.uow import unit_of_work_factory
from tests.support.ledger_machine import LedgerMachine

pytestmark = pytest.mark.integration

UNBALANCED_JOURNALS = text("""
    SELECT journal_id FROM ledger_entries GROUP BY journal_id, ledger
    HAVING sum(debits_pending) <> sum(credits_pending) OR sum(debits_posted) <> sum(credits_posted)
""")
BALANCES_NOT_FROM_ENTRIES = text("""
    SELECT a.id FROM ledger_accounts a LEFT JOIN (
        SELECT account_id, sum(debits_pending) dp, sum(debits_posted) dpo,
               sum(credits_pending) cp, sum(credits_posted) cpo
        FROM ledger_entries GROUP BY account_id) e ON e.account_id = a.id
    WHERE (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
          IS DISTINCT FROM (coalesce(e.dp, 0), coalesce(e.dpo, 0), coalesce(e.cp, 0),
                            coalesce(e.cpo, 0))
""")
RESOLVED_TWICE = text("""
    SELECT p.id FROM ledger_transfers p JOIN ledger_transfers r ON r.pending_id = p.id
    GROUP BY p.id, p.amount, p.pending_status
    HAVING count(*) > 1 OR max(r.amount) > p.amount
        OR p.pending_status NOT IN ('posted', 'voided')
""")


def test_random_operations_on_postgres_match_the_reference(pg_engine: Engine) -> None:
    class PostgresLedgerMachine(LedgerMachine):
        def __init__(self) -> None:
            self.make_uow = unit_of_work_factory(pg_engine, None)
            super().__init__()

        @invariant()
        def the_stored_rows_balance(self) -> None:
            with pg_engine.connect() as conn:
                assert conn.execute(UNBALANCED_JOURNALS).all() == []
                assert conn.execute(BALANCES_NOT_FROM_ENTRIES).all() == []
                assert conn.execute(RESOLVED_TWICE).all() == []

    run_state_machine_as_test(PostgresLedgerMachine, settings=settings(
        max_examples=25, stateful_step_count=15, deadline=None,
        suppress_health_check=list(HealthCheck)))
