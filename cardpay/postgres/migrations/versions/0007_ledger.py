"""Ledger: accounts, transfers and journal entries, with the invariants enforced by the database.

The repository (cardpay/postgres/repositories/ledger.py) decides every batch with the same pure
rules as the in-memory ledger. The database refuses, whoever the writer is (ADR 0009):
- a journal whose entries do not balance per ledger (pending and posted separately), checked for
  the rows of each INSERT statement, so a journal is written whole in one statement;
- any account outside its flags or the u128 range (CHECK constraints on the balances);
- balances changed by anything but entries (they are kept by a trigger on ledger_entries; an
  UPDATE of a balance not made from that trigger is refused), and changed or deleted entries;
- a pending transfer resolved twice (one post/void per pending_id: unique index; the pending's
  status only moves from 'pending', once), a post of more than was pending, a void of less.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

U128_MAX = "340282366920938463463374607431768211455"


def _in_u128(column: str) -> str:
    return f"{column} >= 0 AND {column} <= {U128_MAX}"


UPGRADE = f"""
CREATE TABLE ledger_accounts (
    id text PRIMARY KEY,
    ledger text NOT NULL,
    code text NOT NULL,
    flags integer NOT NULL,
    debits_pending numeric(39, 0) NOT NULL DEFAULT 0,
    debits_posted numeric(39, 0) NOT NULL DEFAULT 0,
    credits_pending numeric(39, 0) NOT NULL DEFAULT 0,
    credits_posted numeric(39, 0) NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ledger_accounts_known_flags CHECK (flags & ~3 = 0 AND flags <> 3),
    CONSTRAINT ledger_accounts_u128 CHECK ({_in_u128('debits_pending')}
        AND {_in_u128('debits_posted')} AND {_in_u128('credits_pending')}
        AND {_in_u128('credits_posted')}),
    CONSTRAINT ledger_accounts_debits_must_not_exceed_credits
        CHECK (flags & 1 = 0 OR debits_pending + debits_posted <= credits_posted),
    CONSTRAINT ledger_accounts_credits_must_not_exceed_debits
        CHECK (flags & 2 = 0 OR credits_pending + credits_posted <= debits_posted)
);

CREATE TABLE ledger_transfers (
    id text PRIMARY KEY,
    debit_account_id text NOT NULL,
    credit_account_id text NOT NULL,
    amount numeric(39, 0) NOT NULL CHECK ({_in_u128('amount')}),
    ledger text NOT NULL,
    code text NOT NULL,
    flags integer NOT NULL CHECK (flags & ~15 = 0),
    pending_id text,
    timeout bigint NOT NULL DEFAULT 0 CHECK (timeout >= 0),
    user_data text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL,
    expires_at timestamptz,
    pending_status text
        CHECK (pending_status IN ('pending', 'posted', 'voided', 'expired')),
    CONSTRAINT ledger_transfers_accounts_differ CHECK (debit_account_id <> credit_account_id),
    CONSTRAINT ledger_transfers_status_iff_pending
        CHECK ((flags & 2 <> 0) = (pending_status IS NOT NULL)),
    CONSTRAINT ledger_transfers_pending_id_iff_resolving
        CHECK ((flags & 12 <> 0) = (pending_id IS NOT NULL))
);
CREATE UNIQUE INDEX ledger_transfers_resolve_once ON ledger_transfers (pending_id)
    WHERE pending_id IS NOT NULL;
CREATE INDEX ledger_transfers_expiry ON ledger_transfers (expires_at)
    WHERE pending_status = 'pending';

CREATE TABLE ledger_entries (
    journal_id text NOT NULL,
    account_id text NOT NULL,
    ledger text NOT NULL,
    debits_pending numeric(40, 0) NOT NULL DEFAULT 0,
    debits_posted numeric(40, 0) NOT NULL DEFAULT 0,
    credits_pending numeric(40, 0) NOT NULL DEFAULT 0,
    credits_posted numeric(40, 0) NOT NULL DEFAULT 0,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (journal_id, account_id)
);
-- No index by account: the balances are kept on the account row, and an index costs a batch about
-- a tenth of its throughput (benchmarks/ledger.py); add one when a reader needs statements.

-- Balanced journals, then the balances: one aggregate per statement, not one call per row.
CREATE FUNCTION ledger_entries_post() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
    groups bigint;
    updated bigint;
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
    UPDATE ledger_accounts a
       SET debits_pending = a.debits_pending + d.dp, debits_posted = a.debits_posted + d.dpo,
           credits_pending = a.credits_pending + d.cp, credits_posted = a.credits_posted + d.cpo
      FROM (SELECT account_id, ledger, sum(debits_pending) dp, sum(debits_posted) dpo,
                   sum(credits_pending) cp, sum(credits_posted) cpo
              FROM new_entries GROUP BY account_id, ledger) d
     WHERE a.id = d.account_id AND a.ledger = d.ledger;
    GET DIAGNOSTICS updated = ROW_COUNT;
    IF updated <> groups THEN
        RAISE EXCEPTION 'ledger: an entry names an unknown account or one of another ledger'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_entries_post AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_post();

CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger: journal entries are never changed or deleted'
        USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only();

-- Balances move only from ledger_entries_post. Its UPDATE runs at trigger depth 1, so this guard
-- (WHEN depth 0) fires for every other UPDATE or DELETE, and there nothing may change at all.
CREATE FUNCTION ledger_accounts_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'ledger: accounts are never deleted' USING ERRCODE = 'restrict_violation';
    END IF;
    IF (NEW.id, NEW.ledger, NEW.code, NEW.flags, NEW.created_at)
       IS DISTINCT FROM (OLD.id, OLD.ledger, OLD.code, OLD.flags, OLD.created_at) THEN
        RAISE EXCEPTION 'ledger: account % cannot be changed', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF (NEW.debits_pending, NEW.debits_posted, NEW.credits_pending, NEW.credits_posted)
       IS DISTINCT FROM (OLD.debits_pending, OLD.debits_posted, OLD.credits_pending,
                         OLD.credits_posted) THEN
        RAISE EXCEPTION 'ledger: balances of % change only through journal entries', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER ledger_accounts_guard BEFORE UPDATE OR DELETE ON ledger_accounts
    FOR EACH ROW WHEN (pg_trigger_depth() = 0) EXECUTE FUNCTION ledger_accounts_guard();

-- A post or void resolves its pending transfer, which must be pending still, with the same
-- accounts and ledger, for at most (void: exactly) the amount pending.
CREATE FUNCTION ledger_transfers_resolve() RETURNS trigger LANGUAGE plpgsql AS $$
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
     WHERE n.pending_id = p.id AND p.pending_status = 'pending'
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
CREATE TRIGGER ledger_transfers_resolve AFTER INSERT ON ledger_transfers
    REFERENCING NEW TABLE AS new_transfers FOR EACH STATEMENT
    EXECUTE FUNCTION ledger_transfers_resolve();

-- Transfers are immutable but for a pending one's status, which moves once from 'pending'.
CREATE FUNCTION ledger_transfers_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'ledger: transfers are never deleted' USING ERRCODE = 'restrict_violation';
    END IF;
    IF (NEW.id, NEW.debit_account_id, NEW.credit_account_id, NEW.amount, NEW.ledger, NEW.code,
        NEW.flags, NEW.pending_id, NEW.timeout, NEW.user_data, NEW.created_at, NEW.expires_at)
       IS DISTINCT FROM
       (OLD.id, OLD.debit_account_id, OLD.credit_account_id, OLD.amount, OLD.ledger, OLD.code,
        OLD.flags, OLD.pending_id, OLD.timeout, OLD.user_data, OLD.created_at, OLD.expires_at)
    THEN
        RAISE EXCEPTION 'ledger: transfer % cannot be changed', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF NEW.pending_status IS DISTINCT FROM OLD.pending_status AND (
        OLD.pending_status IS DISTINCT FROM 'pending'
        OR (NEW.pending_status = 'expired' AND OLD.expires_at IS NULL)) THEN
        RAISE EXCEPTION 'ledger: pending transfer % is resolved already (%)', OLD.id,
            OLD.pending_status USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER ledger_transfers_guard BEFORE UPDATE OR DELETE ON ledger_transfers
    FOR EACH ROW EXECUTE FUNCTION ledger_transfers_guard();
"""

DOWNGRADE = """
DROP TABLE ledger_entries;
DROP TABLE ledger_transfers;
DROP TABLE ledger_accounts;
DROP FUNCTION ledger_entries_post();
DROP FUNCTION ledger_entries_append_only();
DROP FUNCTION ledger_accounts_guard();
DROP FUNCTION ledger_transfers_resolve();
DROP FUNCTION ledger_transfers_guard();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
