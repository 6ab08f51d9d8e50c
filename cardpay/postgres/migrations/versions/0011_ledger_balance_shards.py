"""Ledger: the balances of accounts without limit flags live in shard rows (ADR 0011).

Every authorization holds money towards its ledger's one `network_payable` account. With the
balance on that account's row, each hold UPDATEs the same row and every authorization of a ledger
waits for the one before it to commit. An account with no limit flag never needs its balance to
decide anything, so from here:
- `ledger_account_rows` (the table, renamed) keeps id, ledger, code, flags, and the balances of
  flagged accounts (CHECKed as before) — plus what unflagged accounts held before this migration;
- `ledger_account_shards` keeps signed balance changes of unflagged accounts, one row per
  (account, shard); a transaction adds to the shard `txid % 32`, so concurrent transactions
  rarely share a row;
- `ledger_accounts` is a view with the exact balances (row + the sum of its shards), and refuses
  UPDATE and DELETE with the old messages.
The posting trigger still refuses unbalanced journals and unknown accounts; for an unflagged
account it checks the summed balances stay within 0..u128 as this transaction sees them.

Revision ID: 0011
Revises: 0010
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

U128_MAX = "340282366920938463463374607431768211455"
SHARDS = 32

UPGRADE = f"""
ALTER TABLE ledger_accounts RENAME TO ledger_account_rows;

-- No foreign key to the account row: its check takes FOR KEY SHARE on that row in every writing
-- transaction, and many sharers of one row make a MultiXact each time; the posting trigger joins
-- the row instead (unknown accounts refused), and accounts are never deleted.
CREATE TABLE ledger_account_shards (
    account_id text NOT NULL,
    shard smallint NOT NULL CHECK (shard >= 0 AND shard < {SHARDS}),
    debits_pending numeric(40, 0) NOT NULL DEFAULT 0,
    debits_posted numeric(40, 0) NOT NULL DEFAULT 0,
    credits_pending numeric(40, 0) NOT NULL DEFAULT 0,
    credits_posted numeric(40, 0) NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, shard)
);

CREATE VIEW ledger_accounts AS
SELECT r.id, r.ledger, r.code, r.flags,
       r.debits_pending + coalesce(s.dp, 0) AS debits_pending,
       r.debits_posted + coalesce(s.dpo, 0) AS debits_posted,
       r.credits_pending + coalesce(s.cp, 0) AS credits_pending,
       r.credits_posted + coalesce(s.cpo, 0) AS credits_posted,
       r.created_at
  FROM ledger_account_rows r
  LEFT JOIN LATERAL (
      SELECT sum(debits_pending) dp, sum(debits_posted) dpo, sum(credits_pending) cp,
             sum(credits_posted) cpo
        FROM ledger_account_shards WHERE account_id = r.id AND r.flags = 0) s ON true;

-- The view refuses what the table refused, with the same messages.
CREATE TRIGGER ledger_accounts_guard INSTEAD OF UPDATE OR DELETE ON ledger_accounts
    FOR EACH ROW EXECUTE FUNCTION ledger_accounts_guard();

-- Shard rows change only from the posting trigger (trigger depth 1).
CREATE FUNCTION ledger_account_shards_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger: balances of % change only through journal entries',
        coalesce(NEW.account_id, OLD.account_id) USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER ledger_account_shards_guard BEFORE INSERT OR UPDATE OR DELETE
    ON ledger_account_shards FOR EACH ROW WHEN (pg_trigger_depth() = 0)
    EXECUTE FUNCTION ledger_account_shards_guard();

-- The same checks as 0007's, and its balance UPDATE now for flagged accounts only. Each query
-- finds the accounts by `= ANY(ARRAY(...))`: the planner cannot estimate a transition table and
-- joined it by a sequential scan of every account (1 ms per 2,000 accounts, per statement).
CREATE OR REPLACE FUNCTION ledger_entries_post() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
    groups bigint;
    updated bigint;
    sharded bigint;
BEGIN
    SELECT journal_id, ledger INTO bad FROM new_entries GROUP BY journal_id, ledger
     HAVING sum(debits_pending) <> sum(credits_pending)
         OR sum(debits_posted) <> sum(credits_posted)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger: journal % does not balance in ledger %',
            bad.journal_id, bad.ledger USING ERRCODE = 'check_violation';
    END IF;
    SELECT count(*) INTO groups FROM (SELECT DISTINCT account_id, ledger FROM new_entries) g;
    -- Flagged accounts: their row, under its CHECKs (the repository holds their locks).
    UPDATE ledger_account_rows a
       SET debits_pending = a.debits_pending + d.dp, debits_posted = a.debits_posted + d.dpo,
           credits_pending = a.credits_pending + d.cp, credits_posted = a.credits_posted + d.cpo
      FROM (SELECT account_id, ledger, sum(debits_pending) dp, sum(debits_posted) dpo,
                   sum(credits_pending) cp, sum(credits_posted) cpo
              FROM new_entries GROUP BY account_id, ledger) d
     WHERE a.id = ANY(ARRAY(SELECT DISTINCT account_id FROM new_entries))
       AND a.id = d.account_id AND a.ledger = d.ledger AND a.flags <> 0;
    GET DIAGNOSTICS updated = ROW_COUNT;
    IF updated = groups THEN
        RETURN NULL;
    END IF;
    -- Unflagged accounts: this transaction's shard row (in account order: no lock cycles).
    INSERT INTO ledger_account_shards AS s (account_id, shard, debits_pending, debits_posted,
                                            credits_pending, credits_posted)
    SELECT d.account_id, (txid_current() % {SHARDS})::smallint, d.dp, d.dpo, d.cp, d.cpo
      FROM (SELECT account_id, ledger, sum(debits_pending) dp, sum(debits_posted) dpo,
                   sum(credits_pending) cp, sum(credits_posted) cpo
              FROM new_entries GROUP BY account_id, ledger) d
      JOIN ledger_account_rows a ON a.id = d.account_id AND a.ledger = d.ledger AND a.flags = 0
     WHERE a.id = ANY(ARRAY(SELECT DISTINCT account_id FROM new_entries))
     ORDER BY d.account_id
    ON CONFLICT (account_id, shard) DO UPDATE
       SET debits_pending = s.debits_pending + excluded.debits_pending,
           debits_posted = s.debits_posted + excluded.debits_posted,
           credits_pending = s.credits_pending + excluded.credits_pending,
           credits_posted = s.credits_posted + excluded.credits_posted;
    GET DIAGNOSTICS sharded = ROW_COUNT;
    IF updated + sharded <> groups THEN
        RAISE EXCEPTION 'ledger: an entry names an unknown account or one of another ledger'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    -- What CHECK constraints cannot say across rows: the summed balances stay in 0..u128.
    SELECT a.id INTO bad FROM ledger_account_rows a
     CROSS JOIN LATERAL (
           SELECT sum(debits_pending) dp, sum(debits_posted) dpo, sum(credits_pending) cp,
                  sum(credits_posted) cpo
             FROM ledger_account_shards WHERE account_id = a.id) s
     WHERE a.id = ANY(ARRAY(SELECT DISTINCT account_id FROM new_entries)) AND a.flags = 0
       AND NOT (a.debits_pending + s.dp BETWEEN 0 AND {U128_MAX}
                AND a.debits_posted + s.dpo BETWEEN 0 AND {U128_MAX}
                AND a.credits_pending + s.cp BETWEEN 0 AND {U128_MAX}
                AND a.credits_posted + s.cpo BETWEEN 0 AND {U128_MAX})
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger: the balances of % would leave 0..u128', bad.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

-- 0007's check that a post or void resolves one open pending transfer, with the pending rows found
-- by primary key (`= ANY(ARRAY(...))`): joined to the transition table it was a sequential scan of
-- every transfer ever made, per statement. The condition `p.pending_status = 'pending'` is gone
-- from the WHERE: with it, once the table was analyzed, the planner scanned the partial index of
-- all pending transfers and tested each against the array (4.5 s for 8,000 posts among 40,000
-- holds). It is still enforced: a second post or void of one pending transfer breaks the unique
-- index on pending_id, and ledger_transfers_guard refuses a status that does not move from
-- 'pending' (an expired one).
CREATE OR REPLACE FUNCTION ledger_transfers_resolve() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    wanted bigint;
    resolved bigint;
BEGIN
    SELECT count(*) INTO wanted FROM new_transfers WHERE pending_id IS NOT NULL;
    IF wanted = 0 THEN
        RETURN NULL;
    END IF;
    UPDATE ledger_transfers p
       SET pending_status = CASE WHEN n.flags & 4 <> 0 THEN 'posted' ELSE 'voided' END
      FROM new_transfers n
     WHERE p.id = ANY(ARRAY(SELECT pending_id FROM new_transfers WHERE pending_id IS NOT NULL))
       AND n.pending_id = p.id
       AND n.debit_account_id = p.debit_account_id
       AND n.credit_account_id = p.credit_account_id AND n.ledger = p.ledger
       AND n.amount <= p.amount AND (n.flags & 8 = 0 OR n.amount = p.amount);
    GET DIAGNOSTICS resolved = ROW_COUNT;
    IF resolved <> wanted THEN
        RAISE EXCEPTION 'ledger: a post or void names no open pending transfer, another one, '
            'or more than was pending' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
"""

DOWNGRADE = """
ALTER TABLE ledger_account_rows DISABLE TRIGGER ledger_accounts_guard;
UPDATE ledger_account_rows a
   SET debits_pending = a.debits_pending + s.dp, debits_posted = a.debits_posted + s.dpo,
       credits_pending = a.credits_pending + s.cp, credits_posted = a.credits_posted + s.cpo
  FROM (SELECT account_id, sum(debits_pending) dp, sum(debits_posted) dpo,
               sum(credits_pending) cp, sum(credits_posted) cpo
          FROM ledger_account_shards GROUP BY account_id) s
 WHERE a.id = s.account_id;
ALTER TABLE ledger_account_rows ENABLE TRIGGER ledger_accounts_guard;
DROP VIEW ledger_accounts;
DROP TABLE ledger_account_shards;
DROP FUNCTION ledger_account_shards_guard();
ALTER TABLE ledger_account_rows RENAME TO ledger_accounts;
"""


def _functions_0007(*names: str) -> str:
    """0007's trigger functions `names`, read from that migration (one text, not two copies)."""
    spec = importlib.util.spec_from_file_location(
        "ledger_0007", Path(__file__).with_name("0007_ledger.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text: str = module.UPGRADE
    out = []
    for name in names:
        start = text.index(f"CREATE FUNCTION {name}()")
        end = text.index("END $$;", start) + len("END $$;")
        out.append("CREATE OR REPLACE" + text[start + len("CREATE"):end])
    return "\n".join(out)


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    """Back to 0007's layout: the shards folded onto the rows, its trigger functions as they were."""
    op.execute(DOWNGRADE)
    op.execute(_functions_0007("ledger_entries_post", "ledger_transfers_resolve"))
